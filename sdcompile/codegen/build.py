"""Build the kernels of an artifact for one target, and describe them for the runtime.

The description (a JSON-serializable dict, stored in the artifact manifest) is everything the runtime needs to call
a kernel without importing the compiler:

    {"target": "cpu" | "vulkan", "files": [paths relative to out_dir], "tvm_version": ..., <target details>,
     "kernels": {name: {"op": ..., "attrs": {...}, "params": [{"name", "kind", "shape", "dtype", "is_output",
                                                                "words"? (raw and lut)}, ...],
                        "launch": [entry, ...]}}}

A launch entry is one device function call, in the order they run:

- cpu:    {"entry": symbol in the shared library, "file": "kernels_cpu.so",
           "buffers": parameter names in call order}
- vulkan: {"entry": WGSL entry point, "file": "vulkan/<entry>.wgsl", "grid": [x, y, z], "block": [x, y, z],
           "buffers": parameter names in binding order (binding i = buffers[i]),
           "pods": [{"dtype", "value"}] — the uniform struct's fields; ``packGridDimX`` (= grid[0]) follows them
           in the uniform bound at binding len(buffers)}

Same specs give the same bytes: kernels are ordered by name and every dict is built in sorted order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sdcompile.codegen import tvm_layer
from sdcompile.errors import OptionError
from sdcompile.kernels.spec import KernelSpec, ParamSpec

TARGETS = ("cpu", "vulkan")
CPU_LIBRARY = "kernels_cpu.so"
WGSL_DIR = "vulkan"

Progress = Callable[[int, int, str], None]  # (done, total, what is happening)


def _param_info(p: ParamSpec) -> dict:
    info = {"name": p.name, "kind": p.kind, "shape": list(p.shape), "dtype": p.dtype, "is_output": p.is_output}
    if p.kind in ("raw", "lut"):
        info["words"] = p.words()
    return info


def _kernel_info(spec: KernelSpec, launch: list[dict]) -> dict:
    return {
        "op": spec.op,
        "attrs": dict(spec.attrs),
        "params": [_param_info(p) for p in spec.params],
        "launch": launch,
    }


def _unique(specs: list[KernelSpec]) -> list[KernelSpec]:
    by_name: dict[str, KernelSpec] = {}
    for s in specs:
        if by_name.setdefault(s.name, s) != s:
            raise ValueError(f"two different kernel specs share the name {s.name!r}")
    return [by_name[n] for n in sorted(by_name)]


def _param_names(specs: list[KernelSpec]) -> dict[str, list[str]]:
    return {s.name: [p.name for p in s.params] for s in specs}


# Kernel libraries built in this process, by (target, code-generation target, specs): compiling the same model in
# several formats (or twice) builds its kernels once. Only bytes TVM produced are kept, so a hit writes exactly
# what a fresh build would.
_BUILT: dict[tuple, tuple[dict[str, bytes], dict]] = {}


def build_kernels(specs: list[KernelSpec], target: str, out_dir: Path, *, progress: Progress | None = None) -> dict:
    """Compile every spec for ``target`` ("cpu" or "vulkan") into ``out_dir``; return the description above."""
    if target not in TARGETS:
        raise OptionError(f"unknown kernel target {target!r}; choose one of {', '.join(TARGETS)}")
    specs = _unique(specs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = (
        target,
        repr(sorted(tvm_layer.cpu_target().items())) if target == "cpu" else "",
        tuple(s.name for s in specs),
        tvm_layer.records_key(),  # tuning records change the code (compile applies them; see tvm_layer)
    )
    if key in _BUILT:
        files, result = _BUILT[key]
        for rel, data in files.items():
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / rel).write_bytes(data)
        return json.loads(json.dumps(result))
    result = _build_kernels(specs, target, out_dir, progress)
    _BUILT[key] = ({rel: (out_dir / rel).read_bytes() for rel in result["files"]}, json.loads(json.dumps(result)))
    return result


def _build_kernels(specs: list[KernelSpec], target: str, out_dir: Path, progress: Progress | None) -> dict:
    step = progress or (lambda done, total, what: None)
    total = len(specs) + 1
    result: dict = {"target": target, "tvm_version": tvm_layer.version()}

    if target == "cpu":
        cpu = tvm_layer.cpu_target()
        mod = tvm_layer.scheduled_module(specs, "cpu", cpu, progress=lambda i, name: step(i, total, name))
        step(len(specs), total, f"compiling {len(specs)} kernels with LLVM ({cpu['mcpu']})")
        tvm_layer.export_library(tvm_layer.compile_cpu(mod, cpu), out_dir / CPU_LIBRARY)
        result["cpu"] = {"mcpu": cpu["mcpu"], "mtriple": tvm_layer.system_triple()}
        if cpu.get("mattr"):
            result["cpu"]["mattr"] = list(cpu["mattr"])
        # the runtime refuses a CPU without these, by name, instead of dying of an illegal instruction
        result["cpu"]["requires"] = tvm_layer.cpu_requires(cpu)
        result["files"] = [CPU_LIBRARY]
        result["kernels"] = {
            s.name: _kernel_info(s, [{"entry": s.name, "file": CPU_LIBRARY, "buffers": [p.name for p in s.params]}])
            for s in specs
        }
    else:
        mod = tvm_layer.scheduled_module(specs, "gpu", progress=lambda i, name: step(i, total, name))
        step(len(specs), total, f"generating WGSL for {len(specs)} kernels")
        source, launch = tvm_layer.lower_gpu_module(mod, "webgpu", _param_names(specs))
        shaders = tvm_layer.split_wgsl(source)
        (out_dir / WGSL_DIR).mkdir(exist_ok=True)
        files = []
        for s in specs:
            for entry in launch[s.name]:
                rel = f"{WGSL_DIR}/{entry['entry']}.wgsl"
                (out_dir / rel).write_text(shaders[entry["entry"]], encoding="utf-8")
                entry["file"] = rel
                files.append(rel)
        result["files"] = sorted(files)
        result["kernels"] = {s.name: _kernel_info(s, [dict(sorted(e.items())) for e in launch[s.name]]) for s in specs}
    step(total, total, "done")
    return result


def lower_gpu(specs: list[KernelSpec], kind: str) -> tuple[str, dict[str, list[dict]]]:
    """Device source for ``kind`` ("cuda": CUDA C for nvcc; "webgpu": WGSL) and per-kernel launch entries
    ({"entry", "grid", "block", "buffers", "pods"[, "dyn_shared_bytes"]}, as above; device arguments are the
    buffers in that order, then the pods). Needs no GPU and no driver."""
    if kind not in ("cuda", "webgpu"):
        raise OptionError(f"unknown GPU code kind {kind!r}; choose cuda or webgpu")
    specs = _unique(specs)
    mod = tvm_layer.scheduled_module(specs, "gpu")
    return tvm_layer.lower_gpu_module(mod, kind, _param_names(specs))
