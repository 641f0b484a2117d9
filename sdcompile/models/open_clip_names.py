"""Where a CLIP text encoder's tensors are in files that do not use transformers' names.

sdcompile names every text-encoder weight by transformers' ``CLIPTextModel`` sub-path (``embeddings.*``,
``encoder.layers.N.self_attn.q_proj.weight``, ``final_layer_norm.*``, and ``text_projection.weight`` of
``CLIPTextModelWithProjection`` as [out, in]). Two other layouts hold the same numbers:

- OpenCLIP's, as SD 2.x (``cond_stage_model.model.*``) and SDXL (``conditioner.embedders.1.model.*``) checkpoints
  store it: ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.N.{ln_1,ln_2}``,
  ``attn.in_proj_weight``/``in_proj_bias`` (q, k and v stacked along the output axis, nn.MultiheadAttention's
  layout), ``attn.out_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_final`` and ``text_projection`` stored [in, out]
  (used as ``x @ P``);
- stable-diffusion.cpp's conversion of it (``convert_open_clip_to_hf_clip_name`` in its name_conversion.cpp, which
  its ``convert`` writes into GGUF files): transformers' names, except that the fused projection stays fused as
  ``self_attn.in_proj.{weight,bias}`` and the projection is ``text_model.text_projection`` (no ``.weight``), copied
  unchanged, so [in, out] when it came from an OpenCLIP checkpoint.

`locate` maps a canonical sub-path to the stored tensor and what to do with it (a third of the fused q/k/v, a
transpose); the lifter turns that into a derived weight (``sdcompile/ir/derived.py``), so nothing is copied when the
model is lifted and the weight keeps its canonical name for quantization rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HF = "hf"  # transformers' CLIPTextModel names
OPEN_CLIP = "open_clip"  # OpenCLIP's names
HF_FUSED = "hf_fused"  # stable-diffusion.cpp's: transformers' names with OpenCLIP's fused in_proj kept

TOKEN = {HF: "embeddings.token_embedding.weight", OPEN_CLIP: "token_embedding.weight"}
FUSED_MARK = "encoder.layers.0.self_attn.in_proj.weight"  # under a transformers prefix: stable-diffusion.cpp's names

_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OC_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}

# transformers' sub-path inside a layer -> OpenCLIP's (the fused q/k/v are handled apart)
_OC_IN_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OC_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


@dataclass(frozen=True)
class Location:
    """Where a canonical tensor is stored: ``key`` (below the encoder's prefix), ``part`` of q/k/v (0, 1, 2) when
    the tensor is the fused in_proj, and whether it is stored transposed ([in, out])."""

    key: str
    part: int | None = None
    transposed: bool = False


def locate(names: str, sub: str) -> Location:
    """The stored tensor holding the canonical sub-path ``sub`` in a file with ``names`` (HF, OPEN_CLIP, HF_FUSED).
    ``text_projection.weight`` is located relative to the same prefix as the rest (the caller knows where
    transformers keeps it, beside ``text_model.``)."""
    if names == HF:
        return Location(sub)
    m = _HF_LAYER.match(sub)
    qkv = None
    if m:
        part, _, wb = m.group(2).rpartition(".")
        if part.startswith("self_attn.") and part.removeprefix("self_attn.") in _QKV:
            qkv = (int(m.group(1)), _QKV[part.removeprefix("self_attn.")], wb)
    if names == HF_FUSED:
        if qkv:
            i, j, wb = qkv
            return Location(f"encoder.layers.{i}.self_attn.in_proj.{wb}", j)
        if sub == "text_projection.weight":
            return Location("text_projection", transposed=True)
        return Location(sub)
    if names != OPEN_CLIP:
        raise ValueError(f"unknown naming {names!r}")
    if qkv:
        i, j, wb = qkv
        return Location(f"transformer.resblocks.{i}.attn.in_proj_{wb}", j)
    if sub == "text_projection.weight":
        return Location("text_projection", transposed=True)
    if sub in _OC_TOP:
        return Location(_OC_TOP[sub])
    if m:
        part, _, wb = m.group(2).rpartition(".")
        if part in _OC_IN_LAYER:
            return Location(f"transformer.resblocks.{m.group(1)}.{_OC_IN_LAYER[part]}.{wb}")
    raise ValueError(f"no OpenCLIP name for {sub!r}")


def layer_of(names: str, key: str) -> int | None:
    """The layer index of a stored tensor's name (below the prefix), or None outside the layer stack."""
    m = (_OC_LAYER if names == OPEN_CLIP else _HF_LAYER).match(key)
    return int(m.group(1)) if m else None


def fused_keys(names: str, layer: int) -> tuple[str, str] | None:
    """The fused in_proj weight and bias of a layer, where the names keep them fused."""
    if names == OPEN_CLIP:
        p = f"transformer.resblocks.{layer}.attn."
        return p + "in_proj_weight", p + "in_proj_bias"
    if names == HF_FUSED:
        p = f"encoder.layers.{layer}.self_attn.in_proj."
        return p + "weight", p + "bias"
    return None
