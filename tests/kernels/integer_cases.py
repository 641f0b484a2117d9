"""Cases and checks shared by the CPU's integer linear paths, GEMV (``test_gemv_cpu``) and AMX (``test_amx_cpu``):
weights of every type they take, inputs, the float64 reference and the kernel's own activation model, tolerances,
and the checks both paths must pass. The tolerances are explained in ``test_gemv_cpu``'s docstring.
"""

from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from sdcompile.kernels import linear_amx, linear_gemv
from sdcompile.kernels import spec as S
from sdcompile.quant.types import get as get_type
from tests.kernels import iquant_cases as iq
from tests.kernels import kernel_cases as kc
from tests.kernels import kquant_cases as kq

U32 = 2.0**-24
# (reference(x, w, wtype), error_bound(x, w, wtype)) of each path's activation quantization
GEMV = (linear_gemv.reference, linear_gemv.error_bound)
AMX = (linear_amx.reference, linear_amx.error_bound)


def weight(rng, wtype: str, shape: tuple[int, int], extreme: bool = False):
    """(words, decoded weight, wmag): gguf-quantized normal data for q4_0/q8_0, random valid blocks for k-quants;
    ``extreme``: every quant and scale at its largest magnitude."""
    if wtype in ("q4_0", "q8_0", "q5_0", "q4_1", "q5_1"):
        raw = np.asarray(quants.quantize(rng.standard_normal(shape).astype(np.float32), Q[wtype.upper()]))
        raw = raw.reshape(-1).view(np.uint8).copy()
    elif wtype in ("iq4_nl", "iq4_xs"):
        raw = iq.random_blocks(wtype, shape[0], shape[1], rng).reshape(-1)
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


def case(spec: S.KernelSpec, model, seed: int = 0, extreme: bool = False):
    """(inputs, reference f64 y, tolerance against it, y on the kernel's quantized activations, its tolerance).
    ``model``: the kernel's activation model, ``GEMV`` or ``AMX``."""
    M, N, K = (int(spec.attr(k)) for k in "MNK")
    wtype = str(spec.attr("wtype"))
    rng = np.random.default_rng([seed, *map(ord, spec.name)])
    x = np.ones((M, K), np.float32) if extreme else rng.standard_normal((M, K)).astype(np.float32)
    if extreme:
        x[1::2] = -1.0
    words, wd, wmag = weight(rng, wtype, (N, K), extreme)
    x64 = x.astype(np.float64)
    reference, error_bound = model
    pre, preq = x64 @ wd.T, reference(x, wd, wtype)
    f32_terms = (K / 16 + 16) * U32 * ((np.abs(x64) * 1.01) @ wmag.T)
    tol = error_bound(x, wd, wtype) + f32_terms
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


def run(ex, spec, inputs) -> np.ndarray:
    case = kc.Case(spec, inputs, np.zeros(1), np.zeros(1))
    return kc.run_case(ex, case).astype(np.float64)


def check_close(label: str, spec: S.KernelSpec, got: np.ndarray, ref: np.ndarray, tol: np.ndarray) -> None:
    try:
        kc.check(kc.Case(spec, [], ref, tol), got)
    except AssertionError as e:
        raise AssertionError(f"{label}: {e}") from None


def check_matches(ex, spec: S.KernelSpec, model, what: str) -> None:
    """Against x @ W^T within the activation bound, against the model within f32 rounding, and a relative rms
    error of the 16-bit activations' size (~2e-5; ggml's int8: ~5e-3)."""
    inputs, ref, tol, refq, tolq = case(spec, model)
    got = run(ex, spec, inputs)
    check_close("vs x @ W^T", spec, got, ref, tol)
    check_close(f"vs the {what} model", spec, got, refq, tolq)
    rel = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref**2))
    assert rel < 2e-4, rel


def check_extreme(ex, spec: S.KernelSpec, model) -> None:
    """Largest quants, scales and activations: the integer sums must not overflow."""
    inputs, ref, tol, refq, tolq = case(spec, model, extreme=True)
    got = run(ex, spec, inputs)
    check_close("extreme", spec, got, refq, tolq)
    check_close("extreme, vs x @ W^T", spec, got, ref, tol)


def check_zero_and_non_finite(ex, spec: S.KernelSpec, model) -> None:
    """An all-zero row of x gives exact zeros (its scale is 0, not NaN); a NaN or an infinity makes that row's
    outputs non-finite, as the f32 path's would be, and leaves the other rows as they were."""
    inputs, ref, tol, _, _ = case(spec, model)
    x = inputs[0].copy()
    x[0] = 0.0
    x[1, 5] = np.nan
    x[2, 200] = np.inf
    got = run(ex, spec, [x, *inputs[1:]])
    assert np.array_equal(got[0], np.zeros(got.shape[1]))
    assert not np.isfinite(got[1]).any() and not np.isfinite(got[2]).any()
    check_close("untouched rows", spec, got[3:], ref[3:], tol[3:])
