"""What a kernel computes, as a hashable description shared by codegen, the artifact and the runtime.

A kernel is fixed-shape: every dimension is known at compile time (the runtime splits a larger batch into
compiled-size chunks). Parameters come in call order, outputs last. Four parameter kinds exist:

- ``act``: an activation buffer (row-major, the given shape): f32 unless the spec's ``dt`` attribute stores it in
  f16 or bf16 (one code per float activation parameter, in order: ``f`` f32, ``h`` f16, ``b`` bf16) — or int32
  for token ids. Kernels load 16-bit activations into f32, compute in f32 and round once when they store;
- ``f32``: a small f32 weight (bias, norm scale, position table) stored as f32 in the artifact;
- ``raw``: a weight kept in its storage type (f32, f16, bf16 or a ggml quant type) and passed as the tensor's raw
  GGUF bytes viewed as little-endian ``uint32`` words (zero-padded to a multiple of 4 bytes). Kernels decode the
  blocks themselves; WGSL has no 8/16-bit buffers, so words are the one layout all three targets share.
- ``lut``: a constant lookup table the weight type's decoder reads (the i-quants' grids), ``uint32[words]``, named
  after the table (``kernels/luts.py``); the plan passes it as ``{"lut": name}``, the artifact stores each table once.
  Types that need tables get one such parameter per table, after the other inputs and before the output.

Ops (all math in f32):

- ``embed``      ids:int32[M]; tok:raw[V,D]; pos:f32[S,D] -> y:f32[M,D];  y[m] = tok[ids[m]] + pos[m % S]
- ``linear``     x:f32[M,K]; w:raw[N,K]; [bias:f32[N]]; [res:f32[M,N]] -> y:f32[M,N];
                 y = act(x @ W^T + bias) + res, act in {none, gelu (erf), quick_gelu (x*sigmoid(1.702x))}
- ``layer_norm`` x:f32[M,D]; gamma:f32[D]; beta:f32[D] -> y:f32[M,D]  (biased variance, eps attribute)
- ``attention``  q:f32[B*S, H*Dh]; k,v:f32[B*T, H*Dh] -> o:f32[B*S, H*Dh]; softmax(q k^T * Dh^-0.5 [+ causal]) v
- ``conv2d``     x:f32[B,H,W,C]; w:raw[N, kh*kw*C]; [bias]; [res:f32[M,N]] -> y:f32[M = B*Ho*Wo, N] (channels last)
- ``group_norm`` x:f32[B,N,C]; gamma, beta:f32[C] -> y:f32[B,N,C], G groups of C/G channels, optional fused SiLU
- pointwise and data movement: ``unary`` (gelu, quick_gelu, silu), ``add``/``mul`` (y broadcast onto x),
  ``affine`` (x * scale + shift), ``geglu``, ``transpose``, ``concat``, ``upsample_nearest``,
  ``timestep_embedding``; their parameters follow from their shape attributes.

Each kernel op is declared once in ``KERNELS``: its parameters, the module holding its TE compute and its schedule
family (``schedules/`` has a rule per family and target; pointwise ops share the ``injective`` default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

ACTIVATIONS = ("none", "gelu", "quick_gelu", "silu")
# Storage types of float activations and their one-letter codes in a spec's ``dt`` attribute (codes keep kernel
# names C identifiers). Computation is f32 whatever the storage.
ACT_CODES = {"float32": "f", "float16": "h", "bfloat16": "b"}
CODE_DTYPES = {c: d for d, c in ACT_CODES.items()}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # "act" | "f32" | "raw" | "lut"
    shape: tuple[int, ...]  # logical shape (for raw: the weight's logical shape, not the word count; lut: (words,))
    dtype: str  # "float32", "int32", "uint32" (lut), or for raw the storage type name ("q4_0", "f16", ...)
    is_output: bool = False

    def words(self) -> int:
        """uint32 words a raw parameter occupies (its GGUF bytes rounded up to 4), or a lookup table's words."""
        if self.kind == "lut":
            return self.shape[0]
        from sdcompile.quant.types import get

        return (get(self.dtype).nbytes(self.shape) + 3) // 4


def lut_params(wtype: str) -> list[ParamSpec]:
    """The lookup-table parameters a kernel decoding ``wtype`` takes (none for most types)."""
    from sdcompile.kernels.luts import TABLE_WORDS, tables_for

    return [ParamSpec(t, "lut", (TABLE_WORDS[t],), "uint32") for t in tables_for(wtype)]


