"""Element decoders for the k-quants (q2_k .. q6_k), tq1_0 and mxfp4, merged into ``dequant.DECODERS``.

Same contract as the decoders in ``dequant.py``: element ``j`` of the block at byte offset ``base``, from 32-bit
integer operations on the weight's uint32 words plus a u32 -> f32 reinterpret, so one expression serves LLVM, WGSL
and CUDA. The f16 super-block scales (``d``, ``dmin``) and mxfp4's e8m0 exponent are ``scales`` stages (decoding
them costs more than the rest of an element, and they change once per block); the 4- to 8-bit sub-block scales are
decoded inline, from bytes the element's neighbours read too.

Float operations follow ggml's ``dequantize_row_*`` (as ``gguf.quants`` does): ``(d * sc) * q - dmin * m``. Both
products are exact in f32 (an f16 ``d`` has 11 significant bits, ``sc`` at most 7, ``q`` at most 5: 23 <= 24), so
the one rounding is the subtraction's, and a target that contracts it into a fused multiply-add gives the same bits:
the decode is bit-exact with ggml on every target. What a GPU compiler may still do is reassociate the subtraction
with the consumer's next operation (Mesa's lavapipe turns ``(x - m) + pos`` into ``(x + pos) - m``), so tolerances
downstream must allow ``u (|d sc q| + |dmin m|)``, not just ``u |w|``.

Layouts (byte offsets in a block; ``sdcompile/quant/types.py`` has the field table):

- q2_k  (84 B):  scales[16] @0 (low nibble: scale, high: min), qs[64] @16 (2 bits), d @80, dmin @82
- q3_k  (110 B): hmask[32] @0, qs[64] @32 (2 bits), scales[12] @96 (16 x 6 bits, signed - 32), d @108
- q4_k  (144 B): d @0, dmin @2, scales[12] @4 (8 x 6-bit scale and min), qs[128] @16 (4 bits)
- q5_k  (176 B): d @0, dmin @2, scales[12] @4, qh[32] @16 (fifth bits), qs[128] @48
- q6_k  (210 B): ql[128] @0 (low 4 bits), qh[64] @128 (high 2 bits), scales[16] i8 @192, d @208
- tq1_0 (54 B):  qs[48] @0 (5 trits per byte), qh[4] @48 (4 trits per byte), d @52
- mxfp4 (17 B):  e @0 (e8m0), qs[16] @1 (e2m1: sign bit and 3 magnitude bits)
"""

from __future__ import annotations

from tvm import te, tirx

from sdcompile.kernels.dequant import Decoder, _f, _i8, _u32, f16_to_f32, let

PrimExpr = tirx.Expr


