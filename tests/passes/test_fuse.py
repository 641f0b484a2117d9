"""fuse: dequantize + matmul + bias + activation + residual into one linear node; not when a value has other users."""

from __future__ import annotations

import numpy as np

from sdcompile.ir import interpret, verify
from sdcompile.passes import fuse, quantize
from sdcompile.passes.context import CompileOptions, PassContext


def test_fuses_whole_chains(tiny_graph, tiny_ids):
    ctx = PassContext(CompileOptions(type="q8_0"))
    q = quantize.run(tiny_graph, ctx)
    g = fuse.run(q, ctx)
    verify(g, "fuse")
    ops = [n.op for n in g.nodes]
    assert set(ops) == {"embed", "layer_norm", "linear", "attention"}
    lin = [n for n in g.nodes if n.op == "linear"]
    assert len(lin) == 2 * 6
    attrs = {n.outputs[0].split(".")[-1]: n.attrs for n in lin[:6]}
    assert attrs["q"] == {"bias": True, "residual": False, "act": "none"}
    assert attrs["res1"] == {"bias": True, "residual": True, "act": "none"}  # out_proj + bias + residual
    assert attrs["act"] == {"bias": True, "residual": False, "act": "quick_gelu"}  # fc1 + bias + quick_gelu
    assert attrs["res2"] == {"bias": True, "residual": True, "act": "none"}  # fc2 + bias + residual
    assert all(g.values[n.inputs[1]].dtype == "q8_0" for n in lin)  # dequantize folded: reads storage type
    assert ctx.report["fuse"]["fired"]["dequantize_into_matmul"] == 12
    a = interpret.run(q, {"input_ids": tiny_ids})["last_hidden_state"]
    b = interpret.run(g, {"input_ids": tiny_ids})["last_hidden_state"]
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)  # same math in float64, only regrouped


def test_does_not_fuse_value_with_two_users(tiny_graph):
    g = tiny_graph.copy()
    # Make the first q projection's pre-bias value also a graph output: the bias add must not absorb it.
    mm = next(n for n in g.nodes if n.op == "matmul")
    g.outputs.append(mm.outputs[0])
    ctx = PassContext(CompileOptions())
    out = fuse.run(g, ctx)
    verify(out, "fuse")
    prod = out.producers()[mm.outputs[0]]
    assert prod.op == "linear" and prod.attrs["bias"] is False
    assert any(n.op == "add" for n in out.nodes)
    assert any("bias_into_linear" in k for k in ctx.report["fuse"]["declined"])
