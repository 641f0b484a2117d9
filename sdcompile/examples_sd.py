"""Built-in Stable Diffusion 1.x checkpoints with random weights, in every format people download SD in.

No package ships Stable Diffusion weights, so examples and tests generate them: numpy only (no torch), from
`np.random.default_rng`, so the same seed gives the same bytes on every machine. The weights live under the original
(LDM) single-file names; the writers produce

- `safetensors`: one LDM single file (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`);
- `ckpt`: the same state dict as a torch.save zip pickle `{"state_dict": {...}}`, written without torch;
- `gguf`: what stable-diffusion.cpp's `convert` writes from that single file (same names, its tensor-type rules);
- `diffusers`: a diffusers directory (`unet/`, `vae/`, `text_encoder/`, `scheduler/`, `model_index.json`);
- `separate`: the three files stable-diffusion.cpp takes as `--diffusion-model`, `--vae` and `--clip-l`.

Initialisation keeps activations in a realistic range through the whole UNet and VAE: weights are
normal(0, gain / sqrt(fan_in)), the last projection of every residual branch with a smaller gain (so the residual
stream grows slowly, as in a trained model), the time-embedding and query/key projections with a larger one (so the
timestep and the prompt visibly change the noise prediction, even through 32-group norms of 32 channels), norm
scales 1 + N(0, 0.1), biases N(0, 0.02), and nothing zero (a zero-initialised conv_out or proj_out would hide bugs
in the code that uses it). Measured with diffusers (seed 0, t=500): tiny UNet block outputs std 0.7-1.5, eps std
0.6; SD 1.5 size at 64x64 latents 1.0-2.0, eps std 0.6; VAE decodes std 0.5 with ~7% of pixels beyond [-1, 1].
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.examples import ClipTextShape, clip_text_state
from sdcompile.models import sd_names

FORMATS = ("safetensors", "ckpt", "gguf", "diffusers", "separate")
# Files of the `separate` format, named for the stable-diffusion.cpp option that takes each.
SEPARATE_FILES = {"diffusion_model": "unet.safetensors", "vae": "vae.safetensors", "clip_l": "clip_l.safetensors"}
# Metadata keys written when `metadata=True` (safetensors __metadata__, GGUF key/values, ckpt top-level entries).
# The text encoder's keys are among those sdcompile.models.clip_text reads.
META_TEXT_HEADS = "text_encoder.num_attention_heads"
META_TEXT_ACT = "text_encoder.hidden_act"
META_UNET_HEADS = "unet.num_attention_heads"

RESIDUAL_GAIN = 0.5  # last projection of each residual branch (conv2, to_out, ff.net.2, proj_out)
EMB_GAIN = 2.0  # time-embedding projections: the timestep must visibly change the output
QK_GAIN = 2.0  # query/key projections: attention as peaked as a trained model's, so the context matters
NORM_STD = 0.1
BIAS_STD = 0.02


@dataclass(frozen=True)
class UNetShape:
    block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    # per level: CrossAttnDownBlock2D/CrossAttnUpBlock2D (True) or DownBlock2D/UpBlock2D (False), SD1's layout
    attention: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    transformer_depth: int | tuple[int, ...] = 1  # one number, or one per level (SDXL: 0, 2, 10)
    heads: int = 8  # SD1 uses 8 heads at every level (stable-diffusion.cpp hard-codes it)
    context_dim: int = 32
    groups: int = 32
    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64  # latent size the model was trained at (config.json only)
    # SD 2.x / SDXL: channels per attention head instead of a fixed head count, linear proj_in/proj_out
    head_channels: int | None = None
    linear_proj: bool = False
    # SDXL: label_emb's input width (the pooled text embedding + 6 size/crop ids of `time_id_dim` each); 0: none
    adm_in: int = 0
    time_id_dim: int = 256
    mid_depth: int | None = None  # the middle block's transformer depth (default: the deepest level's)

    def depth(self, level: int) -> int:
        d = self.transformer_depth
        return d if isinstance(d, int) else d[level]

    def middle_depth(self) -> int:
        if self.mid_depth is not None:
            return self.mid_depth
        return self.depth(len(self.block_out_channels) - 1)

    def heads_at(self, level: int) -> int:
        if self.head_channels is None:
            return self.heads
        return max(1, self.block_out_channels[level] // self.head_channels)


@dataclass(frozen=True)
class VaeShape:
    block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    layers_per_block: int = 2
    latent_channels: int = 4
    groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    scaling_factor: float = 0.18215
    sample_size: int = 512


@dataclass(frozen=True)
class SdShape:
    name: str
    unet: UNetShape = field(default_factory=UNetShape)
    vae: VaeShape = field(default_factory=VaeShape)
    text: ClipTextShape = field(default_factory=ClipTextShape)
    text_act: str = "quick_gelu"
    # "sd1": CLIP-L under cond_stage_model.transformer; "sd2": OpenCLIP-H (`open_clip`) under cond_stage_model.model;
    # "sdxl": CLIP-L (`text`) under conditioner.embedders.0 and OpenCLIP-bigG (`open_clip`) under embedders.1
    family: str = "sd1"
    open_clip: Any = None  # sdcompile.examples_clip.OpenClipShape


# SD 1.x topology with tiny widths. The text encoder keeps CLIP's vocabulary so real tokenizer ids are valid.
TINY_SD = SdShape(
    name="tiny-sd1",
    unet=UNetShape(),
    vae=VaeShape(),
    text=ClipTextShape(vocab=49408, width=32, layers=2, heads=2, mlp=128, positions=77),
)
# The full-size SD 1.5 architecture.
SD15 = SdShape(
    name="sd15",
    unet=UNetShape(block_out_channels=(320, 640, 1280, 1280), context_dim=768),
    vae=VaeShape(block_out_channels=(128, 256, 512, 512)),
    text=ClipTextShape(vocab=49408, width=768, layers=12, heads=12, mlp=3072, positions=77),
)
# SD 2.x's UNet topology, tiny: linear proj_in/proj_out and 64 channels per head (so 1 and 2 heads here).
TINY_SD2_UNET = UNetShape(
    block_out_channels=(64, 128, 128),
    attention=(True, True, False),
    layers_per_block=1,
    head_channels=64,
    linear_proj=True,
    context_dim=48,
)
# SDXL's UNet topology, tiny: no attention at the first level, transformer depths growing with the level (SDXL:
# 0, 2, 10), the added conditioning of a pooled text embedding (here 64 wide) and six size/crop ids of 256 each.
TINY_SDXL_UNET = UNetShape(
    block_out_channels=(64, 128, 128),
    attention=(False, True, True),
    layers_per_block=1,
    transformer_depth=(0, 1, 2),
    head_channels=64,
    linear_proj=True,
    context_dim=128,
    adm_in=64 + 6 * 256,
)
SDXL_UNET = UNetShape(
    block_out_channels=(320, 640, 1280),
    attention=(False, True, True),
    transformer_depth=(0, 2, 10),
    head_channels=64,
    linear_proj=True,
    context_dim=2048,
    adm_in=1280 + 6 * 256,
    sample_size=128,
)


def _open_clip(**kw):
    from sdcompile.examples_clip import OpenClipShape

    return OpenClipShape(**kw)


# Tiny SD 2.x and SDXL: CLIP's vocabulary and 77 positions (real tokenizer ids), 64 channels per text head as the
# released encoders; SD 2.x runs 2 of its OpenCLIP's 3 layers (the penultimate), SDXL's context is 64 + 64 wide.
TINY_SD2 = SdShape(
    name="tiny-sd2",
    unet=dataclasses.replace(TINY_SD2_UNET, context_dim=64),
    vae=VaeShape(),
    family="sd2",
    open_clip=_open_clip(vocab=49408, width=64, layers=3, mlp=128, positions=77, projection=64),
)
TINY_SDXL = SdShape(
    name="tiny-sdxl",
    unet=TINY_SDXL_UNET,
    vae=VaeShape(scaling_factor=0.13025),
    text=ClipTextShape(vocab=49408, width=64, layers=2, heads=1, mlp=128, positions=77),
    family="sdxl",
    open_clip=_open_clip(vocab=49408, width=64, layers=3, mlp=128, positions=77, projection=64),
)
# The full-size SDXL base architecture (CLIP-L + OpenCLIP-bigG, 2.6 G UNet parameters).
SDXL = SdShape(
    name="sdxl",
    unet=SDXL_UNET,
    vae=VaeShape(block_out_channels=(128, 256, 512, 512), scaling_factor=0.13025, sample_size=1024),
    text=ClipTextShape(vocab=49408, width=768, layers=12, heads=12, mlp=3072, positions=77),
    family="sdxl",
    open_clip=_open_clip(vocab=49408, width=1280, layers=32, mlp=5120, positions=77, projection=1280),
)
SHAPES = {s.name: s for s in (TINY_SD, SD15, TINY_SD2, TINY_SDXL, SDXL)}


# ---------------------------------------------------------------------------------------------------------------
# diffusers / transformers configs (config.json contents, keyed and formatted as the published SD 1.5 repository)


def unet_config(shape: SdShape) -> dict:
    u = shape.unet
    n = len(u.block_out_channels)
    cfg = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.6.0",
        "act_fn": "silu",
        # diffusers' historical misnomer: for SD1 this number is the head COUNT (num_attention_heads = it)
        "attention_head_dim": u.heads,
        "block_out_channels": list(u.block_out_channels),
        "center_input_sample": False,
        "cross_attention_dim": u.context_dim,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.attention],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": u.in_channels,
        "layers_per_block": u.layers_per_block,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": u.groups,
        "out_channels": u.out_channels,
        "sample_size": u.sample_size,
        "transformer_layers_per_block": u.transformer_depth,
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention)],
    }
    if u.head_channels is not None:
        # SD 2.x / SDXL configs: the same misnomer, a head count per level (channels / 64)
        cfg["attention_head_dim"] = [u.heads_at(i) for i in range(n)]
    if u.linear_proj:
        cfg["use_linear_projection"] = True
    if not isinstance(u.transformer_depth, int):
        # diffusers wants at least one layer per entry (levels without attention ignore theirs)
        cfg["transformer_layers_per_block"] = [max(1, u.depth(i)) for i in range(n)]
    if u.adm_in:
        cfg.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=u.time_id_dim,
            projection_class_embeddings_input_dim=u.adm_in,
        )
    return cfg


def vae_config(shape: SdShape) -> dict:
    v = shape.vae
    n = len(v.block_out_channels)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.6.0",
        "act_fn": "silu",
        "block_out_channels": list(v.block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "in_channels": v.in_channels,
        "latent_channels": v.latent_channels,
        "layers_per_block": v.layers_per_block,
        "norm_num_groups": v.groups,
        "out_channels": v.out_channels,
        "sample_size": v.sample_size,
        "scaling_factor": v.scaling_factor,
        "up_block_types": ["UpDecoderBlock2D"] * n,
    }


def text_config(shape: SdShape) -> dict:
    t = shape.text
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        # CLIP's real special-token ids (the published SD 1.5 config says 0/2, an artefact of its conversion)
        "bos_token_id": 49406,
        "dropout": 0.0,
        "eos_token_id": 49407,
        "hidden_act": shape.text_act,
        "hidden_size": t.width,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": t.mlp,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": t.positions,
        "model_type": "clip_text_model",
        "num_attention_heads": t.heads,
        "num_hidden_layers": t.layers,
        "pad_token_id": 49407,
        "projection_dim": t.width,
        "torch_dtype": "float32",
        "transformers_version": "4.22.0.dev0",
        "vocab_size": t.vocab,
    }


# SD 1.5's published scheduler/scheduler_config.json (no timestep_spacing: each scheduler takes its own default).
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    # not written: no tokenizer files, no safety checker (what save_pretrained records for a component set to None)
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": [None, None],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def sd_metadata(shape: SdShape) -> dict[str, int | str]:
    """Hyperparameters that tensor shapes do not tell: the head counts and the text encoder's activation (SD 1.x;
    SD 2.x and SDXL files carry none: 64 channels per head, OpenCLIP's gelu)."""
    if shape.family != "sd1":
        return {}
    return {
        META_TEXT_HEADS: shape.text.heads,
        META_TEXT_ACT: shape.text_act,
        META_UNET_HEADS: shape.unet.heads,
    }


