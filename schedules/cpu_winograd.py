"""CPU conv2d 3x3 (stride 1, padding 1) in f32 by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016): each 2 x 2 block of outputs is computed from a 4 x 4
tile of input, Y = A^T [(G g G^T) . (B^T d B)] A, so a tile takes 16 products per (input, output) channel pair
where the direct conv takes 36: 2.25x fewer. The sums over channels are 16 independent GEMMs, one per position xi of
the 4 x 4 transformed tile, V_xi [tiles x C] times U_xi [C x N], and they run on ``cpu_fma``'s register block.

Where: ``compile`` without ``--compute bf16`` (f32 products) and the weights ``cpu_fma`` takes, on the 3x3 convs of
a UNet or VAE over ``MIN_TILES`` 2x2 tiles or more with ``MIN_CHANNELS`` channels in and out or more. Below that (the
UNet's 8x8 and 4x4 levels) a conv is bound by reading its weights, and U holds 16/9 as many values as W: the direct
kernel stays.

Numerics. The transforms' coefficients are 0, +-1 and +-1/2, so each value of U and V is a short sum (the halvings
are exact), rounded two to four times in f32; the products and the sums over channels are f32 as in ``cpu_fma``. The
error is bounded by (C + 12) u times the sum of the terms' magnitudes (``tests/kernels/test_winograd_cpu.py``), a few
times the direct conv's bound. bf16 products would add their own 2^-9 per product on top of it, so ``--compute bf16``
keeps the direct conv.

Loop nest (by rows of tiles, as ``cpu_fma.rows_first``):
- per block of weight units (``PANEL_BYTES``): the units' U, all 16 xi, transformed from the weights as stored (f32,
  f16, bf16, or a GGUF type ``quant_vec`` decodes) into panels [xi][c][NR], in parallel over (unit, 16 channels), once
  per call, as ``cpu_fma`` packs;
- parallel over groups of RG tiles (``GROUP_PANELS`` row panels, at least ``MIN_GROUPS`` groups): the group's V (all
  16 xi) from x, zeros outside the image; then unit by unit, per xi, the register block over the group's rows with
  C in passes whose weight slice stays in L1 (as ``cpu_fma``), its sums into the unit's M (16 x RG x NR); then
  A^T M A and the fused epilogue (bias, activation, residual, the output's storage) on the 2 x 2 outputs of each
  tile inside the image.

Measured (``benchmarks/fma_gemm.py --threads 2 --only conv``, this 2-core Xeon, f16 weights, GFLOP/s counted as the
direct conv's 2 M N K, against the direct FMA kernel in the same run):

    UNet 512 (guided): 64x64 320->320 530 / 303 (1.75x); 32x32 640->640 416 / 278 (1.50x);
                       16x16 1280->1280 (128 tiles) 314 / 281 (1.12x)
    UNet 256 (guided): 32x32 320->320 415 / 281 (1.48x); 16x16 640->640 (128 tiles) 272-300 / 272-275

What bounds it: the register block runs as in ``cpu_fma`` (~75% of the FMA peak inside its loop); transforming U,
V and M and the passes' sums take about a fifth of the time at 64x64.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules import cpu_fma, quant_vec
from schedules.cpu_amx_bf16 import _transpose16
from schedules.tir_build import (
    load_f32,
    prim_func,
    replace_body,
    splat,
    store_output_vec,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec

XI = 16  # positions of a transformed 4 x 4 tile: 16 GEMMs
MIN_TILES = 128  # 2 x 2 output tiles per call at least
MIN_CHANNELS = 64  # in and out: with fewer the transforms cost more than the products they save
GROUP_PANELS = 16  # row panels (of MR tiles) per group at most
MIN_GROUPS = 2  # groups per call at least: smaller groups read each weight slice for fewer tiles (a UNet 16x16 conv
# with guidance, 128 tiles, 2 threads: 4 groups of 36 tiles 1.0x the direct conv, 2 of 66 tiles 1.17x)
PANEL_BYTES = 16 << 20  # transformed weight units per block at most this (U of a 1280 x 1280 conv: 105 MB in f32)


def tiles(a: dict) -> int:
    return int(a["B"]) * -(-int(a["H"]) // 2) * -(-int(a["W"]) // 2)


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """A conv ``cpu_fma`` takes that is 3x3, stride 1, padding 1 on every side, over ``MIN_TILES`` 2x2 tiles or more,
    with ``MIN_CHANNELS`` channels in and out or more."""
    if spec.op != "conv2d" or not cpu_fma.applicable(spec, lanes):
        return False
    a = dict(spec.attrs)
    shape = (int(a["kh"]), int(a["kw"]), int(a["stride"]), tuple(int(p) for p in a["pads"]))
    return shape == (3, 3, 1, (1, 1, 1, 1)) and tiles(a) >= MIN_TILES and min(int(a["C"]), int(a["N"])) >= MIN_CHANNELS


def _half(v):
    return v * splat(0.5, "float32", 16)


def filter_transform(g: list) -> list:
    """U = G g G^T of one 3 x 3 filter (g[3 ky + kx], vectors over 16 channels) as its 16 values, xi = 4 i + j;
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""

    def g_rows(c0, c1, c2) -> list:
        s = T.bind(c0 + c2)
        return [c0, T.bind(_half(s + c1)), T.bind(_half(s - c1)), c2]

    cols = [g_rows(g[kx], g[3 + kx], g[6 + kx]) for kx in range(3)]  # cols[kx][i] = (G g)[i][kx]
    out = []
    for i in range(4):
        out += g_rows(cols[0][i], cols[1][i], cols[2][i])
    return out


