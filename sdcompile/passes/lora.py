"""Pass `lora`: adapt the model's weights with LoRAs, merged when the artifact is written, or keep hooks for a
low-rank branch the runtime runs beside each adapted step.

Contract (`merge`, on the module, before `quantize`): every weight a LoRA adapts becomes the derived weight
W + Σ strength·scale·(up @ down) in W's own layout (a convolution's [O, KH*KW*C]), keeping W's storage type: a
quantized W is decoded, the delta added, and the sum quantized to W's type again when the artifact is written
(`compiler.py` measures the error that adds). A LoRA tensor that adapts no weight is listed; a LoRA that adapts
none is an error.

Contract (`hooks`, per function, after `fuse`): every `linear`/`conv2d` node reading a weight records it
(``attrs["lora"]``), so the plan tells the runtime where a branch y += s·up(down(x)) goes. The branch must be added
before an activation: with ``--lora-apply-mode runtime`` a linear whose activation `fuse` (or the lifter) folded in
is split again into the linear and its activation; otherwise that weight has no hook and the manifest says why.
A residual folded into a step needs no split (the branch adds after it, and addition commutes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.errors import OptionError, SdcompileError
from sdcompile.ir import Graph, Module, Node
from sdcompile.ir.derived import Add, Tensor
from sdcompile.ir.graph import Value
from sdcompile.passes.context import PassContext

MODES = ("merge", "runtime")


class LoraFileError(SdcompileError):
    """A LoRA that cannot be read or applied (the runtime reader's LoraError, raised as a compiler error)."""


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``PATH[:STRENGTH]`` (strength 1 when absent; a path may itself hold ':')."""
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            strength = float(tail)
            path = head
        except ValueError:
            pass
    if not math.isfinite(strength):
        raise OptionError(f"--lora {text}: the strength must be a finite number")
    if not Path(path).is_file():
        raise OptionError(f"--lora {text}: no such file {path}")
    return path, strength


@dataclass(frozen=True, eq=False)
class LoraDelta:
    """Σ strength · delta of the LoRA layers adapting one weight, in the weight's stored layout (a derived-weight
    leaf: `sdcompile/ir/derived.py`)."""

    parts: tuple  # (opened LoRA file, runtime.lora.Layer, strength)
    shape: tuple[int, ...]  # the weight's logical shape: [O, I] or [O, C, kh, kw]

    @property
    def xs(self) -> tuple:  # the stored tensors read (derived.sources)
        return tuple(Tensor(f, t) for f, layer, _ in self.parts for t in layer.tensors())

    def evaluate(self) -> np.ndarray:
        from runtime.lora import delta

        d = np.zeros(self.shape, np.float32)
        for f, layer, s in self.parts:
            d += np.float32(s) * delta(f, layer, self.shape)
        if len(self.shape) == 4:  # [O, C, kh, kw] -> the conv kernel's [O, kh*kw*C]
            o, c, kh, kw = self.shape
            d = np.ascontiguousarray(d.transpose(0, 2, 3, 1)).reshape(o, kh * kw * c)
        return d

    def describe(self) -> str:
        return "lora(" + ", ".join(f"{Path(str(f.path)).name}:{s:g}" for f, _, s in self.parts) + ")"


def _open(path: str):
    from sdcompile.formats import open_store

    return open_store(path)


def merge(mod: Module, loras: list[tuple[str, float]], mode: str = "merge") -> dict[str, Any]:
    """Merge ``loras`` ((path, strength) pairs) into the module's weights; returns the report's ``lora`` record:
    the adaptable targets (for the manifest) and, per LoRA, what it touched and what it left."""
    from runtime.lora import LoraError, alias_index, match
    from sdcompile.lora.aliases import ignored_aliases, targets

    if mode not in MODES:
        raise OptionError(f"--lora-apply-mode {mode!r}: choose merge or runtime")
    if loras and mode == "runtime":
        raise OptionError(
            "--lora with --lora-apply-mode runtime: in runtime mode the LoRA is chosen when the image is made; "
            "compile without --lora and pass <lora:NAME:STRENGTH> in the prompt with --lora-model-dir DIR "
            "(or use --lora-apply-mode merge to merge it now)"
        )
    table, notes = targets(mod)
    ignored = ignored_aliases(mod)
    index = alias_index(table)
    components = {a.split(":", 1)[0] for t in table.values() for a in t["aliases"]}
    per_weight: dict[str, list] = {}
    files = []
    for path, strength in loras:
        try:
            m = match(_open(path), table, index, components, ignored)
        except LoraError as e:
            raise LoraFileError(str(e)) from None
        kinds: dict[str, int] = {}
        for name, layer in m.layers.items():
            per_weight.setdefault(name, []).append((m.file, layer, strength))
            kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
        files.append(
            {
                "file": Path(path).name,
                "format": m.format,
                "strength": strength,
                "weights": len(m.layers),
                "kinds": kinds,
                "tensors_used": m.tensors_used,
                "unmatched": m.unmatched,
            }
        )
    changed = []
    for name, parts in sorted(per_weight.items()):
        delta = LoraDelta(tuple(parts), tuple(table[name]["shape"]))
        try:  # the deltas are checked against the weight once, here, not when the artifact is written
            delta.evaluate()
        except LoraError as e:
            raise LoraFileError(str(e)) from None
        for g in mod.functions.values():
            v = g.values.get(name)
            if v is not None and v.kind == "weight":
                _adapt(v, delta)
        changed.append(name)
    return {
        "mode": mode,
        "targets": table,
        "ignored": ignored,
        "notes": notes,
        "files": files,
        "merged": changed,
    }


def _adapt(v: Value, delta: LoraDelta) -> None:
    from sdcompile.quant.reference import QUANTIZABLE

    d = v.data
    base = d.expr if d.expr is not None else Tensor(d.store, d.key)
    d.expr = Add((base, delta))
    why = f"lora merge: + {delta.describe()}"
    if d.source_dtype not in QUANTIZABLE and d.source_dtype not in ("f32", "f16", "bf16"):
        # no quantizer for the base's type: the sum is stored as f16 (and the report says so)
        why += f"; {d.source_dtype} has no quantizer, the merged weight is stored as f16"
        d.source_dtype = "f16"
        v.dtype = "f16"
    d.history.append(why)


def requantization_error(mod: Module, merged: list[str]) -> dict[str, Any]:
    """The error storing the merged weights in their types adds: the stored values decoded again against the exact
    f32 merge, over all merged weights and per storage type (max |diff|, rms), beside the deltas' own rms."""
    from sdcompile.ir.weights import as_f32

    pool = mod.weights()
    by_type: dict[str, dict] = {}
    for name in merged:
        v = pool[name]
        exact = v.data.expr.evaluate()
        got = as_f32(v).reshape(exact.shape)
        err = got.astype(np.float64) - exact
        dl = v.data.expr.xs[-1].evaluate()
        r = by_type.setdefault(v.dtype, {"weights": 0, "max_abs": 0.0, "sq": 0.0, "n": 0, "delta_sq": 0.0})
        r["weights"] += 1
        r["max_abs"] = max(r["max_abs"], float(np.abs(err).max()))
        r["sq"] += float((err**2).sum())
        r["delta_sq"] += float((dl.astype(np.float64) ** 2).sum())
        r["n"] += err.size
    out = {}
    for t, r in sorted(by_type.items()):
        out[t] = {
            "weights": r["weights"],
            "max_abs": r["max_abs"],
            "rms": math.sqrt(r["sq"] / r["n"]),
            "delta_rms": math.sqrt(r["delta_sq"] / r["n"]),
        }
    return out


