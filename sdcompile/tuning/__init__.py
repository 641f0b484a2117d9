"""`sdcompile tune`: MetaSchedule on a model's hot kernels; records where the result beats the built-in rules.

The model is lifted, passed and planned exactly as `compile` does it (same options, same kernel specs). Its kernels
are ranked by the work they do in one run of every function (FLOPs x launches for linear, conv2d and attention;
bytes x launches after them for the memory-bound rest), filtered by ``--kernels`` and cut to ``--top``. Each is then:

- reused: a record for this (target, machine, kernel) whose PrimFunc is the kernel's current one exists — nothing
  is tuned (``--retune`` tunes again);
- skipped: an earlier run found the built-in rule faster (a ``.declined.json`` file) — likewise unless ``--retune``;
- tuned: MetaSchedule runs ``--trials`` candidates (``tuner.search``), the fastest few are measured against the
  built-in rule on the same inputs (``tuner.measure``), and a record is written only for one that is numerically
  equal and at least ``--min-speedup`` times faster; else the measurement goes to ``.declined.json``.

Records live in ``schedules/records/<target>/<machine>/`` (``records.py``); `compile` applies them.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdcompile.errors import OptionError
from sdcompile.kernels.spec import KernelSpec
from sdcompile.passes.context import CompileOptions
from sdcompile.tuning import records

HOT_OPS = ("linear", "conv2d", "attention")


def rank_kernels(specs: list[KernelSpec], plans: dict[str, dict]) -> list[dict[str, Any]]:
    """Every kernel with its launches per run of all functions and the work they do, hottest first: FLOP-counted
    ops (linear, conv2d, attention) by FLOPs x launches, then the rest by bytes moved x launches."""
    from runtime.profile import kernel_bytes, kernel_flops
    from sdcompile.codegen.build import _kernel_info

    launches: dict[str, int] = {}
    for plan in plans.values():
        for step in plan["steps"]:
            launches[step["kernel"]] = launches.get(step["kernel"], 0) + 1
    rows = []
    for s in specs:
        info = _kernel_info(s, [])
        flops = kernel_flops(info)
        n = launches.get(s.name, 0)
        rows.append(
            {
                "spec": s,
                "name": s.name,
                "op": s.op,
                "launches": n,
                "flops": None if flops is None else flops * n,
                "bytes": kernel_bytes(info) * n,
            }
        )
    rows.sort(key=lambda r: (r["flops"] is None, -(r["flops"] or r["bytes"]), r["name"]))
    return rows


def select(rows: list[dict], pattern: str | None, top: int, per_op: bool = False) -> list[dict]:
    """The kernels to tune: those whose name or op matches ``pattern`` (a regular expression), the first ``top``
    (of each op with ``per_op``, the order kept: hottest first)."""
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise OptionError(f"--kernels {pattern!r} is not a regular expression: {e}") from None
        rows = [r for r in rows if rx.search(r["name"]) or rx.fullmatch(r["op"])]
        if not rows:
            raise OptionError(f"--kernels {pattern!r} matches no kernel of this model")
    if per_op:
        taken: dict[str, int] = {}
        out = []
        for r in rows:
            if taken.get(r["op"], 0) < top:
                taken[r["op"]] = taken.get(r["op"], 0) + 1
                out.append(r)
        return out
    return rows[: max(0, top)]


def model_kernels(path: Path | None, options: CompileOptions) -> tuple[list[KernelSpec], dict[str, dict]]:
    """The kernel specs and plans `compile` would build for this model and these options."""
    from sdcompile.codegen.plan import build_plans
    from sdcompile.compiler import _default_budget, compile_graph_passes

    if options.vae_tile_overlap is None:  # as compile_model: the kernels follow the tiling it would choose
        options.vae_tile_overlap = options.vae_tile // 4
    if options.memory_budget is None:
        options.memory_budget, _ = _default_budget(options.target)
    mod, _ctx, _store = compile_graph_passes(path, options)
    return build_plans(mod.functions)


def tune_model(
    path: Path | None,
    options: CompileOptions,
    *,
    trials: int = 32,
    pattern: str | None = None,
    top: int = 4,
    per_op: bool = False,
    rpc: tuple[str, int, str] | None = None,
    root: Path | None = None,
    min_speedup: float = 1.02,
    retune: bool = False,
    threads: int | None = None,
    seed: int = 1,
    candidates: int = 3,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Tune the hot kernels of a model for ``options.target``; returns the summary `sdcompile tune` prints."""
    from sdcompile.tuning import tuner

    say = say or (lambda msg: None)
    if trials < 1:
        raise OptionError(f"--trials must be at least 1, got {trials}")
    if top < 1:
        raise OptionError(f"--top must be at least 1, got {top}")
    if min_speedup < 0:
        raise OptionError(f"--min-speedup must not be negative, got {min_speedup}")
    tuner.check_toolchain()
    root = Path(root) if root is not None else records.default_root()
    specs, plans = model_kernels(path, options)
    chosen = select(rank_kernels(specs, plans), pattern, top, per_op)
    device = tuner.open_device(options.target, tuner.Rpc(*rpc) if rpc else None, threads)
    say(
        f"tuning {len(chosen)} of {len(specs)} kernels for {device.target} on {device.name} "
        f"({'RPC ' + rpc[2] + ' via ' + rpc[0] + ':' + str(rpc[1]) if rpc else 'this machine'}); "
        f"records in {device.target}/{device.machine}/"
    )
    results = []
    for row in chosen:
        results.append(_tune_one(row, device, root, trials, min_speedup, retune, seed, candidates, rpc, say))
    return {
        "target": device.target,
        "machine": device.machine,
        "device": device.name,
        "runner": "rpc" if rpc else "local",
        "records": str(root),
        "kernels": results,
    }


