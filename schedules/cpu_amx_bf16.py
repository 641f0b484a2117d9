"""CPU GEMM on the AMX tile unit in bf16 (``TDPBF16PS``): ``linear`` and ``conv2d`` with float weights (f32, f16,
bf16) whose spec asks for bf16 products (``mma="bf16"``, set by ``compile --compute bf16``).

Both operands are rounded to bf16 (8 significant bits, to nearest even) and every product is summed in f32 inside
the unit, so the result carries the error of bf16 operands — as PyTorch's bf16 autocast does — and nothing else:
about 2^-9 of each product, averaging out over K. Unlike the int8 path (``cpu_amx.py``) there are no block scales,
so the f32 sums stay in the tile registers for the whole of K and leave the unit once per 16 x 16 outputs.

Per call:

- **prep** (parallel over rows of x): x rounded to bf16, stored as the unit's A operands: for each 16 rows of x and
  each 32 values of K, a tile of 16 rows of 64 bytes, so each row of x is written in whole 64-byte runs. A conv
  gathers its patches here, 16 channels at a time (zeros outside the image), as the int8 path does. Rows past M,
  up to an even number of tiles, are zeros.
- **tiles** (parallel over ranges of 16 weight rows): a task decodes its 16 rows of W into a panel of B operands
  (K/32 steps of 16 rows of pairs: row p holds values 2p, 2p + 1 of each of the 16 weight rows), then for each two
  tiles of x rows runs K/32 steps of one B and two A tile loads and two products into two f32 accumulator tiles.
  The accumulators come out as [16 rows of x][16 outputs], so the epilogue (bias, activation, residual, the
  output's storage type) runs on whole vectors of 16 consecutive outputs.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import (
    MAX_CHUNKS,
    _amx,
    _i8,
    over_chunks,
    over_row_blocks,
    row_blocks,
    tile_config,
    with_tile_state,
    x_vector,
)
from schedules.tir_build import (
    f16_to_f32,
    prim_func,
    replace_body,
    shuffle,
    splat,
    store_output_vec,
    vload,
    vstore,
)
from sdcompile.kernels.act import bf16_bits
from sdcompile.kernels.spec import KernelSpec, gemm_mnk

TYPES = ("f32", "f16", "bf16")  # weight types whose values bf16 holds after one rounding
A0, A1, B0, B1, C0, C1, C2, C3 = range(8)  # tile registers: C0, C1 = A0, A1 x B0; C2, C3 = A0, A1 x B1


def applicable(spec: KernelSpec, lanes: int, host_bf16: bool) -> bool:
    """``linear`` or ``conv2d`` asking for bf16 products, with float weights, K in whole 32-value steps, N in whole
    tiles (a conv: channels in whole vectors) and a CPU with AMX-BF16."""
    if spec.attr("mma") != "bf16" or spec.op not in ("linear", "conv2d"):
        return False
    if spec.op == "conv2d" and int(spec.attr("C")) % 16:
        return False
    _, N, K = gemm_mnk(spec)
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
        self.act = str(spec.attr("act", "none"))
        self.conv = dict(spec.attrs) if spec.op == "conv2d" else None
        # rows of x per block (cpu_amx.X_BLOCK_BYTES; bf16 operands, 2 bytes a value), a multiple of 32: x tiles go
        # two at a time, the odd one out of the last block pairing with a zero tile
        self.MB, self.NBLK = row_blocks(self.M, 2 * self.K, align=32)
        self.MT2 = self.MB // 16
        self.NT = self.N // 16
        self.KS = self.K // 32
        # units of NB weight tiles: two where the count is even, so each step's four products share two A and two B
        # loads (2 x 2 blocking); the units go to MAX_CHUNKS parallel chunks
        self.NB = 2 if self.NT % 2 == 0 else 1
        self.NU = self.NT // self.NB
        self.TPC = -(-self.NU // min(self.NU, MAX_CHUNKS))
        self.CH = -(-self.NU // self.TPC)

    def build(self) -> None:
        w = self.bufs["w"]
        words = w.shape[0]
        self.wf = T.decl_buffer((words,), "float32", data=w.data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=w.data)
        self.xb = T.alloc_buffer((self.MT2 * self.KS * 256,), "uint32")
        self.panel = T.alloc_buffer((self.CH * self.NB * self.KS * 256,), "uint32")
        self.ybuf = T.alloc_buffer((self.CH * self.NB * 512,), "float32")
        self.cfg = T.alloc_buffer((64,), "uint8")

        def block(m0) -> None:
            self.m0 = m0  # the block's first row of x
            self.prep()
            self.tiles()

        with_tile_state(lambda: (self.config(), over_row_blocks(self.NBLK, self.MB, block)))

    def config(self) -> None:
        tile_config(self.cfg, {t: (16, 64) for t in range(8)})  # every tile 16 rows of 64 bytes

    # -- activations --

    def prep(self) -> None:
        x = self.bufs["x"]
        with T.parallel(0, self.MT2 * 16) as ml:
            m = T.bind(self.m0 + ml) if self.NBLK > 1 else ml  # the row of x; ml its place in the block
            mt = T.bind(ml // 16)
            mi = T.bind(ml % 16)
            with T.serial(0, self.KS) as s:
                at = ((mt * self.KS + s) * 16 + mi) * 16  # A tile (mt, s), row mi: values 32 s .. 32 s + 31
                with T.If(m < self.M):
                    with T.Then():
                        k = 32 * s
                        vstore(
                            self.xb,
                            at,
                            _bf16_pairs(x_vector(self.conv, x, m, k), x_vector(self.conv, x, m, k + 16)),
                            16,
                        )
                    with T.Else():
                        vstore(self.xb, at, splat(0, "uint32", 16), 16)

    # -- weights and the tile unit --

    def _wvec(self, row, k):
        """W[row, k:k+16] as f32 from the weight's storage words."""
        at = row * self.K + k
        if self.wtype == "f32":
            return vload(self.wf, at, 16)
        bits = vload(self.w16, at, 16)
        if self.wtype == "f16":
            return f16_to_f32(bits, 16)
        return T.reinterpret(
            "float32x16", T.Cast("uint32x16", T.reinterpret("uint16x16", bits)) << splat(16, "uint32", 16)
        )

    def tiles(self) -> None:
        over_chunks(self.CH, self.TPC, self.NU, self.cfg, self.unit)

    def unit(self, c, u) -> None:
        nb = self.NB
        pbase = c * nb * self.KS * 256
        # the panel: weight tile j of the unit, step s, row p, column r holds W[16 (nb u + j) + r, 32 s + 2p (+1)]
        with T.serial(0, nb * 16) as jr:
            row = u * nb * 16 + jr
            with T.serial(0, self.KS) as s:
                pairs = _bf16_pairs(self._wvec(row, 32 * s), self._wvec(row, 32 * s + 16))
                at = pbase + ((jr // 16) * self.KS + s) * 256 + jr % 16
                T.buffer_store(self.panel, pairs, [T.Ramp(at, 16, 16)])
        yb = c * nb * 512
        accs = [(C0, A0, B0), (C1, A1, B0), (C2, A0, B1), (C3, A1, B1)][: 2 * nb]
        with T.serial(0, self.MT2 // 2) as mp:
            for acc, _, _ in accs:
                _amx("tilezero", _i8(acc))
            with T.serial(0, self.KS) as s:
                for j, b in enumerate((B0, B1)[:nb]):
                    at = pbase + (j * self.KS + s) * 256
                    _amx("tileloadd64", _i8(b), T.address_of(self.panel[at]), T.int64(64))
                for a, mt in ((A0, 2 * mp), (A1, 2 * mp + 1)):
                    _amx("tileloadd64", _i8(a), T.address_of(self.xb[(mt * self.KS + s) * 256]), T.int64(64))
                for acc, a, b in accs:
                    _amx("tdpbf16ps", _i8(acc), _i8(a), _i8(b))
            for i, (acc, _, _) in enumerate(accs):  # [weight tile j][x tile]: C0, C1 then C2, C3
                _amx("tilestored64", _i8(acc), T.address_of(self.ybuf[yb + i * 256]), T.int64(64))
            with T.serial(0, nb) as j:
                with T.serial(0, 32) as i:  # row i of the two x tiles: output row m, columns of weight tile j
                    m = self.m0 + mp * 32 + i if self.NBLK > 1 else mp * 32 + i
                    with T.If(m < self.M):
                        with T.Then():
                            v = vload(self.ybuf, yb + j * 512 + i * 16, 16)
                            store_output_vec(self.bufs, self.act, m, (u * nb + j) * 16, v)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AMX-BF16 GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _Bf16Gemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AMX-BF16 loop nest."""
    replace_body(sch, spec, build)


__all__ = ["TYPES", "applicable", "build", "linear"]
