"""How each kernel runs fast on each target: one schedule rule per (target kind, schedule family).

A kernel op names its family in ``sdcompile/kernels/spec.py``: the hot kernels have their own (``linear`` — also
conv2d, whose patch stage is inlined first —, ``attention``, the norms, ``embed``); pointwise and data-movement ops
share ``injective`` (``schedules/injective.py``), so a new one needs no schedule of its own.

``cpu`` is LLVM; ``gpu`` is shared by WebGPU (WGSL, run on Vulkan) and CUDA and stays within WebGPU's limits
(256 invocations and 16 KB of workgroup memory per workgroup).
"""

from __future__ import annotations

from tvm import s_tir

from schedules import (
    cpu,
    cpu_amx,
    cpu_amx_bf16,
    cpu_bf16_dot,
    cpu_concat,
    cpu_conv_narrow,
    cpu_fma,
    cpu_geglu,
    cpu_gemv,
    cpu_group_norm,
    cpu_layer_norm,
    cpu_madd,
    cpu_vnni,
    cpu_winograd,
    cpu_winograd_by_weights,
    cpu_winograd_dot,
    cpu_winograd_dot_by_weights,
    gpu,
    injective,
)
from schedules.cpu import CpuInfo
from sdcompile.kernels import layouts
from sdcompile.kernels.spec import KernelSpec

RULES = {"cpu": cpu.RULES | {"injective": injective.cpu}, "gpu": gpu.RULES | {"injective": injective.gpu}}


def apply(sch: s_tir.Schedule, spec: KernelSpec, kind: str, cpu_info: CpuInfo | None = None) -> None:
    """Schedule the function ``spec.name`` (already selected with ``sch.work_on``) for ``kind``."""
    info = cpu_info or CpuInfo() if kind == "cpu" else None
    rule = rule_for(spec, kind, info)
    if kind == "cpu":
        rule(sch, spec, info)
    else:
        rule(sch, spec)


def rule_for(spec: KernelSpec, kind: str, cpu_info: CpuInfo | None = None):
    """The built-in rule that schedules ``spec`` for ``kind`` (``cpu``: ``cpu_rule`` on this host's CPU)."""
    try:
        rule = RULES[kind][spec.family]
    except KeyError:
        raise ValueError(f"no {kind} schedule for op {spec.op!r} (family {spec.family!r})") from None
    if kind == "gpu" and spec.op == "attention" and not spec.attr("tiled") and 1 in (spec.attr("S"), spec.attr("T")):
        rule = injective.gpu_fallback  # one query or one key (a UNet's 1x1 level): loops of extent 1 everywhere
    if kind == "cpu":
        rule = cpu_rule(spec, cpu_info or CpuInfo(), rule)
    return rule


def builtin_rule_name(spec: KernelSpec, kind: str) -> str:
    """The qualified name of the built-in rule for ``spec`` (``rule_for``): a tuning record names the rule it was
    measured against, and stops applying when another rule takes the kernel (a faster built-in kernel may have
    come since)."""
    rule = rule_for(spec, kind)
    return f"{rule.__module__}.{rule.__qualname__}"


