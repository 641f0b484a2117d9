"""CPU GEMM in f32 on AVX-512 or AVX2 FMAs: ``linear`` and ``conv2d`` with float weights (f32, f16, bf16) or the GGUF
types ``quant_vec`` decodes, and f32 products (no ``mma``: ``compile`` without ``--compute bf16``), register-blocked as
BLIS's micro-kernels are, for GEMMs of ``FROM_ROWS`` rows or more (fewer: the tiled schedule of ``cpu.py`` is as fast).
Quantized weights are decoded into the same f32 panel, bit-exact with gguf's dequantize, so their products are as
exact as the float weights'. Where AMX is there it takes the quant types first (``cpu_amx``); without it (AMD Zen 4)
this kernel does: the SD1.5 text encoder in f32 mode, 2 threads, ``SDCOMPILE_NO_AMX``, q8_0 0.106 -> 0.093 s and q4_k
0.125 -> 0.103 s against the tiled schedule (ONNX Runtime f32: 0.105 s in the same run).

Layout. A weight unit is NR = 16 NB consecutive outputs (NB = 4 where N is a multiple of 64, else 3, 2, 1), packed
per call as f32 (f16 / bf16 decoded once) into a panel [K][NR]: the NB vectors of step k are contiguous, so the
inner loop reads them in order. It is written from 16 x 16 blocks of W transposed in registers (whole-vector
stores). x is prepared as f32 rows of KR values (K rounded up to 16, zeros after K; a conv gathers its patches one
tap at a time: one bounds check, then the tap's channels), rows past M zeros up to a whole row panel.

Register block: MR rows of x by NB weight vectors, MR x NB f32 accumulators (6 x 4, 8 x 3, 14 x 2, 28 x 1: 24 to 28
of the 32 zmm registers), NB weight vectors and one broadcast. On AVX2 (``MR_BY_NB["avx2"]``: AMD Zen 3, Intel
Haswell to Alder Lake) the same code in 16-lane vectors, which LLVM splits into pairs of ymm: 6 x 1, 12 of the 16
ymm registers (the units then 16 rows; everything else as here). Per step of K, NB vector loads, MR broadcasts of one
x value each (``vbroadcastss``) and MR x NB ``vfmadd231ps``; two steps per loop iteration (+5% over one). After
the last step the sums leave the registers through the fused epilogue (``tir_build.store_output_vec``: bias,
activation, residual, the output's storage type) on vectors of 16 consecutive outputs. Summation is plain f32, k in
order (the results equal the tiled schedule's bit for bit on the shapes measured).

K passes. Where a unit's panel is larger than L2 can keep beside x, K runs in passes of KC values whose weight slice
(KC x NR f32, <= ``L1_BYTES``) stays in L1 while row panels pass over it; between passes the sums wait in a small
buffer (24 vector stores and loads per panel and pass, against 24 KC FMAs). Prepared x is then laid out pass by
pass (a pass's slices of consecutive rows are contiguous, which the prefetchers follow). By weights a unit that
fits ``UNIT_L2_BYTES`` (the text encoder's, up to 768 KB) goes in one pass: passes there cost 10%.

Two loop nests, as in ``cpu_amx_bf16``:
- **By weights** (M < ``BY_ROWS_FROM``: prompts, the UNet's 16x16 and 8x8 levels): x prepared first (parallel over
  rows, in blocks under ``cpu_amx.X_BLOCK_BYTES``), then parallel tasks of (weight unit, range of row panels): a
  task packs its unit (one pass) or, per pass, the unit's slice (a UNet 8x8 conv's unit is 2.9 MB: packing it
  whole into L3 cost as much as its products; per slice, 8x8 108 -> 124 GFLOP/s, 16x16 136 -> 153). With one
  pass and one task per unit, each row panel first prefetches a slice of the next unit's weights into L2
  (``prefetch_unit``), so that the next task's packing does not wait for memory: in the model a layer's weights
  come from memory, and packing had waited for them (AMD Zen 4, 2 threads, weights rotated through 256 MB so
  each call reads them from memory, min of 3 x 40: the text encoder's fc1 3.70 -> 3.47 ms, +7%; its other
  linears and the UNet at 256x256 level).
- **By rows** (M >= ``BY_ROWS_FROM``: image tokens, conv pixels; by rows at M 154 was 25% slower): the weights are
  packed once per call (blocks of ``PANEL_BYTES``, in parallel), then each parallel task takes a group of
  ``GROUP_PANELS`` row panels, prepares it (L2) and runs every unit over it, unit by unit, or pass by pass where
  the group exceeds ``GROUP_L2_BYTES`` (a 32x32 conv, K 5760: +5%). Nothing of size M x K is stored: by weights, a
  UNet 64x64 3x3 conv (M 8192, K 2880) wrote a 94 MB patch matrix and read it back once per unit from memory (115
  GFLOP/s on one thread; by rows 170). One group per task: 2 threads split 15 tasks of a few groups 8 / 7 (64x64
  conv on 2 threads 319 -> 363 GFLOP/s).

Weights stored as f32 panels (``wlayout="fma_f32"``, ``kernels/layouts.py``; ``passes/pack_weights.py`` stores f32
weights that way where every reader is this kernel, not swapped, N in whole units of 64): the register block reads
each unit where it lies, and nothing is packed per call. Alone, with the weights in cache, that gains little (on a
Xeon, f16 weights as panels of f16 converted per call: within +-4% at every SD1.5 shape; on Zen 4, the text
encoder's f32 linears 2-7%); in the model, where each layer's weights come from memory and the per-call packing
waited for them, the SD1.5 text encoder in f32 went 135.6 -> 129.8 ms (AMD Zen 4, 2 threads, alternating). f16 and
bf16 weights keep being packed per call: as f32 panels they would take twice the memory, and converted in the
inner loop they would put a conversion beside every 6 FMAs.

Measurements: GFLOP/s, ``benchmarks/fma_gemm.py`` on this 2-core Xeon (AVX-512, 2 FMA ports; f32 FMA peak 430
GFLOP/s on two threads, one thread runs faster than half of it), bias, f32 weights for the text encoder and f16 for
the UNet; 1 thread CPU time, 2 threads wall time, one run each on a quiet machine (runs vary by 5-10%):

    shape                            1 thread: fma  tiled  torch   2 threads: fma  tiled  torch
    te qkv/out 154x768->768                    184    189    151              318    355    303
    te fc1 154x768->3072 quick_gelu            177    160    145              322    356    302
    te fc2 154x3072->768                       185    162    174              326    345    331
    unet conv 64x64 320->320                   188    182    213              372    365    417
    unet conv 32x32 640->640                   179    177    214              351    354    427
    unet conv 16x16 1280->1280                 174    148    145              341    297    274
    unet conv 8x8 1280->1280                   146    133     79              270    266    209
    unet linear ff 8192x320->2560              176    137    147              348    274    271
    unet linear out 8192x1280->320             183    148    188              352    284    162

Alone, one kernel called over and over (its weights stay in L3), the text encoder's shapes on 2 threads are as
fast or faster with the tiled schedule (fc1: 320-375 against 315-325 in three runs); in the model, where each
layer's weights come from memory, ``sdcompile bench --profile`` measures 330-346 GFLOP/s for this kernel against
280-303 for the tiled one, and the SD1.5 text encoder in f32 (batch 2, ``sdcompile bench --threads 2``, min of 30)
runs in 85 ms against 99 ms. Not reached: PyTorch's oneDNN on the 64x64 and 32x32 convs (~213 GFLOP/s on one
thread, 420 on two); there the two schedules are within noise of each other.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules import quant_vec
from schedules.cpu_amx import over_row_blocks, over_taps, row_blocks, target_has, x_vector
from schedules.tir_build import (
    end_sums,
    float_weight,
    last_pass,
    load_f32,
    prefetch,
    prefetch_outputs,
    prim_func,
    replace_body,
    sixteen_lanes,
    splat,
    start_sums,
    store_output,
    store_output_vec,
    transpose16,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels import layouts
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from sdcompile.quant.types import get as get_type

FLOAT_TYPES = ("f32", "f16", "bf16")
# GGUF types decoded into the f32 panel with vector code (``quant_vec``): products in f32 on the values the file
# holds, as exact as the float weights'
TYPES = FLOAT_TYPES + quant_vec.TYPES
FMA = "llvm.fma.v16f32"
# rows of x per register block, by weight vectors per block (NB): MR x NB accumulators, NB weights, one broadcast, in
# the vector registers of the target's ISA (``target_isa``): 32 zmm with AVX-512; with AVX2 (AMD Zen 3, Intel
# Haswell to Alder Lake), where LLVM splits every 16-lane vector into two ymm, 16 registers hold 8 of them: 6 rows by
# one vector, 12 ymm accumulators, 2 for the weights, 1 broadcast (BLIS's Haswell block)
MR_BY_NB = {"avx512": {4: 6, 3: 8, 2: 14, 1: 28}, "avx2": {1: 6}}
FROM_ROWS = 32  # fewer rows of x: the tiled schedule is as fast (M 8, 24: equal; M 1: it is 15% faster)
BY_ROWS_FROM = 1024  # GEMMs with at least this many rows go by rows (M 154 by rows: 25% slower than by weights)
TASKS = 16  # by weights: parallel tasks to aim for, a few per thread, so uneven ones still balance
SWAP_ROWS = 128  # swapped (y^T = W x^T, see ``swapped``) for at most this many rows of x ...
SWAP_K = 2048  # ... and K at least this, where x's packed rows (M x K f32) take at most SWAP_X_BYTES: every group of
# W's rows reads them from L3 (8x8 convs, 2 threads: K 11520, 5.9 MB: +6%; K 17280 and 23040: -8%, -10%)
SWAP_X_BYTES = 6 << 20
UNIT_TASKS = 4  # by weights with K in passes: tasks (groups of units x ranges of row panels) to aim for
X_SLICE_BYTES = 96 << 10  # by weights: a task's x slice per pass at least this: units in groups (see UG)
MIN_PANELS = 16  # row panels per task at least (by weights): each task packs its unit, once per 16 MR rows or more
GROUP_PANELS = 16  # by rows: row panels per group (a task), over which each weight slice is used from L1
L1_BYTES = 36 << 10  # a pass's weight slice (KC x NR f32) at most this: it stays in the 48 KiB L1 while x passes
PANEL_BYTES = 8 << 20  # by rows: packed weight units per block at most this (a 1280 x 11520 conv: 59 MB in f32)
UNIT_L2_BYTES = 1 << 20  # by weights: a packed unit up to this goes in one pass of K (it stays in L2)
GROUP_L2_BYTES = 1 << 20  # by rows: a group of prepared x larger than this goes pass by pass over every unit
UNROLL = 2  # K steps per loop iteration: two gave +5% over one, four no more


def target_has_avx512() -> bool:
    """Whether the target being built for (or this host's, ``tvm_layer.cpu_target``) has AVX-512F."""
    return target_has("avx512f")


def target_isa() -> str | None:
    """The vector ISA this kernel builds for on the target (a key of ``MR_BY_NB``): "avx512", "avx2" (with FMA3),
    or None (neither: the tiled schedule of ``cpu.py``)."""
    if target_has_avx512():
        return "avx512"
    return "avx2" if target_has("avx2", "fma") else None


def for_isa(table: dict):
    """``table``'s entry for the target's ISA (``target_isa``): the register blocks a kernel plans with; AVX-512's
    where the target has neither (a plan asked for outside the dispatch, e.g. by a test)."""
    return table[target_isa() or "avx512"]


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``linear`` or ``conv2d`` with float weights and f32 products (no ``mma``), N in whole vectors (a conv: its
    channels too, so a tap's channels are whole vectors), FROM_ROWS rows or more, on a CPU with AVX-512 or AVX2 and
    FMA (``target_isa``); weights stored in a layout only as its f32 panels (``reads_panels``)."""
    if spec.attr("mma") or spec.op not in ("linear", "conv2d") or not sixteen_lanes(lanes):
        return False
    if spec.op == "conv2d" and int(spec.attr("C")) % 16:
        return False
    M, N, _ = gemm_mnk(spec)
    layout = spec.attr("wlayout")
    if layout and (layout != layouts.FMA_F32 or not reads_panels(spec)):
        return False
    return str(spec.attr("wtype")) in TYPES and N % 16 == 0 and M >= FROM_ROWS and target_isa() is not None


def reads_panels(spec: KernelSpec) -> bool:
    """Whether the kernel can read ``spec``'s weight stored as f32 panels (``layouts.FMA_F32``) in place: f32, whole
    units of 64 rows (4 vectors per register block), K in whole vectors, not swapped (swapped, W's rows are x's)."""
    M, N, K = gemm_mnk(spec)
    return (
        str(spec.attr("wtype")) == "f32"
        and layouts.fits(layouts.FMA_F32, N, K)
        and register_block(N)[2] == layouts.FMA_ROWS
        and not swapped(M, N, K)
    )


def register_block(N: int, isa: str | None = None) -> tuple[int, int, int, int]:
    """(NB, MR, NR, NU) for N outputs (a multiple of 16) on ``isa`` (default: the target's): NB weight vectors per
    unit (the most of ``MR_BY_NB[isa]`` that divides N's vectors: AVX-512 4 where N is a multiple of 64, else 3, 2,
    1; AVX2 1), MR rows of x per register block, NR = 16 NB outputs per unit, NU units."""
    mr_by_nb = MR_BY_NB[isa] if isa else for_isa(MR_BY_NB)
    NT = N // 16
    NB = max(nb for nb in mr_by_nb if NT % nb == 0)
    return NB, mr_by_nb[NB], 16 * NB, NT // NB


def l1_passes(KV: int, NR: int) -> tuple[int, int]:
    """(passes, KC): K's KV vectors in passes of KC values (a multiple of 16; the last pass may be shorter) whose
    weight slice, KC x NR f32, fits L1_BYTES, the passes as even as whole vectors allow."""
    passes = -(-KV // max(1, L1_BYTES // (64 * NR)))
    return passes, 16 * -(-KV // passes)


def _fma(a, b, c):
    return T.call_llvm_pure_intrin("float32x16", FMA, a, b, c)


class _FmaGemm:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.M, self.N, self.K = gemm_mnk(spec)
        self.wtype = str(spec.attr("wtype"))
        self.act = str(spec.attr("act", "none"))
        self.conv = dict(spec.attrs) if spec.op == "conv2d" else None
        # swapped (see ``swapped``): the loop nest computes y^T = W x^T, W's rows in the role of x's
        self.M0, self.N0 = self.M, self.N
        self.swap = swapped(self.M, self.N, self.K)
        if self.swap:
            self.M, self.N = self.N0, 16 * -(-self.M0 // 16)
        self.KV = -(-self.K // 16)  # 16-value vectors per row of x (the last one zero-padded)
        self.KR = 16 * self.KV  # prepared row length
        self.NB, self.MR, self.NR, self.NU = register_block(self.N)
        self.UW = self.KR * self.NR  # f32 words of a packed unit
        # swapped: by rows whatever N, each group's slice of W prepared pass by pass (see ``rows_first``)
        self.by_rows = self.M >= BY_ROWS_FROM or self.swap
        # K in passes (``l1_passes``); by weights, one pass where the whole unit fits UNIT_L2_BYTES
        one_pass = not self.by_rows and 4 * self.UW <= UNIT_L2_BYTES
        self.passes, self.KC = (1, self.KR) if one_pass else l1_passes(self.KV, self.NR)
        if self.by_rows:
            self.RG = GROUP_PANELS * self.MR  # rows of x per group
            self.GR = -(-self.M // self.RG)  # groups
            self.UPB = max(1, min(self.NU, PANEL_BYTES // (4 * self.UW)))  # units per panel block
            self.PB = -(-self.NU // self.UPB)
            # a group too large for L2: each pass's x slice serves every unit before the next pass (the sums of the
            # whole group wait between passes)
            # swapped: always, each pass's slice of W's rows prepared just before it serves (``prep_slice``)
            self.pass_outer = self.swap or (self.passes > 1 and 4 * self.RG * self.KR > GROUP_L2_BYTES)
        else:
            self.MB, self.NBLK = row_blocks(self.M, 4 * self.KR, align=self.MR)
            self.MP = self.MB // self.MR  # row panels per block
            self.MS = max(1, min(self.MP // MIN_PANELS, -(-TASKS // self.NU)))
            self.PPT = -(-self.MP // self.MS)  # row panels per task
            self.MS = -(-self.MP // self.PPT)
            # K in passes over many rows: a task takes a group of UG units, so that each pass's x slice, read from
            # L3 by the first unit, serves the others from L2 (UNet 16x16 convs +11%); over fewer rows, one unit
            # (its weight rows read front to back, which the prefetchers follow: the 4x4 conv, bound by reading its
            # weights, ran 25% slower in groups of 5 units)
            grouped = self.passes > 1 and 4 * self.PPT * self.MR * self.KC >= X_SLICE_BYTES
            self.UG = max(1, -(-self.NU // -(-UNIT_TASKS // self.MS))) if grouped else 1
            self.NG = -(-self.NU // self.UG)
        self.xrows = self.RG if self.by_rows else self.MB  # rows of prepared x held at a time
        # the weight stored as this kernel's panels (``layouts.FMA_F32``): each unit read where it lies, none packed
        self.in_place = spec.attr("wlayout") == layouts.FMA_F32
        self.x_slice = self.swap  # one pass's slice of prepared rows held at a time (``prep_slice``)
        # swapped with float weights: the next pass's W rows prefetched a line per loop iteration (``prefetch_line``)
        self.spread = self.swap and self.passes > 1 and self.wtype in FLOAT_TYPES
        # the block's strip of y (and of the residual) prefetched as the last pass starts (``prefetch_outputs``)
        self.prefetch_y = not self.swap

    def weight_views(self) -> None:
        self.wviews = weight_views(self.wtype, self.bufs["w"])

    def build(self) -> None:
        self.weight_views()
        if self.by_rows:
            self.rows_first()
            return
        self.xb = T.alloc_buffer((self.passes * self.MB * self.KC,), "float32")

        def block(m0) -> None:
            self.m0 = m0
            with T.parallel(0, self.MB) as ml:
                self.prep_row(T.bind(m0 + ml) if self.NBLK > 1 else ml, self.xb, ml)
            self.tiles()

        over_row_blocks(self.NBLK, self.MB, block)

    # -- activations --

    def xat(self, ml, k, kc=None):
        """Where value k of prepared row ml lies: rows of KR values with K in one pass; else per pass a block of
        rows of KC values (the pass's slices of consecutive row panels are contiguous, which the prefetchers
        follow: rows of KR values, 46 KB apart in a UNet 8x8 conv, left each slice a few scattered lines)."""
        kc = k // self.KC if kc is None else kc
        if self.x_slice:  # one pass's slice held at a time
            return ml * self.KC + (k - kc * self.KC)
        if self.passes == 1:
            return ml * self.KR + k
        return kc * (self.xrows * self.KC) + ml * self.KC + (k - kc * self.KC)

    def prep_row(self, m, xb, ml) -> None:
        """Row m of x (a conv: patch m) as KR f32 values, prepared row ml of xb (``xat``): zeros past K, and a
        whole row of zeros for m >= M (the last row panel's padding). Swapped, W's rows: ``prep_slice``."""
        x = self.bufs["x"]
        with T.If(m < self.M):
            with T.Then():
                if self.conv is not None:
                    self.prep_patch(m, xb, ml)
                else:
                    with T.serial(0, self.K // 16) as v:
                        vstore(xb, self.xat(ml, 16 * v), x_vector(None, x, m, 16 * v), 16)
                    if self.K % 16:
                        self._tail(x, m, xb, ml)
            with T.Else():
                with T.serial(0, self.KV) as v:
                    vstore(xb, self.xat(ml, 16 * v), splat(0.0, "float32", 16), 16)

    def prep_patch(self, m, xb, ml) -> None:
        """Patch m of the conv, tap by tap (``cpu_amx.over_taps``): the tap's C channels (whole vectors) from x."""
        x = self.bufs["x"]
        C = int(self.conv["C"])

        def inside(b, iy, ix, tap) -> None:
            with T.serial(0, C // 16) as c:
                v = load_f32(x, [b, iy, ix, T.Ramp(c * 16, 1, 16)], 16)
                vstore(xb, self.xat(ml, tap * C + 16 * c), v, 16)

        def outside(tap) -> None:
            with T.serial(0, C // 16) as c:
                vstore(xb, self.xat(ml, tap * C + 16 * c), splat(0.0, "float32", 16), 16)

        over_taps(self.conv, m, inside, outside)

    def _tail(self, x, m, xb, ml) -> None:
        """x[m, K - K % 16:] then zeros: the row's last, partial vector, value by value."""
        k0 = 16 * (self.KV - 1)
        for i in range(16):
            v = load_f32(x, [m, k0 + i]) if k0 + i < self.K else T.float32(0)
            T.buffer_store(xb, v, [self.xat(ml, k0) + i])

    # -- weights --

    def _wvec(self, row, k, lanes: int):
        return weight_vec(self.wtype, self.wviews, row, k, self.K, lanes)

    def pack(self, panel, base, u, v0=0, nv=None) -> None:
        """Unit u's NR weight rows, transposed, for K's vectors v0 .. v0 + nv (default: all) at panel[base:]:
        [k - 16 v0][NR] with panel[base + (k - 16 v0) NR + 16 j + r] = W[NR u + 16 j + r, k], zeros past K.
        16 x 16 blocks are transposed in registers, so the panel is written in whole vectors; the last, partial
        vector of K value by value."""
        nv = self.KV if nv is None else nv
        full = self.K // 16  # vectors of K without padding
        with T.serial(0, self.NB) as j:
            row0 = u * self.NR + 16 * j
            with T.serial(0, nv) as i:
                v = v0 + i
                at = base + 16 * i * self.NR + 16 * j
                if full == self.KV:
                    self._pack_block(panel, at, row0, v)
                else:
                    with T.If(v < full):
                        with T.Then():
                            self._pack_block(panel, at, row0, v)
                        with T.Else():
                            self._pack_tail(panel, at, row0)

    def prep_slice(self, n, xb, ml, kc) -> None:
        """Swapped: pass kc's KC values of W's row n (zeros for n >= N) as prepared row ml of xb; then the row's
        slice for the next pass is prefetched (``prefetch_slice``)."""
        nv = self.KC // 16 if self.KR % self.KC == 0 else T.min(self.KC // 16, self.KV - kc * (self.KC // 16))
        with T.serial(0, nv) as v:
            at = ml * self.KC + 16 * v  # xat's slice layout, written out: TVM's buffer compaction failed on it
            with T.If(n < self.M):
                with T.Then():
                    vstore(xb, at, self._wvec(n, kc * self.KC + 16 * v, 16), 16)
                with T.Else():
                    vstore(xb, at, splat(0.0, "float32", 16), 16)
        if self.passes > 1 and not self.spread:
            self.prefetch_slice(n, kc + 1)

    def prefetch_slice(self, n, kc) -> None:
        """Swapped: W row n's stored bytes for pass kc (if there is one) into L2 (``prefetcht1``), while this pass's
        products run. A pass reads each of a group's rows a slice at a time, rows K values apart: a few lines per
        row, which the hardware prefetchers do not follow (SD1.5's 4x4-pixel 1280-channel conv, K 11,520, f16
        weights, 2 threads, alternating: 132 -> 140-142 GFLOP/s; its 8x8 ones +1.5%; the f32 UNet at 256x256
        0.5-1%)."""
        row, lines = self._slice_lines()
        first = T.bind(self._slice_start(n, kc, row))
        with T.If(T.And(n < self.M, kc < self.passes)):
            with T.Then():
                with T.serial(0, lines) as i:
                    self._prefetch_w(first + 64 * i, row)

    def prefetch_line(self, m0, kc, i) -> None:
        """Swapped, float weights: line i of the next pass's (kc) slice of the register block's W rows m0 ..
        m0 + MR - 1 into L2, one per iteration of the block's loop, so that the reads spread over the products
        instead of leaving ``prep_slice`` in a burst of a group's rows (hundreds of rows, ten lines each), which
        waited on memory: prep_slice's conversions held 20% of the 4x4-pixel conv's samples (``perf``). AMD Zen 4,
        2 threads, f16 weights read from memory, alternating: SD1.5's 4x4-pixel 3x3 convs 6.05 -> 5.06 ms and
        12.16 -> 10.10 ms, the 8x8 stride-2 one 6.51 -> 5.56 ms (67% -> 80% of the FMA peak), its M 128 linears and
        1x1 convs over K 2,560 to 5,120 4-12% faster; in the f32 UNet at 256x256 (``bench --profile``, two runs
        each) those kernels 178-183 -> 158-160 ms of its 1.36-1.44 s. GGUF types keep ``prefetch_slice`` (q8_0: 2-3%
        slower spread, their rows' decoding weighing more beside the prefetches)."""
        row, lines = self._slice_lines()
        with T.If(T.And(i < self.MR * lines, kc < self.passes)):
            with T.Then():
                n = T.min(m0 + i // lines, self.M - 1)
                self._prefetch_w(self._slice_start(n, kc, row) + 64 * (i % lines), row)

    def _slice_lines(self) -> tuple[int, int]:
        """Bytes of a W row as stored (whole blocks: a multiple of 2 bytes for every type here), and the cache lines
        of its slice for one pass, one more for a slice that straddles lines."""
        row = get_type(self.wtype).row_bytes(self.K)
        return row, -(-self.KC * row // self.K // 64) + 1

    def _slice_start(self, n, kc, row: int):
        """The byte offset of W row n's slice for pass kc (blocks are whole at pass starts)."""
        return n * row + kc * self.KC * row // self.K

    def _prefetch_w(self, at, row: int) -> None:
        """The line of W's stored byte ``at`` (at most its last) into L2 (``prefetcht1``)."""
        prefetch(T.address_of(self.wviews[1][T.min(at, self.M * row - 2) // 2]), locality=2)

    def _xvec(self, m, k):
        """Swapped: x[m, k:k+16] (a conv: of patch m) as the rows of the panel; past M (up to a multiple of 16) any
        row of x: those columns of y^T are never stored, and each of the others sums its own column only."""
        # m bound first: TVM's region analysis of x's index (divisions of m by the image size) over the packing
        # loops divided by zero (TVM 0.27)
        return x_vector(self.conv, self.bufs["x"], T.bind(m % self.M0 if self.M0 % 16 else m), k)

    def _pack_block(self, panel, at, row0, v) -> None:
        source = self._xvec if self.swap else lambda row, k: self._wvec(row, k, 16)
        rows = [T.bind(source(row0 + r, 16 * v)) for r in range(16)]
        for p, vec in enumerate(transpose16(rows)):
            vstore(panel, at + p * self.NR, vec, 16)

    def _pack_tail(self, panel, at, row0) -> None:
        k0 = self.K // 16 * 16
        for p in range(16):
            with T.serial(0, 16) as r:
                v = self._wvec(row0 + r, k0 + p, 1) if k0 + p < self.K else T.float32(0)
                T.buffer_store(panel, v, [at + p * self.NR + r])

    # -- loop nests --

    def tiles(self) -> None:
        """By weights: a task takes a weight unit and a range of the block's row panels. With K in one pass it
        packs the whole unit (L2) and runs its panels over it; with several, a group of UG units: per pass and unit
        it packs the unit's slice (L1) and runs every panel of its range over it (their sums wait between passes),
        so a unit too large for L2 is never written out whole (a UNet 8x8 conv's unit, 2.9 MB, cost as much to
        pack as to multiply), and the pass's slice of x stays in L2 from one unit to the next."""
        if self.passes == 1:
            with T.parallel(0, self.NU * self.MS) as task:
                u = T.bind(task // self.MS)
                if self.in_place:
                    panel, at = self.wviews[0], u * self.UW
                else:
                    panel, at = T.alloc_buffer((self.UW,), "float32"), 0
                    self.pack(panel, 0, u)

                def run(mp, t) -> None:
                    if self.MS == 1:
                        self.prefetch_unit(u + 1, t)
                    self.micro(panel, at, self.xb, mp * self.MR, None, t, u, self.row0(mp), 0)

                self.panels(task % self.MS, run)
            return
        with T.parallel(0, self.NG * self.MS) as task:
            panel = self.wviews[0] if self.in_place else T.alloc_buffer((self.KC * self.NR,), "float32")
            part = T.alloc_buffer((self.UG * self.PPT * self.MR * self.NR,), "float32")
            with T.serial(0, self.passes) as kc:
                with T.serial(0, self.UG) as ul:
                    u = T.bind((task // self.MS) * self.UG + ul)
                    with T.If(u < self.NU):
                        with T.Then():
                            v0 = kc * (self.KC // 16)
                            if not self.in_place:  # the pass's slice of the unit, packed (L1)
                                self.pack(panel, 0, u, v0, T.min(self.KC // 16, self.KV - v0))
                            self.panels(
                                task % self.MS,
                                lambda mp, t: self.micro(
                                    panel,
                                    u * self.UW if self.in_place else -kc * self.KC * self.NR,
                                    self.xb,
                                    mp * self.MR,
                                    part,
                                    ul * self.PPT + t,
                                    u,
                                    self.row0(mp),
                                    kc,
                                ),
                            )

    def prefetch_unit(self, u, t) -> None:
        """Before row panel t of a task: the t-th of PPT slices of unit u's weight rows into L2 (``prefetcht1``),
        so the thread's next task (unit u, TVM gives each thread a contiguous range of tasks) packs it from L2.
        The rows of a unit are one contiguous stretch of the weight's storage words, whatever the type."""
        words = self.wviews[0].shape[0]
        lo = T.bind(u * words // self.NU)  # u <= NU: past the last unit the bound below keeps it inside
        span = words // self.NU
        chunk = -(-span // self.PPT)
        with T.serial(0, -(-chunk // 16)) as i:
            at = T.bind(T.min(lo + t * chunk + 16 * i, words - 1))
            prefetch(T.address_of(self.wviews[0][at]), locality=2)

    def panels(self, ms, run) -> None:
        """run(mp, t) for the t-th row panel mp of range ms (those inside the block)."""
        with T.serial(0, self.PPT) as t:
            mp = T.bind(ms * self.PPT + t)
            with T.If(mp < self.MP):
                with T.Then():
                    run(mp, t)

    def row0(self, mp):
        return self.m0 + mp * self.MR if self.NBLK > 1 else mp * self.MR

    def rows_first(self) -> None:
        """By rows (M >= BY_ROWS_FROM): per block of weight units, the block is packed once (in parallel); then each
        parallel task takes a group of RG rows, prepares it (pass by pass, in L2) and runs every unit of the block
        over it, K in passes of KC values. x is read once per panel block, outputs are written a group of rows at a
        time, and nothing of size M x K is stored."""
        panel = self.wviews[0] if self.in_place else T.alloc_buffer((self.UPB * self.UW,), "float32")
        with T.serial(0, self.PB) as pb:
            units = T.bind(T.min(self.UPB, self.NU - pb * self.UPB))
            if not self.in_place:
                with T.parallel(0, self.UPB) as ul:
                    with T.If(ul < units):
                        with T.Then():
                            self.pack(panel, ul * self.UW, pb * self.UPB + ul)
            # one task per group: with a few groups per task, 2 threads split 15 tasks 8 / 7 (-7% on a UNet conv)
            with T.parallel(0, self.GR) as g:
                xg = T.alloc_buffer(((1 if self.x_slice else self.passes) * self.RG * self.KC,), "float32")
                part = T.alloc_buffer(
                    (self.UPB * self.RG * self.NR if self.pass_outer else self.RG * self.NR,), "float32"
                )
                if not self.x_slice:
                    with T.serial(0, self.RG) as ml:
                        self.prep_row(g * self.RG + ml, xg, ml)

                def run(ul, kc, t, slot) -> None:
                    m0 = g * self.RG + t * self.MR
                    u = pb * self.UPB + ul
                    self.micro(panel, (u if self.in_place else ul) * self.UW, xg, t * self.MR, part, slot, u, m0, kc)

                if self.pass_outer:
                    with T.serial(0, self.passes) as kc:
                        if self.x_slice:  # swapped: the pass's slice of the group's W rows, converted (L1 / L2)
                            with T.serial(0, self.RG) as ml:
                                self.prep_slice(g * self.RG + ml, xg, ml, kc)
                        with T.serial(0, units) as ul:
                            with T.serial(0, GROUP_PANELS) as t:
                                run(ul, kc, t, ul * GROUP_PANELS + t)
                else:
                    with T.serial(0, units) as ul:
                        with T.serial(0, self.passes) as kc:
                            with T.serial(0, GROUP_PANELS) as t:
                                run(ul, kc, t, t)

    def micro(self, panel, pofs, xb, xr, part, t, u, m0, kc) -> None:
        """The register block: MR rows of x (from row xr of xb) times unit u's NR columns (packed at panel[pofs:])
        over K's pass kc, with MR x NB f32 accumulators in registers. The sums of earlier passes come from part
        (slot t); after the last pass they go through the fused epilogue to rows m0.. of y."""
        nb, mr = self.NB, self.MR
        acc = vector_regs(mr * nb)
        slot = t * mr * self.NR

        start_sums(acc, mr * nb, self.passes, kc, part, slot)
        if self.prefetch_y:
            last_pass(self.passes, kc, lambda: prefetch_outputs(self.bufs, m0, mr, u * self.NR, nb * 16, self.M))
        steps = self.KC if self.KR % self.KC == 0 else T.min(self.KC, self.KR - kc * self.KC)
        with T.serial(0, steps // UNROLL) as kk:
            if self.spread:
                self.prefetch_line(m0, kc + 1, kk)
            for e in range(UNROLL):
                k = T.bind(kc * self.KC + kk * UNROLL + e)
                wv = [T.bind(vload(panel, pofs + k * self.NR + 16 * j, 16)) for j in range(nb)]
                for r in range(mr):
                    xv = T.Broadcast(xb[self.xat(xr + r, k, kc)], 16)
                    for j in range(nb):
                        i = r * nb + j
                        vstore(acc, 16 * i, self.mac(vload(acc, 16 * i, 16), xv, wv[j]), 16)
        end_sums(acc, mr * nb, self.passes, kc, part, slot, lambda: self.epilogue(acc, u, m0))

    def mac(self, acc, x, w):
        """acc + x w (f32x16; a kernel on other products, ``cpu_winograd_dot``, has its own)."""
        return _fma(x, w, acc)

    def epilogue(self, acc, u, m0) -> None:
        """The block's sums through the fused epilogue to rows m0 .. m0 + MR - 1 (those below M) of y."""
        nb = self.NB
        if self.swap:
            self.epilogue_swapped(acc, u, m0)
            return
        for r in range(self.MR):
            with T.If(m0 + r < self.M):
                with T.Then():
                    for j in range(nb):
                        v = vload(acc, 16 * (r * nb + j), 16)
                        store_output_vec(self.bufs, self.act, m0 + r, u * self.NR + 16 * j, v)

    def epilogue_swapped(self, acc, u, n0) -> None:
        """Swapped: the block's sums are y^T's (row r: output column n0 + r; vector j: 16 output rows); each value
        through the scalar epilogue. The sums go to a staging buffer first, so that the loop over them indexes
        memory, not the accumulators (which a variable index would keep out of registers)."""
        nb, mr = self.NB, self.MR
        stage = vector_regs(mr * nb)  # indexed by variables below, so it stays in memory
        for i in range(mr * nb):
            vstore(stage, 16 * i, vload(acc, 16 * i, 16), 16)
        with T.serial(0, mr) as r:
            n = n0 + r
            with T.If(n < self.N0):
                with T.Then():
                    with T.serial(0, nb * 16) as c:
                        m = u * self.NR + c
                        with T.If(m < self.M0):
                            with T.Then():
                                store_output(self.bufs, self.act, m, n, stage[(r * nb + c // 16) * 16 + c % 16])


def weight_views(wtype: str, w) -> tuple:
    """The weight buffer's storage words as f32, as 16-bit halves and, for a quant type, as ``quant_vec``'s views:
    what ``weight_vec`` reads."""
    words = w.shape[0]
    return (
        T.decl_buffer((words,), "float32", data=w.data),
        T.decl_buffer((words * 2,), "int16", data=w.data),
        quant_vec.views(w) if wtype in quant_vec.TYPES else None,
    )


def weight_vec(wtype: str, views: tuple, row, k, K: int, lanes: int):
    """W[row, k:k+lanes] as f32 from the weight's storage (``weight_views``) with K values a row: the values the
    file holds (a quant type: 16 values, k a multiple of 16; K is then a multiple of its block, so a value-by-value
    tail never runs)."""
    wf, w16, wq = views
    if wq is not None:
        assert lanes == 16
        return quant_vec.values16(wtype, wq, row, k, K)
    return float_weight(wtype, wf, w16, row * K + k, lanes)


def swapped(M: int, N: int, K: int) -> bool:
    """Whether to compute y^T = W x^T: W's rows are converted pass by pass into the slices the broadcasts read
    (no transpose) and x's few rows are packed into the panel once per call (transposed). Packing the weights
    (decode, 16 x 16 register transposes) is paid once per 16 weights whatever M is. Swapped, on 2 threads: the
    UNet's 8x8 conv (M 128, K 11520) 242 -> 259 GFLOP/s, its 4x4 conv (M 32) 183 -> 205 (x's packed rows are read
    from L3 by each group of W's rows: ``SWAP_X_BYTES``). Where K is short the scalar epilogue (the sums leave
    transposed, one value at a time) costs more than it saves: the text encoder's linears (M 154, K 768 / 3072)
    ran 3-20% slower swapped, a 128 x 1280 -> 10240 linear 20%; a 128 x 5120 -> 1280 one is level."""
    return M <= SWAP_ROWS and K >= SWAP_K and K % 16 == 0 and 4 * 16 * -(-M // 16) * K <= SWAP_X_BYTES


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The f32 FMA GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _FmaGemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the FMA loop nest."""
    replace_body(sch, spec, build)


__all__ = ["TYPES", "applicable", "build", "linear", "reads_panels"]
