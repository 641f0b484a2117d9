"""Numpy reference dequantize/quantize for the ggml quant types, bit-exact with ggml.

These are the numbers every kernel is checked against, so they follow ggml's C reference code (`ggml-quants.c`:
`dequantize_row_*` and `quantize_row_*_ref`) operation for operation: the same float32 operations in the same order,
so the results agree to the bit, not just to a tolerance. The tests compare them with `gguf.quants`.

A tensor is stored as rows of blocks along its last (numpy-order) axis. Since a row holds a whole number of blocks,
the tensor is also just a flat run of blocks, and that is how both directions work: the bytes are cut into blocks,
each type's function turns an array of blocks [n, type_size] into values [n, block_size] (or back) with whole-array
numpy operations, and big tensors go through in chunks of blocks so the temporaries stay small.

Each block decoder below mirrors the loop nest of ggml's `dequantize_row_*`: its reshapes put the array axes in the
order of those loops, so the flattened result is in ggml's output order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sdcompile.errors import QuantError
from sdcompile.quant import grids, kquants
from sdcompile.quant.types import QUANT_TYPES, QuantType, get

__all__ = ["QUANTIZABLE", "dequantize", "quantize"]

# Values per chunk. Bounds the temporaries (the widest, mxfp4's quantizer, is 16 floats per value: 16 MiB).
_CHUNK_VALUES = 1 << 18

# Little-endian views: GGUF data is little-endian whatever the host.
_F16, _U16, _U32, _F32 = np.dtype("<f2"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<f4")


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers for reading block fields. `b` is always a uint8 array [n_blocks, type_size].


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The f16 field at byte `at` of each block, as float32 [n, 1] (ready to broadcast over the block)."""
    return b[:, at : at + 2].view(_F16).astype(np.float32)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Split bytes [..., m] into [..., 2, m]: all low nibbles, then all high nibbles.

    ggml packs value j of a 2m-value group in the low nibble of byte j and value m+j in the high nibble.
    """
    return np.stack([q & 0x0F, q >> 4], axis=-2)


def _bits(q: np.ndarray, count: int, width: int = 1) -> np.ndarray:
    """Fields of `width` bits of each element of q [..., m] as [..., count, m], lowest field first."""
    shifts = np.arange(0, count * width, width, dtype=q.dtype)[:, None]
    return (q[..., None, :] >> shifts) & q.dtype.type((1 << width) - 1)


def _signs(bits: np.ndarray) -> np.ndarray:
    """Sign bits (1 = negative) to float32 factors of -1/+1. Multiplying by +-1 is exact, so this costs no bits."""
    return np.where(bits != 0, np.float32(-1.0), np.float32(1.0))


def _sign_bits(sign_bytes: np.ndarray) -> np.ndarray:
    """Sign bytes [..., m] to [..., m, 8] bits, bit j of each byte for the j-th value of its group of 8."""
    return (sign_bytes[..., None] >> np.arange(8, dtype=np.uint8)) & 1


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf/lroundf: round to nearest, halves away from zero (numpy's rint rounds halves to even).

    Not floor(|x| + 0.5): that sum can itself round up (0.49999997 + 0.5 == 1.0 in float32). The fraction |x| - floor
    is exact in float32, so comparing it with 0.5 is exact too.
    """
    a = np.abs(x)
    f = np.floor(a)
    return np.copysign(f + (a - f >= 0.5), x)


def _first_by_abs_max(blocks: np.ndarray) -> np.ndarray:
    """ggml's `max` in q4_0/q5_0: the signed value of largest magnitude, the first one on ties, +0.0 if all are zero.

    ggml scans with `if (amax < fabsf(v))` starting from amax = max = 0.0f, so an all-zero block keeps max = +0.0 even
    when it holds -0.0 (which then gives d = -0.0).
    """
    i = np.abs(blocks).argmax(axis=1)[:, None]
    m = np.take_along_axis(blocks, i, axis=1)
    return np.where(m == 0, np.float32(0.0), m)


