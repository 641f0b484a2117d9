"""i-quant kernels (linear at M = 1 and M > 1, embed) built for Vulkan (TVM's WGSL) and run through wgpu, against
gguf's dequantize and a float64 matmul. Runs on any Vulkan adapter; in CI that is Mesa's lavapipe."""

from __future__ import annotations

import pytest

from tests.kernels import fixtures as fx
from tests.kernels import iquant_cases as ic
from tests.kernels import kernel_cases as kc

pytestmark = fx.vulkan_marks()

LINEAR = ic.linear_specs()
EMBED = ic.embed_specs()


built = fx.built_fixture("vulkan", lambda: LINEAR + EMBED, "iquant_vulkan")


ex = fx.executor_fixture("vulkan")


def test_tables_are_bound_as_u32_storage(built):
    # A table is one more read-only array<u32> binding of the shader, listed among the entry's buffers by name.
    out, result = built
    for spec in LINEAR + EMBED:
        info = result["kernels"][spec.name]
        tables = [p["name"] for p in info["params"] if p["kind"] == "lut"]
        for entry in info["launch"]:
            code = (out / entry["file"]).read_text()
            assert sorted(entry["buffers"]) == sorted(p["name"] for p in info["params"])
            for t in tables:
                i = entry["buffers"].index(t)
                assert f"@binding({i}) var<storage, read> {t}_ptr : array<u32>;" in code
            assert "array<u8>" not in code and "u64" not in code and "i64" not in code


@pytest.mark.parametrize("spec", LINEAR, ids=lambda s: s.name)
def test_linear_matches_numpy(ex, spec):
    case = ic.make_case(spec)
    kc.check(case, kc.run_case(ex, case))


@pytest.mark.parametrize("spec", EMBED, ids=lambda s: s.name)
def test_embed_is_bit_exact(ex, spec):
    case = ic.make_case(spec)
    kc.check_exact(case, kc.run_case(ex, case))
