"""Shared fixtures: tiny CLIP text encoders with random weights, written in several conventions and formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdcompile import examples as ex


@pytest.fixture(scope="session")
def tiny_state() -> dict[str, np.ndarray]:
    return ex.clip_text_state(ex.TINY, seed=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_ldm_safetensors(model_dir: Path, tiny_state) -> Path:
    return ex.write_safetensors(
        model_dir / "tiny_ldm.safetensors",
        ex.rename(tiny_state, "ldm"),
        "f32",
        {"num_attention_heads": str(ex.TINY.heads)},
    )


@pytest.fixture(scope="session")
def tiny_gguf(model_dir: Path, tiny_state) -> Path:
    return ex.write_gguf(
        model_dir / "tiny_sdcpp.gguf", ex.rename(tiny_state, "ldm"), "f32", {"num_attention_heads": ex.TINY.heads}
    )


@pytest.fixture(scope="session")
def tiny_store(tiny_ldm_safetensors):
    from sdcompile.formats import open_store

    return open_store(tiny_ldm_safetensors)


@pytest.fixture()
def tiny_graph(tiny_store):
    from sdcompile.models import lift

    return lift(tiny_store)


@pytest.fixture(scope="session")
def tiny_ids() -> np.ndarray:
    return ex.example_ids(batch=2, positions=ex.TINY.positions, vocab=ex.TINY.vocab)
