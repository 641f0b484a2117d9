"""CPU GEMM in bf16 on the vector unit (AVX512_BF16's ``vdpbf16ps``): ``linear`` and ``conv2d`` with float weights
(f32, f16, bf16) whose spec asks for bf16 products (``mma="bf16"``, ``compile --compute bf16``), on CPUs that have
AVX512_BF16 but no AMX-BF16 tile unit to run ``cpu_amx_bf16.py`` (AMD Zen 4 and Zen 5; Intel with
``SDCOMPILE_NO_AMX=1``).

``vdpbf16ps acc, a, b`` adds ``a[2i] b[2i] + a[2i+1] b[2i+1]`` to f32 lane i: 32 multiply-adds of bf16 operands
with f32 sums in one instruction, twice the f32 FMA rate on Zen 4 (half of it on Sapphire Rapids, whose AMX does
the job there). Results equal PyTorch's bf16 autocast: operands rounded to bf16 (nearest even), products summed in
f32.

Operands reach the instruction through ``vcvtne2ps2bf16``, which rounds two f32 vectors to one vector of 32 bf16
(nearest even; as on every bf16 path of this hardware, oneDNN's included, denormal inputs count as zero). It is
also the only way to hand LLVM a bf16 vector from TVM 0.27: TVM has no LLVM type for bf16 values (a reinterpret to
bfloat16 crashes its code generator, and its bf16 legalization turns bf16 call arguments into f32), while the
conversion intrinsic's declared result is LLVM's ``<32 x bfloat>``, which flows through a bound variable (and LLVM
shuffles) into ``vdpbf16ps`` as is. So both operands stay f32 in memory and are converted in registers where they
are used; a bf16 vector cannot be loaded, so the instruction never takes a memory operand.

Per call, in blocks of rows of x (``cpu_amx.row_blocks``: the prepared rows stay under 64 MiB, so a huge conv
never holds all its patches):

- **prep** (parallel over rows): x (a conv: its patches, gathered 16 channels at a time by ``cpu_amx.x_vector``,
  zeros outside the image) as f32 rows of K values padded with zeros to a multiple of 16; rows past M up to a whole
  row panel are zeros.
- **tiles** (parallel over (weight unit, range of row panels) tasks, 16 or more panels each, up to ``TASKS``): a
  task copies its unit of NB x 16 weight rows to f32 in a panel laid out as the instruction reads it, [K/2 pair
  steps][NB][16 outputs][2 values] (zeros past K), then, for each panel of MR rows of x, walks K in groups of 4
  pair steps with MR x NB f32 accumulators in registers. Per group and row, one conversion of its 8 values
  (broadcast to both halves, so every 128-bit lane holds the group's 4 pairs); per step NB weight vectors (two
  64-byte loads and one conversion each) and, per row, its pair broadcast by one in-lane shuffle, then MR x NB
  products. The sums leave the registers once, through the fused epilogue (bias, activation, residual, the
  output's storage type) on vectors of 16 consecutive outputs.

Register blocking: MR x NB accumulators (6 x 4 where N is a multiple of 64) plus NB weight vectors and a broadcast.
Per 4 steps that is 96 products against 16 + 6 conversions and 24 shuffles, which share the vector ports with the
products: measured on Sapphire Rapids (one thread, SDCOMPILE_NO_AMX), ~76 GFLOP/s on UNet shapes against ~119 for
``vdpbf16ps`` alone (64%); converting a broadcast pair per row and step instead (10 conversions per 24 products)
gave ~73. Where the weight panel lives (L1 or L2) made no difference. Requirements: N a multiple of 16; a conv's
channels in whole vectors of 16 (one tap per 16 patch values); K even.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import over_row_blocks, row_blocks, target_has, x_vector
from schedules.tir_build import (
    cvt_bf16x32,
    float_weight,
    load_f32,
    prim_func,
    replace_body,
    shuffle,
    splat,
    store_output_vec,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec, gemm_mnk

TYPES = ("f32", "f16", "bf16")  # weight types whose values bf16 holds after one rounding
# inputs rounded to bf16 (nearest even) before any other use: stored in bf16 by the producer, they give the same bits
# (``passes/round_early.py``)
ROUNDS_TO_BF16 = ("x",)
DOT = "llvm.x86.avx512bf16.dpbf16ps.512"  # (acc f32x16, a bf16x32, b bf16x32) -> acc + pairwise products
# rows of x per register block, by weight vectors per block (NB): MR x NB accumulators, NB weights, one broadcast
MR_BY_NB = {4: 6, 3: 8, 2: 12, 1: 16}
TASKS = 16  # parallel tasks to aim for: a few per thread, so uneven ones still balance
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
    return str(spec.attr("wtype")) in TYPES and N % 16 == 0 and K % 2 == 0 and target_has_bf16_dot()


def _cvt(hi, lo):
    """``tir_build.cvt_bf16x32``, bound: the bf16 vector flows through a variable into ``vdpbf16ps`` as is."""
    return T.bind(cvt_bf16x32(hi, lo))


def _dot(acc, a, b):
    return T.call_llvm_pure_intrin("float32x16", DOT, acc, a, b)


class _DotGemm:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.M, self.N, self.K = gemm_mnk(spec)
        self.wtype = str(spec.attr("wtype"))
        self.act = str(spec.attr("act", "none"))
        self.conv = dict(spec.attrs) if spec.op == "conv2d" else None
        self.KV = -(-self.K // 16)  # 16-value vectors per row of x (the last one zero-padded)
        self.KR = 16 * self.KV  # prepared row length
        self.KP = self.K // 2  # pair steps
        NT = self.N // 16
        self.NB = next(nb for nb in (4, 3, 2, 1) if NT % nb == 0)
        self.MR = MR_BY_NB[self.NB]
        self.NU = NT // self.NB  # weight units
        self.MB, self.NBLK = row_blocks(self.M, 4 * self.KR, align=self.MR)
        self.MP = self.MB // self.MR  # row panels per block
        # each unit's row panels split into MS ranges, so that the tasks fill the thread pool; a task re-copies its
        # weight unit (N_unit x K) for its MP / MS panels (MR MP / MS x N_unit x K products)
        self.MS = max(1, min(self.MP // MIN_PANELS, -(-TASKS // self.NU)))
        self.PPT = -(-self.MP // self.MS)  # row panels per task
        self.MS = -(-self.MP // self.PPT)

    def build(self) -> None:
        w = self.bufs["w"]
        words = w.shape[0]
        self.wf = T.decl_buffer((words,), "float32", data=w.data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=w.data)
        self.xb = T.alloc_buffer((self.MB * self.KR,), "float32")

        def block(m0) -> None:
            self.m0 = m0  # the block's first row of x
            self.prep()
            self.tiles()

        over_row_blocks(self.NBLK, self.MB, block)

    # -- activations --

    def _row(self, ml):
        return T.bind(self.m0 + ml) if self.NBLK > 1 else ml

    def prep(self) -> None:
        x = self.bufs["x"]
        with T.parallel(0, self.MB) as ml:
            m = self._row(ml)
            with T.serial(0, self.KV) as v:
                at = ml * self.KR + 16 * v
                with T.If(m < self.M):
                    with T.Then():
                        if self.conv is not None or self.K % 16 == 0:
                            vstore(self.xb, at, x_vector(self.conv, x, m, 16 * v), 16)
                        else:  # a linear's K need not be a multiple of 16: the last vector lane by lane
                            with T.If(v < self.KV - 1):
                                with T.Then():
                                    vstore(self.xb, at, x_vector(None, x, m, 16 * v), 16)
                                with T.Else():
                                    self._tail(x, m, at)
                    with T.Else():
                        vstore(self.xb, at, splat(0.0, "float32", 16), 16)

    def _tail(self, x, m, at) -> None:
        """x[m, K - K % 16:] then zeros, at ``at``."""
        k0 = 16 * (self.KV - 1)
        for i in range(16):
            v = load_f32(x, [m, k0 + i]) if k0 + i < self.K else T.float32(0)
            T.buffer_store(self.xb, v, [at + i])

    # -- weights --

    def _wvec(self, row, k, lanes: int):
        """W[row, k:k+lanes] as f32 from the weight's storage words."""
        return float_weight(self.wtype, self.wf, self.w16, row * self.K + k, lanes)

    def pack(self, panel, u) -> None:
        """The unit's weight rows into ``panel``: step p, vector j, output r holds W[row, 2p], W[row, 2p + 1] at
        ((p NB + j) 16 + r) 2, row = 16 (NB u + j) + r; zeros past K."""
        nb = self.NB
        with T.serial(0, nb * 16) as jr:
            row = u * nb * 16 + jr
            if self.K // 16:
                with T.serial(0, self.K // 16) as v:  # 16 values at a time: 8 steps
                    w = T.bind(self._wvec(row, 16 * v, 16))
                    for i in range(8):
                        vstore(panel, ((8 * v + i) * nb * 16 + jr) * 2, shuffle([w], [2 * i, 2 * i + 1]), 2)
            for p in range(self.K // 16 * 8, self.KR // 2):  # the last, partial vector: pair by pair
                at = (p * nb * 16 + jr) * 2
                vstore(panel, at, self._wvec(row, 2 * p, 2) if p < self.KP else splat(0.0, "float32", 2), 2)

    # -- products --

    def tiles(self) -> None:
        with T.parallel(0, self.NU * self.MS) as task:
            u = T.bind(task // self.MS)
            panel = T.alloc_buffer((self.KR // 2 * self.NB * 32,), "float32")
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
        self.steps(panel, mp, acc)
        for r in range(mr):
            m = self.m0 + mp * mr + r if self.NBLK > 1 else mp * mr + r
            with T.If(m < self.M):
                with T.Then():
                    for j in range(nb):
                        store_output_vec(self.bufs, self.act, m, (u * nb + j) * 16, vload(acc, 16 * (r * nb + j), 16))

    def _weights(self, panel, p) -> list:
        """The NB weight vectors of pair step p, as bf16."""
        at = [(p * self.NB + j) * 32 for j in range(self.NB)]
        return [_cvt(vload(panel, a + 16, 16), vload(panel, a, 16)) for a in at]

    def _products(self, acc, r, xv, wv) -> None:
        for j, w in enumerate(wv):
            i = r * self.NB + j
            vstore(acc, 16 * i, _dot(vload(acc, 16 * i, 16), xv, w), 16)

    def steps(self, panel, mp, acc) -> None:
        """K in groups of 4 pair steps: per row, its 8 values of the group broadcast to both 256-bit halves and
        converted once (each 128-bit lane then holds the 4 pairs), and per step a pair broadcast by an in-lane
        dword shuffle (``vpermilps``; LLVM spills the rows' vectors and shuffles from memory, a load it has ports
        for). Against converting a broadcast pair per row and step, that is a quarter of the x conversions."""
        mr = self.MR
        with T.serial(0, self.KR // 8) as g:
            xr = []
            for r in range(mr):
                v8 = vload(self.xb, (mp * mr + r) * self.KR + 8 * g, 8)
                a = shuffle([v8, v8], range(16))
                xr.append(_cvt(a, a))
            for st in range(4):
                wv = self._weights(panel, 4 * g + st)
                # bf16 element e of 128-bit lane L: pair st of the lane (the same in every lane)
                idx = [lane * 8 + 2 * st + e % 2 for lane in range(4) for e in range(8)]
                for r in range(mr):
                    self._products(acc, r, T.bind(shuffle([xr[r]], idx)), wv)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AVX512_BF16 GEMM PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _DotGemm(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AVX512_BF16 loop nest."""
    replace_body(sch, spec, build)


__all__ = ["ROUNDS_TO_BF16", "TYPES", "applicable", "build", "linear", "target_has_bf16_dot"]
