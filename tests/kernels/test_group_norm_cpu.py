"""GroupNorm on the CPU as TIR (``schedules/cpu_group_norm.py``) against float64 numpy: chunks with a partial last
one, channel blocks past the 16 registers, one pixel, 16-bit activations, and a mean far from zero (what the two
passes are for).

Bound: the output is (x - mean) / sqrt(var + eps) * gamma + beta. In f32 the sums carry a relative error of about
n u, n = L + chunks + C/G (two-level recursive summation: L pixels per chunk, then the chunks and the group's
channels), so the mean is off by n u |mean|, which the normalized value z = (x - mean) / std sees divided by std,
and z's own rounding and the variance's add n u (|z| + 1): |y - y64| <= 1.5 n u |gamma| (|z| + 1 + |mean| / std) + a
few u |y|, plus half an ulp of a 16-bit output. Wrong statistics (a lost chunk, a
group read at the wrong channels, an uncentred variance) miss it by orders of magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_group_norm
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
CASES = [
    {"B": 2, "N": 1001, "C": 320, "act": "silu"},  # 8 chunks of 126 pixels, the last 119; 16 + 4 channel vectors
    {"B": 1, "N": 64, "C": 1280, "act": "none"},  # 8 chunks of 8 pixels; 80 vectors in 5 blocks
    {"B": 2, "N": 1, "C": 128, "act": "silu"},  # a 1x1 level: one chunk of one pixel
    {"B": 1, "N": 4096, "C": 32, "act": "none"},  # one channel per group (C = G = 32)
    {"B": 2, "N": 300, "C": 64, "act": "silu", "dt": "hh"},
    {"B": 1, "N": 300, "C": 96, "act": "none", "dt": "bb"},
    # f32 in, bf16 out (``passes/round_early.py``): 32 values per store (``tir_build.narrow_pair``), and with an odd
    # number of channel vectors 16 at a time
    {"B": 2, "N": 1001, "C": 320, "act": "silu", "dt": "fb"},
    {"B": 1, "N": 300, "C": 80, "G": 16, "act": "none", "dt": "fb"},
]
SPECS = [KernelSpec.make("group_norm", **({"G": 32, "eps": 1e-5} | c)) for c in CASES]

built = fx.built_fixture("cpu", SPECS, "group_norm_cpu")
ex = fx.executor_fixture("cpu")


def test_dispatch():
    assert all(cpu_group_norm.applicable(s, 16) for s in SPECS)
    assert not cpu_group_norm.applicable(KernelSpec.make("group_norm", B=1, N=4, C=40, G=8, eps=1e-5), 16)
    assert cpu_group_norm.applicable(SPECS[0], 8) and not cpu_group_norm.applicable(SPECS[0], 4)  # SSE: TE
    assert cpu_group_norm.chunking(1001) == (126, 8) and cpu_group_norm.chunking(1) == (1, 1)
    assert cpu_group_norm.chunking(262144) == (256, 1024)


def _reference(x, gamma, beta, G, eps, act):
    B, N, C = x.shape
    xg = x.reshape(B, N, G, C // G)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    z = ((xg - mean) / np.sqrt(var + eps)).reshape(B, N, C)
    y = z * gamma + beta
    offset = np.broadcast_to(np.abs(mean) / np.sqrt(var + eps), xg.shape).reshape(B, N, C)  # |mean| / std
    return (y / (1 + np.exp(-y)) if act == "silu" else y), z, offset


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_matches_float64(ex, spec):
    B, N, C, G = (int(spec.attr(k)) for k in ("B", "N", "C", "G"))
    rng = np.random.default_rng(5)
    # a mean far from the spread (1000 +- 3): one-pass statistics (E[x^2] - mean^2) would lose every digit
    x = (rng.standard_normal((B, N, C)) * 3 + 1000).astype(spec.param("x").dtype).astype(np.float64)
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    want, z, offset = _reference(x, gamma, beta, G, float(spec.attr("eps")), str(spec.attr("act")))
    got = fx.run_spec(ex, spec, {"x": x, "gamma": gamma, "beta": beta}).astype(np.float64)
    L, chunks = cpu_group_norm.chunking(N)
    n = L + chunks + C // G
    bound = 1.5 * n * U32 * np.abs(gamma) * (np.abs(z) + 1 + offset) + 8 * U32 * (1 + np.abs(want))
    bound += 1.01 * HALF_ULP[spec.param("y").dtype] * np.abs(want)
    err = np.abs(got - want)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.abs(want).max() > 1
