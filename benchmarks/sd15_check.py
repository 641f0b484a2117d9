"""The full-size SD1.5 architecture (1.07 B parameters, random weights) compiled, run and checked against diffusers.

Not a CI test: at 512x512 one run takes tens of minutes and several GB. For every requested (target, weight type,
size) it compiles the checkpoint, loads the artifact, times each function once cold and (for the cheap ones and the
UNet) once warm, records the planned memory peak beside the measured one, and compares every output with diffusers /
transformers in float32 holding exactly the weights the artifact stores (decoded by the gguf package, as
`tests/e2e/sd_helpers.decoded_state` does). See benchmarks/README.md for how to read the numbers.

    .venv/bin/python benchmarks/sd15_check.py                                         # cpu, f16 and q8_0, 512x512
    .venv/bin/python benchmarks/sd15_check.py --targets vulkan --sizes 256x256 --types f16 \\
        --json benchmarks/results/sd15_check_vulkan.json --md benchmarks/results/sd15_check_vulkan.md
    .venv/bin/python benchmarks/sd15_check.py --steps 20                               # plus a 20-step txt2img

Every heavy stage runs in its own child process, one at a time, so its peak RSS (VmHWM) is its own and the parent
stays small: writing the checkpoint, each compile, each run, each reference. The checkpoint (f16 safetensors, seed
0), the artifacts, the outputs and the reference outputs (keyed by the artifact's weights hash, so a rerun or a
second target with the same weights reuses them) are cached under `--workdir` (default `benchmarks/.work/sd15/`,
git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

try:  # `python -m benchmarks.sd15_check` from the repository root
    from benchmarks.common import (
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        cpu_stall_us,
        fmt,
        machine_info,
        markdown_table,
        utc_now,
    )
except ImportError:  # `python benchmarks/sd15_check.py`: the script's own directory is on sys.path
    from common import (  # type: ignore[no-redef]
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        cpu_stall_us,
        fmt,
        machine_info,
        markdown_table,
        utc_now,
    )

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED = 0
INPUTS_VERSION = 1  # bump when make_inputs changes: cached reference outputs are keyed by it
SCALING = 0.18215
FUNCTIONS = ("encode_text", "denoise", "decode_latents", "encode_image")
PROMPT, NEGATIVE, CFG, TXT2IMG_SEED = "a lighthouse on a cliff at dusk, oil painting", "blurry, low quality", 7.0, 42

EXIT_OK = 0
EXIT_FAILED = 1  # a stage failed for another reason than a compile-time refusal
GiB = 2**30


def log(msg: str) -> None:
    print(f"[sd15_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(s: str) -> tuple[int, int]:
    w, _, h = s.lower().partition("x")
    try:
        size = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {s!r}: expected WxH, e.g. 512x512") from None
    if min(size) < 64 or size[0] % 64 or size[1] % 64:
        raise argparse.ArgumentTypeError(f"size {s!r}: width and height must be multiples of 64")
    return size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sd15_check.py",
        description=(
            "Compile the full SD1.5 architecture (random weights) per target, weight type and size; time each "
            "function and compare it with diffusers on the artifact's own weights; record planned vs measured peak "
            "memory."
        ),
        epilog="exit status: 0 when every run finished, was refused at compile time with a reason or was stopped by "
        "--call-timeout (status stopped); 1 when one failed; 2 for bad arguments.",
    )
    p.add_argument("--targets", default="cpu", help="comma-separated: cpu, vulkan, cuda (default: cpu)")
    p.add_argument(
        "--types",
        default="f16,q8_0",
        help="comma-separated weight types, each optionally with an activation storage type after a colon "
        "(f16:f16 = f16 weights, activations stored in f16; default: f16,q8_0)",
    )
    p.add_argument("--sizes", default="512x512", help="comma-separated WxH image sizes (default: 512x512)")
    p.add_argument("--steps", type=int, default=0, help="also run a txt2img of N euler steps (default 0: skip)")
    p.add_argument(
        "--model",
        choices=("sd15", "tiny-sd1"),
        default="sd15",
        help="sd15 (default) or tiny-sd1: the CI checkpoint, for a smoke test of this script in a minute",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of an existing --json file (other targets, types, sizes) and replace the ones run now",
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads for sdcompile and torch (default: 2)")
    p.add_argument("--workdir", type=Path, default=HERE / ".work" / "sd15", help="cache folder (git-ignored)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "sd15_check.json", help="results file")
    p.add_argument("--md", type=Path, default=HERE / "results" / "sd15_check.md", help="markdown table")
    p.add_argument(
        "--reuse-artifacts",
        action="store_true",
        help="skip a compile whose artifact is already in the cache (its recorded compile numbers are reused)",
    )
    p.add_argument("--keep-artifacts", action="store_true", help="keep each artifact after its run (disk!)")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per child process (default: 10800)")
    p.add_argument(
        "--call-timeout",
        type=float,
        default=600,
        help="stop a run when one function call takes longer than this many seconds (default: 600)",
    )
    p.add_argument("--from-json", type=Path, help="measure nothing; write --md from this result file")
    p.add_argument("--note", action="append", default=[], help="a note for the results (repeatable; kept by --merge)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return a
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    bad = [t for t in a.targets if t not in ("cpu", "vulkan", "cuda")]
    if bad:
        p.error(f"unknown --targets {bad}; choose from cpu, vulkan, cuda")
    a.types = [t.strip().lower() for t in a.types.split(",") if t.strip()]
    try:
        a.sizes = [parse_size(s.strip()) for s in a.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if a.steps < 0 or a.threads < 1:
        p.error("--steps must be 0 or more and --threads at least 1")
    return a


# ------------------------------------------------------------------------------------------------ child helpers


def vm_status() -> dict[str, int]:
    """VmHWM (peak RSS), VmRSS and its anonymous / file-backed parts of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(val.split()[0]) * 1024
    return out


