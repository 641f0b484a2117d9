"""CPU GroupNorm (with its fused SiLU) written as TIR on 16-lane vectors: every pass walks the activation in memory
order, channels in vectors, and keeps its sums in registers.

Numerics: the statistics in two levels, per chunk of pixels and channel, then over the chunks and the group's
channels, so that a VAE group's million values keep their mean near rounding. Each chunk's sum of squares is taken
about the chunk's own mean, and the chunks' are combined as Chan, Golub and LeVeque's parallel variance does (the sum
of theirs plus count x (chunk mean - group mean)^2 each): centred sums, like the TE compute's (``kernels/group_norm.py``)
second pass about the group's mean, so a mean far from the spread costs no digits. The output is
((x - mean) * rstd) * gamma + beta, rstd = 1 / sqrt(var + eps), as there.

Layout and passes (x [B, N, C], channels in whole vectors):
1. parallel over (image, chunk of ``L`` pixels): per block of up to ``VB`` channel vectors, the chunk's pixels are
   summed in VB registers, then, the block's part of the chunk again (from L2, up to 256 KB), its squares about the
   chunk's mean; both stored per chunk and channel ([B][chunks][C]);
2. per image, serially (2 B x chunks x C adds): each group's mean and variance, the mean and rstd * gamma written per
   channel ([B][C]) so that the output pass reads them as vectors;
3. parallel over (image, chunk): y = (x - mean_c) * rstd_c * gamma + beta, then the activation, on vectors.

Why: the TE schedule's output pass decoded each lane's group (c // (C / G)) and recomputed 1 / sqrt(var + eps) per
value, and its partial sums ran over one chunk's (pixels x group channels) with a loop of 10 channels at the UNet's
320-channel levels. Measured on 2 threads (Xeon with AVX-512, min of 20 launches, f32, SiLU fused; GB/s counts
three reads and one write of x), with the variance in a pass of its own over x after the mean's:

    x [B, N, C]            TE schedule   this      GB/s
    UNet 32x32, 2x1024x320    0.675 ms   0.246 ms  42.6
    UNet 16x16, 2x256x640     0.369      0.134     39.2
    UNet 8x8,   2x64x1280     0.178      0.096     27.4
    VAE 128x128, 16384x512    5.03       4.22      31.8
    VAE 256x256, 65536x256   15.1        9.83      27.3
    VAE 512x512, 262144x128  41.7       20.4       26.3

The VAE's activations leave the caches (134 MB at 512x512), so each pass over x ran at memory speed; taking the
squares per chunk while it is in L2 saves one of the three reads (the kernel alone, min of 10 launches,
alternating with the separate pass: 512x512 x 128 20.7-21.6 -> 17.1-17.9 ms, 256x256 x 256 10.4-10.6 -> 8.5-8.8,
128x128 x 512 4.7-4.8 -> 4.3-4.5; the UNet's shapes level within 0.02 ms, the 8x8 level's 0.26 -> 0.28 ms).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.tir_build import (
    load_f32,
    prim_func,
    replace_body,
    sixteen_lanes,
    splat,
    store_run,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.linear import activation
from sdcompile.kernels.spec import KernelSpec

VB = 16  # channel vectors summed in registers at a time (16 accumulators, one load per add)
CHUNK_PIXELS = 256  # pixels per chunk of the first level of the sums (the TE compute: N / 256 or more)
MIN_TASKS = 8  # chunks per image at least where there are pixels enough, so that both threads stay busy


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``group_norm`` with channels in whole vectors on an AVX-512 or AVX2 CPU (``tir_build.sixteen_lanes``)."""
    return spec.op == "group_norm" and sixteen_lanes(lanes) and int(spec.attr("C")) % 16 == 0


