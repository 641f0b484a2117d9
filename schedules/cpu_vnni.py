"""CPU GEMM in int8 on AVX-512 VNNI (``vpdpbusd``): ``linear`` and ``conv2d`` with q8_0 or q4_0 weights whose spec
asks for int8 products (``mma="int8"``, set by ``compile --compute bf16`` on CPUs without AMX-BF16: ``passes/mma.py``).

Numerics, as ggml's q8_0 x q8_0 dot product (what llama.cpp and stable-diffusion.cpp run for these weights): each
row of x is quantized per block of 32 values to int8, ``d = max|x| / 127`` and ``q = round(x / d)`` (to nearest
even, as ggml's AVX code; d kept in f32, where ggml rounds it to f16), the products of the int8 activations and the
weights' int8 quants (q8_0: q; q4_0: q - 8) are summed exactly in int32 per block, and each block's sum enters the f32
output times d_x d_w. The only error beyond f32 summation is the activations' quantization: at most d_x / 2 per
value, max|x| / 254 of its block. Measured on a 2,880-long dot product of Gaussian x and w (a UNet conv's K): 0.53%
relative RMS error, against 0.24% for bf16 products (both operands rounded to bf16) — about twice the error that
``--compute bf16`` accepts elsewhere. A block of x holding a NaN or an infinity gets a NaN scale, so its row's
outputs are NaN.

Why: a ``vpdpbusd`` does 64 multiply-adds of bytes at the issue rate of a 16-lane f32 FMA (measured here: 2.5 per
ns both), so the products of a 32-value block take 8 instructions per 16 outputs where f32 takes 32; the block's
scaling adds 3 per 16 outputs (convert, the two scales' product, a multiply-add). On CPUs without AMX-BF16 that is the
fastest way to multiply these weights (Intel's ``vdpbf16ps`` runs at half the FMA rate, AMD's at the FMA rate with 32
per instruction).

``vpdpbusd`` multiplies unsigned bytes by signed ones: the weights go in as ``q + 128`` (0..255), x as it is, and
each block's int32 sums start from ``-128 sum(q_x)`` (per row of x and block, taken as x is quantized), which cancels
it. So the weights' operands need nothing but their bytes, which lets them be stored in the kernel's order
(``kernels/layouts.py``'s ``vnni_q8_0``, chosen by ``passes/pack_weights.py``) and read in place. Layout, per call:

- **weights** stored as ``vnni_q8_0``: read in place, a tile of 16 rows x 32 values per unit vector and block (8
  vectors of quants, 16 f16 scales); row-major (q4_0, or q8_0 with another reader): decoded first (parallel over
  units of NB x 16 weight rows) into a panel of the same vectors: per block of 32 values and step of 4, NB vectors
  whose lane r holds the 4 quants + 128 of weight row 16 j + r (a 16 x 8 word transpose in registers), beside each
  block's f32 scales. Read in place, SD1.5's 4x4-pixel convs (32 rows, 1,280 and 2,560 channels in) took 2.87 -> 2.04
  and 6.68 -> 3.59 ms, its 128-row linears 11-23% less (Zen 4, 2 threads, weights from memory);
- **activations**: rows of x are quantized in groups of RG rows (bytes in L2, the scales beside), each parallel task
  taking (group, range of units) items, so that short GEMMs (the UNet's 8x8 level, prompts) still split across
  threads; where there are so few groups that the units are split, every row is quantized once first (in
  parallel), not once per range of units; a conv gathers its patches one tap at a time (``cpu_amx.over_taps``) where
  C is a multiple of 32;
- **register block**: MR rows x NB weight vectors, MR x NB int32 sums for the block and MR x NB f32 sums for the
  whole of K (24 of the 32 zmm registers), per step NB weight loads and MR broadcasts of 4 x bytes.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import chunking, over_chunks, over_taps, target_has, x_vector
from schedules.tir_build import (
    butterfly,
    end_sums,
    f16_to_f32,
    last_pass,
    load_f32,
    prefetch_outputs,
    prim_func,
    reduce_tree,
    replace_body,
    shuffle,
    splat,
    start_sums,
    store_output_vec,
    vload,
    vstore,
)
from sdcompile.kernels import layouts
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from sdcompile.quant.types import get as get_type

TYPES = ("q8_0", "q4_0")
DPBUSD = "llvm.x86.avx512.vpdpbusd.512"
X_GROUP_BYTES = 512 << 10  # a group's quantized rows (K bytes each) stay in L2 beside a unit's panel
# fewer rows (a prompt's few tokens): the GEMV kernels, bound by reading the weights, which this kernel would decode
# into its panel first
FROM_ROWS = 16
PANEL_SLICE_BYTES = 256 << 10  # a unit's panel for one pass over K (Zen 4 has 1 MB of L2 per core, SPR 2 MB)
MIN_TASKS = 8  # (group, unit range) items at least, where there are units enough: both threads busy on short GEMMs


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``linear`` or ``conv2d`` asking for int8 products, with q8_0 or q4_0 weights, ``FROM_ROWS`` rows or more, N in
    whole vectors (a conv: its channels too), on a target with AVX-512 VNNI."""
    if spec.attr("mma") != "int8" or spec.op not in ("linear", "conv2d"):
        return False
    if spec.attr("wlayout") not in (None, "", layouts.VNNI_Q8_0):
        return False
    if spec.op == "conv2d" and int(spec.attr("C")) % 16:
        return False
    M, N, K = gemm_mnk(spec)
    return (
        str(spec.attr("wtype")) in TYPES
        and M >= FROM_ROWS
        and N % 16 == 0
        and K % 32 == 0
        and lanes == 16
        and target_has_vnni()
    )


