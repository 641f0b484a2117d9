"""Element decoders for the i-quants (iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq4_nl, iq4_xs), merged
into ``dequant.DECODERS``.

Same contract as ``dequant.py``: element ``j`` of the block at byte offset ``base`` from 32-bit integer operations
on the weight's uint32 words plus a u32 -> f32 reinterpret. The grid types also read their codebook, a lookup table
passed as one more uint32 buffer (``kernels/luts.py``: ggml's entries, one byte per value); a table read is an
ordinary buffer load. The f16 super-block scale ``d`` is the ``scales`` stage (iq1_m assembles it from the top
nibbles of its four scale words); the 3- and 4-bit sub-block scales are decoded inline.

ggml's ``ksigns_iq2xs`` is not read from memory: it stores 7 sign bits per 8 values, the 8th being the parity of
the 7 (an even number of minus signs), which three shifts and xors give. ``kvalues_iq4nl`` (16 int8) sits in four
constant words, picked with two selects.

Float operations follow ``gguf.quants`` (= ggml's ``dequantize_row_*``) in order, e.g. ``(d * (0.5 + s)) * 0.25``
then ``* grid`` then the sign, so the decoded values are bit-identical to gguf's on any target that does not
reorder f32 arithmetic (none of these contain an ``a * b + c`` a compiler could contract).

Layouts (byte offsets in a block; one super-block of 256 values, iq4_nl: 32):

- iq2_xxs (66 B): d @0; 8 groups of 32 values @2+8g: 4 grid indices (u8, 8 values each), then a u32 with
  4 x 7 sign bits and a 4-bit scale (bits 28..31); x = d (0.5 + s) / 4 * grid * sign
- iq2_xs  (74 B): d @0; qs[32] u16 @2 (9-bit grid index, 7 sign bits), scales[8] @66 (4 bits per 16 values)
- iq2_s   (82 B): d @0; qs[32] @2 (index low 8 bits), signs[32] @34 (8 per byte), qh[8] @66 (2 index bits per
  8 values), scales[8] @74
- iq3_xxs (98 B): d @0; qs[64] @2 (grid index per 4 values), 8 u32 @66 (4 x 7 sign bits, 4-bit scale);
  x = d (0.5 + s) / 2 * grid * sign
- iq3_s   (110 B): d @0; qs[64] @2, qh[8] @66 (9th index bit), signs[32] @74, scales[4] @106; x = d (1 + 2 s) grid sign
- iq1_s   (50 B): d @0; qs[32] @2 (index low 8 bits per 8 values), qh[8] u16 @34 (per 32 values: 4 x 3 index
  bits, 3-bit scale @12, delta sign @15); x = d (2 s + 1) (grid + delta), delta = +-1/8
- iq1_m   (56 B): qs[32] @0, qh[16] @32 (a nibble per 8 values: 3 index bits, delta sign), scales: 4 u16 @48
  (4 x 3-bit scales each, one per 16 values; top nibbles: the f16 d)
- iq4_nl  (18 B): d @0; qs[16] @2 (q4_0 nibble order); x = d * kvalues[q]
- iq4_xs  (136 B): d @0; scales_h u16 @2 (2 high bits per 32 values), scales_l[4] @4 (4 low bits), qs[128] @8
  (16 bytes per 32 values, q4_0 nibble order); x = d (ls - 32) kvalues[q]
"""

from __future__ import annotations

from tvm import te, tirx

from sdcompile.kernels import dequant
from sdcompile.kernels.dequant import Decoder, _f, _i8, _nibble, _u32, byte, f16_at, f16_to_f32, f32, half_bits, let
from sdcompile.quant.grids import KVALUES_IQ4NL

PrimExpr = tirx.Expr


def _i32(v: PrimExpr) -> PrimExpr:
    return tirx.Cast("int32", v)


def _d(w: te.Tensor, base: PrimExpr) -> PrimExpr:
    return f16_at(w, base)


def _u32_at(w: te.Tensor, i: PrimExpr) -> PrimExpr:
    """The little-endian u32 at even byte offset ``i`` (blocks are only 2-byte aligned: it may span two words)."""
    return half_bits(w, i) | (half_bits(w, i + 2) << _u32(16))


def _grid_byte(lut: te.Tensor, index: PrimExpr, k: PrimExpr, words_per_entry: int) -> PrimExpr:
    """Value ``k`` of codebook entry ``index`` (a u32), as its u32 byte: entries are ggml's u64 (2 words) or u32."""
    word = lut[_i32(index) * words_per_entry + (k >> 2)] if words_per_entry > 1 else lut[_i32(index)]
    return (word >> _u32((k & 3) * 8)) & _u32(0xFF)


