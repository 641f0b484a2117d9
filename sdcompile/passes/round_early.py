"""Pass `round_early`: store in bf16 the activations that every reader rounds to bf16 anyway.

Contract: on the CPU, an f32 activation inside a function whose every reader is a kernel that rounds that input to
bf16 (nearest even) before any other use — the bf16 GEMMs' x (``cpu_amx_bf16``, ``cpu_bf16_dot``), the bf16 flash
attentions' q, k and v (``cpu_attention_amx``, ``cpu_attention_dot``): each module's ``ROUNDS_TO_BF16``, found through the CPU dispatch
(``schedules.cpu_rounds_to_bf16``) — is stored in bf16. Its producer rounds it instead, once, to nearest even
(``kernels/act.py``'s ``bf16_bits``, or ``vcvtne2ps2bf16`` where a kernel writes 32 values at a time:
``tir_build.narrow_pair``), and a reader's rounding of a bf16 value is exact, so every kernel computes the same bits
as before: the outputs do not change. (The one difference in storage, ``vcvtne2ps2bf16`` flushing f32 denormals to
zero, is one the readers make themselves: their own conversion flushes them, and the tile unit reads bf16 denormals
as zero.) What changes is the bytes: such a value (a group norm's
output before a conv, a layer norm's before q, k and v, the projections' before attention, attention's before its
output projection) is written and read in half the memory traffic, and takes half its slot in the memory plan.

Kept f32: a value any other kernel reads (a residual, a norm's input, an f32 GEMM), the function's inputs and
outputs, and any value sharing memory with another through a view (``act_dtype.view_groups``). It only applies
where ``--compute bf16`` marked nodes (``passes/mma.py``) and activations are still f32 (``--act-type f32``; with
f16 storage a reader's rounding of an f16 value is a second rounding, not the same bits). The report counts the
values and the bytes they no longer take (``values``, ``bytes_saved``).
"""

from __future__ import annotations

import math
from collections import Counter

from sdcompile.ir import Graph
from sdcompile.passes.act_dtype import view_groups
from sdcompile.passes.context import PassContext


def run(g: Graph, ctx: PassContext) -> Graph:
    if ctx.options.target != "cpu" or not any(n.attrs.get("mma") == "bf16" for n in g.nodes):
        return g
    import schedules
    from schedules.cpu import CpuInfo
    from sdcompile.codegen.plan import node_spec

    info = CpuInfo()
    group = view_groups(g)
    sizes = Counter(group.values())  # values per view group
    signature = set(g.inputs + g.outputs)
    readers = g.consumers()
    rounded: dict[int, frozenset[int]] = {}  # per node: the positions of the inputs its kernel rounds to bf16

    def rounds(n) -> frozenset[int]:
        if id(n) not in rounded:
            spec = node_spec(g, n)
            names = [p.name for p in spec.params if p.kind != "lut"]  # in the node's order: inputs, then outputs
            by_name = schedules.cpu_rounds_to_bf16(spec, info)
            rounded[id(n)] = frozenset(i for i, name in enumerate(names) if name in by_name)
        return rounded[id(n)]

    chosen = []
    for v in g.values.values():
        if v.kind != "activation" or v.dtype != "float32" or v.name in signature or sizes[group[v.name]] > 1:
            continue
        uses = readers.get(v.name, [])
        if uses and all(i in rounds(n) for n in uses for i, name in enumerate(n.inputs) if name == v.name):
            chosen.append(v)
    if not chosen:
        return g
    g = g.copy()
    for v in chosen:
        g.values[v.name].dtype = "bfloat16"
    rep = ctx.report.setdefault("round_early", {"values": 0, "bytes_saved": 0})
    rep["values"] += len(chosen)
    rep["bytes_saved"] += sum(2 * math.prod(v.shape) for v in chosen)  # 4 bytes a value -> 2
    return g
