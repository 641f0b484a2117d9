"""Turn the legalized, memory-planned IR into kernel specs and the artifact's execution plan.

The plan is data the runtime interprets: a list of steps, each a kernel symbol and its arguments in the kernel's
parameter order, each argument a buffer reference — {"input": name}, {"weight": name}, {"slot": index} or
{"lut": table} (a constant lookup table the kernel's weight decoder reads, stored once in the artifact; see
``sdcompile/kernels/luts.py``). ``plan_luts`` lists the tables a plan uses.
"""

from __future__ import annotations

from typing import Any

from sdcompile.ir import Graph
from sdcompile.kernels import spec as ks


def node_spec(g: Graph, n) -> ks.KernelSpec:
    a = n.attrs
    shape = lambda i: g.values[n.inputs[i]].shape  # noqa: E731
    if n.op == "embed":
        b, s = shape(0)
        v, d = shape(1)
        return ks.embed(M=b * s, S=s, V=v, D=d, wtype=g.values[n.inputs[1]].dtype)
    if n.op == "linear":
        m, k = shape(0)
        return ks.linear(
            m, shape(1)[0], k, g.values[n.inputs[1]].dtype, bias=a["bias"], residual=a["residual"], act=a["act"]
        )
    if n.op == "layer_norm":
        m, d = shape(0)
        return ks.layer_norm(m, d, a["eps"])
    if n.op == "attention":
        return ks.attention(a["batch"], a["seq"], a["heads"], shape(0)[1] // a["heads"], a["causal"])
    raise ValueError(f"no kernel spec for op {n.op}")  # legalize guarantees this does not happen


def build_plan(g: Graph) -> tuple[list[ks.KernelSpec], dict[str, Any]]:
    mp = g.meta["memory_plan"]
    slot_of = mp["slot_of"]
    specs: dict[str, ks.KernelSpec] = {}
    steps = []
    for n in g.nodes:
        sp = node_spec(g, n)
        specs.setdefault(sp.name, sp)
        args = []
        if len(n.inputs + n.outputs) != sum(p.kind != "lut" for p in sp.params):  # an internal bug, not a user error
            raise ValueError(f"node {n.outputs[0]} ({n.op}) does not match kernel {sp.name}'s parameters")
        values = iter(n.inputs + n.outputs)
        for p in sp.params:
            if p.kind == "lut":  # not a graph value: the table is part of the kernel's weight type
                args.append({"lut": p.name})
                continue
            x = next(values)
            v = g.values[x]
            if v.kind == "input":
                args.append({"input": x})
            elif v.kind == "weight":
                args.append({"weight": x})
            else:
                args.append({"slot": slot_of[x]})
        steps.append({"kernel": sp.name, "args": args, "node": n.outputs[0], "component": n.component})
    plan = {
        "inputs": {
            i: {"shape": list(g.values[i].shape), "dtype": "int32", "accept": ["int32", "int64"]} for i in g.inputs
        },
        "outputs": {
            o: {
                "slot": slot_of[o],
                "shape": g.meta.get("output_shapes", {}).get(o, list(g.values[o].shape)),
                "dtype": "float32",
            }
            for o in g.outputs
        },
        "slots": mp["slots"],
        "steps": steps,
    }
    if "config" in g.meta:
        vocab = g.meta["config"].get("vocab")
        for i in plan["inputs"].values():
            i["max_value"] = vocab - 1 if vocab else None
    return sorted(specs.values(), key=lambda s: s.name), plan


def plan_luts(specs: list[ks.KernelSpec]) -> list[str]:
    """The lookup tables the kernels read, sorted: what the artifact must store."""
    return sorted({p.name for s in specs for p in s.params if p.kind == "lut"})
