"""mma: --compute bf16 marks the linear and conv2d nodes with float weights and (with AMX-BF16) the attention nodes
(heads up to ``cpu_attention_amx.MAX_DH`` channels) for bf16 products (CPU, AMX-BF16 or AVX512_BF16 host), keeps
quantized weights, wider heads and (without AMX-BF16, unless vdpbf16ps is fast) attention, and says where it has no effect; the
kernels the marks lead to compute in bf16."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.codegen.plan import node_spec
from sdcompile.errors import OptionError
from sdcompile.ir import Graph, interpret, verify
from sdcompile.passes import fuse, legalize, mma, quantize
from sdcompile.passes.context import CompileOptions, PassContext
from sdcompile.quant.types import get as get_type


def _run(g, **opts):
    ctx = PassContext(CompileOptions(**opts))
    for p in (quantize.run, fuse.run, legalize.run):
        g = p(g, ctx)
    out = mma.run(g, ctx)
    verify(out, "mma")
    return g, out, ctx


@pytest.mark.skipif(not tvm_layer.host_amx_bf16(), reason="needs a CPU with AMX-BF16")
def test_float_weights_get_bf16_products(tiny_graph):
    rules = [("fc1", "q5_1"), ("fc2", "q8_0")]
    before, g, ctx = _run(tiny_graph, compute="bf16", tensor_type_rules=rules)
    marked = [n for n in g.nodes if n.attrs.get("mma") == "bf16"]
    kept = [n for n in g.nodes if n.op == "linear" and "mma" not in n.attrs]
    assert marked and kept  # the fc1 layers are q5_1: their integer kernels stay
    assert all(g.values[n.inputs[1]].dtype == "q5_1" for n in kept)
    # the fc2 layers are q8_0: decoded to bf16 operands for the tile unit, and counted as such
    q8 = [n for n in marked if n.op == "linear" and g.values[n.inputs[1]].dtype == "q8_0"]
    assert q8 and ctx.report["mma"]["quantized"] == len(q8) and "decoded to bf16" in ctx.report["mma"]["why"]
    assert ctx.report["mma"]["nodes"] == len(marked) and ctx.report["mma"]["kept_f32"] == len(kept)
    # the text encoder's causal self-attention and its pooling row are marked too
    attention = [n for n in g.nodes if n.op == "attention"]
    assert attention and all(n.attrs.get("mma") == "bf16" for n in attention)
    assert any(n.attrs.get("causal") for n in attention) and ctx.report["mma"]["attention"] == len(attention)
    assert all(node_spec(g, n).attr("mma") == "bf16" for n in marked)
    assert not any("mma" in n.attrs for n in before.nodes)  # the pass copies
    # the interpreter's reference is unchanged (the mark is about the kernel's arithmetic, not the op)
    ids = np.arange(2 * 77).reshape(2, 77).astype(np.int32) % 1000
    a, b = interpret.run(before, {"input_ids": ids}), interpret.run(g, {"input_ids": ids})
    np.testing.assert_array_equal(a["last_hidden_state"], b["last_hidden_state"])


def _attention_graph(width: int, heads: int) -> Graph:
    g = Graph()
    q = g.add_input("q", (2, 45, width), "float32", "unet")
    kv = g.add_input("kv", (2, 77, width), "float32", "unet")
    g.outputs.append(g.add_node("attention", [q, kv, kv], "o", (2, 45, width), "unet", heads=heads, causal=False))
    return g


@pytest.mark.skipif(not tvm_layer.host_amx_bf16(), reason="needs a CPU with AMX-BF16")
def test_attention_marks_and_kept_heads():
    from schedules.cpu_attention_amx import MAX_DH

    _, g, ctx = _run(_attention_graph(80, 2), compute="bf16")
    (n,) = [n for n in g.nodes if n.op == "attention"]
    spec = node_spec(g, n)
    assert n.attrs["mma"] == "bf16" and spec.attr("mma") == "bf16" and spec.attr("Dh") == 40 and spec.attr("T") == 77
    assert ctx.report["mma"] == {"compute": "bf16", "nodes": 1, "attention": 1, "kept_f32": 0, "why": ""}
    # a head wider than the kernel's o^T buffer keeps the f32 kernel, and the report says so
    _, g, ctx = _run(_attention_graph(MAX_DH + 16, 1), compute="bf16")
    assert not any("mma" in n.attrs for n in g.nodes)
    rep = ctx.report["mma"]
    assert (rep["nodes"], rep["attention"], rep["kept_f32"]) == (0, 0, 1) and f"wider than {MAX_DH}" in rep["why"]


def test_vector_unit_marks_products_and_attention(tiny_graph, monkeypatch):
    """AVX512_BF16 without AMX-BF16 (AMD Zen 4; Intel with SDCOMPILE_NO_AMX): linear and conv2d get bf16 products
    on the vector unit, and so does attention over 64 queries or more (``cpu_attention_dot``); shorter attention
    keeps the f32 kernel, and the report counts and says so."""
    from schedules.cpu_attention_fma import MIN_QUERIES

    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: True)
    monkeypatch.setattr(tvm_layer, "host_avx512_vnni", lambda: False)  # int8 products: the next tests
    monkeypatch.setattr(tvm_layer, "host_avx2", lambda: False)
    monkeypatch.setattr(tvm_layer, "cpu_vendor", lambda: "AuthenticAMD")
    before, g, ctx = _run(tiny_graph, compute="bf16", tensor_type_rules=[("fc1", "q8_0")])
    marked = [n for n in g.nodes if n.attrs.get("mma") == "bf16" and n.op != "attention"]
    attention = [n for n in g.nodes if n.op == "attention"]
    long = [n for n in attention if g.values[n.inputs[0]].shape[1] >= MIN_QUERIES]
    quantized = [n for n in g.nodes if n.op == "linear" and "mma" not in n.attrs]
    assert marked and long and quantized and all(n.op in ("linear", "conv2d") for n in marked)
    assert all(g.values[n.inputs[1]].dtype == "q8_0" for n in quantized)
    assert all(n.attrs.get("mma") == ("bf16" if n in long else None) for n in attention)
    rep = ctx.report["mma"]
    assert (rep["nodes"], rep["attention"]) == (len(marked) + len(long), len(long))
    assert rep["kept_f32"] == len(attention) - len(long) + len(quantized)
    assert "quantized" in rep["why"]
    assert (f"fewer than {MIN_QUERIES} queries" in rep["why"]) == (len(long) < len(attention))
    monkeypatch.undo()
    if tvm_layer.host_avx512_bf16():  # the marks lead to the vdpbf16ps kernel where the tile unit is off
        import schedules
        from schedules import cpu_bf16_dot

        monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
        assert schedules._host_bf16_dot()
        assert all(cpu_bf16_dot.applicable(node_spec(g, n), 16, True) for n in marked)
        from schedules import cpu_attention_dot

        assert all(cpu_attention_dot.applicable(node_spec(g, n), 16, False) for n in long)


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_vnni_takes_q8_0_and_q4_0_without_amx(tiny_graph, monkeypatch, vendor):
    """Without AMX-BF16 but with AVX512_VNNI, q8_0 and q4_0 linears get int8 products (the VNNI kernel), the other
    quant types keep their kernels; float weights get bf16 products only where vdpbf16ps is fast (AMD), else stay
    f32 with the reason; the report counts the int8 nodes and says what they cost in accuracy."""
    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: True)
    monkeypatch.setattr(tvm_layer, "host_avx512_vnni", lambda: True)
    monkeypatch.setattr(tvm_layer, "cpu_vendor", lambda: vendor)
    rules = [("fc1", "q8_0"), ("fc2", "q4_0"), ("q_proj", "q5_1")]
    with _built_for("znver4"):  # the kernels' rules ask the build target (VNNI, BF16), whatever this host is
        _, g, ctx = _run(tiny_graph, compute="bf16", tensor_type_rules=rules)
    lin = [n for n in g.nodes if n.op == "linear"]
    int8 = [n for n in lin if n.attrs.get("mma") == "int8"]
    assert {g.values[n.inputs[1]].dtype for n in int8} == {"q8_0", "q4_0"}
    assert all("mma" not in n.attrs for n in lin if g.values[n.inputs[1]].dtype == "q5_1")
    floats = [n for n in lin if get_type(g.values[n.inputs[1]].dtype).is_float]
    assert floats and all(n.attrs.get("mma") == ("bf16" if vendor == "AuthenticAMD" else None) for n in floats)
    rep = ctx.report["mma"]
    assert rep["int8"] == len(int8) and "VNNI" in rep["why"] and "ggml's q8_0" in rep["why"]
    assert ("half the f32 FMA rate" in rep["why"]) == (vendor == "GenuineIntel")
    assert not rep["why"].startswith("--compute bf16 has no effect")
    from schedules import cpu_vnni

    with _built_for("znver4"):  # the marks lead to the VNNI kernel
        assert all(cpu_vnni.applicable(node_spec(g, n), 16) for n in int8)


def test_avx2_int8_products_without_vnni(tiny_graph, monkeypatch):
    """With AVX2 but neither AMX-BF16, AVX512_BF16 nor VNNI (AMD Zen 3, Intel Haswell to Alder Lake), q8_0 and q4_0
    linears get int8 products on vpmaddwd (``cpu_madd``), the other quant types and float weights keep theirs with the
    reason; 3x3 convs a Winograd kernel takes (by tiles, or over fewer tiles by output channels) keep f32 products,
    smaller ones get int8; every mark leads to the AVX2 kernel where the build target is Haswell."""
    from schedules import cpu_madd

    for flag, value in (("host_amx_bf16", False), ("host_avx512_bf16", False), ("host_avx512_vnni", False)):
        monkeypatch.setattr(tvm_layer, flag, lambda value=value: value)
    monkeypatch.setattr(tvm_layer, "host_avx2", lambda: True)
    rules = [("fc1", "q8_0"), ("fc2", "q4_0"), ("q_proj", "q5_1")]
    with _built_for("haswell"):
        _, g, ctx = _run(tiny_graph, compute="bf16", tensor_type_rules=rules)
    lin = [n for n in g.nodes if n.op == "linear"]
    int8 = [n for n in lin if n.attrs.get("mma") == "int8"]
    assert {g.values[n.inputs[1]].dtype for n in int8} == {"q8_0", "q4_0"}
    assert all("mma" not in n.attrs for n in lin if n not in int8)
    rep = ctx.report["mma"]
    assert rep["int8"] == len(int8) and "AVX2's vpmaddwd" in rep["why"] and "no AVX512_BF16" in rep["why"]
    with _built_for("haswell"):
        assert all(cpu_madd.applicable(node_spec(g, n), 8) for n in int8)
    # SD1.5's guided levels at 256x256: 32x32 (Winograd), 8x8 (by output channels), 4x4 (neither: int8)
    from sdcompile.ir.graph import WeightData

    g = Graph()
    for i, side in enumerate((32, 8, 4)):
        x = g.add_input(f"x{i}", (2, side, side, 256), "float32", "unet")
        w = g.add_weight(f"w{i}", (256, 9 * 256), "q8_0", "unet", WeightData(None, f"w{i}", "q8_0"))
        attrs = {"kh": 3, "kw": 3, "pads": (1, 1, 1, 1), "stride": 1, "bias": False}
        g.outputs.append(g.add_node("conv2d", [x, w], f"y{i}", (2, side, side, 256), "unet", **attrs))
    ctx = PassContext(CompileOptions(compute="bf16"))
    with _built_for("haswell"):
        g = mma.run(g, ctx)
    tiles, by_weights, direct = g.nodes
    assert "mma" not in tiles.attrs and "mma" not in by_weights.attrs and direct.attrs["mma"] == "int8"
    assert ctx.report["mma"]["kept_f32"] == 2 and "that Winograd takes keep f32" in ctx.report["mma"]["why"]
    # float weights: int16 products in GEMMs of WIDE_FROM_ROWS rows or more (not the 3x3 convs Winograd takes)
    g = Graph()
    for i, rows in enumerate((cpu_madd.WIDE_FROM_ROWS, cpu_madd.WIDE_FROM_ROWS - 1)):
        x = g.add_input(f"x{i}", (1, rows, 256), "float32", "unet")
        w = g.add_weight(f"w{i}", (320, 256), "f16", "unet", WeightData(None, f"w{i}", "f16"))
        g.outputs.append(g.add_node("linear", [x, w], f"y{i}", (1, rows, 320), "unet", bias=False, act="none"))
    x = g.add_input("x9", (2, 32, 32, 256), "float32", "unet")
    w = g.add_weight("w9", (256, 9 * 256), "f16", "unet", WeightData(None, "w9", "f16"))
    attrs = {"kh": 3, "kw": 3, "pads": (1, 1, 1, 1), "stride": 1, "bias": False}
    g.outputs.append(g.add_node("conv2d", [x, w], "y9", (2, 32, 32, 256), "unet", **attrs))
    ctx = PassContext(CompileOptions(compute="bf16"))
    with _built_for("haswell"):
        g = mma.run(g, ctx)
        many, few, conv = g.nodes
        assert many.attrs["mma"] == "int16" and cpu_madd.applicable(node_spec(g, many), 8)
    assert "mma" not in few.attrs and "mma" not in conv.attrs
    rep = ctx.report["mma"]
    assert (rep["int16"], rep["nodes"], rep["kept_f32"]) == (1, 1, 2) and "14 bits" in rep["why"]


def test_no_effect_is_said(tiny_graph, monkeypatch):
    _, g, ctx = _run(tiny_graph, compute="bf16", target="vulkan")
    assert not any("mma" in n.attrs for n in g.nodes) and "no effect on vulkan" in ctx.report["mma"]["why"]
    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: False)
    _, g, ctx = _run(tiny_graph, compute="bf16")
    why = ctx.report["mma"]["why"]
    assert not any("mma" in n.attrs for n in g.nodes) and "no AMX-BF16" in why and "no AVX512_BF16" in why
    monkeypatch.undo()
    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")  # what a user sets for an artifact that must run without AMX
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: False)
    _, g, ctx = _run(tiny_graph, compute="bf16")
    assert not any("mma" in n.attrs for n in g.nodes) and "no AMX-BF16" in ctx.report["mma"]["why"]
    monkeypatch.undo()
    # Intel's vdpbf16ps runs at half its FMA rate: without the tile unit the products stay f32, and the report says why
    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: True)
    monkeypatch.setattr(tvm_layer, "cpu_vendor", lambda: "GenuineIntel")
    _, g, ctx = _run(tiny_graph, compute="bf16")
    assert not any("mma" in n.attrs for n in g.nodes) and "half the f32 FMA rate" in ctx.report["mma"]["why"]
    monkeypatch.undo()
    _, g, ctx = _run(tiny_graph)
    assert "mma" not in ctx.report and not any("mma" in n.attrs for n in g.nodes)
    with pytest.raises(OptionError, match="unknown --compute"):
        _run(tiny_graph, compute="fp8")


def test_module_report_sums_functions_and_keeps_every_reason():
    """compile runs the passes per function (text encoder, UNet, VAE); the module's report sums the counts and keeps
    each function's reasons once, and says "no effect" only where no function's products changed."""
    from sdcompile.compiler import _merge_reports

    def rep(mma: dict) -> dict:
        return {
            "quantize": {"tensors": []},
            "fuse": {"fired": {}, "declined": {}, "nodes": 0},
            "legalize": {"native": 0, "fallbacks": []},
            "mma": {"compute": "bf16", "nodes": 0, "attention": 0, "kept_f32": 0, "why": ""} | mma,
        }

    none = "--compute bf16 has no effect: "
    out = _merge_reports(
        {
            "encode": rep({"kept_f32": 2, "why": none + "float weights keep f32 products: slow vdpbf16ps"}),
            "denoise": rep(
                {
                    "nodes": 3,
                    "int8": 3,
                    "kept_f32": 1,
                    "why": "float weights keep f32 products: slow "
                    "vdpbf16ps; q8_0/q4_0 weights multiply int8 activations on AVX-512 VNNI",
                }
            ),
        }
    )["mma"]
    assert (out["nodes"], out["int8"], out["quantized"], out["kept_f32"]) == (3, 3, 0, 3)
    assert out["why"] == (
        "float weights keep f32 products: slow vdpbf16ps; q8_0/q4_0 weights multiply int8 activations on AVX-512 VNNI"
    )
    only = _merge_reports({"encode": rep({"kept_f32": 2, "why": none + "a"}), "x": rep({"why": none + "b"})})["mma"]
    assert only["why"] == none + "a; b"


def _convs(pixels: list[int], wtype: str, channels: int | list[int] = 64) -> Graph:
    """One 3x3 conv (``channels`` -> 64 channels, batch 1) with ``wtype`` weights per image side in ``pixels``."""
    from sdcompile.ir.graph import WeightData

    g = Graph()
    for i, side in enumerate(pixels):
        c = channels[i] if isinstance(channels, list) else channels
        x = g.add_input(f"x{i}", (1, side, side, c), "float32", "vae")
        w = g.add_weight(f"w{i}", (64, 9 * c), wtype, "vae", WeightData(None, f"w{i}", wtype))
        b = g.add_weight(f"b{i}", (64,), "f32", "vae", WeightData(None, f"b{i}", "f32"))
        attrs = {"kh": 3, "kw": 3, "pads": (1, 1, 1, 1), "stride": 1, "bias": True}
        g.outputs.append(g.add_node("conv2d", [x, w, b], f"y{i}", (1, side, side, 64), "vae", **attrs))
    return g


@pytest.mark.parametrize("wtype", ["q8_0", "q4_0"])
def test_vnni_leaves_convs_over_many_pixels_to_winograd(monkeypatch, wtype):
    """Without AMX-BF16 or a fast AVX512_BF16 (Intel Ice Lake: VNNI only), a q8_0 / q4_0 3x3 conv over
    OVER_PIXELS["cpu_vnni"] pixels or more keeps f32 products (Winograd runs it faster than int8 products on VNNI,
    and more exactly) and the report says why; a smaller one gets int8 products. One table decides this here and in
    the CPU dispatch."""
    from schedules import cpu_fma, cpu_winograd
    from schedules.cpu import CpuInfo

    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_vnni", lambda: True)
    monkeypatch.setattr(tvm_layer, "cpu_vendor", lambda: "GenuineIntel")
    side = int(cpu_winograd.OVER_PIXELS["cpu_vnni"] ** 0.5)
    ctx = PassContext(CompileOptions(compute="bf16"))
    with _built_for("icelake-server"):  # VNNI without BF16, whatever this host is (the rules ask the target)
        g = mma.run(_convs([side, side // 2], wtype), ctx)
    big, small = g.nodes
    assert "mma" not in big.attrs and small.attrs["mma"] == "int8"
    rep = ctx.report["mma"]
    assert rep["kept_f32"] == 1 and rep["int8"] == 1 and "Winograd" in rep["why"]
    if cpu_fma.target_has_avx512():  # the kept conv is Winograd's on this host (its AMX rule agrees)
        import schedules

        assert schedules.cpu_rule(node_spec(g, big), CpuInfo()) is cpu_winograd.linear


def _built_for(mcpu: str):
    """The CPU target the kernels' rules ask what it has (``schedules.cpu_amx.target_has``): LLVM's ``mcpu``."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu})


