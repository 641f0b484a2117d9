"""Lift the CLIP text encoders of Stable Diffusion 1.x, 2.x and SDXL, from any naming convention, into the IR.

Which encoders a file holds
    `find_text_encoders(store)` lists them as `TextEncoder` records: the ``role`` ("sd1" CLIP ViT-L, "sd2"
    OpenCLIP ViT-H, "sdxl_clip_l" and "sdxl_bigg" for SDXL's pair, "clip" for a standalone CLIPTextModel), the
    ``names`` the file uses (``open_clip_names``: transformers' HF names, OpenCLIP's, or stable-diffusion.cpp's HF
    names with OpenCLIP's fused in_proj), the ``prefix`` in front of them, and the ``canon``ical prefix of their IR
    weights: ``text_encoder.`` for the first encoder, ``text_encoder_2.`` for SDXL's OpenCLIP-bigG (diffusers'
    folder names), each followed by transformers' ``CLIPTextModel`` sub-path (``encoder.layers.3.self_attn.q_proj
    .weight``; ``text_projection.weight`` as [out, in]). OpenCLIP's fused ``in_proj`` becomes three derived weights
    (`sdcompile/ir/derived.py` slices, evaluated when the artifact is written) named ``q_proj``/``k_proj``/``v_proj``,
    so quantization rules and ``--type`` give them the types they get from a diffusers folder.

Building graphs
    `add_text_encoder(g, store, enc, batch=..., ids=..., layer=..., final_norm=..., pooled=..., used=...)` adds one
    encoder's nodes to an existing `Graph` (one ``encode_text`` graph holds both SDXL encoders) and returns an
    `EncodedText`: the hidden-state value (``hidden_states[layer]`` in transformers' numbering: -1 the last layer,
    -2 the penultimate; through ``final_layer_norm`` when ``final_norm``), the pooled value where asked, the
    hyperparameters, the assumptions for the report and the encoder's tensors it did not read with the reason. The
    defaults come from the record (`TextEncoder.context_layer`, ``context_final_norm``, ``pooled``), which say what
    Stable Diffusion reads:

    - SD 1.x: the last layer through the final norm (CLIPTextModel.last_hidden_state);
    - SD 2.x (LDM's FrozenOpenCLIPEmbedder, layer "penultimate"): layers 0..L-2 then ``ln_final``. A 24-layer file in
      OpenCLIP's (or stable-diffusion.cpp's fused) names holds the whole tower: layer -2, the last resblock reported
      as ignored. diffusers' SD 2.x ``text_encoder/`` is already cut to 23 layers in transformers' names: layer -1,
      exactly as diffusers runs it;
    - SDXL: CLIP-L's and bigG's ``hidden_states[-2]`` without the final norm (diffusers' encode_prompt), and bigG's
      pooled output: the full stack, ``final_layer_norm``, the row of the first EOS token, times ``text_projection``
      -> [B, P].

    Pooling reads one row per batch item at a position only the prompt knows. There is no gather op for activations,
    so it reuses `attention`: the graph input ``eos_mask`` [B, S] (float32, 1.0 at each row's first EOS token, 0.0
    elsewhere; ``eos_mask_of`` computes it) gives keys 16 at that row and 0 elsewhere against a query of 16s, so
    each head's scores are 256*sqrt(head width) there and 0 elsewhere; softmax gives weight exp(-256) < 1e-111,
    which is 0 in f32, to every other row: the output is that row, exactly. transformers pools at the first position
    of ``eos_token_id`` (49407 for every released CLIP; the argmax of the ids for its legacy id 2, the same position
    with these tokenizers). A row with no 1.0 would average every position: the runtime must always set one.

    `lift(store, batch, config, config_2)` builds the whole ``encode_text`` a store's encoders make:

    - one encoder: input ``input_ids`` [B, S] int32, output ``last_hidden_state`` [B, S, D];
    - SDXL: inputs ``input_ids`` (CLIP-L's tokenizer: padded with EOS 49407), ``input_ids_2`` (bigG's: padded with
      0, "!") and ``eos_mask`` [B, S] f32; outputs ``last_hidden_state`` [B, S, 768 + 1280] (the concatenated
      context) and ``text_embeds`` [B, 1280] (the pooled, projected embedding);
    - SDXL refiner (bigG alone): ``input_ids_2`` and ``eos_mask``; outputs ``last_hidden_state`` [B, S, 1280] and
      ``text_embeds``.

    ``graph.meta["ignored"]`` maps each encoder tensor not read to the reason; ``ignored_reason`` gives it for one.

Hyperparameters come from what the files state, in this order: a transformers ``config.json`` (beside the weights
file, in a transformers model folder or a diffusers pipeline's ``text_encoder/`` or ``text_encoder_2/``), then
metadata (safetensors ``__metadata__``, GGUF key/values; with two encoders only the keys naming one,
``text_encoder.*`` / ``text_encoder_2.*``), then tensor shapes (vocabulary, width, positions, depth, MLP width,
projection). A config that contradicts the shapes is refused: it belongs to another model. What nothing states is
assumed and the report says so: 64 channels per head (every released CLIP and OpenCLIP text tower); OpenCLIP names
mean OpenCLIP's ``nn.GELU`` (exact erf), which its ViT-H and ViT-bigG use; for transformers' names the activation of
the released encoder of that width (CLIP ViT-L 768: quick_gelu; OpenCLIP ViT-H 1024 and ViT-bigG 1280: gelu), for
another width OpenCLIP's gelu in SDXL's second place and OpenAI CLIP's quick_gelu elsewhere; layer-norm eps 1e-5. Running a gelu encoder with quick_gelu gives outputs off by a few hundredths and no error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdcompile.errors import UnsupportedModelError
from sdcompile.ir import Graph, WeightData
from sdcompile.ir.derived import Permute, Slice, Tensor
from sdcompile.models import open_clip_names as ocn
from sdcompile.models.open_clip_names import HF, HF_FUSED, OPEN_CLIP
from sdcompile.quant.types import QUANT_TYPES

COMPONENT = "text_encoder"
CANONICAL = "text_encoder."
CANONICAL_2 = "text_encoder_2."

# (convention, prefix in the file) of transformers-named encoders, checked in order; kept for the example writer
# and callers that ask only whether a CLIP text encoder is there (`find_prefix`).
CONVENTIONS: list[tuple[str, str]] = [
    ("ldm", "cond_stage_model.transformer.text_model."),
    ("sdxl-ldm", "conditioner.embedders.0.transformer.text_model."),
    ("diffusers", "text_encoder.text_model."),
    ("transformers", "text_model."),
    ("transformers5", ""),
]

# Every place an encoder is stored: (convention, prefix, names, slot, root). Slot 1 is the first (canonical
# ``text_encoder.``), slot 2 SDXL's OpenCLIP-bigG (``text_encoder_2.``); the first hit per slot wins. ``root``: every
# tensor of that encoder starts with it (transformers keeps text_projection beside text_model.). Transformers names
# with a fused in_proj are stable-diffusion.cpp's (HF_FUSED).
PLACES: list[tuple[str, str, str, int, str]] = [
    ("ldm", "cond_stage_model.transformer.text_model.", HF, 1, "cond_stage_model.transformer."),
    ("sd2-ldm", "cond_stage_model.model.", OPEN_CLIP, 1, "cond_stage_model.model."),
    ("sdxl-ldm", "conditioner.embedders.0.transformer.text_model.", HF, 1, "conditioner.embedders.0.transformer."),
    ("sdxl-ldm", "conditioner.embedders.1.model.", OPEN_CLIP, 2, "conditioner.embedders.1.model."),
    # the SDXL refiner conditions on bigG alone, stored as the first embedder
    ("sdxl-refiner-ldm", "conditioner.embedders.0.model.", OPEN_CLIP, 2, "conditioner.embedders.0.model."),
    # stable-diffusion.cpp's convert: cond_stage_model.1. is SDXL's second encoder; text_encoders.clip_{l,g}. are
    # what it writes for files given as --clip_l / --clip_g
    ("sdcpp", "cond_stage_model.1.transformer.text_model.", HF, 2, "cond_stage_model.1.transformer."),
    ("sdcpp", "text_encoders.clip_l.transformer.text_model.", HF, 1, "text_encoders.clip_l.transformer."),
    ("sdcpp", "text_encoders.clip_g.transformer.text_model.", HF, 2, "text_encoders.clip_g.transformer."),
    # a diffusers SDXL folder, each component under its folder's name (transformers before 5 save text_model.*)
    ("diffusers-sdxl", "text_encoder/text_model.", HF, 1, "text_encoder/"),
    ("diffusers-sdxl", "text_encoder/", HF, 1, "text_encoder/"),
    ("diffusers-sdxl", "text_encoder_2/text_model.", HF, 2, "text_encoder_2/"),
    ("diffusers-sdxl", "text_encoder_2/", HF, 2, "text_encoder_2/"),
    ("diffusers", "text_encoder.text_model.", HF, 1, "text_encoder."),
    # standalone encoders, only where nothing else is found
    ("transformers", "text_model.", HF, 1, ""),
    ("transformers5", "", HF, 1, ""),
    ("open_clip", "", OPEN_CLIP, 1, ""),
]

# Metadata keys that may carry the head count / activation / eps (safetensors __metadata__, GGUF KV).
HEAD_KEYS = ("num_attention_heads", "clip.text.attention.head_count", "text_encoder.num_attention_heads")
ACT_KEYS = ("hidden_act", "clip.text.hidden_act", "text_encoder.hidden_act")
EPS_KEYS = ("layer_norm_eps", "clip.text.attention.layer_norm_epsilon", "text_encoder.layer_norm_eps")
ACTIVATIONS = ("quick_gelu", "gelu")

# transformers' CLIPTextConfig keys: those the shapes also state (checked against them), those read, and those that
# do not change last_hidden_state (training, tokenizer ids, the pooled and projected outputs, bookkeeping and
# generation settings every transformers config carries). Any other key stated is reported as not read.
CONFIG_SHAPE_KEYS = {
    "vocab_size": "vocab",
    "hidden_size": "width",
    "intermediate_size": "mlp",
    "num_hidden_layers": "layers",
    "max_position_embeddings": "positions",
}
CONFIG_READ_KEYS = ("num_attention_heads", "hidden_act", "layer_norm_eps")
CONFIG_NO_EFFECT = frozenset(
    """attention_dropout dropout initializer_factor initializer_range projection_dim bos_token_id eos_token_id
    pad_token_id sep_token_id decoder_start_token_id architectures model_type transformers_version torch_dtype dtype
    _name_or_path _commit_hash _attn_implementation_autoset return_dict output_hidden_states output_attentions
    torchscript use_bfloat16 tf_legacy_loss pruned_heads tie_word_embeddings chunk_size_feed_forward is_encoder_decoder
    is_decoder cross_attention_hidden_size add_cross_attention tie_encoder_decoder max_length min_length do_sample
    early_stopping num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty
    length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens finetuning_task id2label label2id
    tokenizer_class prefix task_specific_params problem_type""".split()
)

# The released encoder each width belongs to: (name, heads, activation). stable-diffusion.cpp picks gelu by the same
# widths (its CLIPMLP); transformers' CLIPTextConfig defaults to quick_gelu, OpenAI CLIP's.
RELEASED = {
    768: ("CLIP ViT-L/14 (SD 1.x)", 12, "quick_gelu"),
    1024: ("OpenCLIP ViT-H/14 (SD 2.x)", 16, "gelu"),
    1280: ("OpenCLIP ViT-bigG/14 (SDXL)", 20, "gelu"),
}


POOL_SCALE = 16.0  # the pooling query and key value: scores of 256*sqrt(head width) at the EOS row, 0 elsewhere
EOS_TOKEN = 49407  # CLIP's and OpenCLIP's <|endoftext|>

ROLES = {
    "sd1": "CLIP ViT-L (SD 1.x)",
    "sd2": "OpenCLIP ViT-H (SD 2.x)",
    "sdxl_clip_l": "CLIP ViT-L (SDXL's first text encoder)",
    "sdxl_bigg": "OpenCLIP ViT-bigG (SDXL's second text encoder)",
    "clip": "CLIP text encoder",
}


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder a store holds, and where (see the module docstring)."""

    role: str  # ROLES
    names: str  # open_clip_names.HF | OPEN_CLIP | HF_FUSED
    prefix: str  # in front of the sub-paths in the store
    root: str  # every tensor of this encoder starts with it
    canon: str  # "text_encoder." | "text_encoder_2."
    convention: str  # where the layout comes from ("ldm", "sd2-ldm", "sdxl-ldm", "sdcpp", "diffusers-sdxl", ...)
    alone: bool = True  # the only encoder of the store (metadata without an encoder's name then applies to it)

    @property
    def ids(self) -> str:
        """The graph input of its token ids."""
        return "input_ids" if self.canon == CANONICAL else "input_ids_2"

    @property
    def tag(self) -> str:
        """Prefix of its node names: te. / te2."""
        return "te." if self.canon == CANONICAL else "te2."

    @property
    def context_layer(self) -> int:
        """transformers' hidden_states index Stable Diffusion conditions on."""
        if self.role.startswith("sdxl"):
            return -2
        if self.role == "sd2" and self.names in (OPEN_CLIP, HF_FUSED):
            return -2  # the whole OpenCLIP tower; diffusers' HF-named SD 2.x encoder already lacks the last layer
        return -1

    @property
    def context_final_norm(self) -> bool:
        return not self.role.startswith("sdxl")

    @property
    def pooled(self) -> bool:
        return self.role == "sdxl_bigg"


