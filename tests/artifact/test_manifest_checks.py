"""Edits to manifest.json alone must be refused at load, before anything runs, with the runtime's error type.

Each edit the trust issue found an artifact accepting (a kernel library from outside the artifact, a step on the
wrong kernel, a changed output shape, the last step removed, ``files`` emptied) is tried twice: with the digest
left as compiled (the digest refuses it) and with the digest recomputed, as anyone can, so that the path and plan
checks are shown to refuse it on their own.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.errors import ManifestError, RuntimeFailure
from runtime.manifest import manifest_digest
from tests.artifact.conftest import edit_manifest

RESEAL = [pytest.param(False, id="digest-as-compiled"), pytest.param(True, id="digest-recomputed")]


def _load(path: Path, ids=None):
    """Load, and run once when loading passes: an edit that is not refused must not change the result either."""
    m = runtime.load(path)
    return m.run({"input_ids": ids if ids is not None else np.zeros((1, 77), np.int64)})


def _refused(path: Path, reseal: bool, match: str) -> None:
    with pytest.raises(ManifestError, match="does not match its digest" if not reseal else match):
        _load(path)


def test_compiled_artifact_passes_every_check(clip_artifact, tiny_ids):
    m = json.loads((clip_artifact / "manifest.json").read_text())
    assert m["format_version"] == 3 and m["digest"]["sha256"] == manifest_digest(m)
    assert "signature" not in m
    out = runtime.load(clip_artifact).run({"input_ids": tiny_ids})["last_hidden_state"]
    assert out.shape == (2, 77, 128) and np.isfinite(out).all()


# --- the digest -------------------------------------------------------------------------------------------------


def test_any_edit_breaks_the_digest(clip_artifact, tmp_path):
    # a field no check reads: only the digest notices
    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: m["source"].update(file="other.safetensors"), False)
    with pytest.raises(ManifestError, match="does not match its digest: it was edited"):
        runtime.load(bad)
    ok = edit_manifest(clip_artifact, tmp_path / "b", lambda m: m["source"].update(file="other.safetensors"), True)
    runtime.load(ok)  # the recomputed digest is accepted: the digest stops accidents, a signature stops attackers


def test_missing_digest_and_old_format_refused(clip_artifact, tmp_path):
    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: m.pop("digest"), False)
    with pytest.raises(ManifestError, match="carries no digest"):
        runtime.load(bad)
    old = edit_manifest(clip_artifact, tmp_path / "b", lambda m: m.update(format_version=2), True)
    with pytest.raises(RuntimeFailure, match="version 2 is not supported .* recompile"):
        runtime.load(old)


# --- paths --------------------------------------------------------------------------------------------------------


def _point_kernels_at(m: dict, rel: str) -> None:
    m["kernels"]["files"] = [rel]
    for k in m["kernels"]["kernels"].values():
        for e in k["launch"]:
            e["file"] = rel


@pytest.mark.parametrize("reseal", RESEAL)
def test_kernel_library_from_an_absolute_path_refused(clip_artifact, tmp_path, reseal):
    outside = tmp_path / "outside" / "kernels_cpu.so"
    outside.parent.mkdir()
    shutil.copyfile(clip_artifact / "kernels_cpu.so", outside)  # a library that would load and run
    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: _point_kernels_at(m, str(outside)), reseal)
    _refused(bad, reseal, "must be a relative path inside it")


@pytest.mark.parametrize("reseal", RESEAL)
def test_kernel_library_through_dotdot_refused(clip_artifact, tmp_path, reseal):
    outside = tmp_path / "outside" / "kernels_cpu.so"
    outside.parent.mkdir()
    shutil.copyfile(clip_artifact / "kernels_cpu.so", outside)
    bad = edit_manifest(
        clip_artifact, tmp_path / "a", lambda m: _point_kernels_at(m, "../outside/kernels_cpu.so"), reseal
    )
    _refused(bad, reseal, "must be a relative path inside it, without '..'")


@pytest.mark.parametrize("reseal", RESEAL)
def test_symlink_out_of_the_artifact_refused(clip_artifact, tmp_path, reseal):
    """A listed file that is a symlink to a library outside, with that library's true hash in ``files``."""
    outside = tmp_path / "outside.so"
    shutil.copyfile(clip_artifact / "kernels_cpu.so", outside)
    dst = tmp_path / "a"
    shutil.copytree(clip_artifact, dst)
    os.symlink(outside, dst / "lib.so")
    rec = json.loads((clip_artifact / "manifest.json").read_text())["files"]["kernels_cpu.so"]

    def edit(m):
        _point_kernels_at(m, "lib.so")
        m["files"]["lib.so"] = dict(rec)

    edit_manifest(clip_artifact, dst, edit, reseal)
    _refused(dst, reseal, "leads outside the artifact directory")


