"""`sdcompile kernels --check`: build and validate every (weight type, op, backend) and derive the capability table.

Per weight type, for each backend: its `linear` kernel at one activation row (GEMV, token generation) and at several
(GEMM), its `embed` (row gather) kernel, and its `conv2d` kernel (an implicit GEMM over 3x3 patches, at stride 1 and
at stride 2 with the VAE's one-sided padding), against `gguf.quants.dequantize` followed by a float64 matmul or
convolution. Every weightless kernel op (norms, attention, pointwise, data movement) runs the cases of
`sdcompile.kernels.op_cases` against the op registry's numpy reference. CPU and Vulkan kernels run on this machine;
CUDA kernels are built by nvcc for every default architecture and run only where a GPU is present (otherwise their
status is "compiled"). The capability table that legalization reads lists exactly the kernels that passed: the
types per weight op, and the ops (`"ops"`) per backend; a table claiming a kernel that does not pass fails the check.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.backends import TABLE
from sdcompile.errors import NoKernelError, SdcompileError, ToolchainError
from sdcompile.ir import ops as ir_ops
from sdcompile.kernels import op_cases
from sdcompile.kernels import spec as S
from sdcompile.quant.samples import sample_raw
from sdcompile.quant.types import QUANT_TYPES

U32 = 2.0**-24  # unit roundoff of f32
# Kernel ops that read a weight in its storage type (the op registry's weight ops; a test keeps them equal), and the
# per-type checks each needs.
WEIGHT_CHECKS: dict[str, tuple[str, ...]] = {
    "linear": ("gemv", "gemm"),
    "embed": ("embed",),
    "conv2d": ("conv", "conv_s2"),
}
OPS = tuple(WEIGHT_CHECKS)
# Kernel ops with no weight in a storage type: checked once per backend, by the cases in op_cases.CASES.
WEIGHTLESS = tuple(op for op in S.KERNELS if op not in WEIGHT_CHECKS)
OPS_KEY = "ops"  # results[target][OPS_KEY] = {op: {case: {"status", "detail"}}}; every other key is a weight type
# results[target][ACT_KEY] = {dtype: {case: {"status", "detail"}}}: the 16-bit activation storage types, checked with
# op_cases' F16_CASES / BF16_CASES when all weightless ops are; the table lists a dtype where all its cases passed.
ACT_KEY = "act_dtypes"
ACT_CASES = {"float16": op_cases.F16_CASES, "bfloat16": op_cases.BF16_CASES}
# K = 512 holds two 256-value super-blocks per row; N and the vocabulary are small, so a check costs little. M=1
# takes the CPU GEMV path (integer dot products), M=16 the GEMM path: the tile unit (schedules/cpu_amx.py) for
# q4_0/q8_0/q4_k/q6_k on CPUs with AMX, else the tiled GEMM that decodes to f32.
SHAPES = {"gemv": dict(M=1, N=64, K=512), "gemm": dict(M=16, N=64, K=512)}  # M=16: past the CPU GEMV path (M <= 8)
EMBED = dict(M=7, S=5, V=50, D=512)
# 3x3 convolutions over C = 256 channels: K = 9 * 256 holds whole 256-value super-blocks, so every type's blocks fit;
# a 4x4 image keeps them small. The stride-2 case pads only bottom and right (the VAE encoder's downsampling), so
# both the asymmetric padding and the strided patch addressing are covered.
CONV = {
    "conv": dict(x=(1, 4, 4, 256), N=32, kh=3, kw=3, stride=1, pads=(1, 1, 1, 1)),
    "conv_s2": dict(x=(1, 4, 4, 256), N=32, kh=3, kw=3, stride=2, pads=(0, 0, 1, 1)),
}
PASS = ("validated", "compiled")


def conv_spec(key: str, wtype: str) -> S.KernelSpec:
    """A check's conv2d kernel, lowered by the op registry as a compiled graph's node would be."""
    c = CONV[key]
    attrs = {k: c[k] for k in ("kh", "kw", "stride", "pads")}
    d = ir_ops.get("conv2d")
    shapes = [c["x"], (c["N"], c["kh"] * c["kw"] * c["x"][3])]
    return S.KernelSpec.make("conv2d", **d.lower(shapes, ["f32", wtype], d.shape(shapes, attrs), attrs))


def specs_for(wtype: str) -> dict[str, S.KernelSpec]:
    out = {k: S.linear(v["M"], v["N"], v["K"], wtype) for k, v in SHAPES.items()}
    out["embed"] = S.embed(EMBED["M"], EMBED["S"], EMBED["V"], EMBED["D"], wtype)
    out.update({k: conv_spec(k, wtype) for k in CONV})
    return out


def op_cases_for(ops: list[str]) -> dict[str, list[op_cases.Case]]:
    """The weightless cases of ``op_cases.CASES`` per kernel op (an op without one maps to an empty list)."""
    out: dict[str, list[op_cases.Case]] = {op: [] for op in ops}
    for c in op_cases.CASES:
        if op_cases.weightless(c) and c.spec().op in out:
            out[c.spec().op].append(c)
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
    if spec.op == "conv2d":
        a = dict(spec.attrs)
        B, H, W, C, N = (int(a[k]) for k in ("B", "H", "W", "C", "N"))
        _, _, M, K = S.conv_geometry(a)
        raw = sample_raw(wtype, (N, K), rng)
        w = _decoded(raw, wtype, (N, K))
        x = rng.standard_normal((B, H, W, C)).astype(np.float32)
        # Patches in (ky, kx, c) order, zero padded: the registry's reference conv2d (checked against torch).
        p = ir_ops.im2col_np(x.astype(np.float64), a).reshape(M, K)
        ref = p @ w.T
        # The same bound as linear over the K = kh*kw*C products of each output (padding adds exact zeros).
        tol = (K + 4) * U32 * (np.abs(p) @ np.abs(w).T) + 4 * U32 * np.abs(ref)
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
    return _run_all(executor, spec, inputs)[0]


def _run_all(executor, spec: S.KernelSpec, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Every output of one kernel call (a split has several)."""
    args = []
    for a in inputs:
        buf = executor.alloc(a.nbytes + 64)
        executor.upload(buf, a)
        args.append((buf, a.shape, str(a.dtype)))
    outs = [p for p in spec.params if p.is_output]
    for out in outs:
        nan = np.full(out.shape, np.nan, np.float32).astype(out.dtype)  # an element the kernel skips shows up
        obuf = executor.alloc(max(nan.nbytes, 4))
        executor.upload(obuf, nan)
        args.append((obuf, out.shape, out.dtype))
    executor.launch(spec.name, args)
    executor.synchronize()
    return [executor.download(a[0], p.shape, p.dtype).astype(np.float32) for a, p in zip(args[len(inputs) :], outs)]


