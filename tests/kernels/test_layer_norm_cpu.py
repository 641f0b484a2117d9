"""LayerNorm on the CPU as TIR (``schedules/cpu_layer_norm.py``) against float64 numpy: f32, a bf16 output 32 values
per store, 16-bit in and out, the text encoder's width, and a mean far from the spread (what the two passes over a
row are for).

Bound, as for group norm: each row's sums carry a relative error of about n u, n = D / 64 + 8 (four partial sums of
D / 64 vectors each, then the vectors and the lanes pairwise), so the mean is off by n u |mean|, which z = (x - mean)
/ std sees divided by std, and z's own rounding and the variance's add n u (|z| + 1): |y - y64| <= 1.5 n u |gamma|
(|z| + 1 + |mean| / std) + a few u |y|, plus half an ulp of a 16-bit output. One-pass statistics, a lost group of
vectors or gamma and beta swapped miss it by orders of magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_layer_norm
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
SPECS = [
    KernelSpec.make("layer_norm", M=300, D=320, eps=1e-5),
    KernelSpec.make("layer_norm", M=33, D=640, eps=1e-5, dt="fb"),
    KernelSpec.make("layer_norm", M=154, D=768, eps=1e-5, dt="bb"),
    KernelSpec.make("layer_norm", M=5, D=1280, eps=1e-6, dt="hh"),
]

built = fx.built_fixture("cpu", SPECS, "layer_norm_cpu")
ex = fx.executor_fixture("cpu")


def test_dispatch():
    import schedules
    from schedules.cpu import CpuInfo

    assert all(schedules.cpu_rule(s, CpuInfo()) is cpu_layer_norm.layer_norm for s in SPECS)
    assert not cpu_layer_norm.applicable(KernelSpec.make("layer_norm", M=4, D=96, eps=1e-5), 16)  # the TE schedule
    assert cpu_layer_norm.applicable(SPECS[0], 8) and not cpu_layer_norm.applicable(SPECS[0], 4)  # SSE: TE


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_matches_float64(ex, spec):
    M, D, eps = int(spec.attr("M")), int(spec.attr("D")), float(spec.attr("eps"))
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((M, D)) * 3 + 1000).astype(spec.param("x").dtype).astype(np.float64)
    gamma, beta = rng.standard_normal(D), rng.standard_normal(D)
    mean = x.mean(axis=1, keepdims=True)
    std = np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    z = (x - mean) / std
    want = z * gamma + beta
    got = fx.run_spec(ex, spec, {"x": x, "gamma": gamma, "beta": beta}).astype(np.float64)
    n = D / 64 + 8
    bound = 1.5 * n * U32 * np.abs(gamma) * (np.abs(z) + 1 + np.abs(mean) / std) + 8 * U32 * (1 + np.abs(want))
    bound += 1.01 * HALF_ULP[spec.param("y").dtype] * np.abs(want)
    err = np.abs(got - want)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.abs(want).max() > 1