@dataclass(frozen=True)
class ClipTextConfig:
    vocab: int
    width: int
    positions: int
    layers: int
    mlp: int
    heads: int
    act: str
    eps: float
    convention: str
    prefix: str
    names: str = HF
    projection: int | None = None  # text_projection's output width, where the file has one


@dataclass
class EncodedText:
    """What `add_text_encoder` added: value names, hyperparameters, report notes, tensors left out and why."""

    hidden: str
    pooled: str | None
    config: ClipTextConfig
    assumptions: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)


def _place_hits(names: set[str]) -> dict[int, tuple[str, str, str, str]]:
    found: dict[int, tuple[str, str, str, str]] = {}
    for conv, prefix, kind, slot, root in PLACES:
        if slot in found or (prefix == "" and found):
            continue
        if prefix + ocn.TOKEN[kind] not in names:
            continue
        if kind == HF and prefix + ocn.FUSED_MARK in names:
            kind = HF_FUSED
        found[slot] = (conv, prefix, kind, root)
    return found


def find_text_encoders(store) -> list[TextEncoder]:
    """The text encoders ``store`` holds, first (``text_encoder.``) then second (``text_encoder_2.``)."""
    names = set(store.names())
    found = _place_hits(names)
    out: list[TextEncoder] = []
    pair = 2 in found
    for slot in sorted(found):
        conv, prefix, kind, root = found[slot]
        if pair:
            role = "sdxl_clip_l" if slot == 1 else "sdxl_bigg"
            if slot == 1 and found[2][0] == "sdcpp":
                conv = "sdcpp"
        elif prefix == "":
            role = "clip"
        elif kind in (OPEN_CLIP, HF_FUSED):
            role = "sd2"
        else:
            width = store.info(prefix + ocn.TOKEN[kind]).shape[-1]
            role = "sd2" if width == 1024 else "sd1"
        canon = CANONICAL if slot == 1 else CANONICAL_2
        out.append(TextEncoder(role, kind, prefix, root, canon, conv, alone=len(found) == 1))
    return out


