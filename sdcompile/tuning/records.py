"""Tuning records: what ``sdcompile tune`` found for one kernel on one machine model, and which of them a compile uses.

A record is one JSON file, ``<root>/<target>/<machine>/<kernel spec name>.json`` (root: ``schedules/records`` in the
source tree, or ``$SDCOMPILE_RECORDS``), holding the MetaSchedule trace that schedules the kernel's unscheduled
PrimFunc (its TE compute, ``tvm_layer.prim_func``), a digest of that PrimFunc, and the measured times of the tuned
kernel and of the built-in rule on the same inputs. ``tune`` writes one only where the tuned kernel was faster and
numerically equal; where it was not, ``<name>.declined.json`` keeps the measurement (no trace) so a second run does
not tune that kernel again, and ``compile`` ignores it.

The machine is what the code is generated and measured for: on the CPU the LLVM CPU name the build targets (plus
``-amx`` where the build uses the tile unit), since a trace's vector widths and tile sizes follow it; on a GPU the
device's name. A record whose PrimFunc digest no longer matches (the kernel's compute changed since it was tuned), or
that was measured against another built-in rule than the one that takes the kernel now (``builtin_rule``: a faster
built-in kernel has come since), is stale: compile uses the built-in rule for it and says so.

This module reads and writes files only; the TVM side (digest, trace replay) is in ``sdcompile.codegen.tvm_layer``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FORMAT = "sdcompile-tuning-record"
VERSION = 1
ENV_ROOT = "SDCOMPILE_RECORDS"
# The GPU model whose records a cuda or vulkan compile applies, where the compiling machine has no such GPU (a build
# machine compiling for the deployment GPU that `tune --rpc-tracker` measured).
ENV_GPU_MODEL = "SDCOMPILE_GPU_MODEL"
TARGETS = ("cpu", "vulkan", "cuda")
DECLINED = ".declined.json"


def default_root() -> Path:
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env)
    import schedules

    return Path(schedules.__file__).resolve().parent / "records"


def slug(name: str) -> str:
    """A folder name for a CPU or GPU model: lower case, runs of other characters as one '-'."""
    s = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")
    return s or "unknown"


def cpu_machine(target: dict) -> str:
    """The machine folder of an LLVM target dict (``tvm_layer.cpu_target``)."""
    amx = any("amx" in a for a in target.get("mattr") or [])
    return slug(str(target.get("mcpu") or "generic")) + ("-amx" if amx else "")


def schedule_kind(target: str) -> str:
    """The schedule kind of a target (``tvm_layer.scheduled_module``'s): Vulkan and CUDA share the GPU rules."""
    return "cpu" if target == "cpu" else "gpu"


def record_path(root: Path, target: str, machine: str, spec_name: str, declined: bool = False) -> Path:
    return Path(root) / target / machine / (spec_name + (DECLINED if declined else ".json"))


def read(path: Path) -> dict[str, Any] | None:
    """A record file's content, or None when it is not a record of this format (a broken file is skipped, not
    fatal: records are an optimisation, and the built-in rule is always there)."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or rec.get("version") != VERSION:
        return None
    return rec


def write(path: Path, record: dict[str, Any]) -> None:
    """Write a record atomically (a compile reading the folder meanwhile sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def find(root: Path, target: str, machine: str, spec_name: str) -> dict[str, Any] | None:
    """The usable record of a kernel (not a declined one), or None."""
    path = record_path(root, target, machine, spec_name)
    rec = read(path) if path.is_file() else None
    if rec is None or rec.get("spec") != spec_name or not rec.get("trace"):
        return None
    return rec


def gpu_machine(target: str) -> str | None:
    """The GPU model a cuda/vulkan compile applies records for: ``$SDCOMPILE_GPU_MODEL``, else the GPU of this
    machine, else None (no records)."""
    env = os.environ.get(ENV_GPU_MODEL)
    if env:
        return slug(env)
    if target == "cuda":
        from runtime.device import probe_cuda

        devs = [d for d in probe_cuda() if not d.get("simulated")]
        return slug(devs[0]["name"]) if devs else None
    from runtime.executors.vulkan import find_adapter

    adapter = find_adapter()
    return slug(adapter.info.get("device", "")) if adapter is not None else None


def applicable(specs: Iterable, target: str, root: Path | None = None) -> tuple[str | None, dict, list[str]]:
    """(machine, {spec name: record}, stale spec names) for a compile of ``specs`` to ``target`` on this machine.

    A record applies when its trace was tuned on this kernel's current PrimFunc (same digest) for this schedule
    kind; the build replays exactly these (``tvm_layer.tuning_records``) and the report lists them, so the two agree.
    """
    root = Path(root) if root is not None else default_root()
    specs = sorted({s.name: s for s in specs}.values(), key=lambda s: s.name)
    base = root / target
    if not specs or not base.is_dir() or not any(p.is_dir() for p in base.iterdir()):
        return None, {}, []  # no records for this target at all: no probing, no TVM work
    from sdcompile.codegen import tvm_layer

    machine = cpu_machine(tvm_layer.cpu_target()) if target == "cpu" else gpu_machine(target)
    if machine is None or not (base / machine).is_dir():
        return machine, {}, []
    found: dict[str, dict] = {}
    stale: list[str] = []
    for spec in specs:
        rec = find(root, target, machine, spec.name)
        if rec is None:
            continue
        if not current(rec, identity(spec, schedule_kind(target))):
            stale.append(spec.name)
            continue
        found[spec.name] = rec
    return machine, found, stale


IDENTITY = ("kind", "workload", "builtin_rule")  # what a record must share with the kernel to apply


def identity(spec, kind: str) -> dict[str, str]:
    """What a record of ``spec`` for schedule ``kind`` must hold to still describe it (``IDENTITY``): the kind, the
    digest of the kernel's current PrimFunc (``workload``) and the built-in rule that takes the kernel now
    (``builtin_rule``: a record measured against a slower rule that a faster one has replaced would make the kernel
    slower)."""
    import schedules
    from sdcompile.codegen import tvm_layer

    return {
        "kind": kind,
        "workload": tvm_layer.workload_digest(spec),
        "builtin_rule": schedules.builtin_rule_name(spec, kind),
    }


def current(rec: dict[str, Any], ident: dict[str, str]) -> bool:
    """Whether a record still describes the kernel whose ``identity`` is ``ident``."""
    return all(rec.get(k) == ident[k] for k in IDENTITY)


def report(target: str, machine: str | None, found: dict[str, dict], stale: list[str]) -> dict[str, Any] | None:
    """The compile report's ``tuning`` section (None where no record exists for this target and machine), built
    from the records' content only, so the manifest stays the same for the same inputs."""
    if not found and not stale:
        return None
    kernels = {}
    for name in sorted(found):
        m = found[name].get("measured") or {}
        kernels[name] = {
            "record": f"{target}/{machine}/{name}.json",
            "builtin_s": m.get("builtin_s"),
            "tuned_s": m.get("tuned_s"),
            "speedup": m.get("speedup"),
        }
    return {"target": target, "machine": machine, "kernels": kernels, "stale": sorted(stale)}
