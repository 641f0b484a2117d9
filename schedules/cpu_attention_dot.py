"""CPU attention with bf16 products on the vector unit (AVX512_BF16's ``vdpbf16ps``): flash attention for
``attention`` asking for bf16 products (``mma="bf16"``, ``compile --compute bf16``) on CPUs without the AMX tile unit
that ``cpu_attention_amx`` needs but with a fast ``vdpbf16ps`` (AMD Zen 4: 32 multiply-adds per instruction, twice
its f32 FMA rate).

The layout, the online softmax and the loop nest are ``cpu_attention_fma``'s (16 queries in a vector's lanes); the two
products take pairs instead of single values, as bf16 pair words (``tir_build.bf16_words``):

- **scores^T = K q^T** over pairs of channels: q^T packed per task as words [channel pair][query], k per call as rows
  of channel-pair words; per pair step, NQ query-word vectors and one broadcast k word per key (straight from memory:
  ``vdpbf16ps (mem){1to16}``), half the steps of the f32 kernel;
- **softmax**: f32, as the f32 kernel's; the probabilities are rounded to bf16 as they are stored, two consecutive
  keys interleaved into one word per query (one ``vcvtne2ps2bf16`` and one ``vpermw`` per 2 x 16 probabilities);
- **o^T += V^T p^T** over pairs of keys: v packed per call as words [key pair][channel], one broadcast per channel
  and pair of keys.

q, k and v stored in bf16 are packed as the words they already are (a row's channels 2p, 2p + 1 are its word p; v's
two keys interleave as 16-bit lanes); f32 and f16 ones, and odd head sizes, are widened and rounded to bf16 once as
they are packed.

Numerics: as ``cpu_attention_amx`` and PyTorch's bf16 scaled-dot-product attention: q, k, v and the probabilities
rounded to bf16 (nearest even), products and sums in f32, f32 softmax (its row sums over the unrounded
probabilities), exp2 of degree 4 (the probabilities are rounded to bf16 anyway).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_amx import over_chunks
from schedules.cpu_attention_amx import INTERLEAVE, _Attention, _row16, _transpose16, interleaved_bf16
from schedules.cpu_attention_fma import _AttentionFma
from schedules.cpu_attention_fma import applicable as fma_applicable
from schedules.cpu_bf16_dot import target_has_bf16_dot
from schedules.tir_build import (
    bf16_words,
    dot_bf16_words,
    importing_bf16_words,
    prim_func,
    replace_body,
    shuffle,
    splat,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec

# q, k and v are rounded to bf16 (nearest even) before any other use, as the tile unit's kernel rounds them: stored in
# bf16 by their producers, they give the same bits (``passes/round_early.py``)
ROUNDS_TO_BF16 = ("q", "k", "v")


def applicable(spec: KernelSpec, lanes: int, host_tiles: bool) -> bool:
    """An ``attention`` asking for bf16 products that the f32 FMA kernel would take (``cpu_attention_fma``), where the
    tile unit does not (``host_tiles``: the host has AMX-BF16) and the target has AVX512_BF16."""
    return spec.attr("mma") == "bf16" and not host_tiles and fma_applicable(spec, lanes) and target_has_bf16_dot()


def _pair_words(a, b):
    """Words (a[i], b[i]) of two f32x16 vectors, rounded to bf16, f32x16-typed as ``tir_build.dot_bf16_words``
    takes them."""
    return interleaved_bf16(a, b, "float32x16")


class _AttentionDot(_AttentionFma):
    EXP2 = 4  # the probabilities are rounded to bf16: ``cpu_attention_amx``'s polynomial

    def __init__(self, spec: KernelSpec, bufs: dict):
        super().__init__(spec, bufs)
        self.direct = False  # k and v are always packed, as bf16 words
        self.QROWS = self.DP // 2  # rows of a task's packed q^T: one per channel pair
        self.KW = 16 * self.DS  # words per packed k row: whole conversions of 32 channels
        self.NDP = -(-self.Dh // 2)  # channel pairs (q.k steps)
        # which of q, k and v are packed as the bf16 words they already are (see the module's docstring)
        self.as_words = {n: str(bufs[n].dtype) == "uint16" and self.Dh % 2 == 0 for n in ("q", "k", "v")}

    kv_bytes = _Attention.kv_bytes  # k and v packed in bf16, as much as the tile unit's kernel packs

    def build(self) -> None:
        BH = self.B * self.H
        self.words = {n: _words(self.bufs[n]) for n in ("q", "k") if self.as_words[n]}
        self.kw = T.alloc_buffer((BH * self.TP * self.KW,), "float32")  # k rows: channel-pair words, zeros past T
        self.vw = T.alloc_buffer((BH * self.TP // 2 * self.DP,), "float32")  # v: [key pair][channel] words
        self.qb = T.alloc_buffer((self.CH * self.QROWS * self.QB,), "float32")  # q^T: [channel pair][query] words
        self.sb = T.alloc_buffer((self.CH * self.KB * self.QB,), "float32")  # scores [key][query]
        self.pw = T.alloc_buffer((self.CH * self.KB // 2 * self.QB,), "float32")  # p^T: [key pair][query] words
        self.ob = T.alloc_buffer((self.CH * self.DC * self.NQ * 256,), "float32")  # o^T sums
        self.ml = T.alloc_buffer((self.CH * 2 * self.NQ * 16,), "float32")  # running max, then sum
        self.bm = T.alloc_buffer((self.CH * self.NQ * 16,), "float32")  # a block's max of raw scores per query
        with importing_bf16_words():
            self.prep()
            over_chunks(self.CH, self.TPC, self.tasks, None, self.task, flush_denormals=True)

    def prep(self) -> None:
        """k as rows of channel-pair words, v as words of key pairs, both rounded to bf16, zeros past T."""
        with T.parallel(0, self.B * self.H * self.TP // 2) as g:
            bh = T.bind(g // (self.TP // 2))
            j0 = T.bind(g % (self.TP // 2) * 2)
            for e in range(2):
                for s in range(self.DS):
                    vstore(self.kw, (bh * self.TP + j0 + e) * self.KW + 16 * s, self._k_words(bh, j0 + e, s), 16)
            for ct in range(self.DC):
                vstore(self.vw, g * self.DP + 16 * ct, self._v_words(bh, j0, ct), 16)

    def _row(self, bh, j):
        """The row of key j (clamped to T - 1: keys past T are zeroed after the load) of head bh's batch."""
        return (bh // self.H) * self.T + T.min(j, self.T - 1)

    def _real(self, j, v, zero):
        """v, or zeros for a key j past T."""
        return T.Select(T.Broadcast(j < self.T, 16), v, zero)

    def _tile(self, name: str, bh, j, ct):
        """f32x16 of head bh's channels 16 ct .. 16 ct + 15 of key j in k or v (zeros past Dh and T)."""
        n = min(16, self.Dh - 16 * ct)
        ld = T.bind(_row16(self.bufs[name], self._row(bh, j), (bh % self.H) * self.Dh + 16 * ct, n))
        return self._real(j, ld, splat(0.0, "float32", 16))

    def _k_words(self, bh, j, s):
        """Words 16 s .. 16 s + 15 of key j's packed row: channel pairs (zeros past Dh and T)."""
        zero = splat(0.0, "float32", 16)
        if self.as_words["k"]:
            words = _row16(self.words["k"], self._row(bh, j), self._word_col(bh, s), min(16, self.NDP - 16 * s))
            return self._real(j, T.bind(words), zero)
        hi = self._tile("k", bh, j, 2 * s + 1) if 2 * s + 1 < self.DC else zero  # the last tile's partner may be 0
        return bf16_words(hi, self._tile("k", bh, j, 2 * s))

    def _v_words(self, bh, j0, ct):
        """Channels 16 ct .. 16 ct + 15 of keys j0 and j0 + 1 as 16 words of the two keys' values."""
        if not self.as_words["v"]:
            return _pair_words(self._tile("v", bh, j0, ct), self._tile("v", bh, j0 + 1, ct))
        n, zero = min(16, self.Dh - 16 * ct), splat(0, "uint16", 16)
        halves = []
        for j in (j0, j0 + 1):
            ld = self.bufs["v"][self._row(bh, j), T.Ramp((bh % self.H) * self.Dh + 16 * ct, 1, n)]
            if n < 16:
                ld = shuffle([ld, zero], list(range(n)) + [n] * (16 - n))
            halves.append(T.bind(self._real(j, ld, zero)))
        return T.reinterpret("float32x16", shuffle(halves, INTERLEAVE))

    def pack_q(self, c, bh, q0) -> None:
        """The task's queries transposed, as words of channel pairs: q^T[channel pair][query] (zeros for queries past
        S and channels past Dh)."""
        base = c * self.QROWS * self.QB
        if self.as_words["q"]:
            self._pack_q_words(base, bh, q0)
            return
        with T.serial(0, self.NQ) as qt:
            for ct in range(self.DC):
                cols = [T.bind(v) for v in self.q_columns(bh, q0, qt, ct)]  # channel 16 ct + e of the 16 queries
                for i in range(8):
                    vstore(
                        self.qb, base + (8 * ct + i) * self.QB + 16 * qt, _pair_words(cols[2 * i], cols[2 * i + 1]), 16
                    )

    def _word_col(self, bh, s: int):
        """The word where head bh's channel pairs 16 s .. 16 s + 15 start in a row of q or k's word view."""
        return (bh % self.H) * (self.Dh // 2) + 16 * s

    def _pack_q_words(self, base, bh, q0) -> None:
        """pack_q of bf16 q: per 16 queries and 16 channel pairs, a 16 x 16 transpose of the rows' words."""
        zero = splat(0.0, "float32", 16)
        with T.serial(0, self.NQ) as qt:
            for s in range(-(-self.NDP // 16)):
                n = min(16, self.NDP - 16 * s)  # channel pairs in this step
                rows = []
                for e in range(16):
                    i = q0 + 16 * qt + e
                    row = (bh // self.H) * self.S + T.min(i, self.S - 1)
                    words = T.bind(_row16(self.words["q"], row, self._word_col(bh, s), n))
                    rows.append(T.Select(T.Broadcast(i < self.S, 16), words, zero))
                for p, col in enumerate(_transpose16(rows, "float32")[:n]):  # pair 16 s + p of the 16 queries
                    vstore(self.qb, base + (16 * s + p) * self.QB + 16 * qt, col, 16)

    def qk_steps(self) -> int:
        """Steps of q.k: one per pair of channels."""
        return self.NDP

    def k_operand(self, key, dp):
        """The word of k[key] for channel pair dp, broadcast (from memory: ``vdpbf16ps (mem){1to16}``); keys past
        T are zero rows, their scores masked."""
        return T.Broadcast(self.kw[(self.bh * self.TP + key) * self.KW + dp], 16)

    def mac(self, acc, a, b):
        """acc + a.b over the words' pairs."""
        return dot_bf16_words(acc, a, b)

    def pv_steps(self, real):
        """Steps of p.v: one per pair of keys (a padded key in the last one: probability 0, v zeros)."""
        return (real + 1) // 2

    def p_operand(self, kp, qt):
        """Probabilities of key pair kp (of the block) for query tile qt, as words."""
        return vload(self.pw, self.c * self.KB // 2 * self.QB + kp * self.QB + 16 * qt, 16)

    def v_operand(self, key0, kp, d):
        """The word of v's key pair kp (of the block from key0) for channel d, broadcast."""
        return T.Broadcast(self.vw[((self.bh * self.TP + key0) // 2 + kp) * self.DP + d], 16)

    def store_probs(self, kt, qt, ps: list) -> None:
        """Probabilities of keys 16 kt .. 16 kt + 15 (of the block) for query tile qt, rounded to bf16: two
        consecutive keys per word."""
        pbase = self.c * self.KB // 2 * self.QB
        for i in range(8):
            vstore(self.pw, pbase + (8 * kt + i) * self.QB + 16 * qt, _pair_words(ps[2 * i], ps[2 * i + 1]), 16)


def _words(buf):
    """An f32-typed view of a 2-D bf16 (uint16) buffer as rows of words: word i of a row holds its 16-bit elements
    2i, 2i + 1 (read by ``_row16``, for which f32 needs no widening)."""
    rows, cols = (int(d) for d in buf.shape)
    return T.decl_buffer((rows, cols // 2), "float32", data=buf.data)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The vdpbf16ps attention PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _AttentionDot(spec, bufs).build())


def attention(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the vdpbf16ps flash attention."""
    replace_body(sch, spec, build)


__all__ = ["ROUNDS_TO_BF16", "applicable", "attention", "build"]
