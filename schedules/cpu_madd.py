"""CPU GEMM on AVX2's ``vpmaddwd`` (integer products, CPUs with AVX2 but without AVX-512 VNNI or bf16 units: AMD Zen
2 and 3, Intel Haswell to Alder Lake), for ``linear`` and ``conv2d`` whose spec asks for integer products
(``compile --compute bf16``, ``passes/mma.py``):

- ``mma="int8"``, q8_0 or q4_0 weights: ``cpu_vnni``'s numerics, exactly (ggml's q8_0 x q8_0 dot product): each row
  of x quantized per block of 32 values to int8 (``d = max|x| / 127``, round to nearest even), the products of the
  int8 activations and the weights' int8 quants (q8_0: q; q4_0: q - 8) summed exactly in int32 per block, each
  block's sum entering the f32 output times d_x d_w. The only error beyond f32 summation is the activations'
  quantization (``cpu_vnni``: 0.53% relative RMS on a 2,880-long dot product);
- ``mma="int16"``, float weights (f32, f16, bf16), ``WIDE_FROM_ROWS`` rows or more: x and W both quantized per block
  of 32 values to -``QMAX_WIDE`` .. ``QMAX_WIDE`` (14 bits; W once per call, per row), summed exactly in int32 per
  block as above. Each operand moves by at most half a step, max|block| / 16,382, where bf16 rounding moves a value
  by up to 2^-9 of itself. SD1.5's guided UNet at 256x256 (random f16 weights, 108 GEMMs on int16 products): 3.7e-4
  relative RMS from its f32 products (q8_0 with int8 products: 1.9e-2).

Why ``vpmaddwd`` and not ggml's ``vpmaddubsw``: AVX2 has no byte dot product into int32. ``vpmaddwd`` multiplies
pairs of int16 and adds each pair into an int32 lane (16 multiply-adds per ymm instruction, exact: two products of
|q| <= 128 cannot overflow); ggml's ``vpmaddubsw`` takes 32 byte products per instruction but saturates at 16 bits
unless one operand's sign is moved to the other first (``vpsignb``), and needs a ``vpmaddwd`` by ones after it.
Measured here (AMD Zen 3, one thread, 8 independent chains, no memory operands): ``vpmaddwd`` + ``vpaddd`` 109 G
multiply-adds/s, the sign trick 80, an f32 FMA 51: the pairs run at 2.1 times the FMA's rate.

Layout and loop nest: ``cpu_vnni``'s (its ``_VnniGemm``), with steps of 2 values instead of 4: the weights decoded
once per call into a panel [unit][block][16 steps][16 rows] of two quants of a row each (q8_0 / q4_0: two bytes,
widened to int16 as a step loads them; float weights: two int16), a 16 x 16 transpose in registers per block; the
rows of x quantized per group into words of two int16 quants, and per
step NB weight vectors and MR broadcast words. Register block: MR rows x one vector of 16 outputs: 2 MR ymm of int32
sums, the f32 sums beside (read and written once per block of 32 values).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import target_has
from schedules.cpu_fma import FLOAT_TYPES, weight_vec, weight_views
from schedules.cpu_vnni import FROM_ROWS, TYPES, _VnniGemm, quantize_block, target_has_vnni
from schedules.tir_build import (
    f16_to_f32,
    prim_func,
    replace_body,
    shuffle,
    sixteen_lanes,
    splat,
    transpose16,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec, gemm_mnk

PMADDWD = "llvm.x86.avx2.pmadd.wd"
MR = 6  # rows of x per register block (one vector of 16 outputs: 12 ymm of int32 sums)
UNROLL = 2  # product steps per loop iteration
# a group's quantized rows (2 K bytes each) at most this: they stay in L2 beside a unit's panel (AMD Zen 3 has 512 KB
# per core; at ``cpu_vnni``'s 512 KB, 409 rows of K 1,280 in a group, SD1.5's 512 x 1,280 x 5,120 ran at 125
# GFLOP/s against the f32 FMA kernel's 170)
X_GROUP_BYTES = 256 << 10
# int16 products (``mma="int16"``, float weights): both operands quantized per block of 32 to -QMAX_WIDE ..
# QMAX_WIDE, the most whose block sums cannot overflow int32 (32 x 8,191^2 = 2,146,959,392 < 2^31)
QMAX_WIDE = 8191
# int16 products from this many rows of x: the weights are quantized once per call, which fewer rows do not repay
# (SD1.5's f16 GEMMs, 2 threads, interleaved with the f32 FMA kernel: 8,192 x 320 -> 2,560 and 2,048 x 640 -> 640
# 1.17x and 1.07x faster, 512 x 1,280 -> 5,120 1.04x, 128 x 1,280 -> 10,240 0.7-0.9x)
WIDE_FROM_ROWS = 512


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``linear`` or ``conv2d`` asking for int8 products with q8_0 or q4_0 weights stored row-major
    (``cpu_vnni.FROM_ROWS`` rows or more), or int16 products with float weights (``WIDE_FROM_ROWS`` rows or more); N
    in whole vectors (a conv: its channels too), K in whole blocks, on a target with AVX2 but without AVX-512 VNNI
    (``cpu_vnni`` takes those)."""
    if spec.attr("mma") not in ("int8", "int16") or spec.op not in ("linear", "conv2d") or spec.attr("wlayout"):
        return False
    if spec.op == "conv2d" and int(spec.attr("C")) % 16:
        return False
    M, N, K = gemm_mnk(spec)
    return (
        str(spec.attr("wtype")) in (TYPES if spec.attr("mma") == "int8" else FLOAT_TYPES)
        and M >= (FROM_ROWS if spec.attr("mma") == "int8" else WIDE_FROM_ROWS)
        and N % 16 == 0
        and K % 32 == 0
        and sixteen_lanes(lanes)
        and target_has("avx2")
        and not target_has_vnni()
    )