def target_has_vnni() -> bool:
    return target_has("avx512vnni")


def _dpbusd(acc, a_u8, b_s8):
    """acc + the sums of 4 byte products per lane, unsigned a times signed b; the byte operands as <64 x i8> (LLVM 21
    and later: TVM 0.27's LLVM 22 rejects the older <16 x i32> form)."""
    return T.call_llvm_pure_intrin(
        "int32x16", DPBUSD, acc, T.reinterpret("int8x64", a_u8), T.reinterpret("int8x64", b_s8)
    )


def quantize_block(v0, v1, qmax: int):
    """A block of 32 f32 values (two 16-lane vectors) quantized to -qmax .. qmax: ([q of v0, q of v1] as int32x16,
    its scale d = max|v| / qmax), q = round(v / d) to nearest even (0 where d is 0); the scale is NaN where the block
    holds a NaN or an infinity (the max drops a NaN: a sum of v * 0 carries it), so what it scales is NaN."""
    amax = reduce_tree(T.max(T.fabs(v0), T.fabs(v1)), 16, T.max)
    bad = reduce_tree(v0 * splat(0.0, "float32", 16) + v1 * splat(0.0, "float32", 16), 16, lambda a, b: a + b)
    d = T.bind(amax / T.float32(qmax))
    inv = T.bind(T.Select(d > T.float32(0.0), T.float32(1.0) / d, T.float32(0.0)))
    q = [T.bind(T.Cast("int32x16", T.nearbyint(v * T.Broadcast(inv, 16)))) for v in (v0, v1)]
    return q, d + bad


