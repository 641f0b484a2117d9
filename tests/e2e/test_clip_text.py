"""The compiled CLIP text encoder against transformers' CLIPTextModel with the same weights, on CPU and Vulkan."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.helpers import TARGETS, artifact_state, atol_against_decoded, compile_and_load, reference


@pytest.mark.parametrize("target", TARGETS)
def test_f32_matches_transformers(target, tiny_ldm_safetensors, tiny_state, tiny_ids, tmp_path):
    # f32 end to end: the bound is 1e-4 absolute on the hidden states (layer-normed, std ~1); differences
    # come only from summation order and exp/erf implementations in f32.
    _, model = compile_and_load(tiny_ldm_safetensors, tmp_path / "a", target=target)
    got = model.run({"input_ids": tiny_ids})["last_hidden_state"]
    ref = reference(tiny_state, tiny_ids)
    assert got.shape == ref.shape == (2, 77, 128)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


# Quantized types: the reference is transformers on the weights the artifact holds (its storage types decoded to f32),
# so what remains is f32 arithmetic on identical values: the same 1e-4 bound applies. Rows narrower than a type's
# block (128-wide projections vs 256-value super-blocks) stay f32; fc2's 512-wide rows take every type.
QTYPES = [
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "tq2_0",
    "tq1_0",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
    "mxfp4",
]


@pytest.mark.parametrize("target", TARGETS)
def test_quantized_types_match_reference_on_dequantized_weights(target, tiny_ldm_safetensors, tiny_ids, tmp_path):
    full = reference(__import__("sdcompile.examples", fromlist=["x"]).clip_text_state(), tiny_ids)
    for qtype in QTYPES:
        out = tmp_path / qtype
        m, model = compile_and_load(
            tiny_ldm_safetensors,
            out,
            target=target,
            type=qtype,
            tensor_type_rules=[("token_embedding", "q8_0")] if qtype.startswith("tq") else [],
        )
        got = model.run({"input_ids": tiny_ids})["last_hidden_state"]
        ref = reference(artifact_state(out), tiny_ids)
        # The CPU's integer paths (GEMV at <= 8 rows, AMX GEMM above) quantize activations to 16 bits per block
        # (relative error ~2e-5 per matmul, sdcompile/kernels/linear_gemv.py and linear_amx.py); through the
        # encoder's layers and layer norms that reaches ~1.5e-4 at values ~2, against ~1e-5 for f32 decoding.
        atol = atol_against_decoded(target, [qtype])
        np.testing.assert_allclose(got, ref, rtol=0, atol=atol, err_msg=qtype)
        rel = np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref**2))
        assert rel < 5e-5, (qtype, rel)
        # and the quantization itself changed the result (the artifact really holds that type)
        assert np.abs(got - full).max() > 1e-5, qtype
        stored = m["weights"]["tensors"]["text_encoder.encoder.layers.0.mlp.fc2.weight"]["dtype"]
        assert stored == qtype, (qtype, stored)


@pytest.mark.parametrize("target", TARGETS)
def test_type_without_kernel_runs_through_its_fallback(target, tiny_ldm_safetensors, tiny_ids, tmp_path, monkeypatch):
    """A backend lacking a type's kernel still compiles and runs the model correctly, through legalization's
    fallback: here tq1_0 without a kernel is repacked losslessly to tq2_0."""
    from sdcompile.backends import backend
    from sdcompile.passes import legalize

    real = backend(target)
    no_tq1 = real.__class__(
        real.name,
        real.ops,
        {op: ts - {"tq1_0"} for op, ts in real.native.items()},
        {"tq1_0": "removed for this test"},
        real.max_buffer_bytes,
    )
    monkeypatch.setattr(legalize, "backend", lambda name: no_tq1)
    m, model = compile_and_load(tiny_ldm_safetensors, tmp_path / "a", target=target, type="tq1_0")
    fb = m["report"]["legalize"]["fallbacks"]
    assert [(d["from"], d["to"], d["step"]) for d in fb] == [("tq1_0", "tq2_0", "repack")] * 2
    got = model.run({"input_ids": tiny_ids})["last_hidden_state"]
    np.testing.assert_allclose(got, reference(artifact_state(tmp_path / "a"), tiny_ids), rtol=0, atol=1e-4)
