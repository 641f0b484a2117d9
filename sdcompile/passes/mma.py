"""Pass `mma`: the precision of matrix products (``compile --compute f32|bf16``).

Contract: with ``compute`` f32 the graph is unchanged. With bf16, on the CPU, every ``linear`` and ``conv2d`` whose
weight is a float type (f32, f16, bf16) gets the node attribute ``mma="bf16"``: its kernel rounds both operands to
bf16 and sums the products in f32, as PyTorch's bf16 autocast does — on the AMX tile unit where the compiling CPU
(the one the code is built for) has AMX-BF16 (``schedules/cpu_amx_bf16.py``), else on the vector unit where it has
AVX512_BF16 at least at its f32 FMA rate (``vdpbf16ps``: ``schedules/cpu_bf16_dot.py``; AMD Zen 4 and later:
``tvm_layer.BF16_DOT_FAST_VENDORS``). Intel's vdpbf16ps runs at half its FMA rate, so without the tile unit (or
with SDCOMPILE_NO_AMX) the products stay f32 there and the report says why.
With AMX-BF16, ``linear`` and ``conv2d`` with q8_0 or q4_0 weights (``cpu_amx_bf16.BLOCK_TYPES``: d * q is exact
in f32) are marked too, counted as ``quantized``: their kernel decodes the blocks straight into bf16 operands, one
rounding as for f16 weights, and runs the same tile GEMM (``passes/pack_weights.py`` then stores the weights
of these nodes in the kernel's own layouts) — the integer kernels (``cpu_amx.py``) are more exact
(16-bit activations) but, with a scale per 32 values, leave the tile unit every step. The other quantized types, and
every quantized type without AMX-BF16, keep their own integer kernels — except q8_0 and q4_0 on a CPU without
AMX-BF16 that has AVX512_VNNI (Intel since Cascade Lake, AMD Zen 4): they get ``mma="int8"``, counted as ``int8``,
and multiply int8 activations quantized per 32 values as ggml's q8_0 (``schedules/cpu_vnni.py``: 64 multiply-adds
per instruction, about twice the error of bf16 products), where 16 or more rows, N in whole vectors and a conv's
channels in whole vectors let the kernel take them — but not the 3x3 convs the Winograd kernel takes over
``cpu_winograd.OVER_PIXELS["cpu_vnni"]`` pixels (a VAE's 128x128 to 512x512 levels): with the weights decoded
to f32 it runs them 1.05-1.45x faster than VNNI does, and more exactly, so they keep f32 products (``kept_f32``).
On a CPU with AVX2 and none of AMX-BF16, AVX512_BF16 or VNNI (AMD Zen 2 and 3, Intel Haswell to Alder Lake) the same
int8 products run on ``vpmaddwd`` (``schedules/cpu_madd.py``), except every 3x3 conv a Winograd kernel takes (by tiles,
or over fewer tiles by output channels: ``cpu_winograd_by_weights.FASTER_THAN``); there float weights get
``mma="int16"``, counted as ``int16``: both operands quantized per 32 values to 14 bits, in GEMMs of
``cpu_madd.WIDE_FROM_ROWS`` rows or more outside Winograd's convs.
Float weights there get bf16 products only where vdpbf16ps is fast, else stay f32 with the reason. Where it is
fast, the 3x3 convs Winograd takes run it with bf16 products whatever their weights' type
(``schedules/cpu_winograd_dot.py``: F(2x2, 3x3) on vdpbf16ps, 1.2-2.1x faster than Winograd in f32 and 1.5-2.2x
faster than the direct bf16 GEMM; over 16-128 tiles, SD1.5's deepest levels, by output channels:
``schedules/cpu_winograd_dot_by_weights.py``; quantized weights are decoded to f32 first, as in f32 mode, and
counted as ``quantized``: 1.06-1.5x faster than VNNI's int8 products (by output channels, q8_0 at 8x8 and 16x16
pixels with guidance, 1.2-1.3x) and more exact, so the int8 rules above apply to the other nodes only); the few it
cannot take (channels not in whole conversions of 32) keep f32 products on Winograd over
``OVER_PIXELS["cpu_bf16_dot"]`` pixels, faster than the direct bf16 GEMM. With AMX-BF16, every ``attention`` node
(causal or not) with heads of at most ``cpu_attention_amx.MAX_DH`` channels is marked too: flash attention on the tile unit
(``schedules/cpu_attention_amx.py``) with q, k, v and the probabilities rounded to bf16, f32 sums and an f32
softmax, as PyTorch's bf16 scaled-dot-product attention does; wider heads keep the f32 kernel, and without AMX-BF16
every attention node does (that kernel needs the tiles): both count as ``kept_f32``, with the reason in ``why``. The
report counts the marked nodes (``nodes``, of which ``attention`` are attention) and those kept. Where the CPU has
neither AMX-BF16 nor AVX512_BF16, no node is marked and the report says the option had no effect; a linear or
conv2d shape that its kernel does not take (AMX: K not a multiple of 32, N of 16; vector unit: N not a multiple of
16, K odd; both: a conv's channels not a multiple of 16) keeps f32 products. GPU targets: the option has no effect
yet, and the report says so.
"""

