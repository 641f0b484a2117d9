"""quantize: types chosen from canonical names, explicit dequantize nodes, skip list, rules, format independence."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.errors import OptionError, QuantError
from sdcompile.formats import open_store
from sdcompile.ir import interpret, verify
from sdcompile.models import lift
from sdcompile.passes import quantize
from sdcompile.passes.context import CompileOptions, PassContext


def _run(g, **opts):
    ctx = PassContext(CompileOptions(**opts))
    out = quantize.run(g, ctx)
    verify(out, "quantize")
    return out, ctx


def _types(g):
    return {v.name: v.dtype for v in g.weights()}


def test_default_type_and_skip_list(tiny_graph):
    g, ctx = _run(tiny_graph, type="q8_0")
    t = _types(g)
    assert t["text_encoder.encoder.layers.0.self_attn.q_proj.weight"] == "q8_0"
    assert t["text_encoder.embeddings.token_embedding.weight"] == "q8_0"
    assert t["text_encoder.encoder.layers.0.self_attn.q_proj.bias"] == "f32"
    assert t["text_encoder.encoder.layers.1.layer_norm2.weight"] == "f32"
    assert t["text_encoder.embeddings.position_embedding.weight"] == "f32"
    # one dequantize per quantized matmul weight, each feeding exactly that matmul
    deq = [n for n in g.nodes if n.op == "dequantize"]
    assert len(deq) == 2 * 6
    cons = g.consumers()
    assert all([c.op for c in cons[n.outputs[0]]] == ["matmul"] for n in deq)
    assert ctx.report["quantize"]["types"]["q8_0"] == 13


def test_rules_first_match_wins(tiny_graph):
    rules = quantize.parse_rules(r"layers\.0\..*fc1=q4_0,fc1=q5_1,mlp=q8_0")
    g, _ = _run(tiny_graph, type="f16", tensor_type_rules=rules)
    t = _types(g)
    assert t["text_encoder.encoder.layers.0.mlp.fc1.weight"] == "q4_0"
    assert t["text_encoder.encoder.layers.1.mlp.fc1.weight"] == "q5_1"
    assert t["text_encoder.encoder.layers.1.mlp.fc2.weight"] == "q8_0"
    assert t["text_encoder.encoder.layers.1.self_attn.k_proj.weight"] == "f16"
    assert t["text_encoder.encoder.layers.1.mlp.fc2.bias"] == "f32"  # the skip list beats rules


def test_no_type_keeps_stored_types_and_does_not_fire(tiny_graph, tiny_ids):
    g, _ = _run(tiny_graph)
    assert _types(g) == _types(tiny_graph)
    assert not any(n.op == "dequantize" for n in g.nodes)
    a = interpret.run(tiny_graph, {"input_ids": tiny_ids[:1]})["last_hidden_state"]
    b = interpret.run(g, {"input_ids": tiny_ids[:1]})["last_hidden_state"]
    np.testing.assert_array_equal(a, b)


# Relative quantization step of each type (f16: 2^-11; q8_0: 1/127 of the block's max; q4_0: 1/7). The rms error of
# the layer-normed output (std ~1) stays within 2.5 steps through 2 layers and the final norm (measured: 0.8, 1.1, 1.0
# steps); the error must also be non-zero, or the pass did not change the weights.
@pytest.mark.parametrize("qtype,step", [("f16", 2**-11), ("q8_0", 1 / 127), ("q4_0", 1 / 7)])
def test_numbers_close_to_unquantized(tiny_graph, tiny_ids, qtype, step):
    g, _ = _run(tiny_graph, type=qtype)
    ref = interpret.run(tiny_graph, {"input_ids": tiny_ids})["last_hidden_state"]
    got = interpret.run(g, {"input_ids": tiny_ids})["last_hidden_state"]
    rms = np.sqrt(np.mean((got - ref) ** 2)) / ref.std()
    assert 0.1 * step < rms < 2.5 * step, rms


def test_format_independence(tiny_ldm_safetensors, tiny_gguf, tiny_ids):
    """The same weights from safetensors and from a stable-diffusion.cpp GGUF get identical types and outputs."""
    rules = quantize.parse_rules("fc2=q4_1")
    graphs = []
    for path in (tiny_ldm_safetensors, tiny_gguf):
        g, ctx = _run(lift(open_store(path)), type="q5_0", tensor_type_rules=rules)
        graphs.append(g)
    assert open_store(tiny_ldm_safetensors).format != open_store(tiny_gguf).format
    assert _types(graphs[0]) == _types(graphs[1])
    assert set(_types(graphs[0]).values()) == {"q5_0", "q4_1", "f32"}
    outs = [interpret.run(g, {"input_ids": tiny_ids})["last_hidden_state"] for g in graphs]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_bad_rules_and_types():
    with pytest.raises(OptionError, match="regex=type"):
        quantize.parse_rules("fc1")
    with pytest.raises(OptionError, match="bad regex"):
        quantize.parse_rules("fc1[=q4_0")
    with pytest.raises(QuantError, match="unknown quant type"):
        quantize.parse_rules("fc1=q9_9")
