"""memory_plan: liveness-based slot reuse, views aliased, outputs in buffers of their own; a module's peak =
weights + the shared slots + every function's inputs and outputs; budget errors with options."""

from __future__ import annotations

import pytest

from sdcompile.errors import MemoryBudgetError, OptionError
from sdcompile.ir import verify
from sdcompile.passes import fuse, legalize, memory_plan, quantize
from sdcompile.passes.context import CompileOptions, PassContext
from sdcompile.passes.memory_plan import parse_size


def _planned(g, **opts):
    ctx = PassContext(CompileOptions(**opts))
    for p in (quantize.run, fuse.run, legalize.run, memory_plan.run):
        g = p(g, ctx)
    verify(g, "memory_plan")
    memory_plan.check_module({"encode_text": g}, ctx)
    return g, ctx


def _check_no_overlap(g):
    """Two values in one slot must not be live at the same time; outputs never share with their own inputs."""
    slot_of = {v: st["slot"] for v, st in g.meta["memory_plan"]["storage"].items() if "slot" in st}
    born, dies = {}, {}
    for i, n in enumerate(g.nodes):
        for o in n.outputs:
            born[o] = i
        for x in n.inputs:
            dies[x] = i
    for o in g.outputs:
        dies[o] = len(g.nodes)
    by_slot = {}
    for v, s in slot_of.items():
        by_slot.setdefault(s, []).append((born[v], dies.get(v, born[v]), v))
    for s, spans in by_slot.items():
        spans.sort()
        for (b1, d1, v1), (b2, d2, v2) in zip(spans, spans[1:]):
            assert b2 >= d1, f"slot {s}: {v1} [{b1},{d1}] overlaps {v2} [{b2},{d2}]"
            assert b2 > b1
    for n in g.nodes:
        ins = {slot_of[x] for x in n.inputs if x in slot_of}
        assert not ins & {slot_of[o] for o in n.outputs if o in slot_of}, n


def test_reuse_and_peak(tiny_graph):
    g, ctx = _planned(tiny_graph, type="q8_0")
    m = ctx.report["memory"]
    _check_no_overlap(g)
    assert m["slots"] <= 6  # a transformer layer needs a handful of live buffers, not one per value
    # 2 layers of ~10 values each fit in a few slots; without reuse every value has its own buffer (deeper: more)
    assert m["activation_bytes"] < m["activation_bytes_without_reuse"] / 3
    assert m["peak_bytes"] == m["weights_bytes"] + m["activation_bytes"] + m["io_bytes"]
    # the output has a buffer of its own (it outlives the call), not a slot
    assert g.meta["memory_plan"]["storage"][g.outputs[0]] == {"output": g.outputs[0]}
    # weights as stored: 13 q8_0 matrices (34 bytes per 32 values) + f32 small tensors
    q8 = sum(v.shape[0] * v.shape[1] // 32 * 34 for v in g.weights() if v.dtype == "q8_0")
    f32 = sum(4 * v.shape[0] * (v.shape[1] if len(v.shape) > 1 else 1) for v in g.weights() if v.dtype == "f32")
    assert m["weights_bytes"] == q8 + f32


def test_over_budget_names_peak_budget_and_options(tiny_graph):
    _, ctx = _planned(tiny_graph)
    peak = ctx.report["memory"]["peak_bytes"]
    with pytest.raises(MemoryBudgetError) as e:
        _planned(tiny_graph, memory_budget=peak - 1)
    msg = str(e.value)
    assert "exceeds the budget" in msg and "--type q8_0" in msg and "--type q4_0" in msg
    _planned(tiny_graph, memory_budget=peak)  # exactly at budget is fine


def test_parse_size():
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("4G") == 4 << 30
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_size("1000") == 1000
    assert parse_size("4GB") == 4_000_000_000 and parse_size("4GiB") == 4 << 30  # each unit means what it says
    assert parse_size("1.5MB") == 1_500_000 and parse_size("2kb") == 2000 and parse_size("64B") == 64
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(OptionError):
            parse_size(bad)


def test_views_alias_their_source_and_extend_its_life(tiny_graph):
    """A reshape is a view: it gets its source's storage, and the source's slot stays taken while the view is
    used (here the view feeds the last node, so its slot is never handed to a later value)."""
    from sdcompile.ir import Graph

    g = Graph(meta={})
    x = g.add_input("x", (2, 4, 4, 8), "float32", "vae")
    a = g.add_node("silu", [x], "a", (2, 4, 4, 8), "vae")
    v = g.add_node("reshape", [a], "v", (2, 16, 8), "vae", to=(2, 16, 8))
    b = g.add_node("gelu", [x], "b", (2, 4, 4, 8), "vae")  # born while the view's source is still live
    c = g.add_node("gelu", [b], "c", (2, 4, 4, 8), "vae")
    y = g.add_node(
        "add", [v, g.add_node("reshape", [c], "cv", (2, 16, 8), "vae", to=(2, 16, 8))], "y", (2, 16, 8), "vae"
    )
    g.outputs.append(y)
    verify(g)
    storage, sizes = memory_plan.plan(g)
    assert storage["v"] == storage["a"] and "slot" in storage["a"]
    assert storage["cv"] == storage["c"]
    assert storage["b"] != storage["a"] and storage["c"] != storage["a"]  # a (via v) is live until the add
    assert storage["y"] == {"output": "y"}


def test_contiguous_parts_are_views_at_aligned_offsets():
    """A split along the outermost axis is two runs of its input: no kernel, the parts at byte offsets inside the
    input's slot; where a part would start off the 256-byte binding alignment, or is not one run (a split of
    channels), a kernel copies it."""
    from sdcompile.ir import Graph
    from sdcompile.ir.ops import node_view

    g = Graph(meta={})
    x = g.add_input("x", (2, 16, 96), "float32", "unet")
    a = g.add_node("silu", [x], "a", (2, 16, 96), "unet")
    p0, p1 = g.add_node_multi("split", [a], [("p0", (1, 16, 96)), ("p1", (1, 16, 96))], "unet", axis=0, sizes=(1, 1))
    c0, c1 = g.add_node_multi("split", [a], [("c0", (2, 16, 32)), ("c1", (2, 16, 64))], "unet", axis=-1, sizes=(32, 64))
    s = g.add_node("slice", [a], "s", (2, 3, 96), "unet", axis=1, start=1, stop=4)
    y = g.add_node("add", [p0, p1], "y", (1, 16, 96), "unet")
    g.outputs += [y, g.add_node("mul", [c0, c0], "z", (2, 16, 32), "unet"), c1, s]
    verify(g)
    by_out = {n.outputs[0]: n for n in g.nodes}
    assert node_view(g, by_out["p0"]) == [0, 16 * 96 * 4]  # a view: 6144 bytes in
    assert node_view(g, by_out["c0"]) is None and node_view(g, by_out["s"]) is None  # not one run: copies
    storage, _ = memory_plan.plan(g)
    assert storage["p0"] == storage["a"] and storage["p1"] == dict(storage["a"], offset=6144)
    assert "offset" not in storage["c0"] and storage["c0"] != storage["a"]
    odd = Graph(meta={})
    xi = odd.add_input("x", (3, 5), "float32", "vae")
    odd.add_node_multi("split", [xi], [("q0", (1, 5)), ("q1", (2, 5))], "vae", axis=0, sizes=(1, 2))
    assert node_view(odd, odd.nodes[0]) is None  # 20 bytes in: off the alignment, so a kernel copies
