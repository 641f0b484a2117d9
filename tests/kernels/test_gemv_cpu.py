"""The CPU GEMV path (``schedules/cpu_gemv.py``): ``linear`` with M <= 8 for q4_0, q8_0, q4_k and q6_k, built by
``build_kernels`` and run by the CPU executor, against gguf's dequantization and float64 numpy.

Tolerances (the math: ``sdcompile/kernels/linear_gemv.py``):

- against ``x @ W^T``: the int16 activations' error, ``linear_gemv.error_bound`` (sum |w| * 0.51 * dx per output:
  about 5e-5 of sum |x||w| for normal data, a relative rms error of ~2e-5), plus f32 rounding;
- against ``linear_gemv.reference`` (the same product on the int16 activations, in float64): f32 rounding only,
  ``(K / 16 + 16) u sum |x||w|`` — the integer sums are exact, then one f32 rounding per block or sub-block and a
  sum over K / 16 partial results per output. A quant or activation in the wrong place would be off by about |y|.

K-quant weights use ``wmag`` (|d sc q| + |dmin m|) for the f32 terms, as ``kquant_cases`` does: the kernel sums the
``d`` and ``dmin`` parts separately.
"""

from __future__ import annotations

import pytest

from sdcompile.kernels import linear_gemv as G
from sdcompile.kernels import spec as S
from tests.kernels import fixtures as fx
from tests.kernels import integer_cases as ic
from tests.kernels import kernel_cases as kc


def _avx512bw() -> bool:
    try:
        from schedules import cpu_gemv

        return cpu_gemv.target_features()[0]
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _avx512bw(), reason="the GEMV path needs an AVX-512 (BW) CPU")

# Shapes: K at one unit (8 q4_0/q8_0 blocks, one super-block) and not a multiple of it (tail blocks, K below a
# unit), N not a multiple of the row streams (6 at M = 1, 2 at M = 2) and below them, M from 1 to 8.
BLOCK_SHAPES = [(1, 64, 256), (1, 100, 416), (2, 33, 288), (3, 16, 32), (8, 40, 512), (1, 5, 1024), (2, 1, 96)]
SUPER_SHAPES = [(1, 64, 256), (1, 101, 768), (2, 33, 512), (5, 16, 1280), (8, 24, 256), (1, 3, 512)]
SPECS = [S.linear(m, n, k, t) for t in ("q4_0", "q8_0") for m, n, k in BLOCK_SHAPES]
SPECS += [S.linear(m, n, k, t) for t in ("q4_k", "q6_k") for m, n, k in SUPER_SHAPES]
SPECS += [
    S.linear(1, 64, 256, "q4_0", bias=True, residual=True, act="gelu"),
    S.linear(8, 32, 288, "q8_0", bias=True),
    S.linear(3, 64, 512, "q4_k", bias=True, act="quick_gelu"),
    S.linear(1, 48, 256, "q6_k", residual=True),
]
# Largest quants, scales and activations: the int32 sums' worst case (bounds asserted in cpu_gemv._bounds).
EXTREME = [S.linear(2, 8, 512, t) for t in G.TYPES]
OTHER = [S.linear(1, 16, 256, "q5_0"), S.linear(9, 16, 256, "q4_0")]  # not GEMV: another type, M > 8
NONFINITE = S.linear(4, 33, 288, "q8_0")


# Without AMX: on an AMX CPU the tile unit takes over from 5-8 rows (linear_amx.FROM_ROWS); this module tests the
# GEMV path at every M it can take.
built = fx.built_fixture("cpu", lambda: SPECS + EXTREME + OTHER + [NONFINITE], "gemv_cpu", {"SDCOMPILE_NO_AMX": "1"})
ex = fx.executor_fixture("cpu")


def test_dispatch():
    """Few rows of a GEMV type take the GEMV rule; other types, more rows and non-AVX-512 targets do not."""
    from schedules import cpu_gemv

    for spec in SPECS + EXTREME + [NONFINITE]:
        assert cpu_gemv.applicable(spec, 16), spec.name
        assert not cpu_gemv.applicable(spec, 8), spec.name  # AVX2: 8 f32 lanes
    for spec in OTHER:
        assert not cpu_gemv.applicable(spec, 16), spec.name


def test_gemv_code_is_integer_dot_products():
    """The built kernel is the hand-written loop nest: int16 dot products, no per-weight f32 decode."""
    import tvm

    from sdcompile.codegen import tvm_layer

    spec = S.linear(1, 64, 256, "q4_0")
    target = tvm_layer.cpu_target()
    asm = tvm_layer.compile_cpu(tvm_layer.scheduled_module([spec], "cpu", target), target).mod.inspect_source("asm")
    with tvm.target.Target(target):
        from schedules import cpu_gemv

        vnni = cpu_gemv.target_features()[1]
    assert ("vpdpwssds" if vnni else "vpmaddwd") in asm


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_gemv_matches_numpy(ex, spec):
    ic.check_matches(ex, spec, ic.GEMV, "int16-activation")


@pytest.mark.parametrize("spec", EXTREME, ids=lambda s: s.name)
def test_gemv_extreme_values_do_not_overflow(ex, spec):
    ic.check_extreme(ex, spec, ic.GEMV)


def test_gemv_zero_and_non_finite_activations(ex):
    ic.check_zero_and_non_finite(ex, NONFINITE, ic.GEMV)


@pytest.mark.parametrize("spec", OTHER, ids=lambda s: s.name)
def test_other_specs_keep_the_f32_path(ex, spec):
    case = kc.make_case(spec)
    kc.check(case, kc.run_case(ex, case))
