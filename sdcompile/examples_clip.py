"""Tiny example text encoders of SD 2.x and SDXL with random weights, under the names their checkpoints use.

- `open_clip_state`: an OpenCLIP text tower as SD 2.x (``cond_stage_model.model.``) or SDXL
  (``conditioner.embedders.1.model.``) checkpoints store it: fused ``attn.in_proj_weight`` [3D, D], ``text_projection``
  [D, P] used as ``x @ P``, ``logit_scale``;
- `sdcpp_names`: the same tensors under the names stable-diffusion.cpp's ``convert`` writes (its
  ``convert_open_clip_to_hf_clip_name``: transformers' names, the fused in_proj kept as ``self_attn.in_proj.*``,
  ``text_model.text_projection`` unchanged);
- `sdxl_state`: an SDXL checkpoint's two encoders (CLIP-L in transformers' names under
  ``conditioner.embedders.0.transformer.text_model.``, bigG under ``conditioner.embedders.1.model.``);
- `prompt_ids`: token ids padded as each tokenizer pads (CLIP-L's with EOS, OpenCLIP's with 0).

Initialisation as `sdcompile.examples` (CLIP's normal(0, 0.02)), so activations have realistic magnitudes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdcompile import examples as ex


@dataclass(frozen=True)
class OpenClipShape:
    vocab: int = 1000
    width: int = 128
    layers: int = 24
    mlp: int = 256
    positions: int = 16
    projection: int = 128


# SD 2.x's tower has 24 layers, of which SD uses 23: the tiny one keeps the count (diffusers' converter drops
# resblock 23 by name) at 64 channels per head, as the real ones.
TINY_H = OpenClipShape()
TINY_BIGG = OpenClipShape(vocab=1000, width=192, layers=4, mlp=384, positions=16, projection=192)
TINY_L = ex.ClipTextShape(vocab=1000, width=128, layers=3, heads=2, mlp=256, positions=16)

SD2_PREFIX = "cond_stage_model.model."
SDXL_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_G_PREFIX = "conditioner.embedders.1.model."


def open_clip_state(shape: OpenClipShape = TINY_H, seed: int = 0, prefix: str = SD2_PREFIX) -> dict[str, np.ndarray]:
    """OpenCLIP's text tower under OpenCLIP's names, float32."""
    rng = np.random.default_rng(seed)
    d, f = shape.width, shape.mlp
    n = lambda *s, std=0.02: (rng.standard_normal(s) * std).astype(np.float32)  # noqa: E731
    sd = {"token_embedding.weight": n(shape.vocab, d), "positional_embedding": n(shape.positions, d, std=0.01)}
    for i in range(shape.layers):
        p = f"transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"] = (1 + n(d, std=0.1)).astype(np.float32)
            sd[p + ln + ".bias"] = n(d)
        sd[p + "attn.in_proj_weight"] = n(3 * d, d)
        sd[p + "attn.in_proj_bias"] = n(3 * d)
        sd[p + "attn.out_proj.weight"] = n(d, d)
        sd[p + "attn.out_proj.bias"] = n(d)
        sd[p + "mlp.c_fc.weight"] = n(f, d)
        sd[p + "mlp.c_fc.bias"] = n(f)
        sd[p + "mlp.c_proj.weight"] = n(d, f)
        sd[p + "mlp.c_proj.bias"] = n(d)
    sd["ln_final.weight"] = (1 + n(d, std=0.1)).astype(np.float32)
    sd["ln_final.bias"] = n(d)
    sd["text_projection"] = n(d, shape.projection, std=d**-0.5)
    sd["logit_scale"] = np.array(np.log(1 / 0.07), np.float32)
    return {prefix + k: v for k, v in sd.items()}


# stable-diffusion.cpp's convert_open_clip_to_hf_clip_name, for the text tower (name_conversion.cpp)
_SDCPP_TOP = {
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text_projection": "text_model.text_projection",
}
_SDCPP_BLOCK = {
    "attn.in_proj_bias": "self_attn.in_proj.bias",
    "attn.in_proj_weight": "self_attn.in_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_2.bias": "layer_norm2.bias",
    "ln_2.weight": "layer_norm2.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
}


def sdcpp_names(state: dict[str, np.ndarray], prefix: str, to: str) -> dict[str, np.ndarray]:
    """OpenCLIP tensors under ``prefix`` renamed as stable-diffusion.cpp's convert writes them under ``to`` (its
    ``cond_stage_model.transformer.`` for SD 2.x, ``cond_stage_model.1.transformer.`` for SDXL's bigG). A name its
    converter has no entry for (``logit_scale``) keeps OpenCLIP's ``model.`` sub-path under the same root, as it
    leaves them (``cond_stage_model.model.logit_scale``, ``cond_stage_model.1.model.logit_scale``)."""
    root = to.removesuffix("transformer.")
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            out[k] = v
            continue
        sub = k[len(prefix) :]
        if sub in _SDCPP_TOP:
            out[to + _SDCPP_TOP[sub]] = v
            continue
        if sub.startswith("transformer.resblocks."):
            i, rest = sub[len("transformer.resblocks.") :].split(".", 1)
            if rest in _SDCPP_BLOCK:
                out[to + f"text_model.encoder.layers.{i}.{_SDCPP_BLOCK[rest]}"] = v
                continue
        out[root + "model." + sub] = v
    return out


def sdxl_state(seed: int = 0) -> dict[str, np.ndarray]:
    """An SDXL checkpoint's text encoders: tiny CLIP-L (transformers' names) and tiny bigG (OpenCLIP's)."""
    clip_l = {SDXL_L_PREFIX + k: v for k, v in ex.clip_text_state(TINY_L, seed).items()}
    return clip_l | open_clip_state(TINY_BIGG, seed + 1, SDXL_G_PREFIX)


def prompt_ids(batch: int, positions: int, vocab: int, pad: int, seed: int = 1) -> np.ndarray:
    """Token ids as CLIP's tokenizers give them: BOS, the prompt, EOS, then ``pad`` (EOS for CLIP-L's tokenizer, 0
    for OpenCLIP's, "!"). The tiny vocabulary's BOS and EOS are its last two ids; the first row fills every position
    (EOS last), as a prompt that reaches the limit does."""
    rng = np.random.default_rng(seed)
    bos, eos = vocab - 2, vocab - 1
    ids = np.full((batch, positions), pad, np.int64)
    for b in range(batch):
        n = positions - 2 if b == 0 else int(rng.integers(1, positions - 2))
        ids[b, 0] = bos
        ids[b, 1 : n + 1] = rng.integers(1, vocab - 2, n)
        ids[b, n + 1] = eos
    return ids