from __future__ import annotations

from sdcompile.errors import OptionError
from sdcompile.ir import Graph
from sdcompile.passes.context import PassContext
from sdcompile.quant.types import get as get_type

COMPUTE = ("f32", "bf16")


def run(g: Graph, ctx: PassContext) -> Graph:
    compute = ctx.options.compute
    if compute not in COMPUTE:
        raise OptionError(f"unknown --compute {compute!r}; choose one of {', '.join(COMPUTE)}")
    if compute == "f32":
        return g
    rep = ctx.report.setdefault("mma", {"compute": compute, "nodes": 0, "attention": 0, "kept_f32": 0, "why": ""})
    if ctx.options.target != "cpu":
        rep["why"] = f"--compute {compute} has no effect on {ctx.options.target} yet: products stay f32"
        return g
    from sdcompile.codegen import tvm_layer  # the CPU code is built for this host

    tiles = tvm_layer.host_amx_bf16()
    dot = not tiles and tvm_layer.host_bf16_dot_fast()  # bf16 products on the vector unit (vdpbf16ps)
    vnni = not tiles and tvm_layer.host_avx512_vnni()  # q8_0 / q4_0: int8 products on the vector unit
    # without VNNI, AVX2's vpmaddwd on int16 pairs (``schedules/cpu_madd.py``): the same products and numerics
    madd = not tiles and not vnni and tvm_layer.host_avx2()
    int8_kernel = "cpu_vnni" if vnni else "cpu_madd"
    int8_unit = "AVX-512 VNNI" if vnni else "AVX2's vpmaddwd"
    if not tiles and not tvm_layer.host_avx512_bf16():
        no_bf16 = "this CPU has no AMX-BF16 (or SDCOMPILE_NO_AMX is set) and no AVX512_BF16"
    elif not tiles and not dot:
        no_bf16 = (
            f"this CPU has no AMX-BF16 (or SDCOMPILE_NO_AMX is set), and its AVX512_BF16 "
            f"({tvm_layer.cpu_vendor() or 'unknown vendor'}) runs at half the f32 FMA rate: f32 products are faster "
            "and more exact"
        )
    else:
        no_bf16 = ""
    if no_bf16 and not (vnni or madd):
        rep["why"] = f"--compute {compute} has no effect: {no_bf16}"
        return g
    from schedules.cpu_amx_bf16 import BLOCK_TYPES
    from schedules.cpu_madd import WIDE_FROM_ROWS
    from schedules.cpu_vnni import TYPES as INT8_TYPES
    from schedules.cpu_winograd import OVER_PIXELS

    g = g.copy()
    why = set()
    for n in g.nodes:
        if n.op == "attention":
            kept = _attention_kept(g, n, tiles, dot)
            if kept:
                rep["kept_f32"] += 1
                why.add(kept)
            else:
                n.attrs["mma"] = compute
                rep["nodes"] += 1
                rep["attention"] += 1
            continue
        if n.op not in ("linear", "conv2d"):
            continue
        w = g.values[n.inputs[1]]
        if dot and _winograd_dot_takes(g, n):  # float or quantized: Winograd on vdpbf16ps is the fastest
            n.attrs["mma"] = compute
            rep["nodes"] += 1
            if not get_type(w.dtype).is_float:
                rep["quantized"] = rep.get("quantized", 0) + 1
            why.add(
                "3x3 convs Winograd takes run it with bf16 products on vdpbf16ps (float or quantized weights, "
                "decoded, transformed and rounded to bf16 once)"
            )
        elif get_type(w.dtype).is_float and not no_bf16 and dot and _winograd_faster(g, n, "cpu_bf16_dot"):
            rep["kept_f32"] += 1
            why.add(
                f"float-weight 3x3 convs over {OVER_PIXELS['cpu_bf16_dot']:,} pixels or more keep f32 products: "
                "Winograd runs them faster than vdpbf16ps does, and more exactly"
            )
        elif get_type(w.dtype).is_float and not no_bf16:
            n.attrs["mma"] = compute
            rep["nodes"] += 1
        elif get_type(w.dtype).is_float and madd and _int16_takes(g, n):
            n.attrs["mma"] = "int16"
            rep["nodes"] += 1
            rep["int16"] = rep.get("int16", 0) + 1
            why.add(
                "float weights multiply on AVX2's vpmaddwd (int16 products: weights and activations quantized per 32 "
                f"values to 14 bits: SD1.5's UNet 3.7e-4 relative RMS from f32 products) in GEMMs of {WIDE_FROM_ROWS} rows or "
                "more, except the 3x3 convs Winograd takes"
            )
        elif get_type(w.dtype).is_float:
            rep["kept_f32"] += 1
            why.add(f"float weights keep f32 products: {no_bf16}")
        elif tiles and w.dtype in BLOCK_TYPES:
            n.attrs["mma"] = compute
            rep["nodes"] += 1
            rep["quantized"] = rep.get("quantized", 0) + 1
            why.add(f"{'/'.join(BLOCK_TYPES)} weights are decoded to bf16 for the tile unit (one rounding, as f16's)")
        elif (vnni or madd) and w.dtype in INT8_TYPES and _winograd_faster(g, n, int8_kernel):
            rep["kept_f32"] += 1
            why.add(
                f"{'/'.join(INT8_TYPES)} 3x3 convs "
                + (f"over {OVER_PIXELS[int8_kernel]:,} pixels or more " if OVER_PIXELS[int8_kernel] else "")
                + "that Winograd takes keep f32 products: with the weights decoded to f32 it runs them faster than "
                "int8 products, and more exactly"
            )
        elif (vnni or madd) and w.dtype in INT8_TYPES:
            n.attrs["mma"] = "int8"
            if _int8_takes(g, n, int8_kernel):
                rep["nodes"] += 1
                rep["int8"] = rep.get("int8", 0) + 1
                why.add(
                    f"{'/'.join(INT8_TYPES)} weights multiply int8 activations on {int8_unit} (activations quantized "
                    "per 32 values as ggml's q8_0, as llama.cpp and stable-diffusion.cpp compute with these weights: "
                    "about twice the error of bf16 products)"
                )
            else:
                from schedules.cpu_vnni import FROM_ROWS

                del n.attrs["mma"]
                rep["kept_f32"] += 1
                why.add(
                    f"{'/'.join(INT8_TYPES)} GEMMs of fewer than {FROM_ROWS} rows (bound by reading the weights), or "
                    "with N or a conv's channels not a multiple of 16, keep their integer kernels"
                )
        else:
            rep["kept_f32"] += 1
            why.add(
                "quantized weights keep their integer kernels"
                + (
                    ""
                    if tiles or vnni or madd
                    else f" (without AMX-BF16, AVX512_VNNI or AVX2 {'/'.join(BLOCK_TYPES)} do too)"
                )
            )
    rep["why"] = ("" if rep["nodes"] else f"--compute {compute} has no effect: ") + "; ".join(sorted(why))
    return g


