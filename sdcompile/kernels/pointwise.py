"""Pointwise kernels: activations, broadcast add/mul, affine, GEGLU, the sinusoidal timestep embedding.

Each is one ``y`` stage (plus inlined helpers) that the ``injective`` schedules of every target take as they are:
a new pointwise op needs a compute here and nothing in ``schedules/``.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from sdcompile.kernels.act import reads, stored
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
        (xt,), (x,) = reads(spec, "x")
        if op == "unary":
            y = te.compute((a["n"],), stored(spec, "y", lambda i: activation(a["fn"], x(i))), name="y")
        else:
            y = te.compute((a["n"],), stored(spec, "y", lambda i: x[i] * f32(a["scale"]) + f32(a["shift"])), name="y")
        return [xt, y]
    if op in ("add", "mul"):
        shape, yshape = tuple(a["shape"]), tuple(a["yshape"])
        (xt, yt), (x, y) = reads(spec, "x", "y")

        def body(*i):
            j = [0 if d == 1 else ii for ii, d in zip(i, yshape)]
            return x[i] + y[tuple(j)] if op == "add" else x[i] * y[tuple(j)]

        return [xt, yt, te.compute(shape, stored(spec, "z", body), name="z")]
    if op == "geglu":
        M, F = a["M"], a["F"]
        (xt,), (x,) = reads(spec, "x")
        y = te.compute((M, F), stored(spec, "y", lambda m, f: x[m, f] * activation("gelu", x(m, F + f))), name="y")
        return [xt, y]
    if op == "timestep_embedding":
        B, dim = a["B"], a["dim"]
        half = dim // 2
        (tt,), (t,) = reads(spec, "t")
        k = f32(-math.log(a["max_period"]) / (half - a["shift"]))

        def emb(b, j):
            i = tirx.if_then_else(j < half, j, j - half)
            arg = t[b] * te.exp(tirx.Cast("float32", i) * k)
            first, second = (te.cos(arg), te.sin(arg)) if a["flip"] else (te.sin(arg), te.cos(arg))
            return tirx.Select(j < half, first, second)

        return [tt, te.compute((B, dim), stored(spec, "y", emb), name="y")]
    raise ValueError(op)