def _zen4(monkeypatch) -> None:
    """The host as an AMD Zen 4 (no tile unit, a fast vdpbf16ps, VNNI); the bf16 Winograd kernel's rule also asks the
    build target, so this host must have AVX512_BF16."""
    from schedules import cpu_bf16_dot

    if not cpu_bf16_dot.target_has_bf16_dot():
        pytest.skip("the bf16 Winograd kernel's rule asks the build target for AVX512_BF16")
    monkeypatch.setattr(tvm_layer, "host_amx_bf16", lambda: False)
    monkeypatch.setattr(tvm_layer, "host_avx512_bf16", lambda: True)
    monkeypatch.setattr(tvm_layer, "host_bf16_dot_fast", lambda: True)
    monkeypatch.setattr(tvm_layer, "host_avx512_vnni", lambda: True)


@pytest.mark.parametrize("wtype", ["q8_0", "q4_k"])
def test_bf16_dot_quantized_convs_take_winograd_with_bf16_products(monkeypatch, wtype):
    """Where vdpbf16ps is fast (AMD Zen 4), quantized 3x3 convs that Winograd takes get bf16 products whatever their
    size (decoded, transformed and rounded to bf16 by ``cpu_winograd_dot``: faster than VNNI's int8 products and
    more exact), counted as quantized; a 1x1 conv of q8_0 weights keeps int8 products on VNNI."""
    from schedules import cpu_winograd, cpu_winograd_dot
    from sdcompile.ir.graph import WeightData

    _zen4(monkeypatch)
    side = int(cpu_winograd.OVER_PIXELS["cpu_vnni"] ** 0.5)
    g = _convs([side, side // 2], wtype)
    x = g.add_input("x9", (1, 16, 16, 64), "float32", "vae")
    w = g.add_weight("w9", (64, 64), "q8_0", "vae", WeightData(None, "w9", "q8_0"))
    attrs = {"kh": 1, "kw": 1, "pads": (0, 0, 0, 0), "stride": 1, "bias": False}
    g.outputs.append(g.add_node("conv2d", [x, w], "y9", (1, 16, 16, 64), "vae", **attrs))
    ctx = PassContext(CompileOptions(compute="bf16"))
    g = mma.run(g, ctx)
    big, small, pointwise = g.nodes
    assert big.attrs["mma"] == small.attrs["mma"] == "bf16" and pointwise.attrs["mma"] == "int8"
    assert cpu_winograd_dot.applicable(node_spec(g, big), 16, True)
    rep = ctx.report["mma"]
    assert rep["nodes"] == 3 and rep["quantized"] == 2 and rep["int8"] == 1 and rep["kept_f32"] == 0
    assert "Winograd takes run it with bf16 products" in rep["why"]


def test_bf16_dot_convs_over_many_pixels(monkeypatch):
    """Where float weights' bf16 products run on vdpbf16ps (AMD Zen 4), a 3x3 conv that Winograd takes gets bf16
    products whatever its size (Winograd on vdpbf16ps, ``cpu_winograd_dot``, runs it fastest); one whose channels
    are not whole conversions of 32, over OVER_PIXELS["cpu_bf16_dot"] pixels or more, keeps f32 products (Winograd in
    f32 runs it faster than the direct vdpbf16ps GEMM, and more exactly) and the report says why; a smaller one gets
    bf16 products."""
    from schedules import cpu_winograd

    _zen4(monkeypatch)
    side = int(cpu_winograd.OVER_PIXELS["cpu_bf16_dot"] ** 0.5) + 1
    ctx = PassContext(CompileOptions(compute="bf16"))
    g = mma.run(_convs([side, side, side // 2], "f16", [64, 80, 80]), ctx)
    whole, big, small = g.nodes
    assert whole.attrs["mma"] == "bf16" and "mma" not in big.attrs and small.attrs["mma"] == "bf16"
    rep = ctx.report["mma"]
    assert rep["kept_f32"] == 1 and rep["nodes"] == 2 and "Winograd runs them faster than vdpbf16ps" in rep["why"]


def test_bf16_dot_quantized_convs_over_few_tiles_take_winograd_by_weights(monkeypatch):
    """Where vdpbf16ps is fast (AMD Zen 4), a q8_0 3x3 conv over 32 tiles (SD1.5's 8x8 level with guidance) gets bf16
    products: Winograd by output channels (``cpu_winograd_dot_by_weights``, 1.2-1.3x VNNI's int8 products there),
    counted as quantized; over 8 tiles (too few for it) the conv keeps int8 products on VNNI."""
    import schedules
    from schedules import cpu_winograd_dot_by_weights
    from schedules.cpu import CpuInfo
    from sdcompile.ir.graph import WeightData

    _zen4(monkeypatch)
    g = Graph()
    for i, side in enumerate((8, 4)):
        x = g.add_input(f"x{i}", (2, side, side, 256), "float32", "unet")
        w = g.add_weight(f"w{i}", (256, 9 * 256), "q8_0", "unet", WeightData(None, f"w{i}", "q8_0"))
        attrs = {"kh": 3, "kw": 3, "pads": (1, 1, 1, 1), "stride": 1, "bias": False}
        g.outputs.append(g.add_node("conv2d", [x, w], f"y{i}", (2, side, side, 256), "unet", **attrs))
    ctx = PassContext(CompileOptions(compute="bf16"))
    g = mma.run(g, ctx)
    few, fewer = g.nodes
    assert few.attrs["mma"] == "bf16" and fewer.attrs["mma"] == "int8"
    assert ctx.report["mma"]["quantized"] == 1 and ctx.report["mma"]["int8"] == 1
    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")  # the dispatch as on Zen 4
    assert schedules.cpu_rule(node_spec(g, few), CpuInfo()) is cpu_winograd_dot_by_weights.linear
