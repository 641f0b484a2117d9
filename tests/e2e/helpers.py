"""Helpers for end-to-end tests: compile a weight file, load it with the runtime, and build the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile.compiler import compile_model
from sdcompile.examples import artifact_state  # noqa: F401  (re-exported for the tests)
from sdcompile.passes.context import CompileOptions


def vulkan_available() -> bool:
    try:
        from runtime.executors.vulkan import find_adapter

        return find_adapter() is not None
    except Exception:
        return False


# Every end-to-end test that runs a model runs it on the CPU and, where an adapter exists, on Vulkan.
TARGETS = [
    "cpu",
    pytest.param(
        "vulkan",
        marks=[
            pytest.mark.vulkan,
            pytest.mark.skipif(
                not vulkan_available(), reason="no Vulkan adapter (install mesa-vulkan-drivers for lavapipe)"
            ),
        ],
    ),
]


def compile_and_load(src: Path, out: Path, **opts):
    import runtime

    manifest = compile_model(src, out, CompileOptions(**opts))
    return manifest, runtime.load(out, num_threads=2)


def atol_against_decoded(target: str, types) -> float:
    """Tolerance of a compiled encoder against transformers on the artifact's decoded weights: 1e-4 for f32
    arithmetic; 5e-4 where the CPU's AMX path runs linears of one of ``types`` with activations quantized to 16
    bits per block (relative error ~2e-5 per matmul, sdcompile/kernels/linear_amx.py), which through the encoder's
    layers and layer norms reaches ~2e-4 at values ~2."""
    from sdcompile.codegen import tvm_layer
    from sdcompile.kernels import linear_amx

    amx = target == "cpu" and tvm_layer.host_amx() and any(t in linear_amx.TYPES for t in types)
    return 5e-4 if amx else 1e-4


def reference(state: dict[str, np.ndarray], ids: np.ndarray, shape=ex.TINY) -> np.ndarray:
    return ex.transformers_hidden(ex.transformers_clip(state, shape), ids)


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they import their siblings as top-level modules, and their dataclasses
    look their module up in sys.modules), for tests of the parts that measure nothing."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench))
    return mod