# ---------------------------------------------------------------------------------------------------------------
# Weights


class _Gen:
    """Appends tensors in module order (the order torch's state_dict() gives), each from the one generator."""

    def __init__(self, rng: np.random.Generator | None, prefix: str, out: dict | None = None) -> None:
        self.rng, self.prefix = rng, prefix  # rng None: shapes only (zero-stride views, no memory)
        # out: where tensors go (a dict, or a sink that writes each one to a file as it comes)
        self.out: dict[str, np.ndarray] = {} if out is None else out

    def _normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        if self.rng is None:
            return np.broadcast_to(np.float32(0), shape)
        # float32 draws: deterministic for a seed, and half the memory of float64 at SD 1.5 size
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def _bias(self, name: str, n: int) -> None:
        self.out[self.prefix + name + ".bias"] = self._normal((n,), BIAS_STD)

    def conv(self, name: str, cin: int, cout: int, k: int, gain: float = 1.0) -> None:
        self.out[self.prefix + name + ".weight"] = self._normal((cout, cin, k, k), gain / math.sqrt(cin * k * k))
        self._bias(name, cout)

    def linear(self, name: str, cin: int, cout: int, gain: float = 1.0, bias: bool = True) -> None:
        self.out[self.prefix + name + ".weight"] = self._normal((cout, cin), gain / math.sqrt(cin))
        if bias:
            self._bias(name, cout)

    def norm(self, name: str, c: int) -> None:
        self.out[self.prefix + name + ".weight"] = np.float32(1) + self._normal((c,), NORM_STD)
        self._bias(name, c)

    def sub(self, rng_prefix: str) -> _Gen:
        return _Gen(self.rng, rng_prefix)


