"""CPU attention in f32 on AVX-512 or AVX2 FMAs (register tiles per ISA: ``TILES``): flash attention for
``attention`` with f32 products (``compile`` without ``--compute bf16``, and with it on CPUs without AMX-BF16, whose
tile unit ``cpu_attention_amx`` needs).

The layout and the online softmax are ``cpu_attention_amx``'s (its ``_Attention``): the work runs transposed, 16
queries in a vector's lanes, so that the softmax is plain vertical vector work; only the two products differ, here
register-blocked FMAs on f32 operands:

- **scores^T = K q^T**: per block of ``KEY_BLOCK`` keys, a register tile of ``KR`` keys x ``NQ`` query vectors
  (16 accumulators): for each channel d, NQ vectors of q^T[d] (packed per task) and one broadcast of k[key, d] per
  key (read in place where k is f32 and a head's key rows stay in L2, else from f32 rows packed once per call),
  KR x NQ FMAs; an unmasked block's max per query is taken from the accumulators on their way out;
- **softmax**: as ``cpu_attention_amx``, less its pass over the scores for the max where the products took it; its
  probabilities stay f32, written back over the scores;
- **o^T += V^T p^T**: a register tile of up to ``RD`` channels x NQ query vectors (24 accumulators), for each key
  NQ vectors of p^T[key] and one broadcast of v[key, d] per channel; the sums wait between blocks in the same
  [channel tile][query tile][16][16] buffer ``finish`` transposes into rows of o.

Numerics: every product and sum in f32, in order over channels (q.k) and keys (p.v) within a block; exp2 is
``cpu_attention_amx._exp2`` of degree 5 (relative error 1.6e-7). Keys are padded to 16 (packed: zero rows; in place:
the last key's row again), masked to probability exactly 0 and left out of p.v; queries to ``16 NQ`` with rows whose
outputs are not stored. Each task runs with denormals flushed to zero (``tir_build.flushing_denormals``): a score more
than 126 octaves below its query's max gives probability 0, not a denormal that costs a microcode assist (SD1.5's
1,024 tokens with q and k scaled by 6: 1,565 -> 22 ms), and a denormal input counts as 0.

Where the time goes (SD1.5's S = T = 1024, Dh 40, 2 threads, ``perf``): the two products' loops 78%, the softmax 12%
(its exp2 alone, about 10 vector operations per 16 scores beside 80 FMAs at Dh 40, is what bounds the kernel near
88% of the FMA peak), packing k and v 3%. Taking the max from the accumulators and reading f32 k and v in place gave
+1-6% at 1,024 and 4,096 tokens, +3-7% over 77 keys and +6-18% at 64 to 256 queries and the text encoder (two
alternating A/B runs in one process, SD1.5's shapes, AMX off): at 4,096 tokens, Dh 40, 287-294 GFLOP/s against an
f32 FMA peak of 393-413 measured between the runs (70-73%).

The row-at-a-time kernel this replaces (``cpu.attention``) keeps a query row's whole score row: at a UNet's 4,096
pixels each row's scores (16 KB) and the head's transposed keys leave L1 (SD1.5 512x512, B 2, 8 heads, S = T =
4096, Dh 40, one thread: 732 ms, 59 GFLOP/s). Even at the text encoder's 77 tokens (B 2, 12 heads of 64, causal;
then two query tiles, the second mostly padding) this kernel took 0.274 ms against its 0.486 (2 threads). Those 77
queries now run as one task of 5 query tiles (``NQ_SHORT``): 80 x 80 scores per head instead of 128 x 80, 0.335 ->
0.220 ms (Zen 4, 2 threads, alternating), and with bf16 products (``cpu_attention_dot``) 0.222 -> 0.152 ms. It stays the
rule below ``MIN_QUERIES`` queries.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import over_chunks
from schedules.cpu_attention_amx import L2_BYTES, MASKED, MAX_DH, _Attention, _row16, _transpose16
from schedules.cpu_fma import _fma, for_isa, target_isa
from schedules.tir_build import (
    prim_func,
    reduce_vectors,
    replace_body,
    sixteen_lanes,
    splat,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec

NQ = 4  # query vectors per task: 64 queries
KEY_BLOCK = 64  # keys per softmax block: scores 64 x 64 f32 (16 KB) stay in L1 beside q^T
# per ISA (``cpu_fma.target_isa``): KR keys per scores register tile and RD channels per p.v register tile, each
# by QT query vectors (None: all NQ of the task), and RD_SHORT for a prompt's 65 to 80 queries (CLIP's 77 tokens),
# which run in one task of 5 query vectors instead of two of 4, the second mostly padding (80 x 80 scores per head
# instead of 128 x 80). AVX-512: KR x NQ and RD x NQ accumulators, 16 to 24 of the 32 zmm (RD_SHORT x 5: 20).
# AVX2, where a 16-lane vector takes two of its 16 ymm: the query vectors one at a time, 4 keys (8 ymm of sums, 2 of
# q, 1 broadcast) and 6 channels (12 of sums, 2 of p, 1 broadcast)
TILES = {
    "avx512": {"KR": 4, "RD": 6, "RD_SHORT": 4, "QT": None},
    "avx2": {"KR": 4, "RD": 6, "RD_SHORT": 6, "QT": 1},
}
NQ_SHORT = NQ + 1
UNROLL = 2  # channel steps of q.k per loop iteration
MIN_QUERIES = 64  # fewer queries: the row kernel of ``cpu.attention`` (64 per task: fewer would be mostly padding)


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``attention`` without bf16 products on the tile unit (the caller tries that first), at least ``MIN_QUERIES``
    queries, heads of at most ``MAX_DH`` channels, on a CPU with AVX-512 or AVX2 and FMA (``cpu_fma.target_isa``)."""
    return (
        spec.op == "attention"
        and not spec.attr("tiled")
        and int(spec.attr("S")) >= MIN_QUERIES
        and int(spec.attr("Dh")) <= MAX_DH
        and sixteen_lanes(lanes)
        and target_isa() is not None
    )


