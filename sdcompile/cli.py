"""The `sdcompile` command: inspect, compile, run, bench, example.

User errors (SdcompileError, RuntimeFailure) print one line `sdcompile: error: ...` and exit non-zero; internal
bugs keep their tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sdcompile.errors import OptionError, SdcompileError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdcompile",
        description="Ahead-of-time compiler for diffusion models and GGUF-quantized weights (Apache TVM).",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="show a weight file's format, model, tensors by component and memory")
    s.add_argument("file", type=Path)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--tensors", action="store_true", help="list every tensor")

    s = sub.add_parser("compile", help="compile a model into a deployment artifact")
    s.add_argument("file", type=Path)
    s.add_argument("-o", "--output", type=Path, required=True, help="artifact directory to write")
    s.add_argument("--target", choices=["cpu", "vulkan", "cuda"], default="cpu")
    s.add_argument("--type", help="storage type for quantizable weights (f32, f16, q8_0, q4_0, ...)")
    s.add_argument(
        "--tensor-type-rules",
        default="",
        metavar="R",
        help="'regex=type,...' on canonical tensor names; first match wins",
    )
    s.add_argument("--fallback-policy", default="lossless", help="lossless | size | exact (see legalize)")
    s.add_argument(
        "--cuda-arch",
        default=None,
        metavar="LIST",
        help="CUDA architectures, e.g. sm_75,sm_86,compute_90 (default sm_75..sm_90 + compute_90)",
    )
    s.add_argument("--memory-budget", default=None, metavar="SIZE", help="e.g. 4GiB (default: the probed device)")
    s.add_argument("--batch", type=int, default=1, help="compiled batch size (larger batches run in chunks)")
    s.add_argument("--dump-ir", type=Path, default=None, metavar="DIR", help="write the IR after each pass")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("run", help="run an artifact on inputs from .npy files")
    s.add_argument("artifact", type=Path)
    s.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", required=True)
    s.add_argument("--output", type=Path, required=True, metavar="OUT.npz")
    s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("bench", help="time an artifact over repeated runs")
    s.add_argument("artifact", type=Path)
    s.add_argument("--repeat", type=int, default=20)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("kernels", help="build and validate every (type, backend) kernel; write the capability table")
    s.add_argument("--check", action="store_true", help="fail if the capability table claims a kernel that fails")
    s.add_argument("--write", action="store_true", help="write the capability table legalization reads")
    s.add_argument("--targets", default="cpu,vulkan,cuda", help="comma-separated backends (default: all three)")
    s.add_argument("--types", default=None, help="comma-separated weight types (default: every type)")
    s.add_argument("--json", action="store_true", help="machine-readable results")

    s = sub.add_parser("example", help="write built-in example weights (a random CLIP text encoder)")
    s.add_argument("-o", "--output", type=Path, required=True)
    s.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    s.add_argument("--convention", default="ldm", help="ldm | transformers | transformers5 | diffusers")
    s.add_argument("--format", dest="fmt", choices=["safetensors", "gguf"], default="safetensors")
    s.add_argument("--dtype", default="f32", help="f32 | f16 (safetensors); also q8_0, q4_0, ... for gguf")
    return p


def _version() -> str:
    from sdcompile import __version__

    return f"sdcompile {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from runtime.errors import RuntimeFailure

    try:
        return {
            "inspect": cmd_inspect,
            "compile": cmd_compile,
            "run": cmd_run,
            "bench": cmd_bench,
            "example": cmd_example,
            "kernels": cmd_kernels,
        }[args.cmd](args)
    except (SdcompileError, RuntimeFailure) as e:
        print(f"sdcompile: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("sdcompile: interrupted", file=sys.stderr)
        return 130


def cmd_inspect(args) -> int:
    from sdcompile.inspect import inspect_file, render_inspect

    info = inspect_file(args.file)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(render_inspect(info, tensors=args.tensors))
    return 0


def cmd_compile(args) -> int:
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions
    from sdcompile.passes.memory_plan import parse_size
    from sdcompile.passes.quantize import parse_rules
    from sdcompile.report import render_compile_report

    if args.batch < 1:
        raise OptionError(f"--batch must be at least 1, got {args.batch}")
    archs = None
    if args.cuda_arch is not None:
        from sdcompile.codegen.cuda_build import parse_arch_list

        archs = parse_arch_list(args.cuda_arch)
    opts = CompileOptions(
        target=args.target,
        type=args.type,
        tensor_type_rules=parse_rules(args.tensor_type_rules),
        fallback_policy=args.fallback_policy,
        memory_budget=parse_size(args.memory_budget) if args.memory_budget else None,
        cuda_archs=archs,
        batch=args.batch,
    )
    if opts.type is not None:
        from sdcompile.quant.types import get

        get(opts.type)
    manifest = compile_model(
        args.file, args.output, opts, progress=not args.no_progress and sys.stderr.isatty(), dump_ir=args.dump_ir
    )
    if args.json:
        print(json.dumps({k: manifest[k] for k in ("target", "memory", "report", "source", "files")}, indent=1))
    else:
        print(render_compile_report(manifest, args.output))
    return 0


def _load_npy(spec: str):
    import numpy as np

    if "=" not in spec:
        raise OptionError(f"--input {spec!r} is not NAME=FILE.npy")
    name, file = spec.split("=", 1)
    try:
        return name, np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise OptionError(f"--input {name}: cannot read {file} as a .npy array ({e})") from None


def cmd_run(args) -> int:
    import numpy as np

    import runtime

    model = runtime.load(args.artifact, num_threads=args.threads)
    inputs = dict(_load_npy(s) for s in args.input)
    out = model.run(inputs)
    tmp = args.output.with_name(args.output.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(args.output)
    for k, v in out.items():
        print(f"{k}: {v.dtype}{list(v.shape)}  mean {v.mean():+.5f}  std {v.std():.5f}")
    print(f"wrote {args.output}")
    return 0


def cmd_bench(args) -> int:
    from sdcompile.report import bench_artifact

    res = bench_artifact(args.artifact, repeat=args.repeat, warmup=args.warmup, threads=args.threads)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{res['artifact']} on {res['device']}: {res['repeat']} runs, batch {res['batch']}")
        print(f"  min {res['min_ms']:.2f} ms   median {res['median_ms']:.2f} ms   max {res['max_ms']:.2f} ms")
    return 0


def cmd_kernels(args) -> int:
    import json as _json

    from sdcompile.backends import TABLE
    from sdcompile.kernels import check
    from sdcompile.quant.types import QUANT_TYPES, get

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in ("cpu", "vulkan", "cuda"):
            raise OptionError(f"unknown target {t!r} in --targets; choose from cpu, vulkan, cuda")
    types = [get(t).name for t in args.types.split(",")] if args.types else list(QUANT_TYPES)
    results = {}
    for tg in targets:
        results[tg] = check.check_target(tg, types, progress=None if args.json else lambda m: print(m, file=sys.stderr))
    base = _json.loads(TABLE.read_text())
    wrong = check.claims_without_kernel(base, results)
    table = check.table_from(results, base)
    if args.write:
        check.write_table(table)
    if args.json:
        print(_json.dumps({"results": results, "table_claims_failing": wrong}, indent=1))
    else:
        print(check.render(results))
        if args.write:
            print(f"\nwrote {TABLE.name}")
    if args.check and wrong:
        print(
            "sdcompile: error: the capability table claims kernels that do not validate:\n  " + "\n  ".join(wrong),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_example(args) -> int:
    from sdcompile import examples as ex

    shape = {"tiny": ex.TINY, "sd15": ex.SD15}[args.size]
    if args.convention not in dict(ex.CONVENTIONS):
        raise OptionError(f"unknown convention {args.convention!r}; choose from {', '.join(dict(ex.CONVENTIONS))}")
    state = ex.rename(ex.clip_text_state(shape), args.convention)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"num_attention_heads": shape.heads}
    if args.fmt == "safetensors":
        if args.dtype not in ("f32", "f16"):
            raise OptionError("safetensors examples are f32 or f16; use --format gguf for quantized examples")
        ex.write_safetensors(args.output, state, args.dtype, {k: str(v) for k, v in meta.items()})
    else:
        ex.write_gguf(args.output, state, args.dtype, meta)
    print(f"wrote {args.output} ({args.size} CLIP text encoder, {args.convention} names, {args.fmt}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
