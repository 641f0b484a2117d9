"""Turn the legalized, memory-planned functions of a module into kernel specs and the artifact's execution plans.

A plan is data the runtime interprets, one per function: its typed signature (inputs and outputs with shapes and
dtypes), its slot sizes, and a list of steps, each a kernel symbol and its arguments in the kernel's parameter order.
An argument is a buffer reference — {"input": name}, {"output": name}, {"weight": name}, {"slot": index} or
{"lut": table} (a constant lookup table the kernel's weight decoder reads, stored once in the artifact; see
``sdcompile/kernels/luts.py``); a slot or input reference may carry an ``"offset"`` in bytes (a slice or split
that is a contiguous run of its input). Views (reshape, such slices) run no step: their storage is the viewed
value's. Kernel specs come
from the op registry (``sdcompile/ir/ops.py``: each op's kernel and ``lower``). ``plan_luts`` lists the tables the
kernels use.

Runtime state (an LLM's KV cache) and runtime scalars (a position) will be further reference kinds ({"state":
name}, {"scalar": name}) declared in the signature; nothing else here needs to change for them.
"""

from __future__ import annotations

from typing import Any

from sdcompile.ir import Graph
from sdcompile.ir.ops import get as get_op
from sdcompile.ir.ops import node_view
from sdcompile.kernels import spec as ks


def node_spec(g: Graph, n) -> ks.KernelSpec:
    d = get_op(n.op)
    if d.kernel is None or d.lower is None:  # legalize guarantees this does not happen
        raise ValueError(f"op {n.op} has no kernel")
    shapes = [g.values[i].shape for i in n.inputs]
    types = [g.values[i].dtype for i in n.inputs]
    attrs = d.lower(shapes, types, g.values[n.outputs[0]].shape, n.attrs)
    # Activations stored in 16 bits: the kernel takes each float activation in its value's dtype (the spec's
    # ``dt`` codes, in parameter order). All-f32 kernels keep their names, so f32 artifacts are unchanged.
    params = [p for p in ks.KernelSpec.make(d.kernel, **attrs).params if p.kind != "lut"]
    dtypes = [g.values[v].dtype for v in n.inputs + n.outputs]
    dt = "".join(ks.ACT_CODES[v] for p, v in zip(params, dtypes) if p.kind == "act" and p.dtype == "float32")
    if dt.strip("f"):
        attrs["dt"] = dt
    return ks.KernelSpec.make(d.kernel, **attrs)


def _signature(g: Graph, names: list[str]) -> dict[str, dict]:
    out = {}
    for name in names:
        v = g.values[name]
        rec: dict[str, Any] = {"shape": list(v.shape), "dtype": "int32" if v.dtype in ("int32", "int64") else v.dtype}
        if v.dtype in ("int32", "int64"):
            rec["accept"] = ["int32", "int64"]
        out[name] = rec
    return out


def function_plan(g: Graph, specs: dict[str, ks.KernelSpec]) -> dict[str, Any]:
    mp = g.meta["memory_plan"]
    storage = mp["storage"]
    steps = []
    for n in g.nodes:
        if node_view(g, n) is not None:
            continue
        sp = node_spec(g, n)
        specs.setdefault(sp.name, sp)
        args = []
        if len(n.inputs + n.outputs) != sum(p.kind != "lut" for p in sp.params):  # an internal bug, not a user error
            raise ValueError(f"node {n.outputs[0]} ({n.op}) does not match kernel {sp.name}'s parameters")
        values = iter(n.inputs + n.outputs)
        at: dict[str, int] = {}  # the argument position of each value
        for p in sp.params:
            if p.kind == "lut":  # not a graph value: the table is part of the kernel's weight type
                args.append({"lut": p.name})
                continue
            x = next(values)
            at.setdefault(x, len(args))
            v = g.values[x]
            if v.kind == "input":
                args.append({"input": x})
            elif v.kind == "weight":
                args.append({"weight": x})
            else:
                args.append(dict(storage[x]))
        step = {"kernel": sp.name, "args": args, "node": n.outputs[0], "component": n.component}
        if "lora" in n.attrs:  # a runtime LoRA adds its branch here (passes/lora.hooks; runtime/lora/branch.py)
            step["lora"] = _lora_hook(g, n, at)
        steps.append(step)
    plan = {
        "inputs": _signature(g, g.inputs),
        "outputs": _signature(g, g.outputs),
        "slots": mp["slots"],
        "steps": steps,
    }
    vocab = g.meta.get("config", {}).get("vocab") if isinstance(g.meta.get("config"), dict) else None
    for _name, rec in plan["inputs"].items():
        if "accept" in rec and vocab:
            rec["max_value"] = vocab - 1
    return plan


def _lora_hook(g: Graph, n, at: dict[str, int]) -> dict[str, Any]:
    """Where a LoRA branch reads and writes: the adapted weight, the argument positions of the step's input x and
    output y, and for a convolution its geometry (the branch's down projection is the same convolution)."""
    hook: dict[str, Any] = {"weight": n.attrs["lora"], "x": at[n.inputs[0]], "y": at[n.outputs[0]]}
    if n.op == "conv2d":
        hook.update(kh=n.attrs["kh"], kw=n.attrs["kw"], stride=n.attrs["stride"], pads=list(n.attrs["pads"]))
        hook["x_shape"] = list(g.values[n.inputs[0]].shape)
    return hook


def build_plans(functions: dict[str, Graph]) -> tuple[list[ks.KernelSpec], dict[str, dict[str, Any]]]:
    specs: dict[str, ks.KernelSpec] = {}
    plans = {name: function_plan(g, specs) for name, g in functions.items()}
    return sorted(specs.values(), key=lambda s: s.name), plans


def plan_luts(specs: list[ks.KernelSpec]) -> list[str]:
    """The lookup tables the kernels read, sorted: what the artifact must store."""
    return sorted({p.name for s in specs for p in s.params if p.kind == "lut"})
