"""GEGLU on the CPU as TIR (``schedules/cpu_geglu.py``) against float64 numpy with erf's GELU: f32, a bf16 output
32 values per store, and an f16 one with F an odd number of vectors (16 per store).

Bound: y = x * gelu(g) with gelu(g) = g (1 + erf(g / sqrt 2)) / 2. The kernel's erf (Abramowitz and Stegun 7.1.26)
is within 1.5e-7 of erf, so gelu(g) within |g| 0.75e-7 plus a few f32 roundings of g: |y - y64| <= |x| (|g| 1e-7 +
8 u |gelu(g)|) + half an ulp of a 16-bit output (of f16's
subnormals below 2^-14: 2^-25). A gate and value swapped, a lost half, or a tanh GELU (up to 1e-3 off
near |g| 2) miss it by orders of magnitude."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schedules import cpu_geglu
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
SUBNORMAL = {"float32": 0.0, "float16": 2.0**-25, "bfloat16": 0.0}  # half an ulp below f16's normal range
SPECS = [
    KernelSpec.make("geglu", M=300, F=320),
    KernelSpec.make("geglu", M=129, F=640, dt="bb"),
    KernelSpec.make("geglu", M=77, F=80, dt="fh"),
]

built = fx.built_fixture("cpu", SPECS, "geglu_cpu")
ex = fx.executor_fixture("cpu")


def test_dispatch():
    import schedules
    from schedules.cpu import CpuInfo

    assert all(schedules.cpu_rule(s, CpuInfo()) is cpu_geglu.geglu for s in SPECS)
    assert not cpu_geglu.applicable(KernelSpec.make("geglu", M=4, F=40), 16)  # not whole vectors: the TE schedule
    assert cpu_geglu.applicable(SPECS[0], 8) and not cpu_geglu.applicable(SPECS[0], 4)  # AVX2 too; SSE: TE


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_matches_float64(ex, spec):
    M, F = int(spec.attr("M")), int(spec.attr("F"))
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((M, 2 * F)) * 2).astype(spec.param("x").dtype).astype(np.float64)
    v, g = x[:, :F], x[:, F:]
    erf = np.vectorize(math.erf)
    gelu = 0.5 * g * (1 + erf(g / math.sqrt(2)))
    want = v * gelu
    got = fx.run_spec(ex, spec, {"x": x}).astype(np.float64)
    out = spec.param("y").dtype
    bound = np.abs(v) * (np.abs(g) * 1e-7 + 8 * U32 * np.abs(gelu)) + 1.01 * HALF_ULP[out] * np.abs(want)
    bound += SUBNORMAL[out] + 1e-30
    err = np.abs(got - want)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.abs(want).max() > 1
