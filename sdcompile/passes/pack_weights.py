"""Pass `pack_weights`: store a weight in the order its kernel reads it (``kernels/layouts.py``).

Contract: a float weight (f32, f16, bf16) that only ``linear`` and ``conv2d`` nodes with bf16 products read
(``mma="bf16"``, ``passes/mma.py``), all of which the AMX-BF16 GEMM takes (``schedules/cpu_amx_bf16.py``: the CPU
the code is built for has AMX-BF16, whole 16 x 32 tiles), is stored as that kernel's B operands in bf16
(``layouts.AMX_BF16``) and its nodes get ``wlayout``. The kernel then loads its tiles from the weights in place,
instead of rounding every weight to bf16 and transposing it into tiles on every call: at the UNet's few-row GEMMs
(8x8 and 4x4 latents, prompts) that per-call work took as long as the products.

The values do not change: bf16 products round the weight to bf16 anyway, with the same rounding (nearest even), so
the kernel's outputs are the same bits; f32 weights take half the memory. Quantized weights keep their blocks (their
bytes are the point of them). Any other reader of a weight (a node without bf16 products, a shape the kernel does
not take) keeps it row-major; nothing is packed for GPU targets or without AMX-BF16. The report counts the packed
weights and their bytes (per function: ``tensors``, name -> bytes); the manifest records each packed weight's layout.
"""

from __future__ import annotations

from sdcompile.ir import Graph
from sdcompile.kernels import layouts
from sdcompile.passes.context import PassContext
from sdcompile.quant.types import get as get_type


def run(g: Graph, ctx: PassContext) -> Graph:
    if ctx.options.target != "cpu" or not any(n.attrs.get("mma") == "bf16" for n in g.nodes):
        return g
    from sdcompile.codegen import tvm_layer  # the CPU code is built for this host

    if not tvm_layer.host_amx_bf16():
        return g
    g = g.copy()
    rep = ctx.report.setdefault("pack_weights", {"layout": layouts.AMX_BF16, "tensors": {}})
    uses = g.consumers()
    for v in g.weights():
        readers = uses.get(v.name, [])
        if not readers or not get_type(v.dtype).is_float or not all(_takes(g, n, v.name) for n in readers):
            continue
        if v.dtype != layouts.DTYPE[layouts.AMX_BF16]:
            v.data.convert("bf16", "pack_weights: bf16 tiles of the AMX kernel (its products round to bf16)")
            v.dtype = "bf16"
        v.data.layout = layouts.AMX_BF16
        for n in readers:
            n.attrs["wlayout"] = layouts.AMX_BF16
        rep["tensors"][v.name] = 2 * v.shape[0] * v.shape[1]  # bytes
    return g


def _takes(g: Graph, n, w: str) -> bool:
    """Whether node ``n`` reads weight ``w`` as the AMX-BF16 GEMM's packed B operands."""
    if n.op not in ("linear", "conv2d") or n.attrs.get("mma") != "bf16" or n.inputs[1] != w or w in n.inputs[2:]:
        return False
    from schedules import cpu_amx_bf16
    from sdcompile.codegen.plan import node_spec

    shape = g.values[w].shape
    if len(shape) != 2 or not layouts.fits(layouts.AMX_BF16, *shape):
        return False
    from sdcompile.kernels.spec import KernelSpec

    spec = node_spec(g, n)
    packed = KernelSpec.make(spec.op, **{**dict(spec.attrs), "wtype": "bf16", "wlayout": layouts.AMX_BF16})
    return cpu_amx_bf16.applicable(packed, 16, True)
