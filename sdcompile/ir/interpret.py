"""A numpy interpreter of the IR: the reference that pass tests compare graphs with, before and after a pass.

It computes in float64 from the weights' storage values, so it checks what a pass did to the graph, not rounding.
"""

from __future__ import annotations

import math

import numpy as np

from sdcompile.ir.graph import Graph
from sdcompile.ir.weights import as_f32


def _gelu(x):
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


def _layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _attention(q, k, v, heads, batch, seq, causal):
    m, w = q.shape
    dh = w // heads
    batch = m // seq  # the interpreter runs any batch, not only the compiled one
    sh = lambda t: t.reshape(batch, seq, heads, dh).transpose(0, 2, 1, 3)  # noqa: E731
    s = sh(q) @ sh(k).transpose(0, 1, 3, 2) / math.sqrt(dh)
    if causal:
        s = np.where(np.triu(np.ones((seq, seq), bool), 1), -np.inf, s)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return (s @ sh(v)).transpose(0, 2, 1, 3).reshape(m, w)


def run(g: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    env: dict[str, np.ndarray] = {k: np.asarray(inputs[k]) for k in g.inputs}
    for v in g.weights():
        env[v.name] = as_f32(v).astype(np.float64)
    for n in g.nodes:
        x = [env[i] for i in n.inputs]
        a = n.attrs
        if n.op == "embed":
            ids, tok, pos = x
            s = ids.shape[1]
            y = tok[ids.reshape(-1)] + np.tile(pos[:s], (ids.shape[0], 1))
        elif n.op == "layer_norm":
            y = _layer_norm(*x, a["eps"])
        elif n.op == "matmul":
            y = x[0] @ x[1].T
        elif n.op == "dequantize":
            y = x[0]
        elif n.op == "add":
            y = x[0] + x[1]
        elif n.op == "gelu":
            y = _gelu(x[0])
        elif n.op == "quick_gelu":
            y = _quick_gelu(x[0])
        elif n.op == "attention":
            y = _attention(*x, a["heads"], a["batch"], a["seq"], a["causal"])
        elif n.op == "linear":
            y = x[0] @ x[1].T
            rest = list(x[2:])
            if a["bias"]:
                y = y + rest.pop(0)
            y = {"none": lambda t: t, "gelu": _gelu, "quick_gelu": _quick_gelu}[a["act"]](y)
            if a["residual"]:
                y = y + rest[-1]
        else:
            raise NotImplementedError(n.op)
        env[n.outputs[0]] = y
    return {o: env[o] for o in g.outputs}
