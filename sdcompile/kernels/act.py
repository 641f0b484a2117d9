"""Activations stored in 16 bits: kernels load them into f32, compute in f32 and round once when they store.

A spec's float activation parameters carry their storage dtype (``spec.py``: the ``dt`` attribute). A compute
takes its placeholders from ``placeholder`` and reads them through ``f32_reads``, which adds the widening cast at
every load (and nothing at all for f32, so f32 kernels are the code they were); the stage that writes an output
goes through ``stored``, which rounds to the output's dtype. Schedules see the same stages either way.

bf16 is held as its bits in ``uint16`` buffers and converted by hand (a shift to widen; round to nearest even to
narrow): TVM 0.27's bf16 legalization miscompiles a widened bf16 load bound by a ``Let`` on the CPU (measured: SiLU
off by 1e5), and WGSL has no bf16 at all. CPU kernels that write 32 values per store (``schedules/tir_build.py``'s
``narrow_pair``: group norm, the AMX-BF16 GEMM's epilogue) round with ``vcvtne2ps2bf16`` instead: the same nearest
even, except that f32 denormals (below 2^-126) become zero, as in every bf16 conversion of that hardware.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx

from sdcompile.kernels.dequant import let
from sdcompile.kernels.spec import KernelSpec


def buffer_dtype(dtype: str) -> str:
    """The dtype of the buffer holding activations of ``dtype`` (bf16: its bits)."""
    return "uint16" if dtype == "bfloat16" else dtype


def _vec(dtype: str, lanes: int) -> str:
    return dtype if lanes == 1 else f"{dtype}x{lanes}"


def widen(v: tirx.PrimExpr, lanes: int = 1) -> tirx.PrimExpr:
    """f32 of a loaded activation (f16, bf16 bits or f32; scalar or ``lanes`` wide)."""
    dt = str(v.ty).split("x")[0]
    if dt == "float32":
        return v
    if dt == "uint16":
        bits = (
            tirx.Cast(_vec("uint32", lanes), v) << tirx.const(16, "uint32")
            if lanes == 1
            else (tirx.Cast(_vec("uint32", lanes), v) << tirx.Broadcast(tirx.const(16, "uint32"), lanes))
        )
        return tirx.reinterpret(_vec("float32", lanes), bits)
    return tirx.Cast(_vec("float32", lanes), v)


def bf16_bits(v: tirx.PrimExpr, lanes: int = 1) -> tirx.PrimExpr:
    """f32 ``v`` (scalar or ``lanes`` wide) rounded to bf16, as its 16 bits in the low half of uint32 lanes: nearest
    even; a NaN stays a (quiet) NaN instead of rounding into infinity or, negative, carrying into the sign."""

    def u32(c: int) -> tirx.PrimExpr:
        k = tirx.const(c, "uint32")
        return k if lanes == 1 else tirx.Broadcast(k, lanes)

    def rounded(bits: tirx.PrimExpr) -> tirx.PrimExpr:
        up = (bits + u32(0x7FFF) + ((bits >> u32(16)) & u32(1))) >> u32(16)
        nan = (bits & u32(0x7FFFFFFF)) > u32(0x7F800000)
        return tirx.Select(nan, (bits >> u32(16)) | u32(0x40), up)

    # v bound once: it may hold Let bindings of its own
    return let(tirx.reinterpret(_vec("uint32", lanes), v), rounded, "bits")


def narrow(v: tirx.PrimExpr, dtype: str, lanes: int = 1) -> tirx.PrimExpr:
    """``v`` (f32, scalar or ``lanes`` wide) rounded to the storage of ``dtype`` (f16, bf16 bits, or f32 itself)."""
    if dtype == "float32":
        return v
    if dtype != "bfloat16":
        return tirx.Cast(_vec(dtype, lanes), v)
    return tirx.Cast(_vec("uint16", lanes), bf16_bits(v, lanes))


def placeholder(spec: KernelSpec, name: str, shape: tuple[int, ...] | None = None) -> te.Tensor:
    """The TE placeholder of parameter ``name`` in its storage dtype (``shape`` where the compute views it in
    another shape of the same size)."""
    p = spec.param(name)
    return te.placeholder(tuple(shape or p.shape), buffer_dtype(p.dtype), name=name)


class _Widened:
    """A placeholder read as f32: ``x[i, j]`` and ``x(i, j)`` give the widened load."""

    def __init__(self, t: te.Tensor) -> None:
        self.t = t
        self.shape = t.shape
        self.dtype = "float32"

    def __call__(self, *idx) -> tirx.PrimExpr:
        return widen(self.t(*idx))

    def __getitem__(self, idx) -> tirx.PrimExpr:
        return self(*idx) if isinstance(idx, tuple) else self(idx)


def f32_reads(t: te.Tensor):
    """``t`` itself when it holds f32, else a view of it whose loads are widened to f32."""
    return t if t.dtype == "float32" else _Widened(t)


def stored(spec: KernelSpec, name: str, body: Callable[..., tirx.PrimExpr]) -> Callable[..., tirx.PrimExpr]:
    """The body of the stage that writes output ``name``, rounded to its storage dtype."""
    dtype = spec.param(name).dtype
    if dtype == "float32":
        return body
    return lambda *i: narrow(body(*i), dtype)


def reads(spec: KernelSpec, *names: str) -> tuple[list[te.Tensor], list]:
    """Placeholders of ``names`` (the kernel's parameters) and their f32 reads."""
    ts = [placeholder(spec, n) for n in names]
    return ts, [f32_reads(t) for t in ts]