def byte(w: te.Tensor, i: PrimExpr) -> PrimExpr:
    """Byte ``i`` (non-negative int32 offset) of the word buffer as a u32 in [0, 255]. Unlike ``dequant.byte``
    this divides instead of shifting: TVM's simplifier reasons about floordiv/floormod (a block at a multiple of
    4 bytes gives word ``base / 4 + c``; the elements of one thread or vector lane share their words and scales,
    and common-subexpression elimination sees it), not about shifts. Division by 4 is still emitted as a shift."""
    return (w[i // 4] >> _u32(i % 4 * 8)) & _u32(0xFF)


def half_bits(w: te.Tensor, i: PrimExpr) -> PrimExpr:
    return (w[i // 4] >> _u32(i % 4 * 8)) & _u32(0xFFFF)


def _i32(v: PrimExpr) -> PrimExpr:
    return tirx.Cast("int32", v)


def _f16_field(offset: int):
    return lambda w, base: f16_to_f32(half_bits(w, base + offset))


def _crumb(w: te.Tensor, qs_off: PrimExpr, j: PrimExpr) -> PrimExpr:
    """2-bit quant of element j (of 256) in q2_k/q3_k order: 32 bytes per 128 elements, four 2-bit fields per byte,
    field (j // 32) % 4 of byte j % 32."""
    return (byte(w, qs_off + (j // 128) * 32 + j % 32) >> _u32((j // 32 % 4) * 2)) & _u32(3)


def _high_bit(w: te.Tensor, qh_off: PrimExpr, j: PrimExpr) -> PrimExpr:
    """Bit j // 32 of byte j % 32 (q3_k's hmask, q5_k's qh)."""
    return (byte(w, qh_off + j % 32) >> _u32(j // 32)) & _u32(1)


def _k4_nibble(w: te.Tensor, qs_off: PrimExpr, j: PrimExpr) -> PrimExpr:
    """4-bit quant of element j (of 256) in q4_k/q5_k order: 32 bytes per 64 elements, low nibbles first."""
    return (byte(w, qs_off + (j // 64) * 32 + j % 32) >> _u32((j // 32 % 2) * 4)) & _u32(0xF)


def _with_k4_scale_min(w: te.Tensor, sc_off: PrimExpr, j: PrimExpr, body) -> PrimExpr:
    """``body(scale, min)`` for sub-block j // 32: ggml's get_scale_min_k4, two 6-bit values from 12 packed bytes.

    Sub-blocks 0-3 keep both in the low 6 bits of bytes 0-3 (scale) and 4-7 (min); sub-blocks 4-7 take their low
    four bits from the low/high nibble of bytes 8-11 and their top two from the top bits of bytes 0-3 / 4-7."""
    sub = j // 32
    lo = sub % 4

    def pick(a, b, c):
        first = sub < 4
        sc = tirx.Select(first, a & _u32(63), (c & _u32(0xF)) | ((a >> _u32(6)) << _u32(4)))
        mn = tirx.Select(first, b & _u32(63), (c >> _u32(4)) | ((b >> _u32(6)) << _u32(4)))
        return body(sc, mn)

    # The bytes are bound first: a select with loads in its arms is lowered to an if/else, which keeps CUDA and
    # WGSL code from sharing the loads between the elements a thread decodes.
    return let(
        byte(w, sc_off + lo),
        lambda a: let(
            byte(w, sc_off + 4 + lo), lambda b: let(byte(w, sc_off + 8 + lo), lambda c: pick(a, b, c), "c"), "b"
        ),
        "a",
    )


def _q2_k(w, base, j, e, s):
    d, dmin = s
    return let(
        byte(w, base + j // 16),
        lambda sc: (d * _f(sc & _u32(0xF))) * _f(_crumb(w, base + 16, j)) - dmin * _f(sc >> _u32(4)),
        "sc",
    )


def _q3_k(w, base, j, e, s):
    (d,) = s
    sub = j // 16
    low = (byte(w, base + 96 + sub % 8) >> _u32(sub // 8 * 4)) & _u32(0xF)
    high = (byte(w, base + 104 + sub % 4) >> _u32(sub // 4 * 2)) & _u32(3)
    sc = _i32(low | (high << _u32(4))) - 32
    # A clear hmask bit subtracts 4 (ggml: "the offset is zero when the bitmask is 1").
    q = _i32(_crumb(w, base + 32, j)) - _i32((_high_bit(w, base, j) ^ _u32(1)) << _u32(2))
    return (d * _f(sc)) * _f(q)


def _q4_k(w, base, j, e, s):
    d, dmin = s
    q = _k4_nibble(w, base + 16, j)
    return _with_k4_scale_min(w, base + 4, j, lambda sc, mn: (d * _f(sc)) * _f(q) - dmin * _f(mn))


def _q5_k(w, base, j, e, s):
    d, dmin = s
    q = _k4_nibble(w, base + 48, j) | (_high_bit(w, base + 16, j) << _u32(4))
    return _with_k4_scale_min(w, base + 4, j, lambda sc, mn: (d * _f(sc)) * _f(q) - dmin * _f(mn))


def _q6_k(w, base, j, e, s):
    (d,) = s
    # 128 elements per half: low nibbles of ql[64 h .. 64 h + 63] then their high nibbles; two bits each from
    # qh[32 h + j % 32], field (j // 32) % 4.
    ql = (byte(w, base + (j // 128) * 64 + j % 64) >> _u32((j // 64 % 2) * 4)) & _u32(0xF)
    qh = _crumb(w, base + 128, j)
    q = _i32(ql | (qh << _u32(4))) - 32
    return (d * _f(_i8(byte(w, base + 192 + j // 16)))) * _f(q)


# 3^0 .. 3^3 as the bytes of one word; 3^4 = 81 is the one case left over.
_POW3_WORD = 1 | 3 << 8 | 9 << 16 | 27 << 24


def _tq1_0(w, base, j, e, s):
    """Trit n of a byte is the top of (byte * 3^n mod 256) * 3 / 256: ggml stores each byte as a fixed-point
    fraction (ceil(v * 256 / 243)) so that multiplying by 3 shifts the next base-3 digit into the integer part.

    Elements 0-159: byte j % 32, trit j // 32; 160-239: byte 32 + (j - 160) % 16, trit (j - 160) // 16;
    240-255: qh byte 48 + (j - 240) % 4, trit (j - 240) // 4."""
    (d,) = s
    first, second = j < 160, j < 240
    j2, j3 = j - 160, j - 240
    at = tirx.Select(first, j % 32, tirx.Select(second, 32 + j2 % 16, 48 + j3 % 4))
    n = tirx.Select(first, j // 32, tirx.Select(second, j2 // 16, j3 // 4))

    def trit(n):
        pow3 = tirx.Select(n == 4, _u32(81), (_u32(_POW3_WORD) >> _u32(n * 8)) & _u32(0xFF))
        frac = (byte(w, base + at) * pow3) & _u32(0xFF)
        return _i32((frac * _u32(3)) >> _u32(8)) - 1

    return d * _f(let(n, trit, "n"))


# e2m1 magnitudes doubled ({0, .5, 1, 1.5, 2, 3, 4, 6} x 2), one per nibble: a 16-entry table in one constant.
_E2M1X2_WORD = sum(v << (4 * i) for i, v in enumerate((0, 1, 2, 3, 4, 6, 8, 12)))


def _e8m0_half(w: te.Tensor, base: PrimExpr) -> PrimExpr:
    """ggml_e8m0_to_fp32_half: 2^(e - 128), built from its bits (subnormal for e < 2, as in ggml)."""
    return let(
        byte(w, base),
        lambda e: tirx.reinterpret(
            "float32",
            tirx.Select(e < _u32(2), _u32(0x00200000) << e, (e - _u32(1)) << _u32(23)),
        ),
        "e",
    )


def _mxfp4(w, base, j, e, s):
    (d,) = s

    def value(nib):
        mag = _i32((_u32(_E2M1X2_WORD) >> ((nib & _u32(7)) * _u32(4))) & _u32(0xF))
        # Integer negation: a negative zero quant decodes to +0, as ggml's table has it.
        return d * _f(tirx.Select((nib & _u32(8)) != _u32(0), -mag, mag))

    return let((byte(w, base + 1 + j % 16) >> _u32((j // 16) * 4)) & _u32(0xF), value, "nib")


DECODERS: dict[str, Decoder] = {
    "q2_k": Decoder(_q2_k, (_f16_field(80), _f16_field(82))),
    "q3_k": Decoder(_q3_k, (_f16_field(108),)),
    "q4_k": Decoder(_q4_k, (_f16_field(0), _f16_field(2))),
    "q5_k": Decoder(_q5_k, (_f16_field(0), _f16_field(2))),
    "q6_k": Decoder(_q6_k, (_f16_field(208),)),
    "tq1_0": Decoder(_tq1_0, (_f16_field(52),)),
    "mxfp4": Decoder(_mxfp4, (_e8m0_half,)),
}
