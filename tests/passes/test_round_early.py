"""round_early: with bf16 products, the f32 activations that every reader rounds to bf16 first (the bf16 GEMMs' x,
the bf16 flash attention's q, k and v) are stored in bf16; residuals, norms' inputs and the function's outputs keep
f32; the artifact computes the same bits as without the pass, in less memory; nothing changes with f32 products,
without AMX-BF16 (where no kernel rounds) or on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.ir import verify
from sdcompile.passes import act_dtype, fuse, legalize, mma, pack_weights, quantize, round_early
from sdcompile.passes.context import CompileOptions, PassContext

amx = pytest.mark.skipif(not tvm_layer.host_amx_bf16(), reason="needs a CPU with AMX-BF16")


def _run(g, **opts):
    ctx = PassContext(CompileOptions(**opts))
    for p in (quantize.run, fuse.run, legalize.run, mma.run, pack_weights.run, act_dtype.run):
        g = p(g, ctx)
    out = round_early.run(g, ctx)
    verify(out, "round_early")
    return g, out, ctx


@amx
def test_stores_bf16_where_every_reader_rounds(tiny_graph):
    before, g, ctx = _run(tiny_graph, compute="bf16")
    uses = g.consumers()
    changed = [v for v in g.values.values() if v.dtype == "bfloat16"]
    assert changed and all(before.values[v.name].dtype == "float32" for v in changed)  # the pass copies
    for v in changed:
        for n in uses[v.name]:
            slots = [i for i, name in enumerate(n.inputs) if name == v.name]
            if n.op == "linear":
                assert slots == [0] and n.attrs["mma"] == "bf16"  # x of a bf16 GEMM, never its residual
            else:
                assert n.op == "attention" and n.attrs["mma"] == "bf16" and max(slots) <= 2  # q, k, v
    ops = {n.op for v in changed for n in uses[v.name]}
    assert ops == {"linear", "attention"}
    # a value read as a residual or by a norm keeps f32, and so do the function's outputs
    kept = {n.inputs[0] for n in g.nodes if n.op == "layer_norm"}
    kept |= {n.inputs[-1] for n in g.nodes if n.op == "linear" and n.attrs.get("residual")}
    assert kept and all(g.values[k].dtype == "float32" for k in kept if g.values[k].kind == "activation")
    assert all(g.values[o].dtype == "float32" for o in g.outputs)
    rep = ctx.report["round_early"]
    assert rep["values"] == len(changed)
    assert rep["bytes_saved"] == sum(2 * int(np.prod(v.shape)) for v in changed)


def test_nothing_without_bf16_products(tiny_graph, monkeypatch):
    _, g, ctx = _run(tiny_graph, compute="f32")
    assert "round_early" not in ctx.report and not any(v.dtype == "bfloat16" for v in g.values.values())
    _, g, ctx = _run(tiny_graph, compute="bf16", target="vulkan")
    assert "round_early" not in ctx.report and not any(v.dtype == "bfloat16" for v in g.values.values())
    # without AMX-BF16 or AVX512_BF16 no kernel rounds to bf16: nothing is marked, nothing changes
    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: False)
    _, g, ctx = _run(tiny_graph, compute="bf16")
    assert "round_early" not in ctx.report and not any(v.dtype == "bfloat16" for v in g.values.values())


@amx
def test_artifact_gives_the_same_bits(tiny_ldm_safetensors, tiny_ids, tmp_path, monkeypatch):
    """The artifact against the same compile with the pass removed: identical outputs (each reader rounded the
    value to bf16 itself before), less activation memory, and the report says so."""
    import runtime
    from sdcompile.compiler import compile_model
    from sdcompile.passes import pipeline
    from sdcompile.report import render_compile_report

    m = compile_model(tiny_ldm_safetensors, tmp_path / "early", CompileOptions(compute="bf16"))
    rep = m["report"]["round_early"]
    assert rep["values"] > 0 and rep["bytes_saved"] > 0
    assert any("_dtfb" in k or "_dtb" in k for k in m["kernels"]["kernels"])  # kernels that write or read bf16
    assert f"activations bf16 storage for {rep['values']} values" in render_compile_report(m, tmp_path / "early")
    got = runtime.load(tmp_path / "early", num_threads=2).run({"input_ids": tiny_ids})["last_hidden_state"]

    monkeypatch.setattr(pipeline, "PIPELINE", [p for p in pipeline.PIPELINE if p[0] != "round_early"])
    m2 = compile_model(tiny_ldm_safetensors, tmp_path / "plain", CompileOptions(compute="bf16"))
    assert "round_early" not in m2["report"]
    assert m2["memory"]["activation_bytes"] >= m["memory"]["activation_bytes"]
    want = runtime.load(tmp_path / "plain", num_threads=2).run({"input_ids": tiny_ids})["last_hidden_state"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")
def test_unet_attention_on_the_vector_unit(tmp_path, monkeypatch):
    """Without the tile unit (none, or turned off) the UNet's attention over 64 tokens or more runs on ``vdpbf16ps``
    (``cpu_attention_dot``), which rounds q, k and v to bf16 first: they are stored in bf16 (the attention kernels
    read bf16 q, k, v) and the UNet gives the same bits as without the pass. Fails if the vdpbf16ps attention is left
    out of ``schedules.cpu_rounds_to_bf16`` (its inputs stay f32) or reads bf16 inputs wrongly."""
    import runtime
    from sdcompile import examples_sd as E
    from sdcompile.passes import pipeline
    from tests.e2e.sd_helpers import SHAPE, compile_sd, state

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    ckpt = E.write_sd(tmp_path / "tiny.safetensors", SHAPE, 0, "safetensors", state=state())

    def attention_inputs(m) -> set[str]:
        """The storage dtypes of q, k and v over the artifact's flash attentions (64 queries or more)."""
        kernels = [k for k in m["kernels"]["kernels"].values() if k["op"] == "attention" and k["attrs"]["S"] >= 64]
        assert kernels and all(k["attrs"]["mma"] == "bf16" for k in kernels)
        return {p["dtype"] for k in kernels for p in k["params"][:3]}

    m = compile_sd(ckpt, tmp_path / "early", compute="bf16", components=["unet"])
    assert m["report"]["round_early"]["values"] > 0
    assert attention_inputs(m) == {"bfloat16"}
    monkeypatch.setattr(pipeline, "PIPELINE", [p for p in pipeline.PIPELINE if p[0] != "round_early"])
    m2 = compile_sd(ckpt, tmp_path / "plain", compute="bf16", components=["unet"])
    assert attention_inputs(m2) == {"float32"}

    got, want = (runtime.load(tmp_path / d, num_threads=2) for d in ("early", "plain"))
    fn = got._only()
    rng = np.random.default_rng(1)
    ins = {k: rng.standard_normal(v["shape"]).astype(v["dtype"]) for k, v in got.functions[fn]["inputs"].items()}
    a, b = got.call(fn, ins), want.call(fn, ins)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
