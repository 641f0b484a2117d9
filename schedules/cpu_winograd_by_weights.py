"""CPU conv2d 3x3 (stride 1, padding 1) in f32 by Winograd's F(2x2, 3x3) for convs over 16 to 128 tiles: a UNet's
deep levels (SD1.5 with guidance at 256x256: 8x8 pixels, 32 tiles, and 16x16, 128 tiles; at 512x512 the 16x16 and 8x8
levels), where ``cpu_winograd`` had not gone or barely paid (``cpu_winograd.MIN_TILES``) and the direct conv
(``cpu_fma``) ran.

``cpu_winograd`` transforms the weights (U = G g G^T) into panels in memory once per call and runs its GEMMs by
groups of tiles: over few tiles, writing and reading back U (16/9 the weights, in f32: 105 MB for a 1280 x 1280 conv)
costs about what the direct conv does. Here the work is split by output channels instead, and U never leaves the
cache: each task takes ``UNIT_ROWS`` output channels and, pass by pass over ``KC`` input channels, transforms that
slice of its filters into U (in L2), then runs the 16 GEMMs of the pass on it. The GEMMs are swapped, as
``cpu_fma``'s for few rows: the tiles lie in a vector's lanes (V^T [xi][channel][tile], prepared once per call for
every task), the output channels are broadcast from U's rows, so neither U nor M is transposed; ``finish``
transposes each 16 x 16 block of outputs (16 channels x 16 tiles) once, into rows of the output.

- V^T: parallel over (16 tiles, 16 channels): B^T d B per tile (vectors over channels), each xi's 16 x 16 block
  transposed in registers into vectors over tiles;
- parallel over units of UNIT_ROWS output channels: per pass, U of the unit's filters for the pass's channels
  ([xi][row][KC], ``pack_u``: no transposes, the weights read as stored: f32, f16, bf16 or a GGUF type), then per xi
  ``cpu_fma``'s register block (``micro``) over the unit's rows (MR at a time, broadcast) and each group of tiles
  (NB vectors; V^T and M per group), the sums between passes in M ([group][xi][row][tile]); after the last, A^T M A
  and the fused epilogue.

Numerics: as ``cpu_winograd``'s F(2x2, 3x3) (the same transforms, ``cpu_winograd.transform``; the products and the
sums over channels in f32, in channel order), so the same bound holds (``tests/kernels/test_winograd_cpu.py``).

Measured (AMD Zen 4, 2 threads, f16 weights, GFLOP/s counted as the direct conv's 2 M N K, alternating in one
process; ``benchmarks/.work`` scratch):

    shape (batch 2)              this kernel   direct (cpu_fma)   cpu_winograd
    8x8 1280 -> 1280             368-378       194-196            -
    8x8 2560 -> 1280             364-382       168-188            -
    8x8 640 -> 1280              371-377       188                -
    8x8 1280 -> 1280, batch 1    280           160                -
    4x4 1280 -> 1280 (8 tiles)   154           159                -     (half of each tile vector padding)
    16x16 1280 -> 1280           446-454       -                  370
    16x16 640 -> 640             394-408       -                  266
    16x16 1920 -> 640            370-386       -                  253
    32x32 640 -> 640 (512 tiles) 376-398       -                  358
    32x32 320 -> 320 (512 tiles) 314-317       -                  372   (5 units of 64 channels on 2 threads)

In the model, the f32 UNet at 256x256 with guidance (``sdcompile bench``, alternating): 1.69-1.71 -> 1.54-1.57 s with
the 8x8 level, then 1.57 -> 1.42-1.50 s with the 16x16 level too; its output within 1.9e-6 (rel rms) of the direct
conv's, and the same with the 16x16 level moved over from cpu_winograd (the same products and sums in the same order).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules import cpu_fma, cpu_winograd
from schedules.tir_build import prim_func, replace_body, splat, transpose16, vector_regs, vload, vstore
from sdcompile.kernels.spec import KernelSpec

MAX_TILES = 128  # more: cpu_winograd (its U per call amortised over the tiles; see the measurements above)
MIN_TILES = 16  # 2x2 tiles per call at least: with fewer, tile vectors are mostly padding
UNIT_ROWS = 64  # output channels per task (N in whole units)
# int8 kernels this one runs faster than (``passes/mma.py`` keeps f32 products where it takes a conv): AVX2's
# vpmaddwd GEMM (``cpu_madd``) on SD1.5's guided 8x8 conv of 1,280 channels took 20.9 and 32.9 ms against this
# kernel's 14.2 and 18.4 ms (AMD Zen 3, 2 threads, q8_0 decoded to f32, in turn in one process, two runs)
FASTER_THAN = ("cpu_madd",)
# output channels per register block (broadcast) by vectors of tiles, per ISA (``cpu_fma.target_isa``): AVX-512 16
# accumulators of its 32 zmm; AVX2 8 ymm of its 16 (4 rows: UNIT_ROWS in whole blocks, and 6, the GEMM's, does
# not divide it); the most vectors of tiles per block is the largest key: more tiles run as groups of them
MR_BY_NB = {"avx512": {1: 16, 2: 8}, "avx2": {1: 4}}
KC = 128  # input channels per pass: the pass's U (16 x UNIT_ROWS x KC f32, 512 KB) stays in L2
MIN_CHANNELS = 256  # in and out at least: 4 tasks or more (SD1.5's convs here have 640 to 2560; fewer, not measured)


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """A 3x3 stride-1 conv padded by 1 that ``cpu_fma`` takes (f32 products, weights row-major), over MIN_TILES to
    MAX_TILES 2x2 tiles, with MIN_CHANNELS channels in and out or more, N in whole units of UNIT_ROWS. The CPU
    dispatch asks it before ``cpu_winograd``, which takes more tiles."""
    if spec.op != "conv2d" or spec.attr("wlayout") or not cpu_fma.applicable(spec, lanes):
        return False
    a = dict(spec.attrs)
    shape = (int(a["kh"]), int(a["kw"]), int(a["stride"]), tuple(int(p) for p in a["pads"]))
    n_tiles = cpu_winograd.tiles(a)
    return (
        shape == (3, 3, 1, (1, 1, 1, 1))
        and MIN_TILES <= n_tiles <= MAX_TILES
        and min(int(a["C"]), int(a["N"])) >= MIN_CHANNELS
        and int(a["N"]) % UNIT_ROWS == 0
    )


class _WinogradByWeights(cpu_winograd._WinogradConv):
    def plan(self) -> None:
        """By output channels (in place of ``cpu_winograd``'s plan by groups of tiles)."""
        # the swapped GEMM's shape: MR output channels (rows, broadcast) x NB vectors of tiles (NR columns)
        vectors = -(-self.T // 16)
        mr_by_nb = cpu_fma.for_isa(MR_BY_NB)
        self.NB = min(vectors, max(mr_by_nb))
        self.TG = -(-vectors // self.NB)  # groups of NB tile vectors, each with its own V^T and M
        self.NR = 16 * self.NB
        self.MR = mr_by_nb[self.NB]
        self.UR = UNIT_ROWS
        self.NU = self.N // self.UR
        # K in words (f32 values, or bf16 pairs: ``cpu_winograd_dot``'s PER_WORD), in passes of about KC channels,
        # as even as whole vectors of words allow
        self.passes = -(-self.KR // (KC // self.PER_WORD))
        self.KC = 16 * -(-self.KR // (16 * self.passes))
        self.VJ = self.KR // 16  # jobs per tile vector preparing V^T: 16 words of each tile's row

    def tile_m(self, a: dict) -> int:
        return 2

    def xat(self, ml, k, kc=None):
        """Where channel k of U's row ml (xi UR + output channel in the unit) lies in the pass's U."""
        return ml * self.KC + (k - kc * self.KC)

    def build(self) -> None:
        self.weight_views()
        # V^T [tile group][xi][channel][NR tiles]
        self.vt = T.alloc_buffer((self.TG * self.XI * self.KR * self.NR,), "float32")
        with T.parallel(0, self.TG * self.NB * self.VJ) as job:
            self.prep_v(job // self.VJ, job % self.VJ)
        with T.parallel(0, self.NU) as u:
            ub = T.alloc_buffer((self.XI * self.UR * self.KC,), "float32")  # the pass's U [xi][row][channel]
            self.mg = T.alloc_buffer((self.TG * self.XI * self.UR * self.NR,), "float32")  # M [group][xi][row][tile]
            blocks = self.UR // self.MR
            with T.serial(0, self.passes) as kc:
                self.pack_u(ub, u, kc)
                with T.serial(0, self.XI) as xi:
                    with T.serial(0, self.TG) as tg:
                        with T.serial(0, blocks) as blk:
                            row = T.bind((tg * self.XI + xi) * self.UR + blk * self.MR)
                            # the sums between passes wait where the last pass leaves them (M): slot row / MR
                            pofs = (tg * self.XI + xi) * self.KR * self.NR
                            slot = (tg * self.XI + xi) * blocks + blk
                            self.micro(self.vt, pofs, ub, xi * self.UR + blk * self.MR, self.mg, slot, u, row, kc)
            with T.serial(0, self.TG) as tg:
                self.finish_unit(u, tg)

    def prep_v(self, tv, cv) -> None:
        """V^T of tiles 16 tv .. 16 tv + 15 (zeros past T) for channels 16 cv .. 16 cv + 15: per tile B^T d B over
        the 16 channels, then per xi a 16 x 16 transpose into one vector of the 16 tiles per channel."""
        scratch = vector_regs(self.XI * 16)
        tg, j = tv // self.NB, tv % self.NB
        with T.serial(0, 16) as i:
            m = T.bind(tv * 16 + i)
            with T.If(m < self.T):
                with T.Then():
                    tile = self.input_tile(m)(16 * cv)
                    for xi, v in enumerate(cpu_winograd.transform(self.BT, tile, self.alpha)):
                        vstore(scratch, (xi * 16 + i) * 16, v, 16)
                with T.Else():
                    for xi in range(self.XI):
                        vstore(scratch, (xi * 16 + i) * 16, splat(0.0, "float32", 16), 16)
        with T.serial(0, self.XI) as xi:
            rows = [T.bind(vload(scratch, (xi * 16 + r) * 16, 16)) for r in range(16)]
            for p, vec in enumerate(transpose16(rows)):
                vstore(self.vt, ((tg * self.XI + xi) * self.KR + 16 * cv + p) * self.NR + 16 * j, vec, 16)

    def pack_u(self, ub, u, kc) -> None:
        """U = G g G^T of unit u's filters for pass kc's words, as rows [xi][row][KC]: per output channel and 16
        words, the 9 taps' vectors as stored, transformed into the 16 xi's vectors (``u_words``), stored as they
        come."""
        chunks = self.KC // 16 if self.KR % self.KC == 0 else T.min(self.KC // 16, self.VJ - kc * (self.KC // 16))
        with T.serial(0, self.UR) as r:
            row = T.bind(u * self.UR + r)
            with T.serial(0, chunks) as cv:
                for xi, v in enumerate(self.u_words(row, T.bind(kc * self.KC + 16 * cv))):
                    vstore(ub, (xi * self.UR + r) * self.KC + 16 * cv, v, 16)

    def u_words(self, row, w0) -> list:
        """U's 16 xi vectors of words w0 .. w0 + 15 (f32: channels) of output channel ``row``."""
        g = [T.bind(self._wvec(row, tap * self.C + w0, 16)) for tap in range(9)]
        return cpu_winograd.transform(self.G, g, 3)

    def finish_unit(self, u, tg) -> None:
        """Y = A^T M A for the unit's output channels and every tile: per 16 channels and vector of 16 tiles, each
        channel's 16 xi vectors (over tiles) give its m x m outputs, which a 16 x 16 transpose turns into rows of 16
        channels per output pixel, through the fused epilogue."""
        outs = vector_regs(self.m * self.m * 16)
        with T.serial(0, self.UR // 16) as cg:
            for j in range(self.NB):
                with T.serial(0, 16) as r:
                    sums = [
                        T.bind(vload(self.mg, ((tg * self.XI + xi) * self.UR + 16 * cg + r) * self.NR + 16 * j, 16))
                        for xi in range(self.XI)
                    ]
                    for o, v in enumerate(cpu_winograd.transform(self.AT, sums, self.alpha)):
                        vstore(outs, (o * 16 + r) * 16, v, 16)
                for o in range(self.m * self.m):
                    rows = transpose16([T.bind(vload(outs, (o * 16 + r) * 16, 16)) for r in range(16)])
                    for p, vec in enumerate(rows):  # tile 16 j + p's output o, 16 channels
                        self._store_tile_output((tg * self.NB + j) * 16 + p, o, u * self.UR + 16 * cg, vec)

    def _store_tile_output(self, m, o: int, n, v) -> None:
        """Output o of tile m through the fused epilogue, where the tile is real and the output inside the image."""

        def store() -> None:
            b, y0, x0 = self._tile_origin(m)
            oy, ox = y0 + 1 + o // self.m, x0 + 1 + o % self.m
            inside = []
            if self.H % self.m and o // self.m >= self.H % self.m:
                inside.append(oy < self.H)
            if self.W % self.m and o % self.m >= self.W % self.m:
                inside.append(ox < self.W)
            self._store(inside, (b * self.H + oy) * self.W + ox, n, v)

        if self.T == self.TG * self.NR:  # no padded tiles
            store()
            return
        with T.If(m < self.T):
            with T.Then():
                store()


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _WinogradByWeights(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with this loop nest."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "linear"]