def find_prefix(names: set[str]) -> tuple[str, str] | None:
    """(convention, prefix) of the first text encoder in ``names``, or None: whether there is one to lift."""
    found = _place_hits(names)
    if not found:
        return None
    conv, prefix, _, _ = found[min(found)]
    return conv, prefix


def _meta(store, keys: tuple[str, ...]):
    for k in keys:
        if k in store.metadata:
            return store.metadata[k]
    return None


def _meta_keys(keys: tuple[str, ...], enc: TextEncoder) -> tuple[str, ...]:
    """The metadata keys that speak for ``enc``: all of them for a store's only encoder; with two, those naming it."""
    mine = tuple(enc.canon + k.split(".", 1)[1] for k in keys if k.startswith(CANONICAL))
    return tuple(dict.fromkeys(keys + mine)) if enc.alone else mine


def text_config_of(cfg: dict | None) -> dict | None:
    """The text encoder's part of a transformers config: itself, or a full CLIPModel's ``text_config``."""
    if cfg and cfg.get("model_type") == "clip" and isinstance(cfg.get("text_config"), dict):
        return cfg["text_config"]
    return cfg


def _key(enc: TextEncoder, sub: str) -> ocn.Location:
    """Where ``sub`` is stored, as a full key of the store."""
    loc = ocn.locate(enc.names, sub)
    return ocn.Location(enc.prefix + loc.key, loc.part, loc.transposed)


