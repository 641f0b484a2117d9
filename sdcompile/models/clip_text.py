"""Lift a CLIP text encoder (the SD 1.x/2.x/SDXL text transformer) from any naming convention into the IR.

Hyperparameters come from tensor shapes (vocabulary, width, positions, depth, MLP width) and metadata (head count,
activation); only when no metadata names a head count is it derived as width / 64, the head width every released
CLIP text encoder uses (CLIP-L 768/12, OpenCLIP-H 1024/16, OpenCLIP-bigG 1280/20).
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

# Metadata keys that may carry the head count / activation / eps (safetensors __metadata__, GGUF KV, config.json).
HEAD_KEYS = ("num_attention_heads", "clip.text.attention.head_count", "text_encoder.num_attention_heads")
ACT_KEYS = ("hidden_act", "clip.text.hidden_act", "text_encoder.hidden_act")
EPS_KEYS = ("layer_norm_eps", "clip.text.attention.layer_norm_epsilon")

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


def read_config(store) -> ClipTextConfig:
    names = set(store.names())
    found = find_prefix(names)
    if found is None:
        raise UnsupportedModelError(_not_found_message(store))
    conv, prefix = found
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
    heads = _meta(store, HEAD_KEYS)
    heads = int(heads) if heads is not None else max(1, width // 64)
    if width % heads:
        raise UnsupportedModelError(f"{store.path}: width {width} is not divisible by {heads} attention heads")
    act = str(_meta(store, ACT_KEYS) or "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise UnsupportedModelError(f"{store.path}: activation {act!r} is not supported (quick_gelu, gelu)")
    eps = float(_meta(store, EPS_KEYS) or 1e-5)
    return ClipTextConfig(tok[0], width, pos[0], layers, mlp, heads, act, eps, conv, prefix)


def _not_found_message(store) -> str:
    from collections import Counter

    heads = Counter(".".join(n.split(".")[:2]) for n in store.names())
    listing = ", ".join(f"{k}.* ({c})" for k, c in heads.most_common(8)) or "no tensors"
    return (
        f"{store.path}: no CLIP text encoder found ({store.format}, {len(store)} tensors: {listing}). "
        "sdcompile looks for '<prefix>embeddings.token_embedding.weight' with the prefixes "
        + ", ".join(repr(p) for _, p in CONVENTIONS if p)
        + " or none; pass a Stable Diffusion checkpoint or a CLIPTextModel's weights"
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


def lift(store, batch: int = 1) -> Graph:
    cfg = read_config(store)
    g = Graph(meta={"family": "clip_text", "convention": cfg.convention, "config": cfg.__dict__ | {"batch": batch}})
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
