"""LoRA tensor names in every convention people ship, grouped into layers, each keyed by the module it adapts.

A layer's key is ``component:path``: the component (``unet``, ``text_encoder``, ``text_encoder_2``, ``vae``) and the
module's path with every ``.`` written as ``_`` (kohya's flattened form, into which every other convention maps
without loss). The model side gives each weight its aliases in the same form (`sdcompile/lora/aliases.py`), so
matching is a dictionary lookup, the same at compile time and at run time.

Conventions read:
- kohya / LyCORIS: ``lora_unet_<path>``, ``lora_te_``/``lora_te1_``/``lora_te2_<path>`` with ``.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``; LoCon convolutions (a KxK down, a 1x1 up) have the same names;
- diffusers / PEFT: ``unet.<path>.lora_A.weight``/``lora_B.weight`` (also ``.lora_A.default.weight``),
  ``text_encoder.<path>``, ``text_encoder_2.<path>``; the older ``.lora.down.weight``/``.lora.up.weight``,
  ``.lora_linear_layer.down.weight`` and the attention processors' ``attn1.processor.to_q_lora.down.weight``;
- stable-diffusion.cpp's converted names (its GGUF LoRAs): ``lora.model.diffusion_model.<LDM path>.weight.lora_down``,
  ``.weight.lora_up``, ``.weight.alpha``, ``lora.cond_stage_model.transformer.text_model.<path>`` (and
  ``cond_stage_model.1.transformer.`` for SDXL's second encoder), ``lora.first_stage_model.<path>``;
- LoHa (``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``) and LoKr (``lokr_w1`` or ``lokr_w1_a``/``_b``,
  ``lokr_w2`` or ``lokr_w2_a``/``_b``) as LyCORIS writes them: applied as the full delta they define.

Refused by name (never skipped silently): DoRA (``dora_scale``), Tucker-decomposed convolutions (``lora_mid``,
``hada_t1``/``hada_t2``, ``lokr_t2``), full-weight differences (``.diff``); tensors of no known role are listed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

from runtime.lora.errors import LoraError

# (name prefix, component), longest first within each family; checked after a leading "lora." (sd.cpp) is removed.
_PREFIXES = [
    ("lora_unet_", "unet"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te1_", "text_encoder"),
    ("lora_te_", "text_encoder"),
    ("lora_vae_", "vae"),
    ("model.diffusion_model.", "unet"),
    ("diffusion_model.", "unet"),
    ("unet.", "unet"),
    ("text_encoder_2.", "text_encoder_2"),
    ("text_encoder.", "text_encoder"),
    ("cond_stage_model.1.transformer.", "text_encoder_2"),
    ("cond_stage_model.transformer.", "text_encoder"),
    ("conditioner.embedders.1.transformer.", "text_encoder_2"),
    ("conditioner.embedders.0.transformer.", "text_encoder"),
    ("te2.", "text_encoder_2"),
    ("te1.", "text_encoder"),
    ("te.", "text_encoder"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
]

# (suffix, role), longest first.
_ROLES = [
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".weight.lora_down", "down"),
    (".weight.lora_up", "up"),
    (".weight.alpha", "alpha"),
    (".alpha", "alpha"),
    (".hada_w1_a", "hada_w1_a"),
    (".hada_w1_b", "hada_w1_b"),
    (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"),
    (".lokr_w1_a", "lokr_w1_a"),
    (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2_a", "lokr_w2_a"),
    (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_w1", "lokr_w1"),
    (".lokr_w2", "lokr_w2"),
]
for _s, _r in list(_ROLES):  # sd.cpp's converted names put ".weight" before every LyCORIS role too
    if _s.startswith((".hada", ".lokr")):
        _ROLES.append((".weight" + _s, _r))
_ROLES.sort(key=lambda sr: -len(sr[0]))

# Known LoRA-family tensors sdcompile does not apply: refused with their name and why.
_REFUSED = {
    "dora_scale": "DoRA (weight-decomposed LoRA: its magnitude vector rescales whole weight columns)",
    "lora_mid": "a Tucker-decomposed LoCon convolution (lora_mid)",
    "hada_t1": "a Tucker-decomposed LoHa convolution (hada_t1/hada_t2)",
    "hada_t2": "a Tucker-decomposed LoHa convolution (hada_t1/hada_t2)",
    "lokr_t2": "a Tucker-decomposed LoKr convolution (lokr_t2)",
    ".diff": "a full weight difference (.diff)",
    ".diff_b": "a bias difference (.diff_b)",
}


@dataclass
class Layer:
    """The tensors of one adapted module: ``roles`` maps a role (down, up, alpha, hada_w1_a, ...) to a tensor name."""

    key: str
    roles: dict[str, str] = field(default_factory=dict)
    alpha: float | None = None  # from the file's adapter metadata (diffusers' PEFT files), where no tensor gives it

    @property
    def kind(self) -> str:
        if any(r.startswith("hada_") for r in self.roles):
            return "loha"
        if any(r.startswith("lokr_") for r in self.roles):
            return "lokr"
        return "lora"

    def missing(self) -> str | None:
        need = {
            "lora": [("down",), ("up",)],
            "loha": [("hada_w1_a",), ("hada_w1_b",), ("hada_w2_a",), ("hada_w2_b",)],
            "lokr": [("lokr_w1", "lokr_w1_a"), ("lokr_w2", "lokr_w2_a")],
        }[self.kind]
        for options in need:
            if not any(o in self.roles for o in options):
                return options[0]
        for a, b in (("lokr_w1_a", "lokr_w1_b"), ("lokr_w2_a", "lokr_w2_b")):
            if (a in self.roles) != (b in self.roles):
                return b if a in self.roles else a
        return None

    def tensors(self) -> list[str]:
        return sorted(self.roles.values())


def split_name(name: str) -> tuple[str, str, str] | None:
    """(component, flat path, role) of a LoRA tensor name, or None for a name of no known convention."""
    n = name
    for lead in ("lora.lora.", "lora.lycoris_", "lora.lycoris.", "lora."):
        if n.startswith(lead) and not n.startswith("lora_"):
            n = n[len(lead) :]
            break
    for lead in ("lycoris_",):
        if n.startswith(lead):
            n = "lora_" + n[len(lead) :]
    comp = None
    for prefix, c in _PREFIXES:
        if n.startswith(prefix):
            comp, n = c, n[len(prefix) :]
            break
    if comp is None:
        return None
    role = None
    for suffix, r in _ROLES:
        if n.endswith(suffix):
            role, n = r, n[: -len(suffix)]
            break
    if role is None:
        return None
    attn_processor = ".processor." in n
    n = n.replace(".processor.", ".")
    if attn_processor and n.endswith(".to_out"):  # the processors' to_out_lora adapts to_out[0]
        n += ".0"
    if n.endswith(".weight"):
        n = n[: -len(".weight")]
    flat = n.replace(".", "_")
    if comp.startswith("text_encoder"):
        flat = flat.removeprefix("transformer_").removeprefix("text_model_")
    return comp, flat, role


def refusal(name: str) -> str | None:
    for token, why in _REFUSED.items():
        if name.endswith(token) or f".{token}" in name or name.endswith(token + ".weight"):
            return why
    return None


@dataclass
class Parsed:
    path: str
    layers: dict[str, Layer]
    unrecognized: dict[str, str]  # tensor name -> why it is not part of any layer


def parse(lora) -> Parsed:
    """Group a LoRA file's tensors (``lora``: anything with ``names()``) into layers; refuse the kinds that are not
    supported, by name; list tensors of no known convention."""
    layers: dict[str, Layer] = {}
    unrecognized: dict[str, str] = {}
    refused: dict[str, list[str]] = {}
    for name in lora.names():
        why = refusal(name)
        if why is not None:
            refused.setdefault(why, []).append(name)
            continue
        s = split_name(name)
        if s is None:
            unrecognized[name] = "not a LoRA tensor name of any known convention (kohya, diffusers/PEFT, sd.cpp)"
            continue
        comp, flat, role = s
        key = f"{comp}:{flat}"
        layer = layers.setdefault(key, Layer(key))
        if role in layer.roles:
            raise LoraError(
                f"LoRA {lora.path}: tensors {layer.roles[role]} and {name} both give the {role} of {key}; "
                "the file mixes two conventions for one layer"
            )
        layer.roles[role] = name
    if refused:
        kinds = "; ".join(f"{why}: {len(ns)} tensors such as {ns[0]}" for why, ns in refused.items())
        raise LoraError(
            f"LoRA {lora.path} uses what sdcompile does not apply: {kinds}. Supported: LoRA/LoCon (kohya, "
            "diffusers/PEFT, stable-diffusion.cpp names), LoHa and LoKr without Tucker factors"
        )
    _metadata_alphas(lora, layers)
    for key, layer in list(layers.items()):
        miss = layer.missing()
        if miss is not None:
            for t in layer.tensors():
                unrecognized[t] = f"its layer {key} has no {miss} tensor"
            del layers[key]
    return Parsed(str(lora.path), layers, unrecognized)


def _metadata_alphas(lora, layers: dict[str, Layer]) -> None:
    """diffusers writes a PEFT LoRA's alphas into the safetensors metadata (``lora_adapter_metadata``: per component
    ``lora_alpha`` and an ``alpha_pattern`` of module-name patterns), not into tensors: without them the scale would
    silently be 1. Patterns match as PEFT matches them (the whole module name, or a suffix after a dot)."""
    raw = (getattr(lora, "metadata", None) or {}).get("lora_adapter_metadata")
    if not raw:
        return
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise LoraError(f"LoRA {lora.path}: its lora_adapter_metadata is not JSON ({e})") from None
    for layer in layers.values():
        if "alpha" in layer.roles or "down" not in layer.roles:
            continue
        comp = layer.key.split(":", 1)[0]
        alpha = meta.get(f"{comp}.lora_alpha")
        if alpha is None:
            continue
        name = layer.roles["down"]
        module = name[name.index(".") + 1 :] if name.startswith(f"{comp}.") else name
        for suffix, _ in _ROLES:
            if module.endswith(suffix):
                module = module[: -len(suffix)]
                break
        for pattern, a in (meta.get(f"{comp}.alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = a
                break
        layer.alpha = float(alpha)


def _alpha(lora, layer: Layer) -> float | None:
    name = layer.roles.get("alpha")
    if name is None:
        return layer.alpha
    a = np.asarray(lora.array(name)).reshape(-1)
    if a.size != 1 or not math.isfinite(float(a[0])):
        raise LoraError(f"LoRA {lora.path}: {name} is not one finite number")
    return float(a[0])


def _mat(a: np.ndarray, rows: int | None = None) -> np.ndarray:
    return a.reshape(a.shape[0] if rows is None else rows, -1)


def _conv_ok(key: str, path, name: str, a: np.ndarray, want: tuple[int, ...]) -> None:
    if a.shape != want:
        raise LoraError(
            f"LoRA {path}: {name} has shape {list(a.shape)} but the model's {key} needs {list(want)}; "
            "the LoRA was made for another model (another version or size)"
        )


def factors(lora, layer: Layer, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(down [r, I] or [r, C, kh, kw], up [O, r], scale) of a low-rank layer, checked against the target weight's
    ``shape`` ([O, I] for a linear, [O, C, kh, kw] for a convolution); None for LoHa/LoKr (full deltas only).
    scale = alpha / rank (rank: the down projection's rows), or 1 without alpha (as kohya and diffusers)."""
    if layer.kind != "lora":
        return None
    down = lora.array(layer.roles["down"])
    up = lora.array(layer.roles["up"])
    r = down.shape[0]
    alpha = _alpha(lora, layer)
    scale = 1.0 if alpha is None else alpha / r
    o = shape[0]
    if up.ndim == 4 and up.shape[2:] != (1, 1):
        raise LoraError(f"LoRA {lora.path}: {layer.roles['up']} is a {up.shape[2]}x{up.shape[3]} convolution")
    up2 = _mat(up)
    _conv_ok(layer.key, lora.path, layer.roles["up"], up2, (o, r))
    if len(shape) == 2:
        d = _mat(down)
        _conv_ok(layer.key, lora.path, layer.roles["down"], d, (r, shape[1]))
        if down.ndim == 4 and down.shape[2:] != (1, 1):
            raise LoraError(f"LoRA {lora.path}: {layer.roles['down']} is a convolution, {layer.key} a linear")
        return d, up2, scale
    c, kh, kw = shape[1:]
    d = down.reshape(r, c, kh, kw) if down.ndim == 2 and kh == kw == 1 else down
    _conv_ok(layer.key, lora.path, layer.roles["down"], d, (r, c, kh, kw))
    return d, up2, scale


