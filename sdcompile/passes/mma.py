"""Pass `mma`: the precision of matrix products (``compile --compute f32|bf16``).

Contract: with ``compute`` f32 the graph is unchanged. With bf16, on the CPU, every ``linear`` and ``conv2d`` whose
weight is a float type (f32, f16, bf16) gets the node attribute ``mma="bf16"``: its kernel rounds both operands to
bf16 and sums the products in f32 on the AMX tile unit (``schedules/cpu_amx_bf16.py``), as PyTorch's bf16 autocast
does. Quantized weights keep their own integer kernels. Where the compiling CPU (the one the code is built for) has no
AMX-BF16, no node is marked and the report says the option had no effect; a shape that does not fit the tiles (K
not a multiple of 32, N of 16) keeps f32 products. GPU targets: the option has no effect yet, and the report says
so.
"""

from __future__ import annotations

from sdcompile.errors import OptionError
from sdcompile.ir import Graph
from sdcompile.passes.context import PassContext
from sdcompile.quant.types import get as get_type

COMPUTE = ("f32", "bf16")


def run(g: Graph, ctx: PassContext) -> Graph:
    compute = ctx.options.compute
    if compute not in COMPUTE:
        raise OptionError(f"unknown --compute {compute!r}; choose one of {', '.join(COMPUTE)}")
    if compute == "f32":
        return g
    rep = ctx.report.setdefault("mma", {"compute": compute, "nodes": 0, "kept_f32": 0, "why": ""})
    if ctx.options.target != "cpu":
        rep["why"] = f"--compute {compute} has no effect on {ctx.options.target} yet: products stay f32"
        return g
    from sdcompile.codegen.tvm_layer import host_amx_bf16  # the CPU code is built for this host

    if not host_amx_bf16():
        rep["why"] = f"--compute {compute} has no effect: this CPU has no AMX-BF16 (or SDCOMPILE_NO_AMX is set)"
        return g
    g = g.copy()
    for n in g.nodes:
        if n.op not in ("linear", "conv2d"):
            continue
        w = g.values[n.inputs[1]]
        if get_type(w.dtype).is_float:
            n.attrs["mma"] = compute
            rep["nodes"] += 1
        else:
            rep["kept_f32"] += 1
    rep["why"] = "quantized weights keep their integer kernels" if rep["kept_f32"] else ""
    return g