def _int8_takes(g: Graph, n, kernel: str) -> bool:
    """Whether the int8 kernel (``cpu_vnni`` or ``cpu_madd``) takes node ``n`` (already marked ``mma="int8"``): the
    kernel's own rule on the spec the node becomes, so the report counts what runs."""
    from schedules import cpu_madd, cpu_vnni
    from sdcompile.codegen.plan import node_spec

    return {"cpu_vnni": cpu_vnni, "cpu_madd": cpu_madd}[kernel].applicable(node_spec(g, n), 16)


def _int16_takes(g: Graph, n) -> bool:
    """Whether AVX2's int16 GEMM (``cpu_madd``) takes float-weight node ``n`` and Winograd does not."""
    from schedules import cpu_madd

    return not _winograd_faster(g, n, "cpu_madd") and cpu_madd.applicable(_marked_spec(g, n, "int16"), 16)


def _marked_spec(g: Graph, n, mma: str = "bf16"):
    """The kernel spec node ``n`` (not yet marked) would become with ``mma`` products: what a kernel's own rule is
    asked about."""
    from sdcompile.codegen.plan import node_spec

    n.attrs["mma"] = mma
    try:
        return node_spec(g, n)
    finally:
        del n.attrs["mma"]


def _winograd_dot_takes(g: Graph, n) -> bool:
    """Whether Winograd with bf16 products (``cpu_winograd_dot``, or over 16-128 tiles
    ``cpu_winograd_dot_by_weights``) would take node ``n`` marked bf16."""
    from schedules import cpu_winograd_dot, cpu_winograd_dot_by_weights

    spec = _marked_spec(g, n)
    return cpu_winograd_dot.applicable(spec, 16, True) or cpu_winograd_dot_by_weights.applicable(spec, 16, True)


