"""Reference Stable Diffusion 1.x components for tests: diffusers' UNet2DConditionModel and AutoencoderKL and
transformers' CLIPTextModel holding the weights of an LDM state dict (`sdcompile.examples_sd.sd_state`).

Independent of sdcompile's own naming code: the state dict is converted with diffusers' converters
(`diffusers.loaders.single_file_utils.convert_ldm_*_checkpoint`), and the UNet/VAE configs come from diffusers'
`create_*_diffusers_config_from_ldm` applied to the original LDM model config (v1-inference.yaml's fields), so a
mistake in `sdcompile.models.sd_names` or in `examples_sd.*_config` cannot hide in the reference.

Precision: float32 by default (the weights' own type); pass `dtype="f64"` for a float64 reference (the model and
inputs are cast up, so it shows the error of an f32 implementation alone). torch runs on the CPU with 2 threads.
"""

from __future__ import annotations

import numpy as np

from sdcompile.examples_sd import SdShape, text_config

_DTYPES = {"f32": "float32", "f64": "float64"}


def _torch():
    import torch

    torch.set_num_threads(2)
    return torch


def original_config(shape: SdShape) -> dict:
    """The LDM model config (as in v1-inference.yaml) of `shape`: what diffusers' config builders read."""
    u, v = shape.unet, shape.vae
    base = u.block_out_channels[0]
    mult = [c // base for c in u.block_out_channels]
    if [base * m for m in mult] != list(u.block_out_channels):
        raise ValueError(f"UNet widths {u.block_out_channels} are not multiples of the first")
    # LDM marks attention levels by downsampling factor: level i works at 1/2^i of the latent size
    attn_res = [2**i for i, a in enumerate(u.attention) if a]
    vbase = v.block_out_channels[0]
    return {
        "model": {
            "params": {
                "scale_factor": v.scaling_factor,
                "unet_config": {
                    "params": {
                        "in_channels": u.in_channels,
                        "out_channels": u.out_channels,
                        "model_channels": base,
                        "attention_resolutions": attn_res,
                        "num_res_blocks": u.layers_per_block,
                        "channel_mult": mult,
                        **(
                            {"num_heads": u.heads}
                            if u.head_channels is None
                            else {"num_head_channels": u.head_channels}
                        ),
                        "transformer_depth": u.transformer_depth
                        if isinstance(u.transformer_depth, int)
                        else list(u.transformer_depth),
                        "context_dim": u.context_dim,
                        "use_linear_in_transformer": u.linear_proj,
                        **({"num_classes": "sequential", "adm_in_channels": u.adm_in} if u.adm_in else {}),
                    }
                },
                "first_stage_config": {
                    "params": {
                        "ddconfig": {
                            "z_channels": v.latent_channels,
                            "resolution": v.sample_size,
                            "in_channels": v.in_channels,
                            "out_ch": v.out_channels,
                            "ch": vbase,
                            "ch_mult": [c // vbase for c in v.block_out_channels],
                            "num_res_blocks": v.layers_per_block,
                        }
                    }
                },
            }
        }
    }


def diffusers_unet_config(shape: SdShape, state: dict | None = None) -> dict:
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    cfg = create_unet_diffusers_config_from_ldm(original_config(shape), state or {})
    cfg["norm_num_groups"] = shape.unet.groups  # not in LDM's config: LDM's normalization() always uses 32
    if shape.unet.adm_in and cfg.get("class_embed_type") == "projection":
        # diffusers' converter recognises SDXL's added conditioning by the released context widths (2048, 1280)
        # only; a tiny SDXL has the same LDM config (num_classes "sequential") and the same module (sgm's label_emb)
        cfg.update(
            class_embed_type=None, addition_embed_type="text_time", addition_time_embed_dim=shape.unet.time_id_dim
        )
    return cfg


def diffusers_vae_config(shape: SdShape, state: dict | None = None) -> dict:
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    cfg = create_vae_diffusers_config_from_ldm(original_config(shape), state or {})
    cfg["norm_num_groups"] = shape.vae.groups
    return cfg


def _tensors(state: dict[str, np.ndarray], prefix: str):
    torch = _torch()
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items() if k.startswith(prefix)}


def _finish(model, converted: dict, dtype: str):
    torch = _torch()
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"reference model mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if dtype != "f32":
        model = model.to(getattr(torch, _DTYPES[dtype]))
    return model.eval()


def unet_model(state: dict[str, np.ndarray], shape: SdShape, dtype: str = "f32"):
    """diffusers' UNet2DConditionModel with the UNet weights of the LDM `state` (converted by diffusers)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    cfg = diffusers_unet_config(shape)
    converted = convert_ldm_unet_checkpoint(_tensors(state, LDM_UNET_KEY), cfg)
    return _finish(UNet2DConditionModel(**cfg), converted, dtype)


def vae_model(state: dict[str, np.ndarray], shape: SdShape, dtype: str = "f32"):
    """diffusers' AutoencoderKL with the VAE weights of the LDM `state` (converted by diffusers)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = diffusers_vae_config(shape)
    converted = convert_ldm_vae_checkpoint(_tensors(state, "first_stage_model."), cfg)
    return _finish(AutoencoderKL(**cfg), converted, dtype)


def text_model(state: dict[str, np.ndarray], shape: SdShape, dtype: str = "f32"):
    """transformers' CLIPTextModel with the text-encoder weights of the LDM `state` (converted by diffusers)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in text_config(shape).items() if k not in ("architectures", "transformers_version")}
    model = CLIPTextModel(CLIPTextConfig(**cfg))
    converted = convert_ldm_clip_checkpoint(_tensors(state, "cond_stage_model.transformer."))
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel (as diffusers handles it)
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return _finish(model, converted, dtype)


def _array(model, x: np.ndarray):
    torch = _torch()
    dt = next(model.parameters()).dtype
    return torch.from_numpy(np.ascontiguousarray(x)).to(dt)


def unet_eps(
    state: dict[str, np.ndarray],
    shape: SdShape,
    latents: np.ndarray,
    t: float | np.ndarray,
    context: np.ndarray,
    dtype: str = "f32",
    model=None,
    text_embeds: np.ndarray | None = None,
    time_ids: np.ndarray | None = None,
) -> np.ndarray:
    """The UNet's noise prediction for latents [B, 4, h, w], timestep(s) t and text context [B, 77, ctx] (float32);
    an SDXL UNet also takes the pooled text embedding [B, P] and the size/crop ids [B, 6] (``added_cond_kwargs``)."""
    torch = _torch()
    model = model or unet_model(state, shape, dtype)
    tt = torch.as_tensor(np.asarray(t, np.float64)).to(next(model.parameters()).dtype)
    added = None
    if text_embeds is not None:
        added = {"text_embeds": _array(model, text_embeds), "time_ids": _array(model, time_ids)}
    with torch.no_grad():
        out = model(
            _array(model, latents), tt, encoder_hidden_states=_array(model, context), added_cond_kwargs=added
        ).sample
    return out.float().numpy()


def vae_decode(
    state: dict[str, np.ndarray], shape: SdShape, latents: np.ndarray, dtype: str = "f32", model=None
) -> np.ndarray:
    """The decoder's image [B, 3, 8h, 8w] for latents [B, 4, h, w] as given: NOT divided by the scaling factor
    (a pipeline decodes latents / 0.18215; pass them that way if that is what you compare)."""
    torch = _torch()
    model = model or vae_model(state, shape, dtype)
    with torch.no_grad():
        out = model.decode(_array(model, latents)).sample
    return out.float().numpy()


def vae_encode_mean(
    state: dict[str, np.ndarray], shape: SdShape, image: np.ndarray, dtype: str = "f32", model=None
) -> np.ndarray:
    """The mean of the encoder's latent distribution for an image [B, 3, H, W] in [-1, 1]: not multiplied by the
    scaling factor."""
    torch = _torch()
    model = model or vae_model(state, shape, dtype)
    with torch.no_grad():
        out = model.encode(_array(model, image)).latent_dist.mean
    return out.float().numpy()


def text_hidden(
    state: dict[str, np.ndarray], shape: SdShape, ids: np.ndarray, dtype: str = "f32", model=None
) -> np.ndarray:
    """The text encoder's last hidden state [B, 77, width] for token ids [B, 77] (SD 1.x's context)."""
    torch = _torch()
    model = model or text_model(state, shape, dtype)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).last_hidden_state
    return out.float().numpy()


# --- SD 2.x and SDXL text encoders (transformers' models, weights converted by diffusers' own converters) ----------


def _clip_config(width: int, layers: int, mlp: int, vocab: int, positions: int, act: str, heads: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=positions,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        **extra,
    )


def _unflatten(model, converted: dict) -> dict:
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel (as diffusers handles it)
        return {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


def open_clip_model(state: dict[str, np.ndarray], oc, prefix: str, layers: int, projection: bool):
    """transformers' CLIPTextModel (or ...WithProjection) holding an OpenCLIP tower of ``state`` under ``prefix``,
    with its first ``layers`` layers (SD 2.x's converted encoder drops the last), converted by diffusers."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cfg = _clip_config(oc.width, layers, oc.mlp, oc.vocab, oc.positions, "gelu", oc.width // 64, pad_token_id=0)
    if projection:
        cfg.projection_dim = oc.projection
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    keep = {
        k: v
        for k, v in _tensors(state, prefix).items()
        if not k.startswith(f"{prefix}transformer.resblocks.") or int(k.split(".")[len(prefix.split(".")) + 1]) < layers
    }
    converted = convert_open_clip_checkpoint(model, keep, prefix)
    if not projection:
        converted.pop("text_projection.weight", None)
    return _finish(model, _unflatten(model, converted), "f32")


def sdxl_clip_l_model(state: dict[str, np.ndarray], shape: SdShape):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextModel

    t = shape.text
    model = CLIPTextModel(_clip_config(t.width, t.layers, t.mlp, t.vocab, t.positions, shape.text_act, t.heads))
    converted = convert_ldm_clip_checkpoint(
        _tensors(state, "conditioner.embedders.0.transformer."), "conditioner.embedders.0.transformer."
    )
    return _finish(model, _unflatten(model, converted), "f32")
