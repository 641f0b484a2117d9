"""GroupNorm over channels-last activations, with an optional fused SiLU (every SD resnet applies one after it).

x is [B, N, C] (N pixels or tokens); group g holds channels g*C/G .. (g+1)*C/G - 1 of every pixel. Stats are
computed in two passes (mean, then centred sum of squares) as ``norm.py`` does, over the group's N*C/G values,
indexed as one virtual row r = n * (C/G) + c'.
"""

from __future__ import annotations

from tvm import te

from sdcompile.kernels.dequant import f32
from sdcompile.kernels.linear import activation
from sdcompile.kernels.spec import KernelSpec


def compute(spec: KernelSpec) -> list[te.Tensor]:
    B, N, C, G = (int(spec.attr(k)) for k in ("B", "N", "C", "G"))
    eps = float(spec.attr("eps"))
    cg = C // G
    x = te.placeholder((B, N, C), "float32", name="x")
    gamma = te.placeholder((C,), "float32", name="gamma")
    beta = te.placeholder((C,), "float32", name="beta")
    inv = f32(1.0 / (N * cg))

    def at(bg, r):
        return x[bg // G, r // cg, (bg % G) * cg + r % cg]

    r1 = te.reduce_axis((0, N * cg), name="r1")
    mean = te.compute((B * G,), lambda bg: te.sum(at(bg, r1), axis=r1), name="mean")
    r2 = te.reduce_axis((0, N * cg), name="r2")
    var = te.compute(
        (B * G,), lambda bg: te.sum((at(bg, r2) - mean[bg] * inv) * (at(bg, r2) - mean[bg] * inv), axis=r2), name="var"
    )

    def body(b, n, c):
        bg = b * G + c // cg
        v = (x(b, n, c) - mean(bg) * inv) * (1.0 / te.sqrt(var[bg] * inv + f32(eps))) * gamma(c) + beta(c)
        return activation(str(spec.attr("act", "none")), v)

    y = te.compute((B, N, C), body, name="y")
    return [x, gamma, beta, y]
