"""Numpy quantizers for the k-quants (q2_k .. q6_k) and the 4-bit non-linear i-quants (iq4_nl, iq4_xs).

They produce the same bytes as ggml's own quantizer, `ggml_quantize_chunk` with no importance matrix (what
`llama-quantize` does without `--imatrix`), which for these types runs the code in `ggml-quants.c`:

    q2_k .. q6_k  quantize_row_q{2..6}_K_ref: per 16- or 32-value sub-block a scale (and a min) found by a small
                  search (make_qkx2_quants, make_q3_quants, make_qx_quants), the scales themselves quantized to
                  4/6/8 bits against one f16 super-block scale, then every value re-rounded with the stored scale.
    iq4_nl        quantize_iq4_nl: quantize_row_iq4_nl_impl on 32 values with a best-scale search over ntry = 7.
                  (ggml's quantize_row_iq4_nl_ref uses ntry = -1, no search, and is not what files contain.)
    iq4_xs        quantize_iq4_xs (= quantize_row_iq4_xs_ref): the same impl on 256 values, 8 sub-blocks of 32 with
                  6-bit scales.

Bit-exactness. ggml computes in float32, so we do too, with the same operations in the same order: every sum over a
sub-block is accumulated sequentially from 0 (never pairwise: `_seq_sum`), products keep C's left-to-right grouping
(`w*x[i]*l` is `(w*x[i])*l`), integer-to-float conversions happen where C's happen, `nearest_int` is ggml's
magic-number rounding on float32 bits, and integer stores wrap the way C's uint8_t/int8_t stores do. Where a search
overflows (|x| above ~1e13 makes the x^2-weighted sums inf or NaN) we follow IEEE and C's comparisons: a NaN scale never
wins `if (s > max)`. The C compiler must not contract `a*b + c` into a fused multiply-add either: x86-64 builds of
ggml-base (llama-cpp-python's wheel: gcc -O3 -std=gnu11 without -march) contain no FMA instruction, so none happens. A
build whose baseline has FMA (aarch64, or x86 with -march=native) lets gcc contract expressions such as
`sum_w*sum_l2 - sum_l*sum_l`; such a ggml may then differ from us (and from x86 ggml) in rare blocks where a search
criterion sits within an ulp of a tie. That case is not tested here.

Vectorization: a block's search is a fixed number of steps (e.g. 21 trial scales for q4_k) whose decisions differ per
block only through masks, so each step runs on all blocks of a chunk at once with `np.where` for the choices. The
sub-block data is laid out [values, sub-blocks] so that the sequential sums run over the first axis on contiguous
rows. The only Python loops are over those fixed steps and over the 16 or 32 values of a sub-block.

The functions take float32 arrays whose size is a multiple of the block size and return uint8 [n_blocks, type_size]
(ggml's block structs); `sdcompile.quant.reference.quantize` calls them on chunks of blocks.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from sdcompile.quant import grids

__all__ = [
    "make_q3_quants",
    "make_qkx2_quants",
    "make_qx_quants",
    "nearest_int",
    "quantize_row_iq4_nl",
    "quantize_row_iq4_xs",
    "quantize_row_q2_K_ref",
    "quantize_row_q3_K_ref",
    "quantize_row_q4_K_ref",
    "quantize_row_q5_K_ref",
    "quantize_row_q6_K_ref",
]

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)

_F32 = np.float32
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared by the quantizers


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5 * 2**23 in float32 and read the low mantissa bits; int32.

    For |v| < 2**22 this is rint (round half to even); beyond, ggml returns garbage (its assert is compiled out) and
    so do we, the same garbage.
    """
    t = (np.asarray(v, dtype=_F32) + _F32(12582912.0)).view(np.int32)
    return (t & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def _levels(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """MAX(lo, MIN(hi, nearest_int(v))) as float32 (the level as C converts it for the sums); overwrites v."""
    v += _F32(12582912.0)
    t = v.view(np.int32)
    t &= np.int32(0x007FFFFF)
    t -= np.int32(0x00400000)
    np.clip(t, lo, hi, out=t)
    return t.astype(_F32)


def _seq_sum(terms: np.ndarray) -> np.ndarray:
    """C's `float s = 0; for (i...) s += terms[i];` over axis 0, in float32 and in order.

    An explicit loop of in-place adds: numpy's reductions may sum pairwise (np.add.reduce does for a single column),
    and np.add.accumulate along axis 0 is sequential but twenty times slower. Starting from terms[0] rather than from
    0 + terms[0] differs only in the sign of an all-(-0.0) sum; adding +0.0 at the end fixes that (C's sum, starting
    at +0.0, is never -0.0).
    """
    s = terms[0].astype(_F32, copy=True)
    for row in terms[1:]:
        s += row
    s += _ZERO
    return s


def _first_abs_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `if (ax > amax) { amax = ax; max = x[i]; }` from amax = max = 0 over axis 0: (amax, signed max).

    The first of equal maxima wins, and NaN never does (a comparison with NaN is false); numpy's argmax would pick
    the first NaN, so NaNs (scales from searches that overflowed) become 0 first.
    """
    ax = np.abs(x)
    ax = np.where(ax > 0, ax, _ZERO)
    i = ax.argmax(axis=0)[None]
    amax = np.take_along_axis(ax, i, axis=0)[0]
    mx = np.take_along_axis(x, i, axis=0)[0]
    keep = amax > 0
    return np.where(keep, amax, _ZERO), np.where(keep, mx, _ZERO)


def _running_max(v: np.ndarray, axis: int) -> np.ndarray:
    """ggml's `m = 0; if (v > m) m = v;`: the largest value if positive, else +0.0; NaNs never win."""
    return np.where(v > 0, v, _ZERO).max(axis=axis).astype(_F32)


def _inv(v: np.ndarray) -> np.ndarray:
    """ggml's `v ? 1/v : 0`."""
    return np.where(v != 0, _ONE / np.where(v != 0, v, _ONE), _ZERO).astype(_F32)


def _f16(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even; numpy agrees bit for bit), as float16."""
    return np.asarray(v, dtype=_F32).astype(np.float16)


def _f16_bytes(h: np.ndarray) -> np.ndarray:
    """float16 [n] -> little-endian bytes [n, 2]."""
    return h.astype("<f2").view(np.uint8).reshape(len(h), 2)


def _i8(v: np.ndarray) -> np.ndarray:
    """C's conversion of an int to int8_t (wraps, as gcc does)."""
    return v.astype(np.int32).astype(np.int8)


def _subblocks(x: np.ndarray, n: int) -> np.ndarray:
    """[n_blocks, block] float32 -> [n, n_blocks * block / n]: value i of every sub-block on contiguous row i."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=_F32).reshape(-1, size)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """q2_k/q3_k's qs: [nb, 256] values < 4 -> [nb, 64]; byte 32c + l holds values 128c + 32k + l at bits 2k."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32) << np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    return np.bitwise_or.reduce(q, axis=2).reshape(-1, 64)


# ---------------------------------------------------------------------------------------------------------------------
# The sub-block searches. x (and weights) are [n, N]: N sub-blocks of n values, laid out by _subblocks.


def make_qkx2_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants on N sub-blocks at once: (scale [N], the_min [N], L [n, N] int32 in 0..nmax).

    Finds scale and min for x ~ scale * L + min (L in 0..nmax, min <= 0) minimizing the weighted squared (or, with
    use_mad, absolute) error: first from the range, then nstep + 1 trial scales around it, each refined by least
    squares; the first strictly better trial wins.
    """
    n = x.shape[0]
    w = weights
    mn = np.take_along_axis(x, x.argmin(axis=0)[None], axis=0)[0]  # first of equal minima, as in C
    mx = np.take_along_axis(x, x.argmax(axis=0)[None], axis=0)[0]
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):  # sum_w += w; sum_x += w * x, in order, starting from the first term (not from 0)
        sum_w += w[i]
        sum_x += w[i] * x[i]
    mn = np.where(mn > 0, _ZERO, mn)
    flat = mx == mn
    flat_min = mn
    nmax_f = _F32(nmax)

    def error(scale, lf, the_min, out):
        np.multiply(scale, lf, out=out)  # diff = scale * L + min - x, then |diff| or diff * diff, times w
        out += the_min
        out -= x
        if use_mad:
            np.abs(out, out=out)
        else:
            out *= out
        out *= w
        return _seq_sum(out)

    tmp = np.empty_like(x)
    span = np.where(flat, _ONE, mx - mn)
    iscale = nmax_f / span
    scale = _ONE / iscale
    L = _levels(iscale * (x - mn), 0, nmax)  # float32 levels
    best_error = error(scale, L, mn, tmp)
    rmin_f, rdelta_f = _F32(rmin), _F32(rdelta)
    for step in range(nstep + 1):
        span = np.where(flat, _ONE, mx - mn)
        iscale = (rmin_f + rdelta_f * _F32(step) + nmax_f) / span
        v = x - mn
        v *= iscale
        laux = _levels(v, 0, nmax)
        wl = np.multiply(w, laux, out=v)
        sum_l = _seq_sum(wl)
        sum_l2 = _seq_sum(np.multiply(wl, laux, out=tmp))
        sum_xl = _seq_sum(np.multiply(wl, x, out=tmp))
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        D = np.where(ok, D, _ONE)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = np.where(pos, _ZERO, this_min)
        this_scale = np.where(pos, sum_xl / np.where(pos, sum_l2, _ONE), this_scale)
        cur_error = error(this_scale, laux, this_min, tmp)
        better = ok & (cur_error < best_error) & ~flat
        np.copyto(L, laux, where=better)
        best_error = np.where(better, cur_error, best_error)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, _ZERO, scale)
    the_min = -np.where(flat, flat_min, mn)
    L = np.where(flat, 0, L.astype(np.int32))
    return scale.astype(_F32), the_min.astype(_F32), L


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants with rmse_type = 1 and no weights (q6_k): (scale [N], L [n, N] int32 in 0..2*nmax-1).

    Symmetric: x ~ scale * (L - nmax). Starts from the scale that maps the largest magnitude to -nmax, then tries 18
    nearby scales, keeping the best by the x^2-weighted least-squares criterion.
    """
    amax, mx = _first_abs_max(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, _ONE, mx)
    w = x * x
    wx = w * x

    def trial(iscale):
        lf = _levels(iscale * x, -nmax, nmax - 1)
        t = w * lf
        t *= lf  # (w * l) * l
        suml2 = _seq_sum(t)
        np.multiply(wx, lf, out=t)  # (w * x) * l
        return lf, _seq_sum(t), suml2

    lf, sumlx, suml2 = trial(_F32(-nmax) / mx)
    L = lf
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, _ONE), _ZERO)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lf, sumlx, suml2 = trial(-(_F32(nmax) + _F32(0.1) * _F32(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        np.copyto(L, lf, where=better)
        scale = np.where(better, sumlx / np.where(better, suml2, _ONE), scale)
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, _ZERO, scale).astype(_F32), np.where(zero, 0, L.astype(np.int32) + nmax)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants with do_rmse (q3_k): (scale [N], L [n, N] int32 in 0..2*nmax-1).

    After the initial rounding, up to 5 passes try, value by value, the level that the current least-squares fit
    suggests, keeping each change that improves the x^2-weighted fit. A pass that changes nothing ends ggml's loop;
    running the remaining passes anyway changes nothing either (the state they would see is the same), so all blocks
    run all 5.
    """
    n = x.shape[0]
    amax, mx = _first_abs_max(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, _ONE, mx)
    iscale = _F32(-nmax) / mx
    L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    w = x * x
    wx = w * x
    lf = L.astype(_F32)
    sumlx = _seq_sum(wx * lf)
    suml2 = _seq_sum(w * lf * lf)
    L = [row for row in L]  # rows updated one at a time below
    for _ in range(5):
        for i in range(n):
            wi, xi, wxi, li = w[i], x[i], wx[i], L[i]
            lif = li.astype(_F32)
            slx = sumlx - wxi * lif
            sl2 = suml2 - wi * lif * lif
            live = slx > 0
            new_l = np.clip(nearest_int(xi * sl2 / np.where(live, slx, _ONE)), -nmax, nmax - 1)
            live &= new_l != li
            nf = new_l.astype(_F32)
            slx = slx + wxi * nf
            sl2 = sl2 + wi * nf * nf
            take = live & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = np.where(take, new_l, li)
            sumlx = np.where(take, slx, sumlx)
            suml2 = np.where(take, sl2, suml2)
    L = np.stack(L) + nmax
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, _ONE), _ZERO)
    return np.where(zero, _ZERO, scale).astype(_F32), np.where(zero, 0, L)


# ---------------------------------------------------------------------------------------------------------------------
# k-quants


def _q2_k(x: np.ndarray) -> np.ndarray:
    """block_q2_K {scales[16], qs[64], d, dmin}: 16 sub-blocks of 16 with a 4-bit scale and min; 2-bit values."""
    xb = _blocks(x, QK_K)
    nb = len(xb)
    xs = _subblocks(xb, 16)  # [16, nb*16]
    scales, mins, L = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)
    q4scale = _F32(15.0)

    max_scale = _running_max(scales, 1)[:, None]
    max_min = _running_max(mins, 1)[:, None]
    has_scale, has_min = max_scale > 0, max_min > 0
    ls = np.where(has_scale, nearest_int(q4scale / np.where(has_scale, max_scale, _ONE) * scales), 0)
    lm = np.where(has_min, nearest_int(q4scale / np.where(has_min, max_min, _ONE) * mins), 0)
    sc = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)  # uint8_t stores wrap
    d = _f16(np.where(has_scale, max_scale / q4scale, _ZERO))
    dmin = _f16(np.where(has_min, max_min / q4scale, _ZERO))

    dl = d.astype(_F32) * (sc & 0xF).astype(_F32)  # [nb, 16]
    dml = dmin.astype(_F32) * (sc >> 4).astype(_F32)
    live = dl != 0
    xv = xb.reshape(nb, 16, 16)
    lq = np.clip(nearest_int((xv + dml[:, :, None]) / np.where(live, dl, _ONE)[:, :, None]), 0, 3)
    L = np.where(live[:, :, None], lq, L).reshape(nb, QK_K)

    return np.concatenate([sc, _pack_2bit(L), _f16_bytes(d[:, 0]), _f16_bytes(dmin[:, 0])], axis=1)


def _q3_k(x: np.ndarray) -> np.ndarray:
    """block_q3_K {hmask[32], qs[64], scales[12], d}: 16 sub-blocks of 16 with 6-bit signed scales; 3-bit values."""
    xb = _blocks(x, QK_K)
    nb = len(xb)
    scales, L = make_q3_quants(_subblocks(xb, 16), 4)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)

    amax, max_scale = _first_abs_max(scales.T)
    max_scale = max_scale[:, None]
    has = max_scale != 0
    iscale = _F32(-32.0) / np.where(has, max_scale, _ONE)
    l6 = np.clip(_i8(nearest_int(iscale * scales)).astype(np.int32), -32, 31) + 32  # int8_t l, then clamped
    l6 = np.where(has, l6, 0).astype(np.uint8)  # [nb, 16], 0..63
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    hi = (l6 >> 4).reshape(nb, 4, 4) << np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]  # [nb, j//4, j%4]
    packed[:, 8:12] = np.bitwise_or.reduce(hi, axis=1)
    d = _f16(np.where(has, _ONE / iscale, _ZERO))

    # Read back as ggml does: with no scales stored (all zero bytes) that is -32, times d = 0.
    sc = l6.astype(np.int32) - 32
    dl = d.astype(_F32) * sc.astype(_F32)
    live = dl != 0
    xv = xb.reshape(nb, 16, 16)
    lq = np.clip(nearest_int(xv / np.where(live, dl, _ONE)[:, :, None]), -4, 3) + 4
    L = np.where(live[:, :, None], lq, L).reshape(nb, 8, 32)  # [nb, bit, m]: value 32 * bit + m

    high = L > 3
    hmask = np.bitwise_or.reduce(high.astype(np.uint8) << np.arange(8, dtype=np.uint8)[:, None], axis=1)
    L = np.where(high, L - 4, L).reshape(nb, QK_K)
    return np.concatenate([hmask, _pack_2bit(L), packed, _f16_bytes(d[:, 0])], axis=1)


def _q45_k(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """The shared part of q4_k and q5_k: 8 sub-blocks of 32 with 6-bit scales and mins, values in 0..nmax.

    Returns (d bytes [nb, 2], dmin bytes [nb, 2], packed scales [nb, 12], L [nb, 256]).
    """
    xb = _blocks(x, QK_K)
    nb = len(xb)
    xs = _subblocks(xb, 32)  # [32, nb*8]
    av_x = np.sqrt(_seq_sum(xs * xs) / _F32(32))
    weights = av_x + np.abs(xs)
    scales, mins, L = make_qkx2_quants(xs, weights, nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    L = L.T.reshape(nb, 8, 32)

    max_scale = _running_max(scales, 1)[:, None]
    max_min = _running_max(mins, 1)[:, None]
    inv_scale = np.where(max_scale > 0, _F32(63.0) / np.where(max_scale > 0, max_scale, _ONE), _ZERO)
    inv_min = np.where(max_min > 0, _F32(63.0) / np.where(max_min > 0, max_min, _ONE), _ZERO)
    ls = np.minimum(nearest_int(inv_scale * scales) & 0xFF, 63).astype(np.uint8)  # uint8_t, then MIN(63, .)
    lm = np.minimum(nearest_int(inv_min * mins) & 0xFF, 63).astype(np.uint8)
    packed = np.concatenate(
        [
            ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6),
            lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6),
            (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4),
        ],
        axis=1,
    )
    d = _f16(max_scale / _F32(63.0))
    dmin = _f16(max_min / _F32(63.0))

    dl = d.astype(_F32) * ls.astype(_F32)  # [nb, 8]
    dml = dmin.astype(_F32) * lm.astype(_F32)
    live = dl != 0
    xv = xb.reshape(nb, 8, 32)
    lq = np.clip(nearest_int((xv + dml[:, :, None]) / np.where(live, dl, _ONE)[:, :, None]), 0, nmax)
    L = np.where(live[:, :, None], lq, L).reshape(nb, QK_K).astype(np.uint8)
    return _f16_bytes(d[:, 0]), _f16_bytes(dmin[:, 0]), packed, L


def _q4_k(x: np.ndarray) -> np.ndarray:
    """block_q4_K {d, dmin, scales[12], qs[128]}: 8 sub-blocks of 32 with 6-bit scale and min; 4-bit values."""
    d, dmin, packed, L = _q45_k(x, 15, -1.0, 20)
    L = L.reshape(-1, 4, 2, 32)  # [nb, 64-value chunk, half, l]
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d, dmin, packed, qs], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    """block_q5_K {d, dmin, scales[12], qh[32], qs[128]}: as q4_k with 5-bit values, the 5th bits in qh."""
    d, dmin, packed, L = _q45_k(x, 31, -0.5, 15)
    L = L.reshape(-1, 4, 2, 32)  # [nb, chunk c, half h, j]: the high bit goes to bit 2c + h of qh[j]
    high = (L >> 4).reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8)[:, None]
    qh = np.bitwise_or.reduce(high, axis=1)
    low = L & 0xF
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d, dmin, packed, qh, ql], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    """block_q6_K {ql[128], qh[64], scales[16] (int8), d}: 16 sub-blocks of 16 with 8-bit scales; 6-bit values."""
    xb = _blocks(x, QK_K)
    nb = len(xb)
    scales, L = make_qx_quants(_subblocks(xb, 16), 32)
    scales = scales.reshape(nb, 16)
    L = L.T.reshape(nb, 16, 16)

    max_abs_scale, max_scale = _first_abs_max(scales.T)
    zero_block = max_abs_scale < GROUP_MAX_EPS
    max_scale = np.where(zero_block, _ONE, max_scale)[:, None]
    iscale = _F32(-128.0) / max_scale
    d = _f16(_ONE / iscale)
    sc = _i8(np.minimum(nearest_int(iscale * scales), 127))  # int8_t scales[16]

    dl = d.astype(_F32) * sc.astype(_F32)
    live = dl != 0
    xv = xb.reshape(nb, 16, 16)
    lq = np.clip(nearest_int(xv / np.where(live, dl, _ONE)[:, :, None]), -32, 31) + 32
    L = np.where(live[:, :, None], lq, L).astype(np.uint8).reshape(nb, 2, 4, 32)  # [nb, 128-chunk, quarter, l]

    ql = np.concatenate(
        [(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4), (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2
    ).reshape(nb, 128)
    qh = np.bitwise_or.reduce((L >> 4) << np.array([0, 2, 4, 6], dtype=np.uint8)[:, None], axis=2).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(d[:, 0])], axis=1)
    out[zero_block] = 0  # ggml memsets the whole block (d = +0.0)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# iq4_nl / iq4_xs


@cache
def _iq4_tables() -> tuple[np.ndarray, np.ndarray]:
    """For k in -256..255 (offset by 256): the index best_index_int8 returns for any x with floor(2x) == k, and the
    codebook value at that index."""
    v = np.array(grids.KVALUES_IQ4NL, dtype=np.int32)
    twice_mid = v[:-1] + v[1:]  # 2 * the midpoint between neighbours: an integer
    k = np.arange(-256, 256, dtype=np.int32)
    index = (k[:, None] >= twice_mid[None, :]).sum(axis=1).astype(np.uint8)
    return index, grids.kvalues_iq4nl()[index]


def _iq4_slot(x: np.ndarray) -> np.ndarray:
    """floor(2x) clamped to -256..255, plus 256: the row of _iq4_tables for x. Overwrites x.

    ggml's best_index_int8 binary-searches for values[mu-1] <= x < values[mu] and picks mu - 1 when
    `x - values[mu-1] < values[mu] - x` in float32. Near a midpoint both differences are exact (the codebook values are
    integers, the midpoints half integers, and x lies within a factor of two of the differences' magnitude), and away
    from one rounding cannot reorder them, so the choice is exactly `x >= midpoint`; every midpoint is a multiple of
    1/2, so the index depends only on floor(2x). A few cheap passes instead of a search per value.
    """
    x *= _F32(2)
    np.floor(x, out=x)
    np.fmin(x, _F32(255), out=x)  # fmin: NaN -> 255 (index 15), where ggml's search ends for NaN too
    np.maximum(x, _F32(-256), out=x)
    k = x.astype(np.int32)
    k += 256
    return k


def _best_index_iq4(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 on kvalues_iq4nl: the nearest codebook index, the upper one on ties; uint8."""
    return _iq4_tables()[0][_iq4_slot(np.array(x, dtype=_F32))]


def _iq4_scales(xs: np.ndarray, ntry: int) -> np.ndarray:
    """The per-32-value scale search of quantize_row_iq4_nl_impl without importance weights (ntry > 0): [N]."""
    values = grids.kvalues_iq4nl()
    w = xs * xs
    amax, mx = _first_abs_max(xs)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, _ONE, mx)

    table = _iq4_tables()[1]

    def sums(id_):
        q = table[_iq4_slot(id_ * xs)]  # values[best_index_int8(id * x)]
        wq = w * q
        q *= wq  # (w * q) * q
        sumq2 = _seq_sum(q)
        wq *= xs  # (w * q) * x
        return _seq_sum(wq), sumq2

    d = -mx / values[0]
    sumqx, sumq2 = sums(_ONE / d)
    d = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, _ONE), _ZERO)
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        sumqx, sumq2 = sums(_F32(itry + int(values[0])) / mx)  # (itry + values[0]) is an int in C
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / np.where(better, sumq2, _ONE), d)
        best = np.where(better, d * sumqx, best)
    return np.where(zero, _ZERO, d).astype(_F32)


