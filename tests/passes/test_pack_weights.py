"""pack_weights: float weights that only bf16-product GEMMs read (on the tile unit, or on vdpbf16ps without it) are
stored as the tile unit's B operands (bf16); the artifact's outputs are the same bits as without packing (bf16
products round the weight the same way), the manifest records the layout, and nothing is packed where a weight has
another reader, is quantized (q8_0 has a layout of its own on the tile unit, and another for the int8 VNNI GEMM
without it), the products are f32 or the CPU multiplies no bf16."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_fma
from sdcompile.codegen import tvm_layer
from sdcompile.ir import interpret, verify
from sdcompile.ir.weights import as_f32, raw_bytes
from sdcompile.kernels import layouts
from sdcompile.passes import fuse, legalize, mma, pack_weights, quantize
from sdcompile.passes.context import CompileOptions, PassContext
from sdcompile.quant.reference import dequantize
from sdcompile.quant.reference import quantize as quantize_values
from sdcompile.quant.types import get as get_type

amx = pytest.mark.skipif(not tvm_layer.host_amx_bf16(), reason="needs a CPU with AMX-BF16")
avx512 = pytest.mark.skipif(not cpu_fma.target_has_avx512(), reason="needs a CPU with AVX-512")


def _run(g, **opts):
    ctx = PassContext(CompileOptions(**opts))
    for p in (quantize.run, fuse.run, legalize.run, mma.run):
        g = p(g, ctx)
    out = pack_weights.run(g, ctx)
    verify(out, "pack_weights")
    return g, out, ctx


@amx
def test_packs_the_weights_of_bf16_gemms(tiny_graph):
    before, g, ctx = _run(tiny_graph, compute="bf16", tensor_type_rules=[("fc2", "q8_0")])
    gemms = [n for n in g.nodes if n.op == "linear"]
    packed = [n for n in gemms if n.attrs.get("wlayout")]
    q8 = [n for n in gemms if g.values[n.inputs[1]].dtype == "q8_0"]
    # every linear of the tiny encoder (128- and 512-wide: whole tiles) is packed: float weights as bf16 tiles,
    # q8_0 ones keep their type and bytes, in tile order
    assert packed and q8 and len(packed) == len(gemms)
    for n in q8:
        v, v0 = g.values[n.inputs[1]], before.values[n.inputs[1]]
        assert n.attrs["wlayout"] == layouts.AMX_Q8_0 and v.data.layout == layouts.AMX_Q8_0 and v0.dtype == "q8_0"
        np.testing.assert_array_equal(as_f32(v), as_f32(v0))
        raw = raw_bytes(v, False)
        np.testing.assert_array_equal(raw_bytes(v), layouts.pack(layouts.AMX_Q8_0, raw, *v.shape))
        np.testing.assert_array_equal(raw, raw_bytes(v0))
    for n in (n for n in packed if n not in q8):
        v, v0 = g.values[n.inputs[1]], before.values[n.inputs[1]]
        assert n.attrs["wlayout"] == layouts.AMX_BF16 and v.dtype == "bf16" and v.data.layout == layouts.AMX_BF16
        assert v0.dtype == "f32" and not v0.data.layout  # the pass copies
        # the values are the bf16 rounding of the weight's (the products' own rounding); the bytes are the tiles
        want = dequantize(quantize_values(as_f32(v0), "bf16"), "bf16", v0.shape)
        np.testing.assert_array_equal(as_f32(v), want)
        flat = raw_bytes(v)
        np.testing.assert_array_equal(flat, layouts.pack(layouts.AMX_BF16, raw_bytes(v, False), *v.shape))
        assert not np.array_equal(flat, raw_bytes(v, False))
        assert "pack_weights" in v.data.history[-1]
    rep = ctx.report["pack_weights"]["tensors"]
    assert len(rep) == len({n.inputs[1] for n in packed})
    assert {rep[n.inputs[1]][0] for n in q8} == {layouts.AMX_Q8_0}
    assert all(
        rep[n.inputs[1]] == (layouts.AMX_BF16, 2 * np.prod(g.values[n.inputs[1]].shape)) for n in packed if n not in q8
    )
    # the interpreter reads the logical weights: bf16-rounded values, close to the f32 graph's
    ids = np.arange(2 * 77).reshape(2, 77).astype(np.int32) % 1000
    a, b = interpret.run(before, {"input_ids": ids}), interpret.run(g, {"input_ids": ids})
    np.testing.assert_allclose(b["last_hidden_state"], a["last_hidden_state"], atol=0.05)
    assert not np.array_equal(b["last_hidden_state"], a["last_hidden_state"])


@pytest.mark.skipif(not tvm_layer.host_avx512_vnni(), reason="needs a CPU with AVX-512 VNNI")
def test_packs_q8_0_for_the_vnni_gemm(tiny_graph, monkeypatch):
    """Without the tile unit, q8_0 weights that only the int8 VNNI GEMM reads keep their type and bytes in its
    ``vpdpbusd`` order; q4_0 ones, which it also multiplies, stay row-major (decoded per call)."""
    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    before, g, ctx = _run(tiny_graph, compute="bf16", tensor_type_rules=[("fc2", "q8_0"), ("fc1", "q4_0")])
    gemms = [n for n in g.nodes if n.op == "linear"]
    q8 = [n for n in gemms if g.values[n.inputs[1]].dtype == "q8_0"]
    q4 = [n for n in gemms if g.values[n.inputs[1]].dtype == "q4_0"]
    assert q8 and q4 and all(n.attrs.get("mma") == "int8" for n in q8 + q4)
    for n in q8:
        v, v0 = g.values[n.inputs[1]], before.values[n.inputs[1]]
        assert n.attrs["wlayout"] == layouts.VNNI_Q8_0 and v.data.layout == layouts.VNNI_Q8_0 and v.dtype == "q8_0"
        np.testing.assert_array_equal(as_f32(v), as_f32(v0))
        raw = raw_bytes(v, False)
        np.testing.assert_array_equal(raw, raw_bytes(v0))
        np.testing.assert_array_equal(raw_bytes(v), layouts.pack(layouts.VNNI_Q8_0, raw, *v.shape))
        assert not np.array_equal(raw_bytes(v), raw)
    assert all(not n.attrs.get("wlayout") and not g.values[n.inputs[1]].data.layout for n in q4)
    rep = ctx.report["pack_weights"]["tensors"]
    assert {rep[n.inputs[1]][0] for n in q8} == {layouts.VNNI_Q8_0}
    shapes = [g.values[n.inputs[1]].shape for n in q8]
    assert [rep[n.inputs[1]][1] for n in q8] == [get_type("q8_0").row_bytes(K) * N for N, K in shapes]


@amx
def test_a_weight_with_another_reader_stays_row_major(tiny_graph):
    ctx = PassContext(CompileOptions(compute="bf16"))
    g = tiny_graph
    for p in (quantize.run, fuse.run, legalize.run, mma.run):
        g = p(g, ctx)
    lin = next(n for n in g.nodes if n.op == "linear" and n.attrs.get("mma") == "bf16")
    w = lin.inputs[1]  # a second reader of the same weight, which reads it row-major
    g.outputs.append(g.add_node("dequantize", [w], "extra_out", g.values[w].shape, lin.component))
    out = pack_weights.run(g, ctx)
    verify(out, "pack_weights")
    assert not out.values[w].data.layout and out.values[w].dtype == "f32"
    assert all(not n.attrs.get("wlayout") for n in out.nodes if w in n.inputs)
    assert ctx.report["pack_weights"]["tensors"]  # the others are packed


@avx512
def test_f32_products_store_f32_weights_as_fma_panels(tiny_graph):
    """With f32 products, f32 weights that only the f32 FMA GEMM reads are stored as its panels, the same values in
    another order; f16 weights (fc2 here) are not widened for it, and nothing takes a bf16 layout."""
    before, g, ctx = _run(tiny_graph, compute="f32", tensor_type_rules=[("fc2", "f16")])
    gemms = [n for n in g.nodes if n.op == "linear"]
    packed = [n for n in gemms if n.attrs.get("wlayout")]
    f16 = [n for n in gemms if g.values[n.inputs[1]].dtype == "f16"]
    assert packed and f16 and not any(n.attrs.get("wlayout") for n in f16)
    for n in packed:
        v, v0 = g.values[n.inputs[1]], before.values[n.inputs[1]]
        assert n.attrs["wlayout"] == layouts.FMA_F32 and v.data.layout == layouts.FMA_F32
        assert v.dtype == v0.dtype == "f32" and not v0.data.layout  # the pass copies
        np.testing.assert_array_equal(as_f32(v), as_f32(v0))
        flat = raw_bytes(v)
        np.testing.assert_array_equal(flat, layouts.pack(layouts.FMA_F32, raw_bytes(v, False), *v.shape))
        assert not np.array_equal(flat, raw_bytes(v, False))
    # the f32 linears left row-major are those the FMA kernel does not take (the dispatch, asked per node)
    from sdcompile.codegen.plan import node_spec

    for n in gemms:
        f32 = g.values[n.inputs[1]].dtype == "f32"
        assert bool(n.attrs.get("wlayout")) == (f32 and cpu_fma.reads_panels(node_spec(before, n))), n.name
    assert {layout for layout, _ in ctx.report["pack_weights"]["tensors"].values()} == {layouts.FMA_F32}
    # the interpreter reads the logical weights: the same outputs
    ids = np.arange(2 * 77).reshape(2, 77).astype(np.int32) % 1000
    a, b = interpret.run(before, {"input_ids": ids}), interpret.run(g, {"input_ids": ids})
    np.testing.assert_array_equal(b["last_hidden_state"], a["last_hidden_state"])


def test_no_bf16_layouts_without_bf16_products(tiny_graph, monkeypatch):
    """Without a unit that multiplies bf16 (mma keeps f32 products) and without AVX-512 f32 FMAs, nothing is
    packed; with the FMAs only their f32 panels."""
    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: False)
    _, g, ctx = _run(tiny_graph, compute="bf16")
    assert {n.attrs.get("wlayout") for n in g.nodes} <= {None, layouts.FMA_F32}
    monkeypatch.setattr(cpu_fma, "target_has_avx512", lambda: False)
    _, g, ctx = _run(tiny_graph, compute="bf16")
    assert "pack_weights" not in ctx.report and not any(n.attrs.get("wlayout") for n in g.nodes)
    assert all(not v.data.layout for v in g.weights())


@pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")
def test_without_the_tile_unit_float_weights_are_packed_for_vdpbf16ps(tiny_graph, monkeypatch):
    """No AMX-BF16 (AMD Zen 4; here also ``SDCOMPILE_NO_AMX``): the vdpbf16ps GEMM reads the same bf16 tiles, so
    float weights of its GEMMs are packed; q8_0 ones, whose products are int8 on VNNI, in that kernel's order
    (``test_packs_q8_0_for_the_vnni_gemm``), never as the tile unit's."""
    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    monkeypatch.setattr(tvm_layer, "host_bf16_dot_fast", lambda: True)  # Intel: mma keeps f32 products otherwise
    before, g, ctx = _run(tiny_graph, compute="bf16", tensor_type_rules=[("fc2", "q8_0")])
    gemms = [n for n in g.nodes if n.op == "linear" and n.attrs.get("mma") == "bf16"]
    floats = [n for n in gemms if get_type(before.values[n.inputs[1]].dtype).is_float]
    assert floats and all(n.attrs.get("wlayout") == layouts.AMX_BF16 for n in floats)
    assert all(g.values[n.inputs[1]].dtype == "bf16" for n in floats)
    q8 = [n for n in g.nodes if n.op == "linear" and g.values[n.inputs[1]].dtype == "q8_0"]
    q8_layout = layouts.VNNI_Q8_0 if tvm_layer.host_avx512_vnni() else ""
    assert q8 and all(g.values[n.inputs[1]].data.layout == q8_layout for n in q8)
    assert {layout for layout, _ in ctx.report["pack_weights"]["tensors"].values()} == {layouts.AMX_BF16} | (
        {q8_layout} if q8_layout else set()
    )