def _unet_resblock(g: _Gen, name: str, cin: int, cout: int, emb: int) -> None:
    g.norm(f"{name}.in_layers.0", cin)
    g.conv(f"{name}.in_layers.2", cin, cout, 3)
    g.linear(f"{name}.emb_layers.1", emb, cout, EMB_GAIN)
    g.norm(f"{name}.out_layers.0", cout)
    g.conv(f"{name}.out_layers.3", cout, cout, 3, RESIDUAL_GAIN)
    if cin != cout:
        g.conv(f"{name}.skip_connection", cin, cout, 1)


def _spatial_transformer(g: _Gen, name: str, c: int, ctx: int, depth: int, linear: bool = False) -> None:
    g.norm(f"{name}.norm", c)
    if linear:  # SD 2.x / SDXL: use_linear_in_transformer
        g.linear(f"{name}.proj_in", c, c)
    else:
        g.conv(f"{name}.proj_in", c, c, 1)
    for t in range(depth):
        b = f"{name}.transformer_blocks.{t}"
        _attention(g, f"{b}.attn1", c, c)
        g.linear(f"{b}.ff.net.0.proj", c, 8 * c)  # GEGLU: value and gate halves of 4c each
        g.linear(f"{b}.ff.net.2", 4 * c, c, RESIDUAL_GAIN)
        _attention(g, f"{b}.attn2", c, ctx)
        for i in (1, 2, 3):
            g.norm(f"{b}.norm{i}", c)
    if linear:
        g.linear(f"{name}.proj_out", c, c, RESIDUAL_GAIN)
    else:
        g.conv(f"{name}.proj_out", c, c, 1, RESIDUAL_GAIN)


def _attention(g: _Gen, name: str, c: int, kv_in: int) -> None:
    g.linear(f"{name}.to_q", c, c, QK_GAIN, bias=False)
    g.linear(f"{name}.to_k", kv_in, c, QK_GAIN, bias=False)
    g.linear(f"{name}.to_v", kv_in, c, bias=False)
    g.linear(f"{name}.to_out.0", c, c, RESIDUAL_GAIN)