def projection_key(store, enc: TextEncoder) -> ocn.Location | None:
    """The stored text projection, if any, and its layout. transformers keeps ``text_projection.weight`` [out, in]
    beside ``text_model.``; OpenCLIP keeps ``text_projection`` [in, out]; stable-diffusion.cpp renames both to
    ``text_model.text_projection`` unchanged, so its layout follows the encoder's: [in, out] with the fused in_proj
    it keeps from an OpenCLIP file, [out, in] with transformers' separate q/k/v."""
    if enc.names == OPEN_CLIP:
        loc = _key(enc, "text_projection.weight")
        return loc if loc.key in store else None
    for key in (enc.root + "text_projection.weight", enc.prefix + "text_projection.weight"):
        if key in store:
            return ocn.Location(key)
    key = enc.prefix + "text_projection"
    if key in store:
        return ocn.Location(key, transposed=enc.names == HF_FUSED)
    return None


def encoder_config(store, enc: TextEncoder, config: dict | None = None) -> tuple[ClipTextConfig, list[str]]:
    """``enc``'s hyperparameters, and what was assumed because nothing stated it (for the report)."""
    names = set(store.names())
    config = text_config_of(config) or {}
    who = "text encoder" if enc.canon == CANONICAL else "second text encoder"
    tok = store.info(_key(enc, "embeddings.token_embedding.weight").key).shape
    pos_key = _key(enc, "embeddings.position_embedding.weight").key
    if pos_key not in names:
        raise store.missing(pos_key) or UnsupportedModelError(
            f"{store.path}: {who} ({enc.convention} names) lacks tensor {pos_key}"
        )
    pos = store.info(pos_key).shape
    layer_ids = {
        i
        for n in names
        if n.startswith(enc.prefix)
        for i in [ocn.layer_of(enc.names, n[len(enc.prefix) :])]
        if i is not None
    }
    layers = len(layer_ids)
    if layer_ids != set(range(layers)) or layers == 0:
        raise UnsupportedModelError(
            f"{store.path}: CLIP text encoder ({enc.convention} names) has layers {sorted(layer_ids)}; expected 0..N-1 "
            "without gaps"
        )
    fc1 = _key(enc, "encoder.layers.0.mlp.fc1.weight").key
    if fc1 not in names:
        raise store.missing(fc1) or UnsupportedModelError(
            f"{store.path}: {who} ({enc.convention} names) lacks tensor {fc1}"
        )
    mlp = store.info(fc1).shape[0]
    width = tok[1]
    if len(tok) != 2 or len(pos) != 2 or pos[1] != width:
        raise UnsupportedModelError(
            f"{store.path}: {who}: token embedding {list(tok)} and position embedding {list(pos)} are not [V, D] and "
            "[P, D] of one width: not a CLIP text encoder"
        )
    from_shapes = {"vocab": tok[0], "width": width, "positions": pos[0], "layers": layers, "mlp": mlp}
    for key, what in CONFIG_SHAPE_KEYS.items():
        if config.get(key) is not None and config[key] != from_shapes[what]:
            raise UnsupportedModelError(
                f"{store.path}: the {who}'s config.json says {key} = {config[key]}, its weights say "
                f"{from_shapes[what]}: the config belongs to another model"
            )
    projection = None
    ploc = projection_key(store, enc)
    if ploc is not None:
        pshape = store.info(ploc.key).shape
        if len(pshape) != 2 or pshape[1 if not ploc.transposed else 0] != width:
            layout = "[in, out]" if ploc.transposed else "[out, in]"
            raise UnsupportedModelError(
                f"{store.path}: {ploc.key} is {list(pshape)}; a text projection of width {width} is {layout} with "
                f"in = {width}: the file is damaged or not this encoder's"
            )
        projection = pshape[1] if ploc.transposed else pshape[0]
        # transformers' CLIPTextConfig always holds a projection_dim (512 by default); only a model with the
        # projection states it
        pd = config.get("projection_dim")
        if pd is not None and "CLIPTextModelWithProjection" in (config.get("architectures") or []) and pd != projection:
            raise UnsupportedModelError(
                f"{store.path}: the {who}'s config.json says projection_dim = {pd}, {ploc.key} gives {projection}: "
                "the config belongs to another model"
            )
    assumed: list[str] = []
    released = RELEASED.get(width)

    def stated(key: str, meta_keys: tuple[str, ...]):
        v = config.get(key)
        return v if v is not None else _meta(store, _meta_keys(meta_keys, enc))

    heads = stated("num_attention_heads", HEAD_KEYS)
    if heads is None:
        heads = max(1, width // 64)
        assumed.append(
            f"{who}: {heads} attention heads (64 channels each, as in every released CLIP and OpenCLIP text encoder; "
            f"from the width {width}; no config.json or metadata states it)"
        )
    heads = int(heads)
    if heads < 1 or width % heads:
        raise UnsupportedModelError(f"{store.path}: width {width} is not divisible by {heads} attention heads")
    act = stated("hidden_act", ACT_KEYS)
    if act is None:
        if enc.names in (OPEN_CLIP, HF_FUSED):
            act = "gelu"
            assumed.append(
                f"{who}: gelu activation (exact erf: OpenCLIP's nn.GELU, which its ViT-H and ViT-bigG text towers "
                "use; from OpenCLIP's names and fused attention; no config.json or metadata states it)"
            )
        elif released is None and enc.role in ("sd2", "sdxl_bigg"):
            act = "gelu"
            assumed.append(
                f"{who}: gelu activation (exact erf, OpenCLIP's nn.GELU: it holds the place of {ROLES[enc.role]}; no "
                "config.json or metadata states it)"
            )
        else:
            act = released[2] if released else "quick_gelu"
            whose = f"{released[0]}'s" if released else "OpenAI CLIP's, transformers' default"
            assumed.append(
                f"{who}: {act} activation ({whose}; from the width {width}; no config.json or metadata states it)"
            )
    act = str(act)
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{store.path}: text encoder activation {act!r} is not supported ({', '.join(ACTIVATIONS)})"
        )
    eps = stated("layer_norm_eps", EPS_KEYS)
    if eps is None:
        eps = 1e-5
        assumed.append(f"{who}: layer-norm eps {eps:g} (CLIP's; no config.json or metadata states it)")
    if ploc is not None and ploc.transposed and enc.names == HF_FUSED:
        assumed.append(
            f"{who}: {ploc.key} read as [in, out] (OpenCLIP's layout, which stable-diffusion.cpp's convert copies "
            "unchanged with the fused in_proj it keeps); a square matrix's layout cannot be told from its shape"
        )
    for key in sorted(config):
        if key in CONFIG_SHAPE_KEYS or key in CONFIG_READ_KEYS or key in CONFIG_NO_EFFECT:
            continue
        if config[key] in (None, {}, []):  # a key that states nothing
            continue
        assumed.append(f"{who}: config.json states {key} = {config[key]!r}, which sdcompile does not read")
    cfg = ClipTextConfig(
        tok[0], width, pos[0], layers, mlp, heads, act, float(eps), enc.convention, enc.prefix, enc.names, projection
    )
    return cfg, assumed


