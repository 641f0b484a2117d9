"""Fused linear: y = act(x @ dequant(W)^T + bias) + res, with W decoded from its raw words inside the kernel.

Stages, named for the schedules:
- ``wscale<i>``: per-block scales of quantized weights (ggml's d, m), [N, K / block]; decoding a half costs
  more than the rest of an element, so CPU schedules compute them once per block, GPU schedules inline them;
- ``wdq``: the decoded weight, laid out [K, N] so that consecutive output columns are contiguous — schedules
  materialize it one tile at a time (CPU: a cache-sized local tile; GPU: workgroup memory), never whole;
- ``mm``: the f32 matmul, accumulated in f32 over K;
- ``y``: the epilogue (bias, activation, residual), which schedules inline into the accumulator write-back.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from sdcompile.kernels import layouts
from sdcompile.kernels.act import f32_reads, placeholder, stored
from sdcompile.kernels.dequant import byte, decode_staged, f16_at, f32, let, lut_inputs, signed_byte
from sdcompile.kernels.spec import KernelSpec


def erf(x: tirx.Expr) -> tirx.Expr:
    """erf(x) in f32 from exp and arithmetic only (no target has to provide erf; WGSL has none).

    Abramowitz & Stegun 7.1.26 has 1.5e-7 absolute error, comparable to f32 rounding of values near 1.
    """

    def from_abs(a):
        def from_t(t):
            c1, c2, c3, c4, c5 = (f32(c) for c in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))
            poly = t * (c1 + t * (c2 + t * (c3 + t * (c4 + t * c5))))
            return 1.0 - poly * te.exp(-a * a)

        return let(1.0 / (1.0 + f32(0.3275911) * a), from_t, "t")

    return let(from_abs(tirx.abs(x)), lambda y: tirx.Select(x < 0.0, -y, y), "erf_abs")


def activation(name: str, v: tirx.Expr) -> tirx.Expr:
    if name == "none":
        return v
    if name == "gelu":
        return let(v, lambda u: 0.5 * u * (1.0 + erf(u * f32(1.0 / math.sqrt(2.0)))), "u")
    if name == "silu":
        return let(v, lambda u: u / (1.0 + te.exp(-u)), "u")
    if name == "quick_gelu":
        # x * sigmoid(1.702 x); exp overflow for very negative x gives x / inf = -0, the right limit.
        return let(v, lambda u: u / (1.0 + te.exp(u * f32(-1.702))), "u")
    raise ValueError(f"unknown activation {name!r}")


def packed_decode(layout: str, wtype: str, w: te.Tensor, N: int, K: int):
    """``decode_staged`` for a weight stored in ``layout`` (``kernels/layouts.py``): the stages and the function
    W[n, k], reading each value (and q8_0's scale) where the layout put it."""
    if layouts.DTYPE.get(layout) != wtype:
        raise ValueError(f"weight layout {layout!r} holds {layouts.DTYPE.get(layout)}, not {wtype}")
    if layout == layouts.AMX_Q8_0:
        d = te.compute((N, K // 32), lambda n, b: f16_at(w, layouts.q8_0_scale_byte(n, b, K)), name="wscale0")

        def q8(n, k):
            return d[n, k // 32] * signed_byte(w, layouts.q8_0_quant_byte(n, k, K))

        return [d], q8
    if layout == layouts.VNNI_Q8_0:
        d = te.compute((N, K // 32), lambda n, b: f16_at(w, layouts.vnni_q8_0_scale_byte(n, b, N, K)), name="wscale0")

        def q8_biased(n, k):  # stored as q + VNNI_BIAS
            q = tirx.Cast("float32", byte(w, layouts.vnni_q8_0_quant_byte(n, k, K))) - f32(layouts.VNNI_BIAS)
            return d[n, k // 32] * q

        return [d], q8_biased
    _, element = decode_staged(wtype, w, N, K)

    def at(n, k):  # the element's packed index, read as the row-major one it equals
        f = layouts.position(layout, n, k, K)
        return element(f // K, f % K)

    return [], at


def compute(spec: KernelSpec) -> list[te.Tensor]:
    M, N, K = (int(spec.attr(k)) for k in "MNK")
    x = placeholder(spec, "x")
    return matmul(spec, M, N, K, x, f32_reads(x))


def matmul(spec: KernelSpec, M: int, N: int, K: int, x_in: te.Tensor, x: te.Tensor) -> list[te.Tensor]:
    """The fused dequantize-matmul-epilogue over ``x`` [M, K] (read as f32): the input placeholder itself (linear)
    or a stage computed from ``x_in`` (conv2d's patches, which its schedules inline into the matmul)."""
    wtype = str(spec.attr("wtype"))
    ps = {p.name: p for p in spec.params}
    w = te.placeholder((ps["w"].words(),), "uint32", name="w")
    args = [x_in, w]
    luts = lut_inputs(wtype)  # lookup grids of the i-quants (params after the other inputs, before the output)
    if spec.attr("wlayout"):
        scales, element = packed_decode(str(spec.attr("wlayout")), wtype, w, N, K)
    else:
        scales, element = decode_staged(wtype, w, N, K, luts)
    wdq = te.compute((K, N), lambda k, n: element(n, k), name="wdq")
    r = te.reduce_axis((0, K), name="r")
    mm = te.compute((M, N), lambda m, n: te.sum(x[m, r] * wdq[r, n], axis=r), name="mm")
    bias = res = None
    if spec.attr("bias"):
        bias = te.placeholder((N,), "float32", name="bias")
        args.append(bias)
    if spec.attr("residual"):
        res_in = placeholder(spec, "res")
        args.append(res_in)
        res = f32_reads(res_in)
    act = str(spec.attr("act", "none"))

    def epilogue(m, n):
        v = mm(m, n)  # bias, activation, residual, in this order; call syntax gives a PrimExpr (indexing a TensorSlice)
        if bias is not None:
            v = v + bias[n]
        v = activation(act, v)
        if res is not None:
            v = v + res[m, n]
        return v

    y = te.compute((M, N), stored(spec, "y", epilogue), name="y")
    return args + luts + [y]