@pytest.mark.parametrize(
    "unit",
    [
        pytest.param("tiles", marks=amx),
        pytest.param(
            "vdpbf16ps",
            marks=pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16"),
        ),
        pytest.param("fma", marks=avx512),
    ],
)
def test_packed_artifact_gives_the_same_bits(unit, tiny_ldm_safetensors, tiny_ids, tmp_path, monkeypatch):
    """The artifact with packed weights against the same compile with the pass removed: identical outputs (the
    kernel reads the same bf16 operands, only from the weights instead of a per-call panel), on the tile unit and,
    without it, on the vdpbf16ps GEMM."""
    import runtime
    from sdcompile.compiler import compile_model
    from sdcompile.passes import pipeline

    if unit == "vdpbf16ps":
        monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
        monkeypatch.setattr(tvm_layer, "host_bf16_dot_fast", lambda: True)
    opts = {"compute": "f32" if unit == "fma" else "bf16", "tensor_type_rules": [("fc2", "q8_0")]}
    m = compile_model(tiny_ldm_safetensors, tmp_path / "packed", CompileOptions(**opts))
    packed = {n: t for n, t in m["weights"]["tensors"].items() if t.get("layout")}
    want_layouts = {
        "tiles": {("amx_bf16", "bf16"), ("amx_q8_0", "q8_0")},
        # fc2's q8_0 weights take int8 products on VNNI, in its order
        "vdpbf16ps": {("amx_bf16", "bf16")} | ({("vnni_q8_0", "q8_0")} if tvm_layer.host_avx512_vnni() else set()),
        "fma": {("fma_f32", "f32")},
    }[unit]
    assert {(t["layout"], t["dtype"]) for t in packed.values()} == want_layouts
    count = {k: v["weights"] for k, v in m["report"]["pack_weights"]["layouts"].items()}
    assert sum(count.values()) == len(packed) and count.get("amx_q8_0", 0) == (2 if unit == "tiles" else 0)
    main = "fma_f32" if unit == "fma" else "amx_bf16"
    assert any(f"wlayout{main}" in k for k in m["kernels"]["kernels"])
    from sdcompile.report import render_compile_report

    text = render_compile_report(m, tmp_path / "packed")
    assert f"layout    {count[main]} weights" in text and ("(amx_q8_0)" in text) == (unit == "tiles")
    assert ("(vnni_q8_0)" in text) == (("vnni_q8_0", "q8_0") in want_layouts)
    got = runtime.load(tmp_path / "packed", num_threads=2).run({"input_ids": tiny_ids})["last_hidden_state"]

    monkeypatch.setattr(pipeline, "PIPELINE", [p for p in pipeline.PIPELINE if p[0] != "pack_weights"])
    m2 = compile_model(tiny_ldm_safetensors, tmp_path / "plain", CompileOptions(**opts))
    assert not any(t.get("layout") for t in m2["weights"]["tensors"].values())
    want = runtime.load(tmp_path / "plain", num_threads=2).run({"input_ids": tiny_ids})["last_hidden_state"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")
def test_winograd_convs_keep_row_major_weights(monkeypatch):
    """Without the tile unit, a 3x3 conv that Winograd with vdpbf16ps products takes (``cpu_winograd_dot``: it
    transforms the weights as stored) keeps its weight row-major; one over a few pixels (the direct vdpbf16ps GEMM)
    gets it packed. Fails if the Winograd conv's weight is packed: the kernel would no longer take its spec."""
    from sdcompile.ir import Graph
    from sdcompile.ir.graph import WeightData

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    monkeypatch.setattr(tvm_layer, "host_bf16_dot_fast", lambda: True)
    g = Graph()
    for i, side in enumerate((32, 4)):
        x = g.add_input(f"x{i}", (2, side, side, 64), "float32", "unet")
        w = g.add_weight(f"w{i}", (64, 576), "f16", "unet", WeightData(None, f"w{i}", "f16"))
        attrs = {"kh": 3, "kw": 3, "pads": (1, 1, 1, 1), "stride": 1, "bias": False}
        g.outputs.append(g.add_node("conv2d", [x, w], f"y{i}", (2, side, side, 64), "unet", **attrs))
    ctx = PassContext(CompileOptions(compute="bf16"))
    g = pack_weights.run(mma.run(g, ctx), ctx)
    winograd, direct = g.nodes
    assert winograd.attrs["mma"] == direct.attrs["mma"] == "bf16"
    assert "wlayout" not in winograd.attrs and g.values["w0"].dtype == "f16"
    assert direct.attrs["wlayout"] == layouts.AMX_BF16 and set(ctx.report["pack_weights"]["tensors"]) == {"w1"}