@pytest.mark.parametrize("reseal", RESEAL)
def test_files_emptied_refused(clip_artifact, tmp_path, reseal):
    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: m.update(files={}), reseal)
    _refused(bad, reseal, "not listed under files")


@pytest.mark.parametrize("reseal", RESEAL)
def test_weights_file_not_listed_refused(clip_artifact, tmp_path, reseal):
    dst = tmp_path / "a"
    shutil.copytree(clip_artifact, dst)
    shutil.copyfile(dst / "weights.gguf", dst / "other.gguf")  # unlisted, so never hashed
    bad = edit_manifest(clip_artifact, dst, lambda m: m["weights"].update(file="other.gguf"), reseal)
    _refused(bad, reseal, "weights.file names 'other.gguf', which is not listed under files")


# --- the plan ---------------------------------------------------------------------------------------------------


def _steps(m: dict) -> list[dict]:
    return m["functions"]["encode_text"]["steps"]


@pytest.mark.parametrize("reseal", RESEAL)
def test_step_on_the_wrong_kernel_refused(clip_artifact, tmp_path, reseal):
    """The first linear step pointed at each other kernel in turn. Kernels whose parameters are the same in every
    respect (the same shapes, an activation apart) cannot be told apart by the plan: the digest and a signature
    refuse those."""
    m0 = json.loads((clip_artifact / "manifest.json").read_text())
    kernels = m0["kernels"]["kernels"]
    i = next(i for i, s in enumerate(_steps(m0)) if s["kernel"].startswith("linear_"))
    right = _steps(m0)[i]["kernel"]
    tried = 0
    for name in sorted(kernels):
        if kernels[name]["params"] == kernels[right]["params"]:
            continue
        bad = edit_manifest(clip_artifact, tmp_path / name, lambda m, n=name: _steps(m)[i].update(kernel=n), reseal)
        _refused(bad, reseal, f"step {i} \\({name}\\)")
        tried += 1
    assert tried >= 4


@pytest.mark.parametrize("reseal", RESEAL)
@pytest.mark.parametrize("shape", [[1, 77, 64], [1, 77, 256], [1, 128, 77], [77, 128, 1]])
def test_changed_output_shape_refused(clip_artifact, tmp_path, reseal, shape):
    def edit(m):
        m["functions"]["encode_text"]["outputs"]["last_hidden_state"]["shape"] = shape

    bad = edit_manifest(clip_artifact, tmp_path / "a", edit, reseal)
    _refused(bad, reseal, "last_hidden_state")


@pytest.mark.parametrize("reseal", RESEAL)
def test_last_step_removed_refused(clip_artifact, tmp_path, reseal):
    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: _steps(m).pop(), reseal)
    _refused(bad, reseal, "output 'last_hidden_state' is not written \\(whole\\) by any step")


@pytest.mark.parametrize("reseal", RESEAL)
def test_first_step_removed_refused(clip_artifact, tmp_path, reseal):
    # the embedding's slot is then read before anything wrote it
    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: _steps(m).pop(0), reseal)
    _refused(bad, reseal, "reads slot 0 before any step of the function writes it")


