"""Lift a CLIP text encoder (the SD 1.x/2.x/SDXL text transformer) from any naming convention into the IR.

Hyperparameters come from what the files state, in this order: a transformers ``config.json`` (beside the weights
file, in a transformers model folder or a diffusers pipeline's ``text_encoder/``), then metadata (safetensors
``__metadata__``, GGUF key/values), then tensor shapes (vocabulary, width, positions, depth, MLP width). A config
that contradicts the shapes is refused: it belongs to another model. What nothing states — head count, activation,
layer-norm eps — is taken from the released encoder of that width (CLIP ViT-L 768: 12 heads, quick_gelu; OpenCLIP
ViT-H 1024: 16, gelu; OpenCLIP ViT-bigG 1280: 20, gelu; all 64 channels per head, eps 1e-5), and the report says so:
running a gelu encoder with quick_gelu gives outputs off by a few hundredths and no error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdcompile.errors import UnsupportedModelError
from sdcompile.ir import Graph, WeightData

COMPONENT = "text_encoder"
CANONICAL = "text_encoder."

# (convention, prefix in the file) — checked in order; the first whose token embedding exists wins.
CONVENTIONS: list[tuple[str, str]] = [
    ("ldm", "cond_stage_model.transformer.text_model."),
    ("sdxl-ldm", "conditioner.embedders.0.transformer.text_model."),
    ("diffusers", "text_encoder.text_model."),
    ("transformers", "text_model."),
    ("transformers5", ""),
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

_TOKEN = "embeddings.token_embedding.weight"
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


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


def find_prefix(names: set[str]) -> tuple[str, str] | None:
    for conv, prefix in CONVENTIONS:
        if prefix + _TOKEN in names:
            return conv, prefix
    return None


def _meta(store, keys: tuple[str, ...]):
    for k in keys:
        if k in store.metadata:
            return store.metadata[k]
    return None


def text_config_of(cfg: dict | None) -> dict | None:
    """The text encoder's part of a transformers config: itself, or a full CLIPModel's ``text_config``."""
    if cfg and cfg.get("model_type") == "clip" and isinstance(cfg.get("text_config"), dict):
        return cfg["text_config"]
    return cfg


def read_config(store, config: dict | None = None) -> tuple[ClipTextConfig, list[str]]:
    """The encoder's hyperparameters, and what was assumed because nothing stated it (for the report)."""
    names = set(store.names())
    found = find_prefix(names)
    if found is None:
        raise UnsupportedModelError(_not_found_message(store))
    conv, prefix = found
    config = text_config_of(config) or {}
    tok = store.info(prefix + _TOKEN).shape
    pos = store.info(prefix + "embeddings.position_embedding.weight").shape
    layer_ids = {int(m.group(1)) for n in names if n.startswith(prefix) for m in [_LAYER.match(n[len(prefix) :])] if m}
    layers = len(layer_ids)
    if layer_ids != set(range(layers)) or layers == 0:
        raise UnsupportedModelError(
            f"{store.path}: CLIP text encoder ({conv} names) has layers {sorted(layer_ids)}; expected 0..N-1 without gaps"
        )
    mlp = store.info(prefix + "encoder.layers.0.mlp.fc1.weight").shape[0]
    width = tok[1]
    from_shapes = {"vocab": tok[0], "width": width, "positions": pos[0], "layers": layers, "mlp": mlp}
    for key, what in CONFIG_SHAPE_KEYS.items():
        if config.get(key) is not None and config[key] != from_shapes[what]:
            raise UnsupportedModelError(
                f"{store.path}: the text encoder's config.json says {key} = {config[key]}, its weights say "
                f"{from_shapes[what]}: the config belongs to another model"
            )
    assumed: list[str] = []
    released = RELEASED.get(width)

    def stated(key: str, meta_keys: tuple[str, ...]):
        v = config.get(key)
        return v if v is not None else _meta(store, meta_keys)

    heads = stated("num_attention_heads", HEAD_KEYS)
    if heads is None:
        heads = max(1, width // 64)
        assumed.append(
            f"text encoder: {heads} attention heads (64 channels each, as in every released CLIP text encoder; "
            f"from the width {width}; no config.json or metadata states it)"
        )
    heads = int(heads)
    if heads < 1 or width % heads:
        raise UnsupportedModelError(f"{store.path}: width {width} is not divisible by {heads} attention heads")
    act = stated("hidden_act", ACT_KEYS)
    if act is None:
        act = released[2] if released else "quick_gelu"
        whose = f"{released[0]}'s" if released else "OpenAI CLIP's, transformers' default"
        assumed.append(
            f"text encoder: {act} activation ({whose}; from the width {width}; no config.json or metadata states it)"
        )
    act = str(act)
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{store.path}: text encoder activation {act!r} is not supported ({', '.join(ACTIVATIONS)})"
        )
    eps = stated("layer_norm_eps", EPS_KEYS)
    if eps is None:
        eps = 1e-5
        assumed.append(f"text encoder: layer-norm eps {eps:g} (CLIP's; no config.json or metadata states it)")
    for key in sorted(config):
        if key in CONFIG_SHAPE_KEYS or key in CONFIG_READ_KEYS or key in CONFIG_NO_EFFECT:
            continue
        if config[key] in (None, {}, []):  # a key that states nothing
            continue
        assumed.append(f"text encoder: config.json states {key} = {config[key]!r}, which sdcompile does not read")
    cfg = ClipTextConfig(tok[0], width, pos[0], layers, mlp, heads, act, float(eps), conv, prefix)
    return cfg, assumed


