"""Pass `memory_plan`: assign every activation to a reusable buffer slot and check peak memory against a budget.

Contract: `g.meta["memory_plan"]` maps each activation to a slot; two values share a slot only when their lifetimes
do not overlap (a node's outputs never share a slot with its own inputs, since kernels are not in-place). Peak
memory = weights as stored + input buffers + all slots. Over budget raises `MemoryBudgetError` naming the peak, the
budget and concrete options.
"""

from __future__ import annotations

from sdcompile.backends import backend
from sdcompile.errors import MemoryBudgetError
from sdcompile.ir import Graph
from sdcompile.passes.context import PassContext
from sdcompile.quant.types import QUANT_TYPES

_ITEMSIZE = {"float32": 4, "int32": 4, "int64": 4}  # int64 ids are narrowed to int32 by the runtime
ALIGN = 256  # slot sizes are rounded so every buffer offset suits GPU storage-buffer alignment


def _round(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def weight_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    return (QUANT_TYPES[dtype].nbytes(shape) + 3) // 4 * 4


def value_bytes(g: Graph, name: str) -> int:
    v = g.values[name]
    n = _ITEMSIZE[v.dtype]
    for d in v.shape:
        n *= d
    return n


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def plan(g: Graph) -> tuple[dict[str, int], list[int]]:
    last_use: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for x in n.inputs:
            last_use[x] = i
    for o in g.outputs:
        last_use[o] = len(g.nodes)  # outputs live until the caller reads them
    slot_of: dict[str, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    for i, n in enumerate(g.nodes):
        for o in n.outputs:
            need = _round(value_bytes(g, o))
            fits = [s for s in free if sizes[s] >= need]
            if fits:
                s = min(fits, key=lambda s: sizes[s])  # best fit keeps big slots for big values
            elif free:
                s = max(free, key=lambda s: sizes[s])  # grow the largest free slot rather than add one
                sizes[s] = need
            else:
                s = len(sizes)
                sizes.append(need)
            if s in free:
                free.remove(s)
            slot_of[o] = s
        for x in set(n.inputs) | set(n.outputs):
            if x in slot_of and last_use.get(x, i) <= i and slot_of[x] not in free:
                free.append(slot_of[x])
    return slot_of, sizes


def run(g: Graph, ctx: PassContext) -> Graph:
    g = g.copy()
    slot_of, sizes = plan(g)
    weights = sum(weight_bytes(v.dtype, v.shape) for v in g.weights())
    inputs = sum(_round(value_bytes(g, i)) for i in g.inputs)
    activations = sum(sizes)
    naive = sum(_round(value_bytes(g, o)) for n in g.nodes for o in n.outputs)
    peak = weights + inputs + activations
    by_component: dict[str, int] = {}
    for v in g.weights():
        by_component[v.component] = by_component.get(v.component, 0) + weight_bytes(v.dtype, v.shape)
    budget = ctx.options.memory_budget
    g.meta["memory_plan"] = {"slots": sizes, "slot_of": slot_of}
    ctx.report["memory"] = {
        "weights_bytes": weights,
        "weights_by_component": by_component,
        "activation_bytes": activations,
        "activation_bytes_without_reuse": naive,
        "input_bytes": inputs,
        "peak_bytes": peak,
        "budget_bytes": budget,
        "slots": len(sizes),
    }
    if budget is not None and peak > budget:
        raise MemoryBudgetError(_over_budget(g, peak, budget, weights, activations))
    limit = backend(ctx.options.target).max_buffer_bytes
    biggest = max(sizes, default=0)
    if limit is not None and biggest > limit:
        raise MemoryBudgetError(
            f"an activation buffer needs {fmt_bytes(biggest)}, over {ctx.options.target}'s {fmt_bytes(limit)} limit "
            f"for one buffer; compile with a smaller --batch"
        )
    return g


def _over_budget(g: Graph, peak: int, budget: int, weights: int, activations: int) -> str:
    options = []
    for t in ("q8_0", "q4_0"):
        w = sum(
            weight_bytes(t, v.shape)
            if v.name.endswith(".weight")
            and v.dtype in ("f32", "f16", "bf16")
            and v.shape[-1] % QUANT_TYPES[t].block_size == 0
            and len(v.shape) == 2
            and "norm" not in v.name
            and "position" not in v.name
            else weight_bytes(v.dtype, v.shape)
            for v in g.weights()
        )
        if w < weights:
            options.append(f"--type {t} (weights {fmt_bytes(w)}, peak about {fmt_bytes(peak - weights + w)})")
    batch = g.meta.get("config", {}).get("batch", 1)
    if batch > 1:
        options.append(f"a smaller --batch (activations are {fmt_bytes(activations)} at batch {batch})")
    options.append("a larger --memory-budget if the device really has more free memory")
    return (
        f"peak memory {fmt_bytes(peak)} (weights {fmt_bytes(weights)} + activations {fmt_bytes(activations)}) "
        f"exceeds the budget of {fmt_bytes(budget)}. Options: " + "; ".join(options)
    )


def parse_size(text: str) -> int:
    """'512MiB', '4G', '1.5GB', '1000000' -> bytes (K/M/G mean powers of 1024, as device memory is quoted)."""
    from sdcompile.errors import OptionError

    s = text.strip().upper().replace(" ", "")
    for suffix in ("IB", "B"):
        if s.endswith(suffix) and len(s) > len(suffix) and s[-len(suffix) - 1] in "KMGT":
            s = s[: -len(suffix)]
            break
    mult = 1
    if s and s[-1] in "KMGT":
        mult = 1024 ** ("KMGT".index(s[-1]) + 1)
        s = s[:-1]
    try:
        n = float(s) * mult
    except ValueError:
        raise OptionError(f"memory size {text!r} is not a size like 512MiB, 4GiB or 1073741824") from None
    if n <= 0:
        raise OptionError(f"memory size {text!r} must be positive")
    return int(n)