EDITS = {
    "slot out of range": (lambda m: _steps(m)[0]["args"][-1].update(slot=99), "slot 99; the function has"),
    "unknown input": (lambda m: _steps(m)[0]["args"][0].update(input="nope"), "input 'nope'"),
    "write into an input": (
        lambda m: _steps(m)[0]["args"].__setitem__(-1, {"input": "input_ids"}),
        "would write into input|is float32 but input",
    ),
    "unknown weight": (lambda m: _steps(m)[0]["args"][1].update(weight="nope"), "weight 'nope'"),
    "argument dropped": (lambda m: _steps(m)[0]["args"].pop(), "passes 3 arguments to a kernel of 4"),
    "slot shrunk": (lambda m: m["functions"]["encode_text"]["slots"].__setitem__(0, 256), "covers bytes 0..39424"),
    "view past the slot": (lambda m: _steps(m)[0]["args"][-1].update(offset=1 << 20), "covers bytes"),
    "weight dtype changed": (
        lambda m: next(iter(m["weights"]["tensors"].values())).update(dtype="q8_0"),
        "reads weight .* but it is q8_0",
    ),
    "no steps": (lambda m: m["functions"]["encode_text"].update(steps=[]), "steps is empty"),
    "kernel entry missing": (lambda m: next(iter(m["kernels"]["kernels"].values())).pop("launch"), "launch is missing"),
    "weights table a list": (lambda m: m["weights"].update(tensors=[]), "weights.tensors is a list"),
    "peak memory a string": (lambda m: m["memory"].update(peak_bytes="1"), "memory.peak_bytes"),
    "unknown target": (lambda m: m.update(target="tpu"), "target is 'tpu'"),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_inconsistent_plan_refused_on_its_own(clip_artifact, tmp_path, what):
    edit, match = EDITS[what]
    bad = edit_manifest(clip_artifact, tmp_path / "a", edit, reseal=True)
    with pytest.raises(ManifestError, match=match):
        _load(bad)


def test_checks_hold_without_file_hashes(clip_artifact, tmp_path):
    """``verify=False`` (a hand-edited manifest while debugging) skips the digest and hashes, not paths or plan."""
    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: _point_kernels_at(m, "/x/kernels_cpu.so"), False)
    with pytest.raises(ManifestError, match="relative path inside"):
        runtime.load(bad, verify=False)
    bad = edit_manifest(clip_artifact, tmp_path / "b", lambda m: _steps(m).pop(), False)
    with pytest.raises(ManifestError, match="not written"):
        runtime.load(bad, verify=False)


def test_read_manifest_checks_before_the_cli_uses_it(clip_artifact, tmp_path):
    from runtime.model import read_manifest

    bad = edit_manifest(clip_artifact, tmp_path / "a", lambda m: m.update(functions=[]), True)
    with pytest.raises(ManifestError, match="functions is a list"):
        read_manifest(bad)


def test_cpu_without_the_compiled_instructions_refused(clip_artifact, tmp_path):
    """The manifest names the CPU features its code was compiled with (as Linux's cpuinfo names them); a CPU that
    lacks one is refused by name before any kernel is loaded, instead of an illegal instruction mid-run."""
    from runtime.executors.cpu import cpu_flags

    m = json.loads((clip_artifact / "manifest.json").read_text())
    need = m["kernels"]["cpu"]["requires"]
    have = cpu_flags()
    if have is None:
        pytest.skip("this system has no /proc/cpuinfo")
    assert need and set(need) <= have  # compiled here, for this CPU: it has them all
    assert ("avx512f" in need) == ("avx512f" in have)  # LLVM compiled for the host's vector width, and says so
    bad = edit_manifest(
        clip_artifact, tmp_path / "cpu", lambda m: m["kernels"]["cpu"]["requires"].append("amx_fp8"), True
    )
    with pytest.raises(RuntimeFailure, match=r"compiled for a CPU with amx_fp8 .*this CPU lacks them"):
        _load(bad)