def _listing(store) -> str:
    from collections import Counter

    heads = Counter(".".join(n.split(".")[:2]) for n in store.names())
    listing = ", ".join(f"{k}.* ({c})" for k, c in heads.most_common(8)) or "no tensors"
    return f"{store.format}, {len(store)} tensors: {listing}"


_LOOKS_FOR = (
    "'<prefix>embeddings.token_embedding.weight' with the prefixes "
    + ", ".join(repr(p) for _, p in CONVENTIONS if p)
    + " or none"
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


# Tensor names below the text model root, with the canonical IR names (identical sub-paths, canonical root).
def _tensor_names(cfg: ClipTextConfig) -> list[str]:
    subs = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight"]
    for i in range(cfg.layers):
        p = f"encoder.layers.{i}."
        for part in ("layer_norm1", "layer_norm2"):
            subs += [p + part + ".weight", p + part + ".bias"]
        for part in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "mlp.fc1",
            "mlp.fc2",
        ):
            subs += [p + part + ".weight", p + part + ".bias"]
    subs += ["final_layer_norm.weight", "final_layer_norm.bias"]
    return subs


def lift(store, batch: int = 1, config: dict | None = None) -> Graph:
    """The encoder's ``encode_text`` graph; ``config``: the transformers config.json that came with the weights.
    ``graph.meta["assumptions"]`` lists what nothing stated."""
    cfg, assumed = read_config(store, config)
    g = Graph(
        meta={
            "family": "clip_text",
            "convention": cfg.convention,
            "config": cfg.__dict__ | {"batch": batch},
            "assumptions": assumed,
        }
    )
    names = set(store.names())
    for sub in _tensor_names(cfg):
        key = cfg.prefix + sub
        if key not in names:
            raise UnsupportedModelError(f"{store.path}: CLIP text encoder ({cfg.convention} names) lacks tensor {key}")
        info = store.info(key)
        g.add_weight(CANONICAL + sub, info.shape, info.dtype, COMPONENT, WeightData(store, key, info.dtype))

    c, S, D = COMPONENT, cfg.positions, cfg.width
    B = batch
    w = lambda sub: CANONICAL + sub  # noqa: E731
    ids = g.add_input("input_ids", (B, S), "int32", c)
    x = g.add_node(
        "embed",
        [ids, w("embeddings.token_embedding.weight"), w("embeddings.position_embedding.weight")],
        "te.embed",
        (B, S, D),
        c,
    )

    def dense(h: str, sub: str, out: str, n: int) -> str:
        y = g.add_node("matmul", [h, w(sub + ".weight")], out + ".mm", (B, S, n), c)
        return g.add_node("add", [y, w(sub + ".bias")], out, (B, S, n), c)

    for i in range(cfg.layers):
        p, t = f"encoder.layers.{i}.", f"te.l{i}."
        h = g.add_node(
            "layer_norm",
            [x, w(p + "layer_norm1.weight"), w(p + "layer_norm1.bias")],
            t + "ln1",
            (B, S, D),
            c,
            eps=cfg.eps,
        )
        q = dense(h, p + "self_attn.q_proj", t + "q", D)
        k = dense(h, p + "self_attn.k_proj", t + "k", D)
        v = dense(h, p + "self_attn.v_proj", t + "v", D)
        a = g.add_node("attention", [q, k, v], t + "attn", (B, S, D), c, heads=cfg.heads, causal=True)
        o = dense(a, p + "self_attn.out_proj", t + "o", D)
        x = g.add_node("add", [o, x], t + "res1", (B, S, D), c)
        h = g.add_node(
            "layer_norm",
            [x, w(p + "layer_norm2.weight"), w(p + "layer_norm2.bias")],
            t + "ln2",
            (B, S, D),
            c,
            eps=cfg.eps,
        )
        f = dense(h, p + "mlp.fc1", t + "fc1", cfg.mlp)
        f = g.add_node(cfg.act, [f], t + "act", (B, S, cfg.mlp), c)
        f = dense(f, p + "mlp.fc2", t + "fc2", D)
        x = g.add_node("add", [f, x], t + "res2", (B, S, D), c)
    out = g.add_node(
        "layer_norm",
        [x, w("final_layer_norm.weight"), w("final_layer_norm.bias")],
        "last_hidden_state",
        (B, S, D),
        c,
        eps=cfg.eps,
    )
    g.outputs.append(out)
    return g
