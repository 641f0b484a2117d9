"""CPU conv2d 3x3 (stride 1, padding 1) in f32 by Winograd's minimal filtering F(m x m, 3x3) (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016): each m x m block of outputs is computed from an
(m + 2) x (m + 2) tile of input, Y = A^T [(G g G^T) . (B^T d B)] A, so a tile takes (m + 2)^2 products per (input,
output) channel pair where the direct conv takes 9 m^2: F(2x2, 3x3) 16 for 36 (2.25x fewer), F(4x4, 3x3) 36 for 144
(4x fewer). The sums over channels are (m + 2)^2 independent GEMMs, one per position xi of the transformed tile,
V_xi [tiles x C] times U_xi [C x N], and they run on ``cpu_fma``'s register block. The matrices are one table,
``MATRICES``, from which every transform here (and the tests' bound) is derived.

Where: ``compile`` without ``--compute bf16`` (f32 products) and the weights ``cpu_fma`` takes, on the 3x3 convs of
a UNet or VAE over ``MIN_TILES`` 2x2 tiles or more with ``MIN_CHANNELS`` channels in and out or more; F(4x4, 3x3)
where there are ``MIN_TILES_4`` 4x4 tiles or more (per CPU: ``MIN_TILES_4_BY_CPU``). Below that (the UNet's 8x8 and
4x4 levels) a conv is bound by reading its weights, and U holds 16/9 (36/9) as many values as W: the direct kernel
stays.

Numerics. F(2x2, 3x3)'s coefficients are 0, +-1 and +-1/2, so each value of U and V is a short sum (the halvings
are exact), rounded two to four times in f32; F(4x4, 3x3)'s also hold 1/6, 1/24 (rounded to f32) and up to 8, so
its terms pass through more roundings and its magnitudes grow more. The products and the sums over channels are f32
as in ``cpu_fma``. ``tests/kernels/test_winograd_cpu.py`` bounds the error by (C + 12) u (F(4x4): (C + 32) u) times
the sum of the terms' magnitudes, a few times the direct conv's bound. With ``--compute bf16`` the tile unit keeps
the direct conv; without it (AMD Zen 4) ``cpu_winograd_dot`` runs F(2x2, 3x3) with U and V rounded to bf16.

Loop nest (by rows of tiles, as ``cpu_fma.rows_first``):
- per block of weight units (``PANEL_BYTES``): the units' U, all (m + 2)^2 xi, transformed from the weights as
  stored (f32, f16, bf16, or a GGUF type ``quant_vec`` decodes) into panels [xi][c][NR], in parallel over (unit, 16
  channels), once per call, as ``cpu_fma`` packs;
- parallel over groups of RG tiles (``GROUP_PANELS`` row panels, at least ``MIN_GROUPS`` groups): the group's V (all
  xi) from x, zeros outside the image; then unit by unit, per xi, the register block over the group's rows with C
  in passes whose weight slice stays in L1 (as ``cpu_fma``), its sums into the unit's M ((m + 2)^2 x RG x NR); then
  A^T M A and the fused epilogue (bias, activation, residual, the output's storage) on the m x m outputs of each
  tile inside the image.

Measured (``benchmarks/fma_gemm.py --threads 2 --only conv``, this 2-core Xeon, f16 weights, GFLOP/s counted as the
direct conv's 2 M N K, against the direct FMA kernel in the same run; F(4x4) and F(2x2) from one script, in turn):

    shape (batch)                      F(4x4, 3x3)  F(2x2, 3x3)  direct   PyTorch f32
    UNet 64x64 320->320 (2)            626 (2.11x)  547 (1.75x)  296-313  312-332
    UNet 32x32 640->640 (2)                  -      418 (1.44x)  290      311
    UNet 16x16 1280->1280 (2)                -      314 (1.12x)  281      215
    VAE 64x64 512->512 (1)             420 (1.45x)  440 (1.50x)  290-294  324
    VAE 128x128 512->512 (1)           616 (2.07x)  537 (1.71x)  297-314  286-299
    VAE 256x256 256->256 (1)           838 (2.82x)  623 (1.94x)  297-321  302-341
    VAE 512x512 128->128 (1)           853 (2.65x)  590 (1.90x)  311-322  279-291

What bounds it: the register block runs as in ``cpu_fma`` (~75% of the FMA peak inside its loop); transforming U,
V and M and the passes' sums take about a fifth of the time of F(2x2) at 64x64, more of F(4x4)'s, whose transforms
are larger and whose V (36 rows per tile) leaves L2 sooner.
"""

