"""conv2d as an implicit GEMM: y[m, n] = sum_k patches[m, k] * W[n, k] (+ bias, + residual).

The input is channels-last [B, H, W, C]; row m of the output is the pixel (b, oy, ox) and k = (ky, kx, c) walks a
KH x KW window of whole pixels, so consecutive k read consecutive channels. ``xcol`` (the patch matrix) is a stage
the schedules inline into the matmul: patches are never materialised (im2col of a 512x512 VAE layer would be
gigabytes). Everything after that is ``linear``'s fused dequantize-matmul, so a conv weight may be stored in any
type linear reads, and the linear schedules apply unchanged.
"""

from __future__ import annotations

from tvm import te, tirx

from sdcompile.kernels.act import f32_reads, placeholder
from sdcompile.kernels.dequant import let
from sdcompile.kernels.linear import matmul
from sdcompile.kernels.spec import KernelSpec, conv_geometry


def compute(spec: KernelSpec) -> list[te.Tensor]:
    a = dict(spec.attrs)
    B, H, W, C, N = (int(a[k]) for k in ("B", "H", "W", "C", "N"))
    _kh, kw, s = int(a["kh"]), int(a["kw"]), int(a["stride"])
    pt, pl = int(a["pads"][0]), int(a["pads"][1])
    ho, wo, M, K = conv_geometry(a)
    x_in = placeholder(spec, "x")
    x = f32_reads(x_in)

    def patch(m, k):
        b, p = m // (ho * wo), m % (ho * wo)
        iy = (p // wo) * s + (k // C) // kw - pt
        ix = (p % wo) * s + (k // C) % kw - pl
        inside = tirx.all(iy >= 0, iy < H, ix >= 0, ix < W)
        # Clamp the address too: the select keeps the value, but every target still issues the load.
        cy = tirx.max(tirx.min(iy, H - 1), 0)
        cx = tirx.max(tirx.min(ix, W - 1), 0)
        # The load is bound outside the select: TVM simplifies a select's branch under its condition, which would
        # drop the clamps and read a row before the image (or past it) for the padding.
        return let(x(b, cy, cx, k % C), lambda v: tirx.Select(inside, v, tirx.const(0.0, "float32")), "xv")

    xcol = te.compute((M, K), patch, name="xcol")
    return matmul(spec, M, N, K, x_in, xcol)
