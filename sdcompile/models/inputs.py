"""Open what a user points the compiler at — one checkpoint file, a diffusers directory, or separate component
files as stable-diffusion.cpp takes them — as one tensor store under LDM single-file names, plus the
``config.json`` dicts that came with it (which state hyperparameters the weights cannot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdcompile.errors import FormatError, UnsupportedModelError
from sdcompile.formats import open_store
from sdcompile.formats.merged import MergedStore
from sdcompile.models.sd import TEXT, UNET, VAE


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: unreadable config ({e}); the diffusers directory is damaged") from None


def _unet_names(store) -> dict[str, str]:
    names = store.names()
    if any(n.startswith(UNET) for n in names):
        return {n: n for n in names if n.startswith(UNET)}
    if any(n.startswith("input_blocks.") for n in names):  # a bare LDM UNet (stable-diffusion.cpp's --diffusion-model)
        return {UNET + n: n for n in names}
    raise UnsupportedModelError(
        f"{store.path}: not a UNet in LDM names (no input_blocks.*); for a diffusers UNet pass its directory"
    )


def _vae_names(store) -> dict[str, str]:
    names = store.names()
    if any(n.startswith(VAE) for n in names):
        return {n: n for n in names if n.startswith(VAE)}
    if any(n.startswith(("decoder.conv_in", "encoder.conv_in")) and "down_blocks" not in n for n in names) and any(
        n.startswith("decoder.up.") for n in names
    ):  # a bare LDM VAE (the usual separate vae.safetensors / .pt)
        return {VAE + n: n for n in names}
    if any(n.startswith("decoder.up_blocks.") for n in names):  # a diffusers VAE file without its config.json
        from sdcompile.models.sd_names import vae_key_to_ldm

        levels = len({n.split(".")[2] for n in names if n.startswith("decoder.up_blocks.")})
        out = {}
        for n in names:
            try:
                out[VAE + vae_key_to_ldm(n, levels)] = n
            except ValueError:
                raise UnsupportedModelError(f"{store.path}: {n} is not a tensor of an SD VAE") from None
        return out
    raise UnsupportedModelError(f"{store.path}: not an SD VAE (no decoder.* tensors)")


def _text_names(store) -> dict[str, str]:
    names = store.names()
    if any(n.startswith(TEXT) for n in names):
        return {n: n for n in names if n.startswith(TEXT)}
    for prefix in ("text_model.", ""):
        if prefix + "embeddings.token_embedding.weight" in names:
            return {TEXT + n[len(prefix) :]: n for n in names if n.startswith(prefix)}
    raise UnsupportedModelError(f"{store.path}: not a CLIP text encoder (no embeddings.token_embedding.weight)")


def open_model(path: Path | None, options: Any) -> tuple[Any, dict[str, dict]]:
    """(store, {component: config dict}) for a checkpoint, a diffusers directory, and/or separate files."""
    configs: dict[str, dict] = {}
    parts: list[tuple[Any, dict[str, str]]] = []
    if path is not None and Path(path).is_dir():
        parts, configs = _diffusers_parts(Path(path))
    elif path is not None:
        base = open_store(path)
        extra = [options.diffusion_model, options.vae, options.clip_l]
        if not any(extra):
            return base, configs
        parts.append((base, {n: n for n in base.names()}))
    if options.diffusion_model:
        s = open_store(options.diffusion_model)
        parts.append((s, _unet_names(s)))
    if options.clip_l:
        s = open_store(options.clip_l)
        parts.append((s, _text_names(s)))
    if options.vae:  # last: a separate VAE overrides the checkpoint's
        s = open_store(options.vae)
        names = _vae_names(s)
        parts = [(st, {k: v for k, v in m.items() if not k.startswith(VAE)}) for st, m in parts]
        parts.append((s, names))
    if not parts:
        raise UnsupportedModelError("no model given: pass a checkpoint, a diffusers directory or --diffusion-model")
    where = Path(path) if path is not None else Path(options.diffusion_model or options.vae or options.clip_l)
    return MergedStore(where, parts), configs


def _diffusers_parts(root: Path) -> tuple[list, dict[str, dict]]:
    from sdcompile.models.sd_names import unet_diffusers_to_ldm, vae_diffusers_to_ldm

    parts, configs = [], {}
    comps = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
    for comp, stem in comps.items():
        d = root / comp
        if not d.is_dir():
            continue
        files = sorted(d.glob(f"{stem}*.safetensors")) or sorted(d.glob(f"{stem}*.bin"))
        if not files:
            raise FormatError(f"{d}: no {stem}.safetensors (or .bin) weights")
        if len(files) > 1:
            raise UnsupportedModelError(f"{d}: sharded weights ({len(files)} files) are not supported yet")
        cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
        configs[comp] = cfg
        s = open_store(files[0])
        if comp == "unet":
            m = unet_diffusers_to_ldm(cfg)
            parts.append((s, {UNET + m[n]: n for n in s.names() if n in m}))
            _unmapped(s, m, comp)
        elif comp == "vae":
            m = vae_diffusers_to_ldm(cfg)
            parts.append((s, {VAE + m[n]: n for n in s.names() if n in m}))
            _unmapped(s, m, comp)
        else:
            parts.append((s, _text_names(s)))
            for k in ("num_attention_heads", "hidden_act", "layer_norm_eps"):
                if k in cfg:
                    s.metadata[k] = cfg[k]
    sched = root / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        configs["scheduler"] = _read_json(sched)
        # diffusers' schedulers predict epsilon unless their config says otherwise
        configs.setdefault("unet", {})["prediction_type"] = configs["scheduler"].get("prediction_type", "epsilon")
    if not parts:
        raise UnsupportedModelError(f"{root}: a directory without unet/, vae/ or text_encoder/: not a diffusers model")
    return parts, configs


def _unmapped(store, mapping: dict[str, str], comp: str) -> None:
    extra = [n for n in store.names() if n not in mapping]
    if extra:
        raise UnsupportedModelError(
            f"{store.path}: {len(extra)} {comp} tensors have no LDM name (e.g. {extra[0]}): an architecture this "
            "diffusers converter does not know"
        )
