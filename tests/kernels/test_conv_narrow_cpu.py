"""Convolutions to few output channels (``schedules/cpu_conv_narrow.py``: an SD VAE's last conv, 128 -> 3, and a
UNet's, 320 -> 4) against float64 numpy: f32, f16, bf16 and q8_0 weights, f32 and bf16 activations, odd widths (a
pair of pixels cut short), strides and asymmetric pads, one and two pixels a step, and a spec that asks for bf16
products (these stay f32).

Bound as ``test_fma_cpu``'s: f32 sums of K products, |y - y64| <= (K + 4) u sum_k |x_k w_k| plus the epilogue's and
the output type's rounding; a wrong tap, a lost channel block or a pixel's sums in its neighbour's fail it by orders
of magnitude, and bf16-rounded products would too."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_conv_narrow, cpu_fma
from sdcompile.ir.ops import im2col_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(cpu_fma.target_isa() is None, reason="needs a CPU with AVX-512 or AVX2 and FMA")

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
CASES = [
    {"B": 1, "H": 13, "W": 11, "C": 32, "N": 3, "wtype": "f16", **CONV3, "bias": True, "residual": False},
    {"B": 2, "H": 6, "W": 6, "C": 64, "N": 4, "wtype": "f32", **CONV3, "bias": False, "residual": True},
    {"B": 1, "H": 9, "W": 10, "C": 16, "N": 3, "wtype": "bf16", "bias": True, "residual": False, "dt": "bb"}
    | {"kh": 3, "kw": 3, "stride": 2, "pads": (0, 2, 1, 0)},
    {"B": 1, "H": 7, "W": 5, "C": 32, "N": 12, "wtype": "q8_0", **CONV3, "bias": True, "residual": True},  # 1 pixel
    {"B": 1, "H": 8, "W": 8, "C": 32, "N": 3, "wtype": "f16", **CONV3, "bias": True, "residual": False, "mma": "bf16"},
]
SPECS = [KernelSpec.make("conv2d", **a) for a in CASES]
built = fx.built_fixture("cpu", lambda: SPECS, "conv_narrow_cpu", isas=True)
ex = fx.executor_fixture("cpu")


def test_dispatch():
    assert all(cpu_conv_narrow.applicable(s, 16) for s in SPECS)
    assert {cpu_conv_narrow._NarrowConv(s, {}).P for s in SPECS} == {1, 2}
    base = CASES[0]
    for why, change in (("16 channels: the GEMM kernels'", {"N": 16}), ("channels not in vectors", {"C": 8})):
        assert not cpu_conv_narrow.applicable(KernelSpec.make("conv2d", **(base | change)), 16), why
    assert cpu_conv_narrow.applicable(SPECS[0], 8) and not cpu_conv_narrow.applicable(SPECS[0], 4)  # AVX2; SSE


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_f32_products_within_their_bound(ex, spec):
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(3)
    arrays, w = fx.gemm_inputs(spec, rng)
    xm = im2col_np(arrays["x"].astype(np.float64), dict(spec.attrs)).reshape(M, K)
    y = xm @ w.T + (arrays["bias"] if spec.attr("bias") else 0) + (arrays["res"] if spec.attr("residual") else 0)
    mag = np.abs(xm) @ np.abs(w).T
    got = fx.run_spec(ex, spec, arrays).astype(np.float64).reshape(M, N)
    out_round = HALF_ULP[spec.param("y").dtype] * np.abs(y)
    bound = 1.2 * (K + 4) * U32 * mag + 8 * U32 * (1 + np.abs(y)) + 1.01 * out_round
    err = np.abs(got - y)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.abs(y).max() > 1
