"""Human-readable compile reports and the `bench` measurement."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from sdcompile.passes.memory_plan import fmt_bytes


def render_compile_report(m: dict[str, Any], out: Path) -> str:
    r = m["report"]
    q = r["quantize"]["types"]
    lines = [
        f"compiled {m['source']['file']} ({m['source']['format']}, {m['source']['family']}, "
        f"{m['source']['convention']} names) for {m['target']}",
        "",
        "weights   " + ", ".join(f"{t}×{n}" for t, n in q.items()),
        f"fusion    {r['fuse']['nodes']} kernels launched; "
        + ", ".join(f"{k} ×{v}" for k, v in sorted(r["fuse"]["fired"].items())),
    ]
    leg = r["legalize"]
    lines.append(
        f"legalize  {leg['backend']}: {leg['native']} weight reads native, "
        f"{len(leg['fallbacks'])} fallbacks (policy {leg['policy']})"
    )
    for d in leg["fallbacks"]:
        lines.append(f"          {d['tensor']}: {d['from']} -> {d['to']} by {d['step']}: {d['why']}")
    mem = m["memory"]
    budget = mem.get("budget_bytes")
    lines.append(
        f"memory    peak {fmt_bytes(mem['peak_bytes'])} = weights {fmt_bytes(mem['weights_bytes'])} + activations "
        f"{fmt_bytes(mem['activation_bytes'])} in {mem['slots']} slots (without reuse "
        f"{fmt_bytes(mem['activation_bytes_without_reuse'])}) + inputs {fmt_bytes(mem['input_bytes'])}\n"
        "          budget "
        + (f"{fmt_bytes(budget)} ({mem.get('budget_source', '')})" if budget else f"none ({mem.get('budget_source')})")
    )
    k = m["kernels"]
    build = k.get("build") or {}
    extra = f", archs {', '.join(build.get('archs', []) + build.get('ptx', []))}" if build else ""
    lines.append(f"kernels   {len(k['kernels'])} distinct for {k['target']}{extra}")
    lines.append(
        f"artifact  {out} ({len(m['files'])} files, {fmt_bytes(sum(f['bytes'] for f in m['files'].values()))})"
    )
    return "\n".join(lines)


def bench_artifact(path: Path, repeat: int = 20, warmup: int = 3, threads: int | None = None) -> dict[str, Any]:
    import numpy as np

    import runtime

    model = runtime.load(path, num_threads=threads)
    inputs = {}
    for name, spec in model.plan["inputs"].items():
        hi = spec.get("max_value") or 1
        inputs[name] = np.random.default_rng(0).integers(0, hi + 1, spec["shape"]).astype(np.int32)
    for _ in range(warmup):
        model.run(inputs)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.run(inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    dev = model.device
    return {
        "artifact": str(path),
        "device": dev.get("name") or dev.get("adapter") or dev.get("backend"),
        "target": model.manifest["target"],
        "batch": next(iter(model.plan["inputs"].values()))["shape"][0],
        "repeat": repeat,
        "min_ms": min(times),
        "median_ms": statistics.median(times),
        "max_ms": max(times),
    }
