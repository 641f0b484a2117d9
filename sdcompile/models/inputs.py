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
from sdcompile.models import identify
from sdcompile.models.sd import TEXT, UNET, VAE

# Weight files of a transformers model folder (save_pretrained), safetensors first as transformers loads them
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


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


def text_config_beside(weights: Path) -> dict | None:
    """The transformers CLIP text config.json next to a weights file (save_pretrained writes them side by side; a
    diffusers pipeline's text_encoder/ holds the same pair). It states the head count and activation, which the
    weights cannot; a config.json of anything else is not the text encoder's and is left alone."""
    cfg = identify.read_json(Path(weights).parent / "config.json")
    return cfg if identify.is_clip_text_config(cfg) else None


def _transformers_folder(root: Path) -> tuple[Any, dict[str, dict]] | None:
    """A transformers CLIPTextModel folder (config.json + model.safetensors), opened as its weights and config."""
    cfg = identify.read_json(root / "config.json")
    if not identify.is_clip_text_config(cfg):
        return None
    for name in TRANSFORMERS_WEIGHTS:
        if (root / name).is_file():
            return open_store(root / name), {"text_encoder": cfg}
    if any(root.glob("model-*-of-*.safetensors")):
        raise UnsupportedModelError(f"{root}: sharded weights are not supported yet")
    raise FormatError(
        f"{root}: a CLIP text encoder's config.json without its weights ({' or '.join(TRANSFORMERS_WEIGHTS)})"
    )


def open_model(path: Path | None, options: Any) -> tuple[Any, dict[str, dict]]:
    """(store, {component: config dict}) for a checkpoint, a diffusers directory, a transformers text encoder folder,
    and/or separate files."""
    configs: dict[str, dict] = {}
    parts: list[tuple[Any, dict[str, str]]] = []
    extra = [options.diffusion_model, options.vae, options.clip_l]
    if path is not None and Path(path).is_dir():
        folder = _transformers_folder(Path(path))
        if folder is not None and not any(extra):
            return folder
        if folder is not None:
            parts.append((folder[0], {n: n for n in folder[0].names()}))
            configs.update(folder[1])
        else:
            parts, configs = _diffusers_parts(Path(path), options)
    elif path is not None:
        base = open_store(path)
        cfg = text_config_beside(Path(path))
        if cfg is not None:
            configs["text_encoder"] = cfg
        if not any(extra):
            return base, configs
        parts.append((base, {n: n for n in base.names()}))
    if options.diffusion_model:
        s = open_store(options.diffusion_model)
        parts.append((s, _unet_names(s)))
    if options.clip_l:
        s = open_store(options.clip_l)
        parts.append((s, _text_names(s)))
        cfg = text_config_beside(Path(options.clip_l))
        if cfg is not None:
            configs["text_encoder"] = cfg
    if options.vae:  # last: a separate VAE overrides the checkpoint's
        s = open_store(options.vae)
        names = _vae_names(s)
        parts = [(st, {k: v for k, v in m.items() if not k.startswith(VAE)}) for st, m in parts]
        parts.append((s, names))
    if not parts:
        raise UnsupportedModelError("no model given: pass a checkpoint, a diffusers directory or --diffusion-model")
    where = Path(path) if path is not None else Path(options.diffusion_model or options.vae or options.clip_l)
    return MergedStore(where, parts), configs


# An SDXL pipeline's text encoder folders: kept under their folder's name (the text encoder lifter finds both there,
# `clip_text.PLACES`), so the first encoder is not mistaken for SD 1.x's and a VAE-only compile lists their tensors.
SDXL_FOLDERS = ("text_encoder", "text_encoder_2")


def _weights_of(d: Path, stem: str) -> Path:
    files = sorted(d.glob(f"{stem}*.safetensors")) or sorted(d.glob(f"{stem}*.bin"))
    if not files:
        raise FormatError(f"{d}: no {stem}.safetensors (or .bin) weights")
    if len(files) > 1:
        raise UnsupportedModelError(f"{d}: sharded weights ({len(files)} files) are not supported yet")
    return files[0]


def _diffusers_parts(root: Path, options: Any = None) -> tuple[list, dict[str, dict]]:
    from sdcompile.models.sd_names import unet_diffusers_to_ldm, vae_diffusers_to_ldm

    parts, configs = [], {}
    index = identify.read_json(root / "model_index.json") or {}
    if index:
        configs["pipeline"] = index  # pipeline-level settings (force_zeros_for_empty_prompt)
    cls = index.get("_class_name")
    sdxl = (root / "text_encoder_2").is_dir() or (isinstance(cls, str) and cls.startswith("StableDiffusionXL"))
    if not sdxl and cls in identify.PIPELINES:
        raise UnsupportedModelError(
            identify.Found(
                f"{identify.PIPELINES[cls]} (model_index.json: {cls})", "not supported yet. " + identify.SUPPORTED
            ).message(root)
        )
    components = set(getattr(options, "components", None) or ("text_encoder", "unet", "vae_decoder"))
    if sdxl and not (root / "text_encoder_2").is_dir() and {"unet", "text_encoder"} & components:
        raise UnsupportedModelError(
            f"{root}: an SDXL pipeline (model_index.json: {cls}) without its text_encoder_2/ folder (OpenCLIP "
            "bigG), which SDXL's UNet is conditioned on: the directory is incomplete; its VAE alone compiles with "
            "--components vae_decoder,vae_encoder"
        )
    comps = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
    if sdxl:
        comps["text_encoder_2"] = "model"
    for comp, stem in comps.items():
        d = root / comp
        if not d.is_dir():
            continue
        s = open_store(_weights_of(d, stem))
        cfg = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
        configs[comp] = cfg
        if sdxl and comp in SDXL_FOLDERS:
            parts.append((s, {f"{comp}/{n}": n for n in s.names()}))
            continue
        _check_design(s, comp, cfg)
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
    sched = root / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        configs["scheduler"] = _read_json(sched)
        # diffusers' schedulers predict epsilon unless their config says otherwise
        configs.setdefault("unet", {})["prediction_type"] = configs["scheduler"].get("prediction_type", "epsilon")
    if not parts:
        found = identify.directory_found(root)
        if found is not None:
            raise UnsupportedModelError(found.message(root))
        raise UnsupportedModelError(f"{root}: a directory without unet/, vae/ or text_encoder/: not a diffusers model")
    return parts, configs


def _check_design(store, comp: str, cfg: dict) -> None:
    """Refuse a design variant by its config key before the name converter, which would only see tensors it cannot
    name; unread keys are reported later, by the lifter."""
    from sdcompile.models import sd

    if comp == "unet":
        sd.check_config_keys(store, sd.Assumptions(), cfg, "UNet", sd.UNET_READ, sd.UNET_SHAPES, sd.UNET_DEFAULT_ONLY)
    elif comp == "vae":
        sd.check_config_keys(store, sd.Assumptions(), cfg, "VAE", sd.VAE_READ, sd.VAE_SHAPES, sd.VAE_DEFAULT_ONLY)


def _unmapped(store, mapping: dict[str, str], comp: str) -> None:
    extra = [n for n in store.names() if n not in mapping]
    if extra:
        raise UnsupportedModelError(
            f"{store.path}: {len(extra)} {comp} tensors have no LDM name (e.g. {extra[0]}): an architecture this "
            "diffusers converter does not know"
        )
