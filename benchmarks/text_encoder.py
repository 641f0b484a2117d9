"""SD1.5 text encoder: sdcompile vs ONNX Runtime vs PyTorch, same weights, same input, same run.

The model is a full-size SD1.5 CLIP text encoder (12 layers, width 768, 12 heads, MLP 3072, vocab 49408, 77 positions)
with random weights from `sdcompile.examples.clip_text_state(SD15, seed=0)`: no real SD weights can be downloaded here,
and speed does not depend on the values. The weights are written once, LDM-named, to `<workdir>/` and reused.

Every implementation is timed end to end from a numpy int64 `input_ids` array to a numpy float32 `last_hidden_state`
array, and its output is compared with PyTorch's. See benchmarks/README.md for how to read the numbers.

    .venv/bin/python benchmarks/text_encoder.py                    # everything
    .venv/bin/python benchmarks/text_encoder.py --skip-sdcompile   # the peers only
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:  # `python -m benchmarks.text_encoder` from the repository root
    from benchmarks.common import (
        Stopwatch,
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        contention,
        fmt,
        fmt_sci,
        load_average,
        machine_info,
        markdown_table,
        pressure,
        ratio,
        time_fn,
        utc_now,
    )
except ImportError:  # `python benchmarks/text_encoder.py`: the script's own directory is on sys.path
    from common import (  # type: ignore[no-redef]
        Stopwatch,
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        contention,
        fmt,
        fmt_sci,
        load_average,
        machine_info,
        markdown_table,
        pressure,
        ratio,
        time_fn,
        utc_now,
    )

HERE = Path(__file__).resolve().parent
SEQ = 77
SEED = 0
DEFAULT_TYPES = "f32,f16,q8_0,q4_0"


def known_types() -> list[str] | None:
    """sdcompile's storage types (its quant table plus the float types), or None if the table cannot be imported."""
    try:
        from sdcompile.quant.types import QUANT_TYPES
    except Exception:  # a broken compiler is reported per row later, not as a usage error
        return None
    return sorted({"f32", "f16", "bf16", *(t.lower() for t in QUANT_TYPES)})


# Exit codes.
EXIT_OK = 0
EXIT_PEER_FAILED = 1  # PyTorch or ONNX Runtime failed: the comparison is incomplete
EXIT_SDCOMPILE_FAILED = 3  # only with --strict: an sdcompile type failed to compile, load or run


def log(msg: str) -> None:
    print(f"[text_encoder] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="text_encoder.py",
        description=(
            "Time the SD1.5 CLIP text encoder (random weights, full size) in PyTorch eager, ONNX Runtime (CPU) and "
            "sdcompile (CPU, one artifact per weight type), all with the same weights and input ids, and check "
            "each output against PyTorch's."
        ),
        epilog=(
            "exit status: 0 when PyTorch and ONNX Runtime both ran (sdcompile failures are reported as rows with an "
            f"error), {EXIT_PEER_FAILED} when a peer failed, {EXIT_SDCOMPILE_FAILED} when --strict is given and an "
            "sdcompile type failed, 2 for bad arguments."
        ),
    )
    p.add_argument("--threads", type=int, default=2, help="threads for every implementation (default: 2)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per implementation (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing (default: 3)")
    p.add_argument("--batch", type=int, default=1, help="prompts per run, each 77 tokens (default: 1)")
    p.add_argument(
        "--types",
        default=DEFAULT_TYPES,
        help=f"comma-separated sdcompile weight types, one artifact each (default: {DEFAULT_TYPES})",
    )
    p.add_argument("--skip-sdcompile", action="store_true", help="measure the peers (PyTorch, ONNX Runtime) only")
    p.add_argument(
        "--onnx-exporter",
        choices=("legacy", "dynamo"),
        default="legacy",
        help="torch.onnx.export path: legacy = TorchScript (dynamo=False, works offline, default); dynamo needs onnxscript",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=HERE / ".work",
        help="cache for the weights file, the ONNX export and the sdcompile artifacts (default: benchmarks/.work)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "text_encoder.json",
        help="machine-readable results (default: benchmarks/results/text_encoder.json)",
    )
    p.add_argument("--markdown", type=Path, default=None, help="also write the markdown table to this file")
    p.add_argument("--strict", action="store_true", help=f"exit {EXIT_SDCOMPILE_FAILED} if any sdcompile type fails")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error("--threads must be at least 1")
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    if a.warmup < 0:
        p.error("--warmup must be 0 or more")
    if a.batch < 1:
        p.error("--batch must be at least 1")
    a.types = [t.strip().lower() for t in a.types.split(",") if t.strip()]
    known = known_types()
    unknown = [t for t in a.types if known is not None and t not in known]
    if unknown:
        p.error(f"unknown --types {unknown}; known: {', '.join(known)}")
    return a


