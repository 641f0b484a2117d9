"""CPU concat (the UNet's skip connections: [rows, C1] and [rows, C2] into [rows, C1 + C2]) as TIR: each row's
inputs copied in turn, in 16-lane vectors, a few rows per parallel task.

The TE compute (``kernels/movement.py``) computes every output value as a select over all inputs, with a clamped
load from each (a select evaluates both sides): 2 loads, a compare and a select per value, and no whole vectors
where a boundary falls inside one. Here each input's run of a row is one loop of vector copies (converted where
an input's storage differs from the output's). Measured on 2 threads (f32, min of 30 launches):

    rows x widths        TE compute   this
    2048 x (320, 320)    0.795 ms     0.226 ms   (UNet 256x256, 32x32 level; MetaSchedule's best: 0.198 ms)
    512 x (640, 640)     0.407        0.131
    8192 x (320, 320)    4.39         1.08       (UNet 512x512, 64x64 level)
    8192 x (640, 320)    6.75         2.41
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.tir_build import load_f32, narrow_to, parallel_rows, prim_func, replace_body, sixteen_lanes
from sdcompile.kernels.spec import KernelSpec

TASK_VALUES = 1 << 16  # output values per parallel task at least (fewer cost more in thread wake-ups)


def applicable(spec: KernelSpec, lanes: int) -> bool:
    return spec.op == "concat" and sixteen_lanes(lanes)


def _copy(x, y, o, start: int, width: int) -> None:
    """y[o, start:start + width] = x[o, :], converted to y's storage where x's differs."""

    def value(idx, lanes):
        return x[o, idx] if x.dtype == y.dtype else narrow_to(y, load_f32(x, [o, idx], lanes), lanes)

    with T.serial(0, width // 16) as v:
        T.buffer_store(y, value(T.Ramp(16 * v, 1, 16), 16), [o, T.Ramp(start + 16 * v, 1, 16)])
    for c in range(width // 16 * 16, width):
        T.buffer_store(y, value(c, 1), [o, start + c])


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    outer, widths = int(spec.attr("outer")), [int(w) for w in spec.attr("widths")]

    def emit(bufs) -> None:
        def row(o) -> None:
            start = 0
            for i, w in enumerate(widths):
                _copy(bufs[f"x{i}"], bufs["y"], o, start, w)
                start += w

        parallel_rows(outer, sum(widths), TASK_VALUES, row)

    return prim_func(spec, params, emit)


def concat(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the copies above."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "concat"]
