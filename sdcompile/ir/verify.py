"""The IR verifier: run between passes; any violation is an internal bug and raises `IRError` listing all of them."""

from __future__ import annotations

from sdcompile.ir.graph import ACT_DTYPES, Graph
from sdcompile.ir.ops import QUANT_INPUTS, SHAPE_RULES, output_shapes
from sdcompile.ir.ops import get as get_op
from sdcompile.quant.types import QUANT_TYPES


class IRError(Exception):
    pass


def verify(g: Graph, where: str = "") -> None:
    problems: list[str] = []
    defined = set(g.inputs)
    for name, v in g.values.items():
        if v.name != name:
            problems.append(f"value {name!r} is registered under another name {v.name!r}")
        if not v.component:
            problems.append(f"value {name!r} has no component")
        if v.kind == "weight":
            defined.add(name)
            if v.dtype not in QUANT_TYPES:
                problems.append(f"weight {name!r} has unknown dtype {v.dtype!r}")
            elif v.shape and v.shape[-1] % QUANT_TYPES[v.dtype].block_size:
                problems.append(f"weight {name!r} {v.shape} does not fit {v.dtype} blocks")
            if v.data is None:
                problems.append(f"weight {name!r} has no data")
        elif v.dtype not in ACT_DTYPES:
            problems.append(f"{v.kind} {name!r} has dtype {v.dtype!r}; activations are {ACT_DTYPES}")
    for i, n in enumerate(g.nodes):
        tag = f"node {i} ({n.op} -> {n.outputs})"
        if not n.component:
            problems.append(f"{tag} has no component")
        rule = SHAPE_RULES.get(n.op)
        if rule is None:
            problems.append(f"{tag}: unknown op")
            continue
        missing = [x for x in n.inputs if x not in defined]
        if missing:
            problems.append(f"{tag} uses {missing} before they are defined")
            continue
        for j, x in enumerate(n.inputs):
            v = g.values[x]
            if v.kind == "weight" and not QUANT_TYPES[v.dtype].is_float and j not in QUANT_INPUTS.get(n.op, ()):
                problems.append(f"{tag}: input {j} ({x}) is {v.dtype}, which this op cannot read")
        try:
            wants = output_shapes(get_op(n.op), [g.values[x].shape for x in n.inputs], n.attrs)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            problems.append(f"{tag}: {e}")
            continue
        if len(wants) != len(n.outputs):
            problems.append(f"{tag} has {len(n.outputs)} outputs, the op gives {len(wants)}")
            continue
        for o, want in zip(n.outputs, wants):
            if o in defined:
                problems.append(f"{tag} redefines {o}")
            defined.add(o)
            if o not in g.values:
                problems.append(f"{tag} output {o} has no value")
            elif g.values[o].shape != want:
                problems.append(f"{tag} output {o} has shape {g.values[o].shape}, op gives {want}")
    for o in g.outputs:
        if o not in defined:
            problems.append(f"graph output {o} is never computed")
    if problems:
        head = f"IR verification failed{' after ' + where if where else ''}:"
        raise IRError("\n  ".join([head, *problems]))