from __future__ import annotations

from fractions import Fraction

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules import cpu_fma
from schedules.cpu_amx import target_cpu
from schedules.tir_build import (
    load_f32,
    prim_func,
    replace_body,
    splat,
    store_output_vec,
    transpose16,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec

MIN_TILES = 128  # output tiles per call at least (2 x 2 tiles for F(2x2, 3x3))
MIN_TILES_4 = 512  # 4 x 4 output tiles at least for F(4x4, 3x3), else F(2x2, 3x3) (Xeon, 2 threads: at 256, a VAE
# 64x64 conv, F(4x4) ran 3% slower; at 512, the UNet's 64x64 level with guidance, 1.21x faster) ...
# ... unless the CPU built for (LLVM's name) is here: AMD Zen 4 runs a 512-bit FMA per cycle, half the Xeon's rate,
# so the products F(4x4) saves weigh more beside its larger transforms. Zen 4, 2 threads, f16 weights, weights from
# memory, alternating, F(2x2) -> F(4x4): VAE 32x32 x 512 (64 tiles) 16.1 -> 9.8 ms, 64x64 x 512 (256) 46.4 -> 42.6;
# UNet with guidance at 32x32 (128 tiles) 320 -> 320 9.38 -> 6.15 ms, 640 -> 320 18.9 -> 14.2, 960 -> 320 29.9 ->
# 23.6, 640 -> 640 38.1 -> 27.3 (fewer tiles go by weights, ``cpu_winograd_by_weights``, F(2x2) only). In the model,
# alternating: the guided UNet at 256x256 in f32 1.399-1.410 -> 1.356-1.358 s (a third round 1.479, disturbed), the
# VAE decode at 256x256 1.256-1.274 -> 1.175-1.208 s; at 512x512 both level (UNet 6.03-6.08 -> 5.89-6.18 s, VAE
# decode 4.49-4.67 -> 4.56-4.59 s: there the 64x64 UNet level and the VAE's larger ones had F(4x4) already)
MIN_TILES_4_BY_CPU = {"znver4": 64}
# Quantized weights (q8_0, q4_0, ...): from this many pixels (B H W) Winograd, the weights decoded to f32 with the
# transform, beats each int8 kernel, and takes the conv. One table for both places that choose: the CPU dispatch in f32
# mode on a CPU with a tile unit (``schedules.cpu_rule``: ``cpu_amx``), and ``passes/mma.py``, which without AMX-BF16
# asks int8 products of q8_0 / q4_0 weights (``cpu_vnni``) only below it. 2 threads, alone, GFLOP/s as the direct
# conv's.
# - cpu_amx (Winograd / int8 tiles, q8_0): VAE 512x512 x 128 885-901 / 245-271, 256x256 x 256 977-978 / 379-383,
#   128x128 x 512 856-864 / 539-543, 64x64 x 512 618-622 / 548-551; UNet (batch 2) 64x64 320 -> 320 792-809 /
#   440-441, 640 -> 320 714-719 / 471-490, 960 -> 320 562-603 / 460-468; at 32x32 the tiles win from 640 channels
#   (640 -> 640 501-502 / 547, 1280 -> 1280 497-502 / 633-639) and lose at 320 (483-495 / 428-433), and below 32x32
#   they win (16x16 x 1280: 405-409 / 576-588; 8x8: 254-256 / 593-596).
# - cpu_vnni (AMX off, Winograd / VNNI; q8_0, then q4_0): VAE 512x512 128 -> 128 853-917 / 625-653, 869-914 / 592-649;
#   256 -> 128 865-906 / 633-647; 256x256 256 -> 256 888-1050 / 691-752, 928-1016 / 740-770; 512 -> 256 785-799 /
#   736-759; 128x128 512 -> 512 758-870 / 735-811, 798-867 / 719-807; 96x96 512 -> 512 838-868 / 777-849. Below 16,384
#   pixels VNNI wins or draws: UNet (batch 2) 64x64 320 -> 320 815-833 / 733-748, 640 -> 320 734-750 / 711-807 (q4_0
#   733-761 / 699-757), 960 -> 320 552-601 / 670-699; VAE 64x64 x 512 535-545 / 685-711, 64x64 x 256 552-575 /
#   705-725; 32x32 488-520 / 748-788.
# pixels per call (B H W) from which this kernel, with f32 products, runs a 3x3 conv faster than the kernel named
# with its own products: int8 on the tile unit (cpu_amx) or VNNI (cpu_vnni), bf16 on vdpbf16ps (cpu_bf16_dot; AMD
# Zen 4, 2 threads, f16 weights, alternating: 8,192 pixels 1.58x (SD1.5's UNet 64x64 with guidance, 320 channels),
# 16,384 1.37x, 65,536 1.8-1.9x; 4,096 0.94x and fewer 0.75-0.9x) — for bf16 only where Winograd with bf16 products
# (``cpu_winograd_dot``, faster still) does not take the conv: channels not in whole conversions of 32
OVER_PIXELS = {"cpu_amx": 4096, "cpu_vnni": 16384, "cpu_bf16_dot": 8192, "cpu_madd": 0}
# AVX2's int8 products (``cpu_madd``) run at about twice the FMA's rate, Winograd F(2x2) saves 2.25 times the
# products and F(4x4) 4 times: it keeps every conv it takes (and ``cpu_winograd_by_weights`` its fewer tiles)
MIN_CHANNELS = 64  # in and out: with fewer the transforms cost more than the products they save
GROUP_PANELS = 16  # row panels (of MR tiles) per group at most
MIN_GROUPS = 2  # groups per call at least: smaller groups read each weight slice for fewer tiles (a UNet 16x16 conv
# with guidance, 128 tiles, 2 threads: 4 groups of 36 tiles 1.0x the direct conv, 2 of 66 tiles 1.17x)
PANEL_BYTES = 16 << 20  # transformed weight units per block at most this (U of a 1280 x 1280 conv: 105 MB in f32)

_h, _s, _t = Fraction(1, 2), Fraction(1, 6), Fraction(1, 24)
# (B^T, G, A^T) per output tile size m, for 3x3 filters (tiles of m + 2): the interpolation points 0, 1, -1 (m 2)
# and 0, 1, -1, 2, -2 (m 4), as in Lavin and Gray
MATRICES = {
    2: (
        ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (_h, _h, _h), (_h, -_h, _h), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1)),
    ),
    4: (
        (
            (4, 0, -5, 0, 1, 0),
            (0, -4, -4, 1, 1, 0),
            (0, 4, -4, -1, 1, 0),
            (0, -2, -1, 2, 1, 0),
            (0, 2, -1, -2, 1, 0),
            (0, 4, 0, -5, 0, 1),
        ),
        (
            (Fraction(1, 4), 0, 0),
            (-_s, -_s, -_s),
            (-_s, _s, -_s),
            (_t, 2 * _t, 4 * _t),
            (_t, -2 * _t, 4 * _t),
            (0, 0, 1),
        ),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
    ),
}