def _ksign(bits7: PrimExpr, k: PrimExpr) -> PrimExpr:
    """Sign bit ``k`` (0..7; 1 = negative) of ``ksigns_iq2xs[bits7]``: the 7 stored bits, then their parity."""

    def bit(v: PrimExpr) -> PrimExpr:
        p = v ^ (v >> _u32(4))
        p = p ^ (p >> _u32(2))
        p = p ^ (p >> _u32(1))
        return ((v | ((p & _u32(1)) << _u32(7))) >> _u32(k)) & _u32(1)

    return let(bits7, bit, "sg")


def _signed(v: PrimExpr, negative: PrimExpr) -> PrimExpr:
    # Bound once: ``v`` holds the scale's Let bindings, and a Let may appear only once in a TIR tree.
    return let(v, lambda u: tirx.Select(negative != _u32(0), -u, u), "v")


def _half_scale(w: te.Tensor, off: PrimExpr, j: PrimExpr) -> PrimExpr:
    """iq2_xs/iq2_s: the 4-bit scale of values j // 16 (two per byte, low nibble first)."""
    return (byte(w, off + (j >> 5)) >> _u32(((j >> 4) & 1) * 4)) & _u32(0xF)


def _iq2_db(d: PrimExpr, s: PrimExpr) -> PrimExpr:
    return d * (f32(0.5) + _f(s)) * f32(0.25)


def _iq2_xxs(w, base, j, e, s, grid):
    g = base + 2 + (j >> 5) * 8  # the group's 8 bytes: 4 grid indices, then the u32 of signs and scale
    lsub = (j >> 3) & 3

    def with_aux(aux):
        v = _iq2_db(s[0], aux >> _u32(28)) * _f(_grid_byte(grid, byte(w, g + lsub), j & 7, 2))
        return _signed(v, _ksign((aux >> _u32(lsub * 7)) & _u32(127), j & 7))

    return let(_u32_at(w, g + 4), with_aux, "aux")


def _iq2_xs(w, base, j, e, s, grid):
    def with_q(q):
        v = _iq2_db(s[0], _half_scale(w, base + 66, j)) * _f(_grid_byte(grid, q & _u32(511), j & 7, 2))
        return _signed(v, _ksign(q >> _u32(9), j & 7))

    return let(half_bits(w, base + 2 + (j >> 3) * 2), with_q, "q")


def _iq2_s(w, base, j, e, s, grid):
    gi = j >> 3
    high = (byte(w, base + 66 + (gi >> 2)) >> _u32((gi & 3) * 2)) & _u32(3)
    index = byte(w, base + 2 + gi) | (high << _u32(8))
    v = _iq2_db(s[0], _half_scale(w, base + 74, j)) * _f(_grid_byte(grid, index, j & 7, 2))
    return _signed(v, (byte(w, base + 34 + gi) >> _u32(j & 7)) & _u32(1))


def _iq3_xxs(w, base, j, e, s, grid):
    def with_aux(aux):
        db = s[0] * (f32(0.5) + _f(aux >> _u32(28))) * f32(0.5)
        v = db * _f(_grid_byte(grid, byte(w, base + 2 + (j >> 2)), j & 3, 1))
        return _signed(v, _ksign((aux >> _u32(((j >> 3) & 3) * 7)) & _u32(127), j & 7))

    return let(_u32_at(w, base + 66 + (j >> 5) * 4), with_aux, "aux")


def _iq3_s(w, base, j, e, s, grid):
    m = j >> 2
    index = byte(w, base + 2 + m) | (((byte(w, base + 66 + (m >> 3)) >> _u32(m & 7)) & _u32(1)) << _u32(8))
    sc = (byte(w, base + 106 + (j >> 6)) >> _u32(((j >> 5) & 1) * 4)) & _u32(0xF)
    v = s[0] * _f(_u32(1) + (sc << _u32(1))) * _f(_grid_byte(grid, index, j & 3, 1))
    return _signed(v, (byte(w, base + 74 + (j >> 3)) >> _u32(j & 7)) & _u32(1))


