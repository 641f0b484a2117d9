"""Multi-head scaled dot-product attention with an optional causal mask.

q and o are [B*S, H*Dh], k and v [B*T, H*Dh] row-major (T keys: S for self-attention, 77 context tokens for a
UNet's cross-attention) (heads side by side, as the projections produce them). Intermediates are
per (b, h, i) query row — ``score`` (q.k), ``rmax``, ``prob`` (unnormalised exp), ``rsum``, ``oacc`` — so schedules
keep them in one row's worth of fast memory. The mask uses the lowest finite f32 instead of -inf: WGSL rejects
infinite constants, and exp(lowest - max) is exactly 0 anyway.
"""

from __future__ import annotations

from tvm import te, tirx

from sdcompile.kernels.act import reads, stored
from sdcompile.kernels.dequant import f32
from sdcompile.kernels.spec import KernelSpec

LOWEST = -3.4028234663852886e38


def compute(spec: KernelSpec) -> list[te.Tensor]:
    if spec.attr("tiled"):
        from sdcompile.kernels import attention_tiled

        return attention_tiled.compute(spec)
    B, S, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
    T = int(spec.attr("T", S))
    causal = bool(spec.attr("causal"))
    scale = f32(float(Dh) ** -0.5)
    shape = (B * S, H * Dh)
    (qt, kt, vt), (q, k, v) = reads(spec, "q", "k", "v")

    d = te.reduce_axis((0, Dh), name="d")
    score = te.compute(
        (B, H, S, T),
        lambda b, h, i, j: te.sum(q[b * S + i, h * Dh + d] * k[b * T + j, h * Dh + d], axis=d),
        name="score",
    )

    def masked(b, h, i, j):
        s = score[b, h, i, j] * scale
        return tirx.Select(j > i, f32(LOWEST), s) if causal else s

    j1 = te.reduce_axis((0, T), name="j1")
    rmax = te.compute((B, H, S), lambda b, h, i: te.max(masked(b, h, i, j1), axis=j1), name="rmax")
    prob = te.compute((B, H, S, T), lambda b, h, i, j: te.exp(masked(b, h, i, j) - rmax[b, h, i]), name="prob")
    j2 = te.reduce_axis((0, T), name="j2")
    rsum = te.compute((B, H, S), lambda b, h, i: te.sum(prob[b, h, i, j2], axis=j2), name="rsum")
    j3 = te.reduce_axis((0, T), name="j3")
    # (r, c) = (b * S + i, h * Dh + e): the output is indexed the way it is stored, and schedules split r and c back.
    oacc = te.compute(
        shape, lambda r, c: te.sum(prob[r // S, c // Dh, r % S, j3] * v[(r // S) * T + j3, c], axis=j3), name="oacc"
    )
    o = te.compute(shape, stored(spec, "o", lambda r, c: oacc[r, c] / rsum[r // S, c // Dh, r % S]), name="o")
    return [qt, kt, vt, o]