# --------------------------------------------------------------------------------------------------------- weights


def state_digest(state: dict[str, np.ndarray]) -> str:
    """A hash of names, shapes and bytes: the cache key for every file derived from the weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.ascontiguousarray(state[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def prepare_weights(workdir: Path, state: dict[str, np.ndarray], digest: str) -> tuple[Path, bool]:
    """The LDM-named f32 safetensors file for `state`, written once; rewritten if the cached one holds other weights."""
    from safetensors import safe_open

    from sdcompile.examples import rename, write_safetensors

    path = workdir / "sd15_text_encoder_seed0.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), "np") as f:
                if (f.metadata() or {}).get("bench.state_sha256") == digest:
                    return path, False
        except Exception as e:  # a damaged cache file is rewritten, not fatal
            log(f"cached weights {path} unreadable ({e}); rewriting")
    meta = {"bench.state_sha256": digest, "bench.generator": f"sdcompile.examples.clip_text_state(SD15, seed={SEED})"}
    with atomic_path(path) as tmp:
        write_safetensors(tmp, rename(state, "ldm"), "f32", metadata=meta)
    return path, True


# ----------------------------------------------------------------------------------------------------------- rows


def new_row(impl: str, type_: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "impl": impl,
        "type": type_,
        "threads": args.threads,
        "batch": args.batch,
        "seq": SEQ,
        "min_ms": None,
        "median_ms": None,
        "p90_ms": None,
        "max_abs_diff_vs_torch": None,
        "rel_rms_diff_vs_torch": None,
        "error": None,
    }


def fill_timing(row: dict[str, Any], fn: Callable[[], np.ndarray], args: argparse.Namespace) -> None:
    t = time_fn(fn, warmup=args.warmup, repeat=args.repeat)
    row.update(t.summary())
    row["runs_ms"] = t.runs_ms
    row["pressure_after"] = pressure()  # avg10 covers roughly the timed runs: was anything else competing?


def agreement(row: dict[str, Any], out: np.ndarray | None, ref: np.ndarray | None) -> None:
    """Fill max |out - ref| and rms(out - ref) / rms(ref), PyTorch f32 being `ref`."""
    if out is None or ref is None:
        return
    out = np.asarray(out)
    if out.shape != ref.shape:
        raise ValueError(f"output shape {out.shape} differs from PyTorch's {ref.shape}")
    d = out.astype(np.float64) - ref
    row["max_abs_diff_vs_torch"] = float(np.max(np.abs(d)))
    row["rel_rms_diff_vs_torch"] = float(np.sqrt(np.mean(d * d) / np.mean(ref.astype(np.float64) ** 2)))


def record_error(row: dict[str, Any], stage: str, e: BaseException) -> None:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    row["error"] = f"{stage}: {type(e).__name__}: {msg}"[:500]
    row["traceback"] = traceback.format_exc()[-4000:]
    log(f"{row['impl']} {row['type']} failed at {stage}: {type(e).__name__}: {msg}")


# ------------------------------------------------------------------------------------------------------ PyTorch


def run_torch(model, ids: np.ndarray, args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray | None]:
    import torch

    row = new_row("pytorch", "f32", args)
    row["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    out = None
    try:
        t_ids = torch.from_numpy(ids)
        with torch.inference_mode():

            def fn() -> np.ndarray:
                return model(input_ids=t_ids).last_hidden_state.numpy()

            out = fn()
            fill_timing(row, fn, args)
        row["max_abs_diff_vs_torch"] = row["rel_rms_diff_vs_torch"] = 0.0
    except Exception as e:
        record_error(row, "run", e)
        out = None
    return row, out


# -------------------------------------------------------------------------------------------------- ONNX Runtime


def _last_hidden_module(model):
    """Only last_hidden_state leaves the exported graph (the pooled output is dead code SD never reads)."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids).last_hidden_state

    return LastHidden(model).eval()


