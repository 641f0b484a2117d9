"""Per-type element decoders: the f32 value of element (row, col) of a raw weight, as a TVM expression.

A raw weight is its GGUF bytes viewed as a flat buffer of little-endian ``uint32`` words (see ``spec.py``). Blocks
are not word-aligned (a q4_0 block is 18 bytes), so every decoder addresses bytes and extracts them with shifts.
Everything is 32-bit integer arithmetic plus one bit-reinterpret of a u32 to f32: that is the common subset of
LLVM, CUDA and WGSL (WGSL has no 8/16-bit or 64-bit types and cannot reinterpret a 16-bit value).

Adding a quant type means adding one function to ``DECODERS``; the reference for what a block means is
``gguf.quants.dequantize`` (bit-exact with ggml).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import te, tirx

from sdcompile.quant.types import get as get_type

PrimExpr = tirx.Expr
# (words, byte offset of the element's block, index of the element inside its block, element index) -> f32 value
Decoder = Callable[[te.Tensor, PrimExpr, PrimExpr, PrimExpr], PrimExpr]


def _u32(v: int | PrimExpr) -> PrimExpr:
    return tirx.const(v, "uint32") if isinstance(v, int) else tirx.Cast("uint32", v)


def byte(w: te.Tensor, i: PrimExpr) -> PrimExpr:
    """Byte ``i`` (int32 byte offset) of the word buffer, as a u32 in [0, 255]."""
    return (w[i >> 2] >> _u32((i & 3) * 8)) & _u32(0xFF)


def half_bits(w: te.Tensor, i: PrimExpr) -> PrimExpr:
    """The 16 bits at byte offset ``i``; every 16-bit field in a GGUF block sits at an even offset, so both bytes
    are in the same word."""
    return (w[i >> 2] >> _u32((i & 2) * 8)) & _u32(0xFFFF)


def let(value: PrimExpr, body: Callable[[PrimExpr], PrimExpr], name: str = "t") -> PrimExpr:
    """Bind ``value`` once: TE expressions are trees, and without a binding a value used in several places is
    printed (WGSL, CUDA C) and often computed once per use."""
    v = tirx.Var(name, value.ty)
    return tirx.Let(v, value, body(v))


def f16_to_f32(h: PrimExpr) -> PrimExpr:
    """IEEE half bits (u32 holding 16 bits) -> f32, exact for normals, subnormals, zeros, infinities and NaNs."""

    def convert(h: PrimExpr) -> PrimExpr:
        sign = (h & _u32(0x8000)) << _u32(16)
        exp = (h >> _u32(10)) & _u32(0x1F)
        man = h & _u32(0x3FF)
        normal = sign | ((exp + _u32(112)) << _u32(23)) | (man << _u32(13))
        special = sign | _u32(0x7F800000) | (man << _u32(13))
        as_f32 = tirx.reinterpret("float32", tirx.Select(exp == _u32(31), special, normal))
        # Subnormal halves are man * 2^-24; computing them in floating point avoids emitting f32 denormal bits,
        # which GPUs may flush to zero.
        sub = tirx.Cast("float32", man) * f32(2.0**-24)
        sub = tirx.Select(sign != _u32(0), -sub, sub)
        return tirx.Select(exp == _u32(0), sub, as_f32)

    return let(h, convert, "h")


def f16_at(w: te.Tensor, i: PrimExpr) -> PrimExpr:
    return f16_to_f32(half_bits(w, i))


def f32(v: float) -> PrimExpr:
    """An f32 constant that survives every code generator bit-exactly: TVM's WGSL printer writes float literals
    with 7 significant digits (2^-24 becomes 5.960464e-08f, one ulp off), so constants go through their bits."""
    bits = int(np.array(v, np.float32).view(np.uint32))
    return tirx.reinterpret("float32", tirx.const(bits, "uint32"))


def _i8(b: PrimExpr) -> PrimExpr:
    """Sign-extend a byte (u32 in [0, 255]) to i32 without shifts into the sign bit."""
    return tirx.Cast("int32", b ^ _u32(0x80)) - 128


def _f(v: PrimExpr) -> PrimExpr:
    return tirx.Cast("float32", v)


# --- one decoder per type ---------------------------------------------------------------------------------------


def _f32(w, base, j, e):
    return tirx.reinterpret("float32", w[e])


def _f16(w, base, j, e):
    return f16_at(w, e * 2)


def _bf16(w, base, j, e):
    return tirx.reinterpret("float32", half_bits(w, e * 2) << _u32(16))


def _q8_0(w, base, j, e):
    # d: f16, qs: i8[32]
    return f16_at(w, base) * _f(_i8(byte(w, base + 2 + j)))


def _nibble(w, qs_off, j):
    """4-bit quant of element j (of 32) in ggml's q4/q5 order: low nibbles hold 0..15, high nibbles 16..31."""
    return (byte(w, qs_off + (j & 15)) >> _u32((j >> 4) * 4)) & _u32(0xF)


