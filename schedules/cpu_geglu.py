"""CPU GEGLU (``geglu``: y[m, f] = x[m, f] * gelu(x[m, F + f]), erf's GELU, the UNet's feed-forward gate) as TIR: each
row's value and gate halves in 16-lane vectors, a few rows per parallel task, and a 16-bit y written 32 values per
store (``tir_build.narrow_pair``: whole 64-byte lines, bf16 by ``vcvtne2ps2bf16``).

The values are the TE compute's (``kernels/pointwise.py``): the same ``activation("gelu")`` expression, so the same
f32 arithmetic. What changes is the bf16 output: the TE schedule rounds it with integer operations (about ten per 16
values, on top of GELU's exp and division) into half-line stores, and with ``passes/round_early.py`` storing GEGLU's
output in bf16 (the next linear rounds it anyway), the UNet's GEGLU took 56 ms per 512x512 evaluation against 47 with
an f32 output. Alone, 2 threads, alternating with the TE schedule (SD1.5 512x512's three levels): bf16 output
8192 x 1280 6.39-6.60 -> 5.52-5.75 ms, 2048 x 2560 3.51-4.23 -> 2.44-2.56, 512 x 5120 1.15-1.47 -> 0.91-0.94; f32
output 8192 x 1280 5.69-5.93 -> 5.46-5.53. What bounds it then is GELU's arithmetic (an exp and a division per value).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.tir_build import load_f32, parallel_rows, prim_func, replace_body, sixteen_lanes, store_run
from sdcompile.kernels.linear import activation
from sdcompile.kernels.spec import KernelSpec

TASK_VALUES = 1 << 16  # output values per parallel task at least (fewer cost more in thread wake-ups)


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """``geglu`` with F in whole vectors on an AVX-512 or AVX2 CPU (``tir_build.sixteen_lanes``)."""
    return spec.op == "geglu" and sixteen_lanes(lanes) and int(spec.attr("F")) % 16 == 0


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    M, F = int(spec.attr("M")), int(spec.attr("F"))

    def emit(bufs) -> None:
        x, y = bufs["x"], bufs["y"]

        def row(m) -> None:
            def gated(c):
                v = load_f32(x, [m, T.Ramp(c, 1, 16)], 16)
                return v * activation("gelu", load_f32(x, [m, T.Ramp(F + c, 1, 16)], 16))

            store_run(y, lambda c, lanes: [m, T.Ramp(c, 1, lanes)], F, gated)

        parallel_rows(M, F, TASK_VALUES, row)

    return prim_func(spec, params, emit)


def geglu(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with this kernel's."""
    replace_body(sch, spec, build)


__all__ = ["applicable", "build", "geglu"]
