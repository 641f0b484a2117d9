"""What `sdcompile tune` gains over the built-in schedule rules, per kernel family, on the SD1.5 UNet.

    .venv/bin/python benchmarks/tuning.py                                   # UNet 256x256, the hottest kernel of each op
    .venv/bin/python benchmarks/tuning.py --top 2 --trials 64 --json out.json --md out.md
    .venv/bin/python benchmarks/tuning.py --components vae_decoder --size 256

Four steps, in one run:

1. compile the model with the built-in rules only and time every kernel launch on its own (``sdcompile bench
   --profile``): how much of a run each op family takes;
2. ``sdcompile tune --per-op --top K`` into a fresh records folder (``--reuse``: the last run's, not tuned again): MetaSchedule on the K hottest kernels of every op
   (``--trials`` candidates each), each tuned kernel run against the built-in rule's on the same inputs, interleaved;
   a record only where it is numerically equal and faster;
3. where records were written, compile again with them and time both artifacts alternately (``sdcompile bench``):
   what the records change for the whole model;
4. JSON and a markdown table: per family, its share of the run, the kernel tuned, built-in and tuned times, speedup.

``--compute bf16`` kernels on the AMX tile unit are not tuned (MetaSchedule's rules cannot emit tile instructions),
so the run uses f32 products unless told otherwise, and says which kernels were skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import atomic_write_json, atomic_write_text, machine_info, markdown_table, utc_now  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_CKPT = HERE / ".work" / "sd15" / "sd15_seed0_f16.safetensors"


def log(msg: str) -> None:
    print(f"[tuning {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sdcompile(*args: str, env: dict[str, str] | None = None, timeout: float = 7200) -> str:
    """Run the CLI as a user would; its stdout (the --json document), or SystemExit with its stderr."""
    exe = Path(sys.executable).with_name("sdcompile")
    cmd = (
        [str(exe)]
        if exe.is_file()
        else [sys.executable, "-c", "import sys; from sdcompile.cli import main; sys.exit(main())"]
    )
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"sdcompile {' '.join(args[:1])} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def model_args(a: argparse.Namespace) -> list[str]:
    out = [str(a.checkpoint), "--size", f"{a.size}x{a.size}", "--components", a.components, "--compute", a.compute]
    if a.type:
        out += ["--type", a.type]
    if a.act_type:
        out += ["--act-type", a.act_type]
    return out


def compile_with(a: argparse.Namespace, out: Path, records: Path) -> dict[str, Any]:
    """Compile into ``out`` with exactly the records in ``records`` (an empty folder: the built-in rules only)."""
    env = {**os.environ, "SDCOMPILE_RECORDS": str(records)}
    t0 = time.perf_counter()
    sdcompile("compile", *model_args(a), "-o", str(out), env=env)
    manifest = json.loads((out / "manifest.json").read_text())
    tuning = (manifest.get("report") or {}).get("tuning") or {}
    return {"compile_s": round(time.perf_counter() - t0, 1), "tuning": tuning}


def bench(art: Path, a: argparse.Namespace, *, profile: bool = False, repeat: int | None = None) -> dict[str, Any]:
    args = ["bench", str(art), "--threads", str(a.threads), "--json"]
    args += ["--repeat", str(repeat or a.repeat), "--warmup", "1"]
    if profile:
        args.append("--profile")
    return json.loads(sdcompile(*args))


def tune(a: argparse.Namespace, records: Path) -> dict[str, Any]:
    args = ["tune", *model_args(a), "--per-op", "--top", str(a.top), "--trials", str(a.trials)]
    args += ["--records", str(records), "--threads", str(a.threads), "--seed", str(a.seed), "--json"]
    if a.kernels:
        args += ["--kernels", a.kernels]
    return json.loads(sdcompile(*args))


def family_rows(profile: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per tuned kernel, with its op's share of the built-in run."""
    total = profile.get("total_s") or 0.0
    by_op = {r["op"]: r for r in profile.get("by_op", [])}
    rows = []
    for k in summary["kernels"]:
        op = by_op.get(k["op"], {})
        b, t = k.get("builtin_s"), k.get("tuned_s")
        saved = k["launches"] * (b - t) if k.get("status") == "tuned" and b and t else 0.0
        rows.append(
            {
                "op": k["op"],
                "op_s": op.get("seconds"),
                "op_share": (op.get("seconds") or 0.0) / total if total else None,
                "kernel": k["name"],
                "launches": k["launches"],
                "builtin_s": b,
                "tuned_s": t,
                "speedup": k.get("speedup"),
                "status": k["status"],
                "saved_s_per_run": saved,
                "error": k.get("error"),
            }
        )
    return rows


def head_to_head(a: argparse.Namespace, base: Path, tuned: Path) -> dict[str, Any]:
    """Both artifacts timed alternately, so a change in load hits both; medians of the per-round medians."""
    b, t = [], []
    for i in range(a.rounds):
        log(f"whole model, round {i + 1}/{a.rounds}")
        b.append(bench(base, a)["median_ms"] / 1e3)
        t.append(bench(tuned, a)["median_ms"] / 1e3)
    mb, mt = statistics.median(b), statistics.median(t)
    return {"builtin_s": mb, "tuned_s": mt, "speedup": mb / mt, "builtin_rounds": b, "tuned_rounds": t}


