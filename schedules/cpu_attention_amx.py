"""CPU attention on the AMX tile unit in bf16 (``TDPBF16PS``): flash attention for ``attention`` specs that ask for
bf16 products (``mma="bf16"``, set by ``compile --compute bf16``, ``passes/mma.py``).

Numerics, as PyTorch's bf16 flash attention on the CPU: q, k and v are rounded to bf16 (nearest even), q.k sums in
f32 inside the unit, the scores are scaled by Dh^-0.5 in f32, the softmax runs in f32 with a running max and sum
(the online softmax of ``kernels/attention_tiled.py``; here in units of log2, the scale times log2(e) applied to
the scores, so that the exponential is a power of two), its probabilities (unnormalised, each <= 1) are rounded to
bf16 for p.v, which sums in f32 again; the output is divided by the running sum (of the unrounded probabilities)
in f32 and stored in o's dtype. A NaN in q or k makes the rows' sums NaN, a NaN in v the products: the outputs
where exact arithmetic gives NaN are NaN. Denormals are flushed to zero in each task (``tir_build.flushing_denormals``;
the tile unit flushes its own inputs anyway): with logits spread over many octaves every underflowing exp2 otherwise
cost a microcode assist (SD1.5's 1,024 tokens, q and k scaled by 6: 83 -> 6.5 ms).

The work is laid out transposed, so that every softmax step is a plain vector operation over 16 queries, with no
horizontal reductions or broadcasts: per block of 32 queries (two tiles of 16) and block of keys,

- **scores^T = K q^T**: A operands are 16 keys x 32 channels of k (bf16 rows, packed once per call in the prep),
  B operands 16 channel pairs x 16 queries of q (packed per query block); a 16 x 16 f32 tile holds 16 keys (rows)
  by 16 queries (lanes) and leaves the unit into a [keys][32 queries] buffer;
- **softmax**: each row of that buffer is a vector of 16 queries: the block's max is a vertical max over its
  keys, the running max, sum and rescale factor are 16-lane vectors; probabilities of two consecutive keys are
  rounded to bf16 and interleaved into one row of 16 words, which is exactly a row of the B operand of
- **o^T += V^T p^T**: A operands are 16 channels x 32 keys of v^T (packed once per call, transposed), the f32 sums
  16 channels x 16 queries, kept in a per-task buffer, rescaled by the softmax's factor before each block's
  products are added on the unit (loaded into the accumulator tiles, stored back after).

Padding: channels to 32 (q.k's K dimension: 40 -> 64, 80 -> 96) and to 16 (v^T's rows) with zeros; keys to 32 (a
step of p.v) with zero rows of k and v, masked to probability exactly 0 (``MASKED`` as their score); queries to 32
with zero rows whose outputs are not stored. Every load of q, k and v is of the real
values only (partial vectors at a head's end), so nothing outside the buffers is read. With ``causal``, keys after
the query are masked as well (every query keeps key 0, so the running max is finite from the first block on).

Parallel tasks are (image, head, block of 32 queries), in ``MAX_CHUNKS`` chunks of consecutive tasks, each with its
own buffers (``cpu_amx.over_chunks``); a chunk walks one head's queries, so that head's packed k and v stay in L2
(or, where every head's fit there, one block of queries' heads in turn: see ``heads_inner``).

Measured (one thread, CPU time, a shared 2-core Sapphire Rapids; B 2, 8 heads): S = T = 4096, Dh 40: 124 ms
(346 GFLOP/s; the f32 kernel 732 ms, PyTorch's bf16 SDPA 194 ms); the softmax's vector work (an exp2, a bf16
rounding, a max and a sum per score) takes about half of it, q.k and p.v on the unit a fifth each. The softmax's
exp2 then lost two vector operations per 16 scores (``vreduceps`` for the fraction instead of a rounding and a
subtraction; a degree-4 polynomial, its error 1/1,300 of the bf16 rounding that follows) and the bf16 rounding and
interleaving of the probabilities nine (one ``vcvtne2ps2bf16`` and one ``vpermw`` per 32, against integer rounding
and masking): the UNet's 4,096-token self-attention (SD1.5 at 512x512, guided) went from 263.7 to 188.9 ms per
evaluation in the model (5 calls, 2 threads), the UNet evaluation from 1.42 to 1.26 s with the weights' packing.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import _amx, _i8, chunking, over_chunks, target_has, tile_config, with_tile_state
from schedules.cpu_amx_bf16 import _bf16_pairs
from schedules.tir_build import (
    cvt_bf16x32,
    load_f32,
    narrow_to,
    prim_func,
    reduce_tree,
    reduce_vectors,
    replace_body,
    shuffle,
    splat,
    vload,
    vstore,
)
from sdcompile.kernels.act import bf16_bits
from sdcompile.kernels.spec import KernelSpec

# Query tiles of 16 per task (even: the products run on pairs) and keys per softmax block (a multiple of 32): the
# block's scores, probabilities and o^T sums stay in L1 (at 160 channels: 16 + 8 + 20 KB); more keys per block
# amortise the o^T sums' trips through the tile registers. Measured at SD1.5's shapes, one thread: 4 or 8 query
# tiles, or 64 or 256 keys, within 10% of this and mostly slower (a shared machine: differences near the noise).
NQ = 2
KEY_BLOCK = 128
L2_BYTES = 2 << 20  # per core (Sapphire Rapids)
MAX_DH = 512  # channels per head held in a task's o^T buffer (a VAE's single head of 512)
# inputs rounded to bf16 (nearest even) before any other use: stored in bf16 by the producer, they give the same bits
# (``passes/round_early.py``)
ROUNDS_TO_BF16 = ("q", "k", "v")
A0, A1, B0, B1, C0, C1, C2, C3 = range(8)
LOG2E = 1.4426950408889634
# The score of a masked key, and the running max before any key (in log2 units): a finite power of two so that
# y - round(y) stays 0 and 2^(MASKED - max) is exactly 0 (LOWEST times the scale can overflow to -inf, whose
# rounding remainder is NaN).
MASKED = -(2.0**100)
# 2^f ~ 1 + f (c1 + f (c2 + ...)) on [0, 1), by degree: relative least-squares fits on Chebyshev nodes with the
# constant 1 (exact at f = 0, so a query's top key gets probability 1), highest coefficient first. Relative error
# evaluated in f32: degree 5 1.6e-7 (the f32 kernel's probabilities), degree 4 3.0e-6 (here: the probabilities are
# rounded to bf16, relative 2^-9, 1,300 times more; one FMA less per 16 scores)
EXP2_POLY = {
    5: (
        1.8671828641292278e-3,
        9.016687624483226e-3,
        5.58004470615179e-2,
        2.401641535126347e-1,
        6.931513628656083e-1,
    ),
    4: (1.3426551134113528e-2, 5.224089692598029e-2, 2.412826880991427e-1, 6.930440082884549e-1),
}


def applicable(spec: KernelSpec, lanes: int, host_bf16: bool) -> bool:
    """``attention`` asking for bf16 products with heads of at most ``MAX_DH`` channels, on a CPU with AMX-BF16."""
    return (
        spec.op == "attention"
        and spec.attr("mma") == "bf16"
        and not spec.attr("tiled")
        and int(spec.attr("Dh")) <= MAX_DH
        and lanes == 16
        and host_bf16
    )


def _exp2(y, degree: int = 5):
    """2^y of an f32x16 y <= 0 (any finite value): 2^f for f = y - floor(y) in [0, 1) (one ``vreduceps`` where the
    target has AVX512DQ, as every AVX-512 CPU but Xeon Phi does) from ``EXP2_POLY[degree]``, times 2^floor(y) by
    ``vscalefps`` (which takes the floor of its exponent itself), which underflows to exactly 0 (a masked score) and
    needs no exponent-bit arithmetic; on AVX2 (no ``vreduceps``, no ``vscalefps``) by floor and exponent bits."""
    zero = splat(0.0, "float32", 16)
    if target_has("avx512dq"):  # imm 9: keep no fraction bits, round down, no precision exception
        f = T.bind(
            T.call_llvm_pure_intrin(
                "float32x16", "llvm.x86.avx512.mask.reduce.ps.512", y, T.int32(9), zero, T.uint16(0xFFFF), T.int32(4)
            )
        )
    else:
        f = T.bind(y - T.floor(y))
    coefs = EXP2_POLY[degree]
    p = splat(coefs[0], "float32", 16)
    for cf in coefs[1:]:
        p = p * f + splat(cf, "float32", 16)
    p = p * f + splat(1.0, "float32", 16)
    if not target_has("avx512f"):  # AVX2: 2^floor(y) as exponent bits, 0 from 2^-127 down (a masked score: exactly 0)
        n = T.max(T.floor(y), splat(-127.0, "float32", 16))
        scale = T.reinterpret("float32x16", T.shift_left(T.Cast("int32x16", n) + T.Broadcast(T.int32(127), 16), 23))
        return p * scale
    return T.call_llvm_pure_intrin(
        "float32x16", "llvm.x86.avx512.mask.scalef.ps.512", p, y, zero, T.uint16(0xFFFF), T.int32(4)
    )


INTERLEAVE = [i // 2 + 16 * (i % 2) for i in range(32)]  # lanes 0, 16, 1, 17, ...: a[n] and b[n] in word n


def interleaved_bf16(a, b, dtype: str):
    """Two f32x16 vectors rounded to bf16 (nearest even) and interleaved as 16 words of type ``dtype``, word n
    holding a[n] (low half) and b[n] (high half): one vcvtne2ps2bf16 (a's 16 then b's 16) and one vpermw to pair
    them up (AVX512_BF16)."""
    return T.reinterpret(dtype, shuffle([cvt_bf16x32(b, a)], INTERLEAVE))


def _bf16_interleave(a, b):
    """Two f32x16 vectors of probabilities rounded to bf16 (nearest even) and interleaved as 16 u32 words, word n
    holding a[n] (low half) and b[n] (high half). Probabilities are finite and >= 0, so the rounding needs no NaN
    case: a NaN one (from a NaN score) may round to another value, but the running sum takes it unrounded and
    makes the row's output NaN."""

    def rounded(v):  # bits + 0x7fff + the lowest kept bit: the upper 16 bits are the nearest-even bf16
        bits = T.bind(T.reinterpret("uint32x16", v))
        return bits + splat(0x7FFF, "uint32", 16) + ((bits >> splat(16, "uint32", 16)) & splat(1, "uint32", 16))

    return (rounded(a) >> splat(16, "uint32", 16)) | (rounded(b) & splat(0xFFFF0000, "uint32", 16))