class _AttentionFma(_Attention):
    NQ, KEY_BLOCK, KEY_STEP = NQ, KEY_BLOCK, 16  # keys padded to whole softmax steps
    EXP2 = 5  # the probabilities stay f32: the exp2 polynomial of f32 accuracy

    def __init__(self, spec: KernelSpec, bufs: dict):
        self.DP = 16 * -(-int(spec.attr("Dh")) // 16)  # channels per packed row of k, v and q^T
        self.QROWS = self.DP  # rows of a task's packed q^T: one per channel
        short = 16 * NQ < int(spec.attr("S")) <= 16 * NQ_SHORT
        tiles = for_isa(TILES)
        self.KR, self.QT = tiles["KR"], tiles["QT"]
        self.NQ, self.RD = (NQ_SHORT, tiles["RD_SHORT"]) if short else (NQ, tiles["RD"])
        super().__init__(spec, bufs)
        # f32 k and v are read where they are where the rows a head's keys lie in (every head's channels between
        # them) stay in L2 while the head's queries pass; 16-bit ones, or longer key ranges, are packed once per call
        # into rows (``prep``; at 4,096 keys, Dh 40, 8 heads, read in place took 10% longer; at 64 to 256 queries,
        # packed took 4-10% longer, the packing not amortised)
        span = self.T * self.H * self.Dh * 4
        self.direct = all(str(bufs[n].dtype) == "float32" for n in ("k", "v")) and span <= L2_BYTES

    def kv_bytes(self) -> int:
        """Every head's k and v rows (f32)."""
        return self.H * self.TP * 2 * self.DP * 4

    def build(self) -> None:
        BH = self.B * self.H
        if not self.direct:
            self.kf = T.alloc_buffer((BH * self.TP * self.DP,), "float32")  # k rows, f32, zeros past T
            self.vf = T.alloc_buffer((BH * self.TP * self.DP,), "float32")  # v rows, likewise
        self.qb = T.alloc_buffer((self.CH * self.DP * self.QB,), "float32")  # q^T: [channel][query]
        self.sb = T.alloc_buffer((self.CH * self.KB * self.QB,), "float32")  # scores, then p: [key][query]
        self.ob = T.alloc_buffer((self.CH * self.DC * self.NQ * 256,), "float32")  # o^T sums
        self.ml = T.alloc_buffer((self.CH * 2 * self.NQ * 16,), "float32")  # running max, then sum
        self.bm = T.alloc_buffer((self.CH * self.NQ * 16,), "float32")  # a block's max of raw scores per query
        if not self.direct:
            self.prep()
        over_chunks(self.CH, self.TPC, self.tasks, None, self.task, flush_denormals=True)  # as cpu_attention_amx

    def prep(self) -> None:
        """k and v as f32 rows of DP channels (16-bit activations widened once here, not per product)."""
        H, Dh, T_ = self.H, self.Dh, self.T
        with T.parallel(0, self.B * H * self.TP) as g:
            bh = T.bind(g // self.TP)
            j = T.bind(g % self.TP)
            row = (bh // H) * T_ + T.min(j, T_ - 1)
            col = (bh % H) * Dh
            for buf, src in ((self.kf, self.bufs["k"]), (self.vf, self.bufs["v"])):
                for ct in range(self.DC):
                    ld = T.bind(_row16(src, row, col + 16 * ct, min(16, Dh - 16 * ct)))  # bound: see cpu_attention_amx
                    vstore(
                        buf, g * self.DP + 16 * ct, T.Select(T.Broadcast(j < T_, 16), ld, splat(0.0, "float32", 16)), 16
                    )

    def kv(self, name: str, key, d):
        """Channel d of key ``key`` (< T: the caller clamps padded keys) of the task's head in k or v as f32, from
        the input or its packed row."""
        bh = self.bh
        if self.direct:
            row = (bh // self.H) * self.T + key
            return self.bufs[name][row, (bh % self.H) * self.Dh + d]
        return {"k": self.kf, "v": self.vf}[name][(bh * self.TP + key) * self.DP + d]

    def pack_q(self, c, bh, q0) -> None:
        """The task's queries transposed: q^T[d][query] (zeros for queries past S), 16 x 16 blocks through
        registers."""
        base = c * self.QROWS * self.QB
        with T.serial(0, self.NQ) as qt:
            for ct in range(self.DC):
                for e, v in enumerate(self.q_columns(bh, q0, qt, ct)):
                    vstore(self.qb, base + (16 * ct + e) * self.QB + 16 * qt, v, 16)

    def q_columns(self, bh, q0, qt, ct) -> list:
        """Channels 16 ct .. 16 ct + 15 of query tile qt (queries q0 + 16 qt on) of head bh: 16 vectors, each a
        channel of the 16 queries (zeros for queries past S and channels past Dh), transposed through registers."""
        q = self.bufs["q"]
        rows = []
        for n in range(16):
            i = q0 + 16 * qt + n
            row = (bh // self.H) * self.S + T.min(i, self.S - 1)
            ld = T.bind(_row16(q, row, (bh % self.H) * self.Dh + 16 * ct, min(16, self.Dh - 16 * ct)))
            rows.append(T.Select(T.Broadcast(i < self.S, 16), ld, splat(0.0, "float32", 16)))
        return _transpose16(rows, "float32")

    def block(self, key0, nkeys: int, masked: bool, q0, first: bool = False) -> None:
        """Keys key0 .. key0 + nkeys - 1 (nkeys a multiple of 16) against the task's 16 NQ queries."""
        c = self.c
        qbase, sbase = c * self.QROWS * self.QB, c * self.KB * self.QB
        obase = c * self.DC * self.NQ * 256
        nq = self.NQ
        # a tail block's keys past T: their probabilities are exactly 0 (p.v skips them), their scores masked
        real = min(nkeys, self.T - key0) if isinstance(key0, int) else nkeys

        # register tiles of KR keys x QT of the NQ query vectors, the query vectors' tiles one after another (on
        # AVX-512 one tile takes them all)
        qt_n = self.QT or nq
        acc = vector_regs(self.KR * qt_n)  # accumulators
        # an unmasked block's max of the raw scores per query vector, taken from the accumulators (no pass over the
        # stored scores for it); a masked block's leaves out the masked keys in the softmax's own pass
        bmx = None if masked else vector_regs(nq)
        if not masked:
            for j in range(nq):
                vstore(bmx, 16 * j, splat(MASKED, "float32", 16), 16)
        for j0 in range(0, nq, qt_n):
            qts = range(j0, min(nq, j0 + qt_n))
            with T.serial(0, nkeys // self.KR) as kg:
                for i in range(self.KR * len(qts)):
                    vstore(acc, 16 * i, splat(0.0, "float32", 16), 16)

                def step(d, kg=kg, qts=qts) -> None:
                    qv = [T.bind(vload(self.qb, qbase + d * self.QB + 16 * j, 16)) for j in qts]
                    for r in range(self.KR):
                        key = key0 + kg * self.KR + r
                        kv = self.k_operand(key if real == nkeys else T.min(key, self.T - 1), d)  # masked
                        for jj in range(len(qts)):
                            i = r * len(qts) + jj
                            vstore(acc, 16 * i, self.mac(vload(acc, 16 * i, 16), kv, qv[jj]), 16)

                steps = self.qk_steps()
                with T.serial(0, steps // UNROLL) as dd:
                    for u in range(UNROLL):
                        step(dd * UNROLL + u)
                for d in range(steps // UNROLL * UNROLL, steps):
                    step(d)
                for r in range(self.KR):
                    for jj, j in enumerate(qts):
                        at = sbase + (kg * self.KR + r) * self.QB + 16 * j
                        vstore(self.sb, at, vload(acc, 16 * (r * len(qts) + jj), 16), 16)
                if not masked:
                    for jj, j in enumerate(qts):
                        keys = [vload(acc, 16 * (r * len(qts) + jj), 16) for r in range(self.KR)]
                        vstore(bmx, 16 * j, reduce_vectors(keys + [vload(bmx, 16 * j, 16)], T.max), 16)
        raw_max = None
        if not masked:
            bm = c * nq * 16
            for j in range(nq):
                vstore(self.bm, bm + 16 * j, vload(bmx, 16 * j, 16), 16)
            raw_max = lambda qt: vload(self.bm, bm + 16 * qt, 16)  # noqa: E731
        self.softmax(key0, nkeys, masked, q0, first, raw_max)

        def products(d0, rd: int) -> None:  # channels d0 .. d0 + rd - 1 (rd <= self.RD) for every query
            acc = vector_regs(rd * qt_n)

            def at(e, qt):  # channel d0 + e, query tile qt in the o^T sums
                d = d0 + e
                return obase + ((d // 16) * nq + qt) * 256 + (d % 16) * 16

            for j0 in range(0, nq, qt_n):  # register tiles of rd channels x QT query vectors, one after another
                qts = range(j0, min(nq, j0 + qt_n))
                for e in range(rd):
                    for jj, qt in enumerate(qts):
                        init = splat(0.0, "float32", 16) if first else vload(self.ob, at(e, qt), 16)
                        vstore(acc, 16 * (e * len(qts) + jj), init, 16)
                with T.serial(0, self.pv_steps(real)) as j:
                    pv = [T.bind(self.p_operand(j, qt)) for qt in qts]
                    for e in range(rd):
                        vv = self.v_operand(key0, j, d0 + e)
                        for jj in range(len(qts)):
                            i = e * len(qts) + jj
                            vstore(acc, 16 * i, self.mac(vload(acc, 16 * i, 16), vv, pv[jj]), 16)
                for e in range(rd):
                    for jj, qt in enumerate(qts):
                        vstore(self.ob, at(e, qt), vload(acc, 16 * (e * len(qts) + jj), 16), 16)

        rd = self.RD
        if self.Dh // rd:
            with T.serial(0, self.Dh // rd) as g:
                products(g * rd, rd)
        if self.Dh % rd:
            products(self.Dh // rd * rd, self.Dh % rd)

    # -- the products' operands (``cpu_attention_dot`` takes them in bf16 pairs) --

    def qk_steps(self) -> int:
        """Steps of q.k: one per channel."""
        return self.Dh

    def k_operand(self, key, d):
        """k[key, d], broadcast to the 16 queries of a vector."""
        return T.Broadcast(self.kv("k", key, d), 16)

    def mac(self, acc, a, b):
        """acc + a b."""
        return _fma(a, b, acc)

    def pv_steps(self, real):
        """Steps of p.v over the block's ``real`` keys: one per key."""
        return real

    def p_operand(self, j, qt):
        """Probabilities of key j (of the block) for query tile qt."""
        return vload(self.sb, self.c * self.KB * self.QB + j * self.QB + 16 * qt, 16)

    def v_operand(self, key0, j, d):
        """v[key0 + j, d], broadcast."""
        return T.Broadcast(self.kv("v", key0 + j, d), 16)

    def store_probs(self, kt, qt, ps: list) -> None:
        """Probabilities stay f32, over their scores."""
        sbase = self.c * self.KB * self.QB
        for r in range(16):
            vstore(self.sb, sbase + (16 * kt + r) * self.QB + 16 * qt, ps[r], 16)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The f32 FMA attention PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _AttentionFma(spec, bufs).build())


def attention(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the FMA flash attention."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "attention", "build"]