def _kron_factor(lora, layer: Layer, i: int) -> np.ndarray:
    full = layer.roles.get(f"lokr_w{i}")
    if full is not None:
        return lora.array(full)
    a, b = lora.array(layer.roles[f"lokr_w{i}_a"]), lora.array(layer.roles[f"lokr_w{i}_b"])
    return (_mat(a) @ _mat(b, a.shape[-1] if a.ndim == 2 else None)).reshape(a.shape[0], *b.shape[1:])


def delta(lora, layer: Layer, shape: tuple[int, ...]) -> np.ndarray:
    """The layer's weight difference before its strength, in the target's logical ``shape`` ([O, I] or
    [O, C, kh, kw]), scale included. LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha / rank(w1b); LoKr: kron(w1, w2) * alpha /
    rank where a factor is decomposed (else 1), as LyCORIS defines them."""
    want = int(np.prod(shape))
    if layer.kind == "lora":
        d, up, scale = factors(lora, layer, shape)
        return ((up @ _mat(d)) * scale).reshape(shape)
    alpha = _alpha(lora, layer)
    if layer.kind == "loha":
        w1a, w1b = lora.array(layer.roles["hada_w1_a"]), lora.array(layer.roles["hada_w1_b"])
        w2a, w2b = lora.array(layer.roles["hada_w2_a"]), lora.array(layer.roles["hada_w2_b"])
        r = w1b.shape[0]
        out = (_mat(w1a) @ _mat(w1b)) * (_mat(w2a) @ _mat(w2b))
        scale = 1.0 if alpha is None else alpha / r
    else:
        w1, w2 = _kron_factor(lora, layer, 1), _kron_factor(lora, layer, 2)
        rank_from = layer.roles.get("lokr_w2_b") or layer.roles.get("lokr_w1_b")
        r = lora.array(rank_from).shape[0] if rank_from else None
        scale = 1.0 if alpha is None or r is None else alpha / r
        if w2.ndim == 4:  # a convolution: kron over the channel axes, the kernel from w2
            out = np.einsum("ab,cdhw->acbdhw", _mat(w1), w2).reshape(
                w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[2:]
            )
        else:
            out = np.kron(_mat(w1), _mat(w2))
    if out.size != want:
        raise LoraError(
            f"LoRA {lora.path}: {layer.kind} layer {layer.key} gives {out.size} values but the model's weight has "
            f"shape {list(shape)}; the LoRA was made for another model"
        )
    return (out * scale).reshape(shape).astype(np.float32)