def _iq1_value(dl: PrimExpr, grid: te.Tensor, index: PrimExpr, k: PrimExpr, negative_delta: PrimExpr) -> PrimExpr:
    """dl * (grid + delta): the grid's int8 value (-1, 0, 1) plus 1/8 with the group's sign, both exact in f32."""
    delta = tirx.Select(negative_delta != _u32(0), f32(-0.125), f32(0.125))
    return dl * (_f(_i8(_grid_byte(grid, index, k, 2))) + delta)


def _iq1_s(w, base, j, e, s, grid):
    def with_qh(qh):
        index = byte(w, base + 2 + (j >> 3)) | (((qh >> _u32(((j >> 3) & 3) * 3)) & _u32(7)) << _u32(8))
        dl = s[0] * _f(((qh >> _u32(12)) & _u32(7)) * _u32(2) + _u32(1))
        return _iq1_value(dl, grid, index, j & 7, qh & _u32(0x8000))

    return let(half_bits(w, base + 34 + (j >> 5) * 2), with_qh, "qh")


def _iq1_m_d(w: te.Tensor, base: PrimExpr) -> PrimExpr:
    """iq1_m's f16 super-block scale: the top nibbles of its four u16 scale words, lowest word first."""
    sc = [half_bits(w, base + 48 + 2 * i) for i in range(4)]
    bits = (
        (sc[0] >> _u32(12))
        | ((sc[1] >> _u32(8)) & _u32(0xF0))
        | ((sc[2] >> _u32(4)) & _u32(0xF00))
        | (sc[3] & _u32(0xF000))
    )
    return f16_to_f32(bits)


def _iq1_m(w, base, j, e, s, grid):
    gi = j >> 3
    s16 = j >> 4
    sc = (half_bits(w, base + 48 + (s16 >> 2) * 2) >> _u32((s16 & 3) * 3)) & _u32(7)
    dl = s[0] * _f(sc * _u32(2) + _u32(1))

    def with_nibble(nib):
        return _iq1_value(dl, grid, byte(w, base + gi) | ((nib & _u32(7)) << _u32(8)), j & 7, nib & _u32(8))

    return let((byte(w, base + 32 + (gi >> 1)) >> _u32((gi & 1) * 4)) & _u32(0xF), with_nibble, "nib")


# kvalues_iq4nl + 128 as bytes, four per little-endian word.
_KVALUE_WORDS = tuple(
    int.from_bytes(bytes(v + 128 for v in KVALUES_IQ4NL[i : i + 4]), "little") for i in range(0, 16, 4)
)


def _kvalue(q: PrimExpr) -> PrimExpr:
    """kvalues_iq4nl[q] (q: u32 in 0..15) as an int32, from constant words: cheaper than a table load."""

    def pick(q):
        c = [_u32(v) for v in _KVALUE_WORDS]
        word = tirx.Select(q < _u32(8), tirx.Select(q < _u32(4), c[0], c[1]), tirx.Select(q < _u32(12), c[2], c[3]))
        return _i32((word >> ((q & _u32(3)) << _u32(3))) & _u32(0xFF)) - 128

    return let(q, pick, "kq")


def _iq4_nl(w, base, j, e, s):
    return s[0] * _f(_kvalue(_nibble(w, base + 2, j)))


def _iq4_xs(w, base, j, e, s):
    ib = j >> 5
    low = (byte(w, base + 4 + (ib >> 1)) >> _u32((ib & 1) * 4)) & _u32(0xF)
    high = (half_bits(w, base + 2) >> _u32(ib * 2)) & _u32(3)
    dl = s[0] * _f(_i32(low | (high << _u32(4))) - 32)
    return dl * _f(_kvalue(_nibble(w, base + 8 + ib * 16, j & 31)))


DECODERS: dict[str, Decoder] = {
    "iq1_s": Decoder(_iq1_s, (_d,)),
    "iq1_m": Decoder(_iq1_m, (_iq1_m_d,)),
    "iq2_xxs": Decoder(_iq2_xxs, (_d,)),
    "iq2_xs": Decoder(_iq2_xs, (_d,)),
    "iq2_s": Decoder(_iq2_s, (_d,)),
    "iq3_xxs": Decoder(_iq3_xxs, (_d,)),
    "iq3_s": Decoder(_iq3_s, (_d,)),
    "iq4_nl": Decoder(_iq4_nl, (_d,)),
    "iq4_xs": Decoder(_iq4_xs, (_d,)),
}

# Registered here rather than by dequant.py reading this module's DECODERS: that works whichever module is imported
# first (dequant.py imports this one at its end).
dequant.DECODERS.update(DECODERS)