def read_config(store, config: dict | None = None) -> tuple[ClipTextConfig, list[str]]:
    """The first text encoder's hyperparameters and assumptions (see `encoder_config`)."""
    encs = find_text_encoders(store)
    if not encs:
        raise UnsupportedModelError(_not_found_message(store))
    return encoder_config(store, encs[0], config)


def _listing(store) -> str:
    from collections import Counter

    heads = Counter(".".join(n.split(".")[:2]) for n in store.names())
    listing = ", ".join(f"{k}.* ({c})" for k, c in heads.most_common(8)) or "no tensors"
    return f"{store.format}, {len(store)} tensors: {listing}"


_LOOKS_FOR = (
    "'<prefix>embeddings.token_embedding.weight' (transformers' names) with the prefixes "
    + ", ".join(repr(p) for _, p, k, _, _ in PLACES if p and k == HF)
    + " or none, or '<prefix>token_embedding.weight' (OpenCLIP's) with "
    + ", ".join(repr(p) for _, p, k, _, _ in PLACES if p and k == OPEN_CLIP)
)


def _not_found_message(store) -> str:
    from sdcompile.models import identify

    known = identify.refusal(store)
    if known is not None:
        return known
    return (
        f"{store.path}: no CLIP text encoder found ({_listing(store)}). sdcompile looks for {_LOOKS_FOR}; pass a "
        "Stable Diffusion checkpoint or a CLIPTextModel's weights"
    )


def not_a_model_message(store) -> str:
    """Refusing a store that is neither an SD checkpoint nor a text encoder: what it is, where that is known."""
    from sdcompile.models import identify

    known = identify.refusal(store)
    if known is not None:
        return known
    return (
        f"{store.path}: not a model sdcompile recognises ({_listing(store)}). It looks for an SD checkpoint "
        f"(model.diffusion_model.*, first_stage_model.*) or a CLIP text encoder ({_LOOKS_FOR}); pass a Stable "
        "Diffusion checkpoint or a CLIPTextModel's weights"
    )


# --- building the graph ----------------------------------------------------------------------------------------------


def _expected_shape(cfg: ClipTextConfig, sub: str) -> tuple[int, ...]:
    """The canonical shape of ``sub`` (transformers' layout) for ``cfg``."""
    D, F = cfg.width, cfg.mlp
    if sub == "embeddings.token_embedding.weight":
        return (cfg.vocab, D)
    if sub == "embeddings.position_embedding.weight":
        return (cfg.positions, D)
    if sub == "text_projection.weight":
        return (cfg.projection or D, D)
    part, _, wb = sub.rpartition(".")
    if part.endswith("mlp.fc1"):
        return (F, D) if wb == "weight" else (F,)
    if part.endswith("mlp.fc2"):
        return (D, F) if wb == "weight" else (D,)
    if part.endswith("_proj"):
        return (D, D) if wb == "weight" else (D,)
    return (D,)  # layer norms


