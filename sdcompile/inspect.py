"""`sdcompile inspect`: what a weight file holds, without compiling it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompile.errors import UnsupportedModelError
from sdcompile.models import component_of, detect_family, identify
from sdcompile.passes.memory_plan import fmt_bytes


def inspect_file(path: Path) -> dict[str, Any]:
    """What a weight file (or a diffusers / transformers model folder) holds. ``tensor_list`` pairs each tensor's
    name in the file with its canonical name, the one ``--tensor-type-rules`` match, or the reason it is ignored."""
    from sdcompile.models.inputs import open_model
    from sdcompile.passes.context import CompileOptions

    opts = CompileOptions()
    # open_model as compile opens it: a config.json beside the weights states what their shapes cannot
    store, configs = open_model(path, opts)
    comps: dict[str, dict[str, Any]] = {}
    for t in store.infos():
        c = comps.setdefault(component_of(t.name), {"tensors": 0, "bytes": 0, "types": {}})
        c["tensors"] += 1
        c["bytes"] += t.nbytes
        c["types"][t.dtype] = c["types"].get(t.dtype, 0) + 1
    family = detect_family(store)
    info: dict[str, Any] = {
        "file": str(path),
        "format": store.format,
        "family": family,
        "tensors": len(store),
        "bytes": sum(t.nbytes for t in store.infos()),
        "components": dict(sorted(comps.items())),
        "metadata": {k: _short(v) for k, v in sorted(store.metadata.items())[:40]},
        "tensor_list": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes} for t in store.infos()
        ],
    }
    if family is None:
        info["identified"] = identify.describe(store)
        return info
    from sdcompile.models import lift_module
    from sdcompile.passes import fuse, memory_plan, quantize
    from sdcompile.passes.context import PassContext

    try:
        mod = lift_module(store, opts, configs)
    except UnsupportedModelError as e:  # inspect still shows the file; compile would refuse it with this message
        info["refused"] = str(e)
        return info
    canonical: dict[str, str] = {}
    for v in mod.weights().values():
        canonical.setdefault(v.data.key, v.name)
    ignored = mod.meta.get("ignored", {})
    origin = getattr(store, "origin", None)  # a folder's parts are renamed on opening: show each file's own name
    for t in info["tensor_list"]:
        if origin is not None and origin(t["name"])[1] != t["name"]:
            t["file_name"] = origin(t["name"])[1]
        t["canonical"] = canonical.get(t["name"])
        if t["name"] in ignored:
            t["ignored"] = ignored[t["name"]]
    cfg = mod.meta.get("config", {})
    info["model"] = cfg
    info["assumptions"] = mod.meta.get("assumptions", [])
    info["ignored"] = mod.meta.get("ignored", {})
    info["functions"] = {
        name: {
            "inputs": {i: list(g.values[i].shape) for i in g.inputs},
            "outputs": {o: list(g.values[o].shape) for o in g.outputs},
        }
        for name, g in mod.functions.items()
    }
    sd_sizes = opts.sizes or [tuple(s) for s in (mod.meta.get("config") or {}).get("sizes") or []]
    ctx = PassContext(opts)
    for name, g in mod.functions.items():
        for p in (quantize.run, fuse.run, memory_plan.run):  # as compiled, minus target-specific legalization
            g = p(g, ctx)
        mod.functions[name] = g
    memory_plan.check_module(mod.functions, ctx)
    info["memory_estimate"] = {k: ctx.report["memory"][k] for k in ("weights_bytes", "activation_bytes", "peak_bytes")}
    info["memory_estimate"]["note"] = (
        f"{'SD at ' + ', '.join(f'{w}x{h}' for w, h in sd_sizes) + ', guidance batch 2' if family == 'sd' else 'batch 1'}"
        ", weights as stored (norms and biases as f32)"
    )
    return info


def _short(v: Any) -> Any:
    if isinstance(v, list) and len(v) > 8:
        return v[:8] + [f"... {len(v)} items"]
    if isinstance(v, str) and len(v) > 200:
        return v[:200] + "..."
    return v


def render_inspect(info: dict[str, Any], tensors: bool = False) -> str:
    lines = [
        f"file      {info['file']}",
        f"format    {info['format']}",
        f"model     {info['family'] or _unrecognised(info)}",
        f"tensors   {info['tensors']} ({fmt_bytes(info['bytes'])})",
    ]
    if "model" in info and info["family"] == "clip_text":
        cfg = info["model"]
        lines.append(
            "config    "
            + ", ".join(
                f"{k}={cfg[k]}" for k in ("convention", "vocab", "width", "layers", "heads", "mlp", "positions", "act")
            )
        )
    elif "model" in info:
        cfg = info["model"]
        u, v = cfg.get("unet") or {}, cfg.get("vae") or {}
        if u:
            lines.append(
                f"unet      {u['family']}, {u['in_channels']}->{u['out_channels']} channels, width {u['model_channels']}, "
                f"context {u['context_dim']}, "
                + (f"{u['heads']} heads" if u.get("heads") else f"{u['head_dim']} channels per head")
                + f", predicts {u['prediction']}"
            )
        if v:
            lines.append(f"vae       {v['latent_channels']} latent channels, scaling factor {v['scaling_factor']}")
        for fn, sig in info.get("functions", {}).items():
            ins = ", ".join(f"{k}{v}" for k, v in sig["inputs"].items())
            outs = ", ".join(f"{k}{v}" for k, v in sig["outputs"].items())
            lines.append(f"function  {fn}({ins}) -> {outs}")
    if info.get("refused"):
        lines.append(f"refused   {info['refused']}")
    for a in info.get("assumptions", []):
        lines.append(f"assumed   {a}")
    if info.get("ignored"):
        reasons: dict[str, int] = {}
        for why in info["ignored"].values():
            reasons[why] = reasons.get(why, 0) + 1
        for why, n in sorted(reasons.items()):
            lines.append(f"ignored   {n} tensors: {why}")
    lines.append("")
    lines.append(f"{'component':<14}{'tensors':>8}{'size':>12}  types")
    for name, c in info["components"].items():
        types = ", ".join(f"{t}×{n}" for t, n in sorted(c["types"].items()))
        lines.append(f"{name:<14}{c['tensors']:>8}{fmt_bytes(c['bytes']):>12}  {types}")
    if "memory_estimate" in info:
        m = info["memory_estimate"]
        lines.append("")
        lines.append(
            f"memory    weights {fmt_bytes(m['weights_bytes'])} + activations "
            f"{fmt_bytes(m['activation_bytes'])} = peak {fmt_bytes(m['peak_bytes'])} ({m['note']})"
        )
    if tensors:
        lines.append("")
        # the canonical name is what --tensor-type-rules match, whatever the file calls the tensor
        lines.append(f"  {'tensor (name in the file)':<70} {'type':<7} {'shape':<16} {'size':>10}  canonical name")
        for t in info["tensor_list"]:
            canon = t.get("canonical") or (f"(ignored: {t['ignored']})" if t.get("ignored") else "-")
            name = t.get("file_name") or t["name"]
            lines.append(f"  {name:<70} {t['dtype']:<7} {str(t['shape']):<16} {fmt_bytes(t['bytes']):>10}  {canon}")
    return "\n".join(lines)


def _unrecognised(info: dict[str, Any]) -> str:
    what = info.get("identified")
    return f"not one sdcompile compiles: {what}" if what else "not recognised"
