"""CPU convolution with few output channels (fewer than 16: an SD VAE's last conv, 128 -> 3 channels at the image's
size, and a UNet's, 320 -> 4), on AVX-512 or AVX2 FMAs as dot products over the input channels.

The GEMM kernels put the output channels in a vector's lanes (or in tiles of 16), so at 3 channels 13 of every 16
lanes would be padding, and none of them applies (N is not a multiple of 16): the tiled schedule ran these convs at
12-21 GFLOP/s (SD1.5's VAE decode at 512x512: 121 ms in f32, 150 ms with ``--compute bf16``, 7% of that decode, for
0.2% of its multiply-adds). Here the input channels (NHWC: contiguous) are the lanes: per output pixel and channel
n, a vector of sums over 16 input channels at a time, every tap; one horizontal sum per output at the end. Two
pixels at a time share each weight vector's load (for up to ``PAIR_N`` output channels; beyond, one pixel).

The weights are decoded to f32 once per task (row of output pixels) into an L1-sized buffer (``cpu_fma.weight_vec``:
the values the file holds, exact), and the products are f32 whatever
``--compute`` asks: there are too few of them to matter (a bf16 request is met with more precision, not less).
Taps outside the image read a clamped pixel and multiply zeros, so nothing outside x is read.

Measured in the model (``sdcompile bench --profile``, 2 threads): SD1.5's VAE decode at 512x512 with ``--compute
bf16``, its 128 -> 3 conv 149.5 -> 13.0 ms (12 -> 139 GFLOP/s), the whole decode 1.99-2.16 -> 1.86-1.91 s (two
alternating rounds).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.cpu_fma import TYPES, _fma, for_isa, target_isa, weight_vec, weight_views
from schedules.tir_build import (
    hsum,
    load_f32,
    prim_func,
    replace_body,
    sixteen_lanes,
    splat,
    store_output,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec, conv_geometry

MAX_N = 15  # output channels at most (from 16 on, the GEMM kernels take the conv)
# two pixels at a time up to this many output channels (2 N accumulators, 2 x vectors, one weight), per ISA
# (``cpu_fma.target_isa``): AVX-512's 32 zmm, AVX2's 16 ymm, two per vector (N = 3: 12 of sums, 4 of x)
PAIR_N = {"avx512": 8, "avx2": 3}


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``conv2d`` with at most ``MAX_N`` output channels, input channels in whole vectors, a weight type the f32
    kernels decode, on a CPU with AVX-512 or AVX2 and FMA (``cpu_fma.target_isa``)."""
    return (
        spec.op == "conv2d"
        and int(spec.attr("N")) <= MAX_N
        and int(spec.attr("C")) % 16 == 0
        and str(spec.attr("wtype")) in TYPES
        and sixteen_lanes(lanes)
        and target_isa() is not None
    )


class _NarrowConv:
    def __init__(self, spec: KernelSpec, bufs: dict):
        self.spec, self.bufs = spec, bufs
        self.conv = dict(spec.attrs)
        self.N, self.C = int(spec.attr("N")), int(spec.attr("C"))
        self.kh, self.kw = int(spec.attr("kh")), int(spec.attr("kw"))
        self.K = self.kh * self.kw * self.C
        self.Ho, self.Wo, _, _ = conv_geometry(self.conv)
        self.B = int(spec.attr("B"))
        self.wtype = str(spec.attr("wtype"))
        self.act = str(spec.attr("act", "none"))
        self.P = 2 if self.N <= for_isa(PAIR_N) else 1  # pixels per step

    def build(self) -> None:
        self.wviews = weight_views(self.wtype, self.bufs["w"])
        with T.parallel(0, self.B * self.Ho) as row:
            wb = T.alloc_buffer((self.N * self.K,), "float32")
            self.decode(wb)
            with T.serial(0, -(-self.Wo // self.P)) as step:
                self.pixels(wb, row, step)

    def decode(self, wb) -> None:
        """W as f32 rows of K values (tap by tap, C channels each, as the GEMM's K runs)."""
        with T.serial(0, self.N) as n:
            with T.serial(0, self.K // 16) as v:
                vec = weight_vec(self.wtype, self.wviews, n, 16 * v, self.K, 16)
                vstore(wb, n * self.K + 16 * v, vec, 16)

    def pixels(self, wb, row, step) -> None:
        """Output pixels step * P .. (those inside the row) of output row ``row``: every channel."""
        x = self.bufs["x"]
        H, W = int(self.conv["H"]), int(self.conv["W"])
        st = int(self.conv["stride"])
        pt, pl = int(self.conv["pads"][0]), int(self.conv["pads"][1])
        N, C, P = self.N, self.C, self.P
        b = T.bind(row // self.Ho)
        oy = T.bind(row % self.Ho)
        oxs = [T.bind(T.min(step * P + p, self.Wo - 1)) for p in range(P)]  # clamped: a short last step repeats
        acc = vector_regs(N * P)
        for i in range(N * P):
            vstore(acc, 16 * i, splat(0.0, "float32", 16), 16)
        with T.serial(0, self.kh * self.kw) as tap:
            iy = T.bind(oy * st - pt + tap // self.kw)
            ixs = [T.bind(ox * st - pl + tap % self.kw) for ox in oxs]
            inside = [T.bind(tirx.all(iy >= 0, iy < H, ix >= 0, ix < W)) for ix in ixs]
            cy = T.bind(T.max(0, T.min(iy, H - 1)))
            cxs = [T.bind(T.max(0, T.min(ix, W - 1))) for ix in ixs]
            with T.serial(0, C // 16) as c:
                xv = [
                    T.bind(
                        T.Select(
                            T.Broadcast(inside[p], 16),
                            load_f32(x, [b, cy, cxs[p], T.Ramp(16 * c, 1, 16)], 16),
                            splat(0.0, "float32", 16),
                        )
                    )
                    for p in range(P)
                ]
                for n in range(N):
                    wv = T.bind(vload(wb, n * self.K + tap * C + 16 * c, 16))
                    for p in range(P):
                        i = n * P + p
                        vstore(acc, 16 * i, _fma(xv[p], wv, vload(acc, 16 * i, 16)), 16)
        for p in range(P):
            m = (b * self.Ho + oy) * self.Wo + step * P + p
            with T.If(step * P + p < self.Wo):
                with T.Then():
                    for n in range(N):
                        store_output(self.bufs, self.act, m, n, hsum(vload(acc, 16 * (n * P + p), 16), 16))


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The narrow conv's PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _NarrowConv(spec, bufs).build())


def conv2d(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the narrow conv."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "conv2d"]
