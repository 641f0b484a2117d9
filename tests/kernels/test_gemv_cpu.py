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

import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from sdcompile.kernels import linear_gemv as G
from sdcompile.kernels import spec as S
from sdcompile.quant.types import get as get_type
from tests.kernels import fixtures as fx
from tests.kernels import iquant_cases as ic
from tests.kernels import kernel_cases as kc
from tests.kernels import kquant_cases as kq

U32 = 2.0**-24


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


def _weight(rng, wtype: str, shape: tuple[int, int], extreme: bool = False):
    """(words, decoded weight, wmag): gguf-quantized normal data for q4_0/q8_0, random valid blocks for k-quants;
    ``extreme``: every quant and scale at its largest magnitude."""
    if wtype in ("q4_0", "q8_0", "q5_0", "q4_1", "q5_1"):
        raw = np.asarray(quants.quantize(rng.standard_normal(shape).astype(np.float32), Q[wtype.upper()]))
        raw = raw.reshape(-1).view(np.uint8).copy()
    elif wtype in ("iq4_nl", "iq4_xs"):
        raw = ic.random_blocks(wtype, shape[0], shape[1], rng).reshape(-1)
    else:
        raw = kq.random_blocks(rng, wtype, shape)
    qt = get_type(wtype)
    if extreme:
        b = raw.reshape(-1, qt.type_size)
        if wtype == "q4_0":
            b[:, 2:] = 0x00  # q - 8 = -8 everywhere
        elif wtype == "q8_0":
            b[:, 2:] = 0x80  # -128
        elif wtype == "q5_0":
            b[:, 2:] = 0x00  # q - 16 = -16 everywhere
        elif wtype in ("q4_1", "q5_1"):
            b[:, 4:] = 0xFF  # quants 15 (31)
        elif wtype == "q2_k":
            b[:, :80] = 0xFF  # scales and mins 15, quants 3
        elif wtype == "q3_k":
            b[:, :108] = 0x00  # quants -4 (high bits clear), scales -32: |sc q| = 128
        elif wtype in ("q4_k", "q5_k"):
            b[:, 4:16] = 0xFF  # every 6-bit scale and min 63
            b[:, 16:] = 0xFF  # quants 15 (31)
        else:
            b[:, :192] = 0xFF  # quants 63 (stored + 32)
            b[:, 192:208] = 0x80  # scales -128
    if wtype in kq.TYPES:
        wd, wmag = kq.dequantize(raw, wtype, shape), kq.magnitude(raw, wtype, shape)
    else:
        wd = np.asarray(quants.dequantize(raw.reshape(shape[0], -1), Q[wtype.upper()]), np.float64).reshape(shape)
        wmag = np.abs(wd)
        if wtype in ("q4_1", "q5_1"):  # w = d q + m, summed as d q x and m x apart: |d q| + |m|
            size = get_type(wtype).type_size
            m = raw.reshape(shape[0], -1, size)[..., 2:4].copy().view(np.float16).astype(np.float64)
            m = np.repeat(m.reshape(shape[0], -1), 32, axis=1)
            wmag = np.abs(wd - m) + np.abs(m)
    return kq.words_of(raw), wd, wmag