def _tune_one(row, device, root: Path, trials, min_speedup, retune, seed, keep, rpc, say) -> dict[str, Any]:
    from sdcompile.codegen import tvm_layer
    from sdcompile.tuning import tuner

    spec: KernelSpec = row["spec"]
    out = {k: row[k] for k in ("name", "op", "launches", "flops")}
    path = records.record_path(root, device.target, device.machine, spec.name)
    declined_path = records.record_path(root, device.target, device.machine, spec.name, declined=True)
    ident = records.identity(spec, device.kind)  # kind, PrimFunc digest, built-in rule: once per kernel
    rec = records.find(root, device.target, device.machine, spec.name)
    if rec is not None and records.current(rec, ident) and not retune:
        m = rec.get("measured") or {}
        say(f"  {spec.name}: record exists ({_times(m)}); reused, not tuned again")
        return out | {"status": "reused", "record": str(path), **_pick(m)}
    old = records.read(declined_path) if declined_path.is_file() else None
    if old is not None and records.current(old, ident) and not retune:
        m = old.get("measured") or {}
        say(f"  {spec.name}: built-in rule won when last tuned ({_times(m)}); skipped (--retune tunes it again)")
        return out | {"status": "skipped", "record": None, **_pick(m)}
    if device.target == "cpu" and spec.attr("mma"):
        # --compute bf16: the built-in rule multiplies on the AMX tile unit, which MetaSchedule's rules never emit;
        # its f32 candidates would be compared with bf16 products they cannot equal
        say(f"  {spec.name}: bf16 products on the tile unit (--compute bf16); not tuned")
        return out | {"status": "skipped", "record": None, "builtin_s": None, "tuned_s": None, "speedup": None}
    say(f"  {spec.name}: MetaSchedule, {trials} trials ...")
    with tempfile.TemporaryDirectory(prefix="sdcompile-tune-") as tmp:
        try:
            candidates = tuner.search(spec, device, trials, Path(tmp) / "ms", seed=seed, keep=keep)
        except Exception as e:  # MetaSchedule's own failures (no valid candidate, a rule it cannot apply)
            say(f"  {spec.name}: MetaSchedule failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            return out | {"status": "failed", "error": f"{type(e).__name__}: {e}"[:500]}
        best = None
        for cand in candidates:
            m = tuner.measure(spec, device, cand["trace"], work=Path(tmp) / "measure")
            say(
                f"    candidate: built-in {m.builtin_s * 1e6:.1f} us, tuned {m.tuned_s * 1e6:.1f} us, "
                f"error {m.error_ratio:.3g}x of the tolerance{'' if m.equal else ' (NOT equal)'}"
            )
            # pairs are compared by their own ratio: each pair ran interleaved, under the same load
            if m.equal and (best is None or m.builtin_s / m.tuned_s > best[1].builtin_s / best[1].tuned_s):
                best = (cand, m)
    if not candidates or best is None:
        say(f"  {spec.name}: no numerically equal candidate; the built-in rule stays")
        return out | {"status": "failed", "error": "no numerically equal candidate"}
    cand, m = best
    speedup = m.builtin_s / m.tuned_s if m.tuned_s > 0 else 0.0
    measured = {
        "builtin_s": m.builtin_s,
        "tuned_s": m.tuned_s,
        "speedup": round(speedup, 4),
        "builtin_runs": m.builtin_runs,
        "tuned_runs": m.tuned_runs,
        "error_ratio": m.error_ratio,
        "trials": trials,
        "runner": "rpc" if rpc else "local",
        "threads": device.threads if device.rpc is None else None,
    }
    record = {
        "format": records.FORMAT,
        "version": records.VERSION,
        "spec": spec.name,
        "op": spec.op,
        "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.attrs},
        "target": device.target,
        "kind": ident["kind"],
        "machine": device.machine,
        "device": device.name,
        "tvm_target": device.tvm_target,
        "tvm_version": tvm_layer.version(),
        "workload": ident["workload"],
        "builtin_rule": ident["builtin_rule"],
        "measured": measured,
    }
    if speedup >= min_speedup:
        records.write(path, record | {"trace": cand["trace"]})
        declined_path.unlink(missing_ok=True)
        say(f"  {spec.name}: {speedup:.2f}x the built-in rule's speed (needs {min_speedup:g}x); record written")
        return out | {"status": "tuned", "record": str(path), **_pick(measured)}
    records.write(declined_path, record)
    path.unlink(missing_ok=True)  # a retune that lost: the old record must not outlive the measurement that beat it
    say(f"  {spec.name}: {speedup:.2f}x the built-in rule (needs {min_speedup:g}x); no record, built-in rule stays")
    return out | {"status": "declined", "record": None, **_pick(measured)}


def _pick(m: dict) -> dict:
    return {k: m.get(k) for k in ("builtin_s", "tuned_s", "speedup")}


def _times(m: dict) -> str:
    if not m.get("builtin_s") or not m.get("tuned_s"):
        return "no times"
    return f"built-in {m['builtin_s'] * 1e6:.1f} us, tuned {m['tuned_s'] * 1e6:.1f} us, {m.get('speedup', 0):.2f}x"


def render(summary: dict[str, Any]) -> str:
    lines = [f"tuned for {summary['target']} on {summary['device']} ({summary['runner']} runner)"]
    w = max([len(k["name"]) for k in summary["kernels"]] + [6])
    lines.append(f"  {'kernel':<{w}}  {'status':<8}  {'built-in':>10}  {'tuned':>10}  speedup")
    for k in summary["kernels"]:
        b, t, s = k.get("builtin_s"), k.get("tuned_s"), k.get("speedup")
        lines.append(f"  {k['name']:<{w}}  {k['status']:<8}  {_us(b):>10}  {_us(t):>10}  {f'{s:.2f}x' if s else '-'}")
    lines.append(f"records: {summary['target']}/{summary['machine']}/ under {summary['records']}")
    return "\n".join(lines)


def _us(s: float | None) -> str:
    return f"{s * 1e6:.1f} us" if s else "-"
