"""Which weights a LoRA can adapt, and every name a LoRA file may give each of them.

A target is the weight of a `linear` or `conv2d` node. Its aliases are ``component:flat path`` keys
(`runtime/lora/parse.py` reduces every LoRA naming convention to that form): the canonical path itself (LDM names
for the UNet and VAE, transformers' CLIP names for the text encoders: what kohya LoRAs trained on LDM checkpoints
and stable-diffusion.cpp's converted LoRAs use) and, for the UNet, its diffusers path (kohya LoRAs trained on
diffusers models, PEFT, diffusers' attention processors). The diffusers names come from `sd_names` (checked against
diffusers' own converters) with a diffusers config read back from the UNet's LDM names, so the table needs no
config file.
"""

from __future__ import annotations

import re

from sdcompile.ir import Module

# canonical prefix -> LoRA component (`runtime/lora/parse.py`'s names)
COMPONENTS = {"unet.": "unet", "text_encoder_2.": "text_encoder_2", "text_encoder.": "text_encoder", "vae.": "vae"}


def flat(path: str) -> str:
    return path.removesuffix(".weight").replace(".", "_")


def _component(name: str) -> tuple[str, str] | None:
    for prefix, comp in COMPONENTS.items():
        if name.startswith(prefix):
            return comp, name[len(prefix) :]
    return None


def unet_diffusers_config(ldm_names: set[str]) -> dict:
    """The diffusers config fields that decide the UNet's names, read back from its LDM names (the widths only
    decide which resnets have a shortcut: distinct widths give every level but the first one, as SD's UNets have)."""
    ops = sorted(int(m.group(1)) for n in ldm_names if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", n)))
    blocks = [int(m.group(1)) for n in ldm_names if (m := re.match(r"input_blocks\.(\d+)\.", n))]
    per = ops[0] if ops else max(blocks) + 1
    levels = len(ops) + 1
    depth = 1 + max(
        (int(m.group(1)) for n in ldm_names if (m := re.search(r"transformer_blocks\.(\d+)\.", n))), default=0
    )
    down = [any(n.startswith(f"input_blocks.{1 + b * per}.1.") for n in ldm_names) for b in range(levels)]
    up = [any(n.startswith(f"output_blocks.{b * per}.1.proj_in.") for n in ldm_names) for b in range(levels)]
    cfg = {
        "block_out_channels": list(range(1, levels + 1)),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up],
        "layers_per_block": per - 1,
        "transformer_layers_per_block": depth,
    }
    if any(n.startswith("label_emb.") for n in ldm_names):
        cfg["addition_embed_type"] = "text_time"
    return cfg


def _unet_diffusers_names(ldm_names: set[str]) -> tuple[dict[str, str], str | None]:
    from sdcompile.models.sd_names import unet_ldm_to_diffusers

    try:
        return unet_ldm_to_diffusers(unet_diffusers_config(ldm_names)), None
    except (ValueError, AssertionError, KeyError) as e:
        return {}, f"the UNet's diffusers names could not be derived ({e}): only its LDM names are matched"


def ignored_aliases(mod: Module) -> dict[str, str]:
    """{alias: why} for the checkpoint's weights the model leaves out (``mod.meta["ignored"]``: an encoder layer SDXL
    does not compute, a component not compiled), so a LoRA tensor adapting one is listed with that reason rather
    than as a name the model does not know."""
    from runtime.lora.parse import split_name

    out: dict[str, str] = {}
    for key, why in (mod.meta.get("ignored") or {}).items():
        if not key.endswith(".weight"):
            continue
        s = split_name(key[: -len(".weight")] + ".lora_down.weight")
        if s is not None:
            out.setdefault(f"{s[0]}:{s[1]}", f"the model leaves out the checkpoint's {key}: {why}")
    return out


def targets(mod: Module) -> tuple[dict[str, dict], list[str]]:
    """{canonical weight: {"kind", "shape" (logical: [O, I] or [O, C, kh, kw]), "aliases"}} over every function of
    the module, and notes for the report (names that could not be derived)."""
    out: dict[str, dict] = {}
    for g in mod.functions.values():
        for n in g.nodes:
            if n.op not in ("linear", "conv2d", "matmul") or len(n.inputs) < 2:  # matmul: before `fuse`
                continue
            w = g.values[n.inputs[1]]
            if w.kind != "weight" or w.name in out or _component(w.name) is None:
                continue
            if n.op == "conv2d":
                shape = [w.shape[0], g.values[n.inputs[0]].shape[-1], n.attrs["kh"], n.attrs["kw"]]
            else:
                shape = list(w.shape)
            out[w.name] = {"kind": "conv2d" if n.op == "conv2d" else "linear", "shape": shape, "aliases": []}
    unet = {name[len("unet.") :] for name in mod.weights() if name.startswith("unet.")}
    notes: list[str] = []
    to_diffusers: dict[str, str] = {}
    if unet:
        to_diffusers, note = _unet_diffusers_names(unet)
        if note:
            notes.append(note)
    for name, t in out.items():
        comp, path = _component(name)
        aliases = [f"{comp}:{flat(path)}"]
        if comp == "unet" and path in to_diffusers:
            aliases.append(f"{comp}:{flat(to_diffusers[path])}")
        t["aliases"] = sorted(set(aliases))
    seen: dict[str, str] = {}
    for name, t in out.items():  # an alias naming two weights would adapt the wrong one: an internal bug
        for a in t["aliases"]:
            if seen.setdefault(a, name) != name:
                raise AssertionError(f"LoRA alias {a} names both {seen[a]} and {name}")
    return out, notes