def _transpose16(vs: list, dtype: str) -> list:
    """The 16 x 16 transpose of 16 vectors of 16 32-bit lanes (``dtype``): four stages that swap the off-diagonal
    blocks of 8, 4, 2 and 1 lanes between pairs of vectors, 64 two-vector shuffles in all, where lane-by-lane
    gathers or scatters take 256 single-lane moves. The stages pass through a stack buffer with constant offsets,
    which LLVM keeps in registers: as nested bindings they made TVM's passes take seconds per kernel."""
    mem = T.bind(T.tvm_stack_alloca("shape", 256))  # 2 x 16 x 16 words
    buf = T.decl_buffer((512,), dtype, data=mem)
    for i, v in enumerate(vs):
        vstore(buf, 16 * i, v, 16)
    src = 0
    for b in (8, 4, 2, 1):
        dst = 256 - src
        for i in range(16):
            if i & b:
                continue
            lo = [lane if lane & b == 0 else 16 + lane - b for lane in range(16)]
            hi = [lane + b if lane & b == 0 else 16 + lane for lane in range(16)]
            pair = [vload(buf, src + 16 * i, 16), vload(buf, src + 16 * (i + b), 16)]
            vstore(buf, dst + 16 * i, shuffle(pair, lo), 16)
            vstore(buf, dst + 16 * (i + b), shuffle(pair, hi), 16)
        src = dst
    return [vload(buf, src + 16 * i, 16) for i in range(16)]


