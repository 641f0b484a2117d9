"""Pass `memory_plan`: assign every activation to a reusable buffer slot and check peak memory against a budget.

Contract: `g.meta["memory_plan"]` gives each activation its storage: a slot, or (a view) the storage of the value it
views, or a buffer of its own for a function output; two values share a slot only when their lifetimes do not
overlap (a node's outputs never share a slot with its own inputs, since kernels are not in-place). The functions
of a module share the slots, so its peak memory = weights as stored + the largest use of each slot + every
function's input and output buffers (`check_module`). Over budget raises `MemoryBudgetError` naming the peak, the
budget and concrete options.
"""

from __future__ import annotations

from sdcompile.backends import backend
from sdcompile.errors import MemoryBudgetError
from sdcompile.ir import Graph
from sdcompile.ir.graph import ITEMSIZE
from sdcompile.ir.ops import node_view
from sdcompile.passes.context import PassContext
from sdcompile.quant.types import QUANT_TYPES

ALIGN = 256  # slot sizes are rounded so every buffer offset suits GPU storage-buffer alignment


def _round(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def weight_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    return (QUANT_TYPES[dtype].nbytes(shape) + 3) // 4 * 4


def value_bytes(g: Graph, name: str) -> int:
    v = g.values[name]
    n = 4 if v.dtype == "int64" else ITEMSIZE[v.dtype]  # int64 ids are narrowed to int32 by the runtime
    for d in v.shape:
        n *= d
    return n


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def views(g: Graph) -> dict[str, tuple[str, int]]:
    """{view value: (the value it views, byte offset)} for every node that is a view (``ops.node_view``)."""
    out = {}
    for n in g.nodes:
        offs = node_view(g, n)
        if offs is not None:
            for o, off in zip(n.outputs, offs):
                out[o] = (n.inputs[0], off)
    return out


def roots(g: Graph) -> dict[str, tuple[str, int]]:
    """Each value's storage root and its byte offset there: itself at 0, or for a view the root of what it views."""
    vs = views(g)
    out = {}
    for name in g.values:
        r, off = name, 0
        while r in vs:
            r, o = vs[r]
            off += o
        out[name] = (r, off)
    return out


def plan(g: Graph) -> tuple[dict[str, dict], list[int]]:
    """(storage of every activation, slot sizes). Storage is {"slot": i}, {"input": name} (a view of an input) or
    {"output": name}, with an ``"offset"`` in bytes for a view that starts inside its root: a function's outputs
    get buffers of their own, so they outlive the call (the next function reads them on the device) and the next
    call of another function cannot overwrite them."""
    rootoff = roots(g)
    root = {k: r for k, (r, _) in rootoff.items()}
    last_use: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for x in n.inputs:
            last_use[root[x]] = i
    outputs = {}
    for o in g.outputs:
        r, off = rootoff[o]
        if r != o and (off or value_bytes(g, r) != value_bytes(g, o)):  # an internal bug: lifting emits no such output
            raise ValueError(f"function output {o} is a part of {r}; outputs must be whole values")
        outputs[r] = o
    storage: dict[str, dict] = {}
    sizes: list[int] = []
    free: list[int] = []
    viewing = set(views(g))
    for i, n in enumerate(g.nodes):
        for o in n.outputs:
            if o in viewing:
                continue
            if o in outputs:
                storage[o] = {"output": outputs[o]}
                continue
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
            storage[o] = {"slot": s}
        # In node order, not a set's: the order slots return to `free` decides later slot choices, and a set of
        # strings iterates in an order that changes with Python's per-process string hash seed.
        for x in dict.fromkeys(root[v] for v in (*n.inputs, *n.outputs)):
            st = storage.get(x)
            if st and "slot" in st and last_use.get(x, i) <= i and st["slot"] not in free:
                free.append(st["slot"])
    for name, (r, off) in rootoff.items():
        if r != name and g.values[name].kind == "activation":
            base = storage[r] if r in storage else {"input": r}
            storage[name] = dict(base, offset=off) if off else dict(base)
    return storage, sizes


def run(g: Graph, ctx: PassContext) -> Graph:
    """Plan one function's buffers and record its sizes; the budget check is per module (`check_module`), since
    functions run one after another and share the slot buffers."""
    g = g.copy()
    storage, sizes = plan(g)
    naive = sum(_round(value_bytes(g, o)) for n in g.nodes if node_view(g, n) is None for o in n.outputs)
    g.meta["memory_plan"] = {
        "slots": sizes,
        "storage": storage,
        "input_bytes": sum(_round(value_bytes(g, i)) for i in g.inputs),
        "output_bytes": sum(_round(value_bytes(g, o)) for o in g.outputs),
        "activation_bytes_without_reuse": naive,
    }
    return g


def module_memory(functions: dict[str, Graph]) -> dict:
    """Peak memory of a module, resident and with offload.

    Resident: all weights + the shared slot buffers (each slot as large as its largest use in any function) +
    every function's own input and output buffers. Offload (components loaded and freed in turn): the largest, over
    functions, of the weights of the components that function reads, plus the same slots and buffers."""
    weights_by_name = {v.name: v for g in functions.values() for v in g.weights()}
    weights = sum(weight_bytes(v.dtype, v.shape) for v in weights_by_name.values())
    nslots = max((len(g.meta["memory_plan"]["slots"]) for g in functions.values()), default=0)
    slots = [0] * nslots
    for g in functions.values():
        for i, size in enumerate(g.meta["memory_plan"]["slots"]):
            slots[i] = max(slots[i], size)
    io = sum(g.meta["memory_plan"]["input_bytes"] + g.meta["memory_plan"]["output_bytes"] for g in functions.values())
    by_component: dict[str, int] = {}
    for v in weights_by_name.values():
        by_component[v.component] = by_component.get(v.component, 0) + weight_bytes(v.dtype, v.shape)
    per_function = {}
    for name, g in functions.items():
        comps = sorted({v.component for v in g.weights()})
        per_function[name] = {
            "components": comps,
            "weights_bytes": sum(by_component[c] for c in comps),
            "activation_bytes": sum(g.meta["memory_plan"]["slots"]),
            "activation_bytes_without_reuse": g.meta["memory_plan"]["activation_bytes_without_reuse"],
            "slots": len(g.meta["memory_plan"]["slots"]),
        }
    activations = sum(slots)
    offload_weights = max((f["weights_bytes"] for f in per_function.values()), default=0)
    return {
        "weights_bytes": weights,
        "weights_by_component": by_component,
        "activation_bytes": activations,
        "io_bytes": io,
        "input_bytes": io,
        "resident_peak_bytes": weights + activations + io,
        "offload_peak_bytes": offload_weights + activations + io,
        "slot_bytes": slots,
        "slots": nslots,
        "functions": per_function,
        "activation_bytes_without_reuse": sum(f["activation_bytes_without_reuse"] for f in per_function.values()),
    }


def check_module(functions: dict[str, Graph], ctx: PassContext, offload: bool = False) -> dict:
    """The module's memory record (``module_memory``) with its peak as planned (resident, or with ``offload``), in
    ``ctx.report["memory"]``. Over the budget, or an activation over the backend's buffer limit, raises
    `MemoryBudgetError`."""
    report = module_memory(functions)
    peak = report["offload_peak_bytes" if offload else "resident_peak_bytes"]
    budget = ctx.options.memory_budget
    report.update({"peak_bytes": peak, "offload": offload, "budget_bytes": budget})
    ctx.report["memory"] = report
    weights_by_name = {v.name: v for g in functions.values() for v in g.weights()}
    if budget is not None and peak > budget:
        raise MemoryBudgetError(
            _over_budget(
                list(weights_by_name.values()), peak, budget, report["weights_bytes"], report["activation_bytes"], ctx
            )
        )
    limit = backend(ctx.options.target).max_buffer_bytes
    biggest = max(report["slot_bytes"], default=0)
    if limit is not None and biggest > limit:
        where = max(functions, key=lambda f: max(functions[f].meta["memory_plan"]["slots"], default=0))
        raise MemoryBudgetError(
            f"{where}: an activation buffer needs {fmt_bytes(biggest)}, over {ctx.options.target}'s "
            f"{fmt_bytes(limit)} limit for one buffer; compile a smaller --size or --batch, or decode in tiles "
            "(--vae-tiling)"
        )
    return report


def _over_budget(values: list, peak: int, budget: int, weights: int, activations: int, ctx: PassContext) -> str:
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
            for v in values
        )
        if w < weights:
            options.append(f"--type {t} (weights {fmt_bytes(w)}, peak about {fmt_bytes(peak - weights + w)})")
    batch = ctx.options.batch
    if batch > 1:
        options.append(f"a smaller --batch (activations are {fmt_bytes(activations)} at batch {batch})")
    options.append("a larger --memory-budget if the device really has more free memory")
    return (
        f"peak memory {fmt_bytes(peak)} (weights {fmt_bytes(weights)} + activations {fmt_bytes(activations)}) "
        f"exceeds the budget of {fmt_bytes(budget)}. Options: " + "; ".join(options)
    )


def parse_size(text: str) -> int:
    """'512MiB', '4GiB', '4G' (binary: powers of 1024, as device memory is quoted), '4GB', '1.5MB' (decimal: powers
    of 1000, as the unit says), '1000000' (bytes) -> bytes."""
    from sdcompile.errors import OptionError

    s = text.strip().upper().replace(" ", "")
    base = 1024
    if s.endswith("IB") and len(s) > 2 and s[-3] in "KMGT":
        s = s[:-2]
    elif s.endswith("B") and len(s) > 1 and s[-2] in "KMGT":
        s, base = s[:-1], 1000
    elif s.endswith("B"):
        s = s[:-1]
    mult = 1
    if s and s[-1] in "KMGT":
        mult = base ** ("KMGT".index(s[-1]) + 1)
        s = s[:-1]
    try:
        n = float(s) * mult
    except ValueError:
        raise OptionError(f"memory size {text!r} is not a size like 512MiB, 4GiB, 4GB or 1073741824") from None
    if n <= 0:
        raise OptionError(f"memory size {text!r} must be positive")
    return int(n)
