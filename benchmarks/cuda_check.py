"""Run and validate sdcompile's CUDA kernels on a real NVIDIA GPU, for a machine that has the GPU but not the compiler.

Two steps, because lowering to CUDA C needs TVM (the compiler's machine) while running needs only the runtime, numpy
and the driver (the GPU machine):

    python benchmarks/cuda_check.py build --out DIR      # here: nvcc fatbin of every type's kernels + build.json
    python benchmarks/cuda_check.py run --pack DIR --json R.json --markdown R.md   # on the GPU machine

``build`` compiles the same specs as ``sdcompile kernels --check`` (per type: GEMV M=1, GEMM M=16, embedding
gather) for every default architecture, plus GEMV and GEMM at LLM size (4096 x 4096, M = 1 and 64) for q4_0, q4_k,
q6_k and q8_0, and copies the ``gguf`` package (pure Python: the reference dequantizer) into ``DIR/pylib``. ``run``
regenerates each case exactly as the check does (``sdcompile.kernels.check.case``: seeded random blocks, float64
numpy reference on ``gguf.quants.dequantize``, f32 summation bound), launches the kernel through the runtime's CUDA
executor, and records the verdict, the error against the bound and the time per call (median of timed launches,
launched back to back; a call costs the larger of the kernel and the Python launch path). Exit status 0 when every kernel validates, 1 otherwise, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BIG = [(1, 4096, 4096), (64, 4096, 4096)]
BIG_TYPES = ("q4_0", "q4_k", "q6_k", "q8_0")


def _specs(types: list[str]) -> dict[str, tuple[str, str, object]]:
    """{kernel name: (type, case label, spec)} for the check's shapes and the LLM-size ones."""
    from sdcompile.kernels import check
    from sdcompile.kernels import spec as S

    out = {}
    for t in types:
        for label, sp in check.specs_for(t).items():
            out[sp.name] = (t, label, sp)
        if t in BIG_TYPES:
            for m, n, k in BIG:
                sp = S.linear(m, n, k, t)
                out[sp.name] = (t, f"{'gemv' if m == 1 else 'gemm'} {m}x{n}x{k}", sp)
    return out


