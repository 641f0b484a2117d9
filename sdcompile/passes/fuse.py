"""Pass `fuse`: fold dequantize into the matmul that reads it, then bias, activation and residual add into it.

Contract: every matmul becomes a `linear` node that reads its weight in storage type; an `add` of a bias weight,
a following activation and an `add` of a same-shape activation (residual) are folded into the linear node when the
intermediate value has exactly one user (otherwise another node still needs the unfused value).

Rules are data: (name, root op, check, rewrite). A check returns a match or a string saying why it does not apply;
`fuse` records both, so a user can see what fired and why something did not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdcompile.ir import Graph, Node
from sdcompile.passes.context import PassContext

Match = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    name: str
    root: str  # op of the node the rule starts from
    check: Callable[[Graph, Node], Match | str]
    rewrite: Callable[[Graph, Node, Match], None]


def _single_producer(g: Graph, value: str, op: str) -> Node | str:
    prod = g.producers().get(value)
    if prod is None or prod.op != op:
        return f"{value} is not produced by {op}"
    users = g.consumers().get(value, [])
    if len(users) != 1 or value in g.outputs:
        return f"{value} has {len(users)} users"
    return prod


def _move_to(g: Graph, node: Node, replaced: Node) -> None:
    """Put `node` where `replaced` was and drop `replaced` (its inputs are all defined by then)."""
    g.nodes.remove(node)
    g.nodes[g.nodes.index(replaced)] = node


# matmul(x, dequantize(w)) | matmul(x, w)  ->  linear(x, w)
def _check_dequantize(g: Graph, n: Node) -> Match | str:
    deq = _single_producer(g, n.inputs[1], "dequantize")
    return {"deq": deq} if isinstance(deq, Node) else deq


def _check_matmul(g: Graph, n: Node) -> Match | str:
    return {"deq": None}


def _rewrite_matmul(g: Graph, n: Node, m: Match) -> None:
    if m["deq"] is not None:
        n.inputs[1] = m["deq"].inputs[0]
        g.nodes.remove(m["deq"])
    n.op = "linear"
    n.attrs = {"bias": False, "residual": False, "act": "none"}


# add(linear(...), bias_weight)  ->  linear(..., bias)
def _check_bias(g: Graph, n: Node) -> Match | str:
    lin = _single_producer(g, n.inputs[0], "linear")
    if isinstance(lin, str):
        return lin
    b = g.values[n.inputs[1]]
    if b.kind != "weight" or len(b.shape) != 1:
        return f"{b.name} is not a bias weight"
    if lin.attrs["bias"] or lin.attrs["act"] != "none" or lin.attrs["residual"]:
        return "linear already has an epilogue"
    return {"lin": lin}


def _rewrite_bias(g: Graph, n: Node, m: Match) -> None:
    lin = m["lin"]
    del g.values[lin.outputs[0]]
    lin.inputs.append(n.inputs[1])
    lin.attrs["bias"] = True
    lin.outputs = n.outputs
    _move_to(g, lin, n)


# gelu|quick_gelu(linear(...))  ->  linear(..., act)
def _check_act(g: Graph, n: Node) -> Match | str:
    lin = _single_producer(g, n.inputs[0], "linear")
    if isinstance(lin, str):
        return lin
    if lin.attrs["act"] != "none" or lin.attrs["residual"]:
        return "linear already has an activation or residual"
    return {"lin": lin}


def _rewrite_act(g: Graph, n: Node, m: Match) -> None:
    lin = m["lin"]
    del g.values[lin.outputs[0]]
    lin.attrs["act"] = n.op
    lin.outputs = n.outputs
    _move_to(g, lin, n)


# add(linear(...), r) | add(r, linear(...)) with r an activation of the same shape  ->  linear(..., residual=r)
def _check_residual(g: Graph, n: Node) -> Match | str:
    reasons = []
    for side in (0, 1):
        lin = _single_producer(g, n.inputs[side], "linear")
        if isinstance(lin, str):
            reasons.append(lin)
            continue
        r = g.values[n.inputs[1 - side]]
        if r.kind == "weight" or r.shape != g.values[n.inputs[side]].shape:
            reasons.append(f"{r.name} is not a same-shape activation")
            continue
        if lin.attrs["residual"]:
            reasons.append("linear already has a residual")
            continue
        return {"lin": lin, "res": r.name}
    return "; ".join(reasons)


def _rewrite_residual(g: Graph, n: Node, m: Match) -> None:
    lin = m["lin"]
    del g.values[lin.outputs[0]]
    lin.inputs.append(m["res"])
    lin.attrs["residual"] = True
    lin.outputs = n.outputs
    _move_to(g, lin, n)


RULES: list[Rule] = [
    Rule("dequantize_into_matmul", "matmul", _check_dequantize, _rewrite_matmul),
    Rule("matmul_to_linear", "matmul", _check_matmul, _rewrite_matmul),
    Rule("bias_into_linear", "add", _check_bias, _rewrite_bias),
    Rule("activation_into_linear", "gelu", _check_act, _rewrite_act),
    Rule("activation_into_linear", "quick_gelu", _check_act, _rewrite_act),
    Rule("residual_into_linear", "add", _check_residual, _rewrite_residual),
]


def run(g: Graph, ctx: PassContext, rules: list[Rule] = RULES) -> Graph:
    g = g.copy()
    fired: dict[str, int] = {}
    declined: dict[str, str] = {}
    changed = True
    while changed:  # one sweep in order fuses a whole chain (matmul -> bias -> act -> residual); repeat to a fixpoint
        changed = False
        for n in list(g.nodes):
            if not any(x is n for x in g.nodes):  # removed by an earlier rewrite in this sweep
                continue
            for rule in rules:
                if rule.root != n.op:
                    continue
                m = rule.check(g, n)
                if isinstance(m, str):
                    declined[f"{rule.name}@{n.outputs[0]}"] = m
                    continue
                rule.rewrite(g, n, m)
                fired[rule.name] = fired.get(rule.name, 0) + 1
                changed = True
                break
    # Only declines that still stand at the end are interesting (earlier ones were often fixed by a later fire).
    standing = {k: v for k, v in declined.items() if any(k.endswith("@" + o) for n in g.nodes for o in n.outputs)}
    g.prune()
    ctx.report["fuse"] = {"fired": fired, "declined": standing, "nodes": len(g.nodes)}
    return g
