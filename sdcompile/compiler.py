"""The compile driver: file -> tensor store -> IR -> passes -> kernels + plan -> artifact."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from sdcompile import __version__
from sdcompile.codegen.artifact import (
    FORMAT_VERSION,
    LUTS_FILE,
    WEIGHTS_FILE,
    load_signing_key,
    recover_output,
    sha256_file,
    write_artifact,
    write_luts,
    write_weights_gguf,
)
from sdcompile.codegen.plan import build_plans, plan_luts
from sdcompile.errors import OptionError
from sdcompile.ir import Module
from sdcompile.ir.weights import raw_bytes
from sdcompile.models import detect_family, lift_module
from sdcompile.models.inputs import open_model
from sdcompile.passes import lora as lora_pass
from sdcompile.passes.context import CompileOptions, PassContext
from sdcompile.passes.memory_plan import check_module, fmt_bytes
from sdcompile.passes.pipeline import PIPELINE, run_pipeline


class _Progress:
    """A tqdm bar over the compile stages, or nothing when progress is off."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="compile", unit="step", leave=False, dynamic_ncols=True)

    def step(self, what: str, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _memory_choices(options: CompileOptions, family: str) -> list[tuple[int | None, bool]]:
    """(VAE tile, offload) configurations to try, cheapest in speed first: whole decode and resident weights, then
    tiles, then offload, then both; the user's "on"/"off" settings prune the list."""
    tiles = [None]
    if family == "sd" and options.vae_tiling != "off":
        tiles = [options.vae_tile] if options.vae_tiling == "on" else [None, options.vae_tile]
    offloads = {"on": [True], "off": [False]}.get(options.offload, [False, True])
    if family != "sd":
        offloads = [False] if options.offload != "on" else [True]
    order = [(t, o) for o in offloads for t in tiles]
    return order


def _describe_choice(tile: int | None, offload: bool) -> str:
    parts = [f"--vae-tiling (tiles of {tile} latent pixels)" if tile else "", "--offload" if offload else ""]
    return " + ".join(p for p in parts if p) or "as is"


def compile_graph_passes(
    path: Path | None, options: CompileOptions, dump_ir: Path | None = None, on_pass=None
) -> tuple[Module, PassContext, Any]:
    """Open the model, lift its module and run the pass pipeline on every function; then plan memory for the
    module as a whole (the functions share slot buffers and run one after another). Where the plan does not fit
    the budget or a buffer limit, the VAE is decoded in tiles and/or components are offloaded, in that order, as
    the options allow; when nothing fits, the error lists what each configuration would need."""
    from sdcompile.errors import MemoryBudgetError

    store, configs = open_model(path, options)
    family = "sd" if detect_family(store) == "sd" else "other"
    tried: list[str] = []
    last_error: MemoryBudgetError | None = None
    for tile, offload in _memory_choices(options, family):
        mod = lift_module(store, options, configs, vae_tile=tile)
        mod.meta["lora"] = lora_pass.merge(mod, options.loras, options.lora_apply_mode)
        ctx = PassContext(options)
        reports: dict[str, dict] = {}
        for name, g in list(mod.functions.items()):
            ctx.report = {}
            mod.functions[name] = run_pipeline(g, ctx, dump_ir=dump_ir / name if dump_ir else None, on_pass=on_pass)
            reports[name] = ctx.report
        _check_shared_weights(mod)
        ctx.report = _merge_reports(reports)
        try:
            check_module(mod.functions, ctx, offload=offload)
        except MemoryBudgetError as e:
            last_error = e
            peak = ctx.report["memory"]["peak_bytes"]
            tried.append(f"{_describe_choice(tile, offload)}: peak {fmt_bytes(peak)}")
            continue
        ctx.report["memory"]["vae_tiling"] = (mod.meta.get("vae_tiling") or mod.meta.get("vae_encode_tiling")) and {
            "tile": tile,
            "overlap": options.vae_tile_overlap,
            "functions": mod.meta.get("vae_tiling") or {},
            "encode_functions": mod.meta.get("vae_encode_tiling") or {},
        }
        if tried:
            ctx.report["memory"]["tried"] = tried
        return mod, ctx, store
    assert last_error is not None
    if len(tried) > 1:
        raise MemoryBudgetError(f"{last_error} Tried: " + "; ".join(tried))
    raise last_error


def _check_shared_weights(mod: Module) -> None:
    """Functions hold copies of the weights they share and the passes must treat the copies alike: the artifact
    stores one. A copy stored in another type or order would be read wrongly by one function's kernels."""
    seen: dict[str, tuple] = {}
    for fn, g in mod.functions.items():
        for v in g.weights():
            key = (v.dtype, tuple(v.shape), v.data.layout if v.data is not None else "")
            if seen.setdefault(v.name, (fn, key))[1] != key:  # an internal bug, not a user error
                raise AssertionError(f"weight {v.name}: {seen[v.name]} in one function, {key} in {fn}")


# the mma report's counts, summed over functions (one list: a count missing from the start values was counted twice)
MMA_COUNTS = ("nodes", "attention", "kept_f32", "quantized", "int8", "int16")


def _merge_reports(reports: dict[str, dict]) -> dict:
    """One report for the module: quantize decisions per tensor (identical across functions that share a weight),
    fusion and legalization summed over functions."""
    out: dict[str, Any] = {"quantize": {"types": {}, "tensors": []}, "fuse": {"fired": {}, "declined": {}, "nodes": 0}}
    seen: set[str] = set()
    fallbacks: list[dict] = []
    tiled: list[str] = []
    native = 0
    for name, rep in reports.items():
        for d in rep["quantize"]["tensors"]:
            if d["tensor"] not in seen:
                seen.add(d["tensor"])
                out["quantize"]["tensors"].append(d)
                out["quantize"]["types"][d["to"]] = out["quantize"]["types"].get(d["to"], 0) + 1
        for k, v in rep["fuse"]["fired"].items():
            out["fuse"]["fired"][k] = out["fuse"]["fired"].get(k, 0) + v
        out["fuse"]["declined"].update(rep["fuse"]["declined"])
        out["fuse"]["nodes"] += rep["fuse"]["nodes"]
        native += rep["legalize"]["native"]
        fallbacks += [f for f in rep["legalize"]["fallbacks"] if f not in fallbacks]
        tiled += [f"{name}:{node}" for node in rep["legalize"].get("tiled_attention", [])]
        out["legalize"] = dict(rep["legalize"])
        if "mma" in rep:
            m = rep["mma"]
            a = out.setdefault("mma", dict(m, **dict.fromkeys(MMA_COUNTS, 0), why=""))
            for k in MMA_COUNTS:
                a[k] += m.get(k, 0)
            # every function's reasons, once each ("no effect" only where no function's products changed)
            prefix = f"--compute {m['compute']} has no effect: "
            parts = [w for w in (a["why"].removeprefix(prefix), m["why"].removeprefix(prefix)) if w]
            a["why"] = "; ".join(dict.fromkeys(p for w in parts for p in w.split("; ")))
            if not a["nodes"] and a["why"]:
                a["why"] = prefix + a["why"]
        if "pack_weights" in rep:
            out.setdefault("pack_weights", {"tensors": {}})["tensors"].update(rep["pack_weights"]["tensors"])
        if "act_dtype" in rep:
            a = out.setdefault("act_dtype", {"dtype": rep["act_dtype"]["dtype"], "values": 0, "kept_f32": 0})
            a["values"] += rep["act_dtype"]["values"]
            a["kept_f32"] += rep["act_dtype"]["kept_f32"]
        if "round_early" in rep:
            a = out.setdefault("round_early", {"values": 0, "bytes_saved": 0})
            a["values"] += rep["round_early"]["values"]
            a["bytes_saved"] += rep["round_early"]["bytes_saved"]
    out["quantize"]["types"] = dict(sorted(out["quantize"]["types"].items()))
    if "pack_weights" in out:  # weights the functions share, once each
        layouts: dict[str, dict[str, int]] = {}
        for layout, nbytes in out["pack_weights"].pop("tensors").values():
            rec = layouts.setdefault(layout, {"weights": 0, "bytes": 0})
            rec["weights"] += 1
            rec["bytes"] += nbytes
        out["pack_weights"]["layouts"] = dict(sorted(layouts.items()))
    if "legalize" in out:
        out["legalize"]["native"] = native
        out["legalize"]["fallbacks"] = fallbacks
        out["legalize"]["tiled_attention"] = tiled
    return out


def _default_budget(target: str) -> tuple[int | None, str]:
    """The probed device limit at compile time, where there is one to probe."""
    if target in ("cpu", "vulkan"):
        # lavapipe and integrated adapters share system memory; a discrete Vulkan GPU is checked again at load.
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) * 1024, "system memory (MemTotal)"
        except OSError:
            pass
        return None, "not probed"
    from runtime.device import probe_cuda

    devs = probe_cuda()
    if devs:
        return min(d["total_mem"] for d in devs), f"CUDA device {devs[0]['name']}"
    return None, "no CUDA device here; checked again when the artifact loads"


