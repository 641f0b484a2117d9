"""CPU GEMM on AMX: ``linear`` with several rows of x (prompts, batches, image tokens; from 5 to 8 rows for the types
with a GEMV kernel, from one for the others: ``linear_amx.FROM_ROWS``) for q4_0, q4_1, q5_0, q5_1, q8_0, iq4_nl,
q2_k, q3_k, q4_k, q5_k, q6_k and iq4_xs weights in their GGUF layout (iq4's codebook values through a byte shuffle), on CPUs with AMX-INT8 (Sapphire Rapids and later).

The tiled schedule (``schedules/cpu.py``) decodes W to f32 and runs an f32 matmul: at M = 64 that is bound by
AVX-512 FMAs (one 512-bit FMA port here: ~1.5 G/s per core), about 12 ms for 4096 x 4096, 1.3-3x slower than ggml's
int8 dot products. int8 dot products on AVX-512 (``vpdpbusd``: 64 multiply-adds) top out at ~100 G per second per
core, which ggml's kernels already reach within ~15%. The tile unit does 16 x 16 x 64 multiply-adds per
``TDPBSSD`` (measured ~2.9 T per second per core), so the work moves to what surrounds it: tile products come out
only through memory (``TILESTORED``, ~16 cycles per 16 x 16 int32 tile), and each stored tile is converted and
scaled with AVX-512. The fewer tiles per multiply-add leave the unit, the faster. The math (16-bit activations as
two int8 halves, exact int32 sums): ``sdcompile/kernels/linear_amx.py``. Per call:

- **prep** (parallel over rows of x): x becomes 16-bit ``xq = 256 xh + xl`` with one f32 scale per group (32
  values for q4_0/q8_0, 256 for the k-quants), stored as the tile unit's B operands: for each 16 rows of x, the
  xh (then xl) bytes as K / 4 rows of 64 bytes, row j holding values 4j..4j+3 of each of the 16 rows (the "VNNI"
  layout). Rows past M are zeros. q4_k also keeps ``dx * sum(xq)`` per 32, for its mins.
- **tiles** (parallel over ``MAX_CHUNKS`` ranges of 16 weight rows): a task decodes its 16 rows of W once into a
  panel (L2), then for each 16 rows of x walks K, with 16 f32 sums (y^T, 16 columns x 16 rows) in registers:
  - q4_0, q5_0, q8_0, q4_1, q5_1 (``block``): quants (``q - 8``, ``q - 16``, ``q``, ``q``, ``q``) as int8 with the
    f32 block scale; per 32-value block the unit multiplies the 16 x 32 weight tile by the xh and the xl tiles into
    two int32 tiles, which AVX-512 combines (``256 hi + lo``, exact), converts and scales by block scale times
    activation scale; q4_1 / q5_1 add ``m * dx * sum(xq)``.
  - q2_k, q3_k, q4_k, q5_k, q6_k (``super``): a super-block's 4/6/8-bit sub-block scales are integers, so they go
    into the weights: ``P = sc * q`` (q3_k: q in -4..3; q6_k: ``sc * (q - 32)``), at most 13 bits, split as
    ``P = 256 Ph + Pl`` (Ph signed, Pl unsigned).
    Then ``sum(P xq) = 65536 sum(Ph xh) + 256 (sum(Ph xl) + sum(Pl xh)) + sum(Pl xl)``: three int32 tiles per 256
    values (``TDPBSSD`` for the signed Ph, ``TDPBUSD`` for the unsigned Pl), each exact and below 2^24, against 16
    (q4_k) or 32 (q6_k) tiles per 256 with a tile per sub-block. The ``dmin * m`` offsets (q2_k per 16, q4_k / q5_k
    per 32) are 16 or 8 f32 multiply-adds per row and super-block on the stored ``dx * sum(xq)``.
  Both loops are software-pipelined by one step: the products of step i + 1 are issued before the sums of step i
  are read back, as tile stores do not forward to vector loads, which wait for the store to finish. The epilogue
  (bias, activation, residual) runs on the tile's 16 rows of 16 outputs, transposed from its sums in registers.

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

from schedules.tir_build import (
    bcast,
    f16_to_f32,
    flushing_denormals,
    hsum,
    load_f32,
    prefetch_outputs,
    prim_func,
    reduce_tree,
    replace_body,
    shuffle,
    splat,
    store_output_vec,
    transpose16,
    vconst,
    vload,
    vstore,
)
from sdcompile.kernels import linear_amx as A
from sdcompile.kernels.spec import KernelSpec, conv_geometry, gemm_mnk
from sdcompile.quant.grids import KVALUES_IQ4NL
from sdcompile.quant.types import get as get_type

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
MAX_CHUNKS = 16  # parallel tasks, each a contiguous range of 16-row weight tiles with its own panel and buffers
# The prepared activations of one pass over the weights stay under this: a conv's implicit GEMM has a row per output
# pixel (SDXL's VAE decoder at 1024x1024: 1 M rows of 2,304 values, 4.8 GB as 16-bit operands), so such a GEMM runs
# in blocks of rows, each preparing its rows and then walking every weight tile (decoding a weight panel again per
# block costs N x K, against M_block x N x K products).
X_BLOCK_BYTES = 64 << 20


def row_blocks(M: int, row_bytes: int, align: int = 16) -> tuple[int, int]:
    """(rows per block, blocks) for M rows of prepared activations of ``row_bytes`` each: one block where they fit
    ``X_BLOCK_BYTES``, else equal blocks (a multiple of ``align`` rows) that do."""
    rows = -(-M // align) * align
    if rows * row_bytes <= X_BLOCK_BYTES:
        return rows, 1
    per = max(align, X_BLOCK_BYTES // row_bytes // align * align)
    blocks = -(-rows // per)
    even = -(-rows // blocks)  # rows per block if split evenly, then rounded up to the alignment
    per = -(-even // align) * align
    return per, -(-rows // per)


def over_row_blocks(blocks: int, rows: int, body) -> None:
    """``body(m0)`` for each block of ``rows`` rows (first row m0): straight code for one block."""
    if blocks == 1:
        body(T.int32(0))
        return
    with T.serial(0, blocks) as blk:
        body(T.bind(blk * rows))


# Tile registers. block: two sets (even and odd blocks) of weight quants (A0 / A1), activations (B0 / B1) and the
# int32 sums of A times the activations' high bytes (C0 / C2) and low bytes (C1 / C3). super: weight high and low
# bytes (AH, AL), activation high and low bytes (BH, BL), and the sums HH, MID, LL.
A0, A1, B0, B1, C0, C1, C2, C3 = range(8)
AH, AL, BH, BL, HH, MID, LL = range(7)
SUPER = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs")
# an additive offset per 32 weights (q2_k: per 16): w = d q + m (k-quants: - dmin m)
MINS = ("q4_1", "q5_1", "q2_k", "q4_k", "q5_k")


def _cpu_target() -> tvm.target.Target:
    """The CPU target being built, else this host's (``tvm_layer.cpu_target``)."""
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        from sdcompile.codegen import tvm_layer

        target = tvm.target.Target(tvm_layer.cpu_target())
    return target


