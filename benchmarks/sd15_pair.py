"""Paired rounds of ``sd15.py``: the same few variants measured in several rounds, the order reversed every other
round, so a machine whose speed drifts during a run (these shared machines do, by 10-15% over half an hour) slows or
speeds every variant alike instead of the ones that happen to run first.

A full ``sd15.py`` run measures every variant of one implementation before the next: on a machine that sped up
13% during the run (its f32 FMA peak measured 421 GFLOP/s at the start and 475 at the end), sdcompile's rows ran in
the slow phase and PyTorch's and ONNX Runtime's in the fast one. For a close comparison (sdcompile in f32 against ONNX
Runtime) run the two here instead; the table gives each round's medians, the ratio to the reference variant within
the round, and the f32 FMA peak measured at the round's start and end.

    .venv/bin/python benchmarks/sd15_pair.py --impls sdcompile-f32,onnxruntime-f32,sdcompile-f16 \\
        --works unet,text_encoder --quick --rounds 3 --json benchmarks/results/sd15_pair.json
    .venv/bin/python benchmarks/sd15_pair.py --combine r1.json r2.json r3.json --json benchmarks/results/sd15_pair.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

try:  # `python -m benchmarks.sd15_pair` from the repository root
    from benchmarks.common import atomic_write_json, markdown_table
    from benchmarks.sd15 import QUIET_STALL_PCT
except ImportError:  # `python benchmarks/sd15_pair.py`
    from common import atomic_write_json, markdown_table  # type: ignore[no-redef]
    from sd15 import QUIET_STALL_PCT  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sd15_pair.py",
        description="sd15.py in paired rounds (variant order reversed every other round); one table of every round.",
    )
    p.add_argument("--impls", default="sdcompile-f32,onnxruntime-f32", help="variants, in round 1's order (sd15.py)")
    p.add_argument("--works", default="unet,text_encoder", help="works, as sd15.py takes them")
    p.add_argument("--quick", action="store_true", help="256x256 only (sd15.py --quick)")
    p.add_argument("--no-amx", action="store_true", help="every round with the AMX tile unit off (sd15.py --no-amx)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    p.add_argument("--reference", default="onnxruntime-f32", help="the variant each round's ratios are against")
    p.add_argument("--workdir", type=Path, default=HERE / ".work" / "sd15_pair", help="round results (git-ignored)")
    p.add_argument("--combine", nargs="+", type=Path, metavar="ROUND_JSON", help="measure nothing: combine these")
    p.add_argument("--json", type=Path, help="combined results file")
    p.add_argument("--md", type=Path, help="markdown table (default: beside --json)")
    p.add_argument("--note", action="append", default=[], help="a note for the results (repeatable)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if not args.combine and not args.json:
        p.error("--json is required (or --combine with --json)")
    return args


def run_rounds(args: argparse.Namespace) -> list[Path]:
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(args.rounds):
        order = impls if i % 2 == 0 else impls[::-1]
        res = args.workdir / f"round{i + 1}.json"
        cmd = [sys.executable, str(HERE / "sd15.py"), "--impls", ",".join(order), "--works", args.works]
        cmd += ["--keep-artifacts", "--json", str(res), "--md", str(res.with_suffix(".md"))]
        cmd += ["--plot", str(res.with_suffix(".png"))] + (["--quick"] if args.quick else [])
        cmd += ["--no-amx"] if args.no_amx else []
        print(f"[sd15_pair] round {i + 1}/{args.rounds}: {', '.join(order)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"round {i + 1} failed: see the sd15.py output above")
        out.append(res)
    return out


def combine(paths: list[Path], reference: str, notes: list[str]) -> dict[str, Any]:
    rounds = [json.loads(p.read_text()) for p in paths]
    out: dict[str, Any] = {"benchmark": "sd15_pair", "reference": reference, "machine": rounds[0]["machine"]}
    out["rounds"] = []
    for r in rounds:
        recs = [x for x in r["records"] if x.get("impl") != "peak"]
        f32 = {
            x["phase"]: round(x["gflops"], 1)
            for x in r["records"]
            if x.get("impl") == "peak" and x["work"] == "fma" and x["wtype"] == "f32"
        }
        out["rounds"].append(
            {
                "created": r["created"],
                "commit": r["config"].get("commit"),
                "order": list(dict.fromkeys(x["variant"] for x in recs)),
                "fma_f32_peak": f32,
                "records": [
                    {k: x.get(k) for k in ("variant", "work", "size", "median_s", "min_s", "cpu_stall_pct", "error")}
                    for x in recs
                ],
            }
        )
    # sd15.py's own note on what --no-amx turned off travels with the rounds
    out["notes"] = notes + [n for n in rounds[0].get("notes", []) if n.startswith("Without AMX")]
    return out


def markdown(res: dict[str, Any]) -> str:
    ref = res["reference"]
    cpu = res["machine"]["cpu"]
    amx = "amx_bf16" in cpu.get("flags", [])
    limited = res["machine"].get("isa_limit")
    lines = [
        "### SD1.5 paired rounds (sd15.py, variant order reversed every other round), 2 threads",
        "",
        f"{cpu.get('model')}, {cpu.get('usable_cores')} usable cores, AMX {'yes' if amx else 'no'}"
        + (
            ", AMX off in every measurement (--no-amx: " + " ".join(f"{k}={v}" for k, v in limited.items()) + ")"
            if limited
            else ""
        )
        + ". Rounds:",
        "",
    ]
    for i, r in enumerate(res["rounds"], 1):
        peak = ", ".join(f"{k} {v}" for k, v in r["fma_f32_peak"].items())
        lines.append(
            f"- round {i} (written {r['created']}): commit {r['commit']}, order {', '.join(r['order'])}; f32 FMA "
            f"peak GFLOP/s {peak}"
        )
    keys = list(dict.fromkeys((x["work"], x["size"]) for r in res["rounds"] for x in r["records"]))
    variants = list(dict.fromkeys(x["variant"] for r in res["rounds"] for x in r["records"]))
    n = len(res["rounds"])
    for work, size in keys:
        body = []
        for v in variants:
            cells, ratios = [], []
            for r in res["rounds"]:
                got = {x["variant"]: x for x in r["records"] if (x["work"], x["size"]) == (work, size)}
                x, base = got.get(v), got.get(ref)
                ok = x and x.get("median_s") and not x.get("error")
                stalled = ok and (x.get("cpu_stall_pct") or 0) >= QUIET_STALL_PCT
                cells.append(f"{x['median_s']:.3f}" + (" †" if stalled else "") if ok else "—")
                if ok and base and base.get("median_s"):
                    ratios.append(base["median_s"] / x["median_s"])
            body.append(
                [v, *cells]
                + [
                    ", ".join(f"{q:.2f}×" for q in ratios) or "—",
                    f"{statistics.median(ratios):.2f}×" if ratios else "—",
                ]
            )
        title = work + (f" {size}x{size}" if size else "")
        lines += [
            "",
            f"#### {title}: median seconds per round",
            "",
            markdown_table(
                ["variant", *[f"round {i}" for i in range(1, n + 1)], f"{ref} / this, per round", "median ratio"],
                body,
            ),
        ]
    lines += [
        "",
        "Above 1× a row is faster than the reference in that round. †: some task waited for a CPU during "
        f"{QUIET_STALL_PCT:.0f}% or more of the timed part (other work on the machine).",
    ]
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {x}" for x in res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = args.combine or run_rounds(args)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no such round file: {', '.join(missing)}")
    res = combine(paths, args.reference, args.note)
    atomic_write_json(args.json, res)
    md = args.md or args.json.with_suffix(".md")
    md.write_text(markdown(res))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