def cmd_build(args) -> int:
    import gguf

    from sdcompile.codegen.cuda_build import DEFAULT_ARCHS, build_cuda
    from sdcompile.quant.types import QUANT_TYPES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    types = args.types.split(",") if args.types else sorted(QUANT_TYPES)
    specs = _specs(types)
    built = build_cuda([s for _, _, s in specs.values()], DEFAULT_ARCHS, out, progress=print)
    (out / "build.json").write_text(json.dumps({"types": types, "cuda": built}, indent=1, sort_keys=True))
    lib = out / "pylib" / "gguf"
    shutil.rmtree(lib, ignore_errors=True)
    shutil.copytree(Path(gguf.__file__).parent, lib, ignore=shutil.ignore_patterns("__pycache__"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(specs)} kernels, {size / 2**20:.1f} MiB in {out}")
    return 0


def _time(ex, spec, args_, calls: int = 50, rounds: int = 5) -> float:
    """Microseconds per call: ``calls`` launches back to back, then one synchronize; the best of ``rounds``. A
    call costs the larger of the kernel's time and the runtime's launch path (Python and ctypes, tens of µs)."""
    ex.launch(spec.name, args_)
    ex.synchronize()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            ex.launch(spec.name, args_)
        ex.synchronize()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def cmd_run(args) -> int:
    pack = Path(args.pack)
    sys.path.insert(0, str(pack / "pylib"))
    import numpy as np

    from runtime.device import probe_cuda
    from runtime.executors.cuda import Executor
    from sdcompile.kernels import check

    meta = json.loads((pack / "build.json").read_text())
    specs = _specs(meta["types"])
    devices = probe_cuda()
    ex = Executor(pack, meta["cuda"])
    rows = []
    for name, (t, label, sp) in sorted(specs.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        row = {"type": t, "case": label, "kernel": name}
        try:
            inputs, ref, tol = check.case(sp)
            got = check._run(ex, sp, inputs)
            row["status"], row["detail"] = check._verdict(got, ref, tol)
            err = np.abs(got.astype(np.float64) - ref)
            row["max_abs_err"] = float(np.nanmax(err))
            row["max_err_over_bound"] = float(np.nanmax(err / tol))
            bufs = []
            for a in inputs:
                b = ex.alloc(a.nbytes + 64)
                ex.upload(b, a)
                bufs.append((b, a.shape, str(a.dtype)))
            out = sp.params[-1]
            bufs.append((ex.alloc(int(np.prod(out.shape)) * 4), out.shape, "float32"))
            row["us_per_call"] = _time(ex, sp, bufs)
        except Exception as e:  # a kernel whose launch fails is a failed kernel, not a crashed check
            row["status"], row["detail"] = "failed", f"{type(e).__name__}: {e}"
        rows.append(row)
        print(f"{t:8s} {label:20s} {row['status']:10s} {row.get('us_per_call', float('nan')):9.1f} us  {row['detail']}")
    failed = [r for r in rows if r["status"] != "validated"]
    result = {"devices": devices, "build": meta["cuda"].get("build"), "rows": rows, "failed": len(failed)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(render(result))
    print(f"{len(rows) - len(failed)}/{len(rows)} kernels validated on {devices[0].get('name') if devices else '?'}")
    return 1 if failed else 0


def render(result: dict) -> str:
    dev = result["devices"][0] if result["devices"] else {}
    lines = [
        f"### CUDA kernels on {dev.get('name', '?')} (compute capability {dev.get('cc', '?')})",
        "",
        f"Built by nvcc for {', '.join(result['build']['archs'] + result['build']['ptx'])}; each kernel run through the "
        "runtime's CUDA executor on the `sdcompile kernels --check` cases (gguf dequantization + float64 numpy, f32 "
        "summation bound). Time: per call, 50 calls launched back to back (best of 5 rounds): the larger of the kernel's "
        "time and the runtime's Python launch path (tens of µs), which most of these small kernels are under.",
        "",
        "| type | case | verdict | error / bound | µs per call |",
        "| :--- | :--- | :--- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['type']} | {r['case']} | {r['status']} | {r.get('max_err_over_bound', float('nan')):.3g} | "
            f"{r.get('us_per_call', float('nan')):.1f} |"
        )
    return "\n".join(lines) + "\n"


MODEL_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k", "q6_k", "iq4_xs", "q2_k")


def cmd_model_build(args) -> int:
    """The built-in CLIP text encoder compiled for CUDA in several storage types, with transformers' output on each
    artifact's own decoded weights as the reference."""
    import numpy as np

    from sdcompile import examples as ex
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = out / "clip_tiny_ldm.safetensors"
    ex.write_safetensors(src, ex.rename(ex.clip_text_state(), "ldm"))
    ids = ex.example_ids(batch=2, positions=ex.TINY.positions, vocab=ex.TINY.vocab)
    refs = {"input_ids": ids}
    for t in MODEL_TYPES:
        art = out / f"clip_{t}"
        shutil.rmtree(art, ignore_errors=True)
        compile_model(src, art, CompileOptions(target="cuda", type=t))
        refs[t] = ex.transformers_hidden(ex.transformers_clip(ex.artifact_state(art), ex.TINY), ids)
        print(f"{t}: compiled, reference {refs[t].shape}")
    np.savez(out / "reference.npz", **refs)
    return 0


def cmd_model_run(args) -> int:
    """Load each artifact with the runtime on the GPU, run it, compare with the reference."""
    import numpy as np

    import runtime

    pack = Path(args.pack)
    refs = np.load(pack / "reference.npz")
    rows, worst = [], 0.0
    for t in MODEL_TYPES:
        model = runtime.load(pack / f"clip_{t}")
        got = model.run({"input_ids": refs["input_ids"]})["last_hidden_state"]
        err = float(np.abs(got.astype(np.float64) - refs[t]).max())
        t0 = time.perf_counter()
        for _ in range(20):
            model.run({"input_ids": refs["input_ids"]})
        ms = (time.perf_counter() - t0) / 20 * 1e3
        rows.append(
            {
                "type": t,
                "device": model.device if hasattr(model, "device") else "cuda",
                "max_abs_err": err,
                "ms_per_run": ms,
            }
        )
        worst = max(worst, err)
        print(f"{t:7s} max |diff| vs transformers {err:.2e}   {ms:.2f} ms per run (batch 2, 77 tokens)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    ok = worst <= 1e-4
    print(("all within" if ok else "NOT all within") + " 1e-4 of transformers on the artifacts' decoded weights")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the kernels (needs TVM and nvcc; no GPU)")
    b.add_argument("--out", required=True, help="directory for the fatbin, build.json and pylib/")
    b.add_argument("--types", help="comma-separated weight types (default: all)")
    r = sub.add_parser("run", help="run and validate them (needs a GPU, numpy and the runtime; no TVM)")
    r.add_argument("--pack", required=True, help="directory that build wrote")
    r.add_argument("--json", help="write results here")
    r.add_argument("--markdown", help="write a markdown table here")
    mb = sub.add_parser("model-build", help="compile the built-in text encoder for CUDA in several types")
    mb.add_argument("--out", required=True)
    mr = sub.add_parser("model-run", help="run those artifacts on the GPU against transformers' outputs")
    mr.add_argument("--pack", required=True)
    mr.add_argument("--json")
    args = ap.parse_args(argv)
    cmds = {"build": cmd_build, "run": cmd_run, "model-build": cmd_model_build, "model-run": cmd_model_run}
    return cmds[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