def target_has(*features: str) -> bool:
    """Whether the CPU code is built with every one of LLVM's ``features``."""
    return bool(tvm.target.codegen.llvm_cpu_has_features(list(features), _cpu_target()))


def target_cpu() -> str:
    """LLVM's name of the CPU the code is built for (``znver4``, ``sapphirerapids``, ...; empty for a generic one)."""
    return str(_cpu_target().attrs.get("mcpu", ""))


def target_has_amx() -> bool:
    return target_has("amx-tile", "amx-int8")


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """Whether ``linear`` or ``conv2d`` ``spec`` runs on the tile unit: enough rows (``linear_amx.FROM_ROWS``), N in
    whole tiles; a conv's channels in whole vectors, so each 16 patch values lie in one tap (one pixel's channels)."""
    if spec.op not in ("linear", "conv2d") or (spec.op == "conv2d" and int(spec.attr("C")) % 16):
        return False
    M, N, _ = gemm_mnk(spec)
    wtype = str(spec.attr("wtype"))
    return wtype in A.TYPES and M >= A.FROM_ROWS[wtype] and N % A.TILE == 0 and lanes == 16 and target_has_amx()


def _i8(v: int) -> tirx.IntImm:
    return tirx.IntImm("int8", v)


def _amx(name: str, *args) -> None:
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86." + name, *args))


