"""Human-readable compile reports and the `bench` measurement."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any

from sdcompile.passes.memory_plan import fmt_bytes

_SHORT_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int32": "i32", "int64": "i64"}


def signature(name: str, plan: dict[str, Any]) -> str:
    """``name(input dtype[shape], ...) -> output dtype[shape], ...`` of one compiled function."""

    def args(values: dict[str, Any]) -> str:
        return ", ".join(
            f"{k} {_SHORT_DTYPES.get(v['dtype'], v['dtype'])}[{', '.join(map(str, v['shape']))}]"
            for k, v in values.items()
        )

    return f"{name}({args(plan['inputs'])}) -> {args(plan['outputs'])}"


def _fusion_summary(fuse: dict) -> str:
    """The rules that fired with their counts, or that none did and, where some declined, how many and one reason
    (the lifters of some families emit nodes already fused: then nothing is left to fold)."""
    if fuse["fired"]:
        return ", ".join(f"{k} ×{v}" for k, v in sorted(fuse["fired"].items()))
    declined = fuse.get("declined") or {}
    if not declined:
        return "no rule fired (nothing left to fold)"
    where, why = next(iter(sorted(declined.items())))
    rule, _, value = where.partition("@")
    return f"no rule fired ({len(declined)} declined, e.g. {rule} at {value}: {why})"


def _ignored_lines(ignored: dict[str, str]) -> list[str]:
    """The tensors a compile left out, one line per reason with the count and the first names."""
    if not ignored:
        return ["ignored   none: every tensor of the model is used"]
    by_reason: dict[str, list[str]] = {}
    for name, why in ignored.items():
        by_reason.setdefault(why, []).append(name)
    lines = []
    for i, (why, names) in enumerate(sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))):
        shown = ", ".join(sorted(names)[:2]) + (", ..." if len(names) > 2 else "")
        count = f"{len(names)} tensor{'s' if len(names) != 1 else ''}"
        lines.append(f"{'ignored' if i == 0 else '':<10}{count}: {why} ({shown})")
    return lines


def _names(ds: list[dict[str, Any]]) -> str:
    shown = ", ".join(d["tensor"] for d in ds[:2])
    return f"({shown}{', ...' if len(ds) > 2 else ''})"


def _count(n: int) -> str:
    return f"{n} tensor{'s' if n != 1 else ''}"


_F32_ALWAYS = ("skip list", "read as f32")
_BLOCK = re.compile(r"; row of (\d+) not a multiple of (\w+)'s block (\d+), kept (\w+)")


def _block_reason(d: dict[str, Any]) -> str:
    m = _BLOCK.search(d["why"])
    return f"row of {m[1]} not a multiple of {m[2]}'s block {m[3]}, kept {m[4]}" if m else d["why"]


def _quantize_lines(m: dict[str, Any]) -> list[str]:
    """What each --tensor-type-rules entry and --type did, wherever it did less than asked: a rule that matched no
    tensor (a typo, or a file's name instead of the canonical one), tensors a rule or --type could not take (rows
    short of a block, norms and biases kept f32, weights already quantized). The per-tensor list is in --json; these
    are the lines a user must see without asking for it."""
    opts = m.get("options") or {}
    decisions = m["report"]["quantize"].get("tensors") or []
    lines: list[str] = []
    for rule in opts.get("tensor_type_rules") or []:
        pattern, qtype = rule.rsplit("=", 1)
        matching = [
            d for d in decisions if re.search(pattern, d["tensor"]) or ("file" in d and re.search(pattern, d["file"]))
        ]
        mine = [d for d in matching if d["why"].startswith(f"rule {rule}")]
        applied = [d for d in mine if "; row of" not in d["why"]]
        short = [d for d in mine if "; row of" in d["why"]]
        kept = [d for d in matching if d["why"].startswith(_F32_ALWAYS)]
        taken = [d for d in matching if d["why"].startswith("rule ") and d not in mine]
        if not matching:
            parts = [
                "matched no tensor: rules match canonical names or the file's own, which `sdcompile inspect "
                f"--tensors MODEL` lists side by side (e.g. {decisions[0]['tensor'] if decisions else '-'})"
            ]
        else:
            # A rule that took some tensors also matches their biases, kept f32 as always: only say why a rule
            # took nothing, or which of its weights could not take its type.
            parts = [f"{qtype} for {_count(len(applied))}"] if applied else ["applied to no tensor"]
            if short:
                parts.append(f"{_count(len(short))} not: {_block_reason(short[0])} {_names(short)}")
            if kept and not mine:
                parts.append(
                    f"{_count(len(kept))} kept f32 (norms, biases and position tables stay f32: the skip list, or "
                    f"their op reads f32) {_names(kept)}"
                )
            if taken and not mine:
                parts.append(f"{_count(len(taken))} taken by an earlier rule (first match wins) {_names(taken)}")
        lines.append(f"{'rules' if not lines else '':<10}'{rule}': " + "; ".join(parts))
    t = opts.get("type")
    if t:
        t = t.lower()
        by_type = [d for d in decisions if d["why"].startswith(f"default --type {t}")]
        short = [d for d in by_type if "; row of" in d["why"]]
        quantized = [d for d in decisions if d["why"].startswith("kept: already")]
        parts = []
        if short:
            parts.append(f"not applied to {_count(len(short))}: {_block_reason(short[0])} {_names(short)}")
        if quantized:
            stored = ", ".join(sorted({d["from"] for d in quantized}))
            parts.append(
                f"not applied to {_count(len(quantized))} already {stored} (requantizing compounds the error; a "
                f"--tensor-type-rules rule naming them does it) {_names(quantized)}"
            )
        if parts:
            lines.append(f"{'' if lines else 'type':<10}--type {t} " + "; ".join(parts))
    return lines


# SD functions in the order a pipeline calls them (a manifest read back from disk has its keys sorted)
_CALL_ORDER = ("encode_text", "encode_image_", "denoise_", "decode_latents_")


def in_call_order(names) -> list[str]:
    def key(n: str) -> tuple[int, str]:
        return next((i for i, p in enumerate(_CALL_ORDER) if n.startswith(p)), len(_CALL_ORDER)), n

    return sorted(names, key=key)


def render_compile_report(m: dict[str, Any], out: Path) -> str:
    r = m["report"]
    q = r["quantize"]["types"]
    src = m["source"]
    sizes = (m.get("pipeline") or {}).get("sizes") or (src.get("config") or {}).get("sizes") or []
    names = f", {src['convention']} names" if src.get("convention") else ""
    lines = [
        f"compiled {src['file']} ({src['format']}, {src['family']}{names}) for {m['target']}"
        + (f", image sizes {', '.join(f'{w}x{h}' for w, h in sizes)}" if sizes else ""),
        "",
    ]
    for i, name in enumerate(in_call_order(m["functions"])):
        lines.append(f"{'functions' if i == 0 else '':<10}{signature(name, m['functions'][name])}")
    lines += [f"assumed   {a}" for a in src.get("assumptions") or []]
    lines += _ignored_lines(src.get("ignored") or {})
    mem = m["memory"]
    by_comp = mem.get("weights_by_component") or {}
    lines += [
        "weights   "
        + ", ".join(f"{t}×{n}" for t, n in q.items())
        + (f" ({', '.join(f'{c} {fmt_bytes(b)}' for c, b in by_comp.items())})" if len(by_comp) > 1 else ""),
        *_quantize_lines(m),
        f"fusion    {r['fuse']['nodes']} kernels launched; " + _fusion_summary(r["fuse"]),
    ]
    leg = r["legalize"]
    lines.append(
        f"legalize  {leg['backend']}: {leg['native']} weight reads native, "
        f"{len(leg['fallbacks'])} fallbacks (policy {leg['policy']})"
    )
    for d in leg["fallbacks"]:
        lines.append(f"          {d['tensor']}: {d['from']} -> {d['to']} by {d['step']}: {d['why']}")
    if leg.get("tiled_attention"):
        lines.append(
            f"          {len(leg['tiled_attention'])} attention nodes tiled (online softmax over key tiles: more keys "
            f"than one row of probabilities in workgroup memory holds), e.g. {leg['tiled_attention'][0]}"
        )
    if r.get("mma"):
        a = r["mma"]
        lines.append(
            f"products  {a['compute']} for {a['nodes'] - a.get('int8', 0) - a.get('int16', 0)} linear/conv2d/attention nodes "
            f"({a.get('attention', 0)} attention"
            + (f", {a['quantized']} of quantized weights decoded to bf16" if a.get("quantized") else "")
            + ")"
            + (f", int8 for {a['int8']} q8_0/q4_0 nodes" if a.get("int8") else "")
            + (f", int16 for {a['int16']} float-weight nodes" if a.get("int16") else "")
            + (f", {a['kept_f32']} kept ({a['why']})" if a["kept_f32"] else "")
            + (f"; {a['why']}" if not a["kept_f32"] and a["why"] else "")
        )
    if r.get("pack_weights"):
        from sdcompile.kernels.layouts import SUMMARY

        for layout, a in r["pack_weights"]["layouts"].items():
            lines.append(
                f"layout    {a['weights']} weights ({fmt_bytes(a['bytes'])}) stored {SUMMARY.get(layout, '')} ({layout})"
            )
    if r.get("act_dtype"):
        a = r["act_dtype"]
        lines.append(
            f"activations {_SHORT_DTYPES.get(a['dtype'], a['dtype'])} storage for {a['values']} values, f32 math; "
            f"{a['kept_f32']} kept f32 (function inputs and outputs, and views of them)"
        )
        for fn, why in sorted((a.get("functions_kept_f32") or {}).items()):
            lines.append(f"activations f32 in every {fn} function: {why}")
    if r.get("round_early"):
        a = r["round_early"]
        lines.append(
            f"activations bf16 storage for {a['values']} values every reader rounds to bf16 anyway (same results, "
            f"{fmt_bytes(a['bytes_saved'])} less)"
        )
    budget = mem.get("budget_bytes")
    lines.append(
        f"memory    peak {fmt_bytes(mem['peak_bytes'])} = weights {fmt_bytes(mem['weights_bytes'])} + activations "
        f"{fmt_bytes(mem['activation_bytes'])} in {mem['slots']} slots (without reuse "
        f"{fmt_bytes(mem['activation_bytes_without_reuse'])}) + inputs {fmt_bytes(mem['input_bytes'])}"
    )
    per_fn = mem.get("functions") or {}
    if len(per_fn) > 1:
        # the functions run one after another and share the slot buffers: the peak holds the largest of them
        width = max(len(n) for n in per_fn)
        lines.append("          activations per function (they run in turn, sharing the slots):")
        for name in in_call_order(per_fn):
            f = per_fn[name]
            held = ""
            if mem.get("offload") and "weights_bytes" in f:
                held = f", with weights {fmt_bytes(f['weights_bytes'])} ({', '.join(f.get('components', []))})"
            lines.append(
                f"            {name:<{width}}  {fmt_bytes(f['activation_bytes']):>10} in {f['slots']} slots "
                f"(without reuse {fmt_bytes(f['activation_bytes_without_reuse'])}){held}"
            )
    if mem.get("offload"):
        lines.append(
            "          offload: only the running function's components are on the device (all resident: "
            f"{fmt_bytes(mem.get('resident_peak_bytes', 0))})"
        )
    tiling = mem.get("vae_tiling")
    if tiling:
        lines.append(
            f"          VAE decoded and encoded in tiles of {tiling['tile']} latent pixels (overlap {tiling['overlap']}) "
            "at " + ", ".join(sorted(set(tiling.get("functions") or {}) | set(tiling.get("encode_functions") or {})))
        )
    for t in mem.get("tried") or []:
        lines.append(f"          did not fit: {t}")
    lines.append(
        "          budget "
        + (f"{fmt_bytes(budget)} ({mem.get('budget_source', '')})" if budget else f"none ({mem.get('budget_source')})")
    )
    k = m["kernels"]
    build = k.get("build") or {}
    extra = f", archs {', '.join(build.get('archs', []) + build.get('ptx', []))}" if build else ""
    lines.append(f"kernels   {len(k['kernels'])} distinct for {k['target']}{extra}")
    tuning = r.get("tuning")
    if tuning:  # `sdcompile tune` records this build replayed instead of the built-in schedule rules
        used = tuning["kernels"]
        lines.append(
            f"          {len(used)} with tuning records ({tuning['target']}/{tuning['machine']}), the rest built-in rules"
        )
        for name, t in used.items():
            speed = f": {t['speedup']:.2f}x the built-in rule when tuned" if t.get("speedup") else ""
            lines.append(f"            {name}{speed}")
        if tuning.get("stale"):
            lines.append(
                f"          {len(tuning['stale'])} stale records ignored (kernel or its built-in rule changed since "
                f"tuned; run `sdcompile tune` again): {', '.join(tuning['stale'][:3])}"
                + (", ..." if len(tuning["stale"]) > 3 else "")
            )
    lines.append(
        f"artifact  {out} ({len(m['files'])} files, {fmt_bytes(sum(f['bytes'] for f in m['files'].values()))})"
    )
    return "\n".join(lines)


format_compile = render_compile_report


def pick_function(path: Path, functions: dict[str, Any], function: str | None) -> str:
    """The function a `run`/`bench` addresses: the one named, or the artifact's only one."""
    from sdcompile.errors import OptionError

    if function is None:
        if len(functions) == 1:
            return next(iter(functions))
        raise OptionError(f"{path} holds functions {', '.join(in_call_order(functions))}: pick one with --function")
    if function not in functions:
        raise OptionError(f"{path} has no function {function!r}; it holds {', '.join(in_call_order(functions))}")
    return function


