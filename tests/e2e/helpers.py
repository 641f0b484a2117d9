"""Helpers for end-to-end tests: compile a weight file, load it with the runtime, and build the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdcompile import examples as ex
from sdcompile.compiler import compile_model
from sdcompile.formats import open_store
from sdcompile.passes.context import CompileOptions
from sdcompile.quant.reference import dequantize


def compile_and_load(src: Path, out: Path, **opts):
    import runtime

    manifest = compile_model(src, out, CompileOptions(**opts))
    return manifest, runtime.load(out, num_threads=2)


def artifact_state(out: Path) -> dict[str, np.ndarray]:
    """The weights the artifact will compute with (its stored types decoded to f32), under transformers-5 names."""
    store = open_store(out / "weights.gguf")
    state = {}
    for t in store.infos():
        arr = dequantize(np.asarray(store.raw(t.name)), t.dtype, t.shape)
        state[t.name.removeprefix("text_encoder.")] = arr
    return state


def reference(state: dict[str, np.ndarray], ids: np.ndarray, shape=ex.TINY) -> np.ndarray:
    return ex.transformers_hidden(ex.transformers_clip(state, shape), ids)
