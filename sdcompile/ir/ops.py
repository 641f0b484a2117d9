"""The op registry: every IR op declared once, and every table about ops derived from it.

An `OpDef` holds what the compiler needs to know about an op:

- ``shape``: the shape rule, from input shapes and attributes to the output shape (raises ``ValueError`` saying
  what is inconsistent); the verifier checks every node against it;
- ``weights``: which inputs may be weights kept in a storage (quant) type, so `quantize` and `legalize` may change
  their type; every other weight input must be a plain float the kernel reads as f32;
- ``reference``: a numpy implementation (float64) for the interpreter that pass tests compare graphs with;
- ``kernel``: the kernel op it lowers to (``sdcompile/kernels/spec.py`` declares each kernel op's parameters, TE
  compute and schedule family), or None for ops that never reach codegen (``matmul`` and ``dequantize`` before
  fusion);
- ``view``: for data movement that may need no kernel, the element offset of each output inside input 0 when
  the output is a contiguous run of it (a reshape: 0; a slice or split along the outermost non-unit axis), else
  None; ``node_view`` turns that into byte offsets the memory plan uses, where they suit GPU binding alignment;
- ``outputs``: several for ops that have several (``split``), whose shape rule and reference return lists;
- ``lower``: the kernel attributes of one node (shapes, types, epilogue flags).

Activations are channels-last: images are [B, H, W, C], token sequences [B, S, C]; a 1x1 conv and a linear read
the same memory. Function signatures may take NCHW (as diffusers does) and `transpose` at the boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdcompile.ir.graph import ITEMSIZE

Shape = tuple[int, ...]
Attrs = dict[str, Any]


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class OpDef:
    name: str
    shape: Callable[[list[Shape], Attrs], Shape]
    reference: Callable[[list[np.ndarray], Attrs], np.ndarray]
    weights: tuple[int, ...] = ()
    kernel: str | None = None
    # (input shapes, input dtypes, output shape, attrs) -> kernel attributes; input dtypes name weight types
    lower: Callable[[list[Shape], list[str], Shape, Attrs], dict[str, Any]] | None = None
    view: Callable[[list[Shape], Attrs], list[int] | None] | None = None  # element offsets of the outputs in input 0
    elementwise: bool = False  # same shape in and out, one value per value (fusable as an epilogue)
    multi: bool = False  # several outputs: shape gives a list of shapes, reference a list of arrays


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} declared twice")
    OPS[op.name] = op
    return op


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}") from None


def rows(shape: Shape) -> int:
    return math.prod(shape[:-1])


# --- activations -----------------------------------------------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def gelu_np(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def quick_gelu_np(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-1.702 * x))


def silu_np(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "gelu": gelu_np,
    "quick_gelu": quick_gelu_np,
    "silu": silu_np,
}


def _unary_shape(s: list[Shape], a: Attrs) -> Shape:
    return s[0]


for _name in ("gelu", "quick_gelu", "silu"):
    register(
        OpDef(
            _name,
            _unary_shape,
            lambda x, a, f=ACTIVATIONS[_name]: f(x[0]),
            kernel="unary",
            lower=lambda s, t, out, a, n=_name: {"n": math.prod(s[0]), "fn": n},
            elementwise=True,
        )
    )


# --- broadcasting binary ops -----------------------------------------------------------------------------------


def broadcast_shape(x: Shape, y: Shape) -> Shape:
    """numpy broadcasting of y onto x, where the result must have x's shape (y is the smaller operand)."""
    _need(len(y) <= len(x), f"{y} has more dimensions than {x}")
    yy = (1,) * (len(x) - len(y)) + tuple(y)
    _need(all(b in (1, a) for a, b in zip(x, yy)), f"{y} does not broadcast to {x}")
    return x


def _binary_shape(s: list[Shape], a: Attrs) -> Shape:
    return broadcast_shape(*s)


def _binary_lower(s, t, out, a) -> dict:
    y = (1,) * (len(s[0]) - len(s[1])) + tuple(s[1])
    return {"shape": tuple(s[0]), "yshape": y}