def unet_state(shape: SdShape, rng: np.random.Generator | None, out: dict | None = None) -> dict[str, np.ndarray]:
    """The UNet's weights under LDM names (with `model.diffusion_model.`), in the order LDM's module registers them."""
    u = shape.unet
    boc, n, nres = u.block_out_channels, len(u.block_out_channels), u.layers_per_block
    mc = boc[0]
    emb = 4 * mc
    g = _Gen(rng, sd_names.UNET_PREFIX, out)
    g.linear("time_embed.0", mc, emb, EMB_GAIN)
    g.linear("time_embed.2", emb, emb, EMB_GAIN)
    if u.adm_in:  # SDXL's added conditioning (pooled text embedding, size and crop ids)
        g.linear("label_emb.0.0", u.adm_in, emb, EMB_GAIN)
        g.linear("label_emb.0.2", emb, emb, EMB_GAIN)
    g.conv("input_blocks.0.0", u.in_channels, mc, 3)
    skips, ch, idx = [mc], mc, 1
    for level, out in enumerate(boc):
        for _ in range(nres):
            _unet_resblock(g, f"input_blocks.{idx}.0", ch, out, emb)
            ch = out
            if u.attention[level]:
                _spatial_transformer(g, f"input_blocks.{idx}.1", ch, u.context_dim, u.depth(level), u.linear_proj)
            skips.append(ch)
            idx += 1
        if level != n - 1:
            g.conv(f"input_blocks.{idx}.0.op", ch, ch, 3)
            skips.append(ch)
            idx += 1
    _unet_resblock(g, "middle_block.0", ch, ch, emb)
    _spatial_transformer(g, "middle_block.1", ch, u.context_dim, u.middle_depth(), u.linear_proj)
    _unet_resblock(g, "middle_block.2", ch, ch, emb)
    idx = 0
    for level in reversed(range(n)):
        out = boc[level]
        for j in range(nres + 1):
            _unet_resblock(g, f"output_blocks.{idx}.0", ch + skips.pop(), out, emb)
            ch = out
            sub = 1
            if u.attention[level]:
                _spatial_transformer(g, f"output_blocks.{idx}.1", ch, u.context_dim, u.depth(level), u.linear_proj)
                sub = 2
            if level != 0 and j == nres:
                g.conv(f"output_blocks.{idx}.{sub}.conv", ch, ch, 3)
            idx += 1
    g.norm("out.0", ch)
    g.conv("out.2", ch, u.out_channels, 3)
    return g.out


def _vae_resblock(g: _Gen, name: str, cin: int, cout: int) -> None:
    g.norm(f"{name}.norm1", cin)
    g.conv(f"{name}.conv1", cin, cout, 3)
    g.norm(f"{name}.norm2", cout)
    g.conv(f"{name}.conv2", cout, cout, 3, RESIDUAL_GAIN)
    if cin != cout:
        g.conv(f"{name}.nin_shortcut", cin, cout, 1)


def _vae_mid(g: _Gen, part: str, c: int) -> None:
    _vae_resblock(g, f"{part}.mid.block_1", c, c)
    g.norm(f"{part}.mid.attn_1.norm", c)
    for proj in ("q", "k", "v"):  # 1x1 convolutions in LDM files
        g.conv(f"{part}.mid.attn_1.{proj}", c, c, 1)
    g.conv(f"{part}.mid.attn_1.proj_out", c, c, 1, RESIDUAL_GAIN)
    _vae_resblock(g, f"{part}.mid.block_2", c, c)


def vae_state(shape: SdShape, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """The VAE's weights under LDM names (with `first_stage_model.`; mid-block attention as 1x1 convolutions)."""
    v = shape.vae
    boc, n, nres, z = v.block_out_channels, len(v.block_out_channels), v.layers_per_block, v.latent_channels
    g = _Gen(rng, sd_names.VAE_PREFIX)
    g.conv("encoder.conv_in", v.in_channels, boc[0], 3)
    ch = boc[0]
    for i in range(n):
        for j in range(nres):
            _vae_resblock(g, f"encoder.down.{i}.block.{j}", ch, boc[i])
            ch = boc[i]
        if i != n - 1:
            g.conv(f"encoder.down.{i}.downsample.conv", ch, ch, 3)
    _vae_mid(g, "encoder", ch)
    g.norm("encoder.norm_out", ch)
    g.conv("encoder.conv_out", ch, 2 * z, 3)  # mean and log-variance
    # The decoder's levels are created deepest first but registered by index (up.0 = full size): build them in
    # creation order, then emit them in index order as a state_dict() lists them.
    dec = g.sub(sd_names.VAE_PREFIX)
    ch = boc[-1]
    dec.conv("decoder.conv_in", z, ch, 3)
    _vae_mid(dec, "decoder", ch)
    levels: dict[int, dict[str, np.ndarray]] = {}
    for level in reversed(range(n)):
        lg = g.sub(sd_names.VAE_PREFIX)
        for j in range(nres + 1):
            _vae_resblock(lg, f"decoder.up.{level}.block.{j}", ch, boc[level])
            ch = boc[level]
        if level != 0:
            lg.conv(f"decoder.up.{level}.upsample.conv", ch, ch, 3)
        levels[level] = lg.out
    for level in range(n):
        dec.out.update(levels[level])
    dec.norm("decoder.norm_out", ch)
    dec.conv("decoder.conv_out", ch, v.out_channels, 3)
    g.out.update(dec.out)
    g.conv("quant_conv", 2 * z, 2 * z, 1)
    g.conv("post_quant_conv", z, z, 1)
    return g.out


def text_state(shape: SdShape, seed: int) -> dict[str, np.ndarray]:
    """The text encoder(s) under LDM names: `sdcompile.examples`' CLIP initialisation, so its tests' encoder is this
    one; SD 2.x's and SDXL's OpenCLIP tower as `sdcompile.examples_clip` makes it."""
    if shape.family == "sd1":
        return {sd_names.TEXT_PREFIX + k: v for k, v in clip_text_state(shape.text, seed).items()}
    from sdcompile import examples_clip as C

    if shape.family == "sd2":
        return C.open_clip_state(shape.open_clip, seed, C.SD2_PREFIX)
    clip_l = {C.SDXL_L_PREFIX + k: v for k, v in clip_text_state(shape.text, seed).items()}
    return clip_l | C.open_clip_state(shape.open_clip, seed + 1, C.SDXL_G_PREFIX)


def text_shapes(shape: SdShape) -> dict[str, tuple[int, ...]]:
    """The text encoder's tensor shapes under LDM names, without generating weights."""
    t = shape.text
    d, f = t.width, t.mlp
    out = {
        "embeddings.token_embedding.weight": (t.vocab, d),
        "embeddings.position_embedding.weight": (t.positions, d),
    }
    for i in range(t.layers):
        p = f"encoder.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            out[p + ln + ".weight"] = out[p + ln + ".bias"] = (d,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{proj}.weight"], out[p + f"self_attn.{proj}.bias"] = (d, d), (d,)
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = (f, d), (f,)
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = (d, f), (d,)
    out["final_layer_norm.weight"] = out["final_layer_norm.bias"] = (d,)
    return {sd_names.TEXT_PREFIX + k: v for k, v in out.items()}


