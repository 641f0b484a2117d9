"""A numpy interpreter of the IR: the reference that pass tests compare graphs with, before and after a pass.

It computes in float64 from the weights' storage values, so it checks what a pass did to the graph, not rounding.
Each op's numpy reference lives in the op registry (``sdcompile/ir/ops.py``).
"""

from __future__ import annotations

import ml_dtypes  # noqa: F401  (numpy learns "bfloat16")
import numpy as np

from sdcompile.ir.graph import Graph
from sdcompile.ir.ops import get
from sdcompile.ir.weights import as_f32


def run(g: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    env: dict[str, np.ndarray] = {}
    for k in g.inputs:
        a = np.asarray(inputs[k])
        env[k] = a.astype(np.float64) if a.dtype.kind == "f" else a
    for v in g.weights():
        env[v.name] = as_f32(v).astype(np.float64)
    for n in g.nodes:
        d = get(n.op)
        out = d.reference([env[i] for i in n.inputs], n.attrs)
        for name, value in zip(n.outputs, out if d.multi else [out]):
            dtype = g.values[name].dtype
            # A value stored in 16 bits holds what that type can: round as the kernels round when they store.
            env[name] = value.astype(dtype).astype(np.float64) if dtype in ("float16", "bfloat16") else value
    return {o: env[o] for o in g.outputs}
