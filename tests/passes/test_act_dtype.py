"""act_dtype: activations inside a function stored in f16/bf16, the signature and everything viewing it kept f32;
numbers against the unmodified graph (the interpreter rounds each value to its dtype, as kernels store); the
target's validated storage types; and the plan and kernels it leads to (half the activation bytes, ``dt`` codes)."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen.plan import node_spec
from sdcompile.errors import OptionError
from sdcompile.ir import Graph, interpret, verify
from sdcompile.ir.graph import WeightData
from sdcompile.passes import act_dtype, memory_plan
from sdcompile.passes.context import CompileOptions, PassContext


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from safetensors.numpy import save_file

    from sdcompile.formats.safetensors import SafetensorsStore

    rng = np.random.default_rng(0)
    shapes = {"gn.w": (32,), "gn.b": (32,), "fc.w": (48, 32)}
    path = tmp_path_factory.mktemp("act") / "w.safetensors"
    save_file({k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes.items()}, str(path))
    return SafetensorsStore(path)


def _graph(store) -> Graph:
    """x -> silu -> reshape (a view) -> group_norm -> linear -> output; and a second output that is a view of an
    internal value (so that value must stay f32 too)."""
    g = Graph(meta={})

    def weight(name, shape):
        return g.add_weight(name, shape, "f32", "unet", WeightData(store, name, "f32"))

    x = g.add_input("x", (2, 4, 4, 32), "float32", "unet")
    a = g.add_node("silu", [x], "a", (2, 4, 4, 32), "unet")
    r = g.add_node("reshape", [a], "r", (2, 16, 32), "unet", to=(2, 16, 32))
    gn = g.add_node(
        "group_norm", [r, weight("gn.w", (32,)), weight("gn.b", (32,))], "gn", (2, 16, 32), "unet", groups=8, eps=1e-5
    )
    y = g.add_node("linear", [gn, weight("fc.w", (48, 32))], "y", (2, 16, 48), "unet")
    b = g.add_node("gelu", [y], "b", (2, 16, 48), "unet")
    bv = g.add_node("reshape", [b], "bv", (32, 48), "unet", to=(32, 48))
    g.outputs += [y, bv]
    verify(g)
    return g


def _run(g: Graph, act: str, target: str = "cpu") -> tuple[Graph, PassContext]:
    ctx = PassContext(CompileOptions(target=target, act_type=act))
    out = act_dtype.run(g, ctx)
    verify(out, "act_dtype")
    return out, ctx


@pytest.mark.parametrize("act,dtype", [("f16", "float16"), ("bf16", "bfloat16")])
def test_internal_values_take_the_storage_type(store, act, dtype):
    g = _graph(store)
    h, ctx = _run(g, act)
    types = {k: v.dtype for k, v in h.values.items()}
    assert types["a"] == types["r"] == types["gn"] == dtype  # inside, including the view r of a
    assert types["y"] == "float32"  # an output
    assert types["b"] == types["bv"] == "float32"  # b is viewed by the output bv: same bytes, same dtype
    assert types["x"] == "float32" and types["fc.w"] == "f32"  # inputs and weights untouched
    assert g.values["a"].dtype == "float32"  # the pass copies; the input graph is unchanged
    assert ctx.report["act_dtype"] == {"dtype": dtype, "values": 3, "kept_f32": 3}
    # numbers: the interpreter rounds 16-bit values as kernels store them; the error is that rounding, carried on
    x = np.random.default_rng(1).standard_normal((2, 4, 4, 32)).astype(np.float32)
    want, got = interpret.run(g, {"x": x}), interpret.run(h, {"x": x})
    half_ulp = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    for k in ("y", "bv"):
        err = np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()
        assert 0 < err < 40 * half_ulp, (k, err)


def test_f32_does_not_fire(store):
    g = _graph(store)
    h, ctx = _run(g, "f32")
    assert h is g and "act_dtype" not in ctx.report


def test_function_whose_values_overflow_f16_keeps_f32_and_says_so(store):
    """SDXL's VAE (the lifter marks it) keeps f32 under f16, reported; bf16 has f32's range and still applies."""
    g = _graph(store)
    g.meta.update(function="decode_latents", act_f16_overflows="values pass f16's range")
    h, ctx = _run(g, "f16")
    assert h is g and all(v.dtype == "float32" for v in h.values.values() if v.kind == "activation")
    assert ctx.report["act_dtype"]["functions_kept_f32"] == {"decode_latents": "values pass f16's range"}
    h, _ = _run(g, "bf16")
    assert h.values["gn"].dtype == "bfloat16"


def test_target_without_the_storage_type_is_refused(store):
    with pytest.raises(
        OptionError,
        match=r"--act-type bf16: the vulkan backend has no kernels for bf16 activations \(its kernel check: 4 of 4 cases failed.*choose one of f32, f16",
    ):
        _run(_graph(store), "bf16", "vulkan")
    h, _ = _run(_graph(store), "f16", "vulkan")
    assert h.values["gn"].dtype == "float16"
    with pytest.raises(OptionError, match="unknown --act-type"):
        _run(_graph(store), "f8")


def test_plan_halves_the_activations_and_kernels_take_the_dtypes(store):
    g = _graph(store)
    h, _ = _run(g, "f16")
    assert memory_plan.value_bytes(h, "gn") * 2 == memory_plan.value_bytes(g, "gn")
    by_out = {n.outputs[0]: n for n in h.nodes}
    assert node_spec(h, by_out["a"]).attr("dt") == "fh"  # f32 input -> f16
    assert node_spec(h, by_out["gn"]).attr("dt") == "hh"
    assert node_spec(h, by_out["y"]).attr("dt") == "hf"  # f16 -> f32 output
    assert node_spec(g, {n.outputs[0]: n for n in g.nodes}["y"]).attr("dt") is None  # f32 kernels keep their names
