"""Helpers for end-to-end tests: compile a weight file, load it with the runtime, and build the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdcompile import examples as ex
from sdcompile.compiler import compile_model
from sdcompile.examples import artifact_state  # noqa: F401  (re-exported for the tests)
from sdcompile.passes.context import CompileOptions


def compile_and_load(src: Path, out: Path, **opts):
    import runtime

    manifest = compile_model(src, out, CompileOptions(**opts))
    return manifest, runtime.load(out, num_threads=2)


def reference(state: dict[str, np.ndarray], ids: np.ndarray, shape=ex.TINY) -> np.ndarray:
    return ex.transformers_hidden(ex.transformers_clip(state, shape), ids)