def _verdict(got: np.ndarray, ref: np.ndarray, tol: np.ndarray, bound: str = "the f32 bound") -> tuple[str, str]:
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= tol)  # NaN counts as bad
    ratio = float(np.nanmax(np.where(np.isfinite(err), err / tol, np.inf)))
    if bad.any():
        return "failed", f"{int(bad.sum())}/{bad.size} elements out of tolerance (worst {ratio:.3g}x)"
    return "validated", f"max error {ratio:.3g}x of {bound}"


def _run_case(executor, c: op_cases.Case) -> tuple[str, str]:
    """Run one weightless case against the op registry's float64 reference (``op_cases.tolerance``)."""
    from sdcompile.quant.reference import dequantize, quantize

    spec = c.spec()
    # The executors take each argument in its parameter's shape (attention's [B*S, H*Dh], not the node's [B, S, W])
    # and storage dtype (a weight: its storage type's words); the reference sees the same (rounded) values.
    inputs, xs = [], []
    for x, p, s in zip(c.inputs(), spec.params, c.shapes):
        if p.kind == "raw":
            raw = quantize(x, p.dtype)
            inputs.append(_words(raw))
            xs.append(dequantize(raw, p.dtype, x.shape).astype(np.float32))
        else:
            inputs.append(x.reshape(p.shape).astype(p.dtype))
            xs.append(inputs[-1].astype(np.float32).reshape(s))
    wants = op_cases.reference_list(c, xs)
    outs = [p for p in spec.params if p.is_output]
    got = np.concatenate([g.reshape(-1) for g in _run_all(executor, spec, inputs)])
    want = np.concatenate([w.reshape(-1) for w in wants])
    tol = np.concatenate(
        [np.broadcast_to(op_cases.tolerance(w, p.dtype), w.shape).reshape(-1) for w, p in zip(wants, outs)]
    )
    return _verdict(got, want, tol, "the case's tolerance")


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