def hooks(g: Graph, ctx: PassContext) -> Graph:
    """Record the adaptable weight of every linear/conv2d step (see the module docstring)."""
    g = g.copy()
    runtime = getattr(ctx.options, "lora_apply_mode", "merge") == "runtime"
    unhooked: dict[str, str] = {}
    hooked = split = 0
    for n in list(g.nodes):
        if n.op not in ("linear", "conv2d") or len(n.inputs) < 2:
            continue
        w = g.values[n.inputs[1]]
        if w.kind != "weight":
            continue
        if n.attrs.get("act", "none") != "none":
            if not runtime:
                unhooked[w.name] = f"its activation ({n.attrs['act']}) runs inside the matmul kernel"
                continue
            _split_activation(g, n)
            split += 1
        n.attrs["lora"] = w.name
        hooked += 1
    g.meta["lora_hooks"] = {"hooked": hooked, "split": split, "unhooked": unhooked}
    return g


def _split_activation(g: Graph, n: Node) -> None:
    """linear(x, w, b, act, residual r) -> linear(x, w, b); act; add r."""
    act, out = n.attrs["act"], n.outputs[0]
    v = g.values[out]
    res = n.inputs.pop() if n.attrs.get("residual") else None
    pre = f"{out}.lora_pre"
    g.values[pre] = Value(pre, v.shape, v.dtype, "activation", n.component)
    n.attrs = {**n.attrs, "act": "none", "residual": False}
    n.outputs = [pre]
    at = g.nodes.index(n) + 1
    if res is None:
        g.nodes.insert(at, Node(act, [pre], [out], {}, n.component))
        return
    mid = f"{out}.lora_act"
    g.values[mid] = Value(mid, v.shape, v.dtype, "activation", n.component)
    g.nodes.insert(at, Node(act, [pre], [mid], {}, n.component))
    g.nodes.insert(at + 1, Node("add", [mid, res], [out], {}, n.component))