def cpu_rule(spec: KernelSpec, info: CpuInfo, rule=None):
    """The CPU rule that schedules ``spec``: the first specialised kernel that takes it, else ``rule`` (the
    family's rule, by default from ``RULES``)."""
    if rule is None:
        rule = RULES["cpu"][spec.family]
    if cpu_amx_bf16.applicable(spec, info.lanes, _host_bf16()):  # bf16 products asked for: on the tile unit
        rule = cpu_amx_bf16.linear
    elif cpu_winograd_dot_by_weights.applicable(spec, info.lanes, _host_bf16_dot()):  # no tile unit, a 3x3 conv
        rule = cpu_winograd_dot_by_weights.linear  # over 16-128 tiles: Winograd by output channels, vdpbf16ps
    elif cpu_winograd_dot.applicable(spec, info.lanes, _host_bf16_dot()):  # no tile unit, a 3x3 conv over many
        rule = cpu_winograd_dot.linear  # pixels: Winograd F(2x2, 3x3) with vdpbf16ps products
    elif cpu_bf16_dot.applicable(spec, info.lanes, _host_bf16_dot()):  # the same, no tile unit: vdpbf16ps
        rule = cpu_bf16_dot.linear  # (it reads the tile unit's packed bf16 operands too)
    elif spec.attr("wlayout") == layouts.VNNI_Q8_0 and cpu_vnni.applicable(spec, info.lanes):
        rule = cpu_vnni.linear  # int8 products, q8_0 stored in the VNNI GEMM's order
    elif spec.attr("wlayout") and not cpu_fma.applicable(spec, info.lanes):
        pass  # weights packed for a kernel this CPU lacks: the TE compute reads the layout
    elif cpu_conv_narrow.applicable(spec, info.lanes):  # a conv to a few channels (a VAE's to RGB): dot products
        rule = cpu_conv_narrow.conv2d
    elif cpu_vnni.applicable(spec, info.lanes):  # int8 products asked for (q8_0/q4_0 without AMX-BF16): VNNI
        rule = cpu_vnni.linear
    elif cpu_madd.applicable(spec, info.lanes):  # int8 / int16 products asked for, AVX2 without VNNI: vpmaddwd
        rule = cpu_madd.linear
    elif cpu_amx.applicable(spec, info.lanes) and not cpu_winograd.over_products(spec, info.lanes, "cpu_amx"):
        # several rows, a CPU with a tile unit: GEMM on AMX (not a 3x3 conv over many pixels: Winograd)
        rule = cpu_amx.linear
    elif cpu_gemv.applicable(spec, info.lanes):  # few rows of x, a GGUF quant type: GEMV at memory bandwidth
        rule = cpu_gemv.linear
    elif cpu_winograd_by_weights.applicable(spec, info.lanes):  # f32 products, a 3x3 conv over 16-128 tiles
        rule = cpu_winograd_by_weights.linear  # and many channels: F(2x2, 3x3) by output channels, U in cache
    elif cpu_winograd.applicable(spec, info.lanes):  # f32 products, a 3x3 conv over more tiles: F(2x2, 3x3)
        rule = cpu_winograd.linear
    elif cpu_fma.applicable(spec, info.lanes):  # f32 products, 32 rows or more: register-blocked FMA GEMM
        rule = cpu_fma.linear
    elif cpu_group_norm.applicable(spec, info.lanes):  # channels in vectors: passes in memory order
        rule = cpu_group_norm.group_norm
    elif cpu_concat.applicable(spec, info.lanes):  # row by row, input by input, in vector copies
        rule = cpu_concat.concat
    elif cpu_layer_norm.applicable(spec, info.lanes):  # rows in L1, 16-bit y in whole lines
        rule = cpu_layer_norm.layer_norm
    elif cpu_geglu.applicable(spec, info.lanes):  # value and gate halves in vectors, 16-bit y in whole lines
        rule = cpu_geglu.geglu
    return rule


def cpu_rounds_to_bf16(spec: KernelSpec, info: CpuInfo | None = None) -> frozenset[str]:
    """The inputs (parameter names) that the CPU kernel taking ``spec`` rounds to bf16, nearest even, before any other
    use: its module's ``ROUNDS_TO_BF16`` (the bf16 GEMMs' x, the bf16 flash attentions' q, k and v); none for the
    others."""
    import sys

    info = info or CpuInfo()
    if spec.family == "linear":
        module = sys.modules[cpu_rule(spec, info).__module__]
    elif spec.op == "attention":
        module = cpu.attention_kernel(spec, info)
    else:
        return frozenset()
    return frozenset(getattr(module, "ROUNDS_TO_BF16", ()))


def _host_bf16() -> bool:
    from sdcompile.codegen.tvm_layer import host_amx_bf16

    return host_amx_bf16()


def _host_bf16_dot() -> bool:
    """AVX512_BF16 where the tile unit does not take bf16 products (none, or ``SDCOMPILE_NO_AMX``)."""
    from sdcompile.codegen.tvm_layer import host_amx_bf16, host_avx512_bf16

    return host_avx512_bf16() and not host_amx_bf16()


__all__ = ["CpuInfo", "apply", "cpu_rounds_to_bf16", "cpu_rule"]
