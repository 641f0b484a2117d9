"""UNet/VAE kernels (conv2d, group norm, cross-attention, pointwise, data movement) on the CPU against the op
registry's numpy references (float64), each weight in its storage type decoded by the reference dequantizer."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.kernels.spec import KernelSpec
from tests.kernels.fixtures import built_fixture, executor_fixture
from tests.kernels.sd_cases import BF16_CASES, CASES, F16_CASES, case_ids, check, check_view

VIEW_SPEC = KernelSpec.make("unary", n=64, fn="silu")
built = built_fixture("cpu", lambda: [c.spec() for c in CASES + F16_CASES + BF16_CASES] + [VIEW_SPEC], "sd_cpu")
ex = executor_fixture("cpu")


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_case(ex, case):
    check(ex, case)


# Activations stored in 16 bits: loads widened to f32, one rounding at the store (``kernels/act.py``).
@pytest.mark.parametrize("case", F16_CASES + BF16_CASES, ids=case_ids(F16_CASES + BF16_CASES))
def test_case_16bit_activations(ex, case):
    check(ex, case)


def test_kernel_on_buffer_views(ex):
    check_view(ex)


def test_conv_reference_matches_torch():
    """The registry's conv2d reference (patches in (ky, kx, c) order against [O, KH*KW*C] weights) is torch's
    conv2d on the same NCHW tensors and [O, C, KH, KW] weights."""
    torch = pytest.importorskip("torch")
    from sdcompile.ir.ops import get

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 7, 5))
    w = rng.standard_normal((6, 5, 3, 3))
    for stride, pads in ((1, (1, 1, 1, 1)), (2, (1, 1, 1, 1)), (2, (0, 0, 1, 1))):
        a = {"kh": 3, "kw": 3, "stride": stride, "pads": pads}
        got = get("conv2d").reference([x, w.transpose(0, 2, 3, 1).reshape(6, -1)], a)
        xt = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (pads[1], pads[3], pads[0], pads[2]))
        want = torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=stride).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(got, want, atol=1e-10)