def sd_shapes(shape: SdShape = TINY_SD) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of `sd_state(shape)`, in the same order, without generating any weights
    (SD 1.5 size in milliseconds)."""
    out = {k: v.shape for k, v in unet_state(shape, None).items()}
    out.update({k: v.shape for k, v in vae_state(shape, None).items()})
    if shape.family == "sd1":
        out.update(text_shapes(shape))
    else:  # the text towers are small next to the UNet: generate them for their shapes
        out.update({k: v.shape for k, v in text_state(shape, 0).items()})
    return out


def sd_state(shape: SdShape = TINY_SD, seed: int = 0) -> dict[str, np.ndarray]:
    """A whole SD 1.x checkpoint, float32, under LDM single-file names: UNet, VAE, then text encoder.

    Each part has its own generator derived from `seed`, so changing one part's shape leaves the others' weights as
    they were.
    """
    state = unet_state(shape, np.random.default_rng([seed, 1]))
    state.update(vae_state(shape, np.random.default_rng([seed, 2])))
    state.update(text_state(shape, seed))
    return state


class _StreamingWriter(dict):
    """A dict that writes each tensor to an open file as it is set, in the order the header laid out, keeping none."""

    def __init__(self, f, order: list[str], np_dtype: str) -> None:
        super().__init__()
        self.f, self.order, self.np_dtype, self.i = f, order, np_dtype, 0

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        if self.order[self.i] != name:
            raise AssertionError(f"tensor {name} out of order (expected {self.order[self.i]})")
        self.f.write(np.ascontiguousarray(value, dtype=self.np_dtype).tobytes())
        self.i += 1


def write_sd_streaming(path: Path, shape: SdShape, seed: int = 0, dtype: str = "f16") -> Path:
    """`write_sd(..., "safetensors")` of `sd_state(shape, seed)` (the same values), without holding the UNet in
    memory: the header is laid out from the shapes in generation order (safetensors readers take the offsets as
    given; nothing requires sorted data), then each UNet tensor is written as it is drawn. Full-size SDXL in f16
    (7 GB) needs about 4 GB of memory this way instead of 20."""
    np_dtype, st_dtype = {"f32": ("<f4", "F32"), "f16": ("<f2", "F16")}[dtype]
    shapes = sd_shapes(shape)
    header: dict[str, object] = {}
    offset = 0
    for name, shp in shapes.items():
        n = int(np.prod(shp, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    order = list(shapes)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        sink = _StreamingWriter(f, order, np_dtype)
        unet_state(shape, np.random.default_rng([seed, 1]), sink)
        for part in (vae_state(shape, np.random.default_rng([seed, 2])), text_state(shape, seed)):
            for name, v in part.items():
                sink[name] = v
        if sink.i != len(order):
            raise AssertionError(f"wrote {sink.i} of {len(order)} tensors")
    return Path(path)


def split_state(state: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """An LDM state dict -> {"unet", "vae", "text_encoder"} with the single-file prefixes removed."""
    parts: dict[str, dict[str, np.ndarray]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    prefixes = (
        ("unet", sd_names.UNET_PREFIX),
        ("vae", sd_names.VAE_PREFIX),
        ("text_encoder", sd_names.TEXT_PREFIX),
    )
    for k, v in state.items():
        for part, p in prefixes:
            if k.startswith(p):
                parts[part][k[len(p) :]] = v
                break
        else:
            raise KeyError(f"{k}: not a UNet, VAE or text-encoder name of an SD 1.x single file")
    return parts


def diffusers_states(state: dict[str, np.ndarray], shape: SdShape) -> dict[str, dict[str, np.ndarray]]:
    """An LDM state dict -> {"unet", "vae", "text_encoder"} under the names diffusers/transformers save them with.

    The text encoder keeps transformers' `text_model.` prefix, as the published SD repositories hold it.
    """
    parts = split_state(state)
    unet_map = sd_names.unet_diffusers_to_ldm(unet_config(shape))
    vae_map = sd_names.vae_diffusers_to_ldm(vae_config(shape))
    unet = {d: parts["unet"][ldm] for d, ldm in unet_map.items()}
    vae = {}
    for d, ldm in vae_map.items():
        a = parts["vae"][ldm]
        vae[d] = a.reshape(sd_names.vae_diffusers_shape(ldm, a.shape))
    text = {sd_names.TEXT_DIFFUSERS_PREFIX + k: v for k, v in parts["text_encoder"].items()}
    for part, mapped in (("unet", unet), ("vae", vae)):
        if len(mapped) != len(parts[part]):
            raise AssertionError(f"{part}: {len(parts[part])} tensors but the name map covers {len(mapped)}")
    return {"unet": unet, "vae": vae, "text_encoder": text}


# ---------------------------------------------------------------------------------------------------------------
# Writers


def write_sd(
    out: Path,
    shape: SdShape = TINY_SD,
    seed: int = 0,
    fmt: str = "safetensors",
    *,
    dtype: str = "f32",
    metadata: bool = True,
    state: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write an SD 1.x example checkpoint; returns `out` (a file, or a directory for `diffusers` and `separate`).

    dtype: the storage type. safetensors/ckpt/diffusers/separate: "f32" or "f16" for every tensor. gguf: the weight
    type given to stable-diffusion.cpp's `convert` ("f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1"),
    applied with its rules (`sdcpp_tensor_type`).
    metadata: write `sd_metadata(shape)` where the format has a place for it; False gives files like the released
    SD 1.5 ones, which carry none. A diffusers directory always has its config.json files.
    state: weights to write instead of `sd_state(shape, seed)` (LDM names, float32).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "gguf" and dtype not in GGUF_WTYPES:
        raise ValueError(f"wtype {dtype!r}: one of {', '.join(GGUF_WTYPES)}")
    if fmt != "gguf":
        _check_plain(dtype)
    out = Path(out)
    if state is None:
        state = sd_state(shape, seed)
    meta = sd_metadata(shape) if metadata else None
    if fmt == "safetensors":
        write_safetensors(out, state, dtype, _str_meta(meta))
    elif fmt == "ckpt":
        top: dict[str, object] = {"state_dict": state}
        if meta:
            top.update(meta)  # top-level scalars: the only place a checkpoint can carry them (readers list them)
        write_ckpt(out, top, dtype)
    elif fmt == "gguf":
        if shape.family != "sd1":
            state = sdcpp_text_names(state, shape)
        write_gguf_sdcpp(out, state, dtype, meta)
    elif fmt == "diffusers":
        write_diffusers(out, state, shape, dtype)
    else:
        write_separate(out, state, shape, dtype, metadata)
    return out


def write_safetensors(
    path: Path, state: dict[str, np.ndarray], dtype: str = "f32", metadata: dict[str, str] | None = None
) -> Path:
    """A safetensors file, laid out as the safetensors library lays it out (tensors sorted by name, header padded
    to 8 bytes) but with the metadata keys sorted: the library keeps them in a hash map, so its bytes vary between
    runs whenever there are two or more."""
    np_dtype, st_dtype = {"f32": ("<f4", "F32"), "f16": ("<f2", "F16")}[dtype]
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    blobs, offset = [], 0
    for name in sorted(state):
        blob = np.ascontiguousarray(state[name], dtype=np_dtype).tobytes()
        header[name] = {
            "dtype": st_dtype,
            "shape": list(state[name].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    return Path(path)


def _check_plain(dtype: str) -> None:
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype {dtype!r}: this format is written as f32 or f16 (quant types are for gguf)")


def _str_meta(meta: dict | None) -> dict[str, str] | None:
    return {k: str(v) for k, v in meta.items()} if meta else None


def _json(path: Path, obj: dict) -> None:
    # the formatting diffusers' and transformers' save_pretrained use
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def open_clip_to_transformers(state: dict[str, np.ndarray], prefix: str, layers: int) -> dict[str, np.ndarray]:
    """An OpenCLIP text tower (under ``prefix``) in transformers' CLIPTextModel(WithProjection) names, as diffusers'
    SD 2.x / SDXL folders hold it: the fused in_proj split into q/k/v, text_projection transposed to [out, in];
    only its first ``layers`` layers (SD 2.x's converted encoder drops the last one, which SD never runs)."""
    block = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}  # fmt: skip
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        sub = k[len(prefix) :]
        if sub.startswith("transformer.resblocks."):
            i, rest = sub[len("transformer.resblocks.") :].split(".", 1)
            if int(i) >= layers:
                continue
            p = f"text_model.encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                wb = "weight" if rest.endswith("weight") else "bias"
                for j, qkv in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[p + f"self_attn.{qkv}.{wb}"] = np.split(v, 3, axis=0)[j]
                continue
            part, wb = rest.rsplit(".", 1)
            out[p + f"{block[part]}.{wb}"] = v
        elif sub == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = v
        elif sub == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = v
        elif sub.startswith("ln_final."):
            out["text_model.final_layer_norm." + sub.split(".", 1)[1]] = v
        elif sub == "text_projection":
            out["text_projection.weight"] = np.ascontiguousarray(v.T)
    return out


