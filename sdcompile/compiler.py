"""The compile driver: file -> tensor store -> IR -> passes -> kernels + plan -> artifact."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from sdcompile import __version__
from sdcompile.codegen.artifact import (
    FORMAT_VERSION,
    LUTS_FILE,
    WEIGHTS_FILE,
    sha256_file,
    write_artifact,
    write_luts,
    write_weights_gguf,
)
from sdcompile.codegen.plan import build_plan, plan_luts
from sdcompile.errors import OptionError
from sdcompile.formats import open_store
from sdcompile.ir import Graph
from sdcompile.ir.weights import raw_bytes
from sdcompile.models import lift
from sdcompile.passes.context import CompileOptions, PassContext
from sdcompile.passes.pipeline import PIPELINE, run_pipeline


class _Progress:
    """A tqdm bar over the compile stages, or nothing when progress is off."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="compile", unit="step", leave=False, dynamic_ncols=True)

    def step(self, what: str, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def compile_graph_passes(
    path: Path, options: CompileOptions, dump_ir: Path | None = None, on_pass=None
) -> tuple[Graph, PassContext, Any]:
    store = open_store(path)
    g = lift(store, batch=options.batch)
    ctx = PassContext(options)
    g = run_pipeline(g, ctx, dump_ir=dump_ir, on_pass=on_pass)
    return g, ctx, store


def _default_budget(target: str) -> tuple[int | None, str]:
    """The probed device limit at compile time, where there is one to probe."""
    if target in ("cpu", "vulkan"):
        # lavapipe and integrated adapters share system memory; a discrete Vulkan GPU is checked again at load.
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) * 1024, "system memory (MemTotal)"
        except OSError:
            pass
        return None, "not probed"
    from runtime.device import probe_cuda

    devs = probe_cuda()
    if devs:
        return min(d["total_mem"] for d in devs), f"CUDA device {devs[0]['name']}"
    return None, "no CUDA device here; checked again when the artifact loads"


def compile_model(
    path: str | Path,
    out_dir: str | Path,
    options: CompileOptions,
    *,
    progress: bool = False,
    dump_ir: Path | None = None,
) -> dict[str, Any]:
    path, out_dir = Path(path), Path(out_dir)
    if options.target not in ("cpu", "vulkan", "cuda"):
        raise OptionError(f"unknown target {options.target!r}; choose cpu, vulkan or cuda")
    budget_source = "--memory-budget"
    if options.memory_budget is None:
        options.memory_budget, budget_source = _default_budget(options.target)
    bar = _Progress(progress, total=len(PIPELINE) + 4)
    try:
        bar.step("lift", 0)
        g, ctx, store = compile_graph_passes(path, options, dump_ir, on_pass=bar.step)
        ctx.report["memory"]["budget_source"] = budget_source
        specs, plan = build_plan(g)
        bar.step("plan")
        weights = [(v.name, v.dtype, v.shape) for v in sorted(g.weights(), key=lambda v: v.name)]

        manifest: dict[str, Any] = {
            "format": "sdcompile-artifact",
            "format_version": FORMAT_VERSION,
            "sdcompile_version": __version__,
            "tvm_version": _tvm_version(),
            "source": {
                "file": path.name,
                "sha256": sha256_file(path),
                "format": store.format,
                "family": g.meta.get("family"),
                "convention": g.meta.get("convention"),
                "config": g.meta.get("config"),
            },
            "target": options.target,
            "options": {
                "type": options.type,
                "tensor_type_rules": [f"{r}={t}" for r, t in options.tensor_type_rules],
                "fallback_policy": options.fallback_policy,
                "batch": options.batch,
                "memory_budget": options.memory_budget,
            },
            "plan": plan,
            "weights": {"file": WEIGHTS_FILE, "tensors": {n: {"dtype": t, "shape": list(s)} for n, t, s in weights}},
            "memory": ctx.report["memory"],
            "report": {k: ctx.report[k] for k in ("quantize", "fuse", "legalize")},
        }

        def fill(tmp: Path) -> None:
            manifest["kernels"] = _build_kernels(specs, options, tmp, bar)
            values = {v.name: v for v in g.weights()}
            write_weights_gguf(tmp / WEIGHTS_FILE, [(n, t, s, raw_bytes(values[n])) for n, t, s in weights])
            luts = plan_luts(specs)
            if luts:  # only i-quant kernels read tables; other artifacts keep their exact former contents
                manifest["luts"] = write_luts(tmp / LUTS_FILE, luts)
            bar.step("weights")

        write_artifact(out_dir, manifest, fill)
        bar.step("done")
    finally:
        bar.close()
    return manifest


def _build_kernels(specs, options: CompileOptions, out: Path, bar: _Progress) -> dict[str, Any]:
    if options.target == "cuda":
        from sdcompile.codegen.cuda_build import DEFAULT_ARCHS, build_cuda

        res = build_cuda(specs, options.cuda_archs or DEFAULT_ARCHS, out)
    else:
        from sdcompile.codegen.build import build_kernels

        res = build_kernels(specs, options.target, out)
    bar.step("kernels")
    res.setdefault("host", {"machine": platform.machine()})
    return res


def _tvm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apache-tvm")
    except PackageNotFoundError:
        return "unknown"
