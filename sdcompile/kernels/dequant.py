"""Per-type element decoders: the f32 value of element (row, col) of a raw weight, as a TVM expression.

A raw weight is its GGUF bytes viewed as a flat buffer of little-endian ``uint32`` words (see ``spec.py``). Blocks
are not word-aligned (a q4_0 block is 18 bytes), so every decoder addresses bytes and extracts them with shifts.
Everything is 32-bit integer arithmetic plus one bit-reinterpret of a u32 to f32: that is the common subset of
LLVM, CUDA and WGSL (WGSL has no 8/16-bit or 64-bit types and cannot reinterpret a 16-bit value).

Adding a quant type means adding one entry to ``DECODERS``; the reference for what a block means is
``gguf.quants.dequantize`` (bit-exact with ggml).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from sdcompile.errors import NoKernelError
from sdcompile.quant.types import get as get_type

PrimExpr = tirx.Expr


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
    if bits == 0:  # TVM folds a reinterpret of constant 0 through a pointer-only shortcut and fails
        return tirx.const(0.0, "float32")
    return tirx.reinterpret("float32", tirx.const(bits, "uint32"))


def _i8(b: PrimExpr) -> PrimExpr:
    """Sign-extend a byte (u32 in [0, 255]) to i32 without shifts into the sign bit."""
    return tirx.Cast("int32", b ^ _u32(0x80)) - 128


def _f(v: PrimExpr) -> PrimExpr:
    return tirx.Cast("float32", v)


def signed_byte(w: te.Tensor, i: PrimExpr) -> PrimExpr:
    """Byte ``i`` of the word buffer as a signed int8 value, in f32 (a q8_0 quant)."""
    return _f(_i8(byte(w, i)))


# --- one decoder per type ---------------------------------------------------------------------------------------
# Element functions take (words, byte offset of the block, index in the block, flat element index, block scales).


@dataclass(frozen=True)
class Decoder:
    """How to decode one weight type.

    ``scales`` read per-block f32 values (ggml's f16 ``d`` and ``m`` fields) from the block's byte offset; kernels
    may compute them once per block and keep them in a small table, because decoding a half costs more than the
    rest of an element. ``element`` combines them with the element's own quant bits; a type that reads lookup
    tables (``kernels/luts.py``) gets them as further arguments, one per table, after the scales.
    """

    element: Callable[..., PrimExpr]
    scales: tuple[Callable[[te.Tensor, PrimExpr], PrimExpr], ...] = ()


def _f16_field(offset: int) -> Callable[[te.Tensor, PrimExpr], PrimExpr]:
    return lambda w, base: f16_at(w, base + offset)


def _nibble(w, qs_off, j):
    """4-bit quant of element j (of 32) in ggml's q4/q5 order: low nibbles hold 0..15, high nibbles 16..31."""
    return (byte(w, qs_off + (j & 15)) >> _u32((j >> 4) * 4)) & _u32(0xF)


def _fifth_bit(w, qh_off, j):
    """Bit j of the little-endian u32 qh: the fifth bit of element j's quant."""
    return (byte(w, qh_off + (j >> 3)) >> _u32(j & 7)) & _u32(1)


def _q5(w, qh_off, qs_off, j):
    return _nibble(w, qs_off, j) | (_fifth_bit(w, qh_off, j) << _u32(4))


def _signed(q: PrimExpr, offset: int) -> PrimExpr:
    return _f(tirx.Cast("int32", q) - offset)


DECODERS: dict[str, Decoder] = {
    "f32": Decoder(lambda w, base, j, e, s: tirx.reinterpret("float32", w[e])),
    "f16": Decoder(lambda w, base, j, e, s: f16_at(w, e * 2)),
    "bf16": Decoder(lambda w, base, j, e, s: tirx.reinterpret("float32", half_bits(w, e * 2) << _u32(16))),
    # d: f16, qs: i8[32]; x = d * q
    "q8_0": Decoder(lambda w, base, j, e, s: s[0] * _f(_i8(byte(w, base + 2 + j))), (_f16_field(0),)),
    # d: f16, qs: u8[16]; x = d * (q - 8)
    "q4_0": Decoder(lambda w, base, j, e, s: s[0] * _signed(_nibble(w, base + 2, j), 8), (_f16_field(0),)),
    # d, m: f16, qs: u8[16]; x = d * q + m
    "q4_1": Decoder(lambda w, base, j, e, s: s[0] * _f(_nibble(w, base + 4, j)) + s[1], (_f16_field(0), _f16_field(2))),
    # d: f16, qh: u8[4], qs: u8[16]; x = d * (q - 16)
    "q5_0": Decoder(lambda w, base, j, e, s: s[0] * _signed(_q5(w, base + 2, base + 6, j), 16), (_f16_field(0),)),
    # d, m: f16, qh: u8[4], qs: u8[16]; x = d * q + m
    "q5_1": Decoder(
        lambda w, base, j, e, s: s[0] * _f(_q5(w, base + 4, base + 8, j)) + s[1], (_f16_field(0), _f16_field(2))
    ),
    # qs: u8[64], d: f16. Element j: byte qs[(j // 128) * 32 + j % 32], 2-bit field (j % 128) // 32; x = d * (q - 1)
    "tq2_0": Decoder(
        lambda w, base, j, e, s: (
            s[0] * _signed((byte(w, base + (j >> 7) * 32 + (j & 31)) >> _u32(((j >> 5) & 3) * 2)) & _u32(3), 1)
        ),
        (_f16_field(64),),
    ),
}


def supported_types() -> tuple[str, ...]:
    return tuple(sorted(DECODERS))


def scale_stages(wtype: str) -> list[str]:
    """Names of the scale stages ``decode_staged`` creates for ``wtype`` (for schedules)."""
    return [f"wscale{i}" for i in range(len(_decoder(wtype)[1].scales))]


def _decoder(wtype: str):
    qt = get_type(wtype)
    dec = DECODERS.get(qt.name)
    if dec is None:
        raise NoKernelError(
            f"no kernel decodes weight type {qt.name} (native: {', '.join(supported_types())}); legalization must "
            "repack, dequantize or requantize it first"
        )
    return qt, dec


def _where(qt, row: PrimExpr, col: PrimExpr, ncols: int) -> tuple[PrimExpr, PrimExpr, PrimExpr]:
    """(block byte offset, index in block, flat element index) of element (row, col). Offsets are int32: a single
    raw weight must stay below 2 GiB."""
    e = row * ncols + col
    if qt.block_size == 1:
        return e * qt.type_size, tirx.const(0, "int32"), e
    return row * qt.row_bytes(ncols) + (col // qt.block_size) * qt.type_size, col % qt.block_size, e


def lut_inputs(wtype: str) -> list[te.Tensor]:
    """Placeholders for the lookup tables ``wtype``'s decoder reads (``kernels/luts.py``), in ``spec.lut_params``
    order; kernels pass them to ``decode``/``decode_staged`` and take them as inputs. Empty for most types."""
    from sdcompile.kernels.spec import lut_params

    return [te.placeholder(p.shape, "uint32", name=p.name) for p in lut_params(wtype)]


def decode(
    wtype: str, w: te.Tensor, row: PrimExpr, col: PrimExpr, ncols: int, luts: Sequence[te.Tensor] = ()
) -> PrimExpr:
    """f32 value of element (row, col) of a raw [rows, ncols] weight of type ``wtype`` held in word buffer ``w``;
    ``luts``: the tables from ``lut_inputs(wtype)``, passed to the element function after the scales."""
    qt, dec = _decoder(wtype)
    base, j, e = _where(qt, row, col, ncols)
    return dec.element(w, base, j, e, tuple(f(w, base) for f in dec.scales), *luts)


def decode_staged(
    wtype: str, w: te.Tensor, rows: int, ncols: int, luts: Sequence[te.Tensor] = ()
) -> tuple[list[te.Tensor], Callable[[PrimExpr, PrimExpr], PrimExpr]]:
    """Like ``decode``, with the per-block scales as separate stages ``wscale<i>[rows, ncols // block_size]`` that a
    schedule can compute once per block (or inline). Returns the stages and the element function (row, col)."""
    qt, dec = _decoder(wtype)
    nblk = ncols // qt.block_size

    def stage(i: int, field: Callable[[te.Tensor, PrimExpr], PrimExpr]) -> te.Tensor:
        return te.compute(
            (rows, nblk), lambda r, b: field(w, r * qt.row_bytes(ncols) + b * qt.type_size), name=f"wscale{i}"
        )

    stages = [stage(i, f) for i, f in enumerate(dec.scales)]

    def element(row: PrimExpr, col: PrimExpr) -> PrimExpr:
        base, j, e = _where(qt, row, col, ncols)
        return dec.element(w, base, j, e, tuple(t[row, col // qt.block_size] for t in stages), *luts)

    return stages, element


# --- decoders defined in their own modules (imported last: they build on the helpers above) ---------------------
from sdcompile.kernels.dequant_kquants import DECODERS as _KQUANT_DECODERS  # noqa: E402

DECODERS.update(_KQUANT_DECODERS)

# A plain module import (no attribute access): dequant_iquants registers itself, so importing it first works too.
import sdcompile.kernels.dequant_iquants  # noqa: E402, F401