register(OpDef("add", _binary_shape, lambda x, a: x[0] + x[1], kernel="add", lower=_binary_lower, elementwise=True))
register(OpDef("mul", _binary_shape, lambda x, a: x[0] * x[1], kernel="mul", lower=_binary_lower, elementwise=True))


def _affine_ref(x, a):
    return x[0] * a["scale"] + a.get("shift", 0.0)


register(
    OpDef(
        "affine",
        _unary_shape,
        _affine_ref,
        kernel="affine",
        lower=lambda s, t, out, a: {
            "n": math.prod(s[0]),
            "scale": float(a["scale"]),
            "shift": float(a.get("shift", 0)),
        },
        elementwise=True,
    )
)


# --- matmul family -----------------------------------------------------------------------------------------------


def _matmul_shape(s: list[Shape], a: Attrs) -> Shape:
    x, w = s
    _need(len(w) == 2 and len(x) >= 1 and x[-1] == w[1], f"matmul {x} x {w}^T: inner dimensions differ")
    return (*x[:-1], w[0])


def _epilogue_shape(rest: list[Shape], out: Shape, a: Attrs, op: str) -> None:
    """The fused epilogue's inputs of a linear or conv2d: a bias [N] if ``bias``, then a residual of the output's
    shape if ``residual``, and nothing more."""
    if a.get("bias"):
        _need(rest and rest[0] == (out[-1],), f"{op} bias {rest[:1]} does not match {out[-1]} outputs")
        rest = rest[1:]
    if a.get("residual"):
        _need(rest and rest[0] == out, f"{op} residual {rest[:1]} does not match output {out}")
        rest = rest[1:]
    _need(not rest, f"{op} has extra inputs")
    _need(a.get("act", "none") in ACTIVATIONS, f"unknown activation {a.get('act')}")


def _epilogue_ref(y: np.ndarray, rest: list[np.ndarray], a: Attrs) -> np.ndarray:
    """bias, activation, residual, in this order (the kernels' epilogue)."""
    rest = list(rest)
    if a.get("bias"):
        y = y + rest.pop(0)
    y = ACTIVATIONS[a.get("act", "none")](y)
    if a.get("residual"):
        y = y + rest[-1]
    return y


def _mma(a: Attrs) -> dict:
    """The products' precision where a pass asked for one other than f32 (``passes/mma.py``): a kernel attribute
    only then, so f32 kernels keep their names."""
    return {"mma": a["mma"]} if a.get("mma") else {}


def _wlayout(a: Attrs) -> dict:
    """The weight's storage order where a pass packed it for its kernel (``passes/pack_weights.py``)."""
    return {"wlayout": a["wlayout"]} if a.get("wlayout") else {}


def _linear_shape(s: list[Shape], a: Attrs) -> Shape:
    out = _matmul_shape(s[:2], a)
    _epilogue_shape(s[2:], out, a, "linear")
    return out


def _linear_ref(x, a):
    return _epilogue_ref(x[0] @ x[1].T, x[2:], a)


register(OpDef("matmul", _matmul_shape, lambda x, a: x[0] @ x[1].T, weights=(1,)))
register(OpDef("dequantize", _unary_shape, lambda x, a: x[0], weights=(0,)))
register(
    OpDef(
        "linear",
        _linear_shape,
        _linear_ref,
        weights=(1,),
        kernel="linear",
        lower=lambda s, t, out, a: {
            "M": rows(s[0]),
            "N": s[1][0],
            "K": s[1][1],
            "wtype": t[1],
            "bias": bool(a.get("bias")),
            "residual": bool(a.get("residual")),
            "act": a.get("act", "none"),
            **_mma(a),
            **_wlayout(a),
        },
    )
)


# --- convolution -------------------------------------------------------------------------------------------------
# x [B, H, W, C]; w [O, KH*KW*C] (the file's [O, C, KH, KW] permuted to [O, KH, KW, C] when the artifact is written,
# so one output's row of K = KH*KW*C values reads whole pixels of contiguous channels); pads (top, left, bottom,
# right): the VAE encoder's downsampling pads only bottom and right.