def _pipeline(n: int, issue, finish) -> None:
    """issue(i, slot) then finish(i, slot) for i < n, with issue(i + 1) before finish(i); slot = i % 2 is static
    (the loop runs two steps per iteration), so each step can use its own tile registers and landing buffer."""
    issue(0, 0)
    if n // 2:
        with T.serial(0, n // 2) as p:
            issue(2 * p + 1, 1)
            finish(2 * p, 0)
            if n % 2:
                issue(2 * p + 2, 0)
            else:
                with T.If(2 * p + 2 < n):
                    with T.Then():
                        issue(2 * p + 2, 0)
            finish(2 * p + 1, 1)
    if n % 2:
        finish(n - 1, 0)


def with_tile_state(body) -> None:
    """Run ``body()`` (the kernel's loop nest) once Linux has granted this process the tile state, or stop with a
    message: Linux keeps the 8 KiB of tile state out of processes that did not ask."""
    rc = T.call_extern(
        "int64", "syscall", T.int64(SYS_ARCH_PRCTL), T.int64(ARCH_REQ_XCOMP_PERM), T.int64(XFEATURE_XTILEDATA)
    )
    with T.Assert(
        rc == T.int64(0),
        "sdcompile: Linux refused this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM); recompile "
        "with SDCOMPILE_NO_AMX=1",
    ):
        body()


def tile_config(cfg, shapes: dict[int, tuple[int, int]]) -> None:
    """Fill the 64-byte tile configuration ``cfg`` (palette 1): (rows, bytes per row) of each tile register used."""
    with T.serial(0, 64) as i:
        T.buffer_store(cfg, T.uint8(0), [i])
    T.buffer_store(cfg, T.uint8(1), [0])
    for t, (rows, colsb) in shapes.items():
        T.buffer_store(cfg, T.uint8(colsb), [16 + 2 * t])
        T.buffer_store(cfg, T.uint8(rows), [48 + t])


def chunking(count: int) -> tuple[int, int]:
    """(units per chunk, chunks) for ``count`` units in at most ``MAX_CHUNKS`` parallel chunks of consecutive units,
    every chunk with at least one (20 units: 10 chunks of 2, not 16)."""
    per = -(-count // min(count, MAX_CHUNKS))
    return per, -(-count // per)


def over_chunks(chunks: int, per_chunk: int, count: int, cfg, body, flush_denormals: bool = False) -> None:
    """``body(c, i)`` for i < ``count`` units in ``chunks`` parallel tasks of ``per_chunk`` consecutive units (the last
    one may be short). With a tile configuration ``cfg`` each task loads it first (it is per thread) and releases the
    tiles when done; ``cfg=None``: kernels without the tile unit. ``flush_denormals``: each task runs with denormal
    results and inputs flushed to zero (``tir_build.flushing_denormals``)."""

    def units(c) -> None:
        with T.serial(0, per_chunk) as t:
            i = c * per_chunk + t
            if chunks * per_chunk > count:  # the last chunk is short
                with T.If(i < count):
                    with T.Then():
                        body(c, i)
            else:
                body(c, i)

    with T.parallel(0, chunks) as c:
        if cfg is not None:
            _amx("ldtilecfg", T.address_of(cfg[0]))
        if flush_denormals:
            flushing_denormals(lambda: units(c))
        else:
            units(c)
        if cfg is not None:
            _amx("tilerelease")


def x_vector(conv: dict | None, x, m, k):
    """x[m, k:k+16] as f32: a row of a linear's input, or (``conv``: the conv2d spec's attributes) 16 channels of
    patch m at position k of the implicit GEMM, zeros outside the image. The channels must come in whole vectors
    (C % 16 == 0), so the 16 values lie in one tap."""
    if conv is None:
        return load_f32(x, [m, T.Ramp(k, 1, 16)], 16)
    H, W, C, kw, s = (int(conv[n]) for n in ("H", "W", "C", "kw", "stride"))
    pt, pl = int(conv["pads"][0]), int(conv["pads"][1])
    ho, wo, _, _ = conv_geometry(conv)
    p = m % (ho * wo)
    tap = k // C
    iy = (p // wo) * s + tap // kw - pt
    ix = (p % wo) * s + tap % kw - pl
    inside = tirx.all(iy >= 0, iy < H, ix >= 0, ix < W)
    # the address is clamped too: the select keeps the value, but the load is issued either way; and it is bound
    # before the select, as simplifying under the select's condition would drop the clamps
    cy, cx = T.max(T.min(iy, H - 1), 0), T.max(T.min(ix, W - 1), 0)
    v = T.bind(load_f32(x, [m // (ho * wo), cy, cx, T.Ramp(k % C, 1, 16)], 16))
    return T.Select(T.Broadcast(inside, 16), v, splat(0.0, "float32", 16))


def over_taps(conv: dict, m, inside, outside, taps=None) -> None:
    """Patch m of a conv (``conv``: the conv2d spec's attributes), tap by tap: ``inside(b, iy, ix, tap)`` where the
    tap's pixel lies in the image (its channels are x[b, iy, ix, :]), else ``outside(tap)`` (its values are zeros).
    The index arithmetic runs once per tap, where ``x_vector`` runs it per 16 values (at SD's sizes that cost more
    than the products). ``taps``: (first, end), a range of the taps only (default: all)."""
    H, W, kh, kw, st = (int(conv[n]) for n in ("H", "W", "kh", "kw", "stride"))
    pt, pl = int(conv["pads"][0]), int(conv["pads"][1])
    ho, wo, _, _ = conv_geometry(conv)
    b = T.bind(m // (ho * wo))
    p = T.bind(m % (ho * wo))
    oy = T.bind((p // wo) * st - pt)
    ox = T.bind((p % wo) * st - pl)
    with T.serial(*(taps or (0, kh * kw))) as tap:
        iy = T.bind(oy + tap // kw)
        ix = T.bind(ox + tap % kw)
        with T.If(tirx.all(iy >= 0, iy < H, ix >= 0, ix < W)):
            with T.Then():
                inside(b, iy, ix, tap)
            with T.Else():
                outside(tap)


class _Gemm:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec = spec
        self.M, self.N, self.K = gemm_mnk(spec)
        # conv2d: row m of the implicit GEMM is output pixel (b, oy, ox), k = (tap, channel); the patches are read
        # from x [B, H, W, C] where prep quantizes them (zeros outside the image), never materialised whole.
        self.conv = dict(spec.attrs) if spec.op == "conv2d" else None
        self.wtype = str(spec.attr("wtype"))
        self.qt = get_type(self.wtype)
        self.RB = self.qt.row_bytes(self.K)
        self.bufs = bufs
        self.act = str(spec.attr("act", "none"))
        self.super = self.wtype in SUPER
        self.G = A.group(self.wtype)  # activations per scale; also the unit of the K loop
        self.NT = self.N // A.TILE
        self.NG = self.K // self.G
        self.mins = self.wtype in MINS
        self.MG = 16 if self.wtype == "q2_k" else 32  # weights per offset
        self.NM = self.K // self.MG
        # rows of x per block (X_BLOCK_BYTES): 16-bit operands, a scale per group, an offset sum per MG
        row_bytes = 2 * self.K + 4 * self.NG + (4 * self.NM if self.mins else 0)
        self.MB, self.NBLK = row_blocks(self.M, row_bytes)
        self.MT = self.MB // A.TILE  # tiles of 16 rows of x in a block
        self.TPC, self.CH = chunking(self.NT)  # weight tiles per chunk, chunks

    def build(self) -> None:
        b = self.bufs
        words = b["w"].shape[0]
        self.w8 = T.decl_buffer((words * 4,), "int8", data=b["w"].data)
        self.wu8 = T.decl_buffer((words * 4,), "uint8", data=b["w"].data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=b["w"].data)
        MT, NG, CH, K = self.MT, self.NG, self.CH, self.K
        # x: B operands [MT][xh, xl][K / 4 rows][16 words]; scales [MT][group][16]
        self.xb = T.alloc_buffer((MT * 2 * K * 4,), "int32")
        self.xs = T.alloc_buffer((MT * NG * 16,), "float32")
        if self.mins:  # dx * sum(xq) per MG: [MT][K / MG][16]
            self.xm = T.alloc_buffer((MT * self.NM * 16,), "float32")
        # per chunk: the weight panel (super: high then low bytes), its scales (q4_k: and offsets), the C tiles'
        # landing place (two slots)
        self.psize = (2 if self.super else 1) * A.TILE * K
        self.panel = T.alloc_buffer((CH * self.psize,), "int8")
        self.wsc = T.alloc_buffer((CH * NG * A.TILE,), "float32")
        if self.mins:
            self.wmin = T.alloc_buffer((CH * self.NM * A.TILE,), "float32")
        self.cbuf = T.alloc_buffer((CH * 2 * 4 * 256,), "int32")
        self.cfg = T.alloc_buffer((64,), "uint8")

        def block(m0) -> None:
            self.m0 = m0  # the block's first row of x
            self.prep()
            self.tiles()

        with_tile_state(lambda: (self.config(), over_row_blocks(self.NBLK, self.MB, block)))

    def config(self) -> None:
        """The tile configuration: rows and bytes per row of each tile register."""
        if self.super:
            shapes = {t: (16, 64) for t in (AH, AL, BH, BL, HH, MID, LL)}
        else:
            shapes = {A0: (16, 32), A1: (16, 32), B0: (8, 64), B1: (8, 64)}
            shapes.update({t: (16, 64) for t in (C0, C1, C2, C3)})
        tile_config(self.cfg, shapes)

    # -- activations --

    def _xrow(self, mt, part, k):
        """Word index of B row k / 4 of x's row tile mt, part 0 (xh) or 1 (xl)."""
        return ((mt * 2 + part) * (self.K // 4) + k // 4) * 16

    def prep(self) -> None:
        M, NG, G = self.M, self.NG, self.G
        x = self.bufs["x"]
        with T.parallel(0, self.MT * A.TILE) as ml:
            mem = T.bind(T.tvm_stack_alloca("shape", 16))  # per task: running max and sum (see tile())
            amx = T.decl_buffer((16,), "float32", data=mem)
            tot = T.decl_buffer((16,), "float32", data=mem, elem_offset=16)
            m = T.bind(self.m0 + ml) if self.NBLK > 1 else ml  # the row of x; ml its place in the block
            mt = T.bind(ml // A.TILE)
            mi = T.bind(ml % A.TILE)
            with T.serial(0, NG) as g:
                at = T.bind((mt * NG + g) * A.TILE + mi)  # this row's slot in the group's scale vectors
                with T.If(m < M):
                    with T.Then():
                        vstore(amx, 0, splat(0.0, "float32", 16), 16)
                        vstore(tot, 0, splat(0.0, "float32", 16), 16)
                        with T.serial(0, G // 16) as i:
                            v = T.bind(x_vector(self.conv, x, m, g * G + 16 * i))
                            vstore(amx, 0, T.max(vload(amx, 0, 16), T.abs(v)), 16)
                            vstore(tot, 0, vload(tot, 0, 16) + v, 16)
                        amax = T.bind(reduce_tree(vload(amx, 0, 16), 16, T.max))
                        total = T.bind(hsum(vload(tot, 0, 16), 16))
                        inv = T.bind(T.Select(amax > T.float32(0), T.float32(float(A.XQ_MAX)) / amax, T.float32(0)))
                        # A group holding an infinity or a NaN gets a NaN scale (max may drop NaNs; the sum keeps them).
                        dx = T.bind(T.Select(T.isfinite(total), amax * T.float32(1.0 / A.XQ_MAX), T.float32(math.nan)))
                        T.buffer_store(self.xs, dx, [at])
                        with T.serial(0, G // 32) as s:
                            k = g * G + 32 * s
                            v = [T.bind(x_vector(self.conv, x, m, k + 16 * i)) for i in range(2)]
                            q = [T.bind(T.Cast("int32x16", T.nearbyint(vi * bcast(inv, 16)))) for vi in v]
                            # xq = 256 xh + xl: xh = floor((xq + 128) / 256) in [-127, 127], xl in [-128, 127]
                            hi = [T.bind((qi + splat(128, "int32", 16)) >> splat(8, "int32", 16)) for qi in q]
                            lo = [qi - (hv << splat(8, "int32", 16)) for qi, hv in zip(q, hi)]
                            for part, vals in ((0, hi), (1, lo)):
                                q8 = T.Cast("int8x32", shuffle(vals, range(32)))
                                at_w = self._xrow(mt, part, k) + mi
                                T.buffer_store(self.xb, T.reinterpret("int32x8", q8), [T.Ramp(at_w, 16, 8)])
                            if self.mins:
                                sums = [q[0] + q[1]] if self.MG == 32 else q
                                for i, qs in enumerate(sums):
                                    ssum = T.Cast("float32", hsum(qs, 16)) * dx
                                    at_m = (mt * self.NM + k // self.MG + i) * 16 + mi
                                    T.buffer_store(self.xm, ssum, [at_m])
                    with T.Else():
                        T.buffer_store(self.xs, T.float32(0), [at])
                        with T.serial(0, G // 32) as s:
                            k = g * G + 32 * s
                            for part in range(2):
                                at_w = self._xrow(mt, part, k) + mi
                                T.buffer_store(self.xb, splat(0, "int32", 8), [T.Ramp(at_w, 16, 8)])
                            if self.mins:
                                for i in range(32 // self.MG):
                                    at_m = (mt * self.NM + k // self.MG + i) * 16 + mi
                                    T.buffer_store(self.xm, T.float32(0), [at_m])

    # -- weights --

    def tiles(self) -> None:
        over_chunks(self.CH, self.TPC, self.NT, self.cfg, self.tile)

    def tile(self, c, nt) -> None:
        self.pbase = c * self.psize
        self.sbase = c * self.NG * A.TILE
        self.mbase = c * self.NM * A.TILE
        self.cbase = c * 2 * 4 * 256
        # Unit by unit (a block, a super-block), 16 rows each: the panel fills in order. Row by row, each row's
        # stores would land 512 bytes apart, in 8 of the L1's 64 sets, and miss (measured: 1.25 ms of 4.7).
        decode = getattr(self, "decode_" + self.wtype)
        with T.serial(0, self.NG) as u:
            with T.serial(0, A.TILE) as r:
                decode(T.bind((nt * A.TILE + r) * self.RB), u, r)
        with T.serial(0, self.MT) as mt:
            # 16 f32 sums (one per weight row, lanes over x's rows) in an LLVM alloca, which it keeps in registers:
            # TVM turns allocations inside a parallel loop into runtime workspace calls, which it could not.
            mem = T.bind(T.tvm_stack_alloca("shape", 128))
            self.facc = [T.decl_buffer((16,), "float32", data=mem, elem_offset=16 * r) for r in range(16)]
            for r in range(16):
                vstore(self.facc[r], 0, splat(0.0, "float32", 16), 16)
            m0 = T.bind(self.m0 + mt * 16 if self.NBLK > 1 else mt * 16)  # the tile's first output row
            # the tile's 16 output lines (a column strip) arrive while its products run
            prefetch_outputs(self.bufs, m0, 16, nt * 16, 16, self.M)
            if self.super:
                _pipeline(self.NG, lambda u, s: self.super_products(u, mt, s), lambda u, s: self.super_scale(u, mt, s))
            else:
                _pipeline(self.NG, lambda g, s: self.block_products(g, mt, s), lambda g, s: self.block_scale(g, mt, s))
            # the sums are y^T (facc[r]: output column nt 16 + r over the tile's 16 rows): transposed in registers
            # into the tile's rows of 16 columns, each through the vector epilogue. One value at a time (a scalar
            # bias, activation and store each, 256 a tile), alone, 2 threads: the text encoder's 154 x 768 -> 3072
            # with quick_gelu 1.6-1.8x slower, the UNet's K 320 and 640 linears 1.05-1.14x.
            for i, v in enumerate(transpose16([vload(self.facc[r], 0, 16) for r in range(16)])):
                with T.If(m0 + i < self.M):
                    with T.Then():
                        store_output_vec(self.bufs, self.act, m0 + i, nt * 16, v)

    # -- decoding into the panel --

    def _block_store(self, g, r, quants, scale) -> None:
        vstore(self.panel, self.pbase + (g * A.TILE + r) * 32, quants, 32)
        T.buffer_store(self.wsc, scale, [self.sbase + g * A.TILE + r])

    def decode_q4_0(self, row, g, r) -> None:
        off = T.bind(row + g * 18)
        v = T.bind(vload(self.wu8, off + 2, 16))
        q = shuffle([v & splat(15, "uint8", 16), v >> splat(4, "uint8", 16)], range(32))
        self._block_store(g, r, T.reinterpret("int8x32", q) - splat(8, "int8", 32), f16_to_f32(self.w16[off // 2], 1))

    def decode_q8_0(self, row, g, r) -> None:
        off = T.bind(row + g * 34)
        self._block_store(g, r, vload(self.w8, off + 2, 32), f16_to_f32(self.w16[off // 2], 1))

    def _nibbles(self, at):
        """The 32 4-bit quants of a block's 16 bytes at ``at``: low nibbles (values 0-15), then high (16-31)."""
        v = T.bind(vload(self.wu8, at, 16))
        return shuffle([v & splat(15, "uint8", 16), v >> splat(4, "uint8", 16)], range(32))

    def _fifth_bits(self, at):
        """Bit j of the little-endian u32 at ``at`` as bit 4 of byte j (q5_0 / q5_1's high bits)."""
        qh = T.bind(
            T.Cast("uint32", self.wu8[at])
            | (T.Cast("uint32", self.wu8[at + 1]) << T.uint32(8))
            | (T.Cast("uint32", self.wu8[at + 2]) << T.uint32(16))
            | (T.Cast("uint32", self.wu8[at + 3]) << T.uint32(24))
        )
        bits = (bcast(qh, 32) >> vconst(range(32), "uint32")) & splat(1, "uint32", 32)
        return T.Cast("uint8x32", bits) << splat(4, "uint8", 32)

    def _block_min(self, g, r, m) -> None:
        T.buffer_store(self.wmin, m, [self.mbase + g * A.TILE + r])

    def _iq4(self, nibbles):
        """iq4_nl's codebook values (int8) of 32 4-bit indices: a byte shuffle within each 128-bit lane."""
        table = vconst(list(KVALUES_IQ4NL) * 2, "int8")
        return T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.pshuf.b", table, T.reinterpret("int8x32", nibbles))

    def decode_iq4_nl(self, row, g, r) -> None:
        off = T.bind(row + g * 18)
        self._block_store(g, r, self._iq4(self._nibbles(off + 2)), f16_to_f32(self.w16[off // 2], 1))

    def decode_iq4_xs(self, row, u, r) -> None:
        """d, 2 bytes of scale high bits, 4 bytes of scale low nibbles, 128 bytes of indices; 8 sub-blocks of 32 with
        6-bit scales ``ls - 32``."""
        base = T.bind(row + u * 136)
        T.buffer_store(self.wsc, f16_to_f32(self.w16[base // 2], 1), [self.sbase + u * A.TILE + r])
        sh = T.bind(T.Cast("int16", self.wu8[base + 2]) | (T.Cast("int16", self.wu8[base + 3]) << T.int16(8)))
        for j in range(8):
            low = (T.Cast("int16", self.wu8[base + 4 + j // 2]) >> T.int16(4 * (j % 2))) & T.int16(15)
            high = (sh >> T.int16(2 * j)) & T.int16(3)
            ls = T.bind((low | (high << T.int16(4))) - T.int16(32))
            q = T.Cast("int16x32", self._iq4(self._nibbles(base + 8 + 16 * j)))
            self._super_store(u, r, 32 * j, q * bcast(ls, 32))

    def decode_q5_0(self, row, g, r) -> None:
        off = T.bind(row + g * 22)
        q = T.reinterpret("int8x32", self._nibbles(off + 6) | self._fifth_bits(off + 2)) - splat(16, "int8", 32)
        self._block_store(g, r, q, f16_to_f32(self.w16[off // 2], 1))

    def decode_q4_1(self, row, g, r) -> None:
        off = T.bind(row + g * 20)
        self._block_store(g, r, T.reinterpret("int8x32", self._nibbles(off + 4)), f16_to_f32(self.w16[off // 2], 1))
        self._block_min(g, r, f16_to_f32(self.w16[off // 2 + 1], 1))

    def decode_q5_1(self, row, g, r) -> None:
        off = T.bind(row + g * 24)
        q = T.reinterpret("int8x32", self._nibbles(off + 8) | self._fifth_bits(off + 4))
        self._block_store(g, r, q, f16_to_f32(self.w16[off // 2], 1))
        self._block_min(g, r, f16_to_f32(self.w16[off // 2 + 1], 1))

    def _super_store(self, u, r, k, p) -> None:
        """P = sc * q (int16x32) for values k..k+31 of super-block u, row r: high bytes, then low bytes."""
        at = self.pbase + (u * A.TILE + r) * 256 + k
        vstore(self.panel, at, T.Cast("int8x32", p >> splat(8, "int16", 32)), 32)
        vstore(self.panel, at + A.TILE * self.K, T.Cast("int8x32", p & splat(255, "int16", 32)), 32)

    def decode_q4_k(self, row, u, r) -> None:
        self._decode_k45(row, u, r, 144, None)

    def decode_q5_k(self, row, u, r) -> None:
        self._decode_k45(row, u, r, 176, 16)

    def _decode_k45(self, row, u, r, size: int, qh_at: int | None) -> None:
        """q4_k (qh_at None) and q5_k: d, dmin, 12 bytes of 6-bit scales and mins, [q5_k: 32 bytes of fifth bits,]
        128 bytes of nibbles."""
        base = T.bind(row + u * size)
        T.buffer_store(self.wsc, f16_to_f32(self.w16[base // 2], 1), [self.sbase + u * A.TILE + r])
        dmin = T.bind(f16_to_f32(self.w16[base // 2 + 1], 1))

        def s(i):  # scale byte i (of 12)
            return T.Cast("int16", self.wu8[base + 4 + i])

        sc = []
        for j in range(8):  # ggml's get_scale_min_k4
            if j < 4:
                scj, mn = s(j) & T.int16(63), s(j + 4) & T.int16(63)
            else:
                scj = (s(j + 4) & T.int16(15)) | ((s(j - 4) >> T.int16(6)) << T.int16(4))
                mn = (s(j + 4) >> T.int16(4)) | ((s(j) >> T.int16(6)) << T.int16(4))
            sc.append(T.bind(scj))
            at = self.mbase + (u * 8 + j) * A.TILE + r
            T.buffer_store(self.wmin, -dmin * T.Cast("float32", mn), [at])
        qs = 16 if qh_at is None else 48
        if qh_at is not None:
            qh = T.bind(T.Cast("int16x32", vload(self.wu8, base + qh_at, 32)))
        for p in range(4):  # bytes 32p.. hold sub-block 2p in their low nibbles, 2p + 1 in their high ones
            v = T.bind(T.Cast("int16x32", vload(self.wu8, base + qs + 32 * p, 32)))
            lo, hi = v & splat(15, "int16", 32), v >> splat(4, "int16", 32)
            if qh_at is not None:  # q5_k: bit 2p (2p + 1) of qh byte l is the fifth bit of value l of 2p (2p + 1)
                lo = lo | (((qh >> splat(2 * p, "int16", 32)) & splat(1, "int16", 32)) << splat(4, "int16", 32))
                hi = hi | (((qh >> splat(2 * p + 1, "int16", 32)) & splat(1, "int16", 32)) << splat(4, "int16", 32))
            self._super_store(u, r, 64 * p, lo * bcast(sc[2 * p], 32))
            self._super_store(u, r, 64 * p + 32, hi * bcast(sc[2 * p + 1], 32))

    def decode_q2_k(self, row, u, r) -> None:
        """16 bytes of 4-bit scale and min pairs, 64 bytes of 2-bit quants, d, dmin; 16 sub-blocks of 16."""
        base = T.bind(row + u * 84)
        T.buffer_store(self.wsc, f16_to_f32(self.w16[(base + 80) // 2], 1), [self.sbase + u * A.TILE + r])
        dmin = T.bind(f16_to_f32(self.w16[(base + 82) // 2], 1))
        with T.serial(0, 16) as j:
            m = T.Cast("float32", self.wu8[base + j] >> T.uint8(4))
            T.buffer_store(self.wmin, -dmin * m, [self.mbase + (u * 16 + j) * A.TILE + r])
        sc = T.bind(T.Cast("int16x16", vload(self.wu8, base, 16)) & splat(15, "int16", 16))
        for n in range(2):
            qs = T.bind(T.Cast("int16x32", vload(self.wu8, base + 16 + 32 * n, 32)))
            for j in range(4):  # values 128 n + 32 j + l: bits 2j of byte l; sub-blocks 8n + 2j, 8n + 2j + 1
                q = (qs >> splat(2 * j, "int16", 32)) & splat(3, "int16", 32)
                s = 8 * n + 2 * j
                self._super_store(u, r, 128 * n + 32 * j, q * shuffle([sc, sc], [s] * 16 + [s + 1] * 16))

    def decode_q3_k(self, row, u, r) -> None:
        """32 bytes of high bits, 64 bytes of 2-bit quants, 12 bytes of packed 6-bit scales, d; 16 sub-blocks of 16,
        quants ``low - 4 * (1 - high)`` in [-4, 3], scales ``s - 32``."""
        base = T.bind(row + u * 110)
        T.buffer_store(self.wsc, f16_to_f32(self.w16[(base + 108) // 2], 1), [self.sbase + u * A.TILE + r])

        def b(i):
            return T.Cast("int16", self.wu8[base + 96 + i])

        scales = []
        for i in range(16):  # ggml's unpacking of the 12 bytes into 16 6-bit scales
            low = b(i % 8) & T.int16(15) if i < 8 else b(i - 8) >> T.int16(4)
            high = (b(8 + i % 4) >> T.int16(2 * (i // 4))) & T.int16(3)
            scales.append(T.bind((low | (high << T.int16(4))) - T.int16(32)))
        hm = T.bind(T.Cast("int16x32", vload(self.wu8, base, 32)))
        for n in range(2):
            qs = T.bind(T.Cast("int16x32", vload(self.wu8, base + 32 + 32 * n, 32)))
            for j in range(4):  # values 128 n + 32 j + l: bits 2j of qs byte l, bit 4n + j of hmask byte l
                low = (qs >> splat(2 * j, "int16", 32)) & splat(3, "int16", 32)
                high = (hm >> splat(4 * n + j, "int16", 32)) & splat(1, "int16", 32)
                q = low - splat(4, "int16", 32) + (high << splat(2, "int16", 32))
                s = 8 * n + 2 * j
                sv = shuffle([bcast(scales[s], 16), bcast(scales[s + 1], 16)], range(32))
                self._super_store(u, r, 128 * n + 32 * j, q * sv)

    def decode_q6_k(self, row, u, r) -> None:
        m15, m3 = splat(15, "uint8", 32), splat(3, "uint8", 32)
        base = T.bind(row + u * 210)
        T.buffer_store(self.wsc, f16_to_f32(self.w16[(base + 208) // 2], 1), [self.sbase + u * A.TILE + r])
        sc = T.bind(T.Cast("int16x16", vload(self.w8, base + 192, 16)))
        for h in range(2):
            lo = T.bind(vload(self.wu8, base + 64 * h, 32))
            hi = T.bind(vload(self.wu8, base + 64 * h + 32, 32))
            qh = T.bind(vload(self.wu8, base + 128 + 32 * h, 32))
            parts = [lo & m15, hi & m15, lo >> splat(4, "uint8", 32), hi >> splat(4, "uint8", 32)]
            for i, low in enumerate(parts):  # quants 128 h + 32 i + l: low bits, and qh bits 2i, 2i + 1
                top = (qh >> splat(2 * i, "uint8", 32)) & m3 if i else qh & m3
                q = T.Cast("int16x32", low | (top << splat(4, "uint8", 32))) - splat(32, "int16", 32)
                j = 8 * h + 2 * i  # 16-value sub-blocks j, j + 1
                self._super_store(u, r, 128 * h + 32 * i, q * shuffle([sc, sc], [j] * 16 + [j + 1] * 16))

    # -- the tile unit --

    def block_products(self, g, mt, reg) -> None:
        """Block g times x's row tile mt on tile register set ``reg``, into landing slot ``reg``."""
        at, bt, cts = (A0, B0, (C0, C1)) if reg == 0 else (A1, B1, (C2, C3))
        _amx("tileloadd64", _i8(at), T.address_of(self.panel[self.pbase + g * A.TILE * 32]), T.int64(32))
        for part in range(2):  # xh, xl
            _amx("tileloadd64", _i8(bt), T.address_of(self.xb[self._xrow(mt, part, g * 32)]), T.int64(64))
            _amx("tilezero", _i8(cts[part]))
            _amx("tdpbssd", _i8(cts[part]), _i8(at), _i8(bt))
            cb = self.cbase + (reg * 4 + part) * 256
            _amx("tilestored64", _i8(cts[part]), T.address_of(self.cbuf[cb]), T.int64(64))

    def block_scale(self, g, mt, reg) -> None:
        """Block g's sums from landing slot ``reg``, scaled, into the f32 sums."""
        cb = self.cbase + reg * 4 * 256
        xs = T.bind(vload(self.xs, (mt * self.NG + g) * 16, 16))
        if self.mins:
            xm = T.bind(vload(self.xm, (mt * self.NM + g) * 16, 16))
        for r in range(16):
            ch = vload(self.cbuf, cb + 16 * r, 16)
            cl = vload(self.cbuf, cb + 256 + 16 * r, 16)
            # sum(q * xq) = 256 sum(q * xh) + sum(q * xl), exact in int32 (|q xq| <= 128 * 32512 per term)
            t = T.Cast("float32x16", (ch << splat(8, "int32", 16)) + cl) * bcast(
                self.wsc[self.sbase + g * A.TILE + r], 16
            )
            v = vload(self.facc[r], 0, 16) + t * xs
            if self.mins:  # q4_1 / q5_1: + m * dx * sum(xq)
                v = v + xm * bcast(self.wmin[self.mbase + g * A.TILE + r], 16)
            vstore(self.facc[r], 0, v, 16)

    def super_products(self, u, mt, slot) -> None:
        """Super-block u times x's row tile mt: the HH, MID and LL sums, into landing slot ``slot``."""
        for t in (HH, MID, LL):
            _amx("tilezero", _i8(t))
        hpanel = self.pbase + u * A.TILE * 256
        for q in range(4):  # 64 values at a time
            k = u * 256 + 64 * q
            _amx("tileloadd64", _i8(AH), T.address_of(self.panel[hpanel + 64 * q]), T.int64(256))
            _amx("tileloadd64", _i8(AL), T.address_of(self.panel[hpanel + A.TILE * self.K + 64 * q]), T.int64(256))
            _amx("tileloadd64", _i8(BH), T.address_of(self.xb[self._xrow(mt, 0, k)]), T.int64(64))
            _amx("tileloadd64", _i8(BL), T.address_of(self.xb[self._xrow(mt, 1, k)]), T.int64(64))
            _amx("tdpbssd", _i8(HH), _i8(AH), _i8(BH))
            _amx("tdpbssd", _i8(MID), _i8(AH), _i8(BL))
            _amx("tdpbusd", _i8(MID), _i8(AL), _i8(BH))  # Pl is unsigned
            _amx("tdpbusd", _i8(LL), _i8(AL), _i8(BL))
        for i, t in enumerate((HH, MID, LL)):
            cb = self.cbase + (slot * 4 + i) * 256
            _amx("tilestored64", _i8(t), T.address_of(self.cbuf[cb]), T.int64(64))

    def super_scale(self, u, mt, slot) -> None:
        """Super-block u's sums from landing slot ``slot``: 65536 HH + 256 MID + LL (each exact in f32), times
        d * dx; q4_k subtracts its dmin * m * dx * sum(xq) per 32."""
        cb = self.cbase + slot * 4 * 256
        xs = T.bind(vload(self.xs, (mt * self.NG + u) * 16, 16))
        if self.mins:
            nj = 256 // self.MG
            xm = [T.bind(vload(self.xm, (mt * self.NM + u * nj + j) * 16, 16)) for j in range(nj)]
        for r in range(16):
            hh, mid, ll = (T.Cast("float32x16", vload(self.cbuf, cb + i * 256 + 16 * r, 16)) for i in range(3))
            t = hh * splat(65536.0, "float32", 16) + (mid * splat(256.0, "float32", 16) + ll)
            v = vload(self.facc[r], 0, 16) + t * bcast(self.wsc[self.sbase + u * A.TILE + r], 16) * xs
            if self.mins:
                for j in range(nj):
                    v = v + xm[j] * bcast(self.wmin[self.mbase + (u * nj + j) * A.TILE + r], 16)
            vstore(self.facc[r], 0, v, 16)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AMX GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _Gemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AMX loop nest."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "linear", "target_has", "target_has_amx"]
