"""CPU GEMM on AMX: ``linear`` with more than 8 rows of x (prompts, batches, image tokens) for q4_0, q8_0, q4_k and
q6_k weights in their GGUF layout, on CPUs with AMX-INT8 (Sapphire Rapids and later).

The tiled schedule (``schedules/cpu.py``) decodes W to f32 and runs an f32 matmul: at M = 64 that is bound by
AVX-512 FMAs (one 512-bit FMA port here: ~1.5 G/s per core), about 12 ms for 4096 x 4096, 1.3-3x slower than ggml's
int8 dot products. int8 dot products on AVX-512 (``vpdpbusd``: 64 multiply-adds) top out at ~100 G per second per
core, which ggml's kernels already reach within ~15%. The tile unit does 16 x 16 x 64 multiply-adds per
``TDPBSSD`` (measured ~2.9 T per second per core), so the work moves to what surrounds it. Per call:

- **prep** (parallel over rows of x): x becomes int8 ``xq`` with one f32 scale per 32 values (the math:
  ``sdcompile/kernels/linear_amx.py``), stored as the tile unit's B operand: for each 16 rows of x and each group of
  32 values, 8 rows of 64 bytes, row j holding values 4j..4j+3 of each of the 16 rows (the "VNNI" layout). Rows past
  M are zeros. q4_k also keeps ``dx * sum(xq)`` per group, for its mins.
- **tiles** (parallel over ``chunks`` of 16 weight rows): a task decodes its 16 rows of W once into int8 quants,
  16 x 32 bytes per group (q6_k: 16 x 16 per sub-block), with one f32 scale per row and group (``d``, ``d * sc``) and
  for q4_k the ``dmin * m`` offsets, into a per-task panel (16 x K bytes: L2). Then for each 16 rows of x, for each
  group: the tile unit multiplies the panel's 16 x 32 tile by x's 32 x 16 tile into 16 x 16 int32 sums, which go
  to memory (``TILESTORED``: AMX has no path to vector registers), and AVX-512 adds ``f32(sum) * w_scale * x_scale``
  into 16 f32 accumulator registers. The epilogue (bias, activation, residual) runs per output.

AMX is switched on per process by the kernel itself (``arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)``: Linux keeps
the 8 KiB of tile state out of threads that did not ask); each task loads the tile configuration, which is per
thread, and releases the tiles when done. The rule is used when the target has AMX-INT8 (``tvm_layer.cpu_target``
adds it where the host has it and Linux grants it), for N a multiple of 16.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_gemv import _bc, _c, _f16, _hsum, _ld, _shuffle, _st, _tree, prim_func, replace_body, store_output
from sdcompile.kernels import linear_amx as A
from sdcompile.kernels import linear_gemv
from sdcompile.kernels.spec import KernelSpec
from sdcompile.quant.types import get as get_type

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
MAX_CHUNKS = 16  # parallel tasks, each a contiguous range of 16-row weight tiles with its own panel and buffers

# Tile registers, two sets (even and odd groups): weight quants (A0 / A1), activations (B0 / B1), and the int32
# sums (16 rows x 64 bytes) of A times the activations' high bytes (C0 / C2) and low bytes (C1 / C3). q6_k's two
# 16-value sub-blocks per group take A0, A1 and both sets' sums, with B0 / B1 the high / low bytes.
A0, A1, B0, B1, C0, C1, C2, C3 = range(8)


def target_has_amx() -> bool:
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        from sdcompile.codegen import tvm_layer

        target = tvm.target.Target(tvm_layer.cpu_target())
    return bool(tvm.target.codegen.llvm_cpu_has_features(["amx-tile", "amx-int8"], target))


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """Whether ``linear`` ``spec`` runs on the tile unit: more rows than the GEMV path takes, N in whole tiles."""
    return (
        spec.op == "linear"
        and str(spec.attr("wtype")) in A.TYPES
        and int(spec.attr("M")) > linear_gemv.MAX_ROWS
        and int(spec.attr("N")) % A.TILE == 0
        and lanes == 16
        and target_has_amx()
    )


def _i8(v: int) -> tirx.IntImm:
    return tirx.IntImm("int8", v)


def _amx(name: str, *args) -> None:
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86." + name, *args))


class _Gemm:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec = spec
        self.M, self.N, self.K = (int(spec.attr(k)) for k in "MNK")
        self.wtype = str(spec.attr("wtype"))
        self.qt = get_type(self.wtype)
        self.RB = self.qt.row_bytes(self.K)
        self.bufs = bufs
        self.act = str(spec.attr("act", "none"))
        self.MT = -(-self.M // A.TILE)  # tiles of 16 rows of x
        self.NT = self.N // A.TILE
        self.NG = self.K // A.GROUP
        self.KS = 16 if self.wtype == "q6_k" else 32  # quants per weight tile row (per scale)
        self.NS = A.GROUP // self.KS  # weight tiles per group
        self.mins = self.wtype == "q4_k"
        self.CH = min(self.NT, MAX_CHUNKS)
        self.TPC = -(-self.NT // self.CH)  # weight tiles per chunk

    def build(self) -> None:
        b = self.bufs
        words = b["w"].shape[0]
        self.w8 = T.decl_buffer((words * 4,), "int8", data=b["w"].data)
        self.wu8 = T.decl_buffer((words * 4,), "uint8", data=b["w"].data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=b["w"].data)
        MT, NG, CH = self.MT, self.NG, self.CH
        # x: B operands, 2 x 8 rows x 16 int32 words per (16 rows of x, group): xh, then xl; scales [MT, NG, 16]
        self.xb = T.alloc_buffer((MT * NG * 256,), "int32")
        self.xs = T.alloc_buffer((MT * NG * 16,), "float32")
        if self.mins:
            self.xm = T.alloc_buffer((MT * NG * 16,), "float32")
        # per chunk: the weight panel, its scales (and q4_k offsets), the C tiles' landing place, one y tile
        nsub = NG * self.NS
        self.panel = T.alloc_buffer((CH * nsub * A.TILE * self.KS,), "int8")
        self.wsc = T.alloc_buffer((CH * nsub * A.TILE,), "float32")
        if self.mins:
            self.wmin = T.alloc_buffer((CH * NG * A.TILE,), "float32")
        self.cbuf = T.alloc_buffer((CH * 2 * self.NS * 512,), "int32")
        self.ybuf = T.alloc_buffer((CH * 256,), "float32")  # one 16 x 16 tile of y^T on its way out
        self.cfg = T.alloc_buffer((64,), "uint8")
        rc = T.call_extern(
            "int64", "syscall", T.int64(SYS_ARCH_PRCTL), T.int64(ARCH_REQ_XCOMP_PERM), T.int64(XFEATURE_XTILEDATA)
        )
        with T.Assert(
            rc == T.int64(0),
            "sdcompile: Linux refused this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM); recompile "
            "with SDCOMPILE_NO_AMX=1",
        ):
            self.config()
            self.prep()
            self.tiles()

    def config(self) -> None:
        """The tile configuration (palette 1): rows and bytes per row of each tile register."""
        cfg = self.cfg
        with T.serial(0, 64) as i:
            T.buffer_store(cfg, T.uint8(0), [i])
        T.buffer_store(cfg, T.uint8(1), [0])
        shapes = {A0: (16, self.KS), A1: (16, self.KS), B0: (self.KS // 4, 64), B1: (self.KS // 4, 64)}
        shapes.update({t: (16, 64) for t in (C0, C1, C2, C3)})
        for t, (rows, colsb) in shapes.items():
            T.buffer_store(cfg, T.uint8(colsb), [16 + 2 * t])
            T.buffer_store(cfg, T.uint8(rows), [48 + t])

    # -- activations --

    def prep(self) -> None:
        M, NG = self.M, self.NG
        x = self.bufs["x"]
        with T.parallel(0, self.MT * A.TILE) as m:
            mt = T.bind(m // A.TILE)
            mi = T.bind(m % A.TILE)
            with T.serial(0, NG) as g:
                at = T.bind((mt * NG + g) * A.TILE + mi)  # this row's slot in the group's scale vectors
                words = (mt * NG + g) * 256 + mi  # word j of the row's 32 bytes goes to B row j (+ 8: xl)
                with T.If(m < M):
                    with T.Then():
                        v = [T.bind(x[m, T.Ramp(g * A.GROUP + 16 * i, 1, 16)]) for i in range(2)]
                        amax = T.bind(_tree(T.max(T.abs(v[0]), T.abs(v[1])), 16, T.max))
                        total = T.bind(_hsum(v[0] + v[1], 16))
                        inv = T.bind(T.Select(amax > T.float32(0), T.float32(float(A.XQ_MAX)) / amax, T.float32(0)))
                        # A group holding an infinity or a NaN gets a NaN scale (max may drop NaNs; the sum keeps them).
                        dx = T.bind(T.Select(T.isfinite(total), amax * T.float32(1.0 / A.XQ_MAX), T.float32(math.nan)))
                        q = [T.bind(T.Cast("int32x16", T.nearbyint(vi * _bc(inv, 16)))) for vi in v]
                        # xq = 256 xh + xl: xh = floor((xq + 128) / 256) in [-127, 127], xl in [-128, 127]
                        hi = [T.bind((qi + _c(128, "int32", 16)) >> _c(8, "int32", 16)) for qi in q]
                        lo = [qi - (hv << _c(8, "int32", 16)) for qi, hv in zip(q, hi)]
                        for part, vals in ((0, hi), (1, lo)):
                            q8 = T.Cast("int8x32", _shuffle(vals, range(32)))
                            T.buffer_store(self.xb, T.reinterpret("int32x8", q8), [T.Ramp(words + part * 128, 16, 8)])
                        T.buffer_store(self.xs, dx, [at])
                        if self.mins:
                            s = _hsum(q[0] + q[1], 16)
                            T.buffer_store(self.xm, T.Cast("float32", s) * dx, [at])
                    with T.Else():
                        for part in range(2):
                            T.buffer_store(self.xb, _c(0, "int32", 8), [T.Ramp(words + part * 128, 16, 8)])
                        T.buffer_store(self.xs, T.float32(0), [at])
                        if self.mins:
                            T.buffer_store(self.xm, T.float32(0), [at])

    # -- weights --

    def tiles(self) -> None:
        with T.parallel(0, self.CH) as c:
            _amx("ldtilecfg", T.address_of(self.cfg[0]))
            with T.serial(0, self.TPC) as t:
                nt = c * self.TPC + t
                if self.NT % self.TPC:
                    with T.If(nt < self.NT):
                        with T.Then():
                            self.tile(c, nt)
                else:
                    self.tile(c, nt)
            _amx("tilerelease")

    def tile(self, c, nt) -> None:
        nsub = self.NG * self.NS
        pbase = c * nsub * A.TILE * self.KS
        sbase = c * nsub * A.TILE
        mbase = c * self.NG * A.TILE
        # Unit by unit (a block, a super-block), 16 rows each: the panel fills in order. Row by row, each row's
        # stores would land 512 bytes apart, in 8 of the L1's 64 sets, and miss (measured: 1.25 ms of 4.7).
        decode = getattr(self, "decode_" + self.wtype)
        with T.serial(0, self.NG if self.wtype in ("q4_0", "q8_0") else self.K // 256) as u:
            with T.serial(0, A.TILE) as r:
                decode(T.bind((nt * A.TILE + r) * self.RB), u, r, pbase, sbase, mbase)
        self.product(c, nt, pbase, sbase, mbase)

    def _panel_store(self, pbase, s, r, value) -> None:
        """Quants of weight tile s (16 rows x KS), row r."""
        _st(self.panel, pbase + (s * A.TILE + r) * self.KS, value, self.KS)

    def decode_q4_0(self, row, g, r, pbase, sbase, mbase) -> None:
        off = T.bind(row + g * 18)
        v = T.bind(_ld(self.wu8, off + 2, 16))
        q = _shuffle([v & _c(15, "uint8", 16), v >> _c(4, "uint8", 16)], range(32))
        self._panel_store(pbase, g, r, T.reinterpret("int8x32", q) - _c(8, "int8", 32))
        T.buffer_store(self.wsc, _f16(self.w16[off // 2], 1), [sbase + g * A.TILE + r])

    def decode_q8_0(self, row, g, r, pbase, sbase, mbase) -> None:
        off = T.bind(row + g * 34)
        self._panel_store(pbase, g, r, _ld(self.w8, off + 2, 32))
        T.buffer_store(self.wsc, _f16(self.w16[off // 2], 1), [sbase + g * A.TILE + r])

    def decode_q4_k(self, row, u, r, pbase, sbase, mbase) -> None:
        base = T.bind(row + u * 144)
        d = T.bind(_f16(self.w16[base // 2], 1))
        dmin = T.bind(_f16(self.w16[base // 2 + 1], 1))

        def s(i):  # scale byte i (of 12)
            return T.Cast("int32", self.wu8[base + 4 + i])

        for j in range(8):  # ggml's get_scale_min_k4
            if j < 4:
                sc, mn = s(j) & 63, s(j + 4) & 63
            else:
                sc = (s(j + 4) & 15) | ((s(j - 4) >> 6) << 4)
                mn = (s(j + 4) >> 4) | ((s(j) >> 6) << 4)
            g = u * 8 + j
            T.buffer_store(self.wsc, d * T.Cast("float32", sc), [sbase + g * A.TILE + r])
            T.buffer_store(self.wmin, dmin * T.Cast("float32", mn), [mbase + g * A.TILE + r])
        for p in range(4):  # bytes 32p.. hold sub-block 2p in their low nibbles, 2p + 1 in their high ones
            v = T.bind(_ld(self.wu8, base + 16 + 32 * p, 32))
            self._panel_store(pbase, u * 8 + 2 * p, r, T.reinterpret("int8x32", v & _c(15, "uint8", 32)))
            self._panel_store(pbase, u * 8 + 2 * p + 1, r, T.reinterpret("int8x32", v >> _c(4, "uint8", 32)))

    def decode_q6_k(self, row, u, r, pbase, sbase, mbase) -> None:
        m15, m3 = _c(15, "uint8", 32), _c(3, "uint8", 32)
        base = T.bind(row + u * 210)
        d = T.bind(_f16(self.w16[(base + 208) // 2], 1))
        with T.serial(0, 16) as j:
            sc = T.Cast("float32", self.w8[base + 192 + j])
            T.buffer_store(self.wsc, d * sc, [sbase + (u * 16 + j) * A.TILE + r])
        for h in range(2):
            lo = T.bind(_ld(self.wu8, base + 64 * h, 32))
            hi = T.bind(_ld(self.wu8, base + 64 * h + 32, 32))
            qh = T.bind(_ld(self.wu8, base + 128 + 32 * h, 32))
            parts = [lo & m15, hi & m15, lo >> _c(4, "uint8", 32), hi >> _c(4, "uint8", 32)]
            for i, low in enumerate(parts):  # quants 128 h + 32 i + l: low bits, and qh bits 2i, 2i + 1
                top = (qh >> _c(2 * i, "uint8", 32)) & m3 if i else qh & m3
                q = T.bind(T.reinterpret("int8x32", low | (top << _c(4, "uint8", 32))) - _c(32, "int8", 32))
                s = (u * 8 + 4 * h + i) * 2  # two tiles of 16 per group
                self._panel_store(pbase, s, r, _shuffle([q], range(16)))
                self._panel_store(pbase, s + 1, r, _shuffle([q], range(16, 32)))

    # -- the tile unit --

    def product(self, c, nt, pbase, sbase, mbase) -> None:
        """y's 16 columns of weight tile nt, 16 rows of x at a time: the f32 sums stay in 16 vector registers over
        all groups (small local arrays, which LLVM promotes; one 1 KiB array would live in memory)."""
        NG, MT = self.NG, self.MT
        with T.serial(0, MT) as mt:
            # An LLVM alloca (which it promotes to registers): TVM turns allocations inside a parallel loop into
            # runtime workspace calls, whose memory LLVM must keep in sync at every iteration.
            mem = T.bind(T.tvm_stack_alloca("shape", 128))
            self.facc = [T.decl_buffer((16,), "float32", data=mem, elem_offset=16 * r) for r in range(16)]
            for r in range(16):
                _st(self.facc[r], 0, _c(0.0, "float32", 16), 16)
            # Software-pipelined by one group: the products of group g + 1 are issued before the sums of group g
            # are read back. AMX's tile stores do not forward to vector loads, which wait until the store is done;
            # read right away, they stalled every group (q4_0 4096 x 4096, M = 64: 3.8 ms -> see step()).
            # Even and odd groups use two sets of tile registers and of landing buffers.
            self.products(c, 0, mt, 0, pbase)
            if NG // 2:
                with T.serial(0, NG // 2) as gp:
                    self.products(c, 2 * gp + 1, mt, 1, pbase)
                    self.scale(c, 2 * gp, mt, 0, sbase, mbase)
                    with T.If(2 * gp + 2 < NG):
                        with T.Then():
                            self.products(c, 2 * gp + 2, mt, 0, pbase)
                    self.scale(c, 2 * gp + 1, mt, 1, sbase, mbase)
            if NG % 2:
                self.scale(c, NG - 1, mt, 0, sbase, mbase)
            yb = c * 256
            for r in range(16):
                _st(self.ybuf, yb + 16 * r, _ld(self.facc[r], 0, 16), 16)
            with T.serial(0, 16) as r:
                with T.serial(0, 16) as lane:
                    m = mt * 16 + lane
                    with T.If(m < self.M):
                        with T.Then():
                            self.store_y(m, nt * 16 + r, self.ybuf[yb + 16 * r + lane])

    def products(self, c, g, mt, reg, pbase) -> None:
        """The tile products of group g and x's row tile mt on register set ``reg`` (q6_k: always both sets), into
        landing buffer ``reg``."""
        NG, NS, KS = self.NG, self.NS, self.KS
        cb = (c * 2 + reg) * NS * 512
        for h in range(NS):
            at, bt = (A0, B0) if reg == 0 else (A1, B1)
            if NS == 2:
                at = A0 + h
            _amx("tileloadd64", _i8(at), T.address_of(self.panel[pbase + (g * NS + h) * A.TILE * KS]), T.int64(KS))
            for part in range(2):  # xh, xl
                brow = (mt * NG + g) * 16 + part * 8 + h * (KS // 4)
                ct = (C0, C1, C2, C3)[2 * (h if NS == 2 else reg) + part]
                if NS == 2:
                    bt = B0 + part
                _amx("tileloadd64", _i8(bt), T.address_of(self.xb[brow * 16]), T.int64(64))
                _amx("tilezero", _i8(ct))
                _amx("tdpbssd", _i8(ct), _i8(at), _i8(bt))
                _amx("tilestored64", _i8(ct), T.address_of(self.cbuf[cb + (2 * h + part) * 256]), T.int64(64))

    def scale(self, c, g, mt, reg, sbase, mbase) -> None:
        """Group g's int32 sums from landing buffer ``reg``, scaled, into the f32 sums."""
        NG, NS = self.NG, self.NS
        cb = (c * 2 + reg) * NS * 512
        xs = T.bind(_ld(self.xs, (mt * NG + g) * 16, 16))
        if self.mins:
            xm = T.bind(_ld(self.xm, (mt * NG + g) * 16, 16))
        for r in range(16):
            t = None
            for h in range(NS):
                ws = self.wsc[sbase + (g * NS + h) * A.TILE + r]
                ch = _ld(self.cbuf, cb + 2 * h * 256 + 16 * r, 16)
                cl = _ld(self.cbuf, cb + (2 * h + 1) * 256 + 16 * r, 16)
                # sum(q * xq) = 256 sum(q * xh) + sum(q * xl), exact in int32 (|q xq| <= 128 * 32512 per term)
                term = T.Cast("float32x16", (ch << _c(8, "int32", 16)) + cl) * _bc(ws, 16)
                t = term if t is None else t + term
            v = _ld(self.facc[r], 0, 16) + t * xs
            if self.mins:
                v = v - xm * _bc(self.wmin[mbase + g * A.TILE + r], 16)
            _st(self.facc[r], 0, v, 16)

    def store_y(self, m, n, v) -> None:
        store_output(self.bufs, self.act, m, n, v)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AMX GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _Gemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AMX loop nest."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "linear", "target_has_amx"]