def export_onnx(model, ids: np.ndarray, path: Path, exporter: str) -> None:
    import torch

    kwargs: dict[str, Any] = dict(
        input_names=["input_ids"],
        output_names=["last_hidden_state"],
        opset_version=17,  # LayerNormalization is a native op from 17
    )
    if exporter == "legacy":
        kwargs.update(dynamo=False, do_constant_folding=True, dynamic_axes={"input_ids": {0: "batch"}})
    else:
        kwargs.update(dynamo=True, dynamic_shapes={"input_ids": {0: torch.export.Dim("batch")}}, external_data=False)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes: expected here
        torch.onnx.export(_last_hidden_module(model), (torch.from_numpy(ids),), str(tmp), **kwargs)


def run_ort(
    model, ids: np.ndarray, ref: np.ndarray | None, digest: str, args: argparse.Namespace
) -> tuple[dict[str, Any], np.ndarray | None]:
    row = new_row("onnxruntime", "f32", args)
    row["onnx_exporter"] = args.onnx_exporter
    row["export_s"] = None
    stage = "import"
    out = None
    try:
        import onnxruntime as ort
        import torch

        stage = "export"
        path = args.workdir / f"text_encoder.{digest[:12]}.{args.onnx_exporter}.torch{torch.__version__}.onnx"
        if not path.is_file():
            log(f"exporting ONNX ({args.onnx_exporter} exporter) to {path}")
            with Stopwatch() as sw:
                export_onnx(model, ids, path, args.onnx_exporter)
            row["export_s"] = round(sw.seconds, 2)
        row["onnx_file"] = path.name  # the name only: results must not carry machine paths

        stage = "load"
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with Stopwatch() as sw:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        row["load_s"] = round(sw.seconds, 2)

        stage = "run"
        feed = {"input_ids": ids}

        def fn() -> np.ndarray:
            return sess.run(["last_hidden_state"], feed)[0]

        out = fn()
        fill_timing(row, fn, args)
        agreement(row, out, ref)
        sess = None  # joins ORT's thread pool before the next implementation is timed
    except Exception as e:
        record_error(row, stage, e)
        out = None
    return row, out


# --------------------------------------------------------------------------------------------------------- sdcompile


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_sdcompile(
    weights: Path, type_: str, ids: np.ndarray, ref: np.ndarray | None, args: argparse.Namespace
) -> dict[str, Any]:
    row = new_row("sdcompile", type_, args)
    row["compile_s"] = None
    stage = "import"
    m = None
    try:
        import runtime
        from sdcompile.compiler import compile_model
        from sdcompile.passes.context import CompileOptions

        stage = "compile"
        out_dir = args.workdir / "sdcompile" / f"cpu-{type_}-b{args.batch}"
        log(f"sdcompile: compiling {type_} -> {out_dir}")
        with Stopwatch() as sw:
            compile_model(weights, out_dir, CompileOptions(target="cpu", type=type_, batch=args.batch))
        row["compile_s"] = round(sw.seconds, 2)
        row["artifact_bytes"] = _dir_bytes(out_dir)

        stage = "load"
        with Stopwatch() as sw:
            m = runtime.load(out_dir, num_threads=args.threads)
        row["load_s"] = round(sw.seconds, 2)

        stage = "run"
        feed = {"input_ids": ids}

        def fn() -> np.ndarray:
            return m.run(feed)["last_hidden_state"]

        out = fn()
        stage = "check"
        agreement(row, out, ref)
        stage = "run"
        fill_timing(row, fn, args)
    except Exception as e:
        record_error(row, stage, e)
    finally:
        m = None
        gc.collect()
    return row


# ---------------------------------------------------------------------------------------------------------- report


