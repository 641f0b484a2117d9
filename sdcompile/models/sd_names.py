"""Stable Diffusion 1.x/2.x checkpoint naming: diffusers state-dict keys <-> original (LDM) single-file keys.

The lifter reads LDM names; a diffusers directory is read by renaming its keys with these maps. They are the inverse
of diffusers' own `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` (diffusers.loaders.single_file_utils),
computed from a diffusers `config.json` dict alone, so no torch or diffusers import is needed; the tests check them
against those converters key for key.

Keys are given WITHOUT the single-file prefixes below (an LDM file holds `UNET_PREFIX + ldm_key`). The text encoder
needs no map: LDM files hold transformers' `text_model.*` names under `cond_stage_model.transformer.`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# The whole prefix in front of CLIP's `embeddings.*` / `encoder.layers.*` / `final_layer_norm.*`.
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
# transformers' (pre-5.6, and the published SD repositories') key prefix inside text_encoder/model.safetensors.
TEXT_DIFFUSERS_PREFIX = "text_model."

# VAE mid-block attention: LDM files hold these as 1x1 convolutions [C, C, 1, 1]; diffusers as linears [C, C].
VAE_ATTN_LDM_WEIGHTS = ("q.weight", "k.weight", "v.weight", "proj_out.weight")
VAE_CONV1X1_KEYS: frozenset[str] = frozenset(
    f"{part}.mid.attn_1.{w}" for part in ("encoder", "decoder") for w in VAE_ATTN_LDM_WEIGHTS
)

_UNET_RESNET = (  # diffusers ResnetBlock2D -> LDM ResBlock
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
)
_VAE_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"))
_VAE_ATTN = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)
_WB = ("weight", "bias")


def _wb(d: str, ldm: str) -> Iterator[tuple[str, str]]:
    for p in _WB:
        yield f"{d}.{p}", f"{ldm}.{p}"


def _per_block(value: int | list[int] | tuple[int, ...], n: int) -> list[int]:
    return [int(value)] * n if isinstance(value, int) else [int(v) for v in value]


def _unet_resnet(d: str, ldm: str, shortcut: bool) -> Iterator[tuple[str, str]]:
    for dn, ln in _UNET_RESNET:
        yield from _wb(f"{d}.{dn}", f"{ldm}.{ln}")
    if shortcut:
        yield from _wb(f"{d}.conv_shortcut", f"{ldm}.skip_connection")


def _transformer(d: str, ldm: str, depth: int) -> Iterator[tuple[str, str]]:
    """diffusers Transformer2DModel and LDM SpatialTransformer share their inner names: only the prefix changes."""
    yield from _wb(f"{d}.norm", f"{ldm}.norm")
    yield from _wb(f"{d}.proj_in", f"{ldm}.proj_in")
    for t in range(depth):
        b = f"transformer_blocks.{t}"
        for attn in ("attn1", "attn2"):
            for qkv in ("to_q", "to_k", "to_v"):  # no bias in SD's attention projections
                yield f"{d}.{b}.{attn}.{qkv}.weight", f"{ldm}.{b}.{attn}.{qkv}.weight"
            yield from _wb(f"{d}.{b}.{attn}.to_out.0", f"{ldm}.{b}.{attn}.to_out.0")
        for sub in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"):
            yield from _wb(f"{d}.{b}.{sub}", f"{ldm}.{b}.{sub}")
    yield from _wb(f"{d}.proj_out", f"{ldm}.proj_out")


def _unet_pairs(config: dict) -> Iterator[tuple[str, str]]:
    boc = [int(c) for c in config["block_out_channels"]]
    n = len(boc)
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    layers = _per_block(config.get("layers_per_block", 2), n)
    depth = _per_block(config.get("transformer_layers_per_block", 1) or 1, n)
    # diffusers builds the up path with depths and layer counts reversed (reverse_transformer_layers_per_block)
    up_layers = list(reversed(layers))
    if config.get("reverse_transformer_layers_per_block") is not None:
        raise ValueError("reverse_transformer_layers_per_block is not an SD 1.x/2.x/XL layout")
    up_depth = list(reversed(depth))
    if len(set(layers)) != 1:
        # LDM's num_res_blocks is one number; diffusers' own converter assumes it too (block index = i // (L + 1)).
        raise ValueError(f"layers_per_block {layers} differs between blocks; LDM naming needs one value")
    per = layers[0] + 1  # LDM index stride of one level (its resnets plus the downsampler)

    yield from _wb("time_embedding.linear_1", "time_embed.0")
    yield from _wb("time_embedding.linear_2", "time_embed.2")
    if config.get("class_embed_type") in ("timestep", "projection"):
        yield from _wb("class_embedding.linear_1", "label_emb.0.0")
        yield from _wb("class_embedding.linear_2", "label_emb.0.2")
    if config.get("addition_embed_type") == "text_time":
        yield from _wb("add_embedding.linear_1", "label_emb.0.0")
        yield from _wb("add_embedding.linear_2", "label_emb.0.2")
    if config.get("num_class_embeds") is not None:
        yield "class_embedding.weight", "label_emb.weight"
    yield from _wb("conv_in", "input_blocks.0.0")

    ch = boc[0]
    for b, btype in enumerate(down_types):
        out = boc[b]
        attn = btype.startswith("CrossAttn")
        for j in range(layers[b]):
            i = 1 + b * per + j
            yield from _unet_resnet(f"down_blocks.{b}.resnets.{j}", f"input_blocks.{i}.0", shortcut=ch != out)
            ch = out
            if attn:
                yield from _transformer(f"down_blocks.{b}.attentions.{j}", f"input_blocks.{i}.1", depth[b])
        if b != n - 1:
            yield from _wb(f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{(b + 1) * per}.0.op")

    mid_type = config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    if mid_type != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"mid_block_type {mid_type!r}: only SD's UNetMidBlock2DCrossAttn has LDM names here")
    yield from _unet_resnet("mid_block.resnets.0", "middle_block.0", shortcut=False)
    yield from _transformer("mid_block.attentions.0", "middle_block.1", depth[-1])
    yield from _unet_resnet("mid_block.resnets.1", "middle_block.2", shortcut=False)

    rev = list(reversed(boc))
    for b, btype in enumerate(up_types):
        out = rev[b]
        attn = btype.startswith("CrossAttn")
        for j in range(up_layers[b] + 1):
            i = b * per + j
            # every up resnet takes a concatenated skip, so its input width always differs from its output width
            yield from _unet_resnet(f"up_blocks.{b}.resnets.{j}", f"output_blocks.{i}.0", shortcut=True)
            if attn:
                yield from _transformer(f"up_blocks.{b}.attentions.{j}", f"output_blocks.{i}.1", up_depth[b])
        if b != n - 1:
            last = b * per + up_layers[b]
            yield from _wb(f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{last}.{2 if attn else 1}.conv")

    yield from _wb("conv_norm_out", "out.0")
    yield from _wb("conv_out", "out.2")


def unet_diffusers_to_ldm(config: dict) -> dict[str, str]:
    """Every key of a diffusers `UNet2DConditionModel` state dict (for this config.json dict) -> its LDM key.

    LDM keys are relative to `UNET_PREFIX`. Tensors keep their shapes under both names.
    """
    out: dict[str, str] = {}
    for d, ldm in _unet_pairs(config):
        if d in out:
            raise AssertionError(f"duplicate diffusers key {d}")
        out[d] = ldm
    if len(set(out.values())) != len(out):
        raise AssertionError("two diffusers keys map to one LDM key")
    return out


def _vae_resnet(d: str, ldm: str, shortcut: bool) -> Iterator[tuple[str, str]]:
    for dn, ln in _VAE_RESNET:
        yield from _wb(f"{d}.{dn}", f"{ldm}.{ln}")
    if shortcut:
        yield from _wb(f"{d}.conv_shortcut", f"{ldm}.nin_shortcut")


def _vae_mid(part: str, add_attention: bool) -> Iterator[tuple[str, str]]:
    yield from _vae_resnet(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", shortcut=False)
    if add_attention:
        for dn, ln in _VAE_ATTN:
            yield from _wb(f"{part}.mid_block.attentions.0.{dn}", f"{part}.mid.attn_1.{ln}")
    yield from _vae_resnet(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", shortcut=False)


def _vae_pairs(config: dict) -> Iterator[tuple[str, str]]:
    boc = [int(c) for c in config["block_out_channels"]]
    n = len(boc)
    layers = int(config.get("layers_per_block", 2))
    add_attention = bool(config.get("mid_block_add_attention", True))

    yield from _wb("encoder.conv_in", "encoder.conv_in")
    ch = boc[0]
    for i in range(n):
        for j in range(layers):
            yield from _vae_resnet(
                f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", shortcut=ch != boc[i]
            )
            ch = boc[i]
        if i != n - 1:
            yield from _wb(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    yield from _vae_mid("encoder", add_attention)
    yield from _wb("encoder.conv_norm_out", "encoder.norm_out")
    yield from _wb("encoder.conv_out", "encoder.conv_out")

    if config.get("use_quant_conv", True):
        yield from _wb("quant_conv", "quant_conv")
    if config.get("use_post_quant_conv", True):
        yield from _wb("post_quant_conv", "post_quant_conv")

    yield from _wb("decoder.conv_in", "decoder.conv_in")
    yield from _vae_mid("decoder", add_attention)
    rev = list(reversed(boc))
    ch = rev[0]
    for i in range(n):
        level = n - 1 - i  # LDM numbers decoder levels by resolution (up.0 is the full-size one), diffusers by order
        for j in range(layers + 1):
            yield from _vae_resnet(
                f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}", shortcut=ch != rev[i]
            )
            ch = rev[i]
        if i != n - 1:
            yield from _wb(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv")
    yield from _wb("decoder.conv_norm_out", "decoder.norm_out")
    yield from _wb("decoder.conv_out", "decoder.conv_out")


def vae_diffusers_to_ldm(config: dict) -> dict[str, str]:
    """Every key of a diffusers `AutoencoderKL` state dict (for this config.json dict) -> its LDM key.

    LDM keys are relative to `VAE_PREFIX`. The LDM keys in `VAE_CONV1X1_KEYS` hold [C, C, 1, 1] where diffusers
    holds [C, C] (see `vae_ldm_shape` / `vae_diffusers_shape`); every other tensor has one shape under both names.
    """
    out = dict(_vae_pairs(config))
    if len(set(out.values())) != len(out):
        raise AssertionError("two diffusers keys map to one LDM key")
    return out


_VAE_ATTN_NAMES = dict(_VAE_ATTN)
_VAE_RESNET_PART = re.compile(r"^(norm1|conv1|norm2|conv2|conv_shortcut)\.(weight|bias)$")
_VAE_BLOCK = re.compile(
    r"^(?P<part>encoder|decoder)\.(?:"
    r"(?P<kind>down_blocks|up_blocks)\.(?P<level>\d+)\.(?:resnets\.(?P<j>\d+)|(?P<sampler>downsamplers|upsamplers)\.0\.conv)"
    r"|mid_block\.(?:resnets\.(?P<mid>[01])|(?P<attn>attentions)\.0))\.(?P<rest>.+)$"
)
_VAE_TOP = re.compile(
    r"^(?:(?:encoder|decoder)\.(?:conv_in|conv_out|conv_norm_out)|quant_conv|post_quant_conv)\.(?:weight|bias)$"
)


def vae_key_to_ldm(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key -> its LDM key, knowing only the number of resolution levels.

    For files without a config.json (a standalone diffusers-named VAE): unlike `vae_diffusers_to_ldm`, this needs no
    channel widths, because it renames the keys that are there instead of listing the keys that should be.
    """
    bad = ValueError(f"{key!r} is not a diffusers AutoencoderKL key")
    if _VAE_TOP.match(key):
        return key.replace("conv_norm_out", "norm_out")
    m = _VAE_BLOCK.match(key)
    if m is None:
        raise bad
    part, rest = m["part"], m["rest"]
    if m["attn"]:
        sub, _, p = rest.rpartition(".")
        if sub not in _VAE_ATTN_NAMES or p not in _WB:
            raise bad
        return f"{part}.mid.attn_1.{_VAE_ATTN_NAMES[sub]}.{p}"
    if m["sampler"]:
        if rest not in _WB or (part, m["kind"], m["sampler"]) not in (
            ("encoder", "down_blocks", "downsamplers"),
            ("decoder", "up_blocks", "upsamplers"),
        ):
            raise bad
    elif not _VAE_RESNET_PART.match(rest):
        raise bad
    rest = rest.replace("conv_shortcut", "nin_shortcut")
    if m["mid"] is not None:
        return f"{part}.mid.block_{int(m['mid']) + 1}.{rest}"
    if (part == "encoder") != (m["kind"] == "down_blocks"):
        raise bad
    # LDM numbers decoder levels by resolution (up.0 is the full-size one), diffusers by order of use
    level = int(m["level"]) if part == "encoder" else levels - 1 - int(m["level"])
    if m["sampler"]:
        return f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.{'downsample' if part == 'encoder' else 'upsample'}.conv.{rest}"
    return f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.block.{m['j']}.{rest}"


def unet_ldm_to_diffusers(config: dict) -> dict[str, str]:
    """The inverse of `unet_diffusers_to_ldm`: LDM key (without `UNET_PREFIX`) -> diffusers key."""
    return {v: k for k, v in unet_diffusers_to_ldm(config).items()}


def vae_ldm_to_diffusers(config: dict) -> dict[str, str]:
    """The inverse of `vae_diffusers_to_ldm`: LDM key (without `VAE_PREFIX`) -> diffusers key."""
    return {v: k for k, v in vae_diffusers_to_ldm(config).items()}


def vae_ldm_shape(ldm_key: str, diffusers_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an LDM file gives a VAE tensor that diffusers holds with `diffusers_shape`."""
    if ldm_key in VAE_CONV1X1_KEYS and len(diffusers_shape) == 2:
        return (*diffusers_shape, 1, 1)
    return tuple(diffusers_shape)


def vae_diffusers_shape(ldm_key: str, ldm_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape diffusers gives a VAE tensor that an LDM file holds with `ldm_shape` (either 1x1-conv or linear)."""
    if ldm_key in VAE_CONV1X1_KEYS and len(ldm_shape) == 4:
        return tuple(ldm_shape[:2])
    return tuple(ldm_shape)
