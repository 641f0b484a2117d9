"""Op signatures as data: for each op, a shape rule from input shapes and attributes to the output shape.

The verifier checks every node against this table; a pass that builds a node with the wrong shapes fails there.
A rule returns the output shape or raises `ValueError` saying what is inconsistent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Shape = tuple[int, ...]


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _embed(s: list[Shape], a: dict[str, Any]) -> Shape:
    ids, tok, pos = s
    _need(len(ids) == 2 and len(tok) == 2 and len(pos) == 2, "embed wants ids[B,S], tok[V,D], pos[P,D]")
    _need(tok[1] == pos[1], f"token width {tok[1]} != position width {pos[1]}")
    _need(ids[1] <= pos[0], f"sequence {ids[1]} longer than {pos[0]} positions")
    return (ids[0] * ids[1], tok[1])


def _layer_norm(s: list[Shape], a: dict[str, Any]) -> Shape:
    x, g, b = s
    _need(g == (x[-1],) and b == (x[-1],), f"norm params {g},{b} do not match width {x[-1]}")
    _need("eps" in a, "layer_norm needs eps")
    return x


def _matmul(s: list[Shape], a: dict[str, Any]) -> Shape:
    x, w = s
    _need(len(x) == 2 and len(w) == 2 and x[1] == w[1], f"matmul {x} x {w}^T: inner dimensions differ")
    return (x[0], w[0])


def _dequantize(s: list[Shape], a: dict[str, Any]) -> Shape:
    return s[0]


def _add(s: list[Shape], a: dict[str, Any]) -> Shape:
    x, y = s
    _need(y == x or y == x[-1:], f"add {x} + {y}: shapes do not broadcast")
    return x


def _unary(s: list[Shape], a: dict[str, Any]) -> Shape:
    return s[0]


def _attention(s: list[Shape], a: dict[str, Any]) -> Shape:
    q, k, v = s
    _need(q == k == v, f"attention q,k,v shapes differ: {q} {k} {v}")
    _need(q[1] % a["heads"] == 0, f"width {q[1]} not divisible by {a['heads']} heads")
    _need(q[0] == a["batch"] * a["seq"], f"rows {q[0]} != batch*seq {a['batch']}*{a['seq']}")
    return q


def _linear(s: list[Shape], a: dict[str, Any]) -> Shape:
    out = _matmul(s[:2], a)
    rest = s[2:]
    if a.get("bias"):
        _need(rest[0] == (out[1],), f"bias {rest[0]} does not match {out[1]} outputs")
        rest = rest[1:]
    if a.get("residual"):
        _need(rest[0] == out, f"residual {rest[0]} does not match output {out}")
        rest = rest[1:]
    _need(not rest, "linear has extra inputs")
    _need(a.get("act", "none") in ("none", "gelu", "quick_gelu"), f"unknown activation {a.get('act')}")
    return out


SHAPE_RULES: dict[str, Callable[[list[Shape], dict[str, Any]], Shape]] = {
    "embed": _embed,
    "layer_norm": _layer_norm,
    "matmul": _matmul,
    "dequantize": _dequantize,
    "add": _add,
    "gelu": _unary,
    "quick_gelu": _unary,
    "attention": _attention,
    "linear": _linear,
}

# Which inputs of an op may be weights kept in a storage (quant) type; every other input must be f32/int. A matmul
# reads its weight in the stored type straight after lifting a quantized file (a GGUF's q8_0, iq4_xs, ...); the
# `quantize` pass then makes the dequantization explicit.
QUANT_INPUTS: dict[str, tuple[int, ...]] = {"embed": (1,), "dequantize": (0,), "linear": (1,), "matmul": (1,)}
ELEMENTWISE = ("add", "gelu", "quick_gelu")