def conv_out_hw(h: int, w: int, a: Attrs) -> tuple[int, int]:
    pt, pl, pb, pr = a["pads"]
    s = a["stride"]
    return (h + pt + pb - a["kh"]) // s + 1, (w + pl + pr - a["kw"]) // s + 1


def _conv_shape(s: list[Shape], a: Attrs) -> Shape:
    x, w = s[0], s[1]
    _need(len(x) == 4, f"conv2d input {x} is not [B, H, W, C]")
    kk = a["kh"] * a["kw"]
    _need(len(w) == 2 and w[1] == kk * x[3], f"conv2d weight {w} is not [O, {a['kh']}*{a['kw']}*{x[3]}]")
    ho, wo = conv_out_hw(x[1], x[2], a)
    _need(ho > 0 and wo > 0, f"conv2d output {ho}x{wo} is empty")
    out = (x[0], ho, wo, w[0])
    _epilogue_shape(s[2:], out, a, "conv2d")
    return out


def im2col_np(x: np.ndarray, a: Attrs) -> np.ndarray:
    """[B, H, W, C] -> [B, Ho, Wo, KH*KW*C] patches in (ky, kx, c) order, zero padded."""
    pt, pl, pb, pr = a["pads"]
    s, kh, kw = a["stride"], a["kh"], a["kw"]
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    b, h, w, c = x.shape
    ho, wo = conv_out_hw(h, w, a)
    cols = [
        xp[:, ky : ky + s * (ho - 1) + 1 : s, kx : kx + s * (wo - 1) + 1 : s, :] for ky in range(kh) for kx in range(kw)
    ]
    return np.concatenate(cols, axis=-1)


def _conv_ref(x, a):
    return _epilogue_ref(im2col_np(x[0], a) @ x[1].T, x[2:], a)


def _conv_lower(s, t, out, a) -> dict:
    b, h, w, c = s[0]
    return {
        "B": b,
        "H": h,
        "W": w,
        "C": c,
        "N": s[1][0],
        "kh": a["kh"],
        "kw": a["kw"],
        "stride": a["stride"],
        "pads": tuple(a["pads"]),
        "wtype": t[1],
        "bias": bool(a.get("bias")),
        "residual": bool(a.get("residual")),
        **_mma(a),
        **_wlayout(a),
    }


register(OpDef("conv2d", _conv_shape, _conv_ref, weights=(1,), kernel="conv2d", lower=_conv_lower))


# --- normalization -----------------------------------------------------------------------------------------------


def _layer_norm_shape(s: list[Shape], a: Attrs) -> Shape:
    x, g, b = s
    _need(g == (x[-1],) and b == (x[-1],), f"norm params {g},{b} do not match width {x[-1]}")
    _need("eps" in a, "layer_norm needs eps")
    return x


def _layer_norm_ref(x, a):
    v, g, b = x
    mu = v.mean(-1, keepdims=True)
    var = ((v - mu) ** 2).mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + a["eps"]) * g + b


register(
    OpDef(
        "layer_norm",
        _layer_norm_shape,
        _layer_norm_ref,
        kernel="layer_norm",
        lower=lambda s, t, out, a: {"M": rows(s[0]), "D": s[0][-1], "eps": float(a["eps"])},
    )
)


def _group_norm_shape(s: list[Shape], a: Attrs) -> Shape:
    x, g, b = s
    _need(len(x) >= 3, f"group_norm input {x} is not [B, ..., C]")
    c = x[-1]
    _need(g == (c,) and b == (c,), f"group_norm params {g},{b} do not match {c} channels")
    _need(c % a["groups"] == 0, f"{c} channels are not divisible into {a['groups']} groups")
    _need(a.get("act", "none") in ("none", "silu"), f"group_norm activation {a.get('act')} is not none or silu")
    return x


