"""Where a function's time goes: each kernel launch timed on its own (the device synchronised after each), summed per
kernel and per op, with the arithmetic each does so the attained GFLOP/s can be read beside the machine's peak.

Synchronising after every launch removes the overlap a GPU would otherwise get between launches, so the total is
somewhat above an unprofiled call; on the CPU, where kernels run one after another anyway, the two agree.
"""

from __future__ import annotations

import time
from typing import Any


def kernel_flops(info: dict) -> float | None:
    """Multiply-adds x 2 of one launch of a kernel, from its manifest record (``op`` and ``attrs``); None for kernels
    whose cost is memory traffic, not arithmetic (norms, pointwise, data movement) or records without attributes."""
    op, a = info.get("op"), info.get("attrs") or {}
    if op == "linear":
        return 2.0 * a["M"] * a["N"] * a["K"]
    if op == "conv2d":
        t, left, b, r = a["pads"]
        ho = (a["H"] + t + b - a["kh"]) // a["stride"] + 1
        wo = (a["W"] + left + r - a["kw"]) // a["stride"] + 1
        return 2.0 * a["B"] * ho * wo * a["N"] * a["kh"] * a["kw"] * a["C"]
    if op == "attention":  # q k^T and p v, each 2 B H S T Dh
        return 4.0 * a["B"] * a["H"] * a["S"] * a.get("T", a["S"]) * a["Dh"]
    return None


def kernel_bytes(info: dict) -> int:
    """Bytes one launch reads and writes at least: every parameter once."""
    import numpy as np

    total = 0
    for p in info.get("params", []):
        if p["kind"] in ("raw", "lut"):
            total += 4 * int(p["words"])
        else:
            total += int(np.prod(p["shape"])) * (2 if p["dtype"] in ("float16", "bfloat16") else 4)
    return total


def profile(model, fn: str, inputs: dict, repeat: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Per-kernel times of ``fn`` (the median over ``repeat`` runs of each launch's seconds, summed per kernel)."""
    for _ in range(warmup):
        model.call(fn, inputs)
    f = model.functions[fn]
    kernels = model.manifest["kernels"]
    kernels = kernels.get("kernels", kernels)
    bound = {}
    for k, v in inputs.items():  # the inputs once, as call() binds them
        model.ex.upload(model.inputs[fn][k], model._check_input(fn, k, v).reshape(-1))
        bound[k] = model.inputs[fn][k]
    runs: list[list[float]] = [[] for _ in f["steps"]]
    for _ in range(repeat):
        for i, step in enumerate(f["steps"]):
            args = model.step_args(fn, step, bound)
            model.ex.synchronize()
            t0 = time.perf_counter()
            model.ex.launch(step["kernel"], args)
            model.ex.synchronize()
            runs[i].append(time.perf_counter() - t0)
    per: dict[str, dict[str, Any]] = {}
    for step, ts in zip(f["steps"], runs):
        name = step["kernel"]
        info = kernels.get(name, {})
        rec = per.setdefault(
            name,
            {"kernel": name, "op": info.get("op", name.split("_")[0]), "calls": 0, "seconds": 0.0, "flops": 0.0},
        )
        rec["calls"] += 1
        rec["seconds"] += sorted(ts)[len(ts) // 2]
        fl = kernel_flops(info)
        rec["flops"] = None if fl is None or rec["flops"] is None else rec["flops"] + fl
        rec["bytes"] = rec.get("bytes", 0) + kernel_bytes(info)
    rows = sorted(per.values(), key=lambda r: -r["seconds"])
    by_op: dict[str, dict[str, Any]] = {}
    for r in rows:
        o = by_op.setdefault(r["op"], {"op": r["op"], "calls": 0, "seconds": 0.0, "flops": 0.0, "bytes": 0})
        o["calls"] += r["calls"]
        o["seconds"] += r["seconds"]
        o["bytes"] += r["bytes"]
        o["flops"] = None if r["flops"] is None or o["flops"] is None else o["flops"] + r["flops"]
    for r in list(rows) + list(by_op.values()):
        r["gflops"] = r["flops"] / r["seconds"] / 1e9 if r["flops"] and r["seconds"] > 0 else None
        r["gbytes_per_s"] = r["bytes"] / r["seconds"] / 1e9 if r["seconds"] > 0 else None
    total = sum(r["seconds"] for r in rows)
    return {
        "function": fn,
        "total_s": total,
        "flops": sum(r["flops"] or 0 for r in rows),
        "by_op": sorted(by_op.values(), key=lambda r: -r["seconds"]),
        "kernels": rows,
    }
