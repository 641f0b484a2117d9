"""Pass `pack_weights`: store a weight in the order its kernel reads it (``kernels/layouts.py``).

Contract: a float weight (f32, f16, bf16) that only ``linear`` and ``conv2d`` nodes with bf16 products read
(``mma="bf16"``, ``passes/mma.py``), all of which the AMX-BF16 GEMM takes (``schedules/cpu_amx_bf16.py``: the CPU
the code is built for has AMX-BF16, whole 16 x 32 tiles), is stored as that kernel's B operands in bf16
(``layouts.AMX_BF16``) and its nodes get ``wlayout``. The kernel then loads its tiles from the weights in place,
instead of rounding every weight to bf16 and transposing it into tiles on every call: at the UNet's few-row GEMMs
(8x8 and 4x4 latents, prompts) that per-call work took as long as the products. Without the tile unit (AMD Zen 4)
the vdpbf16ps GEMM (``schedules/cpu_bf16_dot.py``) reads the same layout: a tile's rows are its pair steps, 16
weight rows' pair words each, the very vectors it multiplies, so float weights its nodes read are packed the same
way (K in whole 32-value steps). A weight is packed only for nodes the CPU dispatch (``schedules.cpu_rule``) gives
to that GEMM: not those of the 3x3 convs that Winograd with vdpbf16ps products takes
(``schedules/cpu_winograd_dot.py``), which transforms the weights as stored.

A q8_0 weight read that way keeps its type and its bytes, reordered into tiles (``layouts.AMX_Q8_0``: each tile's
16 scales, then its quants in the B operand's order), so the kernel decodes it with a conversion and a multiplication
per 16 values and no transposes.

The values do not change: bf16 products round the weight to bf16 anyway, with the same rounding (nearest even), so
the kernel's outputs are the same bits; f32 weights take half the memory. Other quant types (and q8_0 without the
tile unit) keep their row-major blocks (they keep their integer kernels). Any other reader of a weight (a node
without bf16 products, a shape the kernel does not take) keeps it row-major; nothing is packed for GPU targets or
without AMX-BF16 or AVX512_BF16. The report counts
the packed weights and their bytes per layout (per function: ``tensors``, name -> (layout, bytes)); the manifest
records each packed weight's layout.
"""

from __future__ import annotations

from sdcompile.ir import Graph
from sdcompile.kernels import layouts
from sdcompile.passes.context import PassContext
from sdcompile.quant.types import get as get_type

LAYOUT_OF = {"q8_0": layouts.AMX_Q8_0}  # quantized weights the kernel reads in a layout of their own type


def run(g: Graph, ctx: PassContext) -> Graph:
    if ctx.options.target != "cpu" or not any(n.attrs.get("mma") == "bf16" for n in g.nodes):
        return g
    from sdcompile.codegen import tvm_layer  # the CPU code is built for this host

    tiles = tvm_layer.host_amx_bf16()
    if not tiles and not tvm_layer.host_avx512_bf16():
        return g
    g = g.copy()
    rep = ctx.report.setdefault("pack_weights", {"tensors": {}})
    uses = g.consumers()
    for v in g.weights():
        readers = uses.get(v.name, [])
        layout = layouts.AMX_BF16 if get_type(v.dtype).is_float else LAYOUT_OF.get(v.dtype) if tiles else None
        if not readers or layout is None or not all(_takes(g, n, v.name, layout, tiles) for n in readers):
            continue
        dtype = layouts.DTYPE[layout]
        if v.dtype != dtype:
            v.data.convert(dtype, "pack_weights: bf16 tiles of the AMX kernel (its products round to bf16)")
            v.dtype = dtype
        v.data.layout = layout
        for n in readers:
            n.attrs["wlayout"] = layout
        rep["tensors"][v.name] = (layout, get_type(dtype).row_bytes(v.shape[1]) * v.shape[0])
    return g


def _takes(g: Graph, n, w: str, layout: str, tiles: bool) -> bool:
    """Whether node ``n`` reads weight ``w`` with the AMX-BF16 GEMM (``tiles``) or else the vdpbf16ps one, which
    reads ``layout``."""
    if n.op not in ("linear", "conv2d") or n.attrs.get("mma") != "bf16" or n.inputs[1] != w or w in n.inputs[2:]:
        return False
    import schedules
    from schedules import cpu_amx_bf16, cpu_bf16_dot
    from schedules.cpu import CpuInfo
    from sdcompile.codegen.plan import node_spec

    shape = g.values[w].shape
    if len(shape) != 2 or not layouts.fits(layout, *shape):
        return False
    from sdcompile.kernels.spec import KernelSpec

    spec = node_spec(g, n)
    reader = cpu_amx_bf16 if tiles else cpu_bf16_dot
    if schedules.cpu_rule(spec, CpuInfo()) is not reader.linear:
        return False  # the CPU dispatch gives the node to another kernel (Winograd: it transforms row-major weights)
    packed = KernelSpec.make(spec.op, **{**dict(spec.attrs), "wtype": layouts.DTYPE[layout], "wlayout": layout})
    return reader.applicable(packed, 16, True)
