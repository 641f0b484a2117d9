"""Attention over key tiles with an online softmax (flash attention), for key sequences too long for a row of
scores to stay in fast memory: only one tile of scores per query row is needed at a time, whatever T is.

Same parameters and result as ``attention`` (q and o [B*S, H*Dh], k and v [B*T, H*Dh], heads side by side);
``attention.compute`` hands a spec here when it has ``tiled`` set (legalization sets it for GPU backends when T
exceeds what their untiled kernel holds). The keys are cut into ``NT = ceil(T / TK)`` tiles of ``TK = KEY_TILE``;
per (b, h, i) query row and tile t:

- ``score`` (q.k of the tile's keys), ``tmax`` (the tile's max), ``prob`` (exp(score - tmax)), ``tsum`` (their
  sum) and ``tacc`` (prob @ v, one value per channel e) describe the tile on its own;
- ``run`` folds the tiles together: its (m, l, acc) is a reduction over t with the online-softmax combiner
  (m1, l1, a1) + (m2, l2, a2) = (m, l1 c1 + l2 c2, a1 c1 + a2 c2), m = max(m1, m2), ci = exp(mi - m) —
  associative and commutative, so a schedule may keep the running state in registers and walk the tiles in
  order (TE has no loop-carried state; a tuple reduction is how it says "running max, sum and accumulator");
- ``o`` = acc / l.

Keys past T (the last tile's padding) and, with ``causal``, keys after the query get the lowest finite f32 as
their score (WGSL has no infinities), so their probability is exactly 0 — or, for a tile whose keys are all
masked, the tile's own max is that lowest value too and the combiner weighs the whole tile by exp(lowest - m) = 0
(every row has key 0 unmasked, so m is finite). Padded keys read the last key's row (an index clamp) rather
than a predicate, which keeps every stage rectangular for the schedules (``schedules/gpu_attention.py``; the CPU
rule in ``schedules/cpu.py``).
"""

from __future__ import annotations

from tvm import te, tirx

from sdcompile.kernels.act import reads, stored
from sdcompile.kernels.attention import LOWEST
from sdcompile.kernels.dequant import f32
from sdcompile.kernels.spec import KernelSpec

# Keys per tile. Every tile has exactly KEY_TILE keys (the last one padded), so schedules split a tile evenly.
KEY_TILE = 64


def key_tiles(spec: KernelSpec) -> tuple[int, int]:
    """(keys per tile, number of tiles) of a spec."""
    T = int(spec.attr("T", spec.attr("S")))
    return KEY_TILE, -(-T // KEY_TILE)


def _online_softmax():
    def combine(x, y):
        m1, l1, a1 = x
        m2, l2, a2 = y
        m = tirx.Max(m1, m2)
        c1 = te.exp(m1 - m)
        c2 = te.exp(m2 - m)
        return m, l1 * c1 + l2 * c2, a1 * c1 + a2 * c2

    def identity(t0, t1, t2):
        return f32(LOWEST), f32(0.0), f32(0.0)

    return te.comm_reducer(combine, identity, name="online_softmax")


def compute(spec: KernelSpec) -> list[te.Tensor]:
    B, S, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
    T = int(spec.attr("T", S))
    causal = bool(spec.attr("causal"))
    TK, NT = key_tiles(spec)
    scale = f32(float(Dh) ** -0.5)
    shape = (B * S, H * Dh)
    (qt, kt, vt), (q, k, v) = reads(spec, "q", "k", "v")

    def key(b, j):  # row of key j (clamped: the last tile's padding reads key T-1 and is masked)
        return b * T + (te.min(j, T - 1) if NT * TK > T else j)

    d = te.reduce_axis((0, Dh), name="d")
    score = te.compute(
        (B, H, S, NT * TK),
        lambda b, h, i, j: te.sum(q[b * S + i, h * Dh + d] * k[key(b, j), h * Dh + d], axis=d),
        name="score",
    )

    def masked(b, h, i, j):
        s = score[b, h, i, j] * scale
        cond = None
        if NT * TK > T:
            cond = j >= T
        if causal:
            cond = j > i if cond is None else tirx.Or(cond, j > i)
        return s if cond is None else tirx.Select(cond, f32(LOWEST), s)

    j1 = te.reduce_axis((0, TK), name="j1")
    tmax = te.compute((B, H, S, NT), lambda b, h, i, t: te.max(masked(b, h, i, t * TK + j1), axis=j1), name="tmax")
    prob = te.compute(
        (B, H, S, NT * TK), lambda b, h, i, j: te.exp(masked(b, h, i, j) - tmax[b, h, i, j // TK]), name="prob"
    )
    j2 = te.reduce_axis((0, TK), name="j2")
    tsum = te.compute((B, H, S, NT), lambda b, h, i, t: te.sum(prob[b, h, i, t * TK + j2], axis=j2), name="tsum")
    j3 = te.reduce_axis((0, TK), name="j3")
    tacc = te.compute(
        (B, H, S, NT, Dh),
        lambda b, h, i, t, e: te.sum(prob[b, h, i, t * TK + j3] * v[key(b, t * TK + j3), h * Dh + e], axis=j3),
        name="tacc",
    )
    t = te.reduce_axis((0, NT), name="t")
    run_m, run_l, run_acc = te.compute(
        (B, H, S, Dh),
        lambda b, h, i, e: _online_softmax()(
            (tmax[b, h, i, t], tsum[b, h, i, t], tacc[b, h, i, t, e]),
            axis=t,
        ),
        name="run",
    )
    o = te.compute(
        shape,
        stored(spec, "o", lambda r, c: run_acc[r // S, c // Dh, r % S, c % Dh] / run_l[r // S, c // Dh, r % S, c % Dh]),
        name="o",
    )
    return [qt, kt, vt, o]