def _group_norm_ref(x, a):
    v, g, b = x
    bsz, c, groups = v.shape[0], v.shape[-1], a["groups"]
    t = v.reshape(bsz, -1, groups, c // groups)
    mu = t.mean(axis=(1, 3), keepdims=True)
    var = ((t - mu) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((t - mu) / np.sqrt(var + a["eps"])).reshape(v.shape) * g + b
    return ACTIVATIONS[a.get("act", "none")](y)


register(
    OpDef(
        "group_norm",
        _group_norm_shape,
        _group_norm_ref,
        kernel="group_norm",
        lower=lambda s, t, out, a: {
            "B": s[0][0],
            "N": math.prod(s[0][1:-1]),
            "C": s[0][-1],
            "G": a["groups"],
            "eps": float(a["eps"]),
            "act": a.get("act", "none"),
        },
    )
)


# --- attention -----------------------------------------------------------------------------------------------------


def _attention_shape(s: list[Shape], a: Attrs) -> Shape:
    q, k, v = s
    _need(len(q) == 3 and len(k) == 3 and k == v, f"attention wants q[B,S,W], k=v[B,T,W]: {q} {k} {v}")
    _need(q[0] == k[0] and q[2] == k[2], f"attention q {q} and k {k} differ in batch or width")
    _need(q[2] % a["heads"] == 0, f"width {q[2]} not divisible by {a['heads']} heads")
    _need(not a.get("causal") or q[1] == k[1], "a causal mask needs as many queries as keys")
    return q


def _attention_ref(x, a):
    q, k, v = x
    b, s, w = q.shape
    t = k.shape[1]
    h = a["heads"]
    dh = w // h
    sh = lambda m, n: m.reshape(b, n, h, dh).transpose(0, 2, 1, 3)  # noqa: E731
    sc = sh(q, s) @ sh(k, t).transpose(0, 1, 3, 2) / math.sqrt(dh)
    if a.get("causal"):
        sc = np.where(np.triu(np.ones((s, t), bool), 1), -np.inf, sc)
    sc = np.exp(sc - sc.max(-1, keepdims=True))
    sc /= sc.sum(-1, keepdims=True)
    return (sc @ sh(v, t)).transpose(0, 2, 1, 3).reshape(b, s, w)


register(
    OpDef(
        "attention",
        _attention_shape,
        _attention_ref,
        kernel="attention",
        lower=lambda s, t, out, a: {
            "B": s[0][0],
            "S": s[0][1],
            "T": s[1][1],
            "H": a["heads"],
            "Dh": s[0][2] // a["heads"],
            "causal": bool(a.get("causal")),
            **({"tiled": True} if a.get("tiled") else {}),  # set by legalize: keys past the untiled GPU kernel
            **_mma(a),
        },
    )
)


# --- embeddings ----------------------------------------------------------------------------------------------------


def _embed_shape(s: list[Shape], a: Attrs) -> Shape:
    ids, tok, pos = s
    _need(len(ids) == 2 and len(tok) == 2 and len(pos) == 2, "embed wants ids[B,S], tok[V,D], pos[P,D]")
    _need(tok[1] == pos[1], f"token width {tok[1]} != position width {pos[1]}")
    _need(ids[1] <= pos[0], f"sequence {ids[1]} longer than {pos[0]} positions")
    return (ids[0], ids[1], tok[1])


def _embed_ref(x, a):
    ids, tok, pos = x
    return tok[ids] + pos[None, : ids.shape[1]]


register(
    OpDef(
        "embed",
        _embed_shape,
        _embed_ref,
        weights=(1,),
        kernel="embed",
        lower=lambda s, t, out, a: {"M": s[0][0] * s[0][1], "S": s[0][1], "V": s[1][0], "D": s[1][1], "wtype": t[1]},
    )
)


def _timestep_shape(s: list[Shape], a: Attrs) -> Shape:
    _need(len(s[0]) == 1, f"timestep_embedding wants t[B], got {s[0]}")
    _need(a["dim"] % 2 == 0, "timestep_embedding needs an even width")
    return (s[0][0], a["dim"])


def timestep_embedding_np(t: np.ndarray, a: Attrs) -> np.ndarray:
    """LDM's / diffusers' sinusoidal embedding: freqs exp(-ln(max_period) i / (half - shift)); [cos, sin] when
    flip_sin_to_cos (SD's UNet), else [sin, cos]."""
    half = a["dim"] // 2
    freqs = np.exp(-math.log(a.get("max_period", 10000)) * np.arange(half) / (half - a.get("shift", 0.0)))
    arg = np.asarray(t, np.float64)[:, None] * freqs[None]
    parts = (np.cos(arg), np.sin(arg)) if a.get("flip", True) else (np.sin(arg), np.cos(arg))
    return np.concatenate(parts, axis=-1)


register(
    OpDef(
        "timestep_embedding",
        _timestep_shape,
        lambda x, a: timestep_embedding_np(x[0], a),
        kernel="timestep_embedding",
        lower=lambda s, t, out, a: {
            "B": s[0][0],
            "dim": a["dim"],
            "flip": bool(a.get("flip", True)),
            "shift": float(a.get("shift", 0.0)),
            "max_period": int(a.get("max_period", 10000)),
        },
    )
)


# --- data movement -------------------------------------------------------------------------------------------------


def _reshape_shape(s: list[Shape], a: Attrs) -> Shape:
    out = tuple(a["to"])
    _need(math.prod(out) == math.prod(s[0]), f"reshape {s[0]} -> {out} changes the element count")
    return out


register(OpDef("reshape", _reshape_shape, lambda x, a: x[0].reshape(a["to"]), view=lambda s, a: [0]))


def _axis_parts(shape: Shape, axis: int) -> tuple[int, int, int]:
    """(outer, length, inner) of a shape around ``axis``: the elements before, along and after it."""
    ax = axis % len(shape)
    return math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1 :])