def _e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """ggml's GGML_E8M0_TO_FP32_HALF: 2**(e - 127) / 2, built from bits (a subnormal for e < 2)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml's ggml_compute_fp32_to_bf16: round to nearest even; NaN stays NaN (made quiet), never rounds to inf."""
    n = x.view(np.uint32)
    is_nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # The largest non-NaN input, 0xff800000 (-inf), plus 0x8000 still fits in uint32: no overflow.
    rounded = (n + (np.uint32(0x7FFF) + ((n >> 16) & np.uint32(1)))) >> 16
    quiet_nan = (n >> 16) | np.uint32(64)
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------------------------
# Block decoders: uint8 [n, type_size] -> float32 [n, block_size] (any shape with n * block_size values).


def _deq_q4_0(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _f16(b, 0)
    q = _nibbles(b[:, 2:18]).reshape(n, 32)
    return d * (q.astype(np.float32) - 8)  # ggml: x0*d with int x0 = q - 8


def _deq_q4_1(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 4:20]).reshape(n, 32)
    return d * q.astype(np.float32) + m


def _q5_values(b: np.ndarray, qh_at: int) -> np.ndarray:
    """The 5-bit values of a q5_0/q5_1 block: low 4 bits in nibbles, bit 4 of value j in bit j of a uint32."""
    n = len(b)
    qh = b[:, qh_at : qh_at + 4].view(_U32)  # [n, 1]
    high = (qh >> np.arange(32, dtype=np.uint32)) & 1  # [n, 32]
    low = _nibbles(b[:, qh_at + 4 : qh_at + 20]).reshape(n, 32)
    return (low | (high.astype(np.uint8) << 4)).astype(np.float32)


def _deq_q5_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * (_q5_values(b, 2) - 16)


