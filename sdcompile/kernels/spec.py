"""What a kernel computes, as a hashable description shared by codegen, the artifact and the runtime.

A kernel is fixed-shape: every dimension is known at compile time (the runtime splits a larger batch into
compiled-size chunks). Parameters come in call order, outputs last. Four parameter kinds exist:

- ``act``: an f32 activation buffer (row-major, the given shape) — or int32 for token ids;
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
- ``attention``  q,k,v:f32[B*S, H*Dh] -> o:f32[B*S, H*Dh]; softmax(q k^T * Dh^-0.5 [+ causal mask]) v per head
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPS = ("embed", "linear", "layer_norm", "attention")
ACTIVATIONS = ("none", "gelu", "quick_gelu")


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
    # Sorted (key, value) pairs; values are ints, floats, bools or strings. Shapes: M, N, K, D, V, S, B, H, Dh.
    attrs: tuple[tuple[str, object], ...] = field(default=())

    def attr(self, key: str, default: object = None) -> object:
        return dict(self.attrs).get(key, default)

    @staticmethod
    def make(op: str, **attrs: object) -> KernelSpec:
        if op not in OPS:
            raise ValueError(f"unknown kernel op {op!r}")
        return KernelSpec(op, tuple(sorted(attrs.items())))

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
            else:
                parts.append(f"{k}{v}")
        return "_".join(parts)

    @property
    def params(self) -> list[ParamSpec]:
        a = dict(self.attrs)
        if self.op == "embed":
            return [
                ParamSpec("ids", "act", (a["M"],), "int32"),
                ParamSpec("tok", "raw", (a["V"], a["D"]), a["wtype"]),
                ParamSpec("pos", "f32", (a["S"], a["D"]), "float32"),
                *lut_params(a["wtype"]),
                ParamSpec("y", "act", (a["M"], a["D"]), "float32", True),
            ]
        if self.op == "linear":
            ps = [
                ParamSpec("x", "act", (a["M"], a["K"]), "float32"),
                ParamSpec("w", "raw", (a["N"], a["K"]), a["wtype"]),
            ]
            if a.get("bias"):
                ps.append(ParamSpec("bias", "f32", (a["N"],), "float32"))
            if a.get("residual"):
                ps.append(ParamSpec("res", "act", (a["M"], a["N"]), "float32"))
            ps += lut_params(a["wtype"])
            ps.append(ParamSpec("y", "act", (a["M"], a["N"]), "float32", True))
            return ps
        if self.op == "layer_norm":
            return [
                ParamSpec("x", "act", (a["M"], a["D"]), "float32"),
                ParamSpec("gamma", "f32", (a["D"],), "float32"),
                ParamSpec("beta", "f32", (a["D"],), "float32"),
                ParamSpec("y", "act", (a["M"], a["D"]), "float32", True),
            ]
        if self.op == "attention":
            m, w = a["B"] * a["S"], a["H"] * a["Dh"]
            return [
                ParamSpec("q", "act", (m, w), "float32"),
                ParamSpec("k", "act", (m, w), "float32"),
                ParamSpec("v", "act", (m, w), "float32"),
                ParamSpec("o", "act", (m, w), "float32", True),
            ]
        raise ValueError(self.op)


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


def attention(B: int, S: int, H: int, Dh: int, causal: bool) -> KernelSpec:
    return KernelSpec.make("attention", B=B, S=S, H=H, Dh=Dh, causal=causal)