def _pack_iq4(L: np.ndarray) -> np.ndarray:
    """[nb, 32k] indices -> [nb, 16k] bytes: per 32 values, value j low nibble and value 16 + j high nibble."""
    L = L.astype(np.uint8).reshape(len(L), -1, 2, 16)
    return (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(len(L), -1)


def _iq4_nl(x: np.ndarray, ntry: int = 7) -> np.ndarray:
    """block_iq4_nl {d, qs[16]} as ggml's quantize_iq4_nl (ntry = 7): one f16 scale per 32 values."""
    xb = _blocks(x, 32)
    d = _iq4_scales(_subblocks(xb, 32), ntry)[:, None]  # [nb, 1]
    L = _best_index_iq4(_inv(d) * xb)
    return np.concatenate([_f16_bytes(_f16(d[:, 0])), _pack_iq4(L)], axis=1)


def _iq4_xs(x: np.ndarray, ntry: int = 7) -> np.ndarray:
    """block_iq4_xs {d, scales_h, scales_l[4], qs[128]} as ggml's quantize_iq4_xs: 8 x 32 values, 6-bit scales."""
    xb = _blocks(x, QK_K)
    nb = len(xb)
    scales = _iq4_scales(_subblocks(xb, 32), ntry).reshape(nb, 8)
    _, max_scale = _first_abs_max(scales.T)
    d = (-max_scale / _F32(32))[:, None]
    ls = np.clip(nearest_int(_inv(d) * scales), -32, 31)  # [nb, 8]
    dl = d * ls.astype(_F32)
    L = _best_index_iq4(_inv(dl)[:, :, None] * xb.reshape(nb, 8, 32))
    ls = (ls + 32).astype(np.uint16)
    scales_l = ((ls[:, 0::2] & 0xF) | ((ls[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    scales_h = np.bitwise_or.reduce((ls >> 4) << np.arange(0, 16, 2, dtype=np.uint16), axis=1).astype("<u2")
    return np.concatenate(
        [_f16_bytes(_f16(d[:, 0])), scales_h.view(np.uint8).reshape(nb, 2), scales_l, _pack_iq4(L.reshape(nb, -1))],
        axis=1,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Public entry points: any float array holding whole blocks -> uint8 [n_blocks, type_size]

# Values per internal chunk: the search keeps about a dozen [values] float32 temporaries, which should stay in cache.
_CHUNK = 1 << 16


def _chunked(fn, x: np.ndarray, block: int, type_size: int) -> np.ndarray:
    xb = _blocks(x, block)
    step = max(1, _CHUNK // block)
    if len(xb) <= step:
        return fn(xb)
    out = np.empty((len(xb), type_size), dtype=np.uint8)
    for start in range(0, len(xb), step):
        out[start : start + step] = fn(xb[start : start + step])
    return out


def quantize_row_q2_K_ref(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q2_K_ref: block_q2_K, 84 bytes per 256 values."""
    return _chunked(_q2_k, x, QK_K, 84)


def quantize_row_q3_K_ref(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q3_K_ref: block_q3_K, 110 bytes per 256 values."""
    return _chunked(_q3_k, x, QK_K, 110)


def quantize_row_q4_K_ref(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q4_K_ref: block_q4_K, 144 bytes per 256 values."""
    return _chunked(_q4_k, x, QK_K, 144)


def quantize_row_q5_K_ref(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q5_K_ref: block_q5_K, 176 bytes per 256 values."""
    return _chunked(_q5_k, x, QK_K, 176)


def quantize_row_q6_K_ref(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q6_K_ref: block_q6_K, 210 bytes per 256 values."""
    return _chunked(_q6_k, x, QK_K, 210)


def quantize_row_iq4_nl(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_iq4_nl without imatrix (ntry = 7; not quantize_row_iq4_nl_ref's ntry = -1): 18 bytes / 32."""
    return _chunked(_iq4_nl, x, 32, 18)


def quantize_row_iq4_xs(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_iq4_xs without imatrix (= quantize_row_iq4_xs_ref): block_iq4_xs, 136 bytes per 256 values."""
    return _chunked(_iq4_xs, x, QK_K, 136)


#: Quantizers by type name, for sdcompile.quant.reference's table.
QUANTIZERS = {
    "q2_k": quantize_row_q2_K_ref,
    "q3_k": quantize_row_q3_K_ref,
    "q4_k": quantize_row_q4_K_ref,
    "q5_k": quantize_row_q5_K_ref,
    "q6_k": quantize_row_q6_K_ref,
    "iq4_nl": quantize_row_iq4_nl,
    "iq4_xs": quantize_row_iq4_xs,
}