def _q4_0(w, base, j, e):
    # d: f16, qs: u8[16]; x = d * (q - 8)
    return f16_at(w, base) * _f(tirx.Cast("int32", _nibble(w, base + 2, j)) - 8)


def _q4_1(w, base, j, e):
    # d, m: f16, qs: u8[16]; x = d * q + m
    return f16_at(w, base) * _f(_nibble(w, base + 4, j)) + f16_at(w, base + 2)


def _fifth_bit(w, qh_off, j):
    """Bit j of the little-endian u32 qh: the fifth bit of element j's quant."""
    return (byte(w, qh_off + (j >> 3)) >> _u32(j & 7)) & _u32(1)


def _q5_0(w, base, j, e):
    # d: f16, qh: u8[4], qs: u8[16]; x = d * (q - 16)
    q = _nibble(w, base + 6, j) | (_fifth_bit(w, base + 2, j) << _u32(4))
    return f16_at(w, base) * _f(tirx.Cast("int32", q) - 16)


def _q5_1(w, base, j, e):
    # d, m: f16, qh: u8[4], qs: u8[16]; x = d * q + m
    q = _nibble(w, base + 8, j) | (_fifth_bit(w, base + 4, j) << _u32(4))
    return f16_at(w, base) * _f(q) + f16_at(w, base + 2)


def _tq2_0(w, base, j, e):
    # qs: u8[64], d: f16. Element j: byte qs[(j // 128) * 32 + j % 32], 2-bit field (j % 128) // 32; x = d * (q - 1)
    q = (byte(w, base + (j >> 7) * 32 + (j & 31)) >> _u32(((j >> 5) & 3) * 2)) & _u32(3)
    return f16_at(w, base + 64) * _f(tirx.Cast("int32", q) - 1)


DECODERS: dict[str, Decoder] = {
    "f32": _f32,
    "f16": _f16,
    "bf16": _bf16,
    "q8_0": _q8_0,
    "q4_0": _q4_0,
    "q4_1": _q4_1,
    "q5_0": _q5_0,
    "q5_1": _q5_1,
    "tq2_0": _tq2_0,
}


def supported_types() -> tuple[str, ...]:
    return tuple(sorted(DECODERS))


def decode(wtype: str, w: te.Tensor, row: PrimExpr, col: PrimExpr, ncols: int) -> PrimExpr:
    """f32 value of element (row, col) of a raw [rows, ncols] weight of type ``wtype`` held in word buffer ``w``.

    Offsets are int32: a single raw weight must stay below 2 GiB.
    """
    qt = get_type(wtype)
    fn = DECODERS.get(qt.name)
    if fn is None:
        raise NotImplementedError(f"no decoder for weight type {qt.name}")
    bs, ts = qt.block_size, qt.type_size
    e = row * ncols + col  # element index (plain float types)
    if bs == 1:
        return fn(w, e * ts, tirx.const(0, "int32"), e)
    base = row * qt.row_bytes(ncols) + (col // bs) * ts
    return fn(w, base, col % bs, e)