def _attempt(run: Callable[[], tuple[str, str]]) -> dict[str, str]:
    try:
        status, detail = run()
    except Exception as e:  # a kernel that crashes its launch is a failed kernel, not a crashed check
        status, detail = "failed", f"launch failed: {type(e).__name__}: {e}"
    return {"status": status, "detail": detail}


def check_target(
    target: str,
    types: list[str],
    progress: Callable[[str], None] | None = None,
    ops: list[str] | None = None,
) -> dict[str, Any]:
    """{type: {"gemv"|"gemm"|"embed"|"conv"|"conv_s2": {"status", "detail"}}, "ops": {op: {case: {"status",
    "detail"}}}} for one backend. ``ops``: the weightless kernel ops to check (default all; an empty list checks
    none and leaves the "ops" entry out)."""
    from sdcompile.kernels import supported_types

    say = progress or (lambda _m: None)
    full_ops = ops is None
    ops = list(WEIGHTLESS) if ops is None else list(ops)
    unknown = [op for op in ops if op not in WEIGHTLESS]
    if unknown:
        raise ValueError(f"not weightless kernel ops: {unknown} (choose from {', '.join(WEIGHTLESS)})")
    keys = [k for op in OPS for k in WEIGHT_CHECKS[op]]
    results: dict[str, Any] = {}
    have = set(supported_types())
    groups: dict[str, list[S.KernelSpec]] = {}
    for t in types:
        if t not in have:
            results[t] = {k: {"status": "no kernel", "detail": "no decoder for this type"} for k in keys}
        else:
            groups[t] = list(specs_for(t).values())
    cases = op_cases_for(ops)
    for op, cs in cases.items():
        if cs:
            groups[f"{OPS_KEY}:{op}"] = [c.spec() for c in cs]
    act_cases = ACT_CASES if full_ops else {}  # the storage types span every op: checked with all of them only
    for dt, cs in act_cases.items():
        groups[f"{ACT_KEY}:{dt}"] = [c.spec() for c in cs]
    if target == "vulkan":
        from runtime.executors.vulkan import find_adapter

        if find_adapter() is None:
            raise NoKernelError("kernels --check: no Vulkan adapter to validate on (install mesa-vulkan-drivers)")
    run_here = target != "cuda" or _gpu_present()

    def outcome(built: Any, run: Callable[[], tuple[str, str]]) -> dict[str, str]:
        if isinstance(built, Exception):
            return {"status": "no kernel", "detail": f"build failed: {built}"}
        if not run_here:
            archs = ", ".join(built["build"]["archs"] + built["build"]["ptx"])
            return {"status": "compiled", "detail": f"nvcc: {archs}; no GPU here to run it"}
        return _attempt(run)

    with tempfile.TemporaryDirectory(prefix=f"sdcompile-check-{target}-") as tmp:
        built_groups = _build_groups(target, groups, Path(tmp), say)
        executors: dict[Path, Any] = {}

        def executor(d: Path, built: Any):
            # One executor per build (the joint build serves every group), made on first use inside a check, so
            # an executor that cannot load the build fails that build's kernels instead of the whole check.
            if d not in executors:
                executors[d] = _executor(target, d, built)
            return executors[d]

        for t in (t for t in types if t in groups):
            d, built = built_groups[t]
            if run_here and not isinstance(built, Exception):
                say(f"{target} {t}: run")
            results[t] = {}
            for k, sp in specs_for(t).items():

                def run(sp=sp, d=d, built=built):
                    inputs, ref, tol = case(sp)
                    return _verdict(_run(executor(d, built), sp, inputs), ref, tol)

                results[t][k] = outcome(built, run)
        if ops:
            results[OPS_KEY] = {}
            for op, cs in cases.items():
                d, built = built_groups.get(f"{OPS_KEY}:{op}", (None, None))
                if cs and run_here and not isinstance(built, Exception):
                    say(f"{target} {op}: run")
                results[OPS_KEY][op] = {
                    c.spec().name: outcome(built, lambda c=c, d=d, built=built: _run_case(executor(d, built), c))
                    for c in cs
                }
            results[ACT_KEY] = {}
            for dt, cs in act_cases.items():
                d, built = built_groups[f"{ACT_KEY}:{dt}"]
                if run_here and not isinstance(built, Exception):
                    say(f"{target} {dt} activations: run")
                results[ACT_KEY][dt] = {
                    c.spec().name: outcome(built, lambda c=c, d=d, built=built: _run_case(executor(d, built), c))
                    for c in cs
                }
    return results


