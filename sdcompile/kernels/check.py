"""`sdcompile kernels --check`: build and validate every (weight type, op, backend) and derive the capability table.

Each weight type's `linear` kernel is built at one activation row (GEMV, token generation) and at several (GEMM),
and its `embed` (row gather) kernel, for each backend. CPU and Vulkan kernels run on this machine against
`gguf.quants.dequantize` followed by a float64 matmul; CUDA kernels are built by nvcc for every default architecture
and run only where a GPU is present (otherwise their status is "compiled"). The capability table that legalization
reads lists exactly the kernels that passed; a table claiming a kernel that does not pass fails the check.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.backends import TABLE
from sdcompile.errors import NoKernelError, SdcompileError, ToolchainError
from sdcompile.kernels import spec as S
from sdcompile.quant.samples import sample_raw
from sdcompile.quant.types import QUANT_TYPES

U32 = 2.0**-24  # unit roundoff of f32
OPS = ("linear", "embed")
# K = 512 holds two 256-value super-blocks per row; N and the vocabulary are small, so a check costs little. M=1
# takes the CPU GEMV path (integer dot products), M=16 the GEMM path: the tile unit (schedules/cpu_amx.py) for
# q4_0/q8_0/q4_k/q6_k on CPUs with AMX, else the tiled GEMM that decodes to f32.
SHAPES = {"gemv": dict(M=1, N=64, K=512), "gemm": dict(M=16, N=64, K=512)}  # M=16: past the CPU GEMV path (M <= 8)
EMBED = dict(M=7, S=5, V=50, D=512)
PASS = ("validated", "compiled")


def specs_for(wtype: str) -> dict[str, S.KernelSpec]:
    out = {k: S.linear(v["M"], v["N"], v["K"], wtype) for k, v in SHAPES.items()}
    out["embed"] = S.embed(EMBED["M"], EMBED["S"], EMBED["V"], EMBED["D"], wtype)
    return out


def _words(raw: np.ndarray) -> np.ndarray:
    b = raw.tobytes()
    return np.frombuffer(b + b"\0" * (-len(b) % 4), np.uint32).copy()


def _decoded(raw: np.ndarray, wtype: str, shape: tuple[int, int]) -> np.ndarray:
    import gguf

    t = QUANT_TYPES[wtype]
    if wtype == "f32":
        return raw.view(np.float32).reshape(shape).astype(np.float64)
    data = raw.reshape(shape[0], -1)
    return np.asarray(gguf.quants.dequantize(data, gguf.GGMLQuantizationType(t.ggml_id)), np.float64).reshape(shape)


def _tables(spec: S.KernelSpec) -> list[np.ndarray]:
    """The lookup tables the kernel reads (i-quant grids; they follow the other inputs), as the runtime passes them."""
    from sdcompile.kernels.luts import table_words

    return [np.array(table_words(p.name)) for p in spec.params if p.kind == "lut"]


def case(spec: S.KernelSpec, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(inputs in parameter order, float64 reference, per-element tolerance)."""
    rng = np.random.default_rng([seed, *map(ord, spec.name)])
    wtype = str(spec.attr("wtype"))
    if spec.op == "linear":
        M, N, K = (int(spec.attr(k)) for k in "MNK")
        raw = sample_raw(wtype, (N, K), rng)
        w = _decoded(raw, wtype, (N, K))
        x = rng.standard_normal((M, K)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T
        # Recursive f32 summation of K products: |error| <= K u sum|x||w| (Higham), plus the decode's rounding.
        tol = (K + 4) * U32 * (np.abs(x.astype(np.float64)) @ np.abs(w).T) + 4 * U32 * np.abs(ref)
        return [x, _words(raw), *_tables(spec)], ref, tol
    M, Sq, V, D = (int(spec.attr(k)) for k in "MSVD")
    raw = sample_raw(wtype, (V, D), rng)
    tok = _decoded(raw, wtype, (V, D))
    ids = rng.integers(0, V, M).astype(np.int32)
    pos = rng.standard_normal((Sq, D)).astype(np.float32)
    ref = tok[ids] + pos[np.arange(M) % Sq]
    # A gather adds one f32 rounding. Types decoded as x - m (the k-quants' d*sc*q - dmin*min) may be reassociated
    # by a GPU compiler into (x + pos) - m (lavapipe does): the rounding then scales with |x| + |m|, bounded by twice
    # the row's largest decoded magnitude for these formats.
    rowmax = np.abs(tok).max(axis=1, keepdims=True)[ids]
    tol = 4 * U32 * (np.abs(ref) + np.abs(pos[np.arange(M) % Sq]) + 2 * rowmax)
    return [ids, _words(raw), pos, *_tables(spec)], ref, tol


def _run(executor, spec: S.KernelSpec, inputs: list[np.ndarray]) -> np.ndarray:
    args = []
    for a in inputs:
        buf = executor.alloc(a.nbytes + 64)
        executor.upload(buf, a)
        args.append((buf, a.shape, str(a.dtype)))
    out = spec.params[-1]
    obuf = executor.alloc(math.prod(out.shape) * 4)
    executor.upload(obuf, np.full(out.shape, np.nan, np.float32))  # an element the kernel skips shows up
    args.append((obuf, out.shape, "float32"))
    executor.launch(spec.name, args)
    executor.synchronize()
    return executor.download(obuf, out.shape, "float32")


def _verdict(got: np.ndarray, ref: np.ndarray, tol: np.ndarray) -> tuple[str, str]:
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)  # NaN counts as bad
    ratio = float(np.nanmax(np.where(np.isfinite(err), err / tol, np.inf)))
    if bad.any():
        return "failed", f"{int(bad.sum())}/{bad.size} elements out of tolerance (worst {ratio:.3g}x)"
    return "validated", f"max error {ratio:.3g}x of the f32 bound"