def _b_rows(d0, d1, d2, d3) -> list:
    """B^T applied to four values: B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    return [T.bind(d0 - d2), T.bind(d1 + d2), T.bind(d2 - d1), T.bind(d1 - d3)]


def input_transform(d: list) -> list:
    """V = B^T d B of one 4 x 4 input tile (d[4 y + x], vectors over 16 channels) as its 16 values, xi = 4 i + j."""
    t = [_b_rows(d[x], d[4 + x], d[8 + x], d[12 + x]) for x in range(4)]  # t[x][i] = (B^T d)[i][x]
    out = []
    for i in range(4):
        out += _b_rows(t[0][i], t[1][i], t[2][i], t[3][i])
    return out


def _a_rows(m0, m1, m2, m3) -> list:
    """A^T applied to four values: A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    return [T.bind(m0 + m1 + m2), T.bind(m1 - m2 - m3)]


def output_transform(m: list) -> list:
    """Y = A^T m A of one tile's 16 sums (m[4 i + j]) as its 2 x 2 outputs, [y0x0, y0x1, y1x0, y1x1]."""
    s = [_a_rows(m[j], m[4 + j], m[8 + j], m[12 + j]) for j in range(4)]  # s[j][a] = (A^T m)[a][j]
    out = []
    for a in range(2):
        out += _a_rows(s[0][a], s[1][a], s[2][a], s[3][a])
    return out


