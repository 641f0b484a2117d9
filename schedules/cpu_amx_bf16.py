"""CPU GEMM on the AMX tile unit in bf16 (``TDPBF16PS``): ``linear`` and ``conv2d`` with float weights (f32, f16,
bf16) whose spec asks for bf16 products (``mma="bf16"``, set by ``compile --compute bf16``).

Both operands are rounded to bf16 (8 significant bits, to nearest even) and every product is summed in f32 inside
the unit, so the result carries the error of bf16 operands — as PyTorch's bf16 autocast does — and nothing else:
about 2^-9 of each product, averaging out over K. Unlike the int8 path (``cpu_amx.py``) there are no block scales,
so the f32 sums stay in the tile registers for the whole of K and leave the unit once per 16 x 16 outputs.

Two loop nests; both run 2 x 2 blocks of tiles (each K step: two A and two B tile loads, four products into four
f32 accumulator tiles), and both read the sums back through a landing buffer only after the next block's products
are issued (a tile store does not forward to vector loads). The epilogue (bias, activation, residual, the output's
storage type) runs on whole vectors of 16 consecutive outputs.

- **By rows** (M >= ``BY_ROWS_FROM``: image tokens, conv pixels). The weights are decoded once per call into a
  panel of B operands (in blocks of ``PANEL_BYTES``, in parallel), then each parallel chunk takes groups of up to
  256 rows of x (``A_GROUP_BYTES`` of A operands, so a group stays in L2), prepares a group (a conv gathers its
  patches one tap at a time: one bounds check, then the tap's channels) and runs every weight unit over it (a unit
  down the group's rows, or with a 16-bit y two units side by side: ``Y16_UNITS``). x is
  read once per panel block, outputs are written whole rows at a time, and nothing of size M x K is stored: the
  loop nest by weights, on SD's 64x64 latents, wrote and re-read a 47 MB operand matrix per 3x3 conv and wrote
  its outputs in 128-byte column strips, both at memory speed (``benchmarks/gemm_amx.py``: 2x on the VAE's convs).
  Where K is long (past 2,048: a group of whole rows under ``A_GROUP_BYTES`` would hold fewer than ``SLICE_ROWS``), K
  goes in slices (``sliced``): groups of 256 rows, per slice the group's A operands for it (at most ``X_SLICE_BYTES``,
  in L2) and every unit of the panel block over them, the jobs' sums waiting in a buffer between slices (a tile store
  and load per accumulator and slice, against 4 x 64 products). Before, such a group had 32 to 224 rows, and each
  unit's B tiles came from L3 for every 32 of them: on SD1.5's 32x32 3x3 convs (K 5,760 to 17,280) that stream bounded
  the products (B tiles held in L1 instead, as an experiment: 2.1x). Alone, 2 threads, bf16 tiles, alternating with
  the code before in one process: 1920 -> 640 1.38-1.74x, 1280 -> 1280 1.26-1.27x, 960 -> 640 1.16-1.27x, 640 -> 640
  1.12x, the VAE's 512-channel 64x64 and 128x128 convs 1.16-1.17x and 1.03-1.07x, 256 channels at 256x256 1.01-1.04x;
  the sums are the same bits (slices add in the same order). In the model, the guided UNet at 512x512 with f16
  weights: its convs 657 -> 580 ms (``sdcompile bench --profile``), the evaluation 1.51-1.57 -> 1.44-1.51 s (median of
  5, three alternating rounds).
- **By weights** (fewer rows: prompts, the UNet's 16x16 and 8x8 levels, where the weights outweigh x). x is
  prepared first (parallel over rows, in blocks under ``cpu_amx.X_BLOCK_BYTES``), then ``MAX_CHUNKS`` parallel
  chunks take ranges of weight units; a unit's 16 or 32 weight rows are decoded into a panel and every pair of x
  tiles passes over it. With the weights stored as tiles and x's A operands past ``X_SLICE_BYTES`` (the UNet's 3x3
  convs at 16x16 and 8x8: 3 to 12 MB), a chunk takes K in slices, every unit of its range over a slice before the
  next (``chunk_sliced``), so the slice of x stays in L2 from unit to unit; before, every unit read the whole of x
  from L3. Alone, 2 threads: 16x16 convs 1.12-1.39x, 8x8 ones 1.21-1.61x; in the model, the guided UNet with f16
  weights at 256x256 394-423 -> 355-374 ms and at 512x512 1.51-1.60 -> 1.41-1.48 s with both kinds of slices
  (median of 7, three alternating rounds, against the code before either). q8_0 tiles take slices too, each unit's
  tiles decoded per slice into the chunk's panel (16x16 and 8x8 convs 1.17-1.35x; the UNet at 256x256 387-405 ->
  359-381 ms), except with one pair of x tiles, whose chunks keep their sums in the tile registers (the 4x4
  level's 2560 -> 1280 conv took 11% longer in slices).

Both loop nests prefetch each job's output strip (its 32 rows x NB x 16 columns of y, and of the residual) while the
job's products run (``tir_build.prefetch_outputs``): those lines lie a row apart, which the hardware prefetchers do not
follow, and every store of the epilogue waited for its line from memory. Alone, 2 threads, alternating with the code
before: SD1.5's 8192 x 320 -> 2560 linear 1.45-1.47x, 320 -> 320 1.32-1.51x, 1280 -> 320 1.09-1.11x, its 64x64 and
the VAE's 512x512 convs 1.08-1.10x, the by-weights shapes level; in the model the UNet's linears 545 -> 437 ms and the
guided UNet at 512x512 1.53-1.57 -> 1.35-1.46 s (f16 weights).

Operands: x rounded to bf16 as A tiles (for each 16 rows and 32 values of K, 16 rows of 64 bytes), with one
``vcvtne2ps2bf16`` per 32 values where the target has AVX512_BF16; the weights as B tiles (row p of a step holds
values 2p, 2p + 1 of each of 16 weight rows), transposed in registers so the panel is written in whole rows.

Weights stored in this kernel's layouts (``passes/pack_weights.py``, ``kernels/layouts.py``): float weights as the
B tiles themselves (``amx_bf16``), loaded from the weights in place, with no panel and nothing decoded; q8_0 in tile
order (``amx_q8_0``), decoded into the panel without transposes. At the UNet's few-row GEMMs the per-call rounding
and transposing of row-major weights took as long as the products, and did not overlap the weights' reads from
memory: SD1.5 UNet 256x256 guided (act bf16, 2 threads) 473-502 -> 385-387 ms with f16 weights packed. One kernel
at a time with its weights cold (in memory, not cache), 2 threads, f16 row-major -> bf16 packed: 4x4 conv 1280 ->
1280 2.14 -> 1.50 ms, 8x8 4.05 -> 3.64, linear 128 x 1280 -> 10240 3.92 -> 2.77, 154 x 768 -> 3072 1.29 -> 0.97.
q8_0 in tile order measured the same as row-major that way (1.93 against 1.87 ms at the 4x4 conv) and 0-3% faster
over a whole UNet 256 evaluation (331.7-342.7 against 335.9-349.0 ms), where it is level with packed f16.

q8_0 tiles by weights with few pairs of x tiles (M <= 128) and long K are decoded in chunks of up to ``Q8_CHUNK``
steps, each chunk's products right after it (``unit_q8_chunks``). In the model (``sdcompile bench --profile``, UNet
256x256 guided, f32 activations, min of two profiles each): the 4x4 level's 2560 -> 1280 conv 11.7 -> 7.9 ms over
its 3 calls (packed f16: 8.7), the GEMMs with 64 to 255 rows 112.5 -> 104.3 ms (packed f16: 102.6); the whole
evaluation 435-436 -> 417-432 ms (min of 10, three rounds; packed f16 405-416 in the same rounds). Decoding is what
is left between q8_0 and packed f16 (about 0.3 vector operations a weight, once per call and unit): at 256x256 the
products of f16 weights already read from memory fast enough.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import (
    _amx,
    _i8,
    chunking,
    over_chunks,
    over_row_blocks,
    over_taps,
    row_blocks,
    target_has,
    tile_config,
    with_tile_state,
    x_vector,
)
from schedules.tir_build import (
    bcast,
    cvt_bf16x32,
    f16_to_f32,
    float_weight,
    load_f32,
    prefetch_outputs,
    prim_func,
    replace_body,
    shuffle,
    splat,
    store_output_pair,
    store_output_vec,
    transpose16,
    vload,
    vstore,
)
from sdcompile.kernels import layouts
from sdcompile.kernels.act import bf16_bits
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from sdcompile.quant.types import get as get_type

# weight types whose values bf16 holds after one rounding: the float types, and q8_0 and q4_0 (blocks of 32 values,
# d * q exact in f32); the other quant types keep their integer kernels (cpu_amx.py)
BLOCK_TYPES = ("q8_0", "q4_0")
TYPES = ("f32", "f16", "bf16") + BLOCK_TYPES
# inputs rounded to bf16 (nearest even) before any other use: stored in bf16 by the producer, they give the same bits
# (``passes/round_early.py``)
ROUNDS_TO_BF16 = ("x",)
# GEMMs with at least this many rows of x go by rows (``rows_first``): groups of rows stay in L2 while the weights pass
BY_ROWS_FROM = 1024
A_GROUP_BYTES = 1 << 20  # a group's A operands (bf16): at most this, and 32 to 256 rows
# by rows: the weight panel decoded once per call, in blocks of whole units up to this. Every block prepares each group
# of rows of x again (the im2col gather and the rounding to bf16: a quarter of a 32x32 3x3 conv's time with 4 MB
# blocks), while the block's tiles are read once per group from L3; 8 MB stays inside the L3 of any CPU with AMX (15 MB
# and more). UNet 512x512's 32x32 3x3 convs alone, 2 threads, weights in L3: 1920 -> 640 48.1 -> 39.3 ms with bf16
# tiles, 57.3 -> 43.5 with q8_0 ones; 1280 -> 1280 43.9 -> 37.9, 51.6 -> 44.5 (16 MB: 3-6% more, 32 MB, one block
# there: 14-20% more, but past a 15 MB L3 the tiles would come from memory for every group). In the model, whose
# weights come from memory, less: the guided UNet at 512x512 in bf16, q8_0 1.62-1.73 -> 1.56-1.64 s, f16 1-2%.
PANEL_BYTES = 8 << 20
# q8_0 tiles by weights: steps decoded per chunk at most (NB x 16 KB of panel), for one pair of x tiles, or up to
# Q8_CHUNK_PAIRS where a unit's decoded tiles pass Q8_WHOLE (smaller, decoded whole they stay in L2, and the pairs'
# sums would only add trips between chunks: the UNet's 128 x 1280 -> 10240 linear, 80 KB, 12.7 -> 15.8 ms chunked)
Q8_CHUNK = 16
Q8_CHUNK_PAIRS = 4
Q8_WHOLE = 256 << 10
# by rows with long K, where a group of whole rows under A_GROUP_BYTES would have fewer than SLICE_ROWS: groups of
# SLICE_ROWS rows, K in slices of steps whose A operands take at most X_SLICE_BYTES (L2), every unit of the panel block
# over a slice before the next (``rows_first``); the jobs' sums wait between slices, at most PART_BYTES of them per
# chunk (fewer units per panel block where needed)
SLICE_ROWS = 256
X_SLICE_BYTES = 1 << 20
PART_BYTES = 1 << 20
# by rows with a 16-bit y (two weight tiles a unit): consecutive jobs take this many units side by side for a pair
# of x tiles before moving down the group's rows, so each job's rows of y get 128 bytes, not one 64-byte line, per
# visit. One unit at a time, 2 threads, 8192 x 320 -> 2560 with a bf16 y took 11.5-12.9 ms against 8.1-9.5 with an f32
# one; two at a time 6.4-7.7 ms (1.6-1.8x; 1280 columns 1.17-1.26x, 2048 x 640 -> 5120 1.19-1.4x, 320 and 640
# columns and the convs level). An f32 y (128 bytes a row already) measured 0.8-0.9x at 2560 columns that way, so it
# keeps one unit.
Y16_UNITS = 2
A0, A1, B0, B1, C0, C1, C2, C3 = range(8)  # tile registers: C0, C1 = A0, A1 x B0; C2, C3 = A0, A1 x B1
# a step's products, (accumulator, A tile, B tile): the first 2 NB of them for NB weight tiles per unit
PRODUCTS = ((C0, A0, B0), (C1, A1, B0), (C2, A0, B1), (C3, A1, B1))


def applicable(spec: KernelSpec, lanes: int, host_bf16: bool) -> bool:
    """``linear`` or ``conv2d`` asking for bf16 products, with float weights, K in whole 32-value steps, N in whole
    tiles (a conv: channels in whole vectors) and a CPU with AMX-BF16."""
    if spec.attr("mma") != "bf16" or spec.op not in ("linear", "conv2d"):
        return False
    if spec.op == "conv2d" and int(spec.attr("C")) % 16:
        return False
    _, N, K = gemm_mnk(spec)
    layout = spec.attr("wlayout")
    if layout and (layout not in (layouts.AMX_BF16, layouts.AMX_Q8_0) or layouts.DTYPE[layout] != spec.attr("wtype")):
        return False  # its own layouts (``kernels/layouts.py``) are the only ones it reads
    return str(spec.attr("wtype")) in TYPES and N % 16 == 0 and K % 32 == 0 and lanes == 16 and host_bf16


def _bf16_pairs(v0, v1):
    """Two f32x16 vectors rounded to bf16 (nearest even; NaN stays NaN, overflow goes to infinity) and packed as 16
    u32 words, word j holding values 2j (low half) and 2j + 1 (high half) of the 32."""
    words = [T.bind(bf16_bits(v, 16)) for v in (v0, v1)]
    even = shuffle(words, range(0, 32, 2))
    odd = shuffle(words, range(1, 32, 2))
    return even | (odd << splat(16, "uint32", 16))


class _Bf16Gemm:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.M, self.N, self.K = gemm_mnk(spec)
        self.wtype = str(spec.attr("wtype"))
        # weights stored as the B operands themselves (``WLAYOUT``, ``passes/pack_weights.py``): tiles are loaded
        # from the weight buffer, nothing is decoded
        self.packed = spec.attr("wlayout") == layouts.AMX_BF16
        self.q8_tiles = spec.attr("wlayout") == layouts.AMX_Q8_0  # q8_0 in tile order: decoded without transposes
        if self.wtype in BLOCK_TYPES:
            qt = get_type(self.wtype)
            self.RB, self.BS = qt.row_bytes(self.K), qt.type_size
        self.act = str(spec.attr("act", "none"))
        self.conv = dict(spec.attrs) if spec.op == "conv2d" else None
        self.cvt = target_has("avx512bf16")
        self.NT = self.N // 16
        self.KS = self.K // 32
        # units of NB weight tiles: two where the count is even, so each step's four products share two A and two B
        # loads (2 x 2 blocking)
        self.NB = 2 if self.NT % 2 == 0 else 1
        self.NU = self.NT // self.NB
        self.by_rows = self.M >= BY_ROWS_FROM
        self.q8_chunks = False
        self.slices, self.KCS = 1, self.KS  # K in slices of KCS steps (by rows, long K); A tiles [x tile][step]
        if self.by_rows:
            # a group of RG rows of x as A operands stays in L2 while every weight tile passes over it
            self.RG = max(32, min(256, A_GROUP_BYTES // (2 * self.K) // 32 * 32))
            if self.RG < SLICE_ROWS:  # long K: more rows per group, K in slices (``rows_first``)
                self.RG = SLICE_ROWS
                self.slices = -(-self.KS // (X_SLICE_BYTES // (self.RG * 64)))
                self.KCS = -(-self.KS // self.slices)
            self.GR = -(-self.M // self.RG)  # groups of rows
            self.GPC, self.CH = chunking(self.GR)  # groups per chunk, chunks
            # weight units per panel block (PANEL_BYTES of bf16 operands)
            self.UPB = max(1, min(self.NU, PANEL_BYTES // (self.NB * 16 * self.K * 2)))
            if self.slices > 1:  # the block's jobs' sums (2 NB tiles of 1 KB each) wait between slices
                self.UPB = max(1, min(self.UPB, PART_BYTES // ((self.RG // 32) * self.NB * 2048)))
            self.PB = -(-self.NU // self.UPB)
            self.jobs = self.UPB * self.RG // 32  # tile jobs per chunk between slices
            # jobs down the group's rows Y16_UNITS units at a time where y is 16-bit (every panel block's unit
            # count a multiple of it), else one
            y16 = self.NB == 2 and spec.param("y").dtype != "float32"
            self.UB = Y16_UNITS if y16 and self.UPB % Y16_UNITS == 0 and self.NU % Y16_UNITS == 0 else 1
        else:
            # rows of x per block (cpu_amx.X_BLOCK_BYTES; bf16 operands, 2 bytes a value), a multiple of 32: x tiles
            # go two at a time, the odd one out of the last block pairing with a zero tile
            self.MB, self.NBLK = row_blocks(self.M, 2 * self.K, align=32)
            self.MT2 = self.MB // 16
            self.TPC, self.CH = chunking(self.NU)  # units per chunk, chunks
            # q8_0 tiles for a block of few pairs of x tiles (M <= 128: the UNet's 8x8 and 4x4 levels) and long K:
            # the unit's tiles decoded KC steps at a time, each chunk's products right after it (``unit_q8_chunks``)
            self.KC = max(d for d in range(1, min(Q8_CHUNK, self.KS) + 1) if self.KS % d == 0)
            pairs, unit_bytes = self.MT2 // 2, self.NB * self.KS * 1024  # a unit's decoded tiles
            self.q8_chunks = self.q8_tiles and (pairs == 1 or (pairs <= Q8_CHUNK_PAIRS and unit_bytes > Q8_WHOLE))
            # weights stored as tiles (bf16, or q8_0 decoded a unit's slice at a time), x's A operands past
            # X_SLICE_BYTES: each chunk takes K in slices, all its units over a slice before the next, so the slice of
            # x stays in L2 from one unit to the next. Not q8_0 with one pair of x tiles: its chunks keep the sums in
            # the tile registers (the 4x4 level's 2560 -> 1280 conv: 11% slower in slices)
            if (self.packed or (self.q8_tiles and pairs > 1)) and self.MB * 2 * self.K > X_SLICE_BYTES:
                self.slices = -(-self.KS // max(1, X_SLICE_BYTES // (self.MB * 64)))
                self.KCS = -(-self.KS // self.slices)
                self.q8_chunks = False
            self.jobs = self.TPC * pairs

    def build(self) -> None:
        w = self.bufs["w"]
        words = w.shape[0]
        self.wf = T.decl_buffer((words,), "float32", data=w.data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=w.data)
        self.w8 = T.decl_buffer((words * 4,), "int8", data=w.data)
        self.wu8 = T.decl_buffer((words * 4,), "uint8", data=w.data)
        self.wu32 = T.decl_buffer((words,), "uint32", data=w.data)
        self.ybuf = T.alloc_buffer((self.CH * self.NB * 1024,), "float32")
        self.cfg = T.alloc_buffer((64,), "uint8")
        if self.by_rows:
            self.xb = T.alloc_buffer((self.CH * self.RG // 16 * self.KCS * 256,), "uint32")
            if self.slices > 1:  # per chunk: [unit in the block][pair of x tiles][accumulator][256]
                self.part = T.alloc_buffer((self.CH * self.jobs * self.NB * 512,), "float32")
            self.panel = self.wu32 if self.packed else T.alloc_buffer((self.UPB * self.NB * self.KS * 256,), "uint32")
            with_tile_state(lambda: (self.config(), self.rows_first()))
            return
        self.xb = T.alloc_buffer((self.MT2 * self.KS * 256,), "uint32")
        if self.slices > 1:
            self.part = T.alloc_buffer((self.CH * self.jobs * self.NB * 512,), "float32")
        # the steps a chunk's panel holds: a chunk of them, a slice's (q8_0 decoded per slice), or all
        steps = self.KC if self.q8_chunks else self.KCS
        self.panel = self.wu32 if self.packed else T.alloc_buffer((self.CH * self.NB * steps * 256,), "uint32")
        if self.q8_chunks and self.MT2 > 2:  # the pairs' sums between chunks
            self.accs = T.alloc_buffer((self.CH * self.MT2 // 2 * self.NB * 512,), "float32")

        def block(m0) -> None:
            self.m0 = m0  # the block's first row of x
            self.prep()
            self.tiles()

        with_tile_state(lambda: (self.config(), over_row_blocks(self.NBLK, self.MB, block)))

    def config(self) -> None:
        tile_config(self.cfg, {t: (16, 64) for t in range(8)})  # every tile 16 rows of 64 bytes

    # -- activations --

    def prep_row(self, m, ml, xbase, s0=0, ns=None) -> None:
        """Row m of x as A operands, at row ml of the tiles from word xbase on (zeros past M): K's steps s0 ..
        s0 + ns - 1 (default: all), at step s - s0 of their tiles."""
        ns = self.KS if ns is None else ns
        mt = T.bind(ml // 16)
        mi = T.bind(ml % 16)

        steps = self.KCS if self.by_rows else self.KS  # A tiles per x tile in xb: by rows, a slice's

        def at(s):  # A tile (mt, s - s0), row mi: values 32 s .. 32 s + 31
            return xbase + ((mt * steps + s - s0) * 16 + mi) * 16

        with T.If(m < self.M):
            with T.Then():
                if self.conv is not None and int(self.conv["C"]) % 32 == 0:
                    self.prep_patch(m, at, s0, ns)
                else:
                    with T.serial(0, ns) as sl:
                        s = s0 + sl
                        k = 32 * s
                        x = self.bufs["x"]
                        pairs = self.pairs(x_vector(self.conv, x, m, k), x_vector(self.conv, x, m, k + 16))
                        vstore(self.xb, at(s), pairs, 16)
            with T.Else():
                with T.serial(0, ns) as sl:
                    vstore(self.xb, at(s0 + sl), splat(0, "uint32", 16), 16)

    def prep_patch(self, m, at, s0=0, ns=None) -> None:
        """Patch m of a conv whose channels come in whole 32-value steps, tap by tap (``cpu_amx.over_taps``): K's
        steps s0 .. s0 + ns - 1 (default: all), the taps they cover, of each its channels in the range."""
        x = self.bufs["x"]
        cs = int(self.conv["C"]) // 32
        whole = ns is None

        # loops run from 0, offset in the body: one starting at T.max(0, s0 - tap * cs) stored wrong values (TVM 0.27)
        def channels(tap, body) -> None:  # body(c) for the tap's channel steps in the range
            if whole:
                with T.serial(0, cs) as c:
                    body(c)
                return
            lo = T.bind(T.max(0, s0 - tap * cs))
            with T.serial(0, T.min(cs, s0 + ns - tap * cs) - lo) as i:
                body(lo + i)

        def inside(b, iy, ix, tap) -> None:
            def body(c) -> None:
                v0 = load_f32(x, [b, iy, ix, T.Ramp(c * 32, 1, 16)], 16)
                v1 = load_f32(x, [b, iy, ix, T.Ramp(c * 32 + 16, 1, 16)], 16)
                vstore(self.xb, at(tap * cs + c), self.pairs(v0, v1), 16)

            channels(tap, body)

        def outside(tap) -> None:
            channels(tap, lambda c: vstore(self.xb, at(tap * cs + c), splat(0, "uint32", 16), 16))

        over_taps(self.conv, m, inside, outside, None if whole else (s0 // cs, (s0 + ns - 1) // cs + 1))

    def pairs(self, v0, v1):
        """32 values (two f32x16) as bf16 in 16 words: one ``vcvtne2ps2bf16`` where the target has AVX512_BF16 (it
        also flushes denormals to zero, as the tile unit does with its inputs anyway), else integer rounding."""
        if self.cvt:
            return T.reinterpret("uint32x16", cvt_bf16x32(v1, v0))
        return _bf16_pairs(v0, v1)

    def prep(self) -> None:
        with T.parallel(0, self.MT2 * 16) as ml:
            m = T.bind(self.m0 + ml) if self.NBLK > 1 else ml  # the row of x; ml its place in the block
            self.prep_row(m, ml, 0)

    # -- weights and the tile unit --

    def _wvec(self, row, s, half):
        """W[row, 32 s + 16 half : + 16] as f32 from the weight's storage (a float type, or q8_0 / q4_0 blocks of 32
        values: d * q, exact in f32, so the one rounding to bf16 is the only error, as for f16)."""
        if self.wtype in BLOCK_TYPES:
            base = row * self.RB + s * self.BS  # the block's first byte: its f16 scale d, then the quants
            d = bcast(f16_to_f32(self.w16[base // 2], 1), 16)
            if self.wtype == "q8_0":
                return d * T.Cast("float32x16", vload(self.w8, base + 2 + 16 * half, 16))
            nib = vload(self.wu8, base + 2, 16)  # q4_0: value j low nibble of byte j, value 16 + j its high one
            q = nib & splat(15, "uint8", 16) if half == 0 else nib >> splat(4, "uint8", 16)
            return d * (T.Cast("float32x16", q) - splat(8.0, "float32", 16))
        return float_weight(self.wtype, self.wf, self.w16, row * self.K + 32 * s + 16 * half, 16)

    def decode_q8_tiles(self, u, pbase, s0=0, steps=None, stride=None) -> None:
        """The unit's tiles of steps s0 .. s0 + steps - 1 (default: all) from q8_0 stored as ``layouts.AMX_Q8_0``,
        at tile (j, s - s0) of the panel: per tile the 16 rows' scales once (two vectors of them, each row's twice),
        then per row p of the B operand 32 quants, already in its order: two conversions, two multiplications and
        one rounding to bf16 pairs, no transposes."""
        steps = self.KS if steps is None else steps
        stride = steps if stride is None else stride  # tiles per weight tile j in the panel
        with T.serial(0, self.NB) as j:
            with T.serial(0, steps) as sl:
                s = s0 + sl
                tb = T.bind(((u * self.NB + j) * self.KS + s) * layouts.Q8_TILE)  # the tile's first byte
                d = T.bind(f16_to_f32(vload(self.w16, tb // 2, 16), 16))
                dlo = T.bind(shuffle([d], _q8_dup(True)))
                dhi = T.bind(shuffle([d], _q8_dup(False)))
                at = pbase + (j * stride + sl) * 256
                for p in range(16):
                    lo = T.Cast("float32x16", vload(self.w8, tb + 32 + 32 * p, 16)) * dlo
                    hi = T.Cast("float32x16", vload(self.w8, tb + 48 + 32 * p, 16)) * dhi
                    vstore(self.panel, at + p * 16, self.pairs(lo, hi), 16)

    def tiles(self) -> None:
        if self.slices > 1:
            over_chunks(self.CH, 1, self.CH, self.cfg, lambda c, _: self.chunk_sliced(c))
            return
        over_chunks(self.CH, self.TPC, self.NU, self.cfg, self.unit)

    def chunk_sliced(self, c) -> None:
        """By weights with K in slices: the chunk's units (their tiles where they are stored) by every pair of x
        tiles of the block, a slice at a time (``sliced``)."""
        pairs = self.MT2 // 2
        units = self.TPC if self.NU % self.TPC == 0 else T.bind(T.min(self.TPC, self.NU - c * self.TPC))
        panel = c * self.NB * self.KCS * 256  # q8_0: the unit's slice, decoded

        def place(i):  # i = (unit of the chunk, pair of x tiles)
            u = c * self.TPC + i // pairs
            return (i % pairs, u, panel if self.q8_tiles else u * self.NB * self.KS * 256, 0, self.row0(i % pairs))

        def start(i, s0, ns) -> None:  # q8_0: before a unit's first pair, its tiles of the slice
            with T.If(i % pairs == 0):
                with T.Then():
                    self.decode_q8_tiles(c * self.TPC + i // pairs, panel, s0, ns, self.KCS)

        self.sliced(c, units * pairs, place, start=start if self.q8_tiles else None)

    def unit(self, c, u) -> None:
        """Loop nest by weights: the unit's weight tiles decoded once, then every pair of x tiles of the block."""
        if self.q8_chunks:
            self.unit_q8_chunks(c, u)
            return
        if self.packed:  # the unit's tiles where they are stored
            pbase = u * self.NB * self.KS * 256
        else:
            pbase = c * self.NB * self.KS * 256
            self.decode_panel(u, pbase)

        self.run_pairs(c, self.MT2 // 2, lambda i: (i, u, pbase, 0, self.row0(i)))

    def row0(self, mp):
        """The first row of x of pair mp of x tiles in the block."""
        return self.m0 + mp * 32 if self.NBLK > 1 else mp * 32

    def unit_q8_chunks(self, c, u) -> None:
        """The block's pairs of x tiles against a unit of q8_0 tiles, KC steps at a time: the chunk's tiles decoded
        into the chunk's panel (it stays in L1), then every pair's products over them. With one pair (M <= 32) the
        sums stay in the tile registers throughout; with more they wait between chunks in ``accs`` (four tile stores
        and loads per pair and chunk, against 4 KC products). Decoding the whole unit first (0.7 to 1.4 MB at the
        UNet's 8x8 and 4x4 levels) sent it through L2 beside x's A operands, and left the vector work of decoding
        no products to overlap."""
        nb, kc, pairs = self.NB, self.KC, self.MT2 // 2
        pbase = c * nb * kc * 256
        accs = PRODUCTS[: 2 * nb]
        yb = c * nb * 1024

        def sums(mp, t):  # where pair mp's accumulator t waits between chunks, and leaves after the last
            return (c * pairs + mp) * 2 * nb * 256 + t * 256 if pairs > 1 else yb + t * 256

        if pairs == 1:
            for acc, _, _ in accs:
                _amx("tilezero", _i8(acc))
        with T.serial(0, self.KS // kc) as ch:
            self.decode_q8_tiles(u, pbase, ch * kc, kc)
            with T.serial(0, pairs) as mp:
                if pairs > 1:
                    with T.If(ch == 0):
                        with T.Then():
                            for acc, _, _ in accs:
                                _amx("tilezero", _i8(acc))
                        with T.Else():
                            for t, (acc, _, _) in enumerate(accs):
                                _amx("tileloadd64", _i8(acc), T.address_of(self.accs[sums(mp, t)]), T.int64(64))
                with T.serial(0, kc) as sl:
                    for j, b in enumerate((B0, B1)[:nb]):
                        at = pbase + (j * kc + sl) * 256
                        _amx("tileloadd64", _i8(b), T.address_of(self.panel[at]), T.int64(64))
                    for a, mt in ((A0, 2 * mp), (A1, 2 * mp + 1)):
                        at = (mt * self.KS + ch * kc + sl) * 256
                        _amx("tileloadd64", _i8(a), T.address_of(self.xb[at]), T.int64(64))
                    for acc, a, b in accs:
                        _amx("tdpbf16ps", _i8(acc), _i8(a), _i8(b))
                if pairs > 1:
                    for t, (acc, _, _) in enumerate(accs):
                        _amx("tilestored64", _i8(acc), T.address_of(self.accs[sums(mp, t)]), T.int64(64))
        if pairs == 1:
            for t, (acc, _, _) in enumerate(accs):
                _amx("tilestored64", _i8(acc), T.address_of(self.ybuf[sums(0, t)]), T.int64(64))
            self.epilogue(self.ybuf, sums(0, 0), u, self.row0(0))
        else:
            with T.serial(0, pairs) as mp:
                self.epilogue(self.accs, sums(mp, 0), u, self.row0(mp))

    def epilogue(self, buf, ysums, u, m0) -> None:
        """The sums of unit u for rows m0 .. m0 + 31 (tiles [weight tile j][x tile] of 16 x 16 f32 from word
        ysums of buf) through the fused epilogue into y."""
        if self.NB == 2 and self.bufs["y"].dtype != "float32":  # a 16-bit y: both tiles' 32 columns per store
            with T.serial(0, 32) as r:
                m = m0 + r
                with T.If(m < self.M):
                    with T.Then():
                        v0, v1 = (vload(buf, ysums + j * 512 + r * 16, 16) for j in (0, 1))
                        store_output_pair(self.bufs, self.act, m, u * 32, v0, v1)
            return
        with T.serial(0, self.NB) as j:
            with T.serial(0, 32) as r:  # row r of the two x tiles: output row m, columns of weight tile j
                m = m0 + r
                with T.If(m < self.M):
                    with T.Then():
                        v = vload(buf, ysums + j * 512 + r * 16, 16)
                        store_output_vec(self.bufs, self.act, m, (u * self.NB + j) * 16, v)

    def rows_first(self) -> None:
        """Loop nest by rows (M >= BY_ROWS_FROM): per block of weight units, the block's panel is decoded once (in
        parallel); then each chunk takes its groups of RG rows, prepares a group's A operands (they stay in L2) and
        runs every weight unit of the block over them. x is read from memory once per panel block, the outputs
        are written whole rows at a time, and nothing of size M x K is ever stored."""
        with T.serial(0, self.PB) as pb:
            units = T.bind(T.min(self.UPB, self.NU - pb * self.UPB))
            if not self.packed:
                with T.parallel(0, self.UPB) as ul:
                    with T.If(ul < units):
                        with T.Then():
                            self.decode_panel(pb * self.UPB + ul, ul * self.NB * self.KS * 256)
            mps = self.RG // 32
            with T.parallel(0, self.CH) as c:
                _amx("ldtilecfg", T.address_of(self.cfg[0]))
                with T.serial(0, self.GPC) as gi:
                    g = T.bind(c * self.GPC + gi)
                    with T.If(g < self.GR):
                        with T.Then():
                            xbase = c * (self.RG // 16) * self.KCS * 256

                            def place(i):  # i = (unit in the block, pair of x tiles in the group)
                                ub = self.UB  # units side by side per pair of x tiles (``Y16_UNITS``)
                                ul, mp = (i // (mps * ub)) * ub + i % ub, (i // ub) % mps
                                upanel = ((pb * self.UPB if self.packed else 0) + ul) * self.NB * self.KS * 256
                                return (mp, pb * self.UPB + ul, upanel, xbase, g * self.RG + mp * 32)

                            if self.slices == 1:
                                with T.serial(0, self.RG) as ml:
                                    self.prep_row(g * self.RG + ml, ml, xbase)
                                self.run_pairs(c, units * mps, place)
                            else:

                                def prep(s0, ns, g=g, xbase=xbase) -> None:  # the group's A operands for a slice
                                    with T.serial(0, self.RG) as ml:
                                        self.prep_row(g * self.RG + ml, ml, xbase, s0, ns)

                                self.sliced(c, units * mps, place, prep)
                _amx("tilerelease")

    def sliced(self, c, n, place, prep=None, start=None) -> None:
        """n tile jobs of chunk c with K in slices: per slice, ``prep(s0, ns)`` (by rows: the group's A operands for
        it, in L2), then every job over it; the sums wait in ``part`` between slices, and after the last go through
        the epilogue (``run_pairs``). ``start(i, s0, ns)`` runs before job i of each slice (q8_0 by weights: a
        unit's first job decodes its tiles of the slice)."""
        nb, kcs = self.NB, self.KCS
        accs = [acc for acc, _, _ in PRODUCTS[: 2 * nb]]
        pbase = c * self.jobs * nb * 512

        def part(i, t):  # job i's accumulator t between slices
            return pbase + (i * 2 * nb + t) * 256

        def resume(i) -> None:  # the sums of the slices before (the first slice: none)
            for t, acc in enumerate(accs):
                _amx("tileloadd64", _i8(acc), T.address_of(self.part[part(i, t)]), T.int64(64))

        with T.serial(0, self.slices) as ks:
            s0 = T.bind(ks * kcs)
            ns = kcs if self.KS % kcs == 0 else T.bind(T.min(kcs, self.KS - s0))
            if prep is not None:
                prep(s0, ns)
            with T.If(ks < self.slices - 1):
                with T.Then():
                    with T.serial(0, n) as i:
                        if start is not None:
                            start(i, s0, ns)
                        with T.If(ks == 0):
                            with T.Then():
                                for acc in accs:
                                    _amx("tilezero", _i8(acc))
                            with T.Else():
                                resume(i)
                        self.products(place(i), s0, ns)
                        for t, acc in enumerate(accs):
                            _amx("tilestored64", _i8(acc), T.address_of(self.part[part(i, t)]), T.int64(64))
                with T.Else():
                    self.run_pairs(c, n, place, s0, ns, resume, start)

    def products(self, job, s0=0, ns=None) -> None:
        """Job ``job`` (``run_pairs``' place(i)): K's steps s0 .. s0 + ns - 1 (default: all) into its 2 x NB
        accumulator tiles (the products of two x tiles by NB weight tiles per step, on two A and NB B tiles)."""
        nb = self.NB
        mp, _, pbase, xbase, _ = job
        accs = PRODUCTS[: 2 * nb]
        # q8_0 by weights in slices: the panel holds the unit's tiles of this slice only (``chunk_sliced``)
        sliced_panel = self.q8_tiles and not self.by_rows and self.slices > 1
        with T.serial(0, self.KS if ns is None else ns) as sl:
            s = s0 + sl
            for j, b in enumerate((B0, B1)[:nb]):
                at = pbase + (j * self.KCS + sl if sliced_panel else j * self.KS + s) * 256
                _amx("tileloadd64", _i8(b), T.address_of(self.panel[at]), T.int64(64))
            for a, mt in ((A0, 2 * mp), (A1, 2 * mp + 1)):
                # by rows: A tiles of the slice's steps only; by weights: of every step
                at = xbase + (mt * self.KCS + sl if self.by_rows else mt * self.KS + s) * 256
                _amx("tileloadd64", _i8(a), T.address_of(self.xb[at]), T.int64(64))
            for acc, a, b in accs:
                _amx("tdpbf16ps", _i8(acc), _i8(a), _i8(b))

    def run_pairs(self, c, n, place, s0=0, ns=None, resume=None, start=None) -> None:
        """n tile jobs of chunk c: job i = place(i) = (pair of x tiles mp from word xbase, weight unit u whose
        panel starts at word pbase, first output row m0) gets 2 x NB accumulators over K (or its steps s0 ..
        s0 + ns - 1, after ``resume(i)`` loaded the sums of the steps before), then its epilogue. A tile store does
        not forward to vector loads (they wait until it has gone to memory), so a job's sums are read back only after
        the next job's products have been issued (two landing slots)."""
        nb = self.NB
        yb = c * nb * 1024
        accs = PRODUCTS[: 2 * nb]

        def issue(i, slot) -> None:
            if start is not None:
                start(i, s0, ns)
            _, u, _, _, m0 = place(i)  # the job's output strip arrives while its products run
            prefetch_outputs(self.bufs, m0, 32, u * nb * 16, nb * 16, self.M)
            if resume is None:
                for acc, _, _ in accs:
                    _amx("tilezero", _i8(acc))
            else:
                resume(i)
            self.products(place(i), s0, ns)
            for t, (acc, _, _) in enumerate(accs):  # [weight tile j][x tile]: C0, C1 then C2, C3
                at = yb + slot * nb * 512 + t * 256
                _amx("tilestored64", _i8(acc), T.address_of(self.ybuf[at]), T.int64(64))

        def finish(i, slot) -> None:
            _, u, _, _, m0 = place(i)
            self.epilogue(self.ybuf, yb + slot * nb * 512, u, m0)

        _pipeline_dynamic(n, issue, finish)

    def decode_panel(self, u, pbase) -> None:
        """The unit's weight tiles as B operands: tile j, step s, row p, column r holds W[16 (nb u + j) + r,
        32 s + 2p (+1)]. Each step reads 16 weight rows as 16 vectors of pairs (row r: its 16 pairs) and transposes
        them in registers (4 rounds of two-vector shuffles), so the panel is written in whole 64-byte rows instead
        of 16-word scatters."""
        if self.q8_tiles:
            self.decode_q8_tiles(u, pbase)
            return
        with T.serial(0, self.NB) as j:
            with T.serial(0, self.KS) as s:
                rows = [
                    T.bind(self.pairs(self._wvec(row, s, 0), self._wvec(row, s, 1)))
                    for row in ((u * self.NB + j) * 16 + r for r in range(16))
                ]
                at = pbase + (j * self.KS + s) * 256
                for p, vec in enumerate(transpose16(rows)):
                    vstore(self.panel, at + p * 16, vec, 16)


def _q8_dup(lo: bool) -> list:
    """Lanes of the 16 scales for 16 quants of 8 weight rows, two each (rows 0-7 or 8-15)."""
    return [i // 2 + (0 if lo else 8) for i in range(16)]


def _pipeline_dynamic(n, issue, finish) -> None:
    """issue(i, slot) then finish(i, slot) for i < n (n may be a run-time value, at least 1), with issue(i + 1)
    before finish(i); slot = i % 2 is static (two steps per iteration)."""
    issue(0, 0)
    with T.serial(0, (n + 1) // 2) as p:
        with T.If(2 * p + 1 < n):
            with T.Then():
                issue(2 * p + 1, 1)
        finish(2 * p, 0)
        with T.If(2 * p + 2 < n):
            with T.Then():
                issue(2 * p + 2, 0)
        with T.If(2 * p + 1 < n):
            with T.Then():
                finish(2 * p + 1, 1)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AMX-BF16 GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _Bf16Gemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AMX-BF16 loop nest."""
    replace_body(sch, spec, build)


__all__ = ["ROUNDS_TO_BF16", "TYPES", "applicable", "build", "linear"]