def _build_groups(target: str, groups: dict[str, list[S.KernelSpec]], tmp: Path, say) -> dict[str, tuple[Path, Any]]:
    """Build every group's kernels (a weight type's, an op's cases) in one build (one LLVM module, one nvcc run);
    if that fails, build each group alone so one broken kernel cannot hide the others."""
    if not groups:
        return {}
    say(f"{target}: building {len(groups)} groups ({sum(len(v) for v in groups.values())} kernels)")
    d = tmp / "all"
    d.mkdir()
    try:
        built = _build(target, [sp for specs in groups.values() for sp in specs], d)
        return {g: (d, built) for g in groups}
    except (SdcompileError, ToolchainError, Exception) as e:  # noqa: B014 (TVM raises its own error types)
        say(f"{target}: joint build failed ({type(e).__name__}); building each group alone")
    out = {}
    for i, (g, specs) in enumerate(groups.items()):
        d = tmp / f"g{i}"
        d.mkdir()
        try:
            out[g] = (d, _build(target, specs, d))
        except Exception as e:
            out[g] = (d, e)
    return out


def type_results(per_target: dict[str, Any]) -> dict[str, dict[str, dict[str, str]]]:
    """The per-weight-type part of one backend's results."""
    return {t: r for t, r in per_target.items() if t not in (OPS_KEY, ACT_KEY)}


def op_state(cases: dict[str, dict[str, str]]) -> tuple[str, str]:
    """One weightless op's status over its cases: passing only if it has cases and every one passed."""
    if not cases:
        return "no check", "no case in sdcompile/kernels/op_cases.py checks it"
    bad = {name: r for name, r in cases.items() if r["status"] not in PASS}
    if bad:
        statuses = sorted({r["status"] for r in bad.values()})
        return statuses[0], "; ".join(f"{name}: {r['status']} ({r['detail']})" for name, r in bad.items())
    statuses = {r["status"] for r in cases.values()}
    return ("validated" if "validated" in statuses else "compiled"), f"{len(cases)} case{'s' if len(cases) > 1 else ''}"


def _brief(cases: dict[str, dict[str, str]]) -> str:
    """One line on failing cases: how many, and the first one's status and the first line of its detail."""
    bad = [(n, r) for n, r in cases.items() if r["status"] not in PASS]
    if not bad:
        return op_state(cases)[1]
    name, r = bad[0]
    detail = (r["detail"].strip().splitlines() or [""])[0][:160]
    return f"{len(bad)} of {len(cases)} cases failed, e.g. {name}: {r['status']} ({detail})"


def table_from(results: dict[str, dict], base: dict[str, Any]) -> dict[str, Any]:
    """The capability table: per backend, the types whose every check of an op passed, and why the others have
    none; the ops (`"ops"`) whose checks passed. What this run did not check keeps its entry in ``base``."""
    table = json.loads(json.dumps(base))
    for target, res in results.items():
        entry = table[target]
        per_type = type_results(res)
        if per_type:
            for op, keys in WEIGHT_CHECKS.items():
                entry[op] = sorted(t for t, r in per_type.items() if all(r[k]["status"] in PASS for k in keys))
            why = {}
            for t, r in sorted(per_type.items()):
                failing = [f"{k}: {v['status']} ({v['detail']})" for k, v in r.items() if v["status"] not in PASS]
                if failing:
                    why[t] = "; ".join(failing)
            entry["why_not"] = why or {"*": "no kernel for this type on this backend yet"}
            entry["checked"] = {t: {k: v["status"] for k, v in r.items()} for t, r in sorted(per_type.items())}
        if ACT_KEY in res:  # f32 always; a 16-bit storage type where every case of it passed
            entry[ACT_KEY] = ["float32"] + [dt for dt, cs in res[ACT_KEY].items() if op_state(cs)[0] in PASS]
            entry["act_why_not"] = {dt: _brief(cs) for dt, cs in res[ACT_KEY].items() if op_state(cs)[0] not in PASS}
            if not entry["act_why_not"]:
                entry.pop("act_why_not")
        checked_ops = res.get(OPS_KEY, {})
        claimed = set(entry.get("ops", []))
        ops = {op for op in OPS if entry.get(op)}  # a weight op is there when some type has its kernel
        for op in WEIGHTLESS:
            if op in checked_ops:
                if op_state(checked_ops[op])[0] in PASS:
                    ops.add(op)
            elif op in claimed:  # not checked in this run
                ops.add(op)
        entry["ops"] = sorted(ops)
        if checked_ops:
            done = entry.get("checked_ops", {}) | {
                op: {name: r["status"] for name, r in cases.items()} for op, cases in checked_ops.items()
            }
            entry["checked_ops"] = {op: done[op] for op in sorted(done)}
            why_ops = {op: w for op, w in entry.get("ops_why_not", {}).items() if op not in checked_ops}
            for op, cases in checked_ops.items():
                status, detail = op_state(cases)
                if status not in PASS:
                    why_ops[op] = f"{status}: {detail}"
            if why_ops:
                entry["ops_why_not"] = {op: why_ops[op] for op in sorted(why_ops)}
            else:
                entry.pop("ops_why_not", None)
    return table


