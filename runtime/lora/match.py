"""Match a parsed LoRA's layers to the model's weights through the alias table the compiler recorded.

``targets`` (the manifest's ``lora.targets``, or the compiler's own table): canonical weight name -> {"kind": "linear"
| "conv2d", "shape": the weight's logical shape ([O, I] or [O, C, kh, kw]), "aliases": ["component:flat path", ...]}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.lora.errors import LoraError
from runtime.lora.parse import Layer, Parsed, parse
from runtime.lora.read import open_lora


@dataclass
class Matched:
    """One LoRA file matched to a model: ``layers`` maps a canonical weight to its layer; ``unmatched`` lists each
    tensor that adapts none of the model's weights, with the reason."""

    path: str
    format: str
    file: object  # runtime.lora.read.LoraFile
    layers: dict[str, Layer] = field(default_factory=dict)
    unmatched: dict[str, str] = field(default_factory=dict)

    @property
    def tensors_used(self) -> int:
        return sum(len(layer.roles) for layer in self.layers.values())


def alias_index(targets: dict[str, dict]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, t in targets.items():
        for a in t["aliases"]:
            out.setdefault(a, name)
    return out


def match(
    lora, targets: dict[str, dict], index: dict[str, str] | None = None, components=None, ignored=None
) -> Matched:
    """Parse and match one LoRA file (a path, or an opened file with ``path``, ``format``, ``names()`` and
    ``array()``: the runtime's reader or an sdcompile tensor store). A LoRA of which no tensor adapts any weight is an
    error (never a silent skip); ``components`` (those the model holds) makes the reason of an unmatched tensor
    precise, and so does ``ignored`` ({alias: why} of the checkpoint's weights the model leaves out)."""
    if not hasattr(lora, "names"):
        lora = open_lora(lora)
    path = lora.path
    parsed: Parsed = parse(lora)
    index = index if index is not None else alias_index(targets)
    m = Matched(str(path), lora.format, lora, unmatched=dict(parsed.unrecognized))
    for key, layer in sorted(parsed.layers.items()):
        name = index.get(key)
        if name is None:
            comp = key.split(":", 1)[0]
            why = (ignored or {}).get(key)
            if why is None and components is not None and comp not in components:
                why = f"the model has no {comp}"
            if why is None:
                why = f"no weight of the model is called {key.split(':', 1)[1]} in its {comp}"
            for t in layer.tensors():
                m.unmatched[t] = why
            continue
        if name in m.layers:
            raise LoraError(
                f"LoRA {path}: layers {m.layers[name].key} and {key} both adapt {name}; the file mixes two naming "
                "conventions for one weight"
            )
        m.layers[name] = layer
    if not m.layers:
        sample = "; ".join(f"{t}: {why}" for t, why in list(m.unmatched.items())[:3])
        raise LoraError(
            f"LoRA {path} ({lora.format}, {len(lora.names())} tensors) adapts none of this model's weights "
            f"(e.g. {sample}); it was made for another model, or its names follow no known convention"
        )
    return m