def chunking(N: int) -> tuple[int, int]:
    """(pixels per chunk, chunks) for N pixels: chunks of at most CHUNK_PIXELS, at least MIN_TASKS of them where
    N allows (a UNet 8x8 level has 64 pixels)."""
    chunks = max(-(-N // CHUNK_PIXELS), min(MIN_TASKS, N))
    L = -(-N // chunks)
    return L, -(-N // L)


class _GroupNorm:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.B, self.N, self.C, self.G = (int(spec.attr(k)) for k in ("B", "N", "C", "G"))
        self.eps = float(spec.attr("eps"))
        self.act = str(spec.attr("act", "none"))
        self.V = self.C // 16
        self.cg = self.C // self.G
        self.L, self.CH = chunking(self.N)

    def build(self) -> None:
        B, C, CH = self.B, self.C, self.CH
        part = T.alloc_buffer((B * CH * C,), "float32")  # per chunk and channel: the sum of x
        sq = T.alloc_buffer((B * CH * C,), "float32")  # ... and the sum of squares about the chunk's own mean
        mean = T.alloc_buffer((B * C,), "float32")  # the group's mean, per channel
        scale = T.alloc_buffer((B * C,), "float32")  # rstd * gamma, per channel
        self.chunk_sums(part, sq)
        self.reduce(part, sq, mean, scale)
        self.output(mean, scale)

    def pixels(self, body) -> None:
        """body(b, n0, n1) in parallel for each image b and chunk of pixels n0 .. n1 - 1."""
        with T.parallel(0, self.B * self.CH) as task:
            b = T.bind(task // self.CH)
            k = T.bind(task % self.CH)
            n0 = T.bind(k * self.L)
            body(b, n0, n0 + self.chunk_count(k), task)

    def chunk_count(self, k):
        """Pixels in chunk k (the last may be short)."""
        return T.min(self.L, self.N - k * self.L)

    def chunk_sums(self, part, sq) -> None:
        """Pass 1, per chunk and channel: the sum of x into part, then (the chunk's block of channels again, now
        from L2) the sum of squares about the chunk's own mean into sq."""
        x = self.bufs["x"]

        def body(b, n0, n1, task) -> None:
            inv = T.bind(T.float32(1.0) / T.Cast("float32", n1 - n0))
            for v0 in range(0, self.V, VB):
                nv = min(VB, self.V - v0)
                acc = vector_regs(nv)
                for j in range(nv):
                    vstore(acc, 16 * j, splat(0.0, "float32", 16), 16)
                with T.serial(0, n1 - n0) as p:
                    for j in range(nv):
                        xv = load_f32(x, [b, n0 + p, T.Ramp(16 * (v0 + j), 1, 16)], 16)
                        vstore(acc, 16 * j, vload(acc, 16 * j, 16) + xv, 16)
                mc = []
                for j in range(nv):
                    total = T.bind(vload(acc, 16 * j, 16))
                    vstore(part, task * self.C + 16 * (v0 + j), total, 16)
                    mc.append(T.bind(total * T.Broadcast(inv, 16)))
                    vstore(acc, 16 * j, splat(0.0, "float32", 16), 16)
                with T.serial(0, n1 - n0) as p:
                    for j in range(nv):
                        d = T.bind(load_f32(x, [b, n0 + p, T.Ramp(16 * (v0 + j), 1, 16)], 16) - mc[j])
                        vstore(acc, 16 * j, vload(acc, 16 * j, 16) + d * d, 16)
                for j in range(nv):
                    vstore(sq, task * self.C + 16 * (v0 + j), vload(acc, 16 * j, 16), 16)

        self.pixels(body)

    def reduce(self, part, sq, mean, scale) -> None:
        """Pass 2, per image and group, serially (2 B x chunks x C adds): the group's mean from the chunks' sums,
        then its sum of squares as Chan et al. combine the chunks' (``sq``, plus count x (the chunk's mean - the
        group's)^2 per chunk and channel); the mean and rstd * gamma written per channel."""
        inv = 1.0 / (self.N * self.cg)
        gamma = self.bufs["gamma"]
        with T.serial(0, self.B) as b:
            with T.serial(0, self.G) as g:
                total = T.alloc_buffer((2,), "float32")
                T.buffer_store(total, T.float32(0), [0])
                T.buffer_store(total, T.float32(0), [1])
                with T.serial(0, self.CH) as k:
                    with T.serial(0, self.cg) as c:
                        T.buffer_store(total, total[0] + part[(b * self.CH + k) * self.C + g * self.cg + c], [0])
                mu = T.bind(total[0] * T.float32(inv))
                with T.serial(0, self.CH) as k:
                    n = T.bind(T.Cast("float32", self.chunk_count(k)))
                    inv_n = T.bind(T.float32(1.0) / n)
                    with T.serial(0, self.cg) as c:
                        at = (b * self.CH + k) * self.C + g * self.cg + c
                        dm = T.bind(part[at] * inv_n - mu)
                        T.buffer_store(total, total[1] + sq[at] + n * dm * dm, [1])
                rstd = T.bind(T.float32(1.0) / T.sqrt(total[1] * T.float32(inv) + T.float32(self.eps)))
                with T.serial(0, self.cg) as c:
                    at = b * self.C + g * self.cg + c
                    T.buffer_store(mean, mu, [at])
                    T.buffer_store(scale, rstd * gamma[g * self.cg + c], [at])

    def output(self, mean, scale) -> None:
        """Pass 5: y = (x - mean) * (rstd * gamma) + beta, then the activation, rounded to y's storage."""
        x, beta, y = self.bufs["x"], self.bufs["beta"], self.bufs["y"]

        def body(b, n0, n1, task) -> None:
            with T.serial(0, n1 - n0) as p:

                def one(c):
                    xv = load_f32(x, [b, n0 + p, T.Ramp(c, 1, 16)], 16)
                    at = b * self.C + c
                    return activation(self.act, (xv - vload(mean, at, 16)) * vload(scale, at, 16) + vload(beta, c, 16))

                # a 16-bit y 32 values per store, whole cache lines (``store_run``)
                store_run(y, lambda c, lanes: [b, n0 + p, T.Ramp(c, 1, lanes)], self.C, one)

        self.pixels(body)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    return prim_func(spec, params, lambda bufs: _GroupNorm(spec, bufs).build())


def group_norm(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the loop nest above."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "group_norm"]
