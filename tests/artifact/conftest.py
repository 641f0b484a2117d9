"""A small compiled artifact (the tiny CLIP text encoder on the CPU) and a way to edit copies of its manifest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.manifest import manifest_digest
from sdcompile.compiler import compile_model
from sdcompile.passes.context import CompileOptions


@pytest.fixture(scope="session")
def clip_artifact(tiny_ldm_safetensors, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "clip"
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu"))
    return out


def edit_manifest(src: Path, dst: Path, edit: Callable[[dict], object], reseal: bool) -> Path:
    """Copy artifact ``src`` to ``dst`` and apply ``edit`` to its manifest. ``reseal``: recompute the digest after
    the edit, as anyone can (it is not a signature), so that the other checks are tested on their own."""
    if not dst.exists():
        shutil.copytree(src, dst, symlinks=True)
    mf = dst / "manifest.json"
    m = json.loads(mf.read_text())
    edit(m)
    if reseal:
        m["digest"] = {"sha256": manifest_digest(m)}
    mf.write_text(json.dumps(m, indent=1))
    return dst