class _WinogradConv(cpu_fma._FmaGemm):
    """The F(2x2, 3x3) loop nest; ``micro`` (the register block) is ``cpu_fma``'s, run with K = C in one pass over
    prepared rows of V (row xi RG + r of a group's buffer) and a unit's panel for one xi, its sums stored to M."""

    def __init__(self, spec: KernelSpec, bufs: dict):  # not super().__init__: it plans the direct conv's nests
        self.spec, self.bufs = spec, bufs
        a = dict(spec.attrs)
        self.B, self.H, self.W, self.C, self.N = (int(a[k]) for k in ("B", "H", "W", "C", "N"))
        self.wtype = str(spec.attr("wtype"))
        self.act = str(spec.attr("act", "none"))
        self.TH, self.TW = -(-self.H // 2), -(-self.W // 2)
        self.T = tiles(a)
        # what ``micro`` reads: C values per row of V (a multiple of 16) in passes of KC whose weight slice (KC x NR
        # f32) fits L1 (``cpu_fma.L1_BYTES``), rows of V pass by pass (``xat``), no swap; K is the weights' row
        # (9 C), which ``_wvec`` reads
        self.K = 9 * self.C
        self.KR = self.C
        self.KV = self.C // 16
        self.x_slice, self.swap = False, False
        NT = self.N // 16
        self.NB = next(nb for nb in (4, 3, 2, 1) if NT % nb == 0)
        self.MR = cpu_fma.MR_BY_NB[self.NB]
        self.NR = 16 * self.NB
        self.NU = NT // self.NB
        self.passes = -(-self.KV // max(1, cpu_fma.L1_BYTES // (64 * self.NR)))
        self.KC = 16 * -(-self.KV // self.passes)
        self.UW = XI * self.C * self.NR  # f32 words of a unit's panels
        self.UPB = max(1, min(self.NU, PANEL_BYTES // (4 * self.UW)))  # units per panel block
        self.PB = -(-self.NU // self.UPB)
        # tiles per group: each weight slice, read from L3 per group, serves RG rows (64 / RG bytes per FMA), while
        # the group's V, read once per unit, costs 1 byte per FMA from wherever it lies: groups of GROUP_PANELS row
        # panels, fewer where that leaves under MIN_GROUPS groups
        panels = -(-self.T // self.MR)
        self.RP = max(1, min(GROUP_PANELS, -(-panels // MIN_GROUPS)))
        self.RG = self.RP * self.MR
        self.GR = -(-self.T // self.RG)
        self.xrows = XI * self.RG  # rows of V held (``xat``)

    def build(self) -> None:
        w = self.bufs["w"]
        words = w.shape[0]
        self.wf = T.decl_buffer((words,), "float32", data=w.data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=w.data)
        self.wq = quant_vec.views(w) if self.wtype in quant_vec.TYPES else None
        panel = T.alloc_buffer((self.UPB * self.UW,), "float32")
        with T.serial(0, self.PB) as pb:
            units = T.bind(T.min(self.UPB, self.NU - pb * self.UPB))
            with T.parallel(0, self.UPB * self.KV) as job:
                ul = T.bind(job // self.KV)
                with T.If(ul < units):
                    with T.Then():
                        self.pack_filters(panel, ul, pb * self.UPB + ul, job % self.KV)
            # one task per group: splitting a group's units between tasks (each preparing the group's V) ran 10-15%
            # slower (128 and 512 tiles, 2 threads)
            with T.parallel(0, self.GR) as g:
                vg = T.alloc_buffer((self.passes * self.xrows * self.KC,), "float32")
                self.mg = T.alloc_buffer((XI * self.RG * self.NR,), "float32")
                part = T.alloc_buffer((self.RG * self.NR,), "float32")  # sums between passes
                with T.serial(0, self.RG) as ml:
                    self.prep_tile(g * self.RG + ml, vg, ml)
                with T.serial(0, units) as ul:
                    with T.serial(0, XI) as xi:
                        with T.serial(0, self.passes) as kc:
                            with T.serial(0, self.RP) as t:
                                row = T.bind(xi * self.RG + t * self.MR)
                                self.micro(panel, (ul * XI + xi) * self.C * self.NR, vg, row, part, t, ul, row, kc)
                    self.finish(g, pb * self.UPB + ul)

    def pack_filters(self, panel, ul, u, cv) -> None:
        """Unit u's U for channels 16 cv .. 16 cv + 15, all 16 xi, into its panels [xi][c][NR] (block ul): per 16
        output channels, each filter's 16 values into a scratch [xi][row], then per xi a 16 x 16 register transpose
        so the panel is written in whole vectors of consecutive outputs."""
        scratch = vector_regs(XI * 16)
        with T.serial(0, self.NB) as j:
            with T.serial(0, 16) as r:
                row = T.bind(u * self.NR + 16 * j + r)
                g = [T.bind(self._wvec(row, tap * self.C + 16 * cv, 16)) for tap in range(9)]
                for xi, v in enumerate(filter_transform(g)):
                    vstore(scratch, (xi * 16 + r) * 16, v, 16)
            with T.serial(0, XI) as xi:
                rows = [T.bind(vload(scratch, (xi * 16 + r) * 16, 16)) for r in range(16)]
                for p, vec in enumerate(_transpose16(rows)):
                    at = ((ul * XI + xi) * self.C + 16 * cv + p) * self.NR + 16 * j
                    vstore(panel, at, vec, 16)

    def _tile_origin(self, m):
        """(image, first input row, first input column) of tile m: its 4 x 4 input starts one pixel up and left."""
        b = T.bind(m // (self.TH * self.TW))
        p = T.bind(m % (self.TH * self.TW))
        return b, T.bind((p // self.TW) * 2 - 1), T.bind((p % self.TW) * 2 - 1)

    def prep_tile(self, m, vg, ml) -> None:
        """V of tile m (zeros for m >= T, the last panel's padding) as row ml of each xi's rows in vg."""
        x = self.bufs["x"]
        with T.If(m < self.T):
            with T.Then():
                b, y0, x0 = self._tile_origin(m)
                ys = [T.bind(y0 + i) for i in range(4)]
                xs = [T.bind(x0 + i) for i in range(4)]
                # rows and columns outside the image read a clamped address and are replaced by zeros (the load is
                # issued either way); inside, the clamps change nothing
                cy = [T.bind(T.max(T.min(v, self.H - 1), 0)) for v in ys]
                cx = [T.bind(T.max(T.min(v, self.W - 1), 0)) for v in xs]
                iny = [T.bind(tirx.all(v >= 0, v < self.H)) for v in ys]
                inx = [T.bind(tirx.all(v >= 0, v < self.W)) for v in xs]
                with T.serial(0, self.KV) as cv:
                    d = []
                    for i in range(4):
                        for j in range(4):
                            v = T.bind(load_f32(x, [b, cy[i], cx[j], T.Ramp(16 * cv, 1, 16)], 16))
                            inside = T.Broadcast(tirx.all(iny[i], inx[j]), 16)
                            d.append(T.bind(T.Select(inside, v, splat(0.0, "float32", 16))))
                    for xi, v in enumerate(input_transform(d)):
                        vstore(vg, self.xat(xi * self.RG + ml, 16 * cv), v, 16)
            with T.Else():
                with T.serial(0, self.KV) as cv:
                    for xi in range(XI):
                        vstore(vg, self.xat(xi * self.RG + ml, 16 * cv), splat(0.0, "float32", 16), 16)

    def epilogue(self, acc, u, m0) -> None:
        """The register block's sums (MR rows of one xi's GEMM) into M; ``finish`` transforms them back."""
        for r in range(self.MR):
            for j in range(self.NB):
                i = r * self.NB + j
                vstore(self.mg, (m0 + r) * self.NR + 16 * j, vload(acc, 16 * i, 16), 16)

    def finish(self, g, u) -> None:
        """Y = A^T M A for each tile of group g and unit u's NR outputs, through the fused epilogue to the 2 x 2
        output pixels inside the image."""
        with T.serial(0, self.RG) as ml:
            m = T.bind(g * self.RG + ml)
            with T.If(m < self.T):
                with T.Then():
                    b, y0, x0 = self._tile_origin(m)
                    with T.serial(0, self.NB) as j:
                        sums = [T.bind(vload(self.mg, (xi * self.RG + ml) * self.NR + 16 * j, 16)) for xi in range(XI)]
                        for o, v in enumerate(output_transform(sums)):
                            oy, ox = y0 + 1 + o // 2, x0 + 1 + o % 2
                            row = (b * self.H + oy) * self.W + ox
                            inside = []
                            if self.H % 2 and o // 2:
                                inside.append(oy < self.H)
                            if self.W % 2 and o % 2:
                                inside.append(ox < self.W)
                            self._store(inside, row, u * self.NR + 16 * j, v)

    def _store(self, inside: list, row, n, v) -> None:
        if not inside:
            store_output_vec(self.bufs, self.act, row, n, v)
            return
        with T.If(tirx.all(*inside)):
            with T.Then():
                store_output_vec(self.bufs, self.act, row, n, v)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The Winograd conv PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _WinogradConv(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the Winograd loop nest."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "filter_transform", "input_transform", "linear", "output_transform"]