def compile_model(
    path: str | Path | None,
    out_dir: str | Path,
    options: CompileOptions,
    *,
    progress: bool = False,
    dump_ir: Path | None = None,
    sign_key: str | Path | None = None,
) -> dict[str, Any]:
    path, out_dir = (Path(path) if path is not None else None), Path(out_dir)
    # A compile killed between its renames left the old artifact beside -o: put it back before judging -o.
    recover_output(out_dir.resolve())
    check_output_dir(out_dir)
    key = load_signing_key(sign_key) if sign_key is not None else None
    if options.target not in ("cpu", "vulkan", "cuda"):
        raise OptionError(f"unknown target {options.target!r}; choose cpu, vulkan or cuda")
    if options.vae_tile_overlap is None:  # a quarter of the tile, as stable-diffusion.cpp's default tiling
        options.vae_tile_overlap = options.vae_tile // 4
    if not 0 <= options.vae_tile_overlap < options.vae_tile // 2 or options.vae_tile < 4:
        raise OptionError(
            f"VAE tiles of {options.vae_tile} latent pixels with an overlap of {options.vae_tile_overlap}: the tile "
            "must be at least 4 and the overlap less than half of it (the default is 32 with 8)"
        )
    budget_source = "--memory-budget"
    if options.memory_budget is None:
        options.memory_budget, budget_source = _default_budget(options.target)
    bar = _Progress(progress, total=len(PIPELINE) + 4)
    try:
        bar.step("lift", 0)
        mod, ctx, store = compile_graph_passes(path, options, dump_ir, on_pass=bar.step)
        ctx.report["memory"]["budget_source"] = budget_source
        lora_record, lora_report = _lora_records(mod)
        specs, plans = build_plans(mod.functions)
        bar.step("plan")
        pool = mod.weights()
        weights = [(v.name, v.dtype, v.shape) for v in sorted(pool.values(), key=lambda v: v.name)]

        manifest: dict[str, Any] = {
            "format": "sdcompile-artifact",
            "format_version": FORMAT_VERSION,
            "sdcompile_version": __version__,
            "tvm_version": _tvm_version(),
            "source": {
                **_source_hashes(path, options),
                "format": store.format,
                "family": mod.meta.get("family"),
                "convention": next(iter(mod.functions.values())).meta.get("convention"),
                "config": mod.meta.get("config"),
                "assumptions": mod.meta.get("assumptions", []),
                "ignored": mod.meta.get("ignored", {}),
            },
            "target": options.target,
            "options": {
                "type": options.type,
                "tensor_type_rules": [f"{r}={t}" for r, t in options.tensor_type_rules],
                "fallback_policy": options.fallback_policy,
                "batch": options.batch,
                "act_type": options.act_type,
                "compute": options.compute,
                "memory_budget": options.memory_budget,
            },
            "functions": plans,
            "weights": {
                "file": WEIGHTS_FILE,
                "tensors": {n: _tensor_record(pool[n]) for n, _, _ in weights},
            },
            "memory": ctx.report["memory"],
            "report": {
                k: ctx.report[k]
                for k in ("quantize", "fuse", "legalize", "mma", "pack_weights", "act_dtype", "round_early")
                if k in ctx.report
            },
            "lora": lora_record,
        }
        if lora_report is not None:
            manifest["report"]["lora"] = lora_report

        def fill(tmp: Path) -> None:
            manifest["kernels"] = _build_kernels(specs, options, tmp, bar, manifest["report"])
            values = pool
            write_weights_gguf(tmp / WEIGHTS_FILE, [(n, t, s, raw_bytes(values[n])) for n, t, s in weights])
            luts = plan_luts(specs)
            if luts:  # only i-quant kernels read tables; other artifacts keep their exact former contents
                manifest["luts"] = write_luts(tmp / LUTS_FILE, luts)
            _write_extras(tmp, manifest, mod)
            bar.step("weights")

        write_artifact(out_dir, manifest, fill, sign_key=key)
        bar.step("done")
    finally:
        bar.close()
    return manifest


