"""The UNet/VAE kernel cases of ``sd_cases`` on Vulkan (lavapipe in CI), against the same numpy references."""

from __future__ import annotations

import pytest

from sdcompile.kernels.spec import KernelSpec
from tests.kernels.fixtures import built_fixture, executor_fixture, vulkan_marks
from tests.kernels.sd_cases import CASES, F16_CASES, case_ids, check, check_view

pytestmark = vulkan_marks()
VIEW_SPEC = KernelSpec.make("unary", n=64, fn="silu")
built = built_fixture("vulkan", lambda: [c.spec() for c in CASES + F16_CASES] + [VIEW_SPEC], "sd_vk")
ex = executor_fixture("vulkan")


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_case(ex, case):
    check(ex, case)


# Activations stored in 16 bits: loads widened to f32, one rounding at the store (``kernels/act.py``).
@pytest.mark.parametrize("case", F16_CASES, ids=case_ids(F16_CASES))
def test_case_16bit_activations(ex, case):
    check(ex, case)


def test_kernel_on_buffer_views(ex):
    check_view(ex)