class _Weights:
    """Adds one encoder's weights under canonical names, reading them from the file's names; records what it read."""

    def __init__(self, g: Graph, store, enc: TextEncoder, cfg: ClipTextConfig, used: set[str], notes: list[str]):
        self.g, self.store, self.enc, self.cfg, self.used, self.notes = g, store, enc, cfg, used, notes
        self.read: set[str] = set()

    def __call__(self, sub: str) -> str:
        name = self.enc.canon + sub
        if name in self.g.values:
            return name
        loc = projection_key(self.store, self.enc) if sub == "text_projection.weight" else _key(self.enc, sub)
        want = _expected_shape(self.cfg, sub)
        what = "second text encoder" if self.enc.canon == CANONICAL_2 else "text encoder"
        if loc is None or loc.key not in self.store:
            key = loc.key if loc is not None else self.enc.root + "text_projection.weight"
            raise self.store.missing(key) or UnsupportedModelError(
                f"{self.store.path}: CLIP {what} ({self.enc.convention} names) lacks tensor {key}"
            )
        info = self.store.info(loc.key)
        shape, D = tuple(info.shape), self.cfg.width
        expr = None
        if loc.part is not None:
            fused = (3 * D, D) if len(want) == 2 else (3 * D,)
            if shape != fused:
                raise UnsupportedModelError(
                    f"{self.store.path}: {loc.key} is {list(shape)}; the fused q/k/v projection of a width-{D} "
                    f"encoder is {list(fused)} (q, k and v stacked): the file is damaged or not a CLIP text encoder"
                )
            expr = Slice(Tensor(self.store, loc.key), 0, loc.part * D, (loc.part + 1) * D)
        elif loc.transposed:
            if shape[::-1] != want:
                raise UnsupportedModelError(
                    f"{self.store.path}: {loc.key} is {list(shape)}, expected {list(want[::-1])} ([in, out])"
                )
            expr = Permute(Tensor(self.store, loc.key), (1, 0))
        elif shape != want:
            raise UnsupportedModelError(
                f"{self.store.path}: {loc.key} is {list(shape)}, expected {list(want)} for this {what} (width {D}, "
                f"MLP {self.cfg.mlp}, vocabulary {self.cfg.vocab}, {self.cfg.positions} positions)"
            )
        dtype = info.dtype
        if dtype not in QUANT_TYPES:  # f8 (fp8 checkpoints), f64: no storage type of its own; read as f32
            if dtype not in ("f64", "f8_e4m3", "f8_e5m2"):
                raise UnsupportedModelError(
                    f"{self.store.path}: {loc.key} is stored as {dtype}; a text encoder weight is a float or a ggml "
                    "quant type: the file is damaged or not a CLIP text encoder"
                )
            note = f"{what}: weights stored as {dtype} are read as f32 (every {dtype} value is exact in f32)"
            if dtype == "f64":
                note = f"{what}: weights stored as f64 are rounded to f32"
            if note not in self.notes:
                self.notes.append(note)
            expr = expr if expr is not None else Tensor(self.store, loc.key)
            dtype = "f32"
        elif expr is not None and dtype not in ("f32", "f16", "bf16"):
            note = (
                f"{what}: the fused q/k/v and transposed projections of a quantized file ({dtype}) are decoded "
                "exactly to f32 before they are split; --type or a rule quantizes them again"
            )
            if note not in self.notes:
                self.notes.append(note)
            dtype = "f32"
        self.g.add_weight(name, want, dtype, COMPONENT, WeightData(self.store, loc.key, dtype, expr=expr))
        self.used.add(loc.key)
        self.read.add(loc.key)
        return name


def eos_mask_of(ids: np.ndarray, eos: int = EOS_TOKEN) -> np.ndarray:
    """The ``eos_mask`` input for token ids [B, S]: 1.0 at each row's first ``eos`` (transformers' pooling position),
    0.0 elsewhere; a row without one is an error (pooling it would average every position)."""
    ids = np.asarray(ids)
    hit = ids == eos
    if not hit.any(axis=1).all():
        raise ValueError(f"a row of token ids has no end-of-text token {eos}")
    mask = np.zeros(ids.shape, np.float32)
    mask[np.arange(ids.shape[0]), hit.argmax(axis=1)] = 1.0
    return mask