def collect_warnings(machine: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    cores = machine["cpu"]["usable_cores"]
    before = contention(machine["pressure_start"], machine["load_average_start"], cores)
    out = ["before the run: " + "; ".join(before)] if before else []
    for r in rows:
        why = contention(r.get("pressure_after"), None, None)
        if r["min_ms"] and r["p90_ms"] and r["p90_ms"] > 1.5 * r["min_ms"]:
            why.append(f"p90 is {r['p90_ms'] / r['min_ms']:.1f}× the minimum")
        if why:
            out.append(f"{r['impl']} {r['type']}: " + "; ".join(why))
    return out


def render_markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    cfg = result["config"]
    cpu = result["machine"]["cpu"]

    def median_of(impl: str) -> float | None:
        for r in rows:
            if r["impl"] == impl and r["error"] is None:
                return r["median_ms"]
        return None

    ort_med, torch_med = median_of("onnxruntime"), median_of("pytorch")
    table = []
    for r in rows:
        failed = r["error"] is not None and r["median_ms"] is None
        table.append(
            [
                r["impl"],
                r["type"],
                "failed" if failed else fmt(r["median_ms"]),
                fmt(r["min_ms"]),
                fmt(r["p90_ms"]),
                fmt(ratio(r["median_ms"], ort_med), 2, "×"),
                fmt(ratio(r["median_ms"], torch_med), 2, "×"),
                fmt_sci(r["max_abs_diff_vs_torch"]),
                fmt_sci(r.get("rel_rms_diff_vs_torch")),
                fmt(r.get("compile_s"), 1),
            ]
        )
    headers = [
        "impl",
        "type",
        "median ms",
        "min ms",
        "p90 ms",
        "vs ORT",
        "vs PyTorch",
        "max\\|diff\\|",
        "rel rms",
        "compile s",
    ]
    lines = [
        f"### SD1.5 text encoder: batch {cfg['batch']} × {SEQ} tokens, {cfg['threads']} threads, "
        f"{cfg['repeat']} timed runs after {cfg['warmup']} warmup",
        "",
        f"{cpu['model']}, {cpu['usable_cores']} usable cores; "
        + ", ".join(f"{k} {v}" for k, v in result["machine"]["packages"].items() if v and k != "safetensors")
        + f"; load average {result['machine']['load_average_start']} → {result['machine'].get('load_average_end')}",
        "",
        markdown_table(headers, table),
        "",
        "vs ORT / vs PyTorch: median time divided by that peer's median (below 1× is faster). max|diff|: largest "
        f"absolute difference of last_hidden_state from PyTorch f32 (PyTorch's own max |value| is "
        f"{fmt(cfg.get('reference_max_abs'), 2)}); rel rms: rms(difference) / rms(PyTorch output).",
    ]
    if result["warnings"]:
        lines += ["", "Warnings (numbers may be unreliable):", ""] + [f"- {w}" for w in result["warnings"]]
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['impl']} {r['type']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel region
        torch.set_num_interop_threads(1)

    from sdcompile.examples import SD15, clip_text_state, example_ids, transformers_clip

    machine = machine_info()
    log(f"generating SD1.5 text-encoder weights (seed {SEED})")
    state = clip_text_state(SD15, seed=SEED)
    digest = state_digest(state)
    weights, written = prepare_weights(args.workdir, state, digest)
    log(f"weights {'written to' if written else 'reused from'} {weights}")
    ids = example_ids(args.batch, SEQ, SD15.vocab)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers_clip(state, SD15)
    del state
    gc.collect()

    rows: list[dict[str, Any]] = []
    log("timing PyTorch")
    row, ref = run_torch(model, ids, args)
    rows.append(row)
    log("timing ONNX Runtime")
    row, _ = run_ort(model, ids, ref, digest, args)
    rows.append(row)
    del model
    gc.collect()

    if not args.skip_sdcompile:
        for t in args.types:
            rows.append(run_sdcompile(weights, t, ids, ref, args))

    machine["load_average_end"] = load_average()
    machine["pressure_end"] = pressure()
    result = {
        "benchmark": "text_encoder",
        "created": utc_now(),
        "config": {
            "model": "SD1.5 CLIP text encoder (random weights)",
            "shape": {
                "vocab": SD15.vocab,
                "width": SD15.width,
                "layers": SD15.layers,
                "heads": SD15.heads,
                "mlp": SD15.mlp,
                "positions": SD15.positions,
            },
            "weights_file": weights.name,
            "weights_sha256": digest,
            "seed": SEED,
            "batch": args.batch,
            "seq": SEQ,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "types": [] if args.skip_sdcompile else args.types,
            "onnx_exporter": args.onnx_exporter,
            "input_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
            "reference_max_abs": None if ref is None else float(np.max(np.abs(ref))),
            "timed_span": "numpy int64 input_ids -> numpy float32 last_hidden_state, one call per run",
        },
        "machine": machine,
        "rows": rows,
        "warnings": collect_warnings(machine, rows),
    }
    md = render_markdown(result)
    atomic_write_json(args.json, result)
    log(f"wrote {args.json}")
    if args.markdown:
        atomic_write_text(args.markdown, md)
        log(f"wrote {args.markdown}")
    sys.stdout.write(md)
    sys.stdout.flush()

    if any(r["error"] for r in rows if r["impl"] in ("pytorch", "onnxruntime")):
        return EXIT_PEER_FAILED
    if args.strict and any(r["error"] for r in rows if r["impl"] == "sdcompile"):
        return EXIT_SDCOMPILE_FAILED
    return EXIT_OK


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
