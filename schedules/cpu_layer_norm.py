"""CPU layer norm (``layer_norm``: each row of x over its D values, biased variance, eps) as TIR: a few rows per
parallel task, each row in three passes while it stays in L1 (its sum, its centred sum of squares — the TE
compute's two-pass statistics, which keep the digits a mean far from the spread would cost —, then the normalised
values), every pass in 16-lane vectors with 4 partial sums, and a 16-bit y written 32 values per store
(``tir_build.narrow_pair``: whole 64-byte lines, bf16 by ``vcvtne2ps2bf16``).

Why: with ``passes/round_early.py`` a layer norm feeding q, k and v (or the feed-forward's first linear) writes
bf16, which the TE schedule (``schedules/cpu.py``'s ``layer_norm``) rounds with integer operations into half-line
stores: the guided UNet's layer norms at 512x512 took 21-26 ms per evaluation against 17.7-18.2 with f32 outputs.
Alone, 2 threads, alternating with the TE schedule: bf16 output 8192 x 320 0.64-0.67 -> 0.40-0.42 ms, 2048 x 640
0.38 -> 0.28-0.29, 512 x 1280 0.20 -> 0.16-0.17; f32 8192 x 320 0.50-0.55 -> 0.49-0.50, the text encoder's 154 x 768
0.043-0.055 -> 0.038-0.039.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.tir_build import (
    hsum,
    load_f32,
    parallel_rows,
    prim_func,
    reduce_vectors,
    replace_body,
    sixteen_lanes,
    splat,
    store_run,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec

TASK_VALUES = 1 << 15  # values per parallel task at least (fewer cost more in thread wake-ups)
SUMS = 4  # partial sums per pass: four vector adds in flight instead of one chain of dependent ones


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``layer_norm`` with D in whole groups of SUMS vectors on an AVX-512 or AVX2 CPU (``tir_build.sixteen_lanes``)."""
    return spec.op == "layer_norm" and sixteen_lanes(lanes) and int(spec.attr("D")) % (16 * SUMS) == 0


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    M, D, eps = int(spec.attr("M")), int(spec.attr("D")), float(spec.attr("eps"))
    groups = D // (16 * SUMS)

    def emit(bufs) -> None:
        x, gamma, beta, y = bufs["x"], bufs["gamma"], bufs["beta"], bufs["y"]

        def vec(m, c):
            return load_f32(x, [m, T.Ramp(c, 1, 16)], 16)

        def row_sum(term):
            """sum over the row of term(vector at c), in SUMS partial sums, as a scalar."""
            acc = vector_regs(SUMS)
            for s in range(SUMS):
                vstore(acc, 16 * s, splat(0.0, "float32", 16), 16)
            with T.serial(0, groups) as g:
                for s in range(SUMS):
                    vstore(acc, 16 * s, vload(acc, 16 * s, 16) + term((g * SUMS + s) * 16), 16)
            total = reduce_vectors([vload(acc, 16 * s, 16) for s in range(SUMS)], lambda a, b: a + b)
            return T.bind(hsum(total, 16))

        def row(m) -> None:
            mean = T.bind(row_sum(lambda c: vec(m, c)) * T.float32(1.0 / D))
            mv = T.bind(T.Broadcast(mean, 16))

            def sq(c):
                d = T.bind(vec(m, c) - mv)
                return d * d

            var = row_sum(sq) * T.float32(1.0 / D)
            rstd = T.bind(T.Broadcast(T.float32(1.0) / T.sqrt(var + T.float32(eps)), 16))

            def out(c):
                return (vec(m, c) - mv) * rstd * vload(gamma, c, 16) + vload(beta, c, 16)

            store_run(y, lambda c, lanes: [m, T.Ramp(c, 1, lanes)], D, out)

        parallel_rows(M, D, TASK_VALUES, row)

    return prim_func(spec, params, emit)


def layer_norm(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with this kernel's."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "layer_norm"]