def add_text_encoder(
    g: Graph,
    store,
    enc: TextEncoder,
    *,
    batch: int,
    ids: str | None = None,
    layer: int | None = None,
    final_norm: bool | None = None,
    pooled: bool | None = None,
    eos_mask: str = "eos_mask",
    hidden_name: str | None = None,
    pooled_name: str | None = None,
    config: dict | None = None,
    used: set[str] | None = None,
) -> EncodedText:
    """Add ``enc``'s nodes to ``g``: its ids input (added if ``g`` lacks it), the hidden state ``hidden_states[layer]``
    (through the final layer norm when ``final_norm``) and, when ``pooled``, the projected EOS row [B, P] (its
    ``eos_mask`` input added if missing). ``None`` takes what Stable Diffusion reads from this encoder
    (`TextEncoder.context_layer`, ``context_final_norm``, ``pooled``). Stored keys read are added to ``used``."""
    cfg, notes = encoder_config(store, enc, config)
    layer = enc.context_layer if layer is None else layer
    final_norm = enc.context_final_norm if final_norm is None else final_norm
    pooled = enc.pooled if pooled is None else pooled
    ids = ids or enc.ids
    L, B, S, D, c, t = cfg.layers, batch, cfg.positions, cfg.width, COMPONENT, enc.tag
    tap = layer if layer >= 0 else L + 1 + layer  # how many layers the hidden state has been through
    if not 1 <= tap <= L:
        raise UnsupportedModelError(
            f"{store.path}: hidden_states[{layer}] of a {L}-layer text encoder does not exist (1..{L} layers, or "
            f"-1..-{L})"
        )
    if pooled and cfg.projection is None:
        raise UnsupportedModelError(
            f"{store.path}: the pooled output needs the text projection ({enc.root}text_projection.weight or "
            f"{enc.prefix}text_projection), which this {ROLES[enc.role]} file lacks"
        )
    used = set() if used is None else used
    w = _Weights(g, store, enc, cfg, used, notes)
    _shared_input(g, ids, (B, S), "int32", c, f"{store.path}: ", "this encoder")
    x = g.add_node(
        "embed",
        [ids, w("embeddings.token_embedding.weight"), w("embeddings.position_embedding.weight")],
        t + "embed",
        (B, S, D),
        c,
    )
    run = L if pooled else tap

    def dense(h: str, sub: str, out: str, n: int) -> str:
        y = g.add_node("matmul", [h, w(sub + ".weight")], out + ".mm", (B, S, n), c)
        return g.add_node("add", [y, w(sub + ".bias")], out, (B, S, n), c)

    hidden = None
    for i in range(run):
        p, li = f"encoder.layers.{i}.", f"{t}l{i}."
        h = g.add_node(
            "layer_norm",
            [x, w(p + "layer_norm1.weight"), w(p + "layer_norm1.bias")],
            li + "ln1",
            (B, S, D),
            c,
            eps=cfg.eps,
        )
        q = dense(h, p + "self_attn.q_proj", li + "q", D)
        k = dense(h, p + "self_attn.k_proj", li + "k", D)
        v = dense(h, p + "self_attn.v_proj", li + "v", D)
        a = g.add_node("attention", [q, k, v], li + "attn", (B, S, D), c, heads=cfg.heads, causal=True)
        o = dense(a, p + "self_attn.out_proj", li + "o", D)
        x = g.add_node("add", [o, x], li + "res1", (B, S, D), c)
        h = g.add_node(
            "layer_norm",
            [x, w(p + "layer_norm2.weight"), w(p + "layer_norm2.bias")],
            li + "ln2",
            (B, S, D),
            c,
            eps=cfg.eps,
        )
        f = dense(h, p + "mlp.fc1", li + "fc1", cfg.mlp)
        f = g.add_node(cfg.act, [f], li + "act", (B, S, cfg.mlp), c)
        f = dense(f, p + "mlp.fc2", li + "fc2", D)
        last_of_tap = i + 1 == tap and not final_norm
        x = g.add_node("add", [f, x], (hidden_name or t + "hidden") if last_of_tap else li + "res2", (B, S, D), c)
        if i + 1 == tap:
            hidden = x
    if final_norm:
        hidden = g.add_node(
            "layer_norm",
            [hidden, w("final_layer_norm.weight"), w("final_layer_norm.bias")],
            hidden_name or t + "hidden",
            (B, S, D),
            c,
            eps=cfg.eps,
        )
    pool = None
    if pooled:
        pool = _pool(g, w, x, eos_mask, cfg, B, t, pooled_name or t + "pooled")
    ignored = {
        n: ignored_reason(enc, n, cfg, tap, final_norm or pooled, pooled)
        for n in _encoder_tensors(store, enc)
        if n not in w.read
    }
    return EncodedText(hidden, pool, cfg, notes, ignored)


def _shared_input(g: Graph, name: str, shape: tuple[int, ...], dtype: str, c: str, where: str, reader: str) -> None:
    """The graph input ``name``: added, or, where another encoder of the same graph added it, checked to have the
    shape this ``reader`` takes (SDXL's two encoders share the graph and may share inputs)."""
    if name not in g.values:
        g.add_input(name, shape, dtype, c)
    elif g.values[name].shape != shape:
        dims = ", ".join(str(d) for d in shape)
        raise UnsupportedModelError(f"{where}input {name} is {list(g.values[name].shape)}, {reader} reads [{dims}]")


def _pool(g: Graph, w: _Weights, x: str, eos_mask: str, cfg: ClipTextConfig, B: int, t: str, name: str) -> str:
    """The final-normed, projected hidden state of each row's EOS token: [B, P]. The row is picked by attention
    whose scores are 0 except at the EOS position (module docstring): an exact gather from existing ops."""
    S, D, c = cfg.positions, cfg.width, COMPONENT
    _shared_input(g, eos_mask, (B, S), "float32", c, "", "pooling")
    m = g.add_node("reshape", [eos_mask], t + "pool.mask", (B, S, 1), c, to=(B, S, 1))
    fill = g.add_node("affine", [x], t + "pool.fill", (B, S, D), c, scale=0.0, shift=POOL_SCALE)
    keys = g.add_node("mul", [fill, m], t + "pool.keys", (B, S, D), c)
    query = g.add_node("slice", [fill], t + "pool.query", (B, 1, D), c, axis=1, start=0, stop=1)
    row = g.add_node("attention", [query, keys, x], t + "pool.row", (B, 1, D), c, heads=cfg.heads, causal=False)
    row = g.add_node(
        "layer_norm",
        [row, w("final_layer_norm.weight"), w("final_layer_norm.bias")],
        t + "pool.norm",
        (B, 1, D),
        c,
        eps=cfg.eps,
    )
    proj = w("text_projection.weight")
    P = g.values[proj].shape[0]
    y = g.add_node("matmul", [row, proj], t + "pool.proj", (B, 1, P), c)
    return g.add_node("reshape", [y], name, (B, P), c, to=(B, P))


