"""Model families: detect which one a tensor store holds and lift it into the IR."""

from __future__ import annotations

from sdcompile.errors import UnsupportedModelError
from sdcompile.ir import Graph, Module
from sdcompile.models import clip_text, sd

# Components by tensor-name prefix, for `inspect` (first match wins). Lifting is per family, below.
COMPONENT_PREFIXES: list[tuple[str, str]] = [
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.", "text_encoder"),
    ("text_encoder", "text_encoder"),
    ("text_model.", "text_encoder"),
    ("embeddings.", "text_encoder"),
    ("encoder.layers.", "text_encoder"),
    ("final_layer_norm.", "text_encoder"),
    ("model.diffusion_model.", "unet"),
    ("unet.", "unet"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
    ("token_embd.", "llm"),
    ("blk.", "llm"),
    ("output", "llm"),
]


def component_of(name: str) -> str:
    for prefix, comp in COMPONENT_PREFIXES:
        if name.startswith(prefix):
            return comp
    return "other"


def detect_family(store) -> str | None:
    if sd.detect(store):
        return "sd"
    if clip_text.find_prefix(set(store.names())) is not None:
        return "clip_text"
    return None


def lift_module(store, options, configs: dict | None = None, vae_tile: int | None = None) -> Module:
    """The module a store holds: an SD pipeline's functions, or a text encoder's ``encode_text``."""
    if options.batch < 1:
        raise UnsupportedModelError(f"batch must be >= 1, got {options.batch}")
    configs = configs or {}
    if sd.detect(store):
        return sd.lift(
            store,
            options.sizes,
            configs=configs,
            components=options.components,
            vae_tile=vae_tile,
            prediction=getattr(options, "prediction", None),
        )
    if clip_text.find_prefix(set(store.names())) is None:
        raise UnsupportedModelError(clip_text.not_a_model_message(store))
    g = clip_text.lift(store, batch=options.batch, config=configs.get("text_encoder"))
    used = {v.data.key for v in g.weights()}
    why = g.meta.pop("ignored", {})  # the encoders' own tensors left out, with the reason (SD 2.x's last layer, ...)
    ignored = {n: why.get(n) or _not_text_encoder(n) for n in store.names() if n not in used}
    meta = {"family": "clip_text", "config": g.meta["config"], "assumptions": g.meta["assumptions"]}
    return Module({"encode_text": g}, meta=meta | {"ignored": ignored})


def _not_text_encoder(name: str) -> str:
    if name.endswith("position_ids"):
        return "position ids buffer (positions are 0..N-1)"
    if name.startswith(("vision_model.", "visual_projection.", "text_projection.", "logit_scale")):
        return "CLIP's image tower or projections: not part of the text encoder's last_hidden_state"
    return "not part of the CLIP text encoder"


def lift(store, batch: int = 1) -> Graph:
    """Lift the model a store holds. Today: the CLIP text encoder (alone or inside a full SD checkpoint)."""
    if batch < 1:
        raise UnsupportedModelError(f"batch must be >= 1, got {batch}")
    return clip_text.lift(store, batch=batch)
