"""Lift a Stable Diffusion 1.x/2.x checkpoint (UNet, VAE, CLIP text encoder) into a module of four functions.

The lifter reads LDM single-file names (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*``), which is also what stable-diffusion.cpp's GGUF files hold; diffusers directories and
separate component files reach it through a renaming store (``sdcompile/models/sd_inputs.py``). Canonical IR names
are ``unet.`` / ``vae.`` + the LDM sub-path, ``text_encoder.`` + the CLIP text model's sub-path.

The UNet's structure is read from the names (which input/output block holds a resnet, a spatial transformer, a
down- or upsampler) and its widths from the shapes, as stable-diffusion.cpp and diffusers' converter do; nothing
about the level count or channel multipliers is assumed. What names and shapes cannot tell — attention heads (SD1:
8 heads, SD2: 64 channels per head), GroupNorm's 32 groups, the VAE's scaling factor 0.18215 — comes from
``config.json`` / metadata where present, else from the SD family the context width identifies, and every such
assumption goes into the report.

Functions (channels-last inside; NCHW at the signature, as diffusers' tensors are):
- ``encode_text``: input_ids int32[B, 77] -> context f32[B, 77, D] (B = 2: unconditional and conditional prompts)
- ``denoise_WxH``: x f32[B, 4, h, w], t f32[B], context -> eps (or v) f32[B, 4, h, w] (h = H / 8)
- ``decode_latents_WxH``: latents f32[1, 4, h, w] (as the sampler leaves them) -> image f32[1, 3, H, W] in [-1, 1]
- ``encode_image_WxH``: image f32[1, 3, H, W] -> moments f32[1, 8, h, w] (mean and log-variance; the pipeline
  samples and scales)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sdcompile.errors import UnsupportedModelError
from sdcompile.ir import Graph, Module, WeightData
from sdcompile.ir.derived import Reshape, Tensor, conv_weight
from sdcompile.ir.ops import conv_out_hw
from sdcompile.models import clip_text

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer.text_model."

# SD 1.x/2.x constants the files do not state (LDM's configs, diffusers' defaults); each use is reported.
GROUPS = 32
UNET_EPS = 1e-5
TRANSFORMER_GN_EPS = 1e-6
VAE_EPS = 1e-6
LN_EPS = 1e-5

# diffusers config.json keys, by how the lifter treats them (a key of none of these groups is reported as not read).
# READ: the lifter reads them (heads, groups, eps, the timestep embedding's layout, the prediction type).
# SHAPES: stated by the weights too (names and shapes decide the structure; the diffusers converter reads the block
# layout keys); SHAPE_CHECKS compares the ones that name one number with what the weights say.
# DEFAULT_ONLY: a design the lifter implements in one variant only: another value is refused by name, not ignored.
# NO_EFFECT: bookkeeping, training settings and precision hints (math is f32 throughout), and settings of a part
# refused above (addition_embed_type_num_heads: only with an addition_embed_type).
UNET_READ = frozenset(
    """attention_head_dim num_attention_heads norm_num_groups norm_eps flip_sin_to_cos freq_shift prediction_type
    addition_embed_type addition_time_embed_dim projection_class_embeddings_input_dim""".split()
)
UNET_SHAPES = frozenset(
    """in_channels out_channels cross_attention_dim block_out_channels layers_per_block down_block_types
    up_block_types transformer_layers_per_block mid_block_type use_linear_projection conv_in_kernel conv_out_kernel
    time_embedding_dim""".split()
)
UNET_DEFAULT_ONLY: dict[str, Any] = {
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "num_class_embeds": None,
    "class_embeddings_concat": False,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "only_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "dual_cross_attention": False,
    "cross_attention_norm": None,
    "attention_type": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "reverse_transformer_layers_per_block": None,
}
VAE_READ = frozenset("scaling_factor norm_num_groups force_upcast".split())
VAE_SHAPES = frozenset(
    "in_channels out_channels latent_channels block_out_channels layers_per_block down_block_types up_block_types".split()
)
VAE_DEFAULT_ONLY: dict[str, Any] = {
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
NO_EFFECT = frozenset(
    "_class_name _diffusers_version _name_or_path _use_default_values sample_size dropout upcast_attention "
    "addition_embed_type_num_heads".split()
)


@dataclass
class Assumptions:
    """What the lifter could not read and assumed, for the report (``inspect`` and ``compile`` print these)."""

    items: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        if what not in self.items:
            self.items.append(what)


def _meta(store, *keys: str):
    for k in keys:
        if k in store.metadata:
            return store.metadata[k]
    return None


class _Builder:
    """Adds weights (recording which file tensors were used) and nodes to one function graph."""

    def __init__(
        self, g: Graph, store, file_prefix: str, canon_prefix: str, component: str, used: set[str], groups: int
    ):
        self.g, self.store, self.fp, self.cp, self.c, self.used = g, store, file_prefix, canon_prefix, component, used
        self.groups = groups
        self.n = 0

    def has(self, sub: str) -> bool:
        return self.fp + sub in self.store

    def shape(self, sub: str) -> tuple[int, ...]:
        if self.fp + sub not in self.store:
            raise UnsupportedModelError(f"{self.store.path}: {self.c} lacks tensor {self.fp + sub}")
        return tuple(self.store.info(self.fp + sub).shape)

    def _add(self, sub: str, shape: tuple[int, ...], expr) -> str:
        name = self.cp + sub
        if name in self.g.values:
            return name
        key = self.fp + sub
        if key not in self.store:
            raise UnsupportedModelError(f"{self.store.path}: {self.c} lacks tensor {key}")
        self.used.add(key)
        src = self.store.info(key).dtype
        if expr is not None and src not in ("f32", "f16", "bf16"):
            src = "f32"  # a layout change needs the values: a quantized source is decoded (exactly) first
        data = WeightData(self.store, key, src, expr=expr)
        self.g.add_weight(name, shape, src if expr is not None else self.store.info(key).dtype, self.c, data)
        return name

    def param(self, sub: str) -> str:
        """A tensor used as stored (bias, norm scale, linear weight [O, I])."""
        return self._add(sub, self.shape(sub), None)

    def linear_w(self, sub: str) -> str:
        """A linear weight [O, I]; a 1x1 conv weight [O, I, 1, 1] (LDM's proj_in, VAE attention) read as one."""
        s = self.shape(sub)
        if len(s) == 4:
            if s[2:] != (1, 1):
                raise UnsupportedModelError(f"{self.store.path}: {self.fp + sub} is {s}, expected a 1x1 convolution")
            return self._add(sub, s[:2], Reshape(Tensor(self.store, self.fp + sub), s[:2]))
        return self.param(sub)

    def conv_w(self, sub: str) -> str:
        s = self.shape(sub)
        if len(s) != 4:
            raise UnsupportedModelError(
                f"{self.store.path}: {self.fp + sub} is {s}, expected a conv weight [O,C,kh,kw]"
            )
        return self._add(sub, (s[0], s[1] * s[2] * s[3]), conv_weight(self.store, self.fp + sub, s))

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs: Any) -> str:
        self.n += 1
        return self.g.add_node(op, inputs, f"{self.cp}{op}.{self.n}", shape, self.c, **attrs)

    # --- layers -----------------------------------------------------------------------------------------------

    def conv(
        self, x: str, sub: str, stride: int = 1, pads: tuple[int, ...] | None = None, res: str | None = None
    ) -> str:
        b, h, w, _ = self.g.values[x].shape
        o, c, kh, kw = self.shape(sub + ".weight")
        pad = pads if pads is not None else (kh // 2, kw // 2, kh // 2, kw // 2)
        ins = [x, self.conv_w(sub + ".weight"), self.param(sub + ".bias")]
        if res is not None:
            ins.append(res)
        attrs = {"kh": kh, "kw": kw, "stride": stride, "pads": tuple(pad), "bias": True, "residual": res is not None}
        ho, wo = conv_out_hw(h, w, attrs)
        return self.node("conv2d", ins, (b, ho, wo, o), **attrs)

    def linear(self, x: str, sub: str, bias: bool = True, act: str = "none", res: str | None = None) -> str:
        w = self.linear_w(sub + ".weight")
        shape = (*self.g.values[x].shape[:-1], self.g.values[w].shape[0])
        ins = [x, w] + ([self.param(sub + ".bias")] if bias else []) + ([res] if res else [])
        return self.node("linear", ins, shape, bias=bias, act=act, residual=res is not None)

    def group_norm(self, x: str, sub: str, eps: float, act: str = "none") -> str:
        return self.node(
            "group_norm",
            [x, self.param(sub + ".weight"), self.param(sub + ".bias")],
            self.g.values[x].shape,
            groups=self.groups,
            eps=eps,
            act=act,
        )

    def layer_norm(self, x: str, sub: str) -> str:
        return self.node(
            "layer_norm",
            [x, self.param(sub + ".weight"), self.param(sub + ".bias")],
            self.g.values[x].shape,
            eps=LN_EPS,
        )

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self.node("reshape", [x], shape, to=tuple(shape))

    def add(self, x: str, y: str) -> str:
        return self.node("add", [x, y], self.g.values[x].shape)


# --- UNet ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int
    out_channels: int
    model_channels: int
    context_dim: int
    head_dim: int | None  # channels per head (SD2, SDXL), or
    heads: int | None  # a fixed head count (SD1), or
    family: str  # "sd1" | "sd2" | "sdxl"
    prediction: str  # "epsilon" | "v_prediction"
    groups: int = GROUPS
    eps: float = UNET_EPS  # the resnets' and the output's GroupNorm
    flip_sin_to_cos: bool = True  # timestep embedding [cos, sin] (else [sin, cos])
    freq_shift: float = 0.0
    # heads per level width, where a config lists head counts that no one channels-per-head number gives
    level_heads: tuple[tuple[int, int], ...] = ()
    # SDXL's added conditioning: label_emb takes [pooled text embedding (pooled_dim), time_ids x time_id_dim]
    adm_in: int = 0
    pooled_dim: int = 0
    time_ids: int = 0
    time_id_dim: int = 256

    def heads_for(self, ch: int) -> int:
        for width, n in self.level_heads:
            if width == ch:
                return n
        if self.heads is not None:
            return self.heads
        return max(1, ch // self.head_dim)


def _same(value: Any, default: Any) -> bool:
    """A config value that means the default: itself, or a per-block list of it."""
    if isinstance(value, list):
        return all(_same(v, default) for v in value)
    return value == default or (default is None and value in (None, "", [], {}))


def check_config_keys(
    store,
    a: Assumptions,
    config: dict,
    what: str,
    read: frozenset[str],
    shapes: frozenset[str],
    default_only: dict[str, Any],
) -> None:
    """Every key of a component's config.json is read, stated by the weights too, without effect on inference, or
    a design variant the lifter does not implement (refused by name); any other is reported as not read."""
    for key in sorted(config):
        v = config[key]
        if key in default_only:
            if not _same(v, default_only[key]):
                raise UnsupportedModelError(
                    f"{store.path}: the {what}'s config.json says {key} = {v!r}; sdcompile's SD 1.x/2.x lifter "
                    f"implements only {default_only[key]!r}: a {what} of another design, which it cannot compile"
                )
        elif key not in read and key not in shapes and key not in NO_EFFECT and v not in (None, {}, []):
            a.add(f"{what}: config.json states {key} = {v!r}, which sdcompile does not read")


def _check_number(store, config: dict, key: str, from_weights: int, what: str) -> None:
    if config.get(key) is not None and config[key] != from_weights:
        raise UnsupportedModelError(
            f"{store.path}: the {what}'s config.json says {key} = {config[key]}, its weights say {from_weights}: "
            "the config belongs to another model"
        )


# Where a checkpoint states what its UNet predicts, besides a scheduler config (safetensors metadata of ModelSpec
# and of trainers), and how each value is spelled there.
PREDICTION_META = ("modelspec.prediction_type", "prediction_type", "ss_v_parameterization")
PREDICTION_VALUES = {
    "epsilon": "epsilon",
    "eps": "epsilon",
    "v": "v_prediction",
    "v_prediction": "v_prediction",
    "v-prediction": "v_prediction",
    "true": "v_prediction",  # ss_v_parameterization (kohya's trainer)
    "false": "epsilon",
}
# A tensor some tools (ComfyUI's checkpoint save) add to mark a v-prediction model; its presence is the statement.
V_PRED_MARK = "v_pred"


def _prediction(store, a: Assumptions, config: dict, family: str, option: str | None) -> str:
    """What the UNet predicts: the --prediction option, else what the checkpoint states, else the family's usual
    value (reported)."""
    stated, where = None, ""
    if config.get("prediction_type"):
        stated, where = str(config["prediction_type"]), "the scheduler config"
    else:
        for key in PREDICTION_META:
            v = _meta(store, key)
            if v is not None and str(v).strip().lower() in PREDICTION_VALUES:
                stated, where = PREDICTION_VALUES[str(v).strip().lower()], f"metadata {key} = {v!r}"
                break
        if stated is None and V_PRED_MARK in store:
            stated, where = "v_prediction", f"its {V_PRED_MARK!r} marker tensor"
    if option is not None:
        chosen = {"eps": "epsilon", "v": "v_prediction"}[option]
        if stated is not None and stated != chosen:
            a.add(f"UNet: predicts {chosen} (--prediction {option}), overriding {stated} from {where}")
        return chosen
    if stated is not None:
        if stated not in ("epsilon", "v_prediction"):
            raise UnsupportedModelError(
                f"{store.path}: {where} says the UNet predicts {stated!r}; sdcompile's samplers take epsilon or "
                "v_prediction"
            )
        return stated
    if family == "sd2":
        a.add(
            "UNet: predicts v_prediction (SD 2.x 768-v; nothing in the checkpoint says): pass --prediction eps for "
            "a 512-base model"
        )
        return "v_prediction"
    a.add(f"UNet: predicts epsilon ({family.upper()} default; no scheduler config says)")
    return "epsilon"


def _pooled_width(store) -> int | None:
    """The width of the pooled text embedding an SDXL UNet takes: the second text encoder's projection, wherever and
    however its file stores it (the text encoder lifter's own lookup)."""
    for enc in clip_text.find_text_encoders(store):
        loc = clip_text.projection_key(store, enc) if enc.pooled else None
        if loc is not None:
            shape = tuple(store.info(loc.key).shape)
            return int(shape[1] if loc.transposed else shape[0])
    return None


def unet_config(
    store, a: Assumptions, config: dict | None = None, prediction: str | None = None, pooled: int | None = None
) -> UNetConfig:
    def shape(sub):
        return tuple(store.info(UNET + sub).shape)

    if UNET + "input_blocks.0.0.weight" not in store:
        raise UnsupportedModelError(f"{store.path}: no SD UNet (no {UNET}input_blocks.0.0.weight)")
    mc, cin = shape("input_blocks.0.0.weight")[:2]
    cout = shape("out.2.weight")[0]
    ctx_keys = [n for n in store.names() if n.startswith(UNET) and n.endswith("attn2.to_k.weight")]
    if not ctx_keys:
        raise UnsupportedModelError(
            f"{store.path}: UNet has no cross-attention (attn2) layers: not an SD 1.x/2.x/XL UNet"
        )
    ctx = tuple(store.info(ctx_keys[0]).shape)[1]
    config = config or {}
    check_config_keys(store, a, config, "UNet", UNET_READ, UNET_SHAPES, UNET_DEFAULT_ONLY)
    for key, n in (("in_channels", cin), ("out_channels", cout), ("cross_attention_dim", ctx)):
        _check_number(store, config, key, n, "UNet")
    boc = config.get("block_out_channels")
    if isinstance(boc, list) and boc:
        _check_number(store, {"block_out_channels[0]": boc[0]}, "block_out_channels[0]", mc, "UNet")

    # SDXL's added conditioning (sgm's label_emb, diffusers' add_embedding with addition_embed_type "text_time")
    adm_in = n_ids = 0
    tid = 256
    if UNET + "label_emb.0.0.weight" in store:
        kind = config.get("addition_embed_type")
        if config and kind != "text_time":
            raise UnsupportedModelError(
                f"{store.path}: the UNet has a label embedding but its config says addition_embed_type = {kind!r} "
                f"(class_embed_type {config.get('class_embed_type')!r}): an SD2-unCLIP or class-conditioned UNet, "
                "which sdcompile cannot compile; it compiles SDXL's text_time conditioning"
            )
        adm_in = shape("label_emb.0.0.weight")[1]
        _check_number(store, config, "projection_class_embeddings_input_dim", adm_in, "UNet")
        if config.get("addition_time_embed_dim"):
            tid = int(config["addition_time_embed_dim"])
        else:
            a.add("UNet: each size/crop id embedded in 256 channels (SDXL's; no config says)")
        pooled = pooled or _pooled_width(store) or 0
        if not pooled:
            pooled = 1280
            a.add("UNet: a pooled text embedding 1280 wide (OpenCLIP bigG's; no second text encoder says)")
        n_ids, rest = divmod(adm_in - pooled, tid)
        if rest or n_ids < 1:
            raise UnsupportedModelError(
                f"{store.path}: the UNet's label_emb takes {adm_in} values, which is not a pooled embedding of "
                f"{pooled} plus whole {tid}-wide size/crop embeddings"
            )
    else:
        pooled = 0
    if not adm_in and config.get("addition_embed_type"):
        raise UnsupportedModelError(
            f"{store.path}: the UNet's config says addition_embed_type = {config['addition_embed_type']!r} but the "
            "weights have no label_emb/add_embedding: the config belongs to another model"
        )

    linear_proj = any(
        n.startswith(UNET) and n.endswith(".proj_in.weight") and len(store.info(n).shape) == 2 for n in store.names()
    )
    family = "sdxl" if adm_in else "sd2" if ctx == 1024 or linear_proj else "sd1"
    heads = head_dim = None
    level_heads: tuple[tuple[int, int], ...] = ()
    hd = config.get("num_attention_heads") or config.get("attention_head_dim")
    if hd is not None:
        # diffusers' attention_head_dim is a head COUNT (a historical misnomer it keeps; num_attention_heads says
        # the same where set): one for every level, or one per level (SD2: [5, 10, 20, 20], SDXL: [5, 10, 20])
        if isinstance(hd, list):
            widths = [int(c) for c in (boc or [])]
            if len(widths) != len(hd):
                raise UnsupportedModelError(
                    f"{store.path}: the UNet's config lists {len(hd)} head counts for {len(widths)} levels"
                )
            per = {c // int(n) for c, n in zip(widths, hd)}
            if len(per) == 1 and all(c % int(n) == 0 for c, n in zip(widths, hd)):
                head_dim = per.pop()
            else:
                pairs = dict(zip(widths, (int(n) for n in hd)))
                if len(pairs) != len(set(zip(widths, hd))):
                    raise UnsupportedModelError(
                        f"{store.path}: the UNet's config gives two head counts to levels of the same width"
                    )
                level_heads = tuple(sorted(pairs.items()))
                heads = int(hd[0])
        else:
            heads = int(hd)
    meta_heads = _meta(store, "unet.num_attention_heads", "unet.num_heads")
    if meta_heads is not None:
        heads, head_dim, level_heads = int(meta_heads), None, ()
    if heads is None and head_dim is None:
        if family == "sd1":
            heads = 8
            a.add(f"UNet: 8 attention heads (SD 1.x, from the context width {ctx}; no config says)")
        else:
            head_dim = 64
            a.add(f"UNet: 64 channels per attention head ({family.upper()}; no config says)")
    if ctx not in (768, 1024, 2048) and not adm_in and not linear_proj:
        a.add(f"UNet: context width {ctx} is none of SD 1.x's 768, SD 2.x's 1024, SDXL's 2048; treated as SD 1.x")
    pred = _prediction(store, a, config, family, prediction)
    groups = config.get("norm_num_groups")
    if groups is None:
        groups = GROUPS
        a.add(f"UNet: GroupNorm with {GROUPS} groups (LDM's; no file states it)")
    # LDM's UNet fixes these (GroupNorm32's eps, a [cos, sin] embedding without shift); diffusers' config may differ
    eps = float(config["norm_eps"]) if config.get("norm_eps") is not None else UNET_EPS
    flip = bool(config["flip_sin_to_cos"]) if config.get("flip_sin_to_cos") is not None else True
    shift = float(config["freq_shift"]) if config.get("freq_shift") is not None else 0.0
    return UNetConfig(
        cin,
        cout,
        mc,
        ctx,
        head_dim,
        heads,
        family,
        pred,
        int(groups),
        eps,
        flip,
        shift,
        level_heads,
        adm_in,
        pooled,
        n_ids,
        tid,
    )


def _kind_of(rest: str) -> str | None:
    """What a UNet sub-module is, from a tensor's name below it."""
    if rest.startswith(("in_layers", "out_layers", "emb_layers", "skip_connection")):
        return "resnet"
    if rest.startswith(("proj_in", "transformer_blocks", "norm.", "proj_out")):
        return "transformer"
    if rest.startswith("op."):
        return "down"
    if rest.startswith("conv."):
        return "up"
    return "conv_in" if rest in ("weight", "bias") else None


def _kinds(store, prefix: str, nested: bool = True) -> dict[int, dict[int, str]] | dict[int, str]:
    """{block index: {sub index: kind}} for input_blocks/output_blocks (``nested``), or {index: kind} for the
    middle block: resnet, transformer, down, up, conv_in."""
    out: dict = {}
    rx = re.compile(re.escape(prefix) + (r"(\d+)\.(\d+)\.(.*)$" if nested else r"(\d+)\.(.*)$"))
    for n in store.names():
        m = rx.match(n)
        if not m:
            continue
        kind = _kind_of(m.group(m.lastindex))
        if kind is None:
            raise UnsupportedModelError(f"{store.path}: unrecognised UNet tensor {n}")
        if nested:
            out.setdefault(int(m.group(1)), {})[int(m.group(2))] = kind
        else:
            out[int(m.group(1))] = kind
    return out


def lift_unet(g: Graph, store, cfg: UNetConfig, batch: int, h: int, w: int, used: set[str]) -> None:
    b = _Builder(g, store, UNET, "unet.", "unet", used, cfg.groups)
    B, c = batch, "unet"
    x_in = g.add_input("x", (B, cfg.in_channels, h, w), "float32", c)
    t_in = g.add_input("t", (B,), "float32", c)
    ctx = g.add_input("context", (B, 77, cfg.context_dim), "float32", c)
    x = b.node("transpose", [x_in], (B, h, w, cfg.in_channels), perm=(0, 2, 3, 1))

    temb = b.node(
        "timestep_embedding",
        [t_in],
        (B, cfg.model_channels),
        dim=cfg.model_channels,
        flip=cfg.flip_sin_to_cos,
        shift=cfg.freq_shift,
    )
    temb = b.linear(temb, "time_embed.0", act="silu")
    temb = b.linear(temb, "time_embed.2")
    if cfg.adm_in:
        # SDXL: label_emb(concat(pooled text embedding, sinusoidal embedding of each size/crop id)) joins the time
        # embedding (diffusers' add_time_proj + add_embedding; sgm's ConcatTimestepEmbedderND + label_emb)
        pooled = g.add_input("text_embeds", (B, cfg.pooled_dim), "float32", c)
        ids = g.add_input("time_ids", (B, cfg.time_ids), "float32", c)
        flat = b.reshape(ids, (B * cfg.time_ids,))
        e = b.node(
            "timestep_embedding",
            [flat],
            (B * cfg.time_ids, cfg.time_id_dim),
            dim=cfg.time_id_dim,
            flip=cfg.flip_sin_to_cos,
            shift=cfg.freq_shift,
        )
        e = b.reshape(e, (B, cfg.time_ids * cfg.time_id_dim))
        y = b.node("concat", [pooled, e], (B, cfg.adm_in), axis=-1)
        y = b.linear(y, "label_emb.0.0", act="silu")
        y = b.linear(y, "label_emb.0.2")
        temb = b.add(temb, y)
    temb_act = b.node("silu", [temb], g.values[temb].shape)

    def resnet(x: str, p: str) -> str:
        xb, xh, xw, _ = g.values[x].shape
        hh = b.group_norm(x, p + "in_layers.0", cfg.eps, "silu")
        hh = b.conv(hh, p + "in_layers.2")
        cout = g.values[hh].shape[-1]
        e = b.linear(temb_act, p + "emb_layers.1")
        hh = b.add(hh, b.reshape(e, (xb, 1, 1, cout)))
        hh = b.group_norm(hh, p + "out_layers.0", cfg.eps, "silu")
        skip = b.conv(x, p + "skip_connection") if b.has(p + "skip_connection.weight") else x
        return b.conv(hh, p + "out_layers.3", res=skip)

    def attention(x: str, ctx_in: str | None, p: str, nh: int) -> str:
        q = b.linear(x, p + ".to_q", bias=False)
        src = ctx_in if ctx_in is not None else x
        k = b.linear(src, p + ".to_k", bias=False)
        v = b.linear(src, p + ".to_v", bias=False)
        o = b.node("attention", [q, k, v], g.values[q].shape, heads=nh, causal=False)
        return o

    def transformer(x: str, p: str) -> str:
        xb, xh, xw, ch = g.values[x].shape
        nh = cfg.heads_for(ch)
        hh = b.group_norm(x, p + "norm", TRANSFORMER_GN_EPS)
        hh = b.reshape(hh, (xb, xh * xw, ch))
        hh = b.linear(hh, p + "proj_in")
        k = 0
        while b.has(f"{p}transformer_blocks.{k}.attn1.to_q.weight"):
            tb = f"{p}transformer_blocks.{k}."
            a1 = attention(b.layer_norm(hh, tb + "norm1"), None, tb + "attn1", nh)
            hh = b.linear(a1, tb + "attn1.to_out.0", res=hh)
            a2 = attention(b.layer_norm(hh, tb + "norm2"), ctx, tb + "attn2", nh)
            hh = b.linear(a2, tb + "attn2.to_out.0", res=hh)
            f = b.linear(b.layer_norm(hh, tb + "norm3"), tb + "ff.net.0.proj")
            f = b.node("geglu", [f], (*g.values[f].shape[:-1], g.values[f].shape[-1] // 2))
            hh = b.linear(f, tb + "ff.net.2", res=hh)
            k += 1
        if k == 0:
            raise UnsupportedModelError(f"{store.path}: spatial transformer {UNET}{p} has no transformer blocks")
        hh = b.linear(hh, p + "proj_out")
        hh = b.reshape(hh, (xb, xh, xw, ch))
        return b.add(hh, x)

    def run_block(x: str, p: str, kinds: dict[int, str]) -> str:
        for j in sorted(kinds):
            kind, sp = kinds[j], f"{p}{j}."
            if kind == "resnet":
                x = resnet(x, sp)
            elif kind == "transformer":
                x = transformer(x, sp)
            elif kind == "down":
                x = b.conv(x, sp + "op", stride=2)
            elif kind == "up":
                xb, xh, xw, ch = g.values[x].shape
                x = b.node("upsample_nearest", [x], (xb, 2 * xh, 2 * xw, ch), factor=2)
                x = b.conv(x, sp + "conv")
            elif kind == "conv_in":
                x = b.conv(x, f"{p}{j}")
        return x

    inputs = _kinds(store, UNET + "input_blocks.")
    outputs = _kinds(store, UNET + "output_blocks.")
    if sorted(inputs) != list(range(len(inputs))) or sorted(outputs) != list(range(len(outputs))):
        raise UnsupportedModelError(f"{store.path}: UNet input/output blocks are not numbered 0..N-1")
    skips = []
    for i in sorted(inputs):
        x = run_block(x, f"input_blocks.{i}.", inputs[i])
        skips.append(x)
    mids = _kinds(store, UNET + "middle_block.", nested=False)
    x = run_block(x, "middle_block.", mids)
    for i in sorted(outputs):
        if not skips:
            raise UnsupportedModelError(f"{store.path}: UNet has more output blocks than skip connections")
        s = skips.pop()
        xb, xh, xw, ch = g.values[x].shape
        x = b.node("concat", [x, s], (xb, xh, xw, ch + g.values[s].shape[-1]), axis=-1)
        x = run_block(x, f"output_blocks.{i}.", outputs[i])
    if skips:
        raise UnsupportedModelError(f"{store.path}: UNet leaves {len(skips)} skip connections unused")
    x = b.group_norm(x, "out.0", cfg.eps, "silu")
    x = b.conv(x, "out.2")
    out = g.add_node("transpose", [x], "eps", (B, cfg.out_channels, h, w), c, perm=(0, 3, 1, 2))
    g.outputs.append(out)


# --- VAE -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VaeConfig:
    latent_channels: int
    scaling_factor: float
    groups: int = GROUPS
    # f16 activations overflow in SDXL's VAE (its decoder's mid-block values pass 65,504: black or NaN images); its
    # functions then keep f32 activations whatever --act-type says (diffusers' force_upcast)
    f16_overflows: bool = False


# SDXL base's published scheduler/scheduler_config.json (Euler, "leading" spacing, offset 1): the noise schedule an
# SDXL checkpoint samples with when no scheduler config comes with it (SD 1.x/2.x: the runtime's SD defaults).
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# Token id each text encoder pads with: OpenAI CLIP's tokenizer pads with the end token, OpenCLIP's with 0 ("!")
PAD_END, PAD_ZERO = 49407, 0


# The image size each family was trained at: what compile builds when no --size is given (SD 2.x's 768-v: 768)
NATIVE_SIZE = {"sd1": 512, "sd2": 512, "sdxl": 1024}


# What each family's VAE is scaled by where no config says (LDM's and sgm's configs, diffusers' defaults)
SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def vae_config(store, a: Assumptions, config: dict | None = None, family: str = "sd1") -> VaeConfig:
    key = VAE + "decoder.conv_in.weight"
    if key not in store:
        raise UnsupportedModelError(f"{store.path}: no SD VAE decoder ({key})")
    zc = tuple(store.info(key).shape)[1]
    check_config_keys(store, a, config or {}, "VAE", VAE_READ, VAE_SHAPES, VAE_DEFAULT_ONLY)
    _check_number(store, config or {}, "latent_channels", zc, "VAE")
    sf = (config or {}).get("scaling_factor") or _meta(store, "vae.scaling_factor", "scaling_factor")
    if sf is None:
        sf = SCALING[family]
        a.add(f"VAE: scaling factor {sf} ({family.upper()}'s; no config says)")
    groups = (config or {}).get("norm_num_groups")
    if groups is None:
        groups = GROUPS
        a.add(f"VAE: GroupNorm with {GROUPS} groups (LDM's; no file states it)")
    upcast = (config or {}).get("force_upcast")
    overflows = bool(upcast) if upcast is not None else family == "sdxl"
    return VaeConfig(zc, float(sf), int(groups), overflows)


def _vae_resnet(b: _Builder, x: str, p: str) -> str:
    h = b.group_norm(x, p + "norm1", VAE_EPS, "silu")
    h = b.conv(h, p + "conv1")
    h = b.group_norm(h, p + "norm2", VAE_EPS, "silu")
    skip = b.conv(x, p + "nin_shortcut") if b.has(p + "nin_shortcut.weight") else x
    return b.conv(h, p + "conv2", res=skip)


def _vae_attention(b: _Builder, x: str, p: str) -> str:
    g = b.g
    xb, xh, xw, ch = g.values[x].shape
    h = b.reshape(b.group_norm(x, p + "norm", VAE_EPS), (xb, xh * xw, ch))
    q, k, v = (b.linear(h, p + n) for n in ("q", "k", "v"))
    o = b.node("attention", [q, k, v], g.values[q].shape, heads=1, causal=False)
    return b.reshape(b.linear(o, p + "proj_out", res=b.reshape(x, (xb, xh * xw, ch))), (xb, xh, xw, ch))


def _levels(store, prefix: str) -> dict[int, list[int]]:
    out: dict[int, set[int]] = {}
    for n in store.names():
        m = re.match(re.escape(prefix) + r"(\d+)\.block\.(\d+)\.", n)
        if m:
            out.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {k: sorted(v) for k, v in out.items()}


def _vae_mid(b: _Builder, x: str, p: str) -> str:
    x = _vae_resnet(b, x, p + "mid.block_1.")
    x = _vae_attention(b, x, p + "mid.attn_1.")
    return _vae_resnet(b, x, p + "mid.block_2.")


def lift_decoder(g: Graph, store, cfg: VaeConfig, h: int, w: int, used: set[str]) -> None:
    b = _Builder(g, store, VAE, "vae.", "vae", used, cfg.groups)
    z = g.add_input("latents", (1, cfg.latent_channels, h, w), "float32", "vae")
    x = b.node("affine", [z], (1, cfg.latent_channels, h, w), scale=1.0 / cfg.scaling_factor, shift=0.0)
    x = b.node("transpose", [x], (1, h, w, cfg.latent_channels), perm=(0, 2, 3, 1))
    x = b.conv(x, "post_quant_conv")
    x = b.conv(x, "decoder.conv_in")
    x = _vae_mid(b, x, "decoder.")
    levels = _levels(store, VAE + "decoder.up.")
    for lv in sorted(levels, reverse=True):
        for r in levels[lv]:
            x = _vae_resnet(b, x, f"decoder.up.{lv}.block.{r}.")
        if b.has(f"decoder.up.{lv}.upsample.conv.weight"):
            xb, xh, xw, ch = g.values[x].shape
            x = b.node("upsample_nearest", [x], (xb, 2 * xh, 2 * xw, ch), factor=2)
            x = b.conv(x, f"decoder.up.{lv}.upsample.conv")
    x = b.group_norm(x, "decoder.norm_out", VAE_EPS, "silu")
    x = b.conv(x, "decoder.conv_out")
    _, H, W, C = g.values[x].shape
    out = g.add_node("transpose", [x], "image", (1, C, H, W), "vae", perm=(0, 3, 1, 2))
    g.outputs.append(out)


def lift_encoder(g: Graph, store, cfg: VaeConfig, H: int, W: int, used: set[str]) -> None:
    b = _Builder(g, store, VAE, "vae.", "vae", used, cfg.groups)
    img = g.add_input("image", (1, 3, H, W), "float32", "vae")
    x = b.node("transpose", [img], (1, H, W, 3), perm=(0, 2, 3, 1))
    x = b.conv(x, "encoder.conv_in")
    levels = _levels(store, VAE + "encoder.down.")
    for lv in sorted(levels):
        for r in levels[lv]:
            x = _vae_resnet(b, x, f"encoder.down.{lv}.block.{r}.")
        if b.has(f"encoder.down.{lv}.downsample.conv.weight"):
            # LDM's VAE downsampling pads only the bottom and right edges, then a 3x3 stride-2 conv without padding.
            x = b.conv(x, f"encoder.down.{lv}.downsample.conv", stride=2, pads=(0, 0, 1, 1))
    x = _vae_mid(b, x, "encoder.")
    x = b.group_norm(x, "encoder.norm_out", VAE_EPS, "silu")
    x = b.conv(x, "encoder.conv_out")
    x = b.conv(x, "quant_conv")
    _, h, w, C = g.values[x].shape
    out = g.add_node("transpose", [x], "moments", (1, C, h, w), "vae", perm=(0, 3, 1, 2))
    g.outputs.append(out)


# --- the module ----------------------------------------------------------------------------------------------------


def detect(store) -> bool:
    return UNET + "input_blocks.0.0.weight" in store or VAE + "decoder.conv_in.weight" in store


# What marks an SDXL checkpoint: its second text encoder (single file, or a diffusers text_encoder_2/ folder kept
# under its folder's name) or the UNet's label embedding of size and crop conditioning.
SDXL_MARKS = ("conditioner.embedders.1.", UNET + "label_emb.", "text_encoder_2/")


def is_sdxl(store) -> bool:
    return any(n.startswith(SDXL_MARKS) for n in store.names())


def _no_text_encoder(store) -> str:
    """An SD checkpoint without a text encoder sdcompile reads: what is there instead, and the two ways on."""
    from sdcompile.models import identify

    te = [n for n in store.names() if n.startswith(("cond_stage_model.", "conditioner."))]
    found = identify.identify(store) if te else None
    there = f"it holds {found.what}" if found else f"{len(te)} cond_stage_model.* tensors" if te else "none at all"
    return (
        f"{store.path}: an SD checkpoint with no CLIP text encoder sdcompile reads ({there}); pass one with "
        "--clip-l FILE, or compile the rest without it: --components unet,vae_decoder,vae_encoder"
    )


def lift(
    store,
    sizes: list[tuple[int, int]] | None,
    *,
    configs: dict[str, dict] | None = None,
    components: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder", "vae_encoder"),
    batch: int = 2,
    vae_tile: int | None = None,
    prediction: str | None = None,
) -> Module:
    """The SD module for each image size (width, height) in ``sizes``; ``configs`` holds diffusers' config.json
    dicts by component where the model came as a directory. Every tensor of the store not read by a lifted
    component is listed in ``module.meta["ignored"]`` with the reason."""
    configs = configs or {}
    a = Assumptions()
    used: set[str] = set()
    mod = Module(meta={"family": "sd", "assumptions": a.items})
    text_inputs = [{"input": "input_ids", "pad_token_id": PAD_END}]
    te = None
    te_ignored: dict[str, str] = {}
    if "text_encoder" in components:
        if not clip_text.find_text_encoders(store):
            raise UnsupportedModelError(_no_text_encoder(store))
        te = clip_text.lift(
            store, batch=batch, config=configs.get("text_encoder"), config_2=configs.get("text_encoder_2")
        )
        for note in te.meta.pop("assumptions", []):
            a.add(note)
        te_ignored = te.meta.pop("ignored", {})
        te.meta["function"] = "encode_text"
        for v in te.weights():
            used.add(v.data.key)
        # each encoder's token ids padded as its tokenizer pads: OpenAI CLIP's with the end token, OpenCLIP's with 0
        text_inputs = [
            {
                "input": "input_ids" if e["canon"] == clip_text.CANONICAL else "input_ids_2",
                "pad_token_id": PAD_ZERO if e["role"] in ("sd2", "sdxl_bigg") else PAD_END,
            }
            for e in te.meta["encoders"]
        ]
        mod.functions["encode_text"] = te
    pooled_hint = te.values["text_embeds"].shape[-1] if te is not None and "text_embeds" in te.values else None
    ucfg = unet_config(store, a, configs.get("unet"), prediction, pooled_hint) if "unet" in components else None
    family = ucfg.family if ucfg is not None else "sdxl" if is_sdxl(store) else "sd1"
    vcfg = (
        vae_config(store, a, configs.get("vae"), family) if {"vae_decoder", "vae_encoder"} & set(components) else None
    )
    if te is not None and ucfg is not None:
        width = te.values["last_hidden_state"].shape[-1]
        if width != ucfg.context_dim:
            raise UnsupportedModelError(
                f"{store.path}: the text encoders' context is {width} wide but the UNet's cross-attention takes "
                f"{ucfg.context_dim}: the files belong to different models"
            )
        if ucfg.adm_in and pooled_hint != ucfg.pooled_dim:
            raise UnsupportedModelError(
                f"{store.path}: the UNet's added conditioning takes a pooled text embedding of {ucfg.pooled_dim} but "
                f"the text encoders give {pooled_hint}: the files belong to different models"
            )
    if not sizes:
        side = NATIVE_SIZE[family] if ucfg is None or ucfg.prediction != "v_prediction" else 768
        sizes = [(side, side)]
        a.add(f"image size {side}x{side} ({family.upper()}'s own; --size compiles others)")
    for W, H in sizes:
        if W % 8 or H % 8 or W <= 0 or H <= 0:
            raise UnsupportedModelError(f"image size {W}x{H} is not a positive multiple of 8")
        tag = f"{W}x{H}"
        if ucfg is not None:
            g = Graph(meta={"family": "sd", "function": "denoise", "size": [W, H]})
            lift_unet(g, store, ucfg, batch, H // 8, W // 8, used)
            mod.functions[f"denoise_{tag}"] = g
        if vcfg is not None and "vae_decoder" in components:
            if vae_tile is not None and max(H, W) // 8 > vae_tile:
                # One decoder for a tile serves every size; the pipeline blends overlapping tiles.
                name = f"decode_latents_tile{vae_tile}"
                if name not in mod.functions:
                    g = Graph(meta={"family": "sd", "function": "decode_latents", "size": [8 * vae_tile] * 2})
                    lift_decoder(g, store, vcfg, vae_tile, vae_tile, used)
                    mod.functions[name] = g
                mod.meta.setdefault("vae_tiling", {})[tag] = name
            else:
                g = Graph(meta={"family": "sd", "function": "decode_latents", "size": [W, H]})
                lift_decoder(g, store, vcfg, H // 8, W // 8, used)
                mod.functions[f"decode_latents_{tag}"] = g
        if vcfg is not None and "vae_encoder" in components:
            if vae_tile is not None and max(H, W) // 8 > vae_tile:
                # The encoder in tiles too: image tiles of 8 x vae_tile pixels, whose moments the pipeline blends.
                name = f"encode_image_tile{vae_tile}"
                if name not in mod.functions:
                    g = Graph(meta={"family": "sd", "function": "encode_image", "size": [8 * vae_tile] * 2})
                    lift_encoder(g, store, vcfg, 8 * vae_tile, 8 * vae_tile, used)
                    mod.functions[name] = g
                mod.meta.setdefault("vae_encode_tiling", {})[tag] = name
            else:
                g = Graph(meta={"family": "sd", "function": "encode_image", "size": [W, H]})
                lift_encoder(g, store, vcfg, H, W, used)
                mod.functions[f"encode_image_{tag}"] = g
    if vcfg is not None and vcfg.f16_overflows:
        why = (
            "the SDXL VAE's activations overflow f16 (diffusers' force_upcast): kept f32"
            if family == "sdxl"
            else "the VAE's config says force_upcast: kept f32"
        )
        for g in mod.functions.values():
            if g.meta.get("function") in ("decode_latents", "encode_image"):
                g.meta["act_f16_overflows"] = why
    scheduler = dict(configs.get("scheduler") or (SDXL_SCHEDULER if family == "sdxl" else {}))
    if ucfg is not None:
        scheduler["prediction_type"] = ucfg.prediction  # what the lifter decided (read, --prediction or reported)
    mod.meta["scheduler"] = scheduler or None
    index = configs.get("pipeline") or {}
    mod.meta["pipeline"] = {
        "family": family,
        "text_inputs": text_inputs,
        # diffusers' SDXL pipelines encode an empty negative prompt as zeros (model_index.json may say otherwise)
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", family == "sdxl")),
    }
    mod.meta["config"] = {
        "unet": ucfg.__dict__ if ucfg else None,
        "vae": vcfg.__dict__ if vcfg else None,
        "sizes": [list(s) for s in sizes],
        "batch": batch,
    }
    mod.meta["ignored"] = ignored(store, used) | {k: v for k, v in te_ignored.items() if k not in used}
    return mod


def ignored(store, used: set[str]) -> dict[str, str]:
    """Every tensor not used, with the reason: what users should know was left out."""
    out = {}
    xl = is_sdxl(store)
    for n in store.names():
        if n in used:
            continue
        if xl and n.startswith(("conditioner.embedders.1.", "text_encoder_2/")):
            why = (
                "SDXL's second text encoder (OpenCLIP ViT-bigG): not read (--components leaves it out, or it is not "
                "a tensor of a complete encoder)"
            )
        elif xl and n.startswith((UNET, "unet/")):
            why = "SDXL UNet: not compiled (--components leaves it out)"
        elif xl and n.startswith(("conditioner.embedders.", "text_encoder/")):
            why = "SDXL's first text encoder (CLIP ViT-L): not compiled (--components leaves it out)"
        elif xl and n.startswith("conditioner."):
            why = "SDXL conditioning (size and crop embedders): part of the SDXL UNet's input, not compiled"
        elif n.startswith("model_ema."):
            why = "EMA copy of the UNet (the checkpoint's model.diffusion_model.* weights are used)"
        elif n.startswith(("optimizer", "optimizer_states")):
            why = "optimizer state"
        elif n.endswith("position_ids"):
            why = "position ids buffer (positions are 0..76)"
        elif n.endswith(("alphas_cumprod", "betas", "alphas_cumprod_prev", "sqrt_alphas_cumprod")) or n in (
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
            "model_ema.decay",
            "model_ema.num_updates",
            "logvar",
        ):
            why = "training schedule buffer (the sampler computes its own schedule)"
        elif n.startswith(VAE + "loss."):
            why = "VAE training loss (discriminator / perceptual) weights"
        elif n.startswith(VAE + "encoder.") or n in (VAE + "quant_conv.weight", VAE + "quant_conv.bias"):
            why = "VAE encoder: not compiled (--components leaves it out)"
        elif n.startswith(VAE + "decoder.") or n.startswith(VAE + "post_quant_conv."):
            why = "VAE decoder: not compiled (--components leaves it out)"
        elif n.startswith(UNET):
            why = "UNet: not compiled (--components leaves it out)"
        elif n.startswith(("cond_stage_model.", "conditioner.embedders.")):
            why = "text encoder: not compiled (--components leaves it out), or a tensor it does not read"
        else:
            why = "not part of any component sdcompile lifts"
        out[n] = why
    return out
