"""Pointwise kernels: activations, broadcast add/mul, affine, GEGLU, the sinusoidal timestep embedding.

Each is one ``y`` stage (plus inlined helpers) that the ``injective`` schedules of every target take as they are:
a new pointwise op needs a compute here and nothing in ``schedules/``.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from sdcompile.kernels.dequant import f32
from sdcompile.kernels.linear import activation
from sdcompile.kernels.spec import KernelSpec


def _flat(shape: tuple[int, ...], i) -> list:
    """Multi-index of flat index i in a row-major shape."""
    idx = []
    for d in reversed(shape):
        idx.append(i % d)
        i = i // d
    return idx[::-1]


def compute(spec: KernelSpec) -> list[te.Tensor]:
    a = dict(spec.attrs)
    op = spec.op
    if op in ("unary", "affine"):
        x = te.placeholder((a["n"],), "float32", name="x")
        if op == "unary":
            y = te.compute((a["n"],), lambda i: activation(a["fn"], x(i)), name="y")
        else:
            y = te.compute((a["n"],), lambda i: x[i] * f32(a["scale"]) + f32(a["shift"]), name="y")
        return [x, y]
    if op in ("add", "mul"):
        shape, yshape = tuple(a["shape"]), tuple(a["yshape"])
        x = te.placeholder(shape, "float32", name="x")
        y = te.placeholder(yshape, "float32", name="y")

        def body(*i):
            j = [0 if d == 1 else ii for ii, d in zip(i, yshape)]
            return x[i] + y[tuple(j)] if op == "add" else x[i] * y[tuple(j)]

        return [x, y, te.compute(shape, body, name="z")]
    if op == "geglu":
        M, F = a["M"], a["F"]
        x = te.placeholder((M, 2 * F), "float32", name="x")
        y = te.compute((M, F), lambda m, f: x[m, f] * activation("gelu", x(m, F + f)), name="y")
        return [x, y]
    if op == "timestep_embedding":
        B, dim = a["B"], a["dim"]
        half = dim // 2
        t = te.placeholder((B,), "float32", name="t")
        k = f32(-math.log(a["max_period"]) / (half - a["shift"]))

        def emb(b, j):
            i = tirx.if_then_else(j < half, j, j - half)
            arg = t[b] * te.exp(tirx.Cast("float32", i) * k)
            first, second = (te.cos(arg), te.sin(arg)) if a["flip"] else (te.sin(arg), te.cos(arg))
            return tirx.Select(j < half, first, second)

        return [t, te.compute((B, dim), emb, name="y")]
    raise ValueError(op)
