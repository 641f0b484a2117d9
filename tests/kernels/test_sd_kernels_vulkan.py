"""The UNet/VAE kernel cases of ``sd_cases`` on Vulkan (lavapipe in CI), against the same numpy references."""

from __future__ import annotations

import pytest

from tests.kernels.fixtures import built_fixture, executor_fixture, vulkan_marks
from tests.kernels.sd_cases import CASES, case_ids, check

pytestmark = vulkan_marks()
built = built_fixture("vulkan", lambda: [c.spec() for c in CASES], "sd_vk")
ex = executor_fixture("vulkan")


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_case(ex, case):
    check(ex, case)
