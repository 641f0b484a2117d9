"""Pass `legalize`: make every op runnable on the target, choosing a fallback where a weight type has no kernel.

Contract: afterwards every node's op, and every weight type it reads, has a native kernel on the target backend
(per `sdcompile/backends/capabilities.json`). Where a weight type has none, the policy's fallback chain is tried in
order and the first step whose result has a kernel is applied:

- ``repack``: a lossless re-encoding into a type that has a kernel (e.g. TQ1_0 -> TQ2_0: both hold ternary values
  with one f16 scale per 256; only the packing differs);
- ``requantize:T``: dequantize and quantize again as T (lossy; smaller than f16);
- ``dequantize:T``: store as plain float T (exact for f32; f16 rounds).

Every decision (op, tensor, from, to, step, why) goes into the report; when nothing in the chain works the error
says what was tried.

Attention on a GPU backend whose keys outnumber what the untiled kernel keeps in workgroup memory (one row of
probabilities) gets the node attribute ``tiled`` (online softmax over key tiles, ``kernels/attention_tiled.py``);
the report lists those nodes under ``tiled_attention``.
"""

from __future__ import annotations

from sdcompile.backends import Backend, backend
from sdcompile.errors import NoKernelError, OptionError
from sdcompile.ir import Graph
from sdcompile.ir.ops import get as get_op
from sdcompile.ir.ops import node_view
from sdcompile.passes.context import PassContext
from sdcompile.passes.memory_plan import fmt_bytes, weight_bytes
from sdcompile.quant.types import QUANT_TYPES

# Lossless re-encodings: source type -> type holding exactly the same values.
REPACKS: dict[str, str] = {"tq1_0": "tq2_0", "bf16": "f32"}

POLICIES: dict[str, list[str]] = {
    # Never lose information when a lossless option exists; otherwise prefer accuracy over size.
    "lossless": ["repack", "dequantize:f16", "dequantize:f32"],
    # Stay small: an 8-bit requantization before falling back to 16-bit floats.
    "size": ["repack", "requantize:q8_0", "dequantize:f16", "dequantize:f32"],
    # Exact values at any memory cost.
    "exact": ["repack", "dequantize:f32"],
}


def _candidate(step: str, wtype: str, shape: tuple[int, ...]) -> str | None:
    if step == "repack":
        return REPACKS.get(wtype)
    kind, _, target = step.partition(":")
    if kind in ("dequantize", "requantize") and target != wtype:
        if shape[-1] % QUANT_TYPES[target].block_size:
            return None
        return target
    return None


# Backends whose attention kernel keeps a row of T probabilities in workgroup memory; past the longest row it holds
# (``schedules/gpu.py``), the tiled kernel takes over.
GPU_BACKENDS = ("vulkan", "cuda")


def untiled_attention_keys(backend_name: str) -> int | None:
    """The most keys the backend's untiled attention kernel handles (None: any number)."""
    if backend_name not in GPU_BACKENDS:
        return None
    from schedules.gpu import MAX_ATTENTION_SEQ  # imports TVM: only for GPU backends, which build with it anyway

    return MAX_ATTENTION_SEQ


def _tile_attention(g: Graph, be: Backend) -> list[str]:
    """Mark attention nodes with more keys than the untiled kernel holds as ``tiled``; their names."""
    tiled = []
    limit = None
    for n in g.nodes:
        if n.op != "attention":
            continue
        keys = g.values[n.inputs[1]].shape[1]  # k: [B, T, W]
        if limit is None:
            limit = untiled_attention_keys(be.name) or 0
        if limit and keys > limit:
            n.attrs["tiled"] = True
            tiled.append(n.outputs[0])
    return tiled


def run(g: Graph, ctx: PassContext) -> Graph:
    g = g.copy()
    be: Backend = backend(ctx.options.target)
    chain = POLICIES.get(ctx.options.fallback_policy)
    if chain is None:
        raise OptionError(
            f"unknown fallback policy {ctx.options.fallback_policy!r}; choose one of {', '.join(POLICIES)}"
        )
    decisions = []
    native = 0
    for n in g.nodes:
        d = get_op(n.op)
        if node_view(g, n) is not None:  # a view runs no kernel: the memory plan aliases it
            continue
        if d.kernel is None or d.kernel not in be.ops:
            raise NoKernelError(
                f"op {n.op!r} (producing {n.outputs[0]}, {n.component}) has no kernel on {be.name} and no fallback; "
                f"ops with kernels: {', '.join(sorted(be.ops))}"
            )
        if not d.weights or g.values[n.inputs[d.weights[0]]].kind != "weight":
            continue
        op = d.kernel
        w = g.values[n.inputs[d.weights[0]]]

        def fits(t: str, shape: tuple[int, ...] = w.shape) -> bool:
            return be.max_buffer_bytes is None or weight_bytes(t, shape) <= be.max_buffer_bytes

        if be.has_kernel(op, w.dtype) and fits(w.dtype):
            native += 1
            continue
        if not be.has_kernel(op, w.dtype):
            why = f"{be.name} has no {op} kernel for {w.dtype} ({be.reason(w.dtype)})"
        else:
            why = (
                f"{w.dtype} is {fmt_bytes(weight_bytes(w.dtype, w.shape))}, over {be.name}'s "
                f"{fmt_bytes(be.max_buffer_bytes)} limit for one buffer"
            )
        tried = []
        for step in chain:
            to = _candidate(step, w.dtype, w.shape)
            if to is None or not be.has_kernel(op, to) or not fits(to):
                tried.append(
                    f"{step}: "
                    + (
                        "not applicable"
                        if to is None
                        else f"{to} has no kernel either"
                        if not be.has_kernel(op, to)
                        else f"{to} is too large too"
                    )
                )
                continue
            decisions.append(
                {
                    "op": n.op,
                    "node": n.outputs[0],
                    "tensor": w.name,
                    "from": w.dtype,
                    "to": to,
                    "step": step.split(":")[0],
                    "why": why,
                }
            )
            w.data.convert(to, f"legalize: {w.dtype} -> {to} ({step}; {why})")
            w.dtype = to
            break
        else:
            raise NoKernelError(
                f"{n.op} {n.outputs[0]} reads {w.name} as {w.dtype}: {why}; the "
                f"'{ctx.options.fallback_policy}' policy found no fallback ({'; '.join(tried)}); try "
                f"--fallback-policy size or choose another --type"
            )
    ctx.report["legalize"] = {
        "backend": be.name,
        "policy": ctx.options.fallback_policy,
        "native": native,
        "fallbacks": decisions,
        "tiled_attention": _tile_attention(g, be),
    }
    return g