def open_clip_config(shape: SdShape, layers: int, projection: bool) -> dict:
    oc = shape.open_clip
    cfg = text_config(shape) | {
        "architectures": ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
        "hidden_act": "gelu",
        "hidden_size": oc.width,
        "intermediate_size": oc.mlp,
        "max_position_embeddings": oc.positions,
        "num_attention_heads": oc.width // 64,
        "num_hidden_layers": layers,
        "pad_token_id": 1,  # as the published SD 2.x / SDXL configs say (their tokenizers pad with "!", id 0)
        "projection_dim": oc.projection,
        "vocab_size": oc.vocab,
    }
    return cfg


def _write_diffusers_xl(out: Path, state: dict[str, np.ndarray], shape: SdShape, dtype: str) -> Path:
    """SD 2.x and SDXL pipeline directories: unet/ and vae/ in diffusers' names, the text encoder(s) in
    transformers' (SDXL: text_encoder/ CLIP-L, text_encoder_2/ bigG with its projection)."""
    from sdcompile import examples_clip as C

    unet = {
        d: state[sd_names.UNET_PREFIX + ldm] for d, ldm in sd_names.unet_diffusers_to_ldm(unet_config(shape)).items()
    }
    vae = {}
    for d, ldm in sd_names.vae_diffusers_to_ldm(vae_config(shape)).items():
        a = state[sd_names.VAE_PREFIX + ldm]
        vae[d] = a.reshape(sd_names.vae_diffusers_shape(ldm, a.shape))
    oc = shape.open_clip
    if shape.family == "sd2":
        texts = {"text_encoder": (open_clip_to_transformers(state, C.SD2_PREFIX, oc.layers - 1),
                                  open_clip_config(shape, oc.layers - 1, False))}  # fmt: skip
        sched, index = dict(SD15_SCHEDULER_CONFIG, prediction_type="epsilon"), dict(MODEL_INDEX)
    else:
        clip_l = {
            "text_model." + k[len(C.SDXL_L_PREFIX) :]: v for k, v in state.items() if k.startswith(C.SDXL_L_PREFIX)
        }
        texts = {
            "text_encoder": (clip_l, text_config(shape)),
            "text_encoder_2": (open_clip_to_transformers(state, C.SDXL_G_PREFIX, oc.layers),
                               open_clip_config(shape, oc.layers, True)),
        }  # fmt: skip
        from sdcompile.models.sd import SDXL_SCHEDULER

        sched = SDXL_SCHEDULER
        index = dict(MODEL_INDEX, _class_name="StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True,
                     text_encoder_2=["transformers", "CLIPTextModelWithProjection"], tokenizer_2=[None, None],
                     scheduler=["diffusers", "EulerDiscreteScheduler"])  # fmt: skip
        for k in ("safety_checker", "feature_extractor", "requires_safety_checker"):
            index.pop(k)
    vcfg = vae_config(shape) | ({"force_upcast": True} if shape.family == "sdxl" else {})
    parts = {"unet": (unet, unet_config(shape)), "vae": (vae, vcfg)} | texts
    for part, (tensors, cfg) in parts.items():
        d = out / part
        d.mkdir(parents=True, exist_ok=True)
        _json(d / "config.json", cfg)
        fname = "model.safetensors" if part.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
        write_safetensors(d / fname, tensors, dtype, {"format": "pt"})
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    _json(out / "scheduler" / "scheduler_config.json", sched)
    _json(out / "model_index.json", index)
    return out