@dataclass(frozen=True)
class KernelSpec:
    op: str
    # Sorted (key, value) pairs; values are ints, floats, bools, strings or tuples of ints.
    attrs: tuple[tuple[str, object], ...] = field(default=())

    def attr(self, key: str, default: object = None) -> object:
        return dict(self.attrs).get(key, default)

    @staticmethod
    def make(op: str, **attrs: object) -> KernelSpec:
        if op not in KERNELS:
            raise ValueError(f"unknown kernel op {op!r}")
        return KernelSpec(op, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items())))

    @property
    def name(self) -> str:
        """A stable C identifier unique to this spec (used as the function symbol in every target)."""
        parts = [self.op]
        for k, v in self.attrs:
            if isinstance(v, bool):
                if v:
                    parts.append(k)
            elif isinstance(v, float):
                parts.append(f"{k}{v:g}".replace(".", "p").replace("-", "m").replace("+", ""))
            elif isinstance(v, tuple):
                parts.append(k + "x".join(str(int(d)) for d in v))
            else:
                parts.append(f"{k}{v}")
        return "_".join(parts)

    @property
    def family(self) -> str:
        return KERNELS[self.op].family

    @property
    def params(self) -> list[ParamSpec]:
        attrs = dict(self.attrs)
        ps = KERNELS[self.op].params(attrs)
        dt = attrs.get("dt")
        return ps if dt is None else with_act_dtypes(ps, str(dt))

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)


def float_acts(ps: list[ParamSpec]) -> list[ParamSpec]:
    """The float activation parameters, the ones a ``dt`` code applies to."""
    return [p for p in ps if p.kind == "act" and p.dtype == "float32"]


def with_act_dtypes(ps: list[ParamSpec], dt: str) -> list[ParamSpec]:
    """``ps`` with its float activations stored as ``dt`` says (one code each, in order)."""
    if len(dt) != len(float_acts(ps)) or any(c not in CODE_DTYPES for c in dt):
        raise ValueError(f"dt={dt!r} does not fit {len(float_acts(ps))} float activation parameters")
    codes = iter(dt)
    return [replace(p, dtype=CODE_DTYPES[next(codes)]) if p.kind == "act" and p.dtype == "float32" else p for p in ps]


def _act(name: str, shape: tuple[int, ...], out: bool = False, dtype: str = "float32") -> ParamSpec:
    return ParamSpec(name, "act", tuple(int(d) for d in shape), dtype, out)


def _embed_params(a: dict) -> list[ParamSpec]:
    return [
        _act("ids", (a["M"],), dtype="int32"),
        ParamSpec("tok", "raw", (a["V"], a["D"]), a["wtype"]),
        ParamSpec("pos", "f32", (a["S"], a["D"]), "float32"),
        *lut_params(a["wtype"]),
        _act("y", (a["M"], a["D"]), True),
    ]


def _matmul_params(x: ParamSpec, a: dict, m: int) -> list[ParamSpec]:
    ps = [x, ParamSpec("w", "raw", (a["N"], a["K"]), a["wtype"])]
    if a.get("bias"):
        ps.append(ParamSpec("bias", "f32", (a["N"],), "float32"))
    if a.get("residual"):
        ps.append(_act("res", (m, a["N"])))
    ps += lut_params(a["wtype"])
    ps.append(_act("y", (m, a["N"]), True))
    return ps


def _linear_params(a: dict) -> list[ParamSpec]:
    return _matmul_params(_act("x", (a["M"], a["K"])), a, a["M"])


def conv_geometry(a: dict) -> tuple[int, int, int, int]:
    """(Ho, Wo, M, K) of a conv2d spec's attributes."""
    from sdcompile.ir.ops import conv_out_hw  # the one output-size formula (the op registry's)

    ho, wo = conv_out_hw(a["H"], a["W"], a)
    return ho, wo, a["B"] * ho * wo, a["kh"] * a["kw"] * a["C"]


def gemm_mnk(spec: KernelSpec) -> tuple[int, int, int]:
    """(M, N, K) of the matmul a linear or conv2d spec computes (a conv multiplies its [M, K] patches)."""
    if spec.op == "conv2d":
        _, _, m, k = conv_geometry(dict(spec.attrs))
        return m, int(spec.attr("N")), k
    return int(spec.attr("M")), int(spec.attr("N")), int(spec.attr("K"))


def _conv_params(a: dict) -> list[ParamSpec]:
    ho, wo, m, k = conv_geometry(a)
    return _matmul_params(_act("x", (a["B"], a["H"], a["W"], a["C"])), a | {"K": k}, m)