def _tensor_record(v) -> dict[str, Any]:
    """A weight's manifest record; ``layout`` only where a pass packed it (its bytes are not row-major)."""
    rec: dict[str, Any] = {"dtype": v.dtype, "shape": list(v.shape), "component": v.component}
    if v.data is not None and v.data.layout:
        rec["layout"] = v.data.layout
    return rec


def _lora_records(mod: Module) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The manifest's ``lora`` record (what a runtime LoRA needs: every adaptable weight with its aliases, and the
    weights without a hook with the reason) and the report's (the merged LoRAs, measured requantization error)."""
    rec = mod.meta["lora"]
    unhooked: dict[str, str] = {}
    for g in mod.functions.values():
        unhooked.update(g.meta.get("lora_hooks", {}).get("unhooked", {}))
    record = {
        "mode": rec["mode"],
        "targets": rec["targets"],
        "ignored": rec["ignored"],
        "unhooked": dict(sorted(unhooked.items())),
    }
    if not rec["files"]:
        return record, None
    report = {k: rec[k] for k in ("mode", "files", "notes")}
    report["weights"] = len(rec["merged"])
    report["requantization"] = lora_pass.requantization_error(mod, rec["merged"])
    return record, report


def check_output_dir(out: Path) -> None:
    """Refuse an unusable -o before any work: an existing file, a folder that holds something other than an
    artifact (which would be replaced), a parent folder that cannot be written."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"-o {out}: a file of that name exists; choose a new directory name for the artifact")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise OptionError(f"-o {out}: the folder exists and is not an sdcompile artifact; choose another -o")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OptionError(f"-o {out}: the folder {parent.name or parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OptionError(f"-o {out}: cannot write in {parent}; choose a writable location")


def _source_hashes(path: Path | None, options: CompileOptions) -> dict[str, Any]:
    """The input files (a checkpoint, a diffusers directory's weights and configs, separate component files) by
    name with their SHA-256, and one hash over all of them; names only, never this machine's paths."""
    import hashlib

    files: list[tuple[str, Path]] = []
    if path is not None and path.is_dir():
        files += [(str(p.relative_to(path)), p) for p in sorted(path.rglob("*")) if p.is_file()]
    elif path is not None:
        files.append((path.name, path))
    for role in ("diffusion_model", "vae", "clip_l"):
        f = getattr(options, role)
        if f:
            files.append((f"{role}:{Path(f).name}", Path(f)))
    hashes = {name: sha256_file(p) for name, p in files}
    total = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()
    name = path.name if path is not None else "+".join(n for n, _ in files)
    return {"file": name, "sha256": hashes[files[0][0]] if len(files) == 1 else total, "files": hashes}


def _write_extras(tmp: Path, manifest: dict[str, Any], mod: Module) -> None:
    """What a pipeline needs besides kernels and weights: an SD artifact carries the CLIP BPE vocabulary (MIT
    licence, from the clip-anytorch package) so the runtime tokenizes without any package or network, and the
    scheduler configuration it was trained with."""
    if mod.meta.get("family") != "sd" or "encode_text" not in mod.functions:
        return
    import shutil

    from runtime.pipelines.tokenizer import find_vocab

    vocab = find_vocab()
    if vocab is None:
        from sdcompile.errors import ToolchainError

        raise ToolchainError(
            "the CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz) was not found: install it with "
            "`pip install --no-deps clip-anytorch==2.6.0` (scripts/setup.sh does)"
        )
    shutil.copyfile(vocab, tmp / VOCAB_FILE)
    cfg = mod.meta.get("config") or {}
    unet = cfg.get("unet") or {}
    manifest["pipeline"] = {
        "kind": "stable-diffusion",
        "vocab": {"file": VOCAB_FILE, "licence": "MIT (OpenAI CLIP)", "pad_token_id": 49407},
        # the family, one token-id input per text encoder with its padding, SDXL's empty-negative rule
        **(mod.meta.get("pipeline") or {}),
        "scheduler": mod.meta.get("scheduler") or {"prediction_type": unet.get("prediction", "epsilon")},
        "vae_scaling_factor": (cfg.get("vae") or {}).get("scaling_factor"),
        "vae_tiling": manifest["memory"].get("vae_tiling"),
        "sizes": cfg.get("sizes"),
        "batch": cfg.get("batch"),
    }


VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def _build_kernels(specs, options: CompileOptions, out: Path, bar: _Progress, report: dict) -> dict[str, Any]:
    from sdcompile.codegen import tvm_layer
    from sdcompile.tuning import records

    # Tuning records (`sdcompile tune`) for this target and machine replace the built-in schedule of their kernels;
    # the report lists exactly the records the build replays.
    machine, found, stale = records.applicable(specs, options.target)
    tuning = records.report(options.target, machine, found, stale)
    if tuning is not None:
        report["tuning"] = tuning
    with tvm_layer.tuning_records(found):
        if options.target == "cuda":
            from sdcompile.codegen.cuda_build import DEFAULT_ARCHS, build_cuda

            res = build_cuda(specs, options.cuda_archs or DEFAULT_ARCHS, out)
        else:
            from sdcompile.codegen.build import build_kernels

            res = build_kernels(specs, options.target, out)
    bar.step("kernels")
    res.setdefault("host", {"machine": platform.machine()})
    return res


def _tvm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apache-tvm")
    except PackageNotFoundError:
        return "unknown"
