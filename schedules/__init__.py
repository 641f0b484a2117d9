"""How each kernel runs fast on each target: one schedule rule per (target family, op).

``cpu`` is LLVM; ``gpu`` is shared by WebGPU (WGSL, run on Vulkan) and CUDA and stays within WebGPU's limits
(256 invocations and 16 KB of workgroup memory per workgroup).
"""

from __future__ import annotations

from tvm import s_tir

from schedules import cpu, cpu_amx, cpu_gemv, gpu
from schedules.cpu import CpuInfo
from sdcompile.kernels.spec import KernelSpec

RULES = {"cpu": cpu.RULES, "gpu": gpu.RULES}


def apply(sch: s_tir.Schedule, spec: KernelSpec, kind: str, cpu_info: CpuInfo | None = None) -> None:
    """Schedule the function ``spec.name`` (already selected with ``sch.work_on``) for ``kind``."""
    try:
        rule = RULES[kind][spec.op]
    except KeyError:
        raise ValueError(f"no {kind} schedule for op {spec.op!r}") from None
    if kind == "cpu":
        info = cpu_info or CpuInfo()
        if cpu_amx.applicable(spec, info.lanes):  # several rows, a CPU with a tile unit: GEMM on AMX
            rule = cpu_amx.linear
        elif cpu_gemv.applicable(spec, info.lanes):  # few rows of x, a GGUF quant type: GEMV at memory bandwidth
            rule = cpu_gemv.linear
        rule(sch, spec, info)
    else:
        rule(sch, spec)


__all__ = ["CpuInfo", "apply"]