class _VnniGemm:
    STEP_VALUES = 4  # values of K per 32-bit lane and product step: vpdpbusd's 4 bytes
    X_GROUP_BYTES = X_GROUP_BYTES
    PANEL_LANE_BYTES = 4  # a panel lane's bytes per step: the 4 quants (+ 128)
    QMAX = 127  # x quantized to -QMAX .. QMAX per block of 32

    def register_block(self, NT: int) -> tuple[int, int]:
        """(NB, MR) for NT vectors of outputs: MR rows x NB vectors of 16 outputs, 12 of each kind of sum."""
        nb = next(nb for nb in (4, 2, 1) if NT % nb == 0)
        return nb, 12 // nb

    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.M, self.N, self.K = gemm_mnk(spec)
        self.wtype = str(spec.attr("wtype"))
        qt = get_type(self.wtype)
        self.RB, self.BS = qt.row_bytes(self.K), qt.type_size
        self.act = str(spec.attr("act", "none"))
        self.conv = dict(spec.attrs) if spec.op == "conv2d" else None
        self.packed = spec.attr("wlayout") == layouts.VNNI_Q8_0  # read in place, else decoded into a panel per call
        self.STEPS = 32 // self.STEP_VALUES  # product steps per block of 32 values
        self.KS, self.KW = self.K // 32, self.K // self.STEP_VALUES  # blocks, words of quantized x per row
        NT = self.N // 16
        self.NB, self.MR = self.register_block(NT)
        self.NU = NT // self.NB
        # groups of rows (quantized together, X_GROUP_BYTES at most) of equal size in whole register blocks: every
        # group runs all its blocks, so a last group filled up to the most rows would be mostly padding (SD1.5's
        # 2,048 rows over K 320 had run as two groups of 1,638, 3,276 rows)
        rows = -(-self.M // self.MR) * self.MR
        most = min(rows, max(self.MR, self.X_GROUP_BYTES // (4 * self.KW) // self.MR * self.MR))
        groups = -(-rows // most)
        per = -(-self.M // groups)
        self.RG = -(-per // self.MR) * self.MR  # rows per group
        self.GR = -(-self.M // self.RG)
        # units split into UC ranges where there are too few groups to keep the threads busy (quantizing a group
        # once per range: K bytes per row against N K multiply-adds)
        self.UC = min(self.NU, -(-MIN_TASKS // self.GR))
        self.UPC = -(-self.NU // self.UC)
        self.UC = -(-self.NU // self.UPC)
        self.items = self.GR * self.UC
        self.shared = self.UC > 1
        self.TPC, self.CH = chunking(self.items)
        # panel words per unit and block: STEPS steps x NB vectors of 16 lanes of PANEL_LANE_BYTES
        self.PW = self.NB * 16 * self.STEPS * self.PANEL_LANE_BYTES // 4
        # K in passes of KC blocks whose slice of a unit's panel (quants, scales, sums) stays in L2 while every row
        # tile of the group passes over it; between passes each tile's f32 sums wait in a small buffer
        self.KC = max(1, min(self.KS, PANEL_SLICE_BYTES // ((self.PW + 2 * self.NB * 16) * 4)))
        self.passes = -(-self.KS // self.KC)

    def build(self) -> None:
        w = self.bufs["w"]
        words = w.shape[0]
        self.w16 = T.decl_buffer((words * 2,), "int16", data=w.data)
        self.w8 = T.decl_buffer((words * 4,), "int8", data=w.data)
        self.wu8 = T.decl_buffer((words * 4,), "uint8", data=w.data)
        if not self.packed:
            self.pq = T.alloc_buffer((self.NU * self.KS * self.PW,), "uint32")  # quants + 128 [unit][block][step][j]
            self.pd = T.alloc_buffer((self.NU * self.KS * self.NB * 16,), "float32")  # d_w [unit][block][j][16]
            self.panel_views()
        self.part = T.alloc_buffer((self.CH * self.RG * self.NB * 16,), "float32")
        slots = self.GR * self.RG if self.shared else self.CH * self.RG  # rows of quantized x held at once
        self.xq = T.alloc_buffer((slots * self.KW,), "uint32")  # q as signed bytes
        self.dx = T.alloc_buffer((slots * self.KS,), "float32")  # d_x per row and block
        self.cx = T.alloc_buffer((slots * self.KS,), "int32")  # -128 sum(q_x) per row and block
        if self.shared:  # few groups: every row quantized once, before the items split the units
            with T.parallel(0, self.GR * self.RG) as m:
                self.quantize(m, m)
        if not self.packed:
            with T.parallel(0, self.NU) as u:
                self.decode_unit(u)
        over_chunks(self.CH, self.TPC, self.items, None, self.item)

    # -- weights --

    def panel_views(self) -> None:
        """Other views of the panel a kernel reads it through (this one: none, words of 4 quants)."""

    def decode_unit(self, u) -> None:
        """Unit u's rows of W into the panel: for each block, the quants + 128 as 8 steps x NB vectors (lane r: the
        4 bytes of step t of weight row 16 j + r) and the block scale per row. The 16 rows x 8 words of a block are
        transposed in registers: rows r and r + 8 share a vector (halves), then three rounds of two-vector shuffles
        transpose both 8 x 8 halves at once (24 shuffles, where word scatters took 128 stores)."""
        bias = splat(layouts.VNNI_BIAS * 0x01010101, "uint32", 16)  # q + 128 for each byte: its top bit flipped
        for j in range(self.NB):  # 16 rows at a time, each read front to back (16 streams for the prefetchers)
            with T.serial(0, self.KS) as s:
                pb = (u * self.KS + s) * self.PW
                mb = (u * self.KS + s) * self.NB * 16
                bases = [T.bind(((u * self.NB + j) * 16 + r) * self.RB + s * self.BS) for r in range(16)]
                words = [T.bind(T.reinterpret("uint32x8", self._quants(b))) for b in bases]
                halves = [T.bind(shuffle([words[r], words[r + 8]], list(range(16)))) for r in range(8)]
                v = butterfly(halves, (4, 2, 1))
                for t in range(8):  # v[t], lane r: step t of row r
                    vstore(self.pq, pb + (t * self.NB + j) * 16, v[t] ^ bias, 16)
                for r in range(16):
                    T.buffer_store(self.pd, f16_to_f32(self.w16[bases[r] // 2], 1), [mb + j * 16 + r])

    def _quants(self, base):
        """The block's 32 quants as int8x32 (q4_0: q - 8, value j the low nibble of byte j, 16 + j its high one)."""
        if self.wtype == "q8_0":
            return vload(self.w8, base + 2, 32)
        nib = vload(self.wu8, base + 2, 16)
        lo = T.reinterpret("int8x16", nib & splat(15, "uint8", 16)) - splat(8, "int8", 16)
        hi = T.reinterpret("int8x16", nib >> splat(4, "uint8", 16)) - splat(8, "int8", 16)
        return shuffle([lo, hi], list(range(32)))

    # -- activations --

    def quantize(self, slot, m) -> None:
        """Row m of x (zeros past M) into row ``slot`` of the quantized rows: per block, q as bytes, d_x and
        -128 sum(q)."""
        xbase, dbase = slot * self.KW, slot * self.KS

        def block(s, v0, v1) -> None:
            q, scale = quantize_block(v0, v1, self.QMAX)
            self.store_quants(xbase, s, q)
            T.buffer_store(self.dx, scale, [dbase + s])
            self.store_compensation(dbase, s, q)

        with T.If(m < self.M):
            with T.Then():
                x = self.bufs["x"]
                if self.conv is not None and int(self.conv["C"]) % 32 == 0:
                    cs = int(self.conv["C"]) // 32

                    def inside(b, iy, ix, tap) -> None:
                        with T.serial(0, cs) as cc:
                            v0 = T.bind(load_f32(x, [b, iy, ix, T.Ramp(cc * 32, 1, 16)], 16))
                            v1 = T.bind(load_f32(x, [b, iy, ix, T.Ramp(cc * 32 + 16, 1, 16)], 16))
                            block(tap * cs + cc, v0, v1)

                    def outside(tap) -> None:
                        with T.serial(0, cs) as cc:
                            self.zero_block(xbase, dbase, tap * cs + cc)

                    over_taps(self.conv, m, inside, outside)
                else:
                    with T.serial(0, self.KS) as s:
                        v0 = T.bind(x_vector(self.conv, x, m, 32 * s))
                        v1 = T.bind(x_vector(self.conv, x, m, 32 * s + 16))
                        block(s, v0, v1)
            with T.Else():
                with T.serial(0, self.KS) as s:
                    self.zero_block(xbase, dbase, s)

    def store_quants(self, xbase, s, q: list) -> None:
        """Block s's quants (two int32x16 vectors, values -QMAX .. QMAX) as bytes."""
        for h in range(2):
            vstore(self.xq, xbase + s * 8 + 4 * h, T.reinterpret("uint32x4", T.Cast("int8x16", q[h])), 4)

    def store_compensation(self, dbase, s, q: list) -> None:
        """-128 sum(q) of block s, where its int32 sums start (``block_sums``)."""
        T.buffer_store(self.cx, reduce_tree(q[0] + q[1], 16, lambda a, b: a + b) * -layouts.VNNI_BIAS, [dbase + s])

    def zero_block(self, xbase, dbase, s) -> None:
        vstore(self.xq, xbase + s * self.STEPS, splat(0, "uint32", self.STEPS), self.STEPS)  # q = 0
        T.buffer_store(self.dx, T.float32(0.0), [dbase + s])
        T.buffer_store(self.cx, 0, [dbase + s])

    # -- products --

    def item(self, c, it) -> None:
        """Item it = (group of rows g, range of units): quantize the group into chunk c's rows (unless every row was
        quantized up front), then every unit of the range over it."""
        g = T.bind(it // self.UC)
        ur = T.bind(it % self.UC)
        slot0 = g * self.RG if self.shared else c * self.RG  # the group's first row of quantized x
        if not self.shared:
            with T.serial(0, self.RG) as ml:
                self.quantize(slot0 + ml, g * self.RG + ml)
        units = T.bind(T.min(self.UPC, self.NU - ur * self.UPC))
        with T.serial(0, units) as ul:
            u = ur * self.UPC + ul
            with T.serial(0, self.passes) as kc:
                with T.serial(0, self.RG // self.MR) as rt:
                    part = (c * self.RG + rt * self.MR) * self.NB * 16  # this tile's sums between passes
                    self.micro(slot0 + rt * self.MR, u, g * self.RG + rt * self.MR, kc, part)

    def micro(self, slot, u, m0, kc, part) -> None:
        """Quantized rows slot .. slot + MR - 1 (output rows m0 ..) times unit u over pass kc's blocks: int32 sums
        per block, scaled into f32 sums, which wait in ``part`` between passes; after the last, the fused
        epilogue."""
        mr, nb = self.MR, self.NB
        mem = T.bind(
            T.tvm_stack_alloca("shape", mr * nb * 16)
        )  # f32 sums, then int32 sums: LLVM keeps them in registers
        accf = T.decl_buffer((mr * nb * 16,), "float32", data=mem)
        acci = T.decl_buffer((mr * nb * 16,), "int32", data=mem, elem_offset=mr * nb * 16)

        start_sums(accf, mr * nb, self.passes, kc, self.part, part)
        # the block's output strip arrives while the last pass's products run (``tir_build.prefetch_outputs``)
        last_pass(self.passes, kc, lambda: prefetch_outputs(self.bufs, m0, mr, u * nb * 16, nb * 16, self.M))
        xrow = [(slot + r) * self.KW for r in range(mr)]
        steps = self.KC if self.KS % self.KC == 0 else T.min(self.KC, self.KS - kc * self.KC)
        with T.serial(kc * self.KC, kc * self.KC + steps) as s:
            for r in range(mr):
                start = T.bind(self.block_sums(slot + r, s))
                for j in range(nb):
                    vstore(acci, 16 * (r * nb + j), start, 16)

            def step(t, s=s) -> None:
                wv = [T.bind(self.w_step(u, s, j, t)) for j in range(nb)]
                for r in range(mr):
                    xv = T.Broadcast(self.xq[xrow[r] + s * self.STEPS + t], 16)
                    for j in range(nb):
                        i = r * nb + j
                        vstore(acci, 16 * i, self.product(vload(acci, 16 * i, 16), wv[j], xv), 16)

            self.steps(step)
            dw = [T.bind(self.w_scales(u, s, j)) for j in range(nb)]
            for r in range(mr):
                d = T.Broadcast(self.dx[(slot + r) * self.KS + s], 16)
                for j in range(nb):
                    i = r * nb + j
                    sums = T.Cast("float32x16", vload(acci, 16 * i, 16))
                    vstore(accf, 16 * i, vload(accf, 16 * i, 16) + sums * (dw[j] * d), 16)

        def epilogue() -> None:
            for r in range(mr):
                with T.If(m0 + r < self.M):
                    with T.Then():
                        for j in range(nb):
                            store_output_vec(
                                self.bufs, self.act, m0 + r, (u * nb + j) * 16, vload(accf, 16 * (r * nb + j), 16)
                            )

        end_sums(accf, mr * nb, self.passes, kc, self.part, part, epilogue)

    def steps(self, step) -> None:
        """A block's product steps, unrolled (``vpdpbusd`` is opaque to LLVM: it keeps each sum's chain)."""
        for t in range(self.STEPS):
            step(t)

    def block_sums(self, slot, s):
        """Where the int32 sums of block s of quantized row ``slot`` start: -128 sum(q_x), which the 128 added to
        every weight quant puts back."""
        return T.Broadcast(self.cx[slot * self.KS + s], 16)

    def product(self, acc, w, x):
        """acc + one step's products: 4 weight bytes (+ 128) times 4 bytes of x per lane."""
        return _dpbusd(acc, w, x)

    def w_step(self, u, s, j, t):
        """Step t of block s of unit u's weight vector j: lane r, the 4 quants + 128 of weight row 16 (u NB + j) + r
        (stored: where the layout puts the step's first quant of the vector's first row)."""
        if self.packed:
            at = layouts.vnni_q8_0_quant_byte((u * self.NB + j) * 16, s * 32 + 4 * t, self.K)
            return vload(self.bufs["w"], at // 4, 16)
        return vload(self.pq, (u * self.KS + s) * self.PW + (t * self.NB + j) * 16, 16)

    def w_scales(self, u, s, j):
        """The f32 scales of block s of unit u's weight vector j's 16 rows."""
        if self.packed:
            at = layouts.vnni_q8_0_scale_byte((u * self.NB + j) * 16, s, self.N, self.K)
            return f16_to_f32(vload(self.w16, at // 2, 16), 16)
        return vload(self.pd, (u * self.KS + s) * self.NB * 16 + 16 * j, 16)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The VNNI int8 GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _VnniGemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the VNNI loop nest."""
    replace_body(sch, spec, build)


__all__ = ["TYPES", "applicable", "build", "linear"]
