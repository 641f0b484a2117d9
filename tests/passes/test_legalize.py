"""legalize: native types pass through; a type without a kernel gets the policy's fallback, recorded in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile.backends import TABLE, backend
from sdcompile.errors import NoKernelError, OptionError
from sdcompile.formats import open_store
from sdcompile.ir import interpret, verify
from sdcompile.models import lift
from sdcompile.passes import fuse, legalize, quantize
from sdcompile.passes.context import CompileOptions, PassContext


def _prep(g, **opts):
    ctx = PassContext(CompileOptions(**opts))
    return fuse.run(quantize.run(g, ctx), ctx), ctx


def test_native_types_unchanged(tiny_graph):
    g, ctx = _prep(tiny_graph, type="q8_0")
    out = legalize.run(g, ctx)
    verify(out, "legalize")
    assert ctx.report["legalize"]["fallbacks"] == []
    assert ctx.report["legalize"]["native"] == 13
    assert {v.name: v.dtype for v in out.weights()} == {v.name: v.dtype for v in g.weights()}


@pytest.fixture()
def table_backend(tmp_path, monkeypatch):
    """Inject a capability table edited by the test (legalize reads backends only through `backend`)."""

    made = []

    def make(edit):
        table = json.loads(TABLE.read_text())
        edit(table)
        made.append(1)
        p = tmp_path / f"caps{len(made)}.json"  # a new name each time: tables are cached per path
        p.write_text(json.dumps(table))
        monkeypatch.setattr(legalize, "backend", lambda name: backend(name, p))

    return make


def test_only_the_op_without_kernel_falls_back(tiny_graph, table_backend):
    # A backend with a q4_0 matmul kernel but no q4_0 gather kernel: only the token table changes.
    table_backend(lambda t: t["cpu"].update(embed=["f32", "f16"]))
    g, ctx = _prep(tiny_graph, type="q4_0")
    out = legalize.run(g, ctx)
    fb = ctx.report["legalize"]["fallbacks"]
    assert [(d["op"], d["from"], d["to"]) for d in fb] == [("embed", "q4_0", "f16")]
    assert ctx.report["legalize"]["native"] == 12
    assert out.values["text_encoder.embeddings.token_embedding.weight"].dtype == "f16"


def test_tq1_0_repacked_losslessly_to_tq2_0(tiny_graph, tiny_ids, table_backend):
    # A backend without a TQ1_0 kernel: the lossless policy repacks it to TQ2_0 (same ternary values).
    table_backend(lambda t: t["vulkan"].update(linear=[x for x in t["vulkan"]["linear"] if x != "tq1_0"]))
    assert not legalize.backend("vulkan").has_kernel("linear", "tq1_0")
    # fc1's 128-wide rows do not fill a 256-value tq1_0 block, so quantize leaves fc1 alone; fc2's rows are 512.
    g, ctx = _prep(tiny_graph, type="f32", tensor_type_rules=[("mlp", "tq1_0")], target="vulkan")
    out = legalize.run(g, ctx)
    verify(out, "legalize")
    fb = ctx.report["legalize"]["fallbacks"]
    assert len(fb) == 2 and {d["step"] for d in fb} == {"repack"} and {d["to"] for d in fb} == {"tq2_0"}
    assert all("tq1_0" in d["why"] for d in fb)
    assert {v.dtype for v in out.weights() if "fc2.weight" in v.name} == {"tq2_0"}
    a = interpret.run(g, {"input_ids": tiny_ids})["last_hidden_state"]
    b = interpret.run(out, {"input_ids": tiny_ids})["last_hidden_state"]
    np.testing.assert_array_equal(a, b)  # lossless: bit-identical values


def _q4_k_gguf(path, state):
    """A GGUF whose fc2 weights are stored as Q4_K (random valid blocks: small finite f16 scales, random nibbles)."""
    import gguf

    rng = np.random.default_rng(3)
    w = gguf.GGUFWriter(str(path), arch="clip", use_temp_file=False)
    w.add_uint32("num_attention_heads", 2)
    for name, arr in ex.rename(state, "ldm").items():
        if name.endswith("fc2.weight"):
            rows, k = arr.shape
            blocks = rng.integers(0, 256, (rows, k // 256, 144), dtype=np.uint8)
            blocks[..., 0:4] = np.array([0.002, 0.001], np.float16).view(np.uint8)  # d, dmin
            data = blocks.reshape(rows, -1)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_k_quant_fallback_per_policy(tiny_state, tiny_ids, tmp_path, table_backend):
    # A backend without a Q4_K kernel. Per policy: lossless stores f16 (q4_k values rounded at f16 precision), size
    # requantizes to q8_0, exact stores f32 (the q4_k values exactly).
    table_backend(lambda t: t["cpu"].update(linear=[x for x in t["cpu"]["linear"] if x != "q4_k"]))
    g0 = lift(open_store(_q4_k_gguf(tmp_path / "k.gguf", tiny_state)))
    assert g0.values["text_encoder.encoder.layers.0.mlp.fc2.weight"].dtype == "q4_k"
    for policy, want, tol in (("lossless", "f16", 1e-2), ("size", "q8_0", 5e-2), ("exact", "f32", 1e-12)):
        g, ctx = _prep(g0, fallback_policy=policy)
        out = legalize.run(g, ctx)
        verify(out, "legalize")
        fb = ctx.report["legalize"]["fallbacks"]
        assert [(d["from"], d["to"]) for d in fb] == [("q4_k", want)] * 2
        ref = interpret.run(g, {"input_ids": tiny_ids})["last_hidden_state"]
        got = interpret.run(out, {"input_ids": tiny_ids})["last_hidden_state"]
        err = np.abs(ref - got).max()
        assert err < tol, (policy, err)


def test_no_fallback_is_a_clear_error(tiny_graph, table_backend):
    # A backend with only a k-quant matmul kernel: neither the f16 nor the f32 fallback has a kernel.
    table_backend(lambda t: t["cpu"].update(linear=["q4_k"]))
    g, ctx = _prep(tiny_graph, type="f32")
    with pytest.raises(NoKernelError, match="cpu has no linear kernel for f32") as e:
        legalize.run(g, ctx)
    assert "dequantize:f16" in str(e.value) and "--fallback-policy" in str(e.value)
    with pytest.raises(OptionError, match="fallback policy"):
        legalize.run(g, PassContext(CompileOptions(fallback_policy="yolo")))


def test_weight_over_the_buffer_limit_is_shrunk(tiny_graph, table_backend):
    # Vulkan binds at most 128 MiB per buffer (an SD1.5 f32 token table is 145 MiB). Scaled down: a 300 KiB limit
    # against the tiny model's 500 KiB f32 token table; every other weight is 256 KiB and stays.
    table_backend(lambda t: t["cpu"].update(max_buffer_bytes=300 * 1024))
    g, ctx = _prep(tiny_graph, type="f32")
    out = legalize.run(g, ctx)
    fb = ctx.report["legalize"]["fallbacks"]
    assert [(d["tensor"].split(".")[-2], d["from"], d["to"]) for d in fb] == [("token_embedding", "f32", "f16")]
    assert "over cpu's 300.0 KiB limit" in fb[0]["why"]
    verify(out, "legalize")
    table_backend(lambda t: t["cpu"].update(max_buffer_bytes=200 * 1024))
    g, ctx = _prep(tiny_graph, type="f32")
    with pytest.raises(NoKernelError, match="too large too"):
        legalize.run(g, ctx)
    g, ctx = _prep(tiny_graph, type="f32", fallback_policy="size")
    legalize.run(g, ctx)
    assert {d["to"] for d in ctx.report["legalize"]["fallbacks"]} == {"q8_0"}


def test_vulkan_declares_its_buffer_limit():
    assert backend("vulkan").max_buffer_bytes == 128 * 2**20
    assert backend("cpu").max_buffer_bytes is None


def test_fallback_keeps_the_values_quantize_chose(tiny_graph, table_backend):
    # quantize picks q8_0; a backend without a q8_0 kernel stores f16. The stored weights are q8_0's values (rounded
    # to f16), not the original f32 weights rounded to f16: the report's "q8_0 -> f16" is what the artifact holds.
    from sdcompile.ir.weights import as_f32
    from sdcompile.quant.reference import dequantize, quantize

    table_backend(lambda t: t["cpu"].update(linear=["f32", "f16"], embed=["f32", "f16"]))
    g, ctx = _prep(tiny_graph, type="q8_0")
    out = legalize.run(g, ctx)
    name = "text_encoder.encoder.layers.0.mlp.fc1.weight"
    v = out.values[name]
    assert v.dtype == "f16" and v.data.steps == ["q8_0", "f16"]
    src = tiny_graph.values[name].data
    f = np.asarray(src.store.array(src.key), np.float32)
    q8 = dequantize(quantize(f, "q8_0"), "q8_0", f.shape)
    np.testing.assert_array_equal(as_f32(v), q8.astype(np.float16).astype(np.float32))
    assert not np.array_equal(as_f32(v), f.astype(np.float16).astype(np.float32))
