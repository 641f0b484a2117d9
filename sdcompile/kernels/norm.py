"""LayerNorm over the last axis with biased variance, computed in two passes (mean, then centred sum of
squares) because the one-pass E[x^2] - E[x]^2 loses digits when |mean| >> std."""

from __future__ import annotations

from tvm import te

from sdcompile.kernels.act import reads, stored
from sdcompile.kernels.dequant import f32
from sdcompile.kernels.spec import KernelSpec


def compute(spec: KernelSpec) -> list[te.Tensor]:
    M, D = int(spec.attr("M")), int(spec.attr("D"))
    eps = float(spec.attr("eps"))
    (xt,), (x,) = reads(spec, "x")
    gamma = te.placeholder((D,), "float32", name="gamma")
    beta = te.placeholder((D,), "float32", name="beta")
    inv_d = f32(1.0 / D)
    r1 = te.reduce_axis((0, D), name="r1")
    # Reductions must be the top of a TE compute, so the stages hold sums and the consumers divide by D.
    mean = te.compute((M,), lambda m: te.sum(x[m, r1], axis=r1), name="mean")
    r2 = te.reduce_axis((0, D), name="r2")
    var = te.compute(
        (M,), lambda m: te.sum((x[m, r2] - mean[m] * inv_d) * (x[m, r2] - mean[m] * inv_d), axis=r2), name="var"
    )
    # 1/sqrt instead of rsqrt keeps to functions every target lowers the same way.
    y = te.compute(
        (M, D),
        stored(
            spec,
            "y",
            lambda m, d: (x[m, d] - mean[m] * inv_d) * (1.0 / te.sqrt(var[m] * inv_d + f32(eps))) * gamma[d] + beta[d],
        ),
        name="y",
    )
    return [xt, gamma, beta, y]