def _runs(shape: Shape, axis: int, starts: list[int]) -> list[int] | None:
    """Element offsets of the parts starting at ``starts`` along ``axis``, when each part is one contiguous run of
    the input (nothing but unit dimensions before the axis), else None (a kernel copies)."""
    outer, _, inner = _axis_parts(shape, axis)
    return [st * inner for st in starts] if outer == 1 else None


def _slice_shape(s: list[Shape], a: Attrs) -> Shape:
    x = s[0]
    ax = a["axis"] % len(x)
    _need(0 <= a["start"] < a["stop"] <= x[ax], f"slice {a['start']}:{a['stop']} is outside axis {ax} of {x}")
    return (*x[:ax], a["stop"] - a["start"], *x[ax + 1 :])


def _slice_ref(x, a):
    idx = [slice(None)] * x[0].ndim
    idx[a["axis"] % x[0].ndim] = slice(a["start"], a["stop"])
    return x[0][tuple(idx)]


def _slices_lower(s: list[Shape], axis: int, starts: list[int], widths: list[int]) -> dict:
    outer, full, inner = _axis_parts(s[0], axis)
    return {"outer": outer, "full": full, "inner": inner, "starts": tuple(starts), "widths": tuple(widths)}


register(
    OpDef(
        "slice",
        _slice_shape,
        _slice_ref,
        kernel="slices",
        lower=lambda s, t, out, a: _slices_lower(s, a["axis"], [a["start"]], [a["stop"] - a["start"]]),
        view=lambda s, a: _runs(s[0], a["axis"], [a["start"]]),
    )
)


def _split_starts(a: Attrs) -> list[int]:
    return [sum(a["sizes"][:i]) for i in range(len(a["sizes"]))]


def _split_shape(s: list[Shape], a: Attrs) -> list[Shape]:
    x = s[0]
    ax = a["axis"] % len(x)
    _need(
        sum(a["sizes"]) == x[ax] and all(n > 0 for n in a["sizes"]), f"split sizes {a['sizes']} do not add to {x[ax]}"
    )
    return [(*x[:ax], n, *x[ax + 1 :]) for n in a["sizes"]]


register(
    OpDef(
        "split",
        _split_shape,
        lambda x, a: np.split(x[0], np.cumsum(a["sizes"])[:-1], axis=a["axis"]),
        kernel="slices",
        lower=lambda s, t, out, a: _slices_lower(s, a["axis"], _split_starts(a), list(a["sizes"])),
        view=lambda s, a: _runs(s[0], a["axis"], _split_starts(a)),
        multi=True,
    )
)


def _transpose_shape(s: list[Shape], a: Attrs) -> Shape:
    perm = tuple(a["perm"])
    _need(sorted(perm) == list(range(len(s[0]))), f"perm {perm} does not match rank {len(s[0])}")
    return tuple(s[0][p] for p in perm)