def claims_without_kernel(table: dict[str, Any], results: dict[str, dict]) -> list[str]:
    """(backend, op, type) the table lists as native, and (backend, op) it lists in "ops", although the check did
    not pass."""
    wrong = []
    for target, res in results.items():
        claims = table.get(target, {})
        per_type = type_results(res)
        for op, keys in WEIGHT_CHECKS.items():
            for t in claims.get(op, []):
                r = per_type.get(t)
                if r is None:
                    continue
                bad = [k for k in keys if r[k]["status"] not in PASS]
                if bad:
                    wrong.append(
                        f"{target} {op} {t}: " + "; ".join(f"{k} {r[k]['status']} ({r[k]['detail']})" for k in bad)
                    )
        for dt in claims.get(ACT_KEY, []):
            cs = res.get(ACT_KEY, {}).get(dt)
            if cs is not None and op_state(cs)[0] not in PASS:
                wrong.append(f"{target} {dt} activations: {op_state(cs)[1]}")
        checked_ops = res.get(OPS_KEY, {})
        for op in claims.get("ops", []):
            if op in checked_ops:
                status, detail = op_state(checked_ops[op])
                if status not in PASS:
                    wrong.append(f"{target} {op}: {status} ({detail})")
    return wrong


def write_table(table: dict[str, Any], path: Path = TABLE) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    os.replace(tmp, path)


MARK = {"validated": "native", "compiled": "native (compiled)"}


def render(results: dict[str, dict]) -> str:
    """A type x backend coverage table (native where every check of the type passed, else what failed), then an
    op x backend table: per weight op how many checked types have its kernel, per weightless op its status."""
    targets = list(results)
    lines = ["| type | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for t in QUANT_TYPES:
        cells = []
        for tg in targets:
            r = type_results(results[tg]).get(t)
            if r is None:
                cells.append("—")
                continue
            states = {v["status"] for v in r.values()}
            if states <= set(PASS):
                cells.append(MARK["validated" if "validated" in states else "compiled"])
            elif len(states) == 1:
                cells.append(states.pop())
            else:
                cells.append(", ".join(f"{k}: {v['status']}" for k, v in r.items() if v["status"] not in PASS))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "| op | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for op in S.KERNELS:
        cells = []
        for tg in targets:
            if op in WEIGHT_CHECKS:
                per_type = type_results(results[tg])
                if not per_type:
                    cells.append("—")
                    continue
                rs = list(per_type.values())
                ok = [r for r in rs if all(r[k]["status"] in PASS for k in WEIGHT_CHECKS[op])]
                compiled = any(r[k]["status"] == "compiled" for r in ok for k in WEIGHT_CHECKS[op])
                cells.append(f"{MARK['compiled' if compiled else 'validated']}: {len(ok)}/{len(rs)} types")
                continue
            cases = results[tg].get(OPS_KEY, {}).get(op)
            if cases is None:
                cells.append("—")
                continue
            status, detail = op_state(cases)
            cells.append(f"{MARK[status]}, {detail}" if status in PASS else f"{status}: {detail}")
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    if any(ACT_KEY in results[tg] for tg in targets):
        lines += ["", "| activations | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
        for dt in ACT_CASES:
            cells = []
            for tg in targets:
                cs = results[tg].get(ACT_KEY, {}).get(dt)
                status, detail = op_state(cs) if cs is not None else ("—", "")
                cells.append("—" if cs is None else f"{MARK[status]}, {detail}" if status in PASS else status)
            lines.append(f"| {dt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
