"""q2_k, q3_k, q4_k, q5_k, q6_k, tq1_0 and mxfp4 kernels (linear as GEMV and GEMM, embed) on the CPU (LLVM),
against gguf's dequantization and float64 numpy. Cases and tolerances: ``kquant_cases``."""

from __future__ import annotations

import pytest

from tests.kernels import fixtures as fx
from tests.kernels import kernel_cases as kc
from tests.kernels import kquant_cases as kq

SPECS = kq.linear_specs() + kq.embed_specs()
DECODE = kq.decode_specs()


# One build for the module: LLVM compile time dominates.
built = fx.built_fixture("cpu", lambda: SPECS + DECODE, "kquant_cpu")
ex = fx.executor_fixture("cpu")


def test_every_type_has_a_decoder():
    from sdcompile.kernels import supported_types

    assert set(kq.TYPES) <= set(supported_types())
    for t in kq.TYPES:  # each type as a GEMV, a GEMM and an embedding
        kinds = {
            "embed" if s.op == "embed" else "gemv" if s.attr("M") == 1 else "gemm"
            for s in SPECS
            if s.attr("wtype") == t
        }
        assert kinds == {"embed", "gemv", "gemm"}, t


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_kernel_matches_gguf(ex, spec):
    case = kq.make_case(spec)
    kq.check(case, kc.run_case(ex, case))


@pytest.mark.parametrize("spec", DECODE, ids=lambda s: s.name)
def test_decode_matches_gguf(ex, spec):
    # Every row of a random table: all quant bits, sub-block scales and (mxfp4) every shared exponent.
    case = kq.decode_case(spec)
    kq.check(case, kc.run_case(ex, case))