register(
    OpDef(
        "transpose",
        _transpose_shape,
        lambda x, a: x[0].transpose(a["perm"]),
        kernel="transpose",
        lower=lambda s, t, out, a: {"shape": tuple(s[0]), "perm": tuple(a["perm"])},
    )
)


def _concat_shape(s: list[Shape], a: Attrs) -> Shape:
    ax = a["axis"] % len(s[0])
    _need(all(len(x) == len(s[0]) for x in s), "concat inputs differ in rank")
    _need(all(x[:ax] + x[ax + 1 :] == s[0][:ax] + s[0][ax + 1 :] for x in s), f"concat shapes {s} differ off axis {ax}")
    return (*s[0][:ax], sum(x[ax] for x in s), *s[0][ax + 1 :])


register(
    OpDef(
        "concat",
        _concat_shape,
        lambda x, a: np.concatenate(x, axis=a["axis"]),
        kernel="concat",
        lower=lambda s, t, out, a: {
            "outer": math.prod(s[0][: a["axis"] % len(s[0])]),
            "widths": tuple(math.prod(x[a["axis"] % len(x) :]) for x in s),
        },
    )
)


def _upsample_shape(s: list[Shape], a: Attrs) -> Shape:
    x = s[0]
    _need(len(x) == 4, f"upsample input {x} is not [B, H, W, C]")
    f = a.get("factor", 2)
    return (x[0], x[1] * f, x[2] * f, x[3])


register(
    OpDef(
        "upsample_nearest",
        _upsample_shape,
        lambda x, a: x[0].repeat(a.get("factor", 2), axis=1).repeat(a.get("factor", 2), axis=2),
        kernel="upsample_nearest",
        lower=lambda s, t, out, a: {"B": s[0][0], "H": s[0][1], "W": s[0][2], "C": s[0][3], "f": a.get("factor", 2)},
    )
)


def _geglu_shape(s: list[Shape], a: Attrs) -> Shape:
    x = s[0]
    _need(x[-1] % 2 == 0, f"geglu input width {x[-1]} is odd")
    return (*x[:-1], x[-1] // 2)


def _geglu_ref(x, a):
    h, gate = np.split(x[0], 2, axis=-1)
    return h * gelu_np(gate)


register(
    OpDef(
        "geglu",
        _geglu_shape,
        _geglu_ref,
        kernel="geglu",
        lower=lambda s, t, out, a: {"M": rows(s[0]), "F": s[0][-1] // 2},
    )
)


# --- views ------------------------------------------------------------------------------------------------------------

VIEW_ALIGN = 256  # bytes: GPU storage-buffer bindings start at multiples of this (WebGPU's minimum alignment)


def node_view(g, n) -> list[int] | None:
    """Byte offsets of a node's outputs inside its input's memory when the node is a view there (no kernel runs),
    else None. A part that would start off the binding alignment is copied by the op's kernel instead."""
    d = get(n.op)
    if d.view is None:
        return None
    offs = d.view([g.values[i].shape for i in n.inputs], n.attrs)
    if offs is None:
        return None
    item = ITEMSIZE[g.values[n.inputs[0]].dtype]
    out = [o * item for o in offs]
    return out if all(o % VIEW_ALIGN == 0 for o in out) else None


def output_shapes(d: OpDef, shapes: list[Shape], attrs: Attrs) -> list[Shape]:
    """The shape rule's result as a list, for single- and multi-output ops alike."""
    r = d.shape(shapes, attrs)
    return list(r) if d.multi else [r]


# --- derived tables (what other modules used to repeat) ------------------------------------------------------------

SHAPE_RULES: dict[str, Callable[[list[Shape], Attrs], Shape]] = {n: d.shape for n, d in OPS.items()}
QUANT_INPUTS: dict[str, tuple[int, ...]] = {n: d.weights for n, d in OPS.items() if d.weights}
ELEMENTWISE: tuple[str, ...] = tuple(n for n, d in OPS.items() if d.elementwise)
KERNEL_OPS: tuple[str, ...] = tuple(sorted({d.kernel for d in OPS.values() if d.kernel}))
