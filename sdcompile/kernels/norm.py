"""LayerNorm over the last axis with biased variance, computed in two passes (mean, then centred sum of
squares) because the one-pass E[x^2] - E[x]^2 loses digits when |mean| >> std."""

from __future__ import annotations

from tvm import te

from sdcompile.kernels.spec import KernelSpec


def compute(spec: KernelSpec) -> list[te.Tensor]:
    M, D = int(spec.attr("M")), int(spec.attr("D"))
    eps = float(spec.attr("eps"))
    x = te.placeholder((M, D), "float32", name="x")
    gamma = te.placeholder((D,), "float32", name="gamma")
    beta = te.placeholder((D,), "float32", name="beta")
    r1 = te.reduce_axis((0, D), name="r1")
    mean = te.compute((M,), lambda m: te.sum(x[m, r1], axis=r1) * (1.0 / D), name="mean")
    r2 = te.reduce_axis((0, D), name="r2")
    var = te.compute((M,), lambda m: te.sum((x[m, r2] - mean[m]) * (x[m, r2] - mean[m]), axis=r2), name="var")
    # var holds the sum; 1/sqrt instead of rsqrt keeps to functions every target lowers the same way.
    y = te.compute(
        (M, D),
        lambda m, d: (x[m, d] - mean[m]) * (1.0 / te.sqrt(var[m] * (1.0 / D) + eps)) * gamma[d] + beta[d],
        name="y",
    )
    return [x, gamma, beta, y]