def _norm_params(x: tuple[int, ...], d: int) -> list[ParamSpec]:
    return [
        _act("x", x),
        ParamSpec("gamma", "f32", (d,), "float32"),
        ParamSpec("beta", "f32", (d,), "float32"),
        _act("y", x, True),
    ]


def _attention_params(a: dict) -> list[ParamSpec]:
    w = a["H"] * a["Dh"]
    q, kv = (a["B"] * a["S"], w), (a["B"] * a.get("T", a["S"]), w)
    return [_act("q", q), _act("k", kv), _act("v", kv), _act("o", q, True)]


def _binary_params(a: dict) -> list[ParamSpec]:
    return [_act("x", a["shape"]), _act("y", a["yshape"]), _act("z", a["shape"], True)]


def _transpose_params(a: dict) -> list[ParamSpec]:
    s = a["shape"]
    return [_act("x", s), _act("y", tuple(s[p] for p in a["perm"]), True)]


def _concat_params(a: dict) -> list[ParamSpec]:
    ins = [_act(f"x{i}", (a["outer"], w)) for i, w in enumerate(a["widths"])]
    return [*ins, _act("y", (a["outer"], sum(a["widths"])), True)]


@dataclass(frozen=True)
class KernelOp:
    params: Callable[[dict], list[ParamSpec]]
    module: str  # sdcompile.kernels.<module>.compute(spec) gives the TE tensors in params order
    family: str  # schedule family: schedules/ has one rule per (target kind, family)


KERNELS: dict[str, KernelOp] = {
    "embed": KernelOp(_embed_params, "embed", "embed"),
    "linear": KernelOp(_linear_params, "linear", "linear"),
    "conv2d": KernelOp(_conv_params, "conv", "linear"),
    "layer_norm": KernelOp(lambda a: _norm_params((a["M"], a["D"]), a["D"]), "norm", "layer_norm"),
    "group_norm": KernelOp(lambda a: _norm_params((a["B"], a["N"], a["C"]), a["C"]), "group_norm", "group_norm"),
    "attention": KernelOp(_attention_params, "attention", "attention"),
    "unary": KernelOp(lambda a: [_act("x", (a["n"],)), _act("y", (a["n"],), True)], "pointwise", "injective"),
    "affine": KernelOp(lambda a: [_act("x", (a["n"],)), _act("y", (a["n"],), True)], "pointwise", "injective"),
    "add": KernelOp(_binary_params, "pointwise", "injective"),
    "mul": KernelOp(_binary_params, "pointwise", "injective"),
    "geglu": KernelOp(
        lambda a: [_act("x", (a["M"], 2 * a["F"])), _act("y", (a["M"], a["F"]), True)], "pointwise", "injective"
    ),
    "transpose": KernelOp(_transpose_params, "movement", "injective"),
    "slices": KernelOp(
        lambda a: [
            _act("x", (a["outer"], a["full"], a["inner"])),
            *(_act(f"y{i}", (a["outer"], w, a["inner"]), True) for i, w in enumerate(a["widths"])),
        ],
        "movement",
        "injective",
    ),
    "concat": KernelOp(_concat_params, "movement", "injective"),
    "upsample_nearest": KernelOp(
        lambda a: [
            _act("x", (a["B"], a["H"], a["W"], a["C"])),
            _act("y", (a["B"], a["H"] * a["f"], a["W"] * a["f"], a["C"]), True),
        ],
        "movement",
        "injective",
    ),
    "timestep_embedding": KernelOp(
        lambda a: [_act("t", (a["B"],)), _act("y", (a["B"], a["dim"]), True)], "pointwise", "injective"
    ),
}
OPS = tuple(KERNELS)


def linear(
    M: int, N: int, K: int, wtype: str, bias: bool = False, residual: bool = False, act: str = "none"
) -> KernelSpec:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}")
    return KernelSpec.make("linear", M=M, N=N, K=K, wtype=wtype, bias=bias, residual=residual, act=act)


def embed(M: int, S: int, V: int, D: int, wtype: str) -> KernelSpec:
    return KernelSpec.make("embed", M=M, S=S, V=V, D=D, wtype=wtype)


def layer_norm(M: int, D: int, eps: float) -> KernelSpec:
    return KernelSpec.make("layer_norm", M=M, D=D, eps=float(eps))


def attention(B: int, S: int, H: int, Dh: int, causal: bool, T: int | None = None) -> KernelSpec:
    return KernelSpec.make("attention", B=B, S=S, T=S if T is None else T, H=H, Dh=Dh, causal=causal)