def _winograd_faster(g: Graph, n, kernel: str) -> bool:
    """Whether node ``n`` (not yet marked) runs faster with f32 products on the Winograd kernel than with the
    products of ``kernel`` (``cpu_vnni``, ``cpu_madd``: int8, ``cpu_bf16_dot``: bf16): one table
    (``cpu_winograd.OVER_PIXELS``) for this choice and the CPU dispatch's; over fewer tiles, by output channels
    (``cpu_winograd_by_weights``), faster than the kernels its ``FASTER_THAN`` names."""
    from schedules import cpu_winograd, cpu_winograd_by_weights
    from sdcompile.codegen.plan import node_spec

    spec = node_spec(g, n)
    if cpu_winograd.over_products(spec, 16, kernel):
        return True
    return kernel in cpu_winograd_by_weights.FASTER_THAN and cpu_winograd_by_weights.applicable(spec, 16)


def _attention_kept(g: Graph, n, tiles: bool, dot: bool = False) -> str:
    """Why attention node ``n`` keeps the f32 kernel, or "" when a bf16 flash attention takes it: on the tile unit
    (``tiles``) or, where vdpbf16ps is fast (``dot``), on the vector unit (``cpu_attention_dot``, which takes what
    the f32 flash attention would: ``cpu_attention_fma.applicable`` on the spec the node becomes)."""
    from schedules.cpu_attention_amx import MAX_DH

    if not tiles and not dot:
        return "attention keeps the f32 kernel without AMX-BF16 or a fast AVX512_BF16"
    if g.values[n.inputs[0]].shape[-1] // int(n.attrs["heads"]) > MAX_DH:
        return f"attention heads wider than {MAX_DH} channels keep the f32 kernel"
    if not tiles:  # the vdpbf16ps kernel takes what the f32 flash attention would (its own rule, on the spec)
        from schedules.cpu_attention_fma import MIN_QUERIES
        from schedules.cpu_attention_fma import applicable as flash_applicable

        if not flash_applicable(_marked_spec(g, n), 16):
            return f"attention over fewer than {MIN_QUERIES} queries keeps the f32 kernel without AMX-BF16"
    return ""