def beat(spec: dict[str, Any], call: str) -> None:
    """Tell the parent which call starts now (its --call-timeout watchdog reads this)."""
    with atomic_path(spec["heartbeat"]) as tmp:
        tmp.write_text(json.dumps({"call": call, "since": time.time()}))


def partial(spec: dict[str, Any], res: dict[str, Any]) -> None:
    """The numbers so far, where the parent finds them if this process is stopped or dies."""
    res["peak_rss_bytes"] = vm_status()["VmHWM"]
    with atomic_path(spec["result"]) as tmp:
        tmp.write_text(json.dumps({**res, "partial": True}, default=float))


def error_text(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}"[:1500]


def make_inputs(w: int, h: int, ctx: int = 768) -> dict[str, np.ndarray]:
    """The inputs every run and every reference sees (seeded: identical in every process)."""
    rng = np.random.default_rng([SEED, w, h, INPUTS_VERSION])
    ids = np.random.default_rng([SEED, INPUTS_VERSION]).integers(0, 49407, (2, 77)).astype(np.int32)
    ids[:, 0] = 49406  # start of text
    z = rng.standard_normal((1, 4, h // 8, w // 8)).astype(np.float32)
    return {
        "ids": ids,
        # as a guided sampling step calls the UNet: the same latents twice, one timestep, (negative, prompt) contexts
        "x": np.concatenate([z, z]),
        "t": np.array([500.0, 500.0], np.float32),
        "context": rng.standard_normal((2, 77, ctx)).astype(np.float32),
        # latents as the sampler leaves them (unit variance); decode_latents divides by 0.18215 itself
        "latents": rng.standard_normal((1, 4, h // 8, w // 8)).astype(np.float32),
        "image": np.tanh(rng.standard_normal((1, 3, h, w))).astype(np.float32),
    }


def out_name(fn: str, w: int, h: int) -> str:
    return f"{fn}.npy" if fn == "encode_text" else f"{fn}_{w}x{h}.npy"


def _sys_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def child_checkpoint(spec: dict[str, Any]) -> dict[str, Any]:
    from sdcompile import examples_sd as E

    path = Path(spec["path"])
    t0 = time.perf_counter()
    with atomic_path(path, suffix=".safetensors") as tmp:
        E.write_sd(tmp, E.SHAPES[spec["model"]], SEED, "safetensors", dtype="f16")
    return {"seconds": round(time.perf_counter() - t0, 1), "bytes": path.stat().st_size}


def child_compile(spec: dict[str, Any]) -> dict[str, Any]:
    from sdcompile.compiler import compile_model
    from sdcompile.errors import SdcompileError
    from sdcompile.passes.context import CompileOptions

    w, h = spec["size"]
    out = Path(spec["artifact"])
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)  # compile wants -o's parent to exist
    # "f16:f16": f16 weights with activations stored in f16 (--act-type); a plain type keeps f32 activations
    wtype, _, act = spec["type"].partition(":")
    opts = CompileOptions(target=spec["target"], type=wtype, sizes=[(w, h)], act_type=act or "f32")
    t0 = time.perf_counter()
    try:
        m = compile_model(Path(spec["checkpoint"]), out, opts)
    except SdcompileError as e:  # a refusal with a reason (no kernel, over the memory budget) is a result
        return {"refused": error_text(e), "seconds": round(time.perf_counter() - t0, 1)}
    seconds = time.perf_counter() - t0
    mem = m["memory"]
    kernels = (m.get("kernels") or {}).get("kernels") or {}
    return {
        "seconds": round(seconds, 1),
        "kernels": len(kernels),
        "planned_peak_bytes": mem.get("peak_bytes"),
        "weights_bytes": mem.get("weights_bytes"),
        "weights_by_component": mem.get("weights_by_component"),
        "activation_bytes": mem.get("activation_bytes"),
        "function_activation_bytes": {k: v.get("activation_bytes") for k, v in (mem.get("functions") or {}).items()},
        "budget_bytes": mem.get("budget_bytes"),
        "budget_source": mem.get("budget_source"),
        "artifact_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "weights_sha256": m["files"]["weights.gguf"]["sha256"],
        "functions": sorted(m["functions"]),
        "vae_tiling": (m.get("pipeline") or {}).get("vae_tiling"),
    }


def child_run(spec: dict[str, Any]) -> dict[str, Any]:
    import runtime

    w, h = spec["size"]
    outdir = Path(spec["outputs"])
    outdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"seconds": {}, "error": None}
    stage = "load"
    try:
        t0 = time.perf_counter()
        model = runtime.load(spec["artifact"], num_threads=spec["threads"])
        res["seconds"]["load"] = time.perf_counter() - t0
        res["device"] = {k: v for k, v in model.device.items() if k != "memory_bytes"}
        res["rss_after_load"] = vm_status()  # file-backed: pages of weights.gguf the upload read (reclaimable)
        partial(spec, res)
        x = make_inputs(w, h, spec["context_dim"])
        calls = [
            ("encode_text", "encode_text", {"input_ids": x["ids"]}, "last_hidden_state", 2),
            ("denoise", f"denoise_{w}x{h}", {"x": x["x"], "t": x["t"], "context": x["context"]}, "eps", 2),
            ("decode_latents", f"decode_latents_{w}x{h}", {"latents": x["latents"]}, "image", 1),
            ("encode_image", f"encode_image_{w}x{h}", {"image": x["image"]}, "moments", 1),
        ]
        for key, fn, inputs, output, n in calls:
            stage = fn
            for i in range(n):
                log(f"  {spec['label']}: {fn} ({'first' if i == 0 else 'warm'} call)")
                beat(spec, fn)
                t0 = time.perf_counter()
                y = model.call(fn, inputs)[output]
                dt = time.perf_counter() - t0
                res["seconds"][key if i == 0 else f"{key}_warm"] = dt
                log(f"  {spec['label']}: {fn} took {dt:.2f} s")
                partial(spec, res)
            if key == "encode_image":
                y = y[:, :4]  # the mean; the reference compares the distribution's mean
            np.save(outdir / out_name(key, w, h), np.ascontiguousarray(y, np.float32))
        res["rss_after_functions"] = vm_status()
        if spec["steps"]:
            stage = "txt2img"
            from runtime.pipelines.image import write_png
            from runtime.pipelines.sd import StableDiffusion

            steps: list[float] = []

            def progress(i: int, n: int, dt: float) -> None:
                steps.append(dt)
                log(f"  {spec['label']}: txt2img step {i}/{n} {dt:.2f} s")
                beat(spec, f"txt2img step {i + 1}" if i < n else "decode_latents (txt2img)")

            beat(spec, "txt2img encode_text + step 1")

            r = StableDiffusion(model).generate(
                PROMPT,
                NEGATIVE,
                steps=spec["steps"],
                cfg_scale=CFG,
                method="euler",
                seed=TXT2IMG_SEED,
                width=w,
                height=h,
                progress=progress,
            )
            png = Path(spec["png"])
            write_png(png, r.image)
            res["txt2img"] = {
                "steps": spec["steps"],
                "method": "euler",
                "seed": TXT2IMG_SEED,
                "cfg_scale": CFG,
                "step_s": steps,
                "timings": r.timings,
                "warnings": r.warnings,
                "png": png.name,
            }
    except Exception as e:
        res["error"] = f"{stage}: {error_text(e)}"
        res["traceback"] = traceback.format_exc()[-3000:]
    res["peak_rss_bytes"] = vm_status()["VmHWM"]
    return res


def _decoded_part(artifact: Path, prefix: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """`tests.e2e.sd_helpers.decoded_state`, for one component's tensors (canonical `prefix`) at a time: the
    weights the artifact holds, decoded to f32 by the gguf package and put back under LDM names and shapes. One
    component at a time keeps the reference process under ~8 GB instead of holding all 4.3 GB of f32 weights twice."""
    from tests.e2e.sd_helpers import CANONICAL_TO_LDM, decoded_tensors

    out = dict(decoded_tensors(artifact, shapes, prefix))
    want = {k for k in shapes if k.startswith(CANONICAL_TO_LDM[prefix])}
    if set(out) != want:
        raise AssertionError(f"{prefix}: the artifact holds other tensors than the checkpoint")
    return out


def child_reference(spec: dict[str, Any]) -> dict[str, Any]:
    import gc

    import torch

    from sdcompile import examples_sd as E
    from tests import sd_reference as R

    torch.set_num_threads(spec["threads"])
    w, h = spec["size"]
    artifact, outdir = Path(spec["artifact"]), Path(spec["outputs"])
    outdir.mkdir(parents=True, exist_ok=True)
    shape = E.SHAPES[spec["model"]]
    shapes = E.sd_shapes(shape)
    x = make_inputs(w, h, shape.unet.context_dim)
    seconds: dict[str, float] = {}
    want = set(spec["functions"])

    def save(key: str, y: np.ndarray) -> None:
        with atomic_path(outdir / out_name(key, w, h), suffix=".npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(y, np.float32))

    def timed(key: str, f):
        log(f"  reference: {key}")
        t0 = time.perf_counter()
        y = f()
        seconds[key] = time.perf_counter() - t0
        log(f"  reference: {key} took {seconds[key]:.2f} s")
        save(key, y)

    if "encode_text" in want:
        model = R.text_model(_decoded_part(artifact, "text_encoder.", shapes), shape)
        timed("encode_text", lambda: R.text_hidden(None, shape, x["ids"], model=model))
        del model
        gc.collect()
    if "denoise" in want:
        model = R.unet_model(_decoded_part(artifact, "unet.", shapes), shape)
        gc.collect()
        timed("denoise", lambda: R.unet_eps(None, shape, x["x"], x["t"], x["context"], model=model))
        del model
        gc.collect()
    if want & {"decode_latents", "encode_image"}:
        model = R.vae_model(_decoded_part(artifact, "vae.", shapes), shape)
        gc.collect()
        if "decode_latents" in want:
            timed("decode_latents", lambda: R.vae_decode(None, shape, x["latents"] / SCALING, model=model))
        if "encode_image" in want:
            timed("encode_image", lambda: R.vae_encode_mean(None, shape, x["image"], model=model))
    return {"seconds": seconds, "torch": torch.__version__, "threads": spec["threads"]}


CHILDREN = {
    "checkpoint": child_checkpoint,
    "compile": child_compile,
    "run": child_run,
    "reference": child_reference,
}


def child_main(kind: str, spec_file: str) -> int:
    _sys_path()
    spec = json.loads(Path(spec_file).read_text())
    try:
        res = CHILDREN[kind](spec)
    except Exception as e:
        res = {"error": error_text(e), "traceback": traceback.format_exc()[-3000:]}
    res.setdefault("peak_rss_bytes", vm_status()["VmHWM"])
    Path(spec["result"]).write_text(json.dumps(res, default=float))
    return 0


# ------------------------------------------------------------------------------------------------------- parent


def spawn(
    kind: str, spec: dict[str, Any], workdir: Path, timeout: float, call_timeout: float | None = None
) -> dict[str, Any]:
    """Run one child stage; its result dict (with `wall_s`), or one with `error` if it died or was stopped.

    A run child writes its partial result after every call and a heartbeat before each: the parent stops it (SIGKILL:
    a kernel call cannot be interrupted from inside) when one call has run longer than `call_timeout`, and keeps the
    numbers measured until then."""
    workdir.mkdir(parents=True, exist_ok=True)  # a fresh checkout has no cache folder yet
    spec_file = workdir / f".{kind}.spec.json"
    result_file = workdir / f".{kind}.result.json"
    beat_file = workdir / f".{kind}.heartbeat.json"
    for f in (result_file, beat_file):
        f.unlink(missing_ok=True)
    spec = {**spec, "result": str(result_file), "heartbeat": str(beat_file)}
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TVM_NUM_THREADS": str(spec.get("threads", 2))}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(spec_file)], env=env, cwd=str(ROOT)
    )
    stopped = None
    while proc.poll() is None:
        time.sleep(1.0)
        if time.perf_counter() - t0 > timeout:
            stopped = f"{kind}: no result after {timeout:.0f} s; stopped (--timeout)"
        elif call_timeout and beat_file.is_file():
            try:
                beat = json.loads(beat_file.read_text())
            except (OSError, ValueError):  # caught mid-write
                beat = {}
            if beat.get("call") and time.time() - beat["since"] > call_timeout:
                stopped = f"{beat['call']} still running after {call_timeout:.0f} s; stopped (--call-timeout)"
        if stopped:
            log(stopped)
            proc.kill()
            proc.wait()
    rc = proc.returncode
    wall = time.perf_counter() - t0
    res = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if stopped:
        res["error"] = stopped
        res["stopped"] = True
    elif not result_file.is_file() or res.get("partial"):
        sig = f" (signal {-rc}{', likely the OOM killer' if rc == -9 else ''})" if rc < 0 else ""
        res["error"] = f"{kind}: child exited with status {rc}{sig} before it finished"
    res.pop("partial", None)
    res["wall_s"] = round(wall, 1)
    for f in (spec_file, result_file, beat_file):
        f.unlink(missing_ok=True)
    return res


def compare(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    if got.shape != ref.shape:
        raise ValueError(f"output shape {list(got.shape)} differs from the reference's {list(ref.shape)}")
    bad = ~np.isfinite(got)
    d = got.astype(np.float64) - ref.astype(np.float64)
    scale = float(np.max(np.abs(ref)))
    rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
    return {
        "max_abs_err": float(np.max(np.abs(d))),
        "ref_max_abs": scale,
        "max_abs_err_rel": float(np.max(np.abs(d)) / scale) if scale else None,
        "rel_rms_err": float(np.sqrt(np.mean(d * d)) / rms) if rms else None,
        "nonfinite_share": float(bad.mean()),
    }


def git_state() -> tuple[str | None, str | None]:
    """(HEAD commit with "-dirty" if the compiler or runtime code differs from it, a key of that code's exact state):
    an artifact is reused only when the key matches, since a change there can change what an artifact holds."""
    import hashlib

    code = ["sdcompile", "runtime", "schedules"]
    try:

        def git(*a: str) -> bytes:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, check=True).stdout

        head = git("rev-parse", "HEAD").decode().strip()
        diff = git("diff", "HEAD", "--", *code)
        untracked = git("ls-files", "--others", "--exclude-standard", "--", *code).decode().split()
    except (OSError, subprocess.CalledProcessError):
        return None, None
    h = hashlib.sha256(head.encode() + diff)
    for f in sorted(untracked):
        h.update(f.encode() + b"\0" + (ROOT / f).read_bytes())
    dirty = bool(diff or untracked)
    return head[:12] + ("-dirty" if dirty else ""), h.hexdigest()[:16]


def ensure_checkpoint(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    path = args.workdir / f"{args.model}_seed{SEED}_f16.safetensors"
    if path.is_file():
        return path, {"file": path.name, "written": False, "bytes": path.stat().st_size}
    log(f"writing the {args.model} checkpoint (f16 safetensors, seed {SEED}) -> {path.name}")
    r = spawn("checkpoint", {"path": str(path), "model": args.model}, args.workdir, args.timeout)
    if r.get("error"):
        raise RuntimeError(f"could not write the checkpoint: {r['error']}")
    return path, {"file": path.name, "written": True, **{k: r.get(k) for k in ("seconds", "bytes", "peak_rss_bytes")}}


def run_one(args: argparse.Namespace, ckpt: Path, target: str, type_: str, size: tuple[int, int]) -> dict[str, Any]:
    w, h = size
    label = f"{target} {type_} {w}x{h}"
    row: dict[str, Any] = {
        "target": target,
        "type": type_,
        "size": f"{w}x{h}",
        "model": args.model,
        "created": utc_now(),
        "commit": args.commit,
        "threads": args.threads,
        "steps": args.steps,
        "status": "ok",
        "error": None,
    }
    tag = f"{args.model}-{target}-{type_.replace(':', '-act')}-{w}x{h}"
    art = args.workdir / "artifacts" / tag
    record = art.parent / f"{art.name}.compile.json"

    # compile
    comp = None
    if args.reuse_artifacts and record.is_file() and (art / "manifest.json").is_file():
        comp = json.loads(record.read_text())
        if args.code_key and comp.get("code_key") == args.code_key:
            comp["reused"] = True
            log(f"{label}: reusing the cached artifact")
        else:  # built by other compiler or runtime code: its layout may not be what this runtime reads
            log(f"{label}: the cached artifact was built from other code; compiling again")
            comp = None
    if comp is None:
        log(f"{label}: compiling")
        spec = {"target": target, "type": type_, "size": [w, h], "checkpoint": str(ckpt), "artifact": str(art)}
        comp = spawn("compile", spec, args.workdir, args.timeout)
        comp.pop("traceback", None)
        comp["code_key"] = args.code_key
        if not comp.get("error") and not comp.get("refused"):
            atomic_write_json(record, comp)
    row["compile"] = comp
    if comp.get("refused"):
        row["status"] = "refused"
        row["error"] = f"compile refused: {comp['refused']}"
        log(f"{label}: {row['error']}")
        return row
    if comp.get("error"):
        row["status"] = "failed"
        row["error"] = f"compile: {comp['error']}"
        log(f"{label}: {row['error']}")
        return row
    log(f"{label}: compiled in {comp['seconds']} s, {comp['kernels']} kernels")

    # run
    outs = args.workdir / "outputs" / tag
    png = args.workdir / f"txt2img-{tag}-{args.steps}steps.png"
    spec = {
        "label": label,
        "artifact": str(art),
        "size": [w, h],
        "threads": args.threads,
        "context_dim": args.shape.unet.context_dim,
        "outputs": str(outs),
        "steps": args.steps,
        "png": str(png),
    }
    shutil.rmtree(outs, ignore_errors=True)  # never compare another run's outputs
    log(f"{label}: loading and running")
    stall0, t0 = cpu_stall_us(), time.perf_counter()
    run = spawn("run", spec, args.workdir, args.timeout, args.call_timeout)
    stall1, wall = cpu_stall_us(), time.perf_counter() - t0
    # share of the run's wall time in which some task waited for a CPU: other work competing with the timed calls
    run["cpu_stall_pct"] = None if stall0 is None or stall1 is None else round((stall1 - stall0) / 1e4 / wall, 1)
    run["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    row["run"] = run
    if run.get("error"):
        row["status"] = "stopped" if run.get("stopped") else "failed"
        row["error"] = f"run: {run['error']}"
        log(f"{label}: {row['error']}")

    # reference: cached per weights (the same weight type gives the same stored weights on every target)
    key = f"{type_.partition(':')[0]}-{comp['weights_sha256'][:16]}-inputs{INPUTS_VERSION}"
    refdir = args.workdir / "reference" / key
    have = [fn for fn in FUNCTIONS if (outs / out_name(fn, w, h)).is_file()]
    missing = [fn for fn in have if not (refdir / out_name(fn, w, h)).is_file()]
    ref_meta_file = refdir / f"meta_{w}x{h}.json"
    if missing:
        log(f"{label}: diffusers reference for {', '.join(missing)}")
        ref = spawn(
            "reference",
            {
                "artifact": str(art),
                "size": [w, h],
                "threads": args.threads,
                "outputs": str(refdir),
                "functions": missing,
                "model": args.model,
            },
            args.workdir,
            args.timeout,
        )
        ref.pop("traceback", None)
        old = json.loads(ref_meta_file.read_text()) if ref_meta_file.is_file() else {}
        ref["seconds"] = {**old.get("seconds", {}), **ref.get("seconds", {})}
        if not ref.get("error"):
            atomic_write_json(ref_meta_file, ref)
        else:
            row["status"] = "failed"
            row["error"] = (row["error"] + "; " if row["error"] else "") + f"reference: {ref['error']}"
    else:
        ref = json.loads(ref_meta_file.read_text()) if ref_meta_file.is_file() else {}
        ref["cached"] = True
    for other in sorted(refdir.glob("meta_*.json")):  # encode_text's reference is shared by every size
        t = json.loads(other.read_text()).get("seconds", {}).get("encode_text")
        if t is not None and "encode_text" not in ref.setdefault("seconds", {}):
            ref["seconds"]["encode_text"] = t
    row["reference"] = {"key": key, **ref}

    errors = {}
    for fn in have:
        rf = refdir / out_name(fn, w, h)
        if rf.is_file():
            errors[fn] = compare(np.load(outs / out_name(fn, w, h)), np.load(rf))
    row["errors"] = errors
    for fn, e in errors.items():
        if e["nonfinite_share"]:
            msg = f"{fn} output: {100 * e['nonfinite_share']:.1f}% of its values are NaN or infinite"
            row["status"] = "failed"
            row["error"] = (row["error"] + "; " if row["error"] else "") + msg
            log(f"{label}: {msg}")
        else:
            log(f"{label}: {fn} max|err|/max|ref| = {e['max_abs_err_rel']:.2e}, rel rms {e['rel_rms_err']:.2e}")
    if not args.keep_artifacts and row["status"] == "ok" and not args.reuse_artifacts:
        shutil.rmtree(art, ignore_errors=True)  # 1-2 GB each; the numbers are in the results
    return row


# ------------------------------------------------------------------------------------------------------- report


def _gib(b: float | None) -> str:
    return "—" if b is None else f"{b / GiB:.2f}"


def _s(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def _e(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    cpu = m["cpu"]
    pk = m["packages"]
    lines = [
        f"### {'SD1.5 architecture' if result['config']['model'] == 'sd15' else result['config']['model']} "
        f"(random weights, {result['config']['parameters'] / 1e9:.3f} B parameters), "
        f"{result['config']['threads']} threads",
        "",
        f"{result['created']}; {cpu['model']}, {cpu['usable_cores']} usable cores, AMX "
        f"{'yes' if 'amx_tile' in cpu['flags'] else 'no'}; {_gib(m['memory_bytes'])} GiB RAM; apache-tvm "
        f"{pk.get('apache-tvm')}, torch {pk.get('torch')}, diffusers {result['config'].get('diffusers')}; "
        f"checkpoint {result['config']['checkpoint']['file']}; sdcompile commit "
        + ", ".join(
            sorted(
                {str(r["commit"]) for r in result["rows"] if r.get("commit")} or {str(result["config"].get("commit"))}
            )
        ),
        "",
    ]
    t_rows, m_rows, e_rows = [], [], []
    for r in result["rows"]:
        name = f"{r['target']} {r['type']} {r['size']}"
        c, run, ref = r.get("compile") or {}, r.get("run") or {}, r.get("reference") or {}
        s, rs = run.get("seconds") or {}, ref.get("seconds") or {}
        status = r["status"] if r["status"] != "ok" else ""
        t_rows.append(
            [
                name,
                _s(c.get("seconds")),
                c.get("kernels", "—"),
                _s(s.get("load")),
                f"{_s(s.get('encode_text'))} / {_s(s.get('encode_text_warm'))}",
                f"{_s(s.get('denoise'))} / {_s(s.get('denoise_warm'))}",
                _s(s.get("decode_latents")),
                _s(s.get("encode_image")),
                fmt(run.get("cpu_stall_pct"), 1),
                status,
            ]
        )
        if rs:
            t_rows.append(
                [
                    f"diffusers f32 ({name})",
                    "",
                    "",
                    "",
                    _s(rs.get("encode_text")),
                    _s(rs.get("denoise")),
                    _s(rs.get("decode_latents")),
                    _s(rs.get("encode_image")),
                    "",
                    "cached" if ref.get("cached") else "",
                ]
            )
        m_rows.append(
            [
                name,
                _gib(c.get("weights_bytes")),
                _gib(c.get("activation_bytes")),
                _gib(c.get("planned_peak_bytes")),
                _gib(run.get("peak_rss_bytes")),
                _gib((run.get("rss_after_load") or {}).get("RssAnon")),
                _gib((run.get("rss_after_load") or {}).get("RssFile")),
                _gib(c.get("peak_rss_bytes")),
                _gib(c.get("artifact_bytes")),
            ]
        )
        errs = r.get("errors") or {}
        e_rows.append(
            [name]
            + [
                "—"
                if fn not in errs
                else f"{100 * errs[fn]['nonfinite_share']:.0f}% NaN/inf"
                if errs[fn]["nonfinite_share"]
                else f"{_e(errs[fn]['max_abs_err_rel'])} ({_e(errs[fn]['rel_rms_err'])})"
                for fn in FUNCTIONS
            ]
        )
    lines += [
        "Seconds (first / warm call; one call each otherwise). encode_text and denoise run batch 2 (a guided "
        "step), the VAE batch 1. CPU stall %: share of the run's wall time in which some task on the machine waited "
        "for a CPU (Linux PSI): other work competing with the timed calls.",
        "",
        markdown_table(
            [
                "run",
                "compile s",
                "kernels",
                "load s",
                "encode_text",
                "denoise",
                "decode_latents",
                "encode_image",
                "CPU stall %",
                "",
            ],
            t_rows,
        ),
        "",
        "Memory, GiB: planned = the manifest's `peak_bytes` (weights + activations + I/O); measured = the run "
        "process's peak RSS (VmHWM) over loading, every call and the txt2img, which also counts the Python "
        "interpreter and TVM's (and on Vulkan the driver's) libraries, and memory-mapped weights once their pages are "
        "read. `loaded anon` / `loaded file`: private and file-backed RSS right after `runtime.load`. compile RSS: "
        "the compile process's peak.",
        "",
        markdown_table(
            [
                "run",
                "weights",
                "activations",
                "planned peak",
                "measured peak",
                "loaded anon",
                "loaded file",
                "compile RSS",
                "artifact",
            ],
            m_rows,
        ),
        "",
        "Error against diffusers/transformers f32 holding the artifact's decoded weights: max |err| / max |ref| "
        "(rel rms in brackets). encode_image compares the latent mean.",
        "",
        markdown_table(["run", *FUNCTIONS], e_rows),
    ]
    tx = [(r, r["run"]["txt2img"]) for r in result["rows"] if (r.get("run") or {}).get("txt2img")]
    if tx:
        lines += ["", "txt2img (euler, cfg 7, seed 42):", ""]
        for r, t in tx:
            st = t["step_s"]
            lines.append(
                f"- {r['target']} {r['type']} {r['size']}: {t['steps']} steps, median {np.median(st):.2f} s/step "
                f"(first {st[0]:.2f} s), total {t['timings'].get('total_s', 0):.1f} s -> {t['png']}"
            )
    bad = [r for r in result["rows"] if r["error"]]
    if bad:
        lines += ["", "Failures, refusals and stopped runs:", ""]
        lines += [f"- {r['target']} {r['type']} {r['size']}: {r['error']}" for r in bad]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child)
    if args.from_json:  # measure nothing: render the markdown of a result file again (adding any --note to it)
        result = json.loads(args.from_json.read_text())
        if args.note:
            result["notes"] = [n for n in result.get("notes", []) if n not in args.note] + args.note
            atomic_write_json(args.from_json, result)
        md = render_markdown(result)
        atomic_write_text(args.md, md)
        sys.stdout.write(md)
        return EXIT_OK
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(("numpy", "torch", "diffusers", "transformers", "apache-tvm", "gguf", "wgpu", "sdcompile"))
    _sys_path()
    from sdcompile import examples_sd as E

    args.commit, args.code_key = git_state()
    args.shape = E.SHAPES[args.model]
    params = sum(int(np.prod(s)) for s in E.sd_shapes(args.shape).values())
    ckpt, ckpt_info = ensure_checkpoint(args)
    rows = []
    for target in args.targets:
        for type_ in args.types:
            for size in args.sizes:
                rows.append(run_one(args, ckpt, target, type_, size))
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.merge and args.json.is_file():
        done = {(r["target"], r["type"], r["size"]) for r in rows}
        old = json.loads(args.json.read_text())
        if old.get("config", {}).get("model") == args.model:
            rows = [r for r in old["rows"] if (r["target"], r["type"], r["size"]) not in done] + rows
            args.note = [n for n in old.get("notes", []) if n not in args.note] + args.note
    result = {
        "benchmark": "sd15_check",
        "created": utc_now(),
        "config": {
            "model": args.model,
            "description": f"sdcompile.examples_sd.SHAPES[{args.model!r}], random weights",
            "parameters": params,
            "checkpoint": ckpt_info,
            "seed": SEED,
            "inputs_version": INPUTS_VERSION,
            "targets": args.targets,
            "types": args.types,
            "sizes": [f"{w}x{h}" for w, h in args.sizes],
            "steps": args.steps,
            "threads": args.threads,
            "commit": args.commit,
            "diffusers": machine["packages"].get("diffusers"),
            "reference": "diffusers UNet2DConditionModel / AutoencoderKL, transformers CLIPTextModel, float32, "
            f"{args.threads} torch threads, on the artifact's weights decoded by the gguf package",
        },
        "machine": machine,
        "rows": rows,
        "notes": args.note,
    }
    atomic_write_json(args.json, result)
    md = render_markdown(result)
    atomic_write_text(args.md, md)
    log(f"wrote {args.json.name} and {args.md.name}")
    sys.stdout.write(md)
    return EXIT_FAILED if any(r["status"] == "failed" for r in rows) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
