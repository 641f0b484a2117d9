"""CPU GEMM in bf16 on the vector unit (AVX512_BF16's ``vdpbf16ps``): ``linear`` and ``conv2d`` with float weights
(f32, f16, bf16) whose spec asks for bf16 products (``mma="bf16"``, ``compile --compute bf16``), on CPUs that have
AVX512_BF16 but no AMX-BF16 tile unit to run ``cpu_amx_bf16.py`` (AMD Zen 4 and Zen 5; Intel with
``SDCOMPILE_NO_AMX=1``).

``vdpbf16ps acc, a, b`` adds ``a[2i] b[2i] + a[2i+1] b[2i+1]`` to f32 lane i: 32 multiply-adds of bf16 operands
with f32 sums in one instruction, twice the f32 FMA rate on Zen 4 (half of it on Sapphire Rapids, whose AMX does
the job there). Results equal PyTorch's bf16 autocast: operands rounded to bf16 (nearest even), products summed in
f32.

Operands are rounded by ``vcvtne2ps2bf16`` (two f32 vectors to 32 bf16, nearest even; as on every bf16 path of
this hardware, oneDNN's included, denormal inputs count as zero) and kept in memory as bf16 pair words, f32x16-typed
(``tir_build.bf16_words``): TVM 0.27 has no LLVM type for bf16 values (an int16x32 load handed to the intrinsic
fails LLVM's verifier; a reinterpret to bfloat16 crashes its code generator), so two always-inlined LLVM functions
imported into the module (``tir_build.BF16_WORDS_LLVM``) do the bitcasts. A broadcast word then folds into the
instruction's memory operand (``vdpbf16ps (mem){1to16}``).

Per call, in blocks of rows of x (``cpu_amx.row_blocks``: the prepared rows stay under 64 MiB, so a huge conv
never holds all its patches):

- **prep** (parallel over rows): x (a conv: its patches, gathered 16 channels at a time by ``cpu_amx.x_vector``,
  zeros outside the image) as rows of bf16 pair words, K padded with zeros to a multiple of 32 (one conversion per
  32 values); rows past M up to a whole row panel are zeros.
- **tiles** (parallel over (weight unit, range of row panels) tasks, 16 or more panels each, up to ``TASKS``): a
  task packs its unit of NB x 16 weight rows as pair words in a panel laid out as the instruction reads it, [K/2
  pair steps][NB][16 outputs] (zeros past K): per 16 rows and 32 values one conversion per row, then a 16 x 16
  register transpose into the 16 steps. Then, for each panel of MR rows of x, per pair step: NB weight vectors and,
  per row, its pair word broadcast from memory into MR x NB products, nothing else. The sums leave the registers
  once, through the fused epilogue (bias, activation, residual, the output's storage type) on vectors of 16
  consecutive outputs.

Weights stored packed (``wlayout="amx_bf16"``, ``passes/pack_weights.py``; K a multiple of 32): the tile unit's
B operands are, group by group of 16 weight rows, this kernel's weight vectors in pair-step order, so a unit's NB
vectors are read in place from NB such groups and no task packs anything. Per call the packing (a conversion per
32 values and a 16 x 16 transpose, every weight read from memory) weighs most where x has few rows: AMD Zen 4,
2 threads, weights read from memory, a conv 3x3 over 4x4 pixels, 1280 channels, batch 2 (M 32) 4.24 -> 3.09 ms, the
text encoder's fc1 2.00 -> 1.76, 128 x 1280 -> 10240 8.68 -> 7.83; the guided UNet at 256x256 with f16 weights
1.046 -> 0.946 s (min of 8, alternating), its output the same bits.

Register blocking: MR x NB accumulators (6 x 4 where N is a multiple of 64; 8 x 2 for x of few rows,
``register_block``) plus NB weight vectors. Measured on AMD Zen 4 (2 threads, f16 weights): 358-420 GFLOP/s on
SD1.5's shapes against a vdpbf16ps peak of 455-466; the kernel this replaced converted both operands in its loop (two
64-byte loads and a conversion per weight vector, a shuffle per row and step) and ran 1.16-1.58x slower (a conv 3x3
over 8x8 pixels, 1280 channels: 16.7 -> 10.6 ms).
Requirements: N a multiple of 16; a conv's channels in whole vectors of 16 (one tap per 16 patch values); K even.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import over_row_blocks, row_blocks, target_has, x_vector
from schedules.tir_build import (
    bcast,
    bf16_words,
    dot_bf16_words,
    float_weight,
    importing_bf16_words,
    load_f32,
    prefetch_outputs,
    prim_func,
    replace_body,
    splat,
    store_output_vec,
    transpose16,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels import layouts
from sdcompile.kernels.spec import KernelSpec, gemm_mnk

TYPES = ("f32", "f16", "bf16")  # weight types whose values bf16 holds after one rounding
# inputs rounded to bf16 (nearest even) before any other use: stored in bf16 by the producer, they give the same bits
# (``passes/round_early.py``)
ROUNDS_TO_BF16 = ("x",)
# rows of x per register block, by weight vectors per block (NB): MR x NB accumulators, NB weights, one broadcast
MR_BY_NB = {4: 6, 3: 8, 2: 12, 1: 16}
TASKS = 16  # parallel tasks to aim for: a few per thread, so uneven ones still balance
FEW_ROWS = 128  # x with at most this many rows, in whole 8-row panels, takes 8 x 2 register blocks (``register_block``)
MIN_PANELS = 16  # row panels per task at least: each task copies its weight unit, once per MR x 16 rows or more


def target_has_bf16_dot() -> bool:
    """Whether the target being built for (or this host's, ``tvm_layer.cpu_target``) has AVX512_BF16."""
    return target_has("avx512bf16")


def applicable(spec: KernelSpec, lanes: int, host_dot: bool) -> bool:
    """``linear`` or ``conv2d`` asking for bf16 products, with float weights, N in whole vectors, K even (a conv:
    channels in whole vectors), on a host with AVX512_BF16 whose tile unit does not take the job (``host_dot``)."""
    if spec.attr("mma") != "bf16" or spec.op not in ("linear", "conv2d") or not host_dot or lanes != 16:
        return False
    if spec.op == "conv2d" and int(spec.attr("C")) % 16:
        return False
    _, N, K = gemm_mnk(spec)
    layout = spec.attr("wlayout")
    if layout and (layout != layouts.AMX_BF16 or spec.attr("wtype") != "bf16" or K % 32):
        return False  # of the stored layouts it reads the tile unit's bf16 operands only
    return str(spec.attr("wtype")) in TYPES and N % 16 == 0 and K % 2 == 0 and target_has_bf16_dot()


def register_block(M: int, NT: int) -> tuple[int, int]:
    """(NB, MR) for M rows of x and NT weight vectors: NB vectors per unit (the most of 4, 3, 2, 1 dividing NT) and
    ``MR_BY_NB``'s rows; 8 x 2 where x has few rows (``FEW_ROWS``), all in 8-row panels: there each row panel reads
    its unit's weights again from L2 or beyond, and 8 x 2 reads a weight vector per 8 products (6 x 4: per 6) and
    pads no rows (M 32 in 6-row panels: 36). AMD Zen 4, 2 threads, weights read from memory, alternating: SD1.5's
    convs over 4x4 pixels (M 32, K 11,520 and 23,040) 2.71 -> 2.27 ms and 5.37 -> 4.35 ms (74-76% -> 88-93% of the
    ``vdpbf16ps`` peak), its 8x8 level's linears and 1x1 convs (M 128) 2-4% faster; with more rows (M 154 to 2,048)
    6 x 4 is as fast or up to 4% faster. In the model (``bench --profile``) the 4x4-pixel convs 352-360 -> 398-406
    GFLOP/s, the M 128 linears and 1x1 convs 1-6% faster; the guided UNet at 256x256 with bf16 products 797-807 ->
    785-798 ms (medians of 4 alternating rounds)."""
    if M <= FEW_ROWS and M % 8 == 0 and NT % 2 == 0:
        return 2, 8
    nb = next(nb for nb in (4, 3, 2, 1) if NT % nb == 0)
    return nb, MR_BY_NB[nb]


class _DotGemm:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.M, self.N, self.K = gemm_mnk(spec)
        self.wtype = str(spec.attr("wtype"))
        self.act = str(spec.attr("act", "none"))
        self.conv = dict(spec.attrs) if spec.op == "conv2d" else None
        self.KV = -(-self.K // 16)  # 16-value vectors of x per row holding values (the last one zero-padded)
        self.KR = 32 * -(-self.K // 32)  # prepared row length: whole conversions of 32 values
        self.KW = self.KR // 2  # bf16 pair words per prepared row: the pair steps
        NT = self.N // 16
        self.NB, self.MR = register_block(self.M, NT)
        self.NU = NT // self.NB  # weight units
        self.MB, self.NBLK = row_blocks(self.M, 2 * self.KR, align=self.MR)
        self.MP = self.MB // self.MR  # row panels per block
        # each unit's row panels split into MS ranges, so that the tasks fill the thread pool; a task re-packs its
        # weight unit (N_unit x K) for its MP / MS panels (MR MP / MS x N_unit x K products)
        self.MS = max(1, min(self.MP // MIN_PANELS, -(-TASKS // self.NU)))
        self.PPT = -(-self.MP // self.MS)  # row panels per task
        self.MS = -(-self.MP // self.PPT)
        # weights stored as the tile unit's B operands (``layouts.AMX_BF16``, ``passes/pack_weights.py``): each
        # group of 16 weight rows is its pair steps in order, [K/2][16] words, which is this kernel's panel for one
        # weight vector: the unit's NB vectors are read in place from NB groups, nothing is packed per call
        self.packed = spec.attr("wlayout") == layouts.AMX_BF16

    def build(self) -> None:
        w = self.bufs["w"]
        words = w.shape[0]
        self.wf = T.decl_buffer((words,), "float32", data=w.data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=w.data)
        self.xw = T.alloc_buffer((self.MB * self.KW,), "float32")  # x's rows as bf16 pair words

        def block(m0) -> None:
            self.m0 = m0  # the block's first row of x
            self.prep()
            self.tiles()

        with importing_bf16_words():
            over_row_blocks(self.NBLK, self.MB, block)

    # -- activations --

    def _row(self, ml):
        return T.bind(self.m0 + ml) if self.NBLK > 1 else ml

    def prep(self) -> None:
        """Each row of x as bf16 pair words, 32 values per conversion, zeros past K (and in rows past M)."""
        with T.parallel(0, self.MB) as ml:
            m = self._row(ml)
            v32 = vector_regs(2)
            with T.serial(0, self.KW // 16) as g:
                for h in range(2):
                    self._vector(m, 2 * g + h, v32, 16 * h)
                vstore(self.xw, ml * self.KW + 16 * g, bf16_words(vload(v32, 16, 16), vload(v32, 0, 16)), 16)

    def _vector(self, m, v, dst, at) -> None:
        """x[m, 16 v : 16 v + 16] as f32 into dst[at:], zeros past K and for rows past M."""
        x = self.bufs["x"]

        def values() -> None:
            if self.conv is not None or self.K % 16 == 0:
                vstore(dst, at, x_vector(self.conv, x, m, 16 * v), 16)
            else:  # a linear's K need not be a multiple of 16: the last vector lane by lane
                with T.If(v < self.KV - 1):
                    with T.Then():
                        vstore(dst, at, x_vector(None, x, m, 16 * v), 16)
                    with T.Else():
                        self._tail(x, m, dst, at)

        zeros = splat(0.0, "float32", 16)
        padded = self.KR // 16 > self.KV  # one vector past the values, whole zeros
        with T.If(tirx.all(m < self.M, v < self.KV) if padded else m < self.M):
            with T.Then():
                values()
            with T.Else():
                vstore(dst, at, zeros, 16)

    def _tail(self, x, m, dst, at) -> None:
        """x[m, K - K % 16:] then zeros, into dst[at:]."""
        k0 = 16 * (self.KV - 1)
        for i in range(16):
            v = load_f32(x, [m, k0 + i]) if k0 + i < self.K else T.float32(0)
            T.buffer_store(dst, v, [at + i])

    # -- weights --

    def _wvec(self, row, k, lanes: int):
        """W[row, k:k+lanes] as f32 from the weight's storage words."""
        return float_weight(self.wtype, self.wf, self.w16, row * self.K + k, lanes)

    def pack(self, panel, u) -> None:
        """The unit's weight rows into ``panel`` as bf16 pair words: step p, vector j, output r holds W[row, 2p],
        W[row, 2p + 1] at (p NB + j) 16 + r, row = 16 (NB u + j) + r; zeros past K. Per 16 rows and 32 values:
        one conversion per row (its 16 pair words), then a 16 x 16 register transpose into the 16 steps."""
        nb, full = self.NB, self.K // 32
        for j in range(nb):
            rows = [u * nb * 16 + 16 * j + r for r in range(16)]
            if full:
                with T.serial(0, full) as kb:
                    words = [
                        T.bind(bf16_words(self._wvec(row, 32 * kb + 16, 16), self._wvec(row, 32 * kb, 16)))
                        for row in rows
                    ]
                    self._store_steps(panel, j, 16 * kb, words)
            if self.K % 32:  # the last, partial 32 values: through a zero-padded row, value by value
                v32 = vector_regs(2)
                words = []
                for row in rows:
                    for i in range(32):
                        k = 32 * full + i
                        T.buffer_store(v32, self._wvec(row, k, 1) if k < self.K else T.float32(0), [i])
                    words.append(T.bind(bf16_words(vload(v32, 16, 16), vload(v32, 0, 16))))
                self._store_steps(panel, j, 16 * full, words)

    def _store_steps(self, panel, j, p0, words) -> None:
        """16 rows' pair words of steps p0..p0+15 (one vector per row) into the panel: transposed, one per step."""
        for t, col in enumerate(transpose16(words)):
            vstore(panel, ((p0 + t) * self.NB + j) * 16, col, 16)

    # -- products --

    def tiles(self) -> None:
        with T.parallel(0, self.NU * self.MS) as task:
            u = T.bind(task // self.MS)
            if self.packed:
                panel = self.wf
            else:
                panel = T.alloc_buffer((self.KW * self.NB * 16,), "float32")
                self.pack(panel, u)
            with T.serial(0, self.PPT) as t:
                mp = T.bind((task % self.MS) * self.PPT + t)
                with T.If(mp < self.MP):
                    with T.Then():
                        self.panel_products(panel, u, mp)

    def panel_products(self, panel, u, mp) -> None:
        nb, mr = self.NB, self.MR
        acc = vector_regs(mr * nb)  # the MR x NB accumulators
        for i in range(mr * nb):
            vstore(acc, 16 * i, splat(0.0, "float32", 16), 16)
        m0 = self.m0 + mp * mr if self.NBLK > 1 else mp * mr
        # the panel's strip of y (and of the residual) arrives while its products run: its rows lie a full row apart,
        # which the hardware prefetchers do not follow
        prefetch_outputs(self.bufs, m0, mr, u * nb * 16, nb * 16, self.M)
        self.steps(panel, mp, acc, u)
        for r in range(mr):
            m = m0 + r
            with T.If(m < self.M):
                with T.Then():
                    for j in range(nb):
                        store_output_vec(self.bufs, self.act, m, (u * nb + j) * 16, vload(acc, 16 * (r * nb + j), 16))

    def panel_at(self, u, p, j):
        """Where weight vector j of unit u's pair step p lies: in the per-call panel, [K/2][NB][16]; stored packed,
        in 16-row group NB u + j of the weights, [K/2][16] words each."""
        if self.packed:
            return ((u * self.NB + j) * self.KW + p) * 16
        return (p * self.NB + j) * 16

    def steps(self, panel, mp, acc, u) -> None:
        """Per pair step: the NB weight vectors of the panel, and per row its pair word broadcast straight from
        memory into each product (``vdpbf16ps (mem){1to16}``): MR x NB products against NB loads, no conversion
        and no shuffle (4 steps per loop iteration)."""
        mr, nb = self.MR, self.NB
        with T.serial(0, self.KW // 4) as g:
            for st in range(4):
                p = 4 * g + st
                wv = [T.bind(vload(panel, self.panel_at(u, p, j), 16)) for j in range(nb)]
                for r in range(mr):
                    xv = bcast(self.xw[(mp * mr + r) * self.KW + p], 16)
                    for j, w in enumerate(wv):
                        i = r * nb + j
                        vstore(acc, 16 * i, dot_bf16_words(vload(acc, 16 * i, 16), xv, w), 16)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AVX512_BF16 GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _DotGemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AVX512_BF16 loop nest."""
    replace_body(sch, spec, build)


__all__ = ["ROUNDS_TO_BF16", "TYPES", "applicable", "build", "linear", "target_has_bf16_dot"]
