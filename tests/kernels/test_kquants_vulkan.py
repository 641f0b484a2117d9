"""q2_k, q3_k, q4_k, q5_k, q6_k, tq1_0 and mxfp4 kernels (linear as GEMV and GEMM, embed) through WGSL on a Vulkan
adapter (lavapipe in CI), against gguf's dequantization and float64 numpy; plus the GPU GEMV schedule (M = 1) for
every older type. Cases and tolerances: ``kquant_cases``."""

from __future__ import annotations

import pytest

from tests.kernels import fixtures as fx
from tests.kernels import kernel_cases as kc
from tests.kernels import kquant_cases as kq

pytestmark = fx.vulkan_marks()

SPECS = kq.linear_specs() + kq.embed_specs() + kq.gemv_specs()
DECODE = kq.decode_specs()


built = fx.built_fixture("vulkan", lambda: SPECS + DECODE, "kquant_vulkan")


ex = fx.executor_fixture("vulkan")


def test_gemv_geometry(built):
    # M = 1 runs the GEMV schedule: 4 rows per workgroup, 64 threads splitting K, within WebGPU's limits; a K
    # shorter than a row of threads falls back to the tiled matmul.
    from schedules.gpu import GEMV_ROWS, GEMV_THREADS

    out, result = built
    for s in SPECS:
        if s.op != "linear" or s.attr("M") != 1:
            continue
        (entry,) = result["kernels"][s.name]["launch"]
        N, K = int(s.attr("N")), int(s.attr("K"))
        if K >= GEMV_THREADS:
            assert entry["block"] == [GEMV_THREADS, GEMV_ROWS, 1], s.name
            assert entry["grid"] == [-(-N // GEMV_ROWS), 1, 1], s.name
        code = (out / entry["file"]).read_text()
        assert "subgroup" not in code  # the reduction is a workgroup-memory tree: no optional WebGPU feature


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_kernel_matches_reference(ex, spec):
    case = kq.make_case(spec)
    kq.check(case, kc.run_case(ex, case))


@pytest.mark.parametrize("spec", DECODE, ids=lambda s: s.name)
def test_decode_matches_gguf(ex, spec):
    case = kq.decode_case(spec)
    kq.check(case, kc.run_case(ex, case))