def _executor(target: str, out: Path, result: dict):
    if target == "cpu":
        from runtime.executors.cpu import Executor
    elif target == "vulkan":
        from runtime.executors.vulkan import Executor
    else:
        from runtime.executors.cuda import Executor
    return Executor(out, result, num_threads=2)


def _build(target: str, specs: list[S.KernelSpec], out: Path) -> dict:
    if target == "cuda":
        from sdcompile.codegen.cuda_build import DEFAULT_ARCHS, build_cuda

        return build_cuda(specs, DEFAULT_ARCHS, out)
    from sdcompile.codegen.build import build_kernels

    return build_kernels(specs, target, out)


def _gpu_present() -> bool:
    from runtime.device import probe_cuda

    return any(not d.get("simulated") for d in probe_cuda())


def check_target(target: str, types: list[str], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """{type: {"gemv"|"gemm"|"embed": {"status", "detail"}}} for one backend."""
    from sdcompile.kernels import supported_types

    say = progress or (lambda _m: None)
    results: dict[str, dict[str, dict[str, str]]] = {}
    have = set(supported_types())
    todo = []
    for t in types:
        if t not in have:
            results[t] = {k: {"status": "no kernel", "detail": "no decoder for this type"} for k in (*SHAPES, "embed")}
        else:
            todo.append(t)
    if target == "vulkan":
        from runtime.executors.vulkan import find_adapter

        if find_adapter() is None:
            raise NoKernelError("kernels --check: no Vulkan adapter to validate on (install mesa-vulkan-drivers)")
    run_here = target != "cuda" or _gpu_present()
    with tempfile.TemporaryDirectory(prefix=f"sdcompile-check-{target}-") as tmp:
        groups = _build_groups(target, todo, Path(tmp), say)
        for t in todo:
            specs = specs_for(t)
            d, built = groups[t]
            if isinstance(built, Exception):
                results[t] = {k: {"status": "no kernel", "detail": f"build failed: {built}"} for k in specs}
                continue
            if not run_here:
                archs = ", ".join(built["build"]["archs"] + built["build"]["ptx"])
                results[t] = {
                    k: {"status": "compiled", "detail": f"nvcc: {archs}; no GPU here to run it"} for k in specs
                }
                continue
            say(f"{target} {t}: run")
            ex = _executor(target, d, built)
            results[t] = {}
            for k, sp in specs.items():
                inputs, ref, tol = case(sp)
                try:
                    status, detail = _verdict(_run(ex, sp, inputs), ref, tol)
                except Exception as e:  # a kernel that crashes its launch is a failed kernel, not a crashed check
                    status, detail = "failed", f"launch failed: {type(e).__name__}: {e}"
                results[t][k] = {"status": status, "detail": detail}
    return results


def _build_groups(target: str, types: list[str], tmp: Path, say) -> dict[str, tuple[Path, Any]]:
    """Build every type's kernels in one build (one LLVM module, one nvcc run); if that fails, build each type
    alone so one broken type cannot hide the others."""
    say(f"{target}: building {len(types)} types")
    d = tmp / "all"
    d.mkdir()
    try:
        built = _build(target, [sp for t in types for sp in specs_for(t).values()], d)
        return {t: (d, built) for t in types}
    except (SdcompileError, ToolchainError, Exception) as e:  # noqa: B014 (TVM raises its own error types)
        say(f"{target}: joint build failed ({type(e).__name__}); building each type alone")
    out = {}
    for t in types:
        d = tmp / t
        d.mkdir()
        try:
            out[t] = (d, _build(target, list(specs_for(t).values()), d))
        except Exception as e:
            out[t] = (d, e)
    return out


def table_from(results: dict[str, dict], base: dict[str, Any]) -> dict[str, Any]:
    """The capability table: per backend, the types whose every check passed, and why the others have none."""
    table = json.loads(json.dumps(base))
    for target, per_type in results.items():
        entry = table[target]
        entry["linear"] = sorted(t for t, r in per_type.items() if all(r[k]["status"] in PASS for k in SHAPES))
        entry["embed"] = sorted(t for t, r in per_type.items() if r["embed"]["status"] in PASS)
        why = {}
        for t, r in sorted(per_type.items()):
            failing = [f"{k}: {v['status']} ({v['detail']})" for k, v in r.items() if v["status"] not in PASS]
            if failing:
                why[t] = "; ".join(failing)
        entry["why_not"] = why or {"*": "no kernel for this type on this backend yet"}
        entry["checked"] = {t: {k: v["status"] for k, v in r.items()} for t, r in sorted(per_type.items())}
    return table


def claims_without_kernel(table: dict[str, Any], results: dict[str, dict]) -> list[str]:
    """(backend, op, type) the table lists as native although its check did not pass."""
    wrong = []
    for target, per_type in results.items():
        for op in OPS:
            for t in table.get(target, {}).get(op, []):
                keys = list(SHAPES) if op == "linear" else ["embed"]
                r = per_type.get(t)
                if r is None:
                    continue
                bad = [k for k in keys if r[k]["status"] not in PASS]
                if bad:
                    wrong.append(
                        f"{target} {op} {t}: " + "; ".join(f"{k} {r[k]['status']} ({r[k]['detail']})" for k in bad)
                    )
    return wrong


def write_table(table: dict[str, Any], path: Path = TABLE) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    os.replace(tmp, path)


def render(results: dict[str, dict]) -> str:
    """A type x backend coverage table: native where every check passed, else what failed."""
    targets = list(results)
    lines = ["| type | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    mark = {"validated": "native", "compiled": "native (compiled)"}
    for t in QUANT_TYPES:
        cells = []
        for tg in targets:
            r = results[tg].get(t)
            if r is None:
                cells.append("—")
                continue
            states = {v["status"] for v in r.values()}
            if states <= set(PASS):
                cells.append(mark["validated" if "validated" in states else "compiled"])
            elif len(states) == 1:
                cells.append(states.pop())
            else:
                cells.append(", ".join(f"{k}: {v['status']}" for k, v in r.items() if v["status"] not in PASS))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
