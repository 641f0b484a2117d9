"""lora: `merge` turns each adapted weight into W + s·scale·up@down (the stored layout and type kept), lists what
adapts nothing and refuses a LoRA that adapts nothing; `hooks` marks every linear step for a runtime branch and, in
runtime mode only, splits an activation fused into an adapted linear.

Structure (which weights became derived, what the report lists), numbers (the merged values against numpy in f64:
f32 storage holds them to 1e-6; q8_0 storage to its step), validity (the verifier, through the whole pipeline), and
the cases where the pass must not fire (no LoRA; merge mode leaves fused activations alone).
"""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile.errors import OptionError
from sdcompile.ir import Module, interpret, verify
from sdcompile.ir.weights import as_f32
from sdcompile.passes import fuse, lora, quantize
from sdcompile.passes.context import CompileOptions, PassContext
from sdcompile.passes.pipeline import run_pipeline

Q0 = "text_encoder.encoder.layers.0.self_attn.q_proj.weight"
FC1 = "text_encoder.encoder.layers.1.mlp.fc1.weight"
RANK, ALPHA, STRENGTH = 2, 3.0, 0.7


def _kohya(path, shapes: dict[str, tuple[int, int]], extra: dict | None = None, seed: int = 0):
    """A kohya LoRA for {kohya layer name: (out, in)} plus ``extra`` tensors, written as safetensors."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    t = {}
    for name, (o, i) in shapes.items():
        t[f"{name}.lora_down.weight"] = rng.standard_normal((RANK, i)).astype(np.float32) * 0.1
        t[f"{name}.lora_up.weight"] = rng.standard_normal((o, RANK)).astype(np.float32) * 0.1
        t[f"{name}.alpha"] = np.array(ALPHA, np.float32)
    t.update(extra or {})
    save_file(t, str(path))
    return t


def _te_lora(path, w: int, mlp: int):
    return _kohya(
        path,
        {
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (w, w),
            "lora_te_text_model_encoder_layers_1_mlp_fc1": (mlp, w),
            "lora_te_text_model_encoder_layers_99_self_attn_q_proj": (w, w),  # no such layer
            "lora_unet_down_blocks_0_attentions_0_proj_in": (w, w),  # no UNet in this model
        },
        {"junk.tensor": np.zeros(3, np.float32)},
    )


def _expected(t: dict, w0: np.ndarray, key: str) -> np.ndarray:
    up, down = t[f"{key}.lora_up.weight"].astype(np.float64), t[f"{key}.lora_down.weight"].astype(np.float64)
    return w0 + STRENGTH * ALPHA / RANK * up @ down


def test_merge_structure_numbers_validity(tiny_graph, tiny_ids, tmp_path):
    w, mlp = ex.TINY.width, ex.TINY.mlp
    t = _te_lora(tmp_path / "te.lora", w, mlp)  # safetensors, named for nothing
    base = {n: as_f32(v).astype(np.float64) for n, v in ((n, tiny_graph.values[n]) for n in (Q0, FC1))}
    mod = Module(functions={"encode_text": tiny_graph.copy()})
    rep = lora.merge(mod, [(str(tmp_path / "te.lora"), STRENGTH)])
    g = mod.functions["encode_text"]
    # structure
    assert rep["merged"] == sorted([Q0, FC1])
    (f,) = rep["files"]
    assert (f["format"], f["weights"], f["tensors_used"], f["kinds"]) == ("safetensors", 2, 6, {"lora": 2})
    why = f["unmatched"]
    assert (
        "no weight of the model is called encoder_layers_99_self_attn_q_proj"
        in why["lora_te_text_model_encoder_layers_99_self_attn_q_proj.lora_up.weight"]
    )
    assert why["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"] == "the model has no unet"
    assert "of any known convention" in why["junk.tensor"]
    assert len(why) == 7
    assert g.values[Q0].data.expr.describe().endswith("lora(te.lora:0.7)")
    assert all(v.data.expr is None for v in g.weights() if v.name not in (Q0, FC1))
    # numbers: f32 storage holds the exact sum
    np.testing.assert_allclose(
        as_f32(g.values[Q0]), _expected(t, base[Q0], "lora_te_text_model_encoder_layers_0_self_attn_q_proj"), atol=1e-6
    )
    np.testing.assert_allclose(
        as_f32(g.values[FC1]), _expected(t, base[FC1], "lora_te_text_model_encoder_layers_1_mlp_fc1"), atol=1e-6
    )
    assert not np.allclose(as_f32(g.values[Q0]), base[Q0], atol=1e-3)  # it did change
    # validity: the whole pipeline verifies after each pass
    out = run_pipeline(g, PassContext(CompileOptions()))
    assert interpret.run(out, {"input_ids": tiny_ids})["last_hidden_state"].shape[-1] == w


def test_quantized_base_is_requantized(tiny_state, tmp_path):
    """A q8_0 base: decoded, the delta added, stored as q8_0 again; the measured error is within q8_0's rounding
    (half a step of the block's scale max|w|/127, plus the
    scale's own f16 rounding) and far below the delta."""
    from sdcompile.formats import open_store
    from sdcompile.models import lift

    gg = ex.write_gguf(
        tmp_path / "q8.gguf", ex.rename(tiny_state, "ldm"), "q8_0", {"num_attention_heads": ex.TINY.heads}
    )
    g = lift(open_store(gg))
    assert g.values[Q0].dtype == "q8_0"
    t = _te_lora(tmp_path / "te.gguf.bin", ex.TINY.width, ex.TINY.mlp)
    base = as_f32(g.values[Q0]).astype(np.float64)
    mod = Module(functions={"encode_text": g})
    rep = lora.merge(mod, [(str(tmp_path / "te.gguf.bin"), STRENGTH)])
    v = mod.functions["encode_text"].values[Q0]
    assert v.dtype == "q8_0" and v.data.source_dtype == "q8_0"
    exact = _expected(t, base, "lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    err = np.abs(as_f32(v) - exact)
    step = np.abs(exact).reshape(exact.shape[0], -1, 32).max(-1, keepdims=True) / 127
    # half a step, plus the step itself stored in f16 (relative 2^-11, times up to 127 steps)
    assert (err.reshape(step.shape[0], -1, 32) <= step * (0.5 + 127 * 2**-11) + 1e-7).all()
    e = lora.requantization_error(mod, rep["merged"])["q8_0"]
    assert e["weights"] == 2 and 0 < e["max_abs"] and e["rms"] < e["delta_rms"] / 10
    assert e["max_abs"] == pytest.approx(max(float(err.max()), e["max_abs"]))  # the report's max includes this one


def test_no_lora_changes_nothing(tiny_graph):
    mod = Module(functions={"encode_text": tiny_graph.copy()})
    rep = lora.merge(mod, [])
    assert rep["files"] == [] and rep["merged"] == []
    assert all(v.data.expr is None for v in mod.functions["encode_text"].weights())
    assert set(rep["targets"]) == {n.inputs[1] for n in tiny_graph.nodes if n.op == "matmul"}


@pytest.mark.parametrize("mode", ["merge", "runtime"])
def test_hooks(tiny_graph, tiny_ids, mode):
    ctx = PassContext(CompileOptions(lora_apply_mode=mode))
    fused = fuse.run(quantize.run(tiny_graph, ctx), ctx)
    g = lora.hooks(fused, ctx)
    verify(g, "lora_hooks")
    lin = [n for n in g.nodes if n.op == "linear"]
    fc1 = [f"text_encoder.encoder.layers.{i}.mlp.fc1.weight" for i in range(ex.TINY.layers)]
    if mode == "merge":  # must not fire on fused activations: they keep their kernel and have no hook
        assert len(g.nodes) == len(fused.nodes)
        assert sorted(g.meta["lora_hooks"]["unhooked"]) == sorted(fc1)
        assert {n.inputs[1] for n in lin if "lora" not in n.attrs} == set(fc1)
    else:
        assert g.meta["lora_hooks"]["unhooked"] == {} and g.meta["lora_hooks"]["split"] == ex.TINY.layers
        assert all(n.attrs["lora"] == n.inputs[1] and n.attrs["act"] == "none" for n in lin)
        assert [n.op for n in g.nodes].count("quick_gelu") == ex.TINY.layers
    a = interpret.run(fused, {"input_ids": tiny_ids})["last_hidden_state"]
    b = interpret.run(g, {"input_ids": tiny_ids})["last_hidden_state"]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)  # the same math, split or not


def test_refusals(tiny_graph, tmp_path):
    mod = Module(functions={"encode_text": tiny_graph.copy()})
    _kohya(tmp_path / "other.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in": (4, 4)})
    with pytest.raises(lora.LoraFileError, match="adapts none of this model's weights"):
        lora.merge(mod, [(str(tmp_path / "other.safetensors"), 1.0)])
    _kohya(tmp_path / "wide.safetensors", {"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)})
    with pytest.raises(lora.LoraFileError, match="made for another model"):
        lora.merge(mod, [(str(tmp_path / "wide.safetensors"), 1.0)])
    with pytest.raises(OptionError, match="runtime mode the LoRA is chosen when the image is made"):
        lora.merge(mod, [(str(tmp_path / "wide.safetensors"), 1.0)], mode="runtime")
    with pytest.raises(OptionError, match="no such file"):
        lora.parse_lora_arg(str(tmp_path / "missing.safetensors:0.5"))
    assert lora.parse_lora_arg(str(tmp_path / "wide.safetensors") + ":0.25") == (
        str(tmp_path / "wide.safetensors"),
        0.25,
    )
