"""The compile report's LoRA lines: per merged LoRA what it adapted and left, the requantization error measured,
and for runtime mode how many steps carry a hook."""

from __future__ import annotations

from typing import Any


def render(manifest: dict[str, Any]) -> list[str]:
    rec = manifest.get("lora") or {}
    rep = (manifest.get("report") or {}).get("lora")
    lines = []
    hooks = sum(1 for f in manifest.get("functions", {}).values() for s in f["steps"] if "lora" in s)
    unhooked = rec.get("unhooked") or {}
    if rec.get("mode") == "runtime" or not rep:
        note = f"; {len(unhooked)} weights without one (--lora-apply-mode runtime adds them)" if unhooked else ""
        lines.append(
            f"lora      {rec.get('mode', 'merge')} mode: {hooks} steps can take a LoRA at run time "
            f"(<lora:NAME:STRENGTH> with --lora-model-dir){note}"
        )
    if not rep:
        return lines
    for f in rep["files"]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(f["kinds"].items()))
        lines.append(
            f"lora      merged {f['file']} ({f['format']}) strength {f['strength']:g}: {f['weights']} weights "
            f"({kinds}), {f['tensors_used']} tensors used, {len(f['unmatched'])} matched no weight"
        )
        for name, why in list(f["unmatched"].items())[:10]:
            lines.append(f"            unmatched {name}: {why}")
        if len(f["unmatched"]) > 10:
            lines.append(f"            ... {len(f['unmatched']) - 10} more (--json lists all)")
    for t, e in rep["requantization"].items():
        lines.append(
            f"lora      {e['weights']} merged weights stored as {t}: error of storing the merge max {e['max_abs']:.2e}, "
            f"rms {e['rms']:.2e} (the LoRA deltas' rms {e['delta_rms']:.2e})"
        )
    for n in rep.get("notes", []):
        lines.append(f"lora      note: {n}")
    return lines