def _case(spec: S.KernelSpec, seed: int = 0, extreme: bool = False, model=None):
    """(inputs, reference f64 y, tolerance against it, y on the int16 activations, its tolerance). ``model``: the
    kernel's activation model, (reference(x, w), error_bound(x, w)); the GEMV path's by default."""
    M, N, K = (int(spec.attr(k)) for k in "MNK")
    wtype = str(spec.attr("wtype"))
    rng = np.random.default_rng([seed, *map(ord, spec.name)])
    x = np.ones((M, K), np.float32) if extreme else rng.standard_normal((M, K)).astype(np.float32)
    if extreme:
        x[1::2] = -1.0
    words, wd, wmag = _weight(rng, wtype, (N, K), extreme)
    x64 = x.astype(np.float64)
    reference, error_bound = model or (lambda x, w: G.reference(x, w, wtype), lambda x, w: G.error_bound(x, w, wtype))
    pre, preq = x64 @ wd.T, reference(x, wd)
    f32_terms = (K / 16 + 16) * U32 * ((np.abs(x64) * 1.01) @ wmag.T)
    tol = error_bound(x, wd) + f32_terms
    tolq = f32_terms
    inputs = [x, words]
    post = []
    if spec.attr("bias"):
        b = rng.standard_normal(N).astype(np.float32)
        inputs.append(b)
        post.append(lambda p, b=b: p + b)
    act = str(spec.attr("act"))
    if act == "gelu":
        post.append(lambda p: 0.5 * p * (1 + kc._erf(p / math.sqrt(2))))
    elif act == "quick_gelu":
        post.append(lambda p: p / (1 + np.exp(-1.702 * p)))
    if spec.attr("residual"):
        r = rng.standard_normal((M, N)).astype(np.float32)
        inputs.append(r)
        post.append(lambda p, r=r: p + r)
    for f in post:
        pre, preq = f(pre), f(preq)
    # activations have |slope| <= 1.13 and a few ulps of their own; the epilogue's additions round too
    slack = 4e-6 * (1 + np.abs(pre)) if act != "none" else 0
    extra = 4 * U32 * (1 + np.abs(pre)) + slack
    return inputs, pre, 1.2 * tol + extra, preq, 1.2 * tolq + extra


def _run(ex, spec, inputs) -> np.ndarray:
    case = kc.Case(spec, inputs, np.zeros(1), np.zeros(1))
    return kc.run_case(ex, case).astype(np.float64)


def _check(name: str, got: np.ndarray, ref: np.ndarray, tol: np.ndarray) -> None:
    err = np.abs(got - ref)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / tol, 0)), err.shape)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} outputs out of tolerance; worst at {i}: got {got[i]!r}, "
            f"want {ref[i]!r}, tol {tol[i]:.3g}"
        )


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
    inputs, ref, tol, refq, tolq = _case(spec)
    got = _run(ex, spec, inputs)
    _check(spec.name + " vs x @ W^T", got, ref, tol)
    _check(spec.name + " vs the int16-activation model", got, refq, tolq)
    rel = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref**2))
    assert rel < 2e-4, rel  # int16 activations: ~2e-5 (ggml's int8: ~5e-3)


@pytest.mark.parametrize("spec", EXTREME, ids=lambda s: s.name)
def test_gemv_extreme_values_do_not_overflow(ex, spec):
    inputs, ref, tol, refq, tolq = _case(spec, extreme=True)
    got = _run(ex, spec, inputs)
    _check(spec.name + " (extreme)", got, refq, tolq)
    _check(spec.name + " (extreme) vs x @ W^T", got, ref, tol)


def test_gemv_zero_and_non_finite_activations(ex):
    """An all-zero row of x gives exact zeros (its scale is 0, not NaN); a NaN or an infinity makes that row's
    outputs non-finite, as the f32 path's would be, and leaves the other rows as they were."""
    inputs, ref, tol, _, _ = _case(NONFINITE)
    x = inputs[0].copy()
    x[0] = 0.0
    x[1, 5] = np.nan
    x[2, 200] = np.inf
    got = _run(ex, NONFINITE, [x, *inputs[1:]])
    assert np.array_equal(got[0], np.zeros(got.shape[1]))
    assert not np.isfinite(got[1]).any() and not np.isfinite(got[2]).any()
    _check("untouched row", got[3:], ref[3:], tol[3:])


@pytest.mark.parametrize("spec", OTHER, ids=lambda s: s.name)
def test_other_specs_keep_the_f32_path(ex, spec):
    case = kc.make_case(spec)
    kc.check(case, kc.run_case(ex, case))
