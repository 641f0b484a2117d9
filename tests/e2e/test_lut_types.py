"""i-quant weights through the whole compiler: GGUF -> legalize -> kernels + plan -> artifact (with its lookup tables)
-> runtime, against transformers' CLIPTextModel on the weights the artifact holds; on the CPU, and on Vulkan where an
adapter exists.

The fc2 weights are written as random valid blocks (``tests/kernels/iquant_cases.random_blocks``). The capability
table lists only what `sdcompile kernels --check` validated when it was last regenerated, so these tests inject a
table listing the i-quants, as `tests/passes/test_legalize.py` does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile.backends import TABLE, backend
from sdcompile.kernels.luts import table_words
from sdcompile.passes import legalize
from tests.e2e.helpers import TARGETS, artifact_state, atol_against_decoded, compile_and_load
from tests.kernels.iquant_cases import random_blocks

IQ_TYPES = ["iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq4_nl", "iq4_xs"]


@pytest.fixture()
def iquant_backend(tmp_path, monkeypatch):
    """legalize sees a capability table whose cpu and vulkan backends have kernels for every i-quant."""
    table = json.loads(TABLE.read_text())
    for target in ("cpu", "vulkan"):
        for op in ("linear", "embed"):
            table[target][op] = sorted(set(table[target][op]) | set(IQ_TYPES))
    p = tmp_path / "caps.json"
    p.write_text(json.dumps(table))
    monkeypatch.setattr(legalize, "backend", lambda name: backend(name, p))


def _gguf(path, state, fc2_types: list[str]):
    """A stable-diffusion.cpp-style GGUF (LDM names, f32) whose layer i fc2 weight is stored as fc2_types[i]."""
    import gguf

    from sdcompile.quant.types import get

    rng = np.random.default_rng(5)
    w = gguf.GGUFWriter(str(path), arch="clip", use_temp_file=False)
    w.add_uint32("num_attention_heads", ex.TINY.heads)
    for name, arr in ex.rename(state, "ldm").items():
        if name.endswith("mlp.fc2.weight"):
            layer = int(name.split("layers.")[1].split(".")[0])
            qt = get(fc2_types[layer])
            rows, k = arr.shape
            # |d| in [2^-8, 2^-7]: decoded weights of the order of CLIP's (std 0.02), so the activations stay
            # realistic through the residual stream.
            data = random_blocks(qt.name, rows, k, rng)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType(qt.ggml_id))
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _check(manifest, model, out, ids, shape, fc2_types):
    fc2 = {f"text_encoder.encoder.layers.{i}.mlp.fc2.weight": t for i, t in enumerate(fc2_types)}
    tensors = manifest["weights"]["tensors"]
    assert {n: tensors[n]["dtype"] for n in fc2} == fc2  # stored natively: no fallback
    assert manifest["report"]["legalize"]["fallbacks"] == []
    got = model.run({"input_ids": ids})["last_hidden_state"]
    # The reference runs transformers on the artifact's weights decoded to f32 (gguf-exact decoders): what remains is
    # f32 arithmetic on identical values, the same bound as every other type (tests/e2e/test_clip_text.py).
    ref = ex.transformers_hidden(ex.transformers_clip(artifact_state(out), shape), ids)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol_against_decoded(manifest["target"], fc2_types))
    return got


def test_iq4_xs_fc2_matches_transformers(iquant_backend, tiny_state, tiny_ids, tmp_path):
    # iq4_xs decodes with its 16 kvalues held in constant words: no lookup table, so no tables file either.
    src = _gguf(tmp_path / "iq4.gguf", tiny_state, ["iq4_xs", "iq4_xs"])
    manifest, model = compile_and_load(src, tmp_path / "a", target="cpu")
    _check(manifest, model, tmp_path / "a", tiny_ids, ex.TINY, ["iq4_xs", "iq4_xs"])
    assert "luts" not in manifest and "luts.bin" not in manifest["files"]


@pytest.mark.parametrize("target", TARGETS)
def test_grid_types_carry_their_tables(target, iquant_backend, tiny_ids, tmp_path):
    # Three layers: iq1_s and iq1_m share one codebook (stored once, passed to both kernels), iq2_xxs has its own,
    # so the tables file holds two tables at different offsets.
    shape = ex.ClipTextShape(layers=3)
    state = ex.clip_text_state(shape, seed=2)
    types = ["iq1_s", "iq1_m", "iq2_xxs"]
    out = tmp_path / "a"
    manifest, model = compile_and_load(_gguf(tmp_path / "grid.gguf", state, types), out, target=target)
    got = _check(manifest, model, out, tiny_ids, shape, types)

    luts = manifest["luts"]
    assert luts["file"] == "luts.bin" and "luts.bin" in manifest["files"]  # hashed like every file
    assert sorted(luts["tables"]) == ["iq1s_grid", "iq2xxs_grid"]
    data = (out / "luts.bin").read_bytes()
    for name, rec in luts["tables"].items():
        words = table_words(name)
        assert rec["words"] == words.size
        assert data[rec["offset"] : rec["offset"] + words.nbytes] == words.tobytes()
    refs = [
        (step["component"], a["lut"])
        for step in manifest["functions"]["encode_text"]["steps"]
        for a in step["args"]
        if "lut" in a
    ]
    assert sorted(t for _, t in refs) == ["iq1s_grid", "iq1s_grid", "iq2xxs_grid"]
    # Each step passes the table at the parameter position its kernel declares.
    for step in manifest["functions"]["encode_text"]["steps"]:
        params = manifest["kernels"]["kernels"][step["kernel"]]["params"]
        assert len(step["args"]) == len(params)
        for a, p in zip(step["args"], params):
            assert ("lut" in a) == (p["kind"] == "lut") and (a.get("lut", p["name"]) == p["name"])

    # The quantized layers changed the result: the kernels really read those weights.
    f32 = ex.transformers_hidden(ex.transformers_clip(state, shape), tiny_ids)
    assert np.abs(got - f32).max() > 1e-3


def test_missing_table_is_a_clear_error(iquant_backend, tiny_state, tmp_path):
    import runtime
    from runtime.errors import RuntimeFailure

    out = tmp_path / "a"
    compile_and_load(_gguf(tmp_path / "m.gguf", tiny_state, ["iq3_s", "iq3_s"]), out, target="cpu")
    mf = out / "manifest.json"
    m = json.loads(mf.read_text())
    assert list(m["luts"]["tables"]) == ["iq3s_grid"]
    m["luts"]["tables"]["iq3s_grid"]["words"] -= 1
    mf.write_text(json.dumps(m))
    with pytest.raises(RuntimeFailure, match="reads lookup table 'iq3s_grid' .* holds 511 words; recompile"):
        runtime.load(out, verify=False)
    m["luts"]["tables"] = {}
    mf.write_text(json.dumps(m))
    with pytest.raises(RuntimeFailure, match="does not hold it"):
        runtime.load(out, verify=False)
