"""Pass `quantize`: choose each weight's storage type from canonical names; insert explicit dequantize nodes.

Contract: after this pass every weight has its storage type and every matmul reads an f32 value (a weight stored as
f32, or the output of a `dequantize` node). It runs on canonical names after lifting, so the same weights give the
same types whatever file format they came from.

Rules are (regex, type) pairs searched in order against the canonical name; the first match wins (as
stable-diffusion.cpp's --tensor-type-rules). Unmatched quantizable weights get the default type. Without a default,
they keep their stored type. A built-in skip list keeps norms, biases and position embeddings in f32: kernels read
them as f32, and they are a negligible share of the bytes while being the most sensitive to rounding.
"""

from __future__ import annotations

import re

from sdcompile.errors import OptionError, QuantError
from sdcompile.ir import Graph
from sdcompile.ir.ops import get as get_op
from sdcompile.passes.context import PassContext
from sdcompile.quant.reference import QUANTIZABLE
from sdcompile.quant.types import QUANT_TYPES, get

SKIP = [
    (re.compile(r"norm"), "norm"),
    (re.compile(r"\.bias$"), "bias"),
    (re.compile(r"position_embedding"), "position embedding"),
]


def parse_rules(text: str | None) -> list[tuple[str, str]]:
    """Parse `regex=type,regex=type`; errors name the bad entry."""
    rules: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "=" not in part:
            raise OptionError(f"tensor-type rule {part!r} is not 'regex=type'")
        pattern, qtype = part.rsplit("=", 1)
        try:
            re.compile(pattern)
        except re.error as e:
            raise OptionError(f"tensor-type rule {part!r}: bad regex: {e}") from None
        get(qtype)  # raises QuantError for an unknown type
        rules.append((pattern, qtype.lower()))
    return rules


def file_name(v) -> str | None:
    """The name the weight has in the user's file, where it differs from its canonical name: a rule may be written
    with either (a weight derived from a fused tensor answers to the fused tensor's name)."""
    d = v.data
    if d is None or getattr(d, "key", None) is None:
        return None
    key = d.key
    origin = getattr(d.store, "origin", None)  # a merged store (diffusers folder, separate files): the file's name
    if origin is not None:
        try:
            key = origin(key)[1]
        except KeyError:
            pass
    return key if key != v.name else None


def _choose(name: str, stored: str, ctx: PassContext, reader: str | None, file: str | None = None) -> tuple[str, str]:
    if reader is not None:  # a bias, a norm scale, a position table: kernels read it as plain f32
        if QUANT_TYPES[stored].is_float:
            return "f32", f"read as f32 by {reader}"
        return "f32", f"read as f32 by {reader} (stored as {stored}; decoded)"
    for rx, why in SKIP:
        if rx.search(name):
            return "f32", f"skip list ({why})"
    for pattern, qtype in ctx.options.tensor_type_rules:
        if re.search(pattern, name) or (file is not None and re.search(pattern, file)):
            return qtype, f"rule {pattern}={qtype}"
    if ctx.options.type is not None:
        if not QUANT_TYPES[stored].is_float:
            # Requantizing an already quantized weight compounds error; only an explicit rule does that.
            return stored, f"kept: already {stored} (name it in a rule to requantize)"
        return ctx.options.type.lower(), f"default --type {ctx.options.type.lower()}"
    return stored, "kept: stored type"


def run(g: Graph, ctx: PassContext) -> Graph:
    g = g.copy()
    if ctx.options.type is not None:
        get(ctx.options.type)
    decisions = []
    counts: dict[str, int] = {}
    # Which weights sit where an op reads a storage type (the op registry's weight inputs); any other use means the
    # kernel reads plain f32 values.
    plain_reader: dict[str, str] = {}
    for n in g.nodes:
        slots = get_op(n.op).weights
        for i, x in enumerate(n.inputs):
            if g.values[x].kind == "weight" and i not in slots:
                plain_reader.setdefault(x, n.op)
    for v in g.weights():
        file = file_name(v)
        want, why = _choose(v.name, v.dtype, ctx, plain_reader.get(v.name), file)
        qt = QUANT_TYPES[want]
        if v.shape[-1] % qt.block_size:
            fallback = "f16" if not QUANT_TYPES[v.dtype].is_float or v.dtype == "f16" else v.dtype
            why = f"{why}; row of {v.shape[-1]} not a multiple of {want}'s block {qt.block_size}, kept {fallback}"
            want = fallback
        if want != v.dtype and want not in QUANTIZABLE:
            raise QuantError(
                f"{v.name}: cannot quantize {v.dtype} to {want} ({why}); sdcompile quantizes to "
                f"{', '.join(QUANTIZABLE)}; choose one of those or a file already stored as {want}"
            )
        if want != v.dtype:
            v.data.convert(want, f"quantize: {v.dtype} -> {want} ({why})")
        decisions.append({"tensor": v.name, "from": v.dtype, "to": want, "why": why} | ({"file": file} if file else {}))
        v.dtype = want
        counts[want] = counts.get(want, 0) + 1

    # Make dequantization explicit so `fuse` can fold it into the matmul that reads it.
    producers_needed = {}
    for n in list(g.nodes):
        if n.op != "matmul":
            continue
        w = g.values[n.inputs[1]]
        if w.kind == "weight" and w.dtype != "f32":
            out = producers_needed.get(w.name)
            if out is None:
                out = w.name + ".dequantized"
                g.add_node("dequantize", [w.name], out, w.shape, w.component)
                # add_node appends; move it right before its first user.
                node = g.nodes.pop()
                g.nodes.insert(g.nodes.index(n), node)
                producers_needed[w.name] = out
            n.inputs[1] = out
    ctx.report["quantize"] = {"types": dict(sorted(counts.items())), "tensors": decisions}
    return g
