"""The full-size SDXL base architecture (3.5 B parameters, random weights) compiled with --type q8_0 and run once on
the CPU: planned peak memory against the measured peak RSS, and the time of each stage.

Not a CI test: the checkpoint alone is 7 GB (f16) and one 1024x1024 step takes minutes on 2 cores. Each stage runs
in its own child process, so each peak RSS (VmHWM) is that stage's own: writing the checkpoint (streamed: the UNet
is never held whole), the compile, and the run (load, encode the prompt, N denoising steps with guidance, decode).
Results: benchmarks/results/sdxl_check.json and .md.

    .venv/bin/python benchmarks/sdxl_check.py                        # 1024x1024, q8_0, 2 steps
    .venv/bin/python benchmarks/sdxl_check.py --size 512x512 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import atomic_write_json, atomic_write_text, machine_info, markdown_table, utc_now  # noqa: E402


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if stage == "checkpoint":
        from sdcompile import examples_sd as E

        E.write_sd_streaming(Path(spec["checkpoint"]), E.SDXL, 0, "f16")
    elif stage == "compile":
        from sdcompile.compiler import compile_model
        from sdcompile.passes.context import CompileOptions

        w, h = spec["size"]
        m = compile_model(
            Path(spec["checkpoint"]),
            Path(spec["artifact"]),
            CompileOptions(sizes=[(w, h)], type=spec["type"], act_type=spec["act_type"]),
        )
        mem = m["memory"]
        out.update(
            planned_peak=mem["peak_bytes"],
            weights=mem["weights_bytes"],
            activations=mem["activation_bytes"],
            vae_tiling=bool(mem.get("vae_tiling")),
            offload=mem.get("offload"),
            report_assumptions=len((m.get("source") or {}).get("assumptions") or []),
        )
    elif stage == "run":
        from runtime import load
        from runtime.pipelines.sd import StableDiffusion

        t = time.perf_counter()
        model = load(Path(spec["artifact"]), num_threads=spec["threads"])
        out["load_s"] = time.perf_counter() - t
        w, h = spec["size"]
        res = StableDiffusion(model).generate(
            "a lighthouse on a cliff at dusk", "", steps=spec["steps"], method="euler", width=w, height=h, seed=1
        )
        out["timings"] = res.timings
        out["image_std"] = float(res.image.std())
        out["planned_peak"] = model.manifest["memory"]["peak_bytes"]
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss"] = vm_hwm()
    return out


def spawn(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    print(f"[sdxl_check] {stage} ...", flush=True)
    r = subprocess.run(
        [sys.executable, __file__, "--child", stage, json.dumps(spec)], capture_output=True, text=True, cwd=ROOT
    )
    if r.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{r.stderr[-4000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"[sdxl_check] {stage}: {res['seconds']:.0f} s, peak RSS {res['peak_rss'] / 2**30:.2f} GiB", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="1024x1024", help="image size WxH (default 1024x1024, SDXL's own)")
    p.add_argument("--type", default="q8_0", help="weight type (default q8_0)")
    p.add_argument("--act-type", default="f32", help="activation storage (default f32)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps of the run (default 2)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--workdir", type=Path, default=HERE / ".work" / "sdxl", help="cache folder (git-ignored)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "sdxl_check.json", help="results file")
    p.add_argument("--md", type=Path, default=HERE / "results" / "sdxl_check.md", help="markdown table")
    p.add_argument("--child", nargs=2, metavar=("STAGE", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return 0
    w, h = (int(x) for x in args.size.lower().split("x"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = args.workdir / "sdxl_f16.safetensors"
    art = args.workdir / f"sdxl_{args.type}_{args.act_type}_{w}x{h}.sdc"
    spec = dict(
        # relative to the repository (the children run there), so results name no machine's paths
        checkpoint=os.path.relpath(ckpt.resolve(), ROOT),
        artifact=os.path.relpath(art.resolve(), ROOT),
        size=[w, h],
        type=args.type,
        act_type=args.act_type,
        steps=args.steps,
        threads=args.threads,
    )
    stages: dict[str, Any] = {}
    if not ckpt.exists():
        stages["checkpoint"] = spawn("checkpoint", spec)
    stages["compile"] = spawn("compile", spec)
    stages["run"] = spawn("run", spec)
    result = {"when": utc_now(), "machine": machine_info(), "spec": spec, "stages": stages}
    atomic_write_json(args.json, result)
    c, r = stages["compile"], stages["run"]
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    t = r["timings"]
    rows = [
        ["compile", f"{c['seconds']:.0f} s", gib(c["peak_rss"]), ""],
        [
            f"run: load + txt2img {args.steps} steps {w}x{h}",
            f"load {r['load_s']:.1f} s, text {t['encode_text_s']:.1f} s, {t['step_s']:.1f} s/step, "
            f"decode {t['decode_s']:.1f} s",
            gib(r["peak_rss"]),
            gib(r["planned_peak"]),
        ],
    ]
    cpu = result["machine"].get("cpu", {}).get("model") or "?"
    md = (
        f"# Full-size SDXL base, --type {args.type}, CPU\n\n{utc_now()}, {cpu}, {args.threads} threads. Random "
        f"weights (f16 checkpoint); planned peak: the compile's memory plan (weights {gib(c['weights'])} + "
        f"activations {gib(c['activations'])}{', VAE tiled' if c['vae_tiling'] else ''}).\n\n"
        + markdown_table(["stage", "time", "peak RSS", "planned peak"], rows)
        + "\n"
    )
    atomic_write_text(args.md, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
