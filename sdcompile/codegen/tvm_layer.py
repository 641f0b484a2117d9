"""The one place that calls TVM's compiler API (TVM 0.27), so that an upgrade touches this file only.

Kernel math (``sdcompile.kernels``) and schedules (``schedules/``) use TE and ``s_tir.Schedule`` directly: those
are the languages they are written in. Everything else — making PrimFuncs, targets, lowering, reading launch
geometry out of the lowered host code, compiling and exporting — goes through here.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import tvm
import tvm_ffi

from sdcompile.errors import ToolchainError

if tvm_ffi.get_global_func("target.build.llvm", allow_missing=True) is None:
    # `import tvm` happens once per process; the runtime's CPU executor imports the runtime library alone when
    # the compiler has not been imported yet.
    raise ToolchainError(
        "TVM was loaded as its runtime library only (TVM_USE_RUNTIME_LIB=1, or an artifact was run before "
        "anything was compiled in this process); import sdcompile before running artifacts when both happen "
        "in one process"
    )

from tvm import te, tirx  # noqa: E402 - after the check above, which explains the usual failure
from tvm.tirx.build import split_host_device_mods, tir_to_runtime  # noqa: E402

from sdcompile.kernels import te_compute  # noqa: E402
from sdcompile.kernels.spec import KernelSpec  # noqa: E402

# WebGPU's guaranteed limits (maxComputeInvocationsPerWorkgroup, maxComputeWorkgroupStorageSize); CUDA kernels
# share the GPU schedules, so they obey the same limits.
GPU_MAX_THREADS = 256
GPU_MAX_SHARED_BYTES = 16384
# WebGPU's maxComputeWorkgroupsPerDimension; TVM's packGridDimX trick exists to exceed it, but its bounds check
# (`> packGridDimX`) runs one padded workgroup too many, so schedules stay below instead.
GPU_MAX_GRID = 65535


class LoweringError(RuntimeError):
    """A schedule produced something the executors cannot launch (an internal bug, not a user error)."""


def version() -> str:
    return str(tvm.__version__)


def system_cpu() -> str:
    # "native" silently becomes generic code in TVM 0.27; ask LLVM for the host CPU's name instead.
    return str(tvm.target.codegen.llvm_get_system_cpu())


def system_triple() -> str:
    return str(tvm.target.codegen.llvm_get_system_triple())


def host_amx() -> bool:
    """Whether this host can run AMX-INT8 tile code: the CPU has it (Linux's cpuinfo flags; LLVM's host detection
    names a VM's Sapphire Rapids "rocketlake", which has none) and Linux grants this process the tile state.
    SDCOMPILE_NO_AMX=1 turns it off (to compare, or for artifacts that must run on CPUs without it)."""
    global _HOST_AMX
    if _HOST_AMX is None:
        _HOST_AMX = _probe_amx()
    return _HOST_AMX and os.environ.get("SDCOMPILE_NO_AMX", "") in ("", "0") and not mcpu_override()


_HOST_AMX: bool | None = None


def host_amx_bf16() -> bool:
    """Whether this host's tile unit also multiplies bf16 (AMX-BF16: ``TDPBF16PS``), for ``--compute bf16``."""
    return host_amx() and "amx_bf16" in _cpu_flags()


def host_avx512_bf16() -> bool:
    """Whether this host's vector unit multiplies bf16 pairs (AVX512_BF16: ``vdpbf16ps``; AMD Zen 4 and later,
    Intel Cooper Lake and Sapphire Rapids), for ``--compute bf16`` where the tile unit is missing or turned off."""
    return "avx512_bf16" in _cpu_flags()


def host_avx512_vnni() -> bool:
    """Whether this host's vector unit multiplies bytes (AVX512_VNNI: ``vpdpbusd``; Intel since Cascade Lake, AMD
    Zen 4 and later), for int8 products of q8_0 / q4_0 weights under ``--compute bf16`` without the tile unit."""
    return "avx512_vnni" in _cpu_flags()


def host_avx2() -> bool:
    """Whether this host's vector unit has AVX2 (``vpmaddwd`` on 256 bits: int8 products of q8_0 / q4_0 weights and
    int16 products of float weights under ``--compute bf16`` where VNNI, bf16 units and the tile unit are missing: AMD
    Zen 2 and 3, Intel Haswell to Alder Lake)."""
    return "avx2" in _cpu_flags()


# CPU vendors whose AVX512_BF16 vdpbf16ps runs at least at the f32 FMA rate per FLOP: AMD Zen 4 and later (twice
# it: one 512-bit vdpbf16ps, 64 FLOP, per cycle against one 512-bit FMA, 32). Intel's runs at half its FMA rate
# (Sapphire Rapids measured: 232 against 455 GFLOP/s on 2 threads, benchmarks/results/sd15.md), so there bf16
# products on the vector unit would be slower than f32 ones, and less exact.
BF16_DOT_FAST_VENDORS = ("AuthenticAMD",)


def cpu_vendor() -> str:
    """The CPU's vendor id as Linux reports it ("GenuineIntel", "AuthenticAMD"), or "" where it cannot say."""
    return _cpuinfo("vendor_id")


def host_bf16_dot_fast() -> bool:
    """Whether bf16 products on the vector unit (``vdpbf16ps``) beat f32 FMAs on this host
    (``BF16_DOT_FAST_VENDORS``)."""
    return host_avx512_bf16() and cpu_vendor() in BF16_DOT_FAST_VENDORS


@functools.cache
def _cpuinfo(field: str) -> str:
    """/proc/cpuinfo's ``field`` (the runtime's reader), read once per process: every target and every kernel's
    schedule asks."""
    from runtime.executors.cpu import cpuinfo

    return cpuinfo(field) or ""


def _cpu_flags() -> list[str]:
    """This CPU's feature flags; none where ``SDCOMPILE_MCPU`` names the CPU to build for: its own optional units
    (AMX, AVX512_BF16, VNNI) then stay unused, as on a CPU that has only what LLVM's model of that one has."""
    return [] if mcpu_override() else _cpuinfo("flags").split()


def mcpu_override() -> str:
    """``SDCOMPILE_MCPU``: LLVM's name of a CPU to build the kernels for instead of this one (``haswell`` or
    ``znver3``: AVX2 without AVX-512), so that an artifact runs on an older CPU than the compiling one, and the
    kernels of such a CPU can be tested on a newer one; "" when unset."""
    return os.environ.get("SDCOMPILE_MCPU", "")


def _probe_amx() -> bool:
    if not {"amx_tile", "amx_int8"} <= set(_cpuinfo("flags").split()):
        return False
    import ctypes

    try:  # arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): 0 when granted
        return ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0
    except (OSError, AttributeError):
        return False


# LLVM feature -> the Linux cpuinfo flag of the same instructions: what an artifact's CPU code needs, recorded in
# its manifest (``cpu_requires``) and checked by the runtime before it loads the code, so a CPU without them gets a
# message naming them instead of an illegal instruction part-way through a run
CPUINFO_FLAGS = {
    "sse4.2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}


def cpu_requires(target: dict) -> list[str]:
    """The cpuinfo flags (``CPUINFO_FLAGS``) of the features an x86 CPU target enables (its mcpu and mattr)."""
    if "x86" not in system_triple():
        return []
    t = tvm.target.Target(target)
    return sorted(flag for feat, flag in CPUINFO_FLAGS.items() if tvm.target.codegen.llvm_cpu_has_features(feat, t))


def cpu_target(mcpu: str | None = None, num_cores: int | None = None) -> dict:
    mcpu = mcpu or mcpu_override() or None
    t: dict = {"kind": "llvm", "mcpu": mcpu or system_cpu()}
    if mcpu is None:
        # LLVM's host detection names a VM's CPU after the nearest model it knows ("rocketlake" here), which may
        # lack features the CPU has: AMX where Linux grants it, AVX512_BF16 (without it LLVM cannot emit vdpbf16ps)
        mattr = ["+amx-tile", "+amx-int8"] + (["+amx-bf16"] if host_amx_bf16() else []) if host_amx() else []
        mattr += ["+avx512bf16"] if host_avx512_bf16() else []
        if mattr:
            t["mattr"] = mattr
    if num_cores:
        t["num-cores"] = int(num_cores)
    return t


def gpu_target(kind: str, arch: str = "sm_75") -> dict:
    host = {"kind": "llvm"}
    limits = {"max_num_threads": GPU_MAX_THREADS, "max_shared_memory_per_block": GPU_MAX_SHARED_BYTES}
    if kind == "webgpu":
        return {"kind": "webgpu", **limits, "host": host}
    if kind == "cuda":
        return {"kind": "cuda", "arch": arch, **limits, "host": host}
    raise ValueError(f"unknown GPU kind {kind!r}")


def prim_func(spec: KernelSpec) -> tirx.PrimFunc:
    """The unscheduled PrimFunc of a spec, with ``spec.name`` as its symbol."""
    # create_prim_func names every function "main"; the symbol must be unique within a module.
    return te.create_prim_func(te_compute(spec)).with_attr("global_symbol", spec.name)


def cpu_info(target: dict):
    """Vector lanes and register count of an LLVM target, for the CPU schedules."""
    from schedules import CpuInfo

    t = tvm.target.Target(target)
    has = tvm.target.codegen.llvm_cpu_has_features
    if has("avx512f", t):
        return CpuInfo(lanes=16, registers=32)
    if has("avx", t):
        return CpuInfo(lanes=8, registers=16)
    return CpuInfo(lanes=4, registers=32 if "aarch64" in str(t.attrs.get("mtriple", "")) else 16)


def scheduled_module(
    specs: list[KernelSpec],
    kind: str,
    target: dict | None = None,
    progress: Callable[[int, str], None] | None = None,
) -> tvm.IRModule:
    """One IRModule holding every spec's PrimFunc, scheduled for ``kind`` ("cpu" or "gpu"); ``target`` (the CPU
    target dict) tunes the CPU schedules to its vector registers."""
    from schedules import apply

    cpu = (target or cpu_target()) if kind == "cpu" else None
    info = cpu_info(cpu) if cpu else None
    records = _RECORDS.get() or {}
    funcs = {}
    # the CPU schedules ask the target being built what it has (``schedules.cpu_amx.target_has``): the one given
    with tvm.target.Target(cpu) if cpu else contextlib.nullcontext():
        for i, spec in enumerate(sorted(set(specs), key=lambda s: s.name)):
            if progress:
                progress(i, f"scheduling {spec.name}")
            rec = records.get(spec.name)
            if rec is not None and rec.get("kind") == kind:
                funcs[spec.name] = replay_trace(spec, rec["trace"])
                continue
            sch = tvm.s_tir.Schedule(tvm.IRModule({spec.name: prim_func(spec)}))
            sch.work_on(spec.name)
            apply(sch, spec, kind, info)
            funcs[spec.name] = sch.mod[spec.name]
    return tvm.IRModule(funcs)


# --- tuning records (``sdcompile tune``; ``sdcompile.tuning.records``) ---------------------------------------------

# The records a build applies: set by ``compile`` around its kernel build, empty elsewhere, so kernel checks and
# tests of the built-in rules never depend on what a tuning run left on disk.
_RECORDS: contextvars.ContextVar[Mapping[str, dict] | None] = contextvars.ContextVar("tuning_records", default=None)


@contextmanager
def tuning_records(records: Mapping[str, dict]) -> Iterator[None]:
    """Inside this block ``scheduled_module`` schedules each kernel named in ``records`` ({spec name: record}) by the
    record's MetaSchedule trace instead of its built-in rule."""
    token = _RECORDS.set(dict(records))
    try:
        yield
    finally:
        _RECORDS.reset(token)


def records_key() -> str:
    """What the active records change in a build, for build caches: the traces by kernel name."""
    records = _RECORDS.get() or {}
    if not records:
        return ""
    text = json.dumps({n: [r.get("kind"), r.get("trace")] for n, r in records.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def tuning_workload(spec: KernelSpec) -> tvm.IRModule:
    """The module MetaSchedule tunes for a spec: its unscheduled PrimFunc as ``main`` (traces name the function)."""
    return tvm.IRModule({"main": prim_func(spec).with_attr("global_symbol", "main")})


def workload_digest(spec: KernelSpec) -> str:
    """SHA-256 of the spec's unscheduled PrimFunc as TVMScript: a record tuned on another compute does not apply."""
    return hashlib.sha256(tuning_workload(spec).script().encode()).hexdigest()


def trace_to_json(trace) -> list:
    """A MetaSchedule trace as plain JSON (TVM's form holds IntImm/FloatImm objects where decisions are numbers)."""

    def plain(o):
        if isinstance(o, list | tuple):
            return [plain(i) for i in o]
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items()}
        if isinstance(o, tirx.IntImm):
            return int(o.value)
        if isinstance(o, tirx.FloatImm):
            return float(o.value)
        return o

    return plain(trace.as_json())


def replay_trace(spec: KernelSpec, trace: list) -> tirx.PrimFunc:
    """The spec's PrimFunc scheduled by a recorded trace (every sampling decision is in the trace, so the result is
    the same each time), with ``spec.name`` as its symbol."""
    sch = tvm.s_tir.Schedule(tuning_workload(spec), seed=1)
    tvm.s_tir.schedule.Trace.apply_json_to_schedule(trace, sch)
    return sch.mod["main"].with_attr("global_symbol", spec.name)


def compile_cpu(mod: tvm.IRModule, target: dict):
    """Compile a module for the host CPU; returns TVM's Executable (export it with ``export_library``)."""
    return tvm.compile(mod, target=tvm.target.Target(target))


def export_library(exe, path: Path) -> None:
    """Link the compiled kernels into the shared library ``path``. The linker's own failure (TVM raises it as a
    RuntimeError carrying the command's output) becomes one line: a full disk an ``OutputError``, anything else a
    ``ToolchainError`` with the linker's last words."""
    from sdcompile.errors import OutputError, ToolchainError

    try:
        exe.export_library(str(path))
    except RuntimeError as e:
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            # an artifact is built in a hidden sibling (``artifact.write_artifact``): name the folder it is in
            where = path.parent.parent if ".tmp-" in path.parent.name else path.parent
            raise OutputError(
                f"{where}: no space left on the device to link the kernels; free some space or write the output "
                "elsewhere"
            ) from None
        if "Compilation error" not in text:
            raise
        said = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Command line")]
        raise ToolchainError(f"linking the kernels into {path.name} failed: {' / '.join(said[-3:])}") from None


# --- GPU lowering with launch geometry ---------------------------------------------------------------------------


def _calls(stmt, out: list) -> None:
    """Kernel-launch calls in the lowered host code, in execution order, with the loops around them."""
    kind = type(stmt).__name__
    if kind == "Evaluate":
        v = stmt.value
        if getattr(getattr(v, "op", None), "name", None) == "tirx.call_ffi_kernel":
            out.append(v)
        return
    if kind == "For":
        before = len(out)
        _calls(stmt.body, out)
        if len(out) > before:
            raise LoweringError(
                f"a kernel launch sits inside a host loop over {stmt.loop_var}: the schedule left a loop unbound"
            )
        return
    for attr in ("seq", "body", "then_case", "else_case"):
        child = getattr(stmt, attr, None)
        if child is None:
            continue
        if type(child).__name__ in ("Array", "list"):
            for c in child:
                _calls(c, out)
        else:
            _calls(child, out)


def _launch_entry(call, params: list[str]) -> dict:
    """Launch info of one ``call_ffi_kernel(name, buffers..., pods..., launch values...)``."""
    tags = list(call.attrs.launch_params)
    args = list(call.args)
    entry = str(args[0].value)
    values = list(args[1:])
    value_tags = [t for t in tags if t.startswith(("blockIdx.", "threadIdx.")) or t == "tirx.use_dyn_shared_memory"]
    n_launch = len(value_tags)
    operands, launch_vals = values[: len(values) - n_launch], values[len(values) - n_launch :]
    grid, block, dyn_shared = [1, 1, 1], [1, 1, 1], 0
    for tag, val in zip(value_tags, launch_vals):
        if not isinstance(val, tirx.IntImm):
            raise LoweringError(f"{entry}: launch extent {tag} = {val} is not a constant")
        if tag == "tirx.use_dyn_shared_memory":
            dyn_shared = int(val.value)
        else:
            (grid if tag.startswith("blockIdx") else block)["xyz".index(tag[-1])] = int(val.value)
    buffers, pods = [], []
    for a in operands:
        if getattr(getattr(a, "op", None), "name", None) == "tirx.buffer_data":
            name = str(a.args[0].name)
            if name not in params:
                raise LoweringError(f"{entry}: buffer {name!r} is not a kernel parameter (a global intermediate?)")
            if pods:
                raise LoweringError(f"{entry}: a buffer operand follows a scalar one")
            buffers.append(name)
        elif isinstance(a, tirx.IntImm):
            # The executors pass buffers first, then scalars (WGSL: bindings, then the uniform struct).
            pods.append({"dtype": str(a.ty), "value": int(a.value)})
        else:
            raise LoweringError(f"{entry}: unsupported kernel operand {a}")
    if grid[0] > GPU_MAX_GRID or grid[1] > GPU_MAX_GRID or grid[2] != 1:
        raise LoweringError(f"{entry}: grid {grid} exceeds {GPU_MAX_GRID} per dimension or uses blockIdx.z")
    if block[0] * block[1] * block[2] > GPU_MAX_THREADS:
        raise LoweringError(f"{entry}: workgroup {block} has more than {GPU_MAX_THREADS} invocations")
    info = {"entry": entry, "grid": grid, "block": block, "buffers": buffers, "pods": pods}
    if dyn_shared:
        info["dyn_shared_bytes"] = dyn_shared
    return info


def lower_gpu_module(mod: tvm.IRModule, kind: str, params: dict[str, list[str]]) -> tuple[str, dict[str, list]]:
    """Lower a scheduled module for a GPU target without needing the device (or its driver).

    Returns the device source (CUDA C or WGSL, every device function) and, per host function, the device
    functions it launches in order: entry point, grid and workgroup sizes, buffer operands by parameter name (the
    order of the device function's buffer arguments, which is the WGSL binding order) and constant scalar
    operands (WGSL: the uniform struct's fields before ``packGridDimX``).
    """
    target = tvm.target.Target(gpu_target(kind))
    mod = tirx.transform.BindTarget(target)(mod)
    pipeline, finalize_host, finalize_device = tirx.get_default_tir_pipeline(target)
    mod = pipeline(mod)
    host_mod, device_mods = split_host_device_mods(mod)
    launch: dict[str, list] = {}
    for gv, func in host_mod.functions.items():
        name = gv.name_hint
        if name not in params:
            continue
        found: list = []
        _calls(func.body, found)
        launch[name] = [_launch_entry(c, params[name]) for c in found]
    host_mod = finalize_host()(host_mod)
    device_mods = {t: finalize_device()(m) for t, m in device_mods.items()}
    # Without libcuda, the CUDA codegen returns a source-only module and never calls nvcc: what we want here. With
    # a driver it also compiles PTX; either way the default inspect_source() is the CUDA C (or WGSL) text.
    rt = tir_to_runtime(host_mod, device_mods, target.host)
    source = "\n".join(m.inspect_source() for m in rt.imports)
    return source, launch


_FUNC_HEADER = re.compile(r"^// Function: (\w+)\n//-+\n", re.M)


def split_wgsl(source: str) -> dict[str, str]:
    """TVM's WebGPU module source is every function's WGSL behind a ``// Function: name`` header; each is a
    complete shader module (its own bindings), so each must be compiled alone."""
    parts = _FUNC_HEADER.split(source)
    out: dict[str, str] = {}
    for i in range(1, len(parts), 2):
        body = parts[i + 1].strip()
        if body:
            out[parts[i]] = body + "\n"
    return out
