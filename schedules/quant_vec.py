"""16 consecutive values of a GGUF-quantized weight row as one f32 vector, for CPU kernels that decode their weights
into f32 panels (``cpu_fma``): vector loads of a block's quant bytes, widened, shifted and masked in 32-bit lanes,
converted and scaled, with the block's scales read as scalars once per 16 values.

What a block means is ``gguf.quants``' dequantize (bit-exact with ggml). Every value here is that f32 value bit for
bit: the products of an f16 scale, a 6- or 8-bit sub-scale and a quant are exact in f32 or rounded once whatever
their order, and the offsets (q4_1, q5_1 ``+ m``; the k-quants' ``- dmin m``) are added once, as ggml adds them.

``k``, the first value's index in its row, is a multiple of 16, so the 16 values lie in one block (16 values of a
32-value block are all low or all high nibbles of the same 16 bytes; of a k-quant super-block, in one sub-block).
A row starts at ``row * row_bytes``; every 16-bit field sits at an even byte offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from schedules.tir_build import f16_to_f32, splat, vload
from sdcompile.quant.types import get as get_type

LANES = 16


@dataclass
class Views:
    """The weight's storage words seen as 16-bit halves and bytes (one allocation, three buffer views)."""

    w16: tirx.Buffer
    wu8: tirx.Buffer
    w8: tirx.Buffer


def views(w) -> Views:
    words = w.shape[0]
    return Views(
        T.decl_buffer((words * 2,), "int16", data=w.data),
        T.decl_buffer((words * 4,), "uint8", data=w.data),
        T.decl_buffer((words * 4,), "int8", data=w.data),
    )


def _f16(v: Views, at):
    return f16_to_f32(v.w16[at // 2], 1)


def _bytes(v: Views, at):
    """16 bytes from byte ``at``, zero-extended to int32 lanes (``vpmovzxbd``)."""
    return T.Cast("int32x16", vload(v.wu8, at, LANES))


def _nibbles(v: Views, at, high):
    """The low (high = 0) or high (high = 1) nibbles of 16 bytes from ``at``, as int32 lanes."""
    return (_bytes(v, at) >> T.Broadcast(4 * high, LANES)) & splat(15, "int32", LANES)


def _f32(q):
    return T.Cast("float32x16", q)


def _bcast(s):
    return T.Broadcast(s, LANES)


def _qh_bits(v: Views, at, first):
    """Bits first .. first + 15 of the 32-bit little-endian field at ``at`` (an even offset: two halves) as int32
    lanes of 0 or 16, the q5 types' fifth bit in place."""
    lo = T.Cast("int32", v.w16[at // 2]) & 0xFFFF
    hi = T.Cast("int32", v.w16[at // 2 + 1]) & 0xFFFF
    qh = T.bind(lo | (hi << 16))
    return ((T.Broadcast(qh, LANES) >> T.Ramp(first, 1, LANES)) & splat(1, "int32", LANES)) << splat(4, "int32", LANES)


def _scale_min_k4(v: Views, sc, j):
    """Sub-block j's 6-bit scale and min of a q4_k / q5_k super-block (ggml's ``get_scale_min_k4``), from the 12
    scale bytes at ``sc``, as f32."""

    def b(i):
        return T.Cast("int32", v.wu8[sc + i])

    low = j < 4
    scale = T.Select(low, b(j) & 63, (b(j + 4) & 0xF) | ((b(T.max(j - 4, 0)) >> 6) << 4))
    mn = T.Select(low, b(j + 4) & 63, (b(j + 4) >> 4) | ((b(j) >> 6) << 4))
    return T.Cast("float32", scale), T.Cast("float32", mn)


def _q8_0(v, row, k):
    b = T.bind(row + k // 32 * 34)
    return _f32(vload(v.w8, b + 2 + k % 32, LANES)) * _bcast(_f16(v, b))


def _q4_0(v, row, k):
    b = T.bind(row + k // 32 * 18)
    q = _nibbles(v, b + 2, k // 16 % 2) - splat(8, "int32", LANES)
    return _f32(q) * _bcast(_f16(v, b))


def _q4_1(v, row, k):
    b = T.bind(row + k // 32 * 20)
    return _f32(_nibbles(v, b + 4, k // 16 % 2)) * _bcast(_f16(v, b)) + _bcast(_f16(v, b + 2))


def _q5_0(v, row, k):
    b = T.bind(row + k // 32 * 22)
    q = (_nibbles(v, b + 6, k // 16 % 2) | _qh_bits(v, b + 2, k % 32)) - splat(16, "int32", LANES)
    return _f32(q) * _bcast(_f16(v, b))


def _q5_1(v, row, k):
    b = T.bind(row + k // 32 * 24)
    q = _nibbles(v, b + 8, k // 16 % 2) | _qh_bits(v, b + 4, k % 32)
    return _f32(q) * _bcast(_f16(v, b)) + _bcast(_f16(v, b + 2))


def _k_sub(v, b, i, q):
    """q4_k / q5_k: quants q of sub-block i // 32 of the super-block at b, times d sc, less dmin m."""
    scale, mn = _scale_min_k4(v, b + 4, i // 32)
    return _f32(q) * _bcast(_f16(v, b) * scale) - _bcast(_f16(v, b + 2) * mn)


def _q4_k(v, row, k):
    b = T.bind(row + k // 256 * 144)
    i = T.bind(k % 256)  # 64 values per 32 bytes: sub-block 2c in the low nibbles, 2c + 1 in the high
    return _k_sub(v, b, i, _nibbles(v, b + 16 + i // 64 * 32 + i % 32, i // 32 % 2))


def _q5_k(v, row, k):
    b = T.bind(row + k // 256 * 176)
    i = T.bind(k % 256)
    q = _nibbles(v, b + 48 + i // 64 * 32 + i % 32, i // 32 % 2)
    # fifth bits: bit (i // 32) of qh[i % 32]
    hi = ((_bytes(v, b + 16 + i % 32) >> T.Broadcast(i // 32, LANES)) & splat(1, "int32", LANES)) << splat(
        4, "int32", LANES
    )
    return _k_sub(v, b, i, q | hi)


def _q6_k(v, row, k):
    b = T.bind(row + k // 256 * 210)
    i = T.bind(k % 256)
    n, c, lo = i // 128, i % 128 // 32, i % 32  # half, quarter of the half, offset in the quarter
    ql = _nibbles(v, b + 64 * n + 32 * (c % 2) + lo, c // 2)
    qh = (_bytes(v, b + 128 + 32 * n + lo) >> T.Broadcast(2 * c, LANES)) & splat(3, "int32", LANES)
    q = (ql | (qh << splat(4, "int32", LANES))) - splat(32, "int32", LANES)
    scale = T.Cast("float32", v.w8[b + 192 + i // 16])
    return _f32(q) * _bcast(_f16(v, b + 208) * scale)


DECODERS = {
    "q8_0": _q8_0,
    "q4_0": _q4_0,
    "q4_1": _q4_1,
    "q5_0": _q5_0,
    "q5_1": _q5_1,
    "q4_k": _q4_k,
    "q5_k": _q5_k,
    "q6_k": _q6_k,
}
TYPES = tuple(DECODERS)


def values16(wtype: str, v: Views, row, k, K: int):
    """W[row, k:k+16] as float32x16, for a weight of type ``wtype`` with K values per row (k a multiple of 16)."""
    return DECODERS[wtype](v, row * get_type(wtype).row_bytes(K), k)


__all__ = ["TYPES", "Views", "values16", "views"]