def write_diffusers(out: Path, state: dict[str, np.ndarray], shape: SdShape, dtype: str = "f32") -> Path:
    """A diffusers pipeline directory; weights under diffusers/transformers names, configs computed from `shape`."""
    out = Path(out)
    if shape.family != "sd1":
        return _write_diffusers_xl(out, state, shape, dtype)
    states = diffusers_states(state, shape)
    files = {
        "unet": ("diffusion_pytorch_model.safetensors", unet_config(shape)),
        "vae": ("diffusion_pytorch_model.safetensors", vae_config(shape)),
        "text_encoder": ("model.safetensors", text_config(shape)),
    }
    for part, (fname, cfg) in files.items():
        d = out / part
        d.mkdir(parents=True, exist_ok=True)
        _json(d / "config.json", cfg)
        write_safetensors(d / fname, states[part], dtype, {"format": "pt"})
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    _json(out / "scheduler" / "scheduler_config.json", SD15_SCHEDULER_CONFIG)
    _json(out / "model_index.json", MODEL_INDEX)
    return out


def write_separate(
    out: Path, state: dict[str, np.ndarray], shape: SdShape, dtype: str = "f32", metadata: bool = True
) -> dict[str, Path]:
    """The three files stable-diffusion.cpp takes separately (see SEPARATE_FILES), in directory `out`.

    --diffusion-model: the UNet under LDM names without `model.diffusion_model.` (sd.cpp adds it);
    --vae: the VAE under LDM names without `first_stage_model.` (as the released standalone VAEs);
    --clip-l: the text encoder under transformers' `text_model.*` names (sd.cpp adds `cond_stage_model.transformer.`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = split_state(state)
    meta = sd_metadata(shape)
    payload = {
        "diffusion_model": (parts["unet"], {META_UNET_HEADS: meta[META_UNET_HEADS]}),
        "vae": (parts["vae"], None),
        "clip_l": (
            {sd_names.TEXT_DIFFUSERS_PREFIX + k: v for k, v in parts["text_encoder"].items()},
            {META_TEXT_HEADS: meta[META_TEXT_HEADS], META_TEXT_ACT: meta[META_TEXT_ACT]},
        ),
    }
    paths = {}
    for role, (tensors, m) in payload.items():
        paths[role] = write_safetensors(out / SEPARATE_FILES[role], tensors, dtype, _str_meta(m) if metadata else None)
    return paths


# -- stable-diffusion.cpp GGUF ----------------------------------------------------------------------------------

GGUF_WTYPES = ("f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
_QUANT_BLOCK = {"q8_0": 32, "q5_0": 32, "q5_1": 32, "q4_0": 32, "q4_1": 32}


def sdcpp_tensor_type(name: str, shape: tuple[int, ...], wtype: str, source: str = "f32") -> str:
    """The type stable-diffusion.cpp's `convert` gives a tensor (ModelLoader::tensor_should_be_converted).

    It converts every tensor to `wtype` except biases, `.scale`s, the UNet's time/label embeddings and any name with
    "embedding" (token and position embeddings), and, for quant types, a tensor whose innermost dimension is not a
    whole number of blocks (3x3 and 1x1 convolutions: their innermost dimension is the kernel width). Norm weights
    are converted like any other. A tensor not converted keeps its `source` type.
    """
    keep = (
        name.endswith(".bias")
        or name.endswith(".scale")
        or "time_embed." in name
        or "label_emb." in name
        or "embedding" in name
        or (wtype in _QUANT_BLOCK and shape[-1] % _QUANT_BLOCK[wtype] != 0)
    )
    return source if keep else wtype


def write_gguf_sdcpp(
    path: Path, state: dict[str, np.ndarray], wtype: str = "f16", metadata: dict[str, int | str] | None = None
) -> Path:
    """A GGUF as stable-diffusion.cpp's `convert -M convert --type WTYPE` writes it from an f32 LDM single file.

    Same tensor names and order, types by `sdcpp_tensor_type`, no key/value pairs at all (sd.cpp writes none, not
    even general.architecture) unless `metadata` is given (our extension; sd.cpp ignores unknown keys).
    """
    import gguf

    if wtype not in GGUF_WTYPES:
        raise ValueError(f"wtype {wtype!r}: one of {', '.join(GGUF_WTYPES)}")
    w = gguf.GGUFWriter(str(path), arch="", use_temp_file=False)
    w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    for k, v in (metadata or {}).items():
        if isinstance(v, int):
            w.add_uint32(k, v)
        else:
            w.add_string(k, str(v))
    for name, arr in state.items():
        t = sdcpp_tensor_type(name, arr.shape, wtype)
        if t == "f32":
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
        elif t == "f16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            qt = getattr(gguf.GGMLQuantizationType, t.upper())
            data = gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qt)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def sdcpp_text_names(state: dict[str, np.ndarray], shape: SdShape) -> dict[str, np.ndarray]:
    """SD 2.x/SDXL text encoders under the names stable-diffusion.cpp's `convert` writes (its name_conversion:
    OpenCLIP towers to transformers' names with the fused in_proj kept; SDXL's CLIP-L and bigG as
    cond_stage_model.transformer / cond_stage_model.1.transformer)."""
    from sdcompile import examples_clip as C

    if shape.family == "sd2":
        return C.sdcpp_names(state, C.SD2_PREFIX, "cond_stage_model.transformer.")
    out = C.sdcpp_names(state, C.SDXL_G_PREFIX, "cond_stage_model.1.transformer.")
    return {k.replace("conditioner.embedders.0.", "cond_stage_model.", 1): v for k, v in out.items()}


# -- torch.save zip checkpoint, without torch --------------------------------------------------------------------

_CKPT_ALIGN = 64  # torch aligns every record's data to 64 bytes (.storage_alignment)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_STORAGE = {"f32": ("FloatStorage", np.dtype("<f4")), "f16": ("HalfStorage", np.dtype("<f2"))}


class _Pickle:
    """Writes the protocol-2 opcodes torch.save's pickle of a state dict uses, naming torch's classes by GLOBAL."""

    def __init__(self) -> None:
        self.b = bytearray(b"\x80\x02")

    def put_global(self, module: str, name: str) -> None:
        self.b += b"c" + f"{module}\n{name}\n".encode()

    def put_str(self, s: str) -> None:
        e = s.encode("utf-8")
        self.b += b"X" + struct.pack("<I", len(e)) + e

    def put_int(self, v: int) -> None:
        if 0 <= v < 256:
            self.b += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.b += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.b += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.b += b"\x8a" + bytes([len(raw)]) + raw

    def put_ints(self, vals: tuple[int, ...]) -> None:
        if not vals:
            self.b += b")"
            return
        self.b += b"("
        for v in vals:
            self.put_int(v)
        self.b += b"t"

    def put_scalar(self, v: object) -> None:
        if isinstance(v, bool):
            self.b += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            self.put_int(v)
        elif isinstance(v, float):
            self.b += b"G" + struct.pack(">d", v)
        elif isinstance(v, str):
            self.put_str(v)
        else:
            raise TypeError(f"cannot pickle a {type(v).__name__} here")

    def put_tensor(self, key: str, storage: str, numel: int, shape: tuple[int, ...]) -> None:
        self.put_global("torch._utils", "_rebuild_tensor_v2")
        self.b += b"("  # args: storage, offset, size, stride, requires_grad, backward_hooks
        self.b += b"("  # persistent id: ('storage', storage type, key, location, numel)
        self.put_str("storage")
        self.put_global("torch", storage)
        self.put_str(key)
        self.put_str("cpu")
        self.put_int(numel)
        self.b += b"tQ"
        self.put_int(0)
        self.put_ints(shape)
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(acc)
            acc *= d
        self.put_ints(tuple(reversed(strides)))
        self.b += b"\x89"
        self.put_global("collections", "OrderedDict")
        self.b += b")R"
        self.b += b"tR"


def write_ckpt(path: Path, top: dict[str, object], dtype: str = "f32") -> Path:
    """A torch.save zip checkpoint (format version 3) of `top`: values are numpy arrays, scalars, or dicts of them.

    Written byte for byte the way torch.save lays it out (archive/data.pkl, .format_version, .storage_alignment,
    byteorder, data/<key> aligned to 64 bytes, version), so torch.load(weights_only=True) and sdcompile's restricted
    reader both read it. Arrays are stored as `dtype` ("f32" or "f16"); storage keys are "0", "1", ... in order.
    """
    storage, np_dtype = _STORAGE[dtype]
    pk = _Pickle()
    blobs: list[bytes] = []

    def emit(obj: object) -> None:
        if isinstance(obj, dict):
            pk.b += b"}"
            if obj:
                pk.b += b"("
                for k, v in obj.items():
                    pk.put_str(str(k))
                    emit(v)
                pk.b += b"u"
        elif isinstance(obj, np.ndarray):
            a = np.ascontiguousarray(obj, dtype=np_dtype)
            pk.put_tensor(str(len(blobs)), storage, a.size, a.shape)
            blobs.append(a.tobytes())
        else:
            pk.put_scalar(obj)

    emit(top)
    pk.b += b"."
    records = [
        ("data.pkl", bytes(pk.b)),
        (".format_version", b"1"),
        (".storage_alignment", str(_CKPT_ALIGN).encode()),
        ("byteorder", b"little"),
        *((f"data/{i}", blob) for i, blob in enumerate(blobs)),
        ("version", b"3\n"),
    ]
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in records:
            zi = zipfile.ZipInfo("archive/" + name, date_time=_ZIP_DATE)
            zi.compress_type = zipfile.ZIP_STORED
            # torch pads the local header's extra field ("FB" id, then filler) so the data starts aligned
            start = f.tell() + 30 + len(zi.filename.encode()) + 4
            pad = -start % _CKPT_ALIGN
            zi.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(zi, data)
    return Path(path)
