"""GroupNorm over channels-last activations, with an optional fused SiLU (every SD resnet applies one after it).

x is [B, N, C] (N pixels or tokens); group g holds channels g*C/G .. (g+1)*C/G - 1 of every pixel. Statistics
are computed in two passes (mean, then centred sum of squares) as ``norm.py`` does, and each pass sums in two
levels: ``psum``/``pvar`` over CHUNKS contiguous runs of pixels, then over the chunks. A 512x512 VAE group holds a
million values: one running f32 sum loses ~1e-3 of the mean there (measured), two levels keep it near rounding.
The chunks are also what a GPU workgroup's threads take, one each, before their tree reduction.
"""

from __future__ import annotations

from tvm import te

from sdcompile.kernels.act import reads, stored
from sdcompile.kernels.dequant import f32
from sdcompile.kernels.linear import activation
from sdcompile.kernels.spec import KernelSpec

MAX_CHUNKS = 256  # a GPU workgroup's threads


def chunks(n: int) -> int:
    """The number of pixel runs per group: the largest divisor of N up to MAX_CHUNKS."""
    return max(d for d in range(1, min(n, MAX_CHUNKS) + 1) if n % d == 0)


def compute(spec: KernelSpec) -> list[te.Tensor]:
    B, N, C, G = (int(spec.attr(k)) for k in ("B", "N", "C", "G"))
    eps = float(spec.attr("eps"))
    cg = C // G
    ch = chunks(N)
    L = N // ch
    (xt,), (x,) = reads(spec, "x")
    gamma = te.placeholder((C,), "float32", name="gamma")
    beta = te.placeholder((C,), "float32", name="beta")
    inv = f32(1.0 / (N * cg))

    def at(bg, k, n, c):
        return x[bg // G, k * L + n, (bg % G) * cg + c]

    n1, c1 = te.reduce_axis((0, L), name="n1"), te.reduce_axis((0, cg), name="c1")
    psum = te.compute((B * G, ch), lambda bg, k: te.sum(at(bg, k, n1, c1), axis=[n1, c1]), name="psum")
    k1 = te.reduce_axis((0, ch), name="k1")
    mean = te.compute((B * G,), lambda bg: te.sum(psum[bg, k1], axis=k1), name="mean")
    n2, c2 = te.reduce_axis((0, L), name="n2"), te.reduce_axis((0, cg), name="c2")
    pvar = te.compute(
        (B * G, ch),
        lambda bg, k: te.sum(
            (at(bg, k, n2, c2) - mean[bg] * inv) * (at(bg, k, n2, c2) - mean[bg] * inv), axis=[n2, c2]
        ),
        name="pvar",
    )
    k2 = te.reduce_axis((0, ch), name="k2")
    var = te.compute((B * G,), lambda bg: te.sum(pvar[bg, k2], axis=k2), name="var")

    def body(b, n, c):
        bg = b * G + c // cg
        v = (x(b, n, c) - mean(bg) * inv) * (1.0 / te.sqrt(var(bg) * inv + f32(eps))) * gamma(c) + beta(c)
        return activation(str(spec.attr("act", "none")), v)

    y = te.compute((B, N, C), stored(spec, "y", body), name="y")
    return [xt, gamma, beta, y]
