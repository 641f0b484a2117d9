"""The typed graph IR.

A `Value` has a canonical name, a shape of any rank, a dtype and a kind (input, weight, activation). Weights carry a
dtype that is either a plain float type or a ggml quant type name (storage type); activations are float32 or
float16 (token ids int32 or int64). A `Node` applies an op to values and is tagged with the model component it belongs to (text_encoder, unet,
vae, ...). Nodes are kept in a valid execution order. Weight data stays lazy: a `WeightData` says where the bytes
come from and which conversion the passes asked for; nothing is read until the artifact is written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

ACT_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 4}  # bytes per element of each


@dataclass
class WeightData:
    """Where a weight's bytes come from: a tensor in a TensorStore plus an optional transform of its f32 values."""

    store: Any  # sdcompile.formats.TensorStore (kept untyped to avoid an import cycle)
    key: str  # the tensor's name inside the store
    source_dtype: str  # its stored type in the file ("f16", "q4_0", ...)
    # Why the dtype changed, for the report ("quantize: rule 'attn=q8_0'", "legalize: repack tq1_0 -> tq2_0", ...).
    history: list[str] = field(default_factory=list)
    # The storage types the passes chose, in order; materializing replays them, so a weight quantized to q4_k and
    # then dequantized to f16 by legalization holds q4_k's values, as the report says.
    steps: list[str] = field(default_factory=list)
    # A derived weight (``sdcompile/ir/derived.py``): its values are this expression of stored tensors, evaluated
    # in f32 when the artifact is written; ``key`` then names its first source, for reports.
    expr: Any = None
    # The order the bytes are stored in (``kernels/layouts.py``; "" row-major), chosen for the kernel that reads them
    # (``passes/pack_weights.py``): the writer packs the values last, after every step of ``steps``.
    layout: str = ""

    def convert(self, to: str, why: str) -> None:
        self.history.append(why)
        self.steps.append(to)


@dataclass
class Value:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "input" | "weight" | "activation"
    component: str = ""
    data: WeightData | None = None  # weights only


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    component: str = ""


@dataclass
class Graph:
    values: dict[str, Value] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # model family, hyperparameters, source file

    # -- building -----------------------------------------------------------------------------------------------
    def add_input(self, name: str, shape: tuple[int, ...], dtype: str, component: str) -> str:
        self.values[name] = Value(name, tuple(shape), dtype, "input", component)
        self.inputs.append(name)
        return name

    def add_weight(self, name: str, shape: tuple[int, ...], dtype: str, component: str, data: WeightData) -> str:
        self.values[name] = Value(name, tuple(shape), dtype, "weight", component, data)
        return name

    def add_node(
        self,
        op: str,
        inputs: list[str],
        out: str,
        shape: tuple[int, ...],
        component: str,
        dtype: str = "float32",
        **attrs: Any,
    ) -> str:
        self.values[out] = Value(out, tuple(shape), dtype, "activation", component)
        self.nodes.append(Node(op, list(inputs), [out], dict(attrs), component))
        return out

    def add_node_multi(
        self, op: str, inputs: list[str], outs: list[tuple[str, tuple[int, ...]]], component: str, **attrs: Any
    ) -> list[str]:
        """A node with several outputs (``split``): ``outs`` are (name, shape) pairs, all float32."""
        for name, shape in outs:
            self.values[name] = Value(name, tuple(shape), "float32", "activation", component)
        self.nodes.append(Node(op, list(inputs), [n for n, _ in outs], dict(attrs), component))
        return [n for n, _ in outs]

    # -- queries ------------------------------------------------------------------------------------------------
    def weights(self) -> list[Value]:
        return [v for v in self.values.values() if v.kind == "weight"]

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        uses: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                uses.setdefault(i, []).append(n)
        return uses

    def copy(self) -> Graph:
        """A deep copy of the structure that shares the (read-only) tensor stores."""
        stores = {id(v.data.store): v.data.store for v in self.values.values() if v.data is not None}
        memo = {k: s for k, s in stores.items()}
        return copy.deepcopy(self, memo)

    def prune(self) -> None:
        """Drop values no node or graph output refers to (after a rewrite removed their users)."""
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(n.inputs)
            used.update(n.outputs)
        for name in [k for k in self.values if k not in used]:
            del self.values[name]

    def __str__(self) -> str:
        from sdcompile.ir.printer import format_graph

        return format_graph(self)


@dataclass
class Module:
    """Several functions (each a `Graph` with its own inputs and outputs) sharing one weight pool: a weight with the
    same canonical name is the same tensor in every function that reads it. SD: ``encode_text``, ``denoise``,
    ``decode_latents``, ``encode_image``; an LLM will add ``prefill`` and ``decode`` with runtime-owned state."""

    functions: dict[str, Graph] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def weights(self) -> dict[str, Value]:
        """Every weight of every function, by name (functions hold copies; passes keep them identical)."""
        out: dict[str, Value] = {}
        for f in self.functions.values():
            for v in f.weights():
                out.setdefault(v.name, v)
        return out