def _pmaddwd(acc, a, b):
    """acc + the sums of the 2 int16 products in each 32-bit lane of a and b (16 lanes of words each): two AVX2
    ``vpmaddwd`` on the halves."""
    a16, b16 = T.reinterpret("int16x32", a), T.reinterpret("int16x32", b)
    halves = [
        T.call_llvm_pure_intrin(
            "int32x8",
            PMADDWD,
            shuffle([a16], list(range(16 * h, 16 * h + 16))),
            shuffle([b16], list(range(16 * h, 16 * h + 16))),
        )
        for h in range(2)
    ]
    return acc + shuffle(halves, list(range(16)))


class _MaddGemm(_VnniGemm):
    STEP_VALUES = 2  # vpmaddwd's pairs of int16
    X_GROUP_BYTES = X_GROUP_BYTES
    # the panel keeps the quants as bytes, widened to int16 as each step loads them (vpmovsxbw): an int16 panel
    # doubled the bytes decoded, written and read per call, which bounds a GEMM of few rows (SD1.5's 4x4-pixel convs:
    # 32 rows against 29.5 MB of int16 weights)
    PANEL_LANE_BYTES = 2

    def __init__(self, spec: KernelSpec, bufs: dict):
        # int16 products of float weights: both operands quantized to 14 bits, the panel in int16 pairs
        self.wide = spec.attr("mma") == "int16"
        if self.wide:
            self.QMAX, self.PANEL_LANE_BYTES = QMAX_WIDE, 4
        super().__init__(spec, bufs)

    def register_block(self, NT: int) -> tuple[int, int]:
        return 1, MR

    def decode_unit(self, u) -> None:
        if self.wide:
            self.quantize_unit(u)
        else:
            self.decode_quants(u)

    def quantize_unit(self, u) -> None:
        """Unit u's rows of float W into the int16 panel: per row and block of 32 values, d_w = max|w| / QMAX_WIDE
        and q = round(w / d_w) (to nearest even, as x), stored as 16 steps x NB vectors of words (lane r: quants 2t
        and 2t + 1 of weight row 16 j + r), transposed in registers, and d_w per row."""
        for j in range(self.NB):
            with T.serial(0, self.KS) as s:
                pb = (u * self.KS + s) * self.PW
                mb = (u * self.KS + s) * self.NB * 16
                words = []
                for r in range(16):
                    row = (u * self.NB + j) * 16 + r
                    v = [
                        T.bind(weight_vec(self.wtype, self.wviews, row, 32 * s + 16 * h, self.K, 16)) for h in range(2)
                    ]
                    q, scale = quantize_block(v[0], v[1], QMAX_WIDE)  # as x is
                    q16 = [T.Cast("int16x16", h) for h in q]
                    words.append(T.bind(T.reinterpret("uint32x16", shuffle(q16, list(range(32))))))
                    T.buffer_store(self.pd, scale, [mb + j * 16 + r])  # NaN: the column's outputs NaN
                v = transpose16(words)
                for t in range(16):
                    vstore(self.pq, pb + (t * self.NB + j) * 16, v[t], 16)

    def decode_quants(self, u) -> None:
        """Unit u's rows of q8_0 / q4_0 W into the byte panel: for each block, 16 steps x NB vectors (lane r: the
        two byte quants 2t and 2t + 1 of weight row 16 j + r, widened to int16 as a step loads them), transposed in
        registers from the rows' 16 pairs each, and the block scale per row."""
        for j in range(self.NB):
            with T.serial(0, self.KS) as s:
                pb = (u * self.KS + s) * self.PW
                mb = (u * self.KS + s) * self.NB * 16
                bases = [T.bind(((u * self.NB + j) * 16 + r) * self.RB + s * self.BS) for r in range(16)]
                pairs = [T.bind(T.reinterpret("uint16x16", self._quants(b))) for b in bases]
                v = transpose16(pairs)
                for t in range(16):
                    vstore(self.pq16, 2 * pb + (t * self.NB + j) * 16, v[t], 16)
                for r in range(16):
                    T.buffer_store(self.pd, f16_to_f32(self.w16[bases[r] // 2], 1), [mb + j * 16 + r])

    def panel_views(self) -> None:
        """The panel as pairs of quants (decode) and as bytes (the steps' loads); float weights' storage views."""
        if self.wide:
            self.wviews = weight_views(self.wtype, self.bufs["w"])
        words = self.NU * self.KS * self.PW
        self.pq16 = T.decl_buffer((2 * words,), "uint16", data=self.pq.data)
        self.pq8 = T.decl_buffer((4 * words,), "int8", data=self.pq.data)

    def w_step(self, u, s, j, t):
        """Step t of block s of unit u's weight vector j: lane r, quants 2t and 2t + 1 of weight row 16 (u NB + j) + r,
        widened to int16 (the first in the low half of the word)."""
        if self.wide:  # int16 pairs as they are
            return super().w_step(u, s, j, t)
        at = 4 * ((u * self.KS + s) * self.PW) + 2 * (t * self.NB + j) * 16
        return T.reinterpret("uint32x16", T.Cast("int16x32", vload(self.pq8, at, 32)))

    def store_quants(self, xbase, s, q: list) -> None:
        """Block s's quants as int16, two to a word."""
        for h in range(2):
            vstore(self.xq, xbase + s * 16 + 8 * h, T.reinterpret("uint32x8", T.Cast("int16x16", q[h])), 8)

    def store_compensation(self, dbase, s, q: list) -> None:
        """None: the weights' quants go in as they are (``block_sums``)."""

    def block_sums(self, slot, s):
        """A block's int32 sums start at 0 (the weights' quants go in as they are)."""
        return splat(0, "int32", 16)

    def steps(self, step) -> None:
        """A block's 16 steps in a loop of UNROLL: fully unrolled, LLVM reassociates the integer sums into trees over
        the steps, loading every step's weights first, and spills them (the kernel ran at 134 GFLOP/s, slower than
        the f32 FMAs' 180)."""
        with T.serial(0, self.STEPS // UNROLL) as tt:
            for e in range(UNROLL):
                step(tt * UNROLL + e)

    def product(self, acc, w, x):
        return _pmaddwd(acc, w, x)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AVX2 integer GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _MaddGemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AVX2 integer loop nest."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "linear"]