def tiles(a: dict, m: int = 2) -> int:
    return int(a["B"]) * -(-int(a["H"]) // m) * -(-int(a["W"]) // m)


def tile_size(a: dict) -> int:
    """m of the F(m x m, 3x3) a conv takes: 4 over MIN_TILES_4 4x4 tiles or more (``MIN_TILES_4_BY_CPU`` for the CPU
    built for), else 2."""
    return 4 if tiles(a, 4) >= MIN_TILES_4_BY_CPU.get(target_cpu(), MIN_TILES_4) else 2


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """A conv ``cpu_fma`` takes that is 3x3, stride 1, padding 1 on every side, over ``MIN_TILES`` 2x2 tiles or more,
    with ``MIN_CHANNELS`` channels in and out or more."""
    if spec.op != "conv2d" or not cpu_fma.applicable(spec, lanes):
        return False
    a = dict(spec.attrs)
    shape = (int(a["kh"]), int(a["kw"]), int(a["stride"]), tuple(int(p) for p in a["pads"]))
    return shape == (3, 3, 1, (1, 1, 1, 1)) and tiles(a) >= MIN_TILES and min(int(a["C"]), int(a["N"])) >= MIN_CHANNELS


def over_products(spec: KernelSpec, lanes: int, kernel: str) -> bool:
    """Whether this kernel, where it takes ``spec`` (f32 products), runs it faster than ``kernel`` (``cpu_amx``,
    ``cpu_vnni``: int8 products; ``cpu_bf16_dot``: bf16) would with its own products: ``OVER_PIXELS``."""
    if not applicable(spec, lanes):
        return False
    return int(spec.attr("B")) * int(spec.attr("H")) * int(spec.attr("W")) >= OVER_PIXELS[kernel]


def _combine(row, vecs):
    """sum_j row[j] vecs[j] over the row's nonzero coefficients: +-1 as additions and subtractions, the others as
    products by the f32 constant nearest them."""
    plus, minus = [], []
    for c, v in zip(row, vecs):
        if c:
            term = v if abs(c) == 1 else v * splat(float(abs(c)), "float32", 16)
            (plus if c > 0 else minus).append(term)
    acc = plus[0] if plus else splat(0.0, "float32", 16) - minus.pop(0)
    for t in plus[1:]:
        acc = acc + t
    for t in minus:
        acc = acc - t
    return T.bind(acc)


def transform(mat, tile: list, n: int) -> list:
    """mat X mat^T of the n x n tile X (tile[n y + x], vectors over 16 channels), row-major: len(mat)^2 vectors."""
    cols = [[_combine(row, [tile[n * y + x] for y in range(n)]) for row in mat] for x in range(n)]
    out = []
    for i in range(len(mat)):
        out += [_combine(row, [cols[x][i] for x in range(n)]) for row in mat]
    return out


class _WinogradConv(cpu_fma._FmaGemm):
    """The F(m x m, 3x3) loop nest; ``micro`` (the register block) is ``cpu_fma``'s, run over C in passes on prepared
    rows of V (row xi RG + r of a group's buffer, ``xat``) and a unit's panel for one xi, its sums stored to M."""

    PER_WORD = 1  # channels per 32-bit word of U and V: f32 values

    def __init__(self, spec: KernelSpec, bufs: dict):  # not super().__init__: it plans the direct conv's nests
        self.spec, self.bufs = spec, bufs
        a = dict(spec.attrs)
        self.B, self.H, self.W, self.C, self.N = (int(a[k]) for k in ("B", "H", "W", "C", "N"))
        self.wtype = str(spec.attr("wtype"))
        self.act = str(spec.attr("act", "none"))
        self.m = self.tile_m(a)  # outputs per tile side; the input tile is alpha x alpha
        self.alpha = self.m + 2
        self.XI = self.alpha**2  # positions of a transformed tile: XI GEMMs
        self.BT, self.G, self.AT = MATRICES[self.m]
        self.TH, self.TW = -(-self.H // self.m), -(-self.W // self.m)
        self.T = tiles(a, self.m)
        # what ``micro`` reads: KR words per row of V (a multiple of 16) in passes of KC whose weight slice (KC x NR
        # words) fits L1 (``cpu_fma.L1_BYTES``), rows of V pass by pass (``xat``), no swap; K is the weights' row
        # (9 C), which ``_wvec`` reads
        self.K = 9 * self.C
        self.KR = self.C // self.PER_WORD  # words per row of V: its values, or pairs of them (``cpu_winograd_dot``)
        self.x_slice, self.swap, self.spread, self.prefetch_y = False, False, False, False
        self.plan()

    def plan(self) -> None:
        """The loop nest's shape (this module's: GEMMs by groups of tiles on U packed once per call;
        ``cpu_winograd_by_weights`` plans its own)."""
        self.KV = self.C // 16
        self.NB, self.MR, self.NR, self.NU = cpu_fma.register_block(self.N)
        self.PJ = self.KR // 16  # jobs per unit packing its U: one per 16 words of a row
        self.passes, self.KC = cpu_fma.l1_passes(self.KR // 16, self.NR)
        self.UW = self.XI * self.KR * self.NR  # words of a unit's panels
        self.UPB = max(1, min(self.NU, PANEL_BYTES // (4 * self.UW)))  # units per panel block
        self.PB = -(-self.NU // self.UPB)
        # tiles per group: each weight slice, read from L3 per group, serves RG rows (64 / RG bytes per FMA), while
        # the group's V, read once per unit, costs 1 byte per FMA from wherever it lies: groups of GROUP_PANELS row
        # panels, fewer where that leaves under MIN_GROUPS groups
        panels = -(-self.T // self.MR)
        self.RP = max(1, min(GROUP_PANELS, -(-panels // MIN_GROUPS)))
        self.RG = self.RP * self.MR
        self.GR = -(-self.T // self.RG)
        self.xrows = self.XI * self.RG  # rows of V held (``xat``)

    def tile_m(self, a: dict) -> int:
        return tile_size(a)

    def build(self) -> None:
        self.weight_views()
        panel = T.alloc_buffer((self.UPB * self.UW,), "float32")
        with T.serial(0, self.PB) as pb:
            units = T.bind(T.min(self.UPB, self.NU - pb * self.UPB))
            with T.parallel(0, self.UPB * self.PJ) as job:
                ul = T.bind(job // self.PJ)
                with T.If(ul < units):
                    with T.Then():
                        self.pack_filters(panel, ul, pb * self.UPB + ul, job % self.PJ)
            # one task per group: splitting a group's units between tasks (each preparing the group's V) ran 10-15%
            # slower (128 and 512 tiles, 2 threads)
            with T.parallel(0, self.GR) as g:
                vg = T.alloc_buffer((self.passes * self.xrows * self.KC,), "float32")
                self.mg = T.alloc_buffer((self.XI * self.RG * self.NR,), "float32")
                part = T.alloc_buffer((self.RG * self.NR,), "float32")  # sums between passes
                with T.serial(0, self.RG) as ml:
                    self.prep_tile(g * self.RG + ml, vg, ml)
                with T.serial(0, units) as ul:
                    with T.serial(0, self.XI) as xi:
                        with T.serial(0, self.passes) as kc:
                            with T.serial(0, self.RP) as t:
                                row = T.bind(xi * self.RG + t * self.MR)
                                self.micro(
                                    panel, (ul * self.XI + xi) * self.KR * self.NR, vg, row, part, t, ul, row, kc
                                )
                    self.finish(g, pb * self.UPB + ul)

    def pack_filters(self, panel, ul, u, cv) -> None:
        """Unit u's U for channels 16 cv .. 16 cv + 15, all XI positions, into its panels [xi][c][NR] (block ul):
        per 16 output channels, each filter's XI values into a scratch [xi][row], then per xi a 16 x 16 register
        transpose so the panel is written in whole vectors of consecutive outputs."""
        scratch = vector_regs(self.XI * 16)
        with T.serial(0, self.NB) as j:
            with T.serial(0, 16) as r:
                row = T.bind(u * self.NR + 16 * j + r)
                g = [T.bind(self._wvec(row, tap * self.C + 16 * cv, 16)) for tap in range(9)]
                for xi, v in enumerate(transform(self.G, g, 3)):
                    vstore(scratch, (xi * 16 + r) * 16, v, 16)
            with T.serial(0, self.XI) as xi:
                rows = [T.bind(vload(scratch, (xi * 16 + r) * 16, 16)) for r in range(16)]
                for p, vec in enumerate(transpose16(rows)):
                    at = ((ul * self.XI + xi) * self.C + 16 * cv + p) * self.NR + 16 * j
                    vstore(panel, at, vec, 16)

    def _tile_origin(self, m):
        """(image, first input row, first input column) of tile m: its alpha x alpha input starts one pixel up and
        left of its m x m outputs."""
        b = T.bind(m // (self.TH * self.TW))
        p = T.bind(m % (self.TH * self.TW))
        return b, T.bind((p // self.TW) * self.m - 1), T.bind((p % self.TW) * self.m - 1)

    def input_tile(self, m):
        """``tile(c0)``: tile m's alpha x alpha inputs, 16 channels from c0, row-major, zeros outside the image (m < T;
        its positions are bound where this is called)."""
        x = self.bufs["x"]
        b, y0, x0 = self._tile_origin(m)
        ys = [T.bind(y0 + i) for i in range(self.alpha)]
        xs = [T.bind(x0 + i) for i in range(self.alpha)]
        # rows and columns outside the image read a clamped address and are replaced by zeros (the load is issued
        # either way); inside, the clamps change nothing
        cy = [T.bind(T.max(T.min(v, self.H - 1), 0)) for v in ys]
        cx = [T.bind(T.max(T.min(v, self.W - 1), 0)) for v in xs]
        iny = [T.bind(tirx.all(v >= 0, v < self.H)) for v in ys]
        inx = [T.bind(tirx.all(v >= 0, v < self.W)) for v in xs]

        def tile(c0) -> list:
            d = []
            for i in range(self.alpha):
                for j in range(self.alpha):
                    v = T.bind(load_f32(x, [b, cy[i], cx[j], T.Ramp(c0, 1, 16)], 16))
                    inside = T.Broadcast(tirx.all(iny[i], inx[j]), 16)
                    d.append(T.bind(T.Select(inside, v, splat(0.0, "float32", 16))))
            return d

        return tile

    def prep_tile(self, m, vg, ml) -> None:
        """V of tile m (zeros for m >= T, the last panel's padding) as row ml of each xi's rows in vg."""
        with T.If(m < self.T):
            with T.Then():
                self.store_v(self.input_tile(m), vg, ml)
            with T.Else():
                with T.serial(0, self.KR // 16) as v:
                    for xi in range(self.XI):
                        vstore(vg, self.xat(xi * self.RG + ml, 16 * v), splat(0.0, "float32", 16), 16)

    def store_v(self, tile, vg, ml) -> None:
        """B^T d B of the tile's channels, 16 at a time, into row ml of each xi's rows."""
        with T.serial(0, self.KV) as cv:
            for xi, v in enumerate(transform(self.BT, tile(16 * cv), self.alpha)):
                vstore(vg, self.xat(xi * self.RG + ml, 16 * cv), v, 16)

    def epilogue(self, acc, u, m0) -> None:
        """The register block's sums (MR rows of one xi's GEMM) into M; ``finish`` transforms them back."""
        for r in range(self.MR):
            for j in range(self.NB):
                i = r * self.NB + j
                vstore(self.mg, (m0 + r) * self.NR + 16 * j, vload(acc, 16 * i, 16), 16)

    def finish(self, g, u) -> None:
        """Y = A^T M A for each tile of group g and unit u's NR outputs, through the fused epilogue to the m x m
        output pixels inside the image."""
        with T.serial(0, self.RG) as ml:
            m = T.bind(g * self.RG + ml)
            with T.If(m < self.T):
                with T.Then():
                    b, y0, x0 = self._tile_origin(m)
                    with T.serial(0, self.NB) as j:
                        sums = [
                            T.bind(vload(self.mg, (xi * self.RG + ml) * self.NR + 16 * j, 16)) for xi in range(self.XI)
                        ]
                        for o, v in enumerate(transform(self.AT, sums, self.alpha)):
                            oy, ox = y0 + 1 + o // self.m, x0 + 1 + o % self.m
                            row = (b * self.H + oy) * self.W + ox
                            inside = []
                            if self.H % self.m and o // self.m >= self.H % self.m:
                                inside.append(oy < self.H)
                            if self.W % self.m and o % self.m >= self.W % self.m:
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


__all__ = ["MATRICES", "applicable", "build", "linear", "tile_size", "transform"]