def _deq_q5_1(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * _q5_values(b, 4) + _f16(b, 2)


def _deq_q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * b[:, 2:34].view(np.int8).astype(np.float32)


def _deq_q2_k(b: np.ndarray) -> np.ndarray:
    n = len(b)
    scales = b[:, 0:16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    # 16 sub-blocks of 16 values, each with a 4-bit scale (low nibble) and a 4-bit min (high nibble).
    dl = (d * (scales & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
    # ggml: for each half (64 bytes of qs -> 2 x 32 bytes) for each 2-bit shift, 32 values from 32 bytes.
    q = _bits(b[:, 16:80].reshape(n, 2, 32), 4, 2)  # [n, half, shift, 32]
    q = q.reshape(n, 16, 16).astype(np.float32)
    return dl * q - ml


def _deq_q3_k(b: np.ndarray) -> np.ndarray:
    n = len(b)
    hmask, qs, sc = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    # 16 6-bit scales: the low 4 bits of scale s are nibble (s // 8) of byte s % 8, the high 2 bits are the 2-bit
    # field (s // 4) of byte 8 + s % 4 (ggml unpacks the same with kmask1/kmask2 on uint32 words).
    low = _nibbles(sc[:, 0:8]).reshape(n, 16)
    high = _bits(sc[:, 8:12], 4, 2).reshape(n, 16)
    scale = (low | (high << 4)).astype(np.float32) - 32
    dl = (d * scale)[:, :, None]
    # Value (half h, shift j, l): 2 low bits from qs[32h + l] >> 2j, and 4 is subtracted unless bit 4h + j of
    # hmask[l] is set.
    ql = _bits(qs.reshape(n, 2, 32), 4, 2)  # [n, h, j, 32]
    hbit = _bits(hmask, 8).reshape(n, 2, 4, 32)  # bit 4h + j
    q = ql.astype(np.float32) - np.where(hbit != 0, np.float32(0), np.float32(4))
    return dl * q.reshape(n, 16, 16)


def _k4_scales_mins(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 for j = 0..7: eight 6-bit scales and mins from 12 bytes (q4_k, q5_k)."""
    a, b, c = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scales = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _deq_q4_k(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k4_scales_mins(b[:, 4:16])
    d1 = (d * sc)[:, :, None]
    m1 = (dmin * mn)[:, :, None]
    # Each 32 bytes of qs hold two sub-blocks: low nibbles the first, high nibbles the second.
    q = _nibbles(b[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32)
    return d1 * q.astype(np.float32) - m1


def _deq_q5_k(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k4_scales_mins(b[:, 4:16])
    d1 = (d * sc)[:, :, None]
    m1 = (dmin * mn)[:, :, None]
    low = _nibbles(b[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32)
    high = _bits(b[:, 16:48], 8)  # sub-block s takes bit s of qh[l]
    q = (low | (high << 4)).astype(np.float32)
    return d1 * q - m1


def _deq_q6_k(b: np.ndarray) -> np.ndarray:
    n = len(b)
    ql, qh = b[:, 0:128], b[:, 128:192]
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b, 208)
    # Per half h (128 values): quarter k takes nibble k // 2 of ql[64h + 32(k % 2) + l] and bits 2k..2k+1 of
    # qh[32h + l]. So value i uses scale i // 16.
    low = _nibbles(ql.reshape(n, 2, 64)).reshape(n, 2, 4, 32)  # [h, nibble, part] -> k = 2 * nibble + part
    high = _bits(qh.reshape(n, 2, 32), 4, 2)  # [n, h, k, 32]
    q = ((low | (high << 4)).astype(np.float32) - 32).reshape(n, 16, 16)
    return (d * scales)[:, :, None] * q  # ggml: d * sc[is] * q, evaluated left to right


def _deq_iq2_xxs(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _f16(b, 0)[:, :, None]
    # 8 groups of 32 values, each two uint32: four grid indices (bytes), then 4 x 7 sign bits and a 4-bit scale.
    g = b[:, 2:66].reshape(n, 8, 8)
    idx = g[:, :, 0:4]
    aux = g[:, :, 4:8].view(_U32)  # [n, 8, 1]
    db = d * (np.float32(0.5) + (aux >> 28).astype(np.float32)) * np.float32(0.25)
    sign_idx = (aux >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 127  # [n, 8, 4]
    signs = _signs(_sign_bits(grids.ksigns()[sign_idx]))  # [n, 8, 4, 8]
    values = grids.grid("iq2xxs")[idx]  # [n, 8, 4, 8]
    return db[..., None] * values * signs


def _iq2_half_scales(d: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """iq2_xs/iq2_s: one 4-bit scale per 16 values, low nibble first: db = d * (0.5 + s) * 0.25, as [n, 16]."""
    s = np.stack([scales & 0x0F, scales >> 4], axis=-1).reshape(len(scales), 16)
    return d * (np.float32(0.5) + s.astype(np.float32)) * np.float32(0.25)


def _deq_iq2_xs(b: np.ndarray) -> np.ndarray:
    n = len(b)
    qs = b[:, 2:66].view(_U16)  # [n, 32]: 9-bit grid index, 7 sign bits
    db = _iq2_half_scales(_f16(b, 0), b[:, 66:74])
    values = grids.grid("iq2xs")[qs & 511]  # [n, 32, 8]
    signs = _signs(_sign_bits(grids.ksigns()[qs >> 9]))
    return db.reshape(n, 16, 1, 1) * values.reshape(n, 16, 2, 8) * signs.reshape(n, 16, 2, 8)


def _deq_iq2_s(b: np.ndarray) -> np.ndarray:
    n = len(b)
    qs, sign_bytes, qh = b[:, 2:34], b[:, 34:66], b[:, 66:74]
    db = _iq2_half_scales(_f16(b, 0), b[:, 74:82])
    # Grid index of group 4 * ib + l: qs byte plus bits 2l..2l+1 of qh[ib] as bits 8..9.
    high = _bits(qh, 4, 2).transpose(0, 2, 1).reshape(n, 32)
    idx = qs.astype(np.uint16) | (high.astype(np.uint16) << 8)
    values = grids.grid("iq2s")[idx]  # [n, 32, 8]
    signs = _signs(_sign_bits(sign_bytes))  # all 8 signs stored: no ksigns
    return db.reshape(n, 16, 1, 1) * values.reshape(n, 16, 2, 8) * signs.reshape(n, 16, 2, 8)


def _deq_iq3_xxs(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _f16(b, 0)
    idx = b[:, 2:66].reshape(n, 8, 8)  # 8 grid indices (4 values each) per group of 32
    aux = b[:, 66:98].view(_U32)  # [n, 8]: 4 x 7 sign bits, 4-bit scale
    db = d * (np.float32(0.5) + (aux >> 28).astype(np.float32)) * np.float32(0.5)
    sign_idx = (aux[:, :, None] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 127  # [n, 8, 4]
    signs = _signs(_sign_bits(grids.ksigns()[sign_idx]))  # [n, 8, 4, 8]: one sign byte per two grid entries
    values = grids.grid("iq3xxs")[idx].reshape(n, 8, 4, 8)
    return db[:, :, None, None] * values * signs


def _deq_iq3_s(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _f16(b, 0)
    qs, qh, sign_bytes, scales = b[:, 2:66], b[:, 66:74], b[:, 74:106], b[:, 106:110]
    # One 4-bit scale per group of 32, low nibble first; ggml: d * (1 + 2 * s) with an int (1 + 2 * s).
    s = np.stack([scales & 0x0F, scales >> 4], axis=-1).reshape(n, 8)
    db = d * (1 + 2 * s.astype(np.float32))
    # Grid index m of group ib: qs[8 * ib + m] plus bit m of qh[ib] as bit 8.
    high = _bits(qh, 8).transpose(0, 2, 1).reshape(n, 64)
    idx = qs.astype(np.uint16) | (high.astype(np.uint16) << 8)
    values = grids.grid("iq3s")[idx].reshape(n, 8, 4, 8)
    signs = _signs(_sign_bits(sign_bytes)).reshape(n, 8, 4, 8)
    return db[:, :, None, None] * values * signs


def _iq1_values(idx: np.ndarray, negative_delta: np.ndarray) -> np.ndarray:
    """Grid values of iq1_s/iq1_m plus the +-delta offset: grid[j] + delta in ggml."""
    delta = np.where(negative_delta, np.float32(-grids.IQ1S_DELTA), np.float32(grids.IQ1S_DELTA))
    return grids.grid("iq1s")[idx] + delta[..., None]


def _deq_iq1_s(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _f16(b, 0)
    qs = b[:, 2:34].reshape(n, 8, 4)
    qh = b[:, 34:50].view(_U16)  # [n, 8]: 4 x 3 index bits, 3-bit scale, delta sign
    dl = d * (2 * ((qh >> 12) & 7) + 1).astype(np.float32)
    high = _bits(qh, 4, 3).transpose(0, 2, 1)  # [n, 8, 4]: bits 3l..3l+2 for grid entry l
    idx = qs.astype(np.uint16) | (high << 8)
    values = _iq1_values(idx, np.broadcast_to(((qh & 0x8000) != 0)[:, :, None], idx.shape))
    return dl[:, :, None, None] * values  # [n, 8, 4, 8]


def _deq_iq1_m(b: np.ndarray) -> np.ndarray:
    n = len(b)
    qs, qh = b[:, 0:32], b[:, 32:48]
    sc = b[:, 48:56].view(_U16)  # [n, 4]
    # The f16 super-block scale is spread over the top 4 bits of the four uint16 scale words.
    d_bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    d = d_bits.astype(np.uint16).view(_F16).astype(np.float32)[:, None]
    # 16 3-bit scales, one per 16 values (two grid entries): field p % 4 of word p // 4.
    s = _bits(sc, 4, 3).transpose(0, 2, 1).reshape(n, 16)
    dl = d * (2 * s + 1).astype(np.float32)
    # Each grid entry g has a nibble of qh (low nibble first): 3 more index bits and the delta sign.
    nib = _nibbles(qh).transpose(0, 2, 1).reshape(n, 32)
    idx = qs.astype(np.uint16) | ((nib & 7).astype(np.uint16) << 8)
    values = _iq1_values(idx, (nib & 8) != 0)  # [n, 32, 8]
    return dl[:, :, None, None] * values.reshape(n, 16, 2, 8)


def _deq_iq4_nl(b: np.ndarray) -> np.ndarray:
    n = len(b)
    q = _nibbles(b[:, 2:18]).reshape(n, 32)
    return _f16(b, 0) * grids.kvalues_iq4nl()[q]


def _deq_iq4_xs(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _f16(b, 0)
    scales_h = b[:, 2:4].view(_U16)  # [n, 1]: 2 high bits per group
    low = _nibbles(b[:, 4:8]).transpose(0, 2, 1).reshape(n, 8)  # low nibble first
    high = (scales_h >> np.arange(0, 16, 2, dtype=np.uint16)) & 3  # [n, 8]
    ls = low.astype(np.int32) | (high.astype(np.int32) << 4)
    dl = d * (ls - 32).astype(np.float32)
    q = _nibbles(b[:, 8:136].reshape(n, 8, 16)).reshape(n, 8, 32)
    return dl[:, :, None] * grids.kvalues_iq4nl()[q]


def _trits(q: np.ndarray, count: int) -> np.ndarray:
    """Base-3 digits of tq1_0's packed bytes [..., m] as [..., count, m], most significant first.

    A byte holds ceil(x * 256 / 243) for a 5-trit number x; multiplying by 3**k (wrapping in uint8) brings digit k to
    the top, and (byte * 3) >> 8 reads it off.
    """
    pow3 = np.array([1, 3, 9, 27, 81][:count], dtype=np.uint8)[:, None]
    shifted = q[..., None, :] * pow3  # uint8 arithmetic wraps, as in ggml
    return (shifted.astype(np.uint16) * 3) >> 8


def _deq_tq1_0(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _f16(b, 52)
    q = np.concatenate(
        [
            _trits(b[:, 0:32], 5).reshape(n, 160),  # 32 bytes x 5 trits, trit-major
            _trits(b[:, 32:48], 5).reshape(n, 80),  # 16 bytes x 5 trits
            _trits(b[:, 48:52], 4).reshape(n, 16),  # qh: 4 bytes x 4 trits
        ],
        axis=1,
    )
    return (q.astype(np.float32) - 1) * d


def _deq_tq2_0(b: np.ndarray) -> np.ndarray:
    n = len(b)
    q = _bits(b[:, 0:64].reshape(n, 2, 32), 4, 2).reshape(n, 256)
    return (q.astype(np.float32) - 1) * _f16(b, 64)


def _deq_mxfp4(b: np.ndarray) -> np.ndarray:
    n = len(b)
    d = _e8m0_to_fp32_half(b[:, 0:1])
    q = _nibbles(b[:, 1:17]).reshape(n, 32)
    return grids.kvalues_mxfp4()[q] * d


def _deq_f32(b: np.ndarray) -> np.ndarray:
    return b.view(_F32).astype(np.float32)


def _deq_f16(b: np.ndarray) -> np.ndarray:
    return b.view(_F16).astype(np.float32)


def _deq_bf16(b: np.ndarray) -> np.ndarray:
    # bf16 is the top half of a float32: exact.
    return (b.view(_U16).astype(np.uint32) << 16).view(np.float32)


_DEQUANT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "f32": _deq_f32,
    "f16": _deq_f16,
    "bf16": _deq_bf16,
    "q4_0": _deq_q4_0,
    "q4_1": _deq_q4_1,
    "q5_0": _deq_q5_0,
    "q5_1": _deq_q5_1,
    "q8_0": _deq_q8_0,
    "q2_k": _deq_q2_k,
    "q3_k": _deq_q3_k,
    "q4_k": _deq_q4_k,
    "q5_k": _deq_q5_k,
    "q6_k": _deq_q6_k,
    "iq2_xxs": _deq_iq2_xxs,
    "iq2_xs": _deq_iq2_xs,
    "iq2_s": _deq_iq2_s,
    "iq3_xxs": _deq_iq3_xxs,
    "iq3_s": _deq_iq3_s,
    "iq1_s": _deq_iq1_s,
    "iq1_m": _deq_iq1_m,
    "iq4_nl": _deq_iq4_nl,
    "iq4_xs": _deq_iq4_xs,
    "tq1_0": _deq_tq1_0,
    "tq2_0": _deq_tq2_0,
    "mxfp4": _deq_mxfp4,
}


# ---------------------------------------------------------------------------------------------------------------------
# Block encoders: float32 [n, block_size] -> uint8 [n, type_size], as ggml's quantize_row_*_ref.


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 [n, k] -> the f16 bytes [n, 2k]. numpy rounds to nearest even, as ggml's FP32_TO_FP16 does."""
    return x.astype(_F16).view(np.uint8)


def _inverse(d: np.ndarray) -> np.ndarray:
    """ggml's `id = d ? 1.0f/d : 0.0f`."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[n, 2m] values < 16 -> [n, m] bytes: value j in the low nibble of byte j, value m + j in the high nibble."""
    m = q.shape[1] // 2
    return (q[:, :m] & 0x0F) | (q[:, m:] << 4)


def _pack_bit4(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 32 values [n, 32] -> 4 bytes [n, 4] holding the little-endian uint32 with bit j from value j."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _q_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    q = _round_half_away(x * _inverse(d)).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _q_q4_0(x: np.ndarray) -> np.ndarray:
    d = _first_by_abs_max(x) / np.float32(-8)
    # x * id lies in [-8, 8], so x * id + 8.5 is positive and C's (int8_t) truncation is a floor.
    q = np.minimum(np.trunc(x * _inverse(d) + np.float32(8.5)), 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _q_q5_0(x: np.ndarray) -> np.ndarray:
    d = _first_by_abs_max(x) / np.float32(-16)
    q = np.minimum(np.trunc(x * _inverse(d) + np.float32(16.5)), 31).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _pack_bit4(q), _pack_nibbles(q)], axis=1)


def _min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's running min/max with strict comparisons: the first of equal extremes wins (matters only for +-0)."""
    lo = np.take_along_axis(x, x.argmin(axis=1)[:, None], axis=1)
    hi = np.take_along_axis(x, x.argmax(axis=1)[:, None], axis=1)
    return lo, hi


def _q_q4_1(x: np.ndarray) -> np.ndarray:
    lo, hi = _min_max(x)
    d = (hi - lo) / np.float32(15)
    q = np.minimum(np.trunc((x - lo) * _inverse(d) + np.float32(0.5)), 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)


def _q_q5_1(x: np.ndarray) -> np.ndarray:
    lo, hi = _min_max(x)
    d = (hi - lo) / np.float32(31)
    # ggml has no clamp here; (x - min) * id stays below 31.5, so the clamp only documents the range.
    q = np.minimum(np.trunc((x - lo) * _inverse(d) + np.float32(0.5)), 31).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_bit4(q), _pack_nibbles(q)], axis=1)


def _ternary(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tq1_0/tq2_0: d = max |x|, and each value rounded to -1, 0, 1 (stored as 0, 1, 2)."""
    d = np.abs(x).max(axis=1, keepdims=True)
    q = _round_half_away(x * _inverse(d)) + 1
    return d, q.astype(np.uint8)


def _pack_trits(q: np.ndarray, count: int) -> np.ndarray:
    """[n, count, m] trits -> [n, m] bytes: the base-3 number (first trit most significant), scaled to a byte.

    With fewer than 5 trits (qh) the number is shifted up to 5 digits first, so decoding always reads 5 places.
    Then ceil(x * 256 / 243) puts the number in the byte's range so that digits can be read with a multiply.
    """
    weights = np.array([81, 27, 9, 3, 1][:count], dtype=np.uint16)[:, None]
    x = (q.astype(np.uint16) * weights).sum(axis=1, dtype=np.uint16)
    return ((x * 256 + 242) // 243).astype(np.uint8)


def _q_tq1_0(x: np.ndarray) -> np.ndarray:
    n = len(x)
    d, q = _ternary(x)
    qs0 = _pack_trits(q[:, 0:160].reshape(n, 5, 32), 5)
    qs1 = _pack_trits(q[:, 160:240].reshape(n, 5, 16), 5)
    qh = _pack_trits(q[:, 240:256].reshape(n, 4, 4), 4)
    return np.concatenate([qs0, qs1, qh, _f16_bytes(d)], axis=1)


def _q_tq2_0(x: np.ndarray) -> np.ndarray:
    n = len(x)
    d, q = _ternary(x)
    q = q.reshape(n, 2, 4, 32) << np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    qs = np.bitwise_or.reduce(q, axis=2).reshape(n, 64)
    return np.concatenate([qs, _f16_bytes(d)], axis=1)


def _q_mxfp4(x: np.ndarray) -> np.ndarray:
    n = len(x)
    amax = np.abs(x).max(axis=1, keepdims=True)
    # ggml: e = amax > 0 ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0, a scale of 2**(floor(log2(amax)) - 2), so
    # amax lands among the top e2m1 codes (4 and 6 times the scale; beyond that it clamps to 6). Like gguf we use
    # numpy's float32 log2 for log2f. A subnormal amax gives a negative e, which C leaves undefined; going through
    # int32 wraps it as x86 builds of ggml do.
    with np.errstate(divide="ignore"):
        e = np.where(amax > 0, np.floor(np.log2(amax)) - 2 + 127, 0).astype(np.int32).astype(np.uint8)
    d = _e8m0_to_fp32_half(e)  # [n, 1]
    # best_index_mxfp4: the nearest code, the first (lowest index) on ties.
    err = np.abs(grids.kvalues_mxfp4() * d[:, :, None] - x[:, :, None])  # [n, 32, 16]
    q = err.argmin(axis=2).astype(np.uint8)
    return np.concatenate([e, _pack_nibbles(q)], axis=1).reshape(n, 17)


def _q_f32(x: np.ndarray) -> np.ndarray:
    return x.astype(_F32).view(np.uint8)


def _q_f16(x: np.ndarray) -> np.ndarray:
    return _f16_bytes(x)


def _q_bf16(x: np.ndarray) -> np.ndarray:
    return _fp32_to_bf16_bits(x).astype(_U16).view(np.uint8)


_QUANT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "f32": _q_f32,
    "f16": _q_f16,
    "bf16": _q_bf16,
    "q4_0": _q_q4_0,
    "q4_1": _q_q4_1,
    "q5_0": _q_q5_0,
    "q5_1": _q_q5_1,
    "q8_0": _q_q8_0,
    "tq1_0": _q_tq1_0,
    "tq2_0": _q_tq2_0,
    "mxfp4": _q_mxfp4,
    **kquants.QUANTIZERS,  # q2_k .. q6_k, iq4_nl, iq4_xs: ggml's search-based quantizers, mirrored in numpy
}

#: The types `quantize` can produce. The other i-quants need ggml's codebook-search quantizers (llama-quantize).
QUANTIZABLE: tuple[str, ...] = tuple(_QUANT)


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def _resolve(qtype: str | QuantType) -> QuantType:
    if isinstance(qtype, QuantType):
        if QUANT_TYPES.get(qtype.name) != qtype:
            raise QuantError(f"unknown quant type {qtype.name!r}; known types: {', '.join(QUANT_TYPES)}")
        return qtype
    if isinstance(qtype, str):
        return get(qtype)
    raise QuantError(f"a quant type is a name such as 'q4_0' or a QuantType, not {type(qtype).__name__} {qtype!r}")


def _check_shape(shape: tuple[int, ...], t: QuantType) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as e:
        raise QuantError(f"the shape of a {t.name} tensor must be a tuple of ints, not {shape!r}") from e
    if any(s < 0 for s in shape):
        raise QuantError(f"the shape of a {t.name} tensor cannot have negative dimensions: {shape}")
    return shape


def dequantize(raw: np.ndarray, qtype: str | QuantType, shape: tuple[int, ...]) -> np.ndarray:
    """Decode the stored bytes of a tensor of type `qtype` into float32 values of `shape`.

    `raw` holds the tensor's bytes as stored in a GGUF file (a uint8 array of any shape, or any bytes-like object), in
    C order; `shape` is the numpy-order shape, its last dimension the blocked one. Returns a new float32 array of
    `shape`. Raises QuantError when the type is unknown, the last dimension is not a multiple of the block size, or
    the number of bytes does not match; TypeError for an array that is not uint8 (a caller's bug, not the file's).
    """
    t = _resolve(qtype)
    shape = _check_shape(shape, t)
    expected = t.nbytes(shape)  # raises QuantError when the row is not a whole number of blocks
    if isinstance(raw, np.ndarray):
        if raw.dtype != np.uint8:
            raise TypeError(f"dequantize expects the raw bytes as a uint8 array, got dtype {raw.dtype}")
        data = np.ascontiguousarray(raw).reshape(-1)
    else:
        data = np.frombuffer(raw, dtype=np.uint8)
    if data.size != expected:
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        row_bytes = t.row_bytes(shape[-1] if shape else 1)
        raise QuantError(
            f"a {t.name} tensor of shape {shape} takes {expected} bytes ({rows} rows of {row_bytes} bytes), but "
            f"{data.size} bytes were given; the data is truncated or the type or shape is wrong"
        )

    n_blocks = data.size // t.type_size
    blocks = data.reshape(n_blocks, t.type_size)
    out = np.empty(n_blocks * t.block_size, dtype=np.float32)
    decode = _DEQUANT[t.name]
    step = max(1, _CHUNK_VALUES // t.block_size)
    # Stored scales may be inf or NaN (and inf * 0 is NaN): that is the data, decoded as ggml decodes it, not an error.
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n_blocks, step):
            stop = min(start + step, n_blocks)
            out[start * t.block_size : stop * t.block_size] = decode(blocks[start:stop]).reshape(-1)
    return out.reshape(shape)


def quantize(arr: np.ndarray, qtype: str | QuantType) -> np.ndarray:
    """Encode `arr` as `qtype`, bit-exact with ggml's reference quantizers; returns the raw bytes, flat uint8.

    The result has `qtype.nbytes(arr.shape)` bytes in C order (rows of blocks along the last axis), as `dequantize`
    takes them and as a GGUF file stores them: `dequantize(quantize(a, t), t, a.shape)` round-trips. `arr` is first
    converted to float32, as ggml always quantizes from f32. Supported types are `QUANTIZABLE`; block types reject
    NaN and infinity (ggml's result for them is undefined).
    """
    t = _resolve(qtype)
    encode = _QUANT.get(t.name)
    if encode is None:
        raise QuantError(
            f"cannot quantize to {t.name}: sdcompile's reference quantizer supports {', '.join(QUANTIZABLE)}; "
            f"the other i-quants need ggml's quantizer (llama-quantize), or choose one of those types"
        )
    x = np.ascontiguousarray(np.asarray(arr), dtype=np.float32)
    shape = _check_shape(x.shape, t)
    nbytes = t.nbytes(shape)  # raises QuantError when the row is not a whole number of blocks
    if not t.is_float and not np.isfinite(x).all():
        raise QuantError(
            f"cannot quantize a tensor of shape {shape} holding NaN or infinity to {t.name}: the block scale would "
            f"be meaningless; fix the weights or store them as f16, bf16 or f32"
        )

    blocks = x.reshape(-1, t.block_size)
    out = np.empty((len(blocks), t.type_size), dtype=np.uint8)
    step = max(1, _CHUNK_VALUES // t.block_size)
    # A scale beyond f16's range becomes inf, as in ggml; NaN and inf inputs of the float types convert as in ggml.
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, len(blocks), step):
            stop = min(start + step, len(blocks))
            out[start:stop] = encode(blocks[start:stop]).reshape(stop - start, t.type_size)
    assert out.size == nbytes
    return out.reshape(-1)