def random_inputs(plan: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Inputs matching a function's signature: token ids within the vocabulary for integer inputs, standard normal
    values for the rest."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in plan["inputs"].items():
        dt = np.dtype(spec["dtype"])
        if dt.kind in "iu":
            out[name] = rng.integers(0, int(spec.get("max_value") or 1) + 1, spec["shape"]).astype(dt)
        else:
            out[name] = rng.standard_normal(spec["shape"]).astype(dt)
    return out


def bench_artifact(
    path: Path, repeat: int = 20, warmup: int = 3, threads: int | None = None, function: str | None = None
) -> dict[str, Any]:
    import runtime
    from runtime.model import read_manifest

    fn = pick_function(path, read_manifest(path)["functions"], function)  # before the slower load
    model = runtime.load(path, num_threads=threads)
    plan = model.functions[fn]
    inputs = random_inputs(plan)
    for _ in range(warmup):
        model.call(fn, inputs)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.call(fn, inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    dev = model.device
    return {
        "artifact": str(path),
        "function": fn,
        "device": dev.get("name") or dev.get("adapter") or dev.get("backend"),
        "target": model.manifest["target"],
        "batch": next(iter(plan["inputs"].values()))["shape"][0],
        "repeat": repeat,
        "min_ms": min(times),
        "median_ms": statistics.median(times),
        "max_ms": max(times),
    }