def render(res: dict[str, Any]) -> str:
    cfg = res["config"]
    m = res["machine"]
    lines = [
        f"### `sdcompile tune` against the built-in rules: SD1.5 {cfg['components']} {cfg['size']}x{cfg['size']}, "
        f"{cfg['threads']} threads",
        "",
        f"{res['created']}; {m.get('cpu', {}).get('model', '?')}; compute {cfg['compute']}, weights "
        f"{cfg['type'] or 'as stored (f16)'}; {cfg['trials']} MetaSchedule trials per kernel, the {cfg['top']} "
        f"hottest kernel(s) of each op; records machine `{res['tune']['machine']}`",
        "",
    ]
    rows = []
    for r in res["rows"]:
        rows.append(
            [
                r["op"],
                "" if r["op_share"] is None else f"{100 * r['op_share']:.1f}%",
                f"`{r['kernel'][:60]}`",
                r["launches"],
                "—" if r["builtin_s"] is None else f"{r['builtin_s'] * 1e3:.3f}",
                "—" if r["tuned_s"] is None else f"{r['tuned_s'] * 1e3:.3f}",
                "—" if r["speedup"] is None else f"{r['speedup']:.2f}×",
                r["status"] + (f" ({r['error'][:60]})" if r.get("error") else ""),
                f"{r['saved_s_per_run'] * 1e3:.1f}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "op",
                "op's share of a run",
                "kernel tuned",
                "launches per run",
                "built-in ms",
                "tuned ms",
                "tuned speedup",
                "outcome",
                "ms saved per run",
            ],
            rows,
        )
    )
    lines.append("")
    w = res.get("whole")
    if w:
        lines.append(
            f"Whole {cfg['components']} run, compiled with the records against without, timed alternately "
            f"({len(w['builtin_rounds'])} rounds of `sdcompile bench`): built-in {w['builtin_s']:.3f} s, with records "
            f"{w['tuned_s']:.3f} s ({w['speedup']:.3f}×)."
        )
    else:
        lines.append(
            f"Whole {cfg['components']} run: no record was written, so the tuned artifact equals the built-in one."
        )
    lines += [
        "",
        "`op's share`: that op's time in one run with the built-in rules (every launch timed on its own, "
        "`sdcompile bench --profile`). `built-in` / `tuned`: one launch of the kernel, the two run interleaved on the "
        "same inputs by `sdcompile tune` (its head-to-head, after MetaSchedule's search). `tuned`: a record was "
        "written (numerically equal and at least 1.02× faster); `declined`: the built-in rule was as fast or faster; "
        "`skipped`: not tunable (bf16 products on the tile unit); `failed`: MetaSchedule found no valid, equal "
        "candidate. `ms saved`: launches × (built-in − tuned) where a record was written.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CKPT, help="the f16 LDM file (benchmarks/sd15.py makes it)"
    )
    p.add_argument("--components", default="unet", help="SD components, as compile takes them (default unet)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--type", default=None, help="weight storage type, as compile takes it (default: as stored)")
    p.add_argument("--act-type", default=None, help="activation storage type, as compile takes it")
    p.add_argument("--compute", default="f32", choices=["f32", "bf16"], help="product type (default f32)")
    p.add_argument("--top", type=int, default=1, help="hottest kernels tuned per op (default 1)")
    p.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per kernel (default 32)")
    p.add_argument("--kernels", default=None, help="only kernels whose name matches this regex, or an op")
    p.add_argument("--seed", type=int, default=1, help="MetaSchedule's random seed")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per `sdcompile bench` (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the whole-model timing (default 3)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the records (and the declined measurements) of the last run in --workdir: tune reuses them as "
        "`sdcompile tune` does, so only the whole-model comparison is measured again",
    )
    p.add_argument(
        "--workdir", type=Path, default=HERE / ".work" / "tuning", help="artifacts and records (git-ignored)"
    )
    p.add_argument("--json", type=Path, default=None, help="results file")
    p.add_argument("--md", type=Path, default=None, help="markdown table")
    a = p.parse_args(argv)
    if not a.checkpoint.is_file():
        raise SystemExit(f"{a.checkpoint}: no such file; run benchmarks/sd15.py once to make the SD1.5 checkpoint")

    work = a.workdir
    records, empty = work / "records", work / "no-records"
    for d in (empty,) if a.reuse else (records, empty):  # fresh unless --reuse: this run measures
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    base, tuned = work / "builtin", work / "tuned"

    log(f"compiling {a.components} {a.size}x{a.size} with the built-in rules")
    base_info = compile_with(a, base, empty)
    log("timing every kernel launch (bench --profile)")
    profile = bench(base, a, profile=True, repeat=3)
    log(f"tuning the {a.top} hottest kernel(s) of each op, {a.trials} trials each")
    t0 = time.perf_counter()
    summary = tune(a, records)
    tune_s = time.perf_counter() - t0
    rows = family_rows(profile, summary)
    whole = None
    if any(r["status"] == "tuned" for r in rows):
        log("compiling again with the records")
        tuned_info = compile_with(a, tuned, records)
        whole = head_to_head(a, base, tuned) | {"tuning_report": tuned_info["tuning"]}
    res = {
        "benchmark": "tuning",
        "created": utc_now(),
        "config": {
            k: getattr(a, k)
            for k in ("components", "size", "type", "act_type", "compute", "top", "trials", "seed", "threads")
        },
        "machine": machine_info(),
        "builtin_compile_s": base_info["compile_s"],
        "profile_total_s": profile.get("total_s"),
        "tune_s": round(tune_s, 1),
        "tune": {k: summary[k] for k in ("target", "machine", "device", "runner")},
        "rows": rows,
        "whole": whole,
    }
    text = render(res)
    print(text)
    if a.json:
        atomic_write_json(a.json, res)
    if a.md:
        atomic_write_text(a.md, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