# Names inside a root-level ("" prefix) file that belong to a text encoder; anything else there is not ours to list.
_STANDALONE = (
    "embeddings.",
    "encoder.",
    "final_layer_norm.",
    "text_model.",
    "text_projection",
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "logit_scale",
)


def _encoder_tensors(store, enc: TextEncoder) -> list[str]:
    names = store.names()
    if enc.root == "":
        return [n for n in names if n.startswith(_STANDALONE)]
    roots = (enc.root,)
    if enc.names == HF_FUSED and enc.root.endswith("transformer."):
        # what stable-diffusion.cpp's convert has no name for (logit_scale) stays under OpenCLIP's model.
        roots += (enc.root.removesuffix("transformer.") + "model.",)
    return [n for n in names if n.startswith(roots)]


def ignored_reason(enc: TextEncoder, key: str, cfg: ClipTextConfig, tap: int, final_norm: bool, pooled: bool) -> str:
    """Why a tensor of ``enc`` is not read, when the graph reads ``hidden_states[tap]`` (through the final norm
    when ``final_norm``) and, when ``pooled``, the projected EOS row."""
    who = ROLES[enc.role]
    if key.startswith(enc.prefix):
        rel = key[len(enc.prefix) :]
    elif key.startswith(enc.root):
        rel = key[len(enc.root) :]
    else:  # stable-diffusion.cpp's leftovers under OpenCLIP's model. (_encoder_tensors)
        rel = key.rsplit(".", 1)[-1]
    i = ocn.layer_of(enc.names, rel)
    if i is not None and i >= tap:
        if enc.role == "sd2":
            why = "SD 2.x conditions on the penultimate layer (LDM's FrozenOpenCLIPEmbedder, layer='penultimate')"
        elif enc.role.startswith("sdxl"):
            why = "SDXL conditions on the penultimate hidden state (diffusers' encode_prompt: hidden_states[-2])"
        else:
            why = f"the hidden state read is the output of layer {tap - 1}"
        return f"{who}: layer {i} of {cfg.layers} does not contribute: {why}"
    if rel.startswith(("final_layer_norm.", "ln_final.")) and not final_norm:
        return (
            f"{who}: final layer norm not applied: SDXL reads the penultimate hidden state without it (diffusers' "
            "encode_prompt)"
        )
    if "text_projection" in rel and not pooled:
        return (
            f"{who}: text projection (pooled, projected embedding): Stable Diffusion here conditions on hidden states"
        )
    if rel.endswith("logit_scale") or rel == "logit_scale":
        return "CLIP's logit scale (the temperature of contrastive training)"
    if rel.endswith("position_ids"):
        return "position ids buffer (positions are 0..N-1)"
    if rel.endswith("attn_mask"):
        return "causal attention mask buffer (the attention op applies the causal mask)"
    if rel.startswith(("visual.", "vision_model.", "visual_projection")):
        return "CLIP's image tower: not part of the text encoder"
    return f"{who}: a tensor the CLIP text encoder does not read"


def lift(store, batch: int = 1, config: dict | None = None, config_2: dict | None = None) -> Graph:
    """The ``encode_text`` graph of every text encoder ``store`` holds (module docstring: inputs and outputs);
    ``config``/``config_2``: the transformers config.json of the first/second encoder, where given.
    ``graph.meta``: ``assumptions`` (what nothing stated), ``ignored`` (encoder tensors not read, with the reason),
    ``encoders`` (one record each), ``config`` (the first encoder's hyperparameters)."""
    encs = find_text_encoders(store)
    if not encs:
        raise UnsupportedModelError(_not_found_message(store))
    g = Graph(meta={"family": "clip_text"})
    used: set[str] = set()
    parts: list[EncodedText] = []
    multi = len(encs) > 1
    for enc in encs:
        cfg_json = config if enc.canon == CANONICAL else config_2
        parts.append(
            add_text_encoder(
                g,
                store,
                enc,
                batch=batch,
                hidden_name=None if multi else "last_hidden_state",
                pooled_name="text_embeds",
                config=cfg_json,
                used=used,
            )
        )
    if multi:
        a, b = parts
        if a.config.positions != b.config.positions:
            raise UnsupportedModelError(
                f"{store.path}: SDXL's text encoders read {a.config.positions} and {b.config.positions} tokens: the "
                "files belong to different models"
            )
        shape = (batch, a.config.positions, a.config.width + b.config.width)
        g.add_node("concat", [a.hidden, b.hidden], "last_hidden_state", shape, COMPONENT, axis=-1)
    g.outputs.append("last_hidden_state")
    g.outputs += [p.pooled for p in parts if p.pooled]
    first = parts[0].config
    g.meta.update(
        {
            "convention": first.convention,
            "config": first.__dict__ | {"batch": batch},
            "assumptions": [n for p in parts for n in p.assumptions],
            "ignored": {k: v for p in parts for k, v in p.ignored.items()},
            "encoders": [
                {"role": e.role, "canon": e.canon, "names": e.names, "prefix": e.prefix} | {"config": p.config.__dict__}
                for e, p in zip(encs, parts)
            ],
        }
    )
    return g
