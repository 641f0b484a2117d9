"""Pass `act_dtype`: store a function's float activations in f16 or bf16 (``--act-type``), computing in f32.

Contract: with ``act_type`` f32 the graph is unchanged. Otherwise every float activation inside a function takes
the chosen storage type, except the function's inputs and outputs (its signature stays f32, so pipelines and
callers see the same interface whatever the storage) and any value sharing memory with one of them through a view
(reshape, a contiguous slice or split): a view is the same bytes, so it has the same dtype. Kernels read each
activation in its own dtype and widen it to f32 (``kernels/act.py``), so an f32 input meeting f16 values inside a
function needs no conversion node: the first kernel reads f32 and writes f16, the last reads f16 and writes f32.

The storage type must be one the target's kernel check validated (``capabilities.json`` ``act_dtypes``: Vulkan has
no bf16, WGSL having no 16-bit integer buffers); otherwise the compile stops and says which types the target has.
Halving the activations halves the activation memory the plan reserves and the bytes kernels move; the values
lose what the storage type cannot hold (f16: 11 significant bits and a range to 65,504; bf16: 8 bits, f32's range).
A function the lifter marks ``act_f16_overflows`` (SDXL's VAE, whose values pass 65,504) keeps f32 under f16, and
the report says so; bf16 has f32's range and applies.
"""

from __future__ import annotations

from sdcompile.backends import backend
from sdcompile.errors import OptionError
from sdcompile.ir import Graph
from sdcompile.ir.ops import get as get_op
from sdcompile.passes.context import PassContext

ACT_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def view_groups(g: Graph) -> dict[str, str]:
    """Each value's representative among the values that may share its memory through view ops."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for n in g.nodes:
        if get_op(n.op).view is None:
            continue
        # Conservative: an op that can be a view groups its outputs with its input even where the memory plan will
        # copy instead (a copy between equal dtypes is still right; a view between unequal ones would not be).
        root = find(n.inputs[0])
        for o in n.outputs:
            parent[find(o)] = root
    return {v: find(v) for v in g.values}


def run(g: Graph, ctx: PassContext) -> Graph:
    name = ctx.options.act_type
    if name not in ACT_TYPES:
        raise OptionError(f"unknown --act-type {name!r}; choose one of {', '.join(ACT_TYPES)}")
    dtype = ACT_TYPES[name]
    if dtype == "float32":
        return g
    be = backend(ctx.options.target)
    if dtype not in be.act_dtypes:
        why = (be.act_why_not or {}).get(dtype, "its kernels were not validated")
        have = ", ".join(k for k, v in ACT_TYPES.items() if v in be.act_dtypes)
        raise OptionError(
            f"--act-type {name}: the {be.name} backend has no kernels for {name} activations (its kernel check: {why}); "
            f"choose one of {have}"
        )
    rep = ctx.report.setdefault("act_dtype", {"dtype": dtype, "values": 0, "kept_f32": 0})
    if dtype == "float16" and g.meta.get("act_f16_overflows"):
        # a function whose values pass f16's range (SDXL's VAE) keeps f32 storage: a safe default, reported
        rep.setdefault("functions_kept_f32", {})[g.meta.get("function", "?")] = g.meta["act_f16_overflows"]
        return g
    g = g.copy()
    group = view_groups(g)
    pinned = {group[v] for v in g.inputs + g.outputs}
    changed = kept = 0
    for v in g.values.values():
        if v.kind != "activation" or v.dtype != "float32":
            continue
        if group[v.name] in pinned:
            kept += 1
            continue
        v.dtype = dtype
        changed += 1
    rep["values"] += changed
    rep["kept_f32"] += kept
    return g
