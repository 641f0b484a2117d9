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
per 16 values and no transposes. Without the tile unit, a q8_0 weight that only the int8 VNNI GEMM reads
(``mma="int8"``, ``schedules/cpu_vnni.py``: AVX-512 VNNI) keeps its bytes too, reordered into that kernel's
``vpdpbusd`` operands (``layouts.VNNI_Q8_0``), which it reads in place instead of decoding the row-major blocks into a
panel on every call.

The values do not change: bf16 products round the weight to bf16 anyway, with the same rounding (nearest even), so
the kernel's outputs are the same bits; f32 weights take half the memory. Other quant types (and q8_0 without the
tile unit or VNNI) keep their row-major blocks (they keep their integer kernels). Nothing is packed this way for GPU
targets or without AMX-BF16, AVX512_BF16 or AVX-512 VNNI.

With f32 products an f32 weight that only the f32 FMA GEMM reads (``schedules/cpu_fma.py``: AVX-512, not swapped,
whole units of 64 rows; the dispatch asked as above) is stored as that kernel's panels (``layouts.FMA_F32``), the
same f32 values in another order: the kernel reads each unit in place instead of transposing it on every call.
Where prompts are few rows that per-call work waited on the weights coming from memory (the SD1.5 text encoder in
f32: 4% of its time). f16 and bf16 weights are not widened for it (twice the memory).

A weight with another reader (a node the dispatch gives to another kernel, a shape the kernel does not take) keeps
its row-major order. The report counts the packed weights and their bytes per layout (per function: ``tensors``,
name -> (layout, bytes)); the manifest records each packed weight's layout.
"""

from __future__ import annotations

from sdcompile.ir import Graph
from sdcompile.kernels import layouts
from sdcompile.passes.context import PassContext
from sdcompile.quant.types import get as get_type

LAYOUT_OF = {"q8_0": layouts.AMX_Q8_0}  # quantized weights the tile unit's kernel reads in a layout of their own type


def run(g: Graph, ctx: PassContext) -> Graph:
    if ctx.options.target != "cpu":
        return g
    from sdcompile.codegen import tvm_layer  # the CPU code is built for this host

    tiles, dot, vnni = tvm_layer.host_amx_bf16(), tvm_layer.host_avx512_bf16(), tvm_layer.host_avx512_vnni()
    uses = g.consumers()
    plan: dict[str, str] = {}  # weight -> layout, decided on the graph as it came (each node reads one weight)
    for v in g.weights():
        readers = uses.get(v.name, [])
        layout = _layout(v.dtype, readers, tiles, dot, vnni)
        if readers and layout is not None and all(_takes(g, n, v.name, layout, tiles) for n in readers):
            plan[v.name] = layout
    if not plan:
        return g  # nothing to store otherwise: no copy
    g = g.copy()
    tensors: dict[str, tuple[str, int]] = {}
    uses = g.consumers()
    for name, layout in plan.items():
        v, readers = g.values[name], uses[name]
        dtype = layouts.DTYPE[layout]
        if v.dtype != dtype:
            v.data.convert(dtype, "pack_weights: bf16 tiles of the AMX kernel (its products round to bf16)")
            v.dtype = dtype
        v.data.layout = layout
        for n in readers:
            n.attrs["wlayout"] = layout
        tensors[v.name] = (layout, get_type(dtype).row_bytes(v.shape[1]) * v.shape[0])
    ctx.report.setdefault("pack_weights", {"tensors": {}})["tensors"].update(tensors)
    return g


def _layout(dtype: str, readers: list, tiles: bool, dot: bool, vnni: bool) -> str | None:
    """The layout a weight of ``dtype`` would take for its readers' kernels: the bf16 GEMMs' where any asks for bf16
    products (float weights as bf16 tiles, q8_0 in tiles of its own on the tile unit), the int8 VNNI GEMM's for q8_0
    where any asks for int8 products, else the f32 FMA GEMM's panels for an f32 weight; None where there is none (the
    readers' kernels are then checked one by one)."""
    if any(n.attrs.get("mma") == "bf16" for n in readers):
        if get_type(dtype).is_float:
            return layouts.AMX_BF16 if tiles or dot else None
        return LAYOUT_OF.get(dtype) if tiles else None
    if any(n.attrs.get("mma") == "int8" for n in readers):
        return layouts.VNNI_Q8_0 if dtype == "q8_0" and vnni and not tiles else None
    return layouts.FMA_F32 if dtype == "f32" else None


def _takes(g: Graph, n, w: str, layout: str, tiles: bool) -> bool:
    """Whether node ``n`` reads weight ``w`` (its only use in the node) with the kernel that reads ``layout``: the
    AMX-BF16 GEMM (``tiles``) or else the vdpbf16ps one for the bf16 layouts, the int8 VNNI GEMM for its q8_0
    order, the f32 FMA GEMM for its panels. The CPU dispatch (``schedules.cpu_rule``) is asked about the node as it
    is and as it would be with the weight packed, so a kernel ahead of the reader in the dispatch (Winograd: it
    transforms row-major weights) keeps the weight row-major, and the reader takes the packed node too."""
    if n.op not in ("linear", "conv2d") or n.inputs[1] != w or w in n.inputs[2:]:
        return False
    import schedules
    from schedules import cpu_amx_bf16, cpu_bf16_dot, cpu_fma, cpu_vnni
    from schedules.cpu import CpuInfo
    from sdcompile.codegen.plan import node_spec
    from sdcompile.kernels.spec import KernelSpec

    shape = g.values[w].shape
    if len(shape) != 2 or not layouts.fits(layout, *shape):
        return False
    spec = node_spec(g, n)
    if layout == layouts.FMA_F32:
        reader = cpu_fma
    elif layout == layouts.VNNI_Q8_0:
        reader = cpu_vnni
    else:
        reader = cpu_amx_bf16 if tiles else cpu_bf16_dot
    if schedules.cpu_rule(spec, CpuInfo()) is not reader.linear:
        return False
    packed = KernelSpec.make(spec.op, **{**dict(spec.attrs), "wtype": layouts.DTYPE[layout], "wlayout": layout})
    return schedules.cpu_rule(packed, CpuInfo()) is reader.linear