def _row16(buf, row, col, n: int):
    """f32x16 of buf[row, col:col + n] (n <= 16 real values, zeros after them); nothing past them is read."""
    zero = splat(0.0, "float32", 16)
    if n <= 0:
        return zero
    if n == 16:
        return load_f32(buf, [row, T.Ramp(col, 1, 16)], 16)
    if n == 1:
        v = T.Broadcast(load_f32(buf, [row, col]), 16)
        return T.Select(T.Ramp(0, 1, 16) < T.Broadcast(T.int32(1), 16), v, zero)
    v = load_f32(buf, [row, T.Ramp(col, 1, n)], n)
    return shuffle([v, zero], list(range(n)) + [n] * (16 - n))


class _Attention:
    # the layout's parameters, which the f32 kernel (cpu_attention_fma) sets its own way: query tiles per task, keys
    # per softmax block, and the step keys are padded to (32: a step of p.v on the tile unit)
    NQ, KEY_BLOCK, KEY_STEP = NQ, KEY_BLOCK, 32
    EXP2 = 4  # the exp2 polynomial's degree (``EXP2_POLY``): the probabilities are rounded to bf16

    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.B, self.S, self.H, self.Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
        self.T = int(spec.attr("T", self.S))
        self.causal = bool(spec.attr("causal"))
        self.scale = float(self.Dh) ** -0.5
        self.DS = -(-self.Dh // 32)  # steps of 32 channels (q.k)
        self.DC = -(-self.Dh // 16)  # tiles of 16 channels (rows of o^T)
        step = self.KEY_STEP
        TP = -(-self.T // step) * step  # keys padded to whole steps
        self.KB = min(self.KEY_BLOCK, TP)
        self.NBF = self.T // self.KB  # full key blocks
        rem = self.T - self.NBF * self.KB
        self.KBT = -(-rem // step) * step  # the tail block's keys (0: none)
        self.TP = self.NBF * self.KB + self.KBT
        self.NKT, self.NKS = self.TP // 16, self.TP // 32  # key tiles (scores) and key steps (p.v)
        self.QB = 16 * self.NQ
        self.NQB = -(-self.S // self.QB)
        self.tasks = self.B * self.H * self.NQB
        self.TPC, self.CH = chunking(self.tasks)
        # task order: a head's packed k and v (bf16) stay in L2 while its blocks of queries run, unless every head's
        # fit there at once (short keys: cross-attention), when a block of queries runs all its heads in turn, and
        # each row of q and o is read and written whole
        self.heads_inner = self.kv_bytes() <= L2_BYTES // 2

    def kv_bytes(self) -> int:
        """Every head's packed k and v (bf16 tiles)."""
        return self.H * self.TP * (32 * self.DS + 16 * self.DC) * 2

    def build(self) -> None:
        BH = self.B * self.H
        self.kb = T.alloc_buffer((BH * self.NKT * self.DS * 256,), "uint32")  # k: A tiles [bh][key tile][step]
        self.vb = T.alloc_buffer((BH * self.NKS * self.DC * 256,), "uint32")  # v^T: A tiles [bh][key step][ch tile]
        self.qb = T.alloc_buffer((self.CH * self.NQ * self.DS * 256,), "uint32")  # q: B tiles [query tile][step]
        self.sb = T.alloc_buffer((self.CH * self.KB * self.QB,), "float32")  # scores [key][query]
        self.pb = T.alloc_buffer((self.CH * (self.KB // 32) * self.NQ * 256,), "uint32")  # p^T: B tiles [step][q tile]
        self.ob = T.alloc_buffer((self.CH * self.DC * self.NQ * 256,), "float32")  # o^T sums: [ch tile][q tile][16][16]
        self.ml = T.alloc_buffer((self.CH * 2 * self.NQ * 16,), "float32")  # running max, then sum, per query tile
        self.cfg = T.alloc_buffer((64,), "uint8")
        with_tile_state(lambda: (tile_config(self.cfg, {t: (16, 64) for t in range(8)}), self.prep(), self.tiles()))

    # -- k and v, once per call --

    def prep(self) -> None:
        Dh, T_, H = self.Dh, self.T, self.H
        k, v = self.bufs["k"], self.bufs["v"]
        with T.parallel(0, self.B * H * self.NKT * 16) as g:  # a key row: its channels as A rows of q.k
            bh = T.bind(g // self.TP)
            j = T.bind(g % self.TP)
            row = (bh // H) * T_ + j
            col = (bh % H) * Dh
            with T.If(j < T_):
                with T.Then():
                    for s in range(self.DS):
                        at = ((bh * self.NKT + j // 16) * self.DS + s) * 256 + (j % 16) * 16
                        vstore(self.kb, at, self._pairs(k, row, col, s), 16)
                with T.Else():
                    for s in range(self.DS):
                        at = ((bh * self.NKT + j // 16) * self.DS + s) * 256 + (j % 16) * 16
                        vstore(self.kb, at, splat(0, "uint32", 16), 16)
        with T.parallel(0, self.B * H * self.NKS) as g:  # 32 keys: per 16 channels, the A tile of p.v
            bh = T.bind(g // self.NKS)
            ks = T.bind(g % self.NKS)
            col = (bh % H) * Dh

            def v_tile(ct, n: int) -> None:
                words = []  # per key pair p: word e holds keys 2p, 2p + 1 of channel e
                for p in range(16):
                    halves = []
                    for i in range(2):
                        j = 32 * ks + 2 * p + i
                        # the load is bound before the select, with its row clamped: a select evaluates both sides
                        ld = T.bind(_row16(v, (bh // H) * T_ + T.min(j, T_ - 1), col + 16 * ct, n))
                        val = T.Select(T.Broadcast(j < T_, 16), ld, splat(0.0, "float32", 16))
                        halves.append(T.bind(bf16_bits(val, 16)))
                    words.append(halves[0] | (halves[1] << splat(16, "uint32", 16)))
                at = ((bh * self.NKS + ks) * self.DC + ct) * 256
                for e, row in enumerate(_transpose16(words, "uint32")):  # row e of the tile: channel e's 16 pairs
                    vstore(self.vb, at + 16 * e, row, 16)

            if Dh // 16:
                with T.serial(0, Dh // 16) as ct:
                    v_tile(ct, 16)
            if Dh % 16:
                v_tile(Dh // 16, Dh % 16)

    def _pairs(self, buf, row, col, s: int):
        """Channels 32 s .. 32 s + 31 of buf[row, col:col + Dh] as 16 words of bf16 pairs (zeros past Dh)."""
        lo, hi = (max(0, min(16, self.Dh - 32 * s - h)) for h in (0, 16))
        return _bf16_pairs(_row16(buf, row, col + 32 * s, lo), _row16(buf, row, col + 32 * s + 16, hi))

    # -- per task --

    def tiles(self) -> None:
        # the softmax's exp2 of scores far below the max would be denormal: flushed, not assisted
        over_chunks(self.CH, self.TPC, self.tasks, self.cfg, self.task, flush_denormals=True)

    def task(self, c, t) -> None:
        if self.heads_inner:  # consecutive tasks: the heads of one block of queries, which share its rows of q, o
            H, NQB = self.H, self.NQB
            bh = T.bind((t // (H * NQB)) * H + t % H)
            q0 = T.bind(((t // H) % NQB) * self.QB)
        else:  # the blocks of queries of one head, which share its packed k and v
            bh = T.bind(t // self.NQB)
            q0 = T.bind((t % self.NQB) * self.QB)
        self.c, self.bh = c, bh
        self.pack_q(c, bh, q0)
        ml = c * 2 * self.NQ * 16
        for qt in range(self.NQ):
            vstore(self.ml, ml + 16 * qt, splat(MASKED, "float32", 16), 16)
            vstore(self.ml, ml + 16 * (self.NQ + qt), splat(0.0, "float32", 16), 16)
        # the first block starts the o^T sums in the tile registers (no buffer to clear, nothing to rescale)
        if self.NBF:
            self.block(0, self.KB, self.causal, q0, first=True)
            if self.NBF > 1:
                with T.serial(1, self.NBF) as blk:
                    self.block(blk * self.KB, self.KB, self.causal, q0)
        if self.KBT:
            self.block(self.NBF * self.KB, self.KBT, True, q0, first=not self.NBF)
        self.finish(q0)

    def pack_q(self, c, bh, q0) -> None:
        """The task's queries as B operands of q.k: per query tile and step of 32 channels, row p holds channels
        2p, 2p + 1 of each of the 16 queries (zeros for queries past S)."""
        q = self.bufs["q"]
        base = c * self.NQ * self.DS * 256

        def tile(qt, s, lo: int, hi: int) -> None:
            words = []
            for n in range(16):
                i = q0 + 16 * qt + n
                row = (bh // self.H) * self.S + T.min(i, self.S - 1)
                c0 = (bh % self.H) * self.Dh + 32 * s
                ld = T.bind(_bf16_pairs(_row16(q, row, c0, lo), _row16(q, row, c0 + 16, hi)))  # bound: see prep
                words.append(T.Select(T.Broadcast(i < self.S, 16), ld, splat(0, "uint32", 16)))
            at = base + (qt * self.DS + s) * 256
            for p, row in enumerate(_transpose16(words, "uint32")):
                vstore(self.qb, at + 16 * p, row, 16)

        with T.serial(0, self.NQ) as qt:
            if self.Dh // 32:
                with T.serial(0, self.Dh // 32) as s:
                    tile(qt, s, 16, 16)
            if self.Dh % 32:
                s = self.Dh // 32
                tile(qt, s, min(16, self.Dh - 32 * s), max(0, self.Dh - 32 * s - 16))

    def block(self, key0, nkeys: int, masked: bool, q0, first: bool = False) -> None:
        """Keys key0 .. key0 + nkeys - 1 (nkeys a multiple of 32) against the task's 32 queries."""
        c, bh = self.c, self.bh
        qbase, sbase = c * self.NQ * self.DS * 256, c * self.KB * self.QB
        pbase, obase = c * (self.KB // 32) * self.NQ * 256, c * self.DC * self.NQ * 256
        # scores^T: two key tiles x two query tiles at a time
        with T.serial(0, nkeys // 32) as kp:
            kt = key0 // 16 + 2 * kp
            with T.serial(0, self.NQ // 2) as qp:
                for acc in (C0, C1, C2, C3):
                    _amx("tilezero", _i8(acc))
                with T.serial(0, self.DS) as s:
                    for a, i in ((A0, 0), (A1, 1)):
                        at = ((bh * self.NKT + kt + i) * self.DS + s) * 256
                        _amx("tileloadd64", _i8(a), T.address_of(self.kb[at]), T.int64(64))
                    for b, i in ((B0, 0), (B1, 1)):
                        at = qbase + ((2 * qp + i) * self.DS + s) * 256
                        _amx("tileloadd64", _i8(b), T.address_of(self.qb[at]), T.int64(64))
                    for acc, a, b in ((C0, A0, B0), (C1, A0, B1), (C2, A1, B0), (C3, A1, B1)):
                        _amx("tdpbf16ps", _i8(acc), _i8(a), _i8(b))
                for acc, i, j in ((C0, 0, 0), (C1, 0, 1), (C2, 1, 0), (C3, 1, 1)):
                    at = sbase + (32 * kp + 16 * i) * self.QB + 16 * (2 * qp + j)
                    _amx("tilestored64", _i8(acc), T.address_of(self.sb[at]), T.int64(4 * self.QB))
        self.softmax(key0, nkeys, masked, q0, first)
        # o^T += v^T p^T: two channel tiles x two query tiles at a time (the odd channel tile alone)
        ks0 = key0 // 32

        def products(ct, pair: bool) -> None:
            with T.serial(0, self.NQ // 2) as qp:
                accs = [(C0, A0, B0, ct, 0), (C1, A0, B1, ct, 1)]
                if pair:
                    accs += [(C2, A1, B0, ct + 1, 0), (C3, A1, B1, ct + 1, 1)]
                for acc, _, _, cti, j in accs:
                    at = obase + (cti * self.NQ + 2 * qp + j) * 256
                    if first:
                        _amx("tilezero", _i8(acc))
                    else:
                        _amx("tileloadd64", _i8(acc), T.address_of(self.ob[at]), T.int64(64))
                with T.serial(0, nkeys // 32) as ks:
                    for a, i in ((A0, 0), (A1, 1))[: 2 if pair else 1]:
                        at = ((bh * self.NKS + ks0 + ks) * self.DC + ct + i) * 256
                        _amx("tileloadd64", _i8(a), T.address_of(self.vb[at]), T.int64(64))
                    for b, j in ((B0, 0), (B1, 1)):
                        at = pbase + (ks * self.NQ + 2 * qp + j) * 256
                        _amx("tileloadd64", _i8(b), T.address_of(self.pb[at]), T.int64(64))
                    for acc, a, b, _, _ in accs:
                        _amx("tdpbf16ps", _i8(acc), _i8(a), _i8(b))
                for acc, _, _, cti, j in accs:
                    at = obase + (cti * self.NQ + 2 * qp + j) * 256
                    _amx("tilestored64", _i8(acc), T.address_of(self.ob[at]), T.int64(64))

        if self.DC // 2:
            with T.serial(0, self.DC // 2) as cp:
                products(2 * cp, True)
        if self.DC % 2:
            products(self.DC - 1, False)

    def store_probs(self, kt, qt, ps: list) -> None:
        """Probabilities of keys 16 kt .. 16 kt + 15 (of the block) for query tile qt: rounded to bf16, two
        consecutive keys interleaved into one row of p^T's B operand."""
        pbase = self.c * (self.KB // 32) * self.NQ * 256
        cvt = target_has("avx512bf16")
        for r2 in range(8):
            at = pbase + (((kt // 2) * self.NQ + qt) * 16 + (kt % 2) * 8 + r2) * 16
            a, b = ps[2 * r2], ps[2 * r2 + 1]
            if cvt:
                words = interleaved_bf16(a, b, "uint32x16")
            else:
                words = _bf16_interleave(a, b)
            vstore(self.pb, at, words, 16)

    def softmax(self, key0, nkeys: int, masked: bool, q0, first: bool, raw_max=None) -> None:
        """The online softmax over the block's scores (``sb``, [key][query], raw q.k) for each query tile: the running
        max and sum updated, the probabilities handed to ``store_probs`` 16 keys at a time, and the o^T sums rescaled
        where a query's max rose (not for the first block: there are none yet). ``raw_max(qt)``, where the products
        already took the block's max of the raw scores (an unmasked block only), saves the pass that reads them for
        it."""
        c = self.c
        sbase, obase, mlb = c * self.KB * self.QB, c * self.DC * self.NQ * 256, c * 2 * self.NQ * 16
        # per query tile: 16 queries in the lanes; scores in units of log2 (scale * log2(e) folded in)
        c2 = splat(self.scale * LOG2E, "float32", 16)
        with T.serial(0, self.NQ) as qt:
            qv = T.Ramp(q0 + 16 * qt, 1, 16)

            def raw(j, qt=qt):  # q.k of key j (of the block) for the 16 queries
                return vload(self.sb, sbase + j * self.QB + 16 * qt, 16)

            def mask(j, y, qv=qv):  # y, or MASKED for keys past T (and, causal, after the query)
                if not masked:
                    return y
                key = key0 + j
                cond = T.Broadcast(key >= self.T, 16)
                if self.causal:
                    cond = T.Or(cond, T.Broadcast(key, 16) > qv)
                return T.Select(cond, splat(MASKED, "float32", 16), y)

            mem = T.bind(T.tvm_stack_alloca("shape", 16))  # running block max, then block sum: 2 x 16 f32
            run = T.decl_buffer((16,), "float32", data=mem)
            tot = T.decl_buffer((16,), "float32", data=mem, elem_offset=16)
            m_old = T.bind(vload(self.ml, mlb + 16 * qt, 16))
            vstore(run, 0, m_old, 16)
            # unmasked, the max of the raw scores times the (positive) scale is the max of the scaled ones
            if raw_max is not None:
                assert not masked
                vstore(run, 0, T.max(m_old, raw_max(qt) * c2), 16)
            else:
                with T.serial(0, nkeys // 16) as kt:
                    xs = [
                        T.bind(mask(16 * kt + r, raw(16 * kt + r) * c2) if masked else raw(16 * kt + r))
                        for r in range(16)
                    ]
                    top = reduce_vectors(xs, T.max)
                    vstore(run, 0, T.max(vload(run, 0, 16), top if masked else top * c2), 16)
            m_new = T.bind(vload(run, 0, 16))
            vstore(tot, 0, splat(0.0, "float32", 16), 16)
            with T.serial(0, nkeys // 16) as kt:
                ps = [T.bind(_exp2(mask(16 * kt + r, raw(16 * kt + r) * c2 - m_new), self.EXP2)) for r in range(16)]
                self.store_probs(kt, qt, ps)
                vstore(tot, 0, vload(tot, 0, 16) + reduce_vectors(ps, lambda a, b: a + b), 16)
            corr = T.bind(_exp2(m_old - m_new))
            vstore(self.ml, mlb + 16 * qt, m_new, 16)
            at_l = mlb + 16 * (self.NQ + qt)
            vstore(self.ml, at_l, vload(self.ml, at_l, 16) * corr + vload(tot, 0, 16), 16)
            # the o^T sums of these queries, to the new max: only where a lane's max rose (once the first blocks
            # have been seen, most blocks raise none)
            if not first:
                with T.If(reduce_tree(m_new - m_old, 16, T.max) > T.float32(0)):
                    with T.Then():
                        with T.serial(0, self.DC * 16) as r:
                            at = obase + ((r // 16) * self.NQ + qt) * 256 + (r % 16) * 16
                            vstore(self.ob, at, vload(self.ob, at, 16) * corr, 16)

    def finish(self, q0) -> None:
        """o[query, channels] = o^T sums / running sum, in o's storage dtype, for the task's real queries: each
        16 x 16 tile of sums is scaled by its queries' 1 / sum and transposed into rows of 16 channels."""
        o = self.bufs["o"]
        c, bh = self.c, self.bh
        obase, mlb = c * self.DC * self.NQ * 256, c * 2 * self.NQ * 16
        with T.serial(0, self.NQ) as qt:
            inv = T.bind(splat(1.0, "float32", 16) / vload(self.ml, mlb + 16 * (self.NQ + qt), 16))
            if self.Dh // 16:
                with T.serial(0, self.Dh // 16) as ct:
                    at = obase + (ct * self.NQ + qt) * 256
                    rows = _transpose16([vload(self.ob, at + 16 * r, 16) * inv for r in range(16)], "float32")
                    for n, v in enumerate(rows):  # query n's 16 channels
                        i = q0 + 16 * qt + n
                        with T.If(i < self.S):
                            with T.Then():
                                col = (bh % self.H) * self.Dh + 16 * ct
                                T.buffer_store(
                                    o, narrow_to(o, v, 16), [(bh // self.H) * self.S + i, T.Ramp(col, 1, 16)]
                                )
            lanes = self.Dh % 16
            if lanes:  # the head's last channels, fewer than a vector: gathered lane by lane
                ct = self.Dh // 16
                with T.serial(0, 16) as n:
                    i = q0 + 16 * qt + n
                    with T.If(i < self.S):
                        with T.Then():
                            inv_n = T.bind(T.float32(1.0) / self.ml[mlb + 16 * (self.NQ + qt) + n])
                            at = obase + (ct * self.NQ + qt) * 256 + n
                            v = self.ob[T.Ramp(at, 16, lanes)] if lanes > 1 else self.ob[at]
                            v = v * (T.Broadcast(inv_n, lanes) if lanes > 1 else inv_n)
                            col = (bh % self.H) * self.Dh + 16 * ct
                            idx = T.Ramp(col, 1, lanes) if lanes > 1 else col
                            T.buffer_store(o, narrow_to(o, v, lanes), [(bh // self.H) * self.S + i, idx])


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The AMX-BF16 attention PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _Attention(spec, bufs).build())


def attention(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the AMX-BF16 attention."""
    replace_body(sch, spec, build)


__all__ = ["ROUNDS_TO_BF16", "applicable", "attention", "build"]
