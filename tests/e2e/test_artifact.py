"""The artifact: deterministic, hashed, atomic; the runtime loads it without compiler code and refuses bad devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdcompile.compiler import compile_model
from sdcompile.errors import MemoryBudgetError
from sdcompile.passes.context import CompileOptions

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cpu_artifact(tiny_ldm_safetensors, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "cpu_q8"
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu", type="q8_0"))
    return out


def test_manifest_contents(cpu_artifact):
    m = json.loads((cpu_artifact / "manifest.json").read_text())
    assert m["target"] == "cpu" and m["format_version"] == 3
    assert set(m["functions"]) == {"encode_text"}  # a text encoder is a module of one function
    assert m["source"]["family"] == "clip_text" and m["source"]["convention"] == "ldm"
    assert len(m["source"]["sha256"]) == 64
    assert {"weights.gguf"} <= set(m["files"])
    for rel, rec in m["files"].items():
        assert (cpu_artifact / rel).stat().st_size == rec["bytes"]
    assert m["memory"]["peak_bytes"] > m["memory"]["weights_bytes"] > 0
    assert m["report"]["quantize"]["types"]["q8_0"] == 13
    assert m["weights"]["tensors"]["text_encoder.encoder.layers.0.mlp.fc1.weight"]["dtype"] == "q8_0"
    # the weights file is a GGUF any tool reads
    import gguf

    r = gguf.GGUFReader(str(cpu_artifact / "weights.gguf"))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["text_encoder.encoder.layers.0.mlp.fc1.weight"] == "Q8_0"


def test_same_inputs_same_bytes(tiny_ldm_safetensors, cpu_artifact, tmp_path):
    again = tmp_path / "again"
    compile_model(tiny_ldm_safetensors, again, CompileOptions(target="cpu", type="q8_0"))
    a = json.loads((cpu_artifact / "manifest.json").read_text())["files"]
    b = json.loads((again / "manifest.json").read_text())["files"]
    assert a == b
    assert (cpu_artifact / "manifest.json").read_bytes() == (again / "manifest.json").read_bytes()


def test_format_independence_end_to_end(tiny_ldm_safetensors, tiny_gguf, tiny_ids, tmp_path):
    """Same weights from safetensors and GGUF: identical per-tensor types, identical weight bytes and outputs."""
    import runtime

    outs, arts = [], []
    for i, src in enumerate((tiny_ldm_safetensors, tiny_gguf)):
        out = tmp_path / f"a{i}"
        m = compile_model(src, out, CompileOptions(target="cpu", type="q4_1", tensor_type_rules=[("fc1", "q8_0")]))
        arts.append(m)
        outs.append(runtime.load(out).run({"input_ids": tiny_ids})["last_hidden_state"])
    assert arts[0]["source"]["format"] == "safetensors" and arts[1]["source"]["format"] == "gguf"
    assert arts[0]["weights"] == arts[1]["weights"]
    assert arts[0]["files"]["weights.gguf"] == arts[1]["files"]["weights.gguf"]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_runtime_runs_without_compiler(cpu_artifact, tiny_ids, tmp_path):
    np.save(tmp_path / "ids.npy", tiny_ids)
    code = f"""
import sys, builtins
real_import = builtins.__import__
def guard(name, *a, **k):
    if name == "sdcompile" or name.startswith("sdcompile."):
        raise ImportError("compiler import blocked: " + name)
    return real_import(name, *a, **k)
builtins.__import__ = guard
import numpy as np, runtime
m = runtime.load({str(cpu_artifact)!r})
out = m.run({{"input_ids": np.load({str(tmp_path / "ids.npy")!r})}})["last_hidden_state"]
assert not any(k == "sdcompile" or k.startswith("sdcompile.") for k in sys.modules), "compiler was imported"
print(out.shape)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(2, 77, 128)" in r.stdout


def test_tampered_artifact_refused(cpu_artifact, tmp_path):
    import shutil

    import runtime

    bad = tmp_path / "bad"
    shutil.copytree(cpu_artifact, bad)
    with open(bad / "weights.gguf", "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")
    with pytest.raises(runtime.RuntimeFailure, match="do not match the manifest"):
        runtime.load(bad)
    with pytest.raises(runtime.RuntimeFailure, match="not an sdcompile artifact"):
        runtime.load(tmp_path)


def test_failed_compile_leaves_existing_artifact(tiny_ldm_safetensors, cpu_artifact, tmp_path):
    import shutil

    out = tmp_path / "keep"
    shutil.copytree(cpu_artifact, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(MemoryBudgetError):
        compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu", memory_budget=1000))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keep")]


def test_batch_larger_than_compiled_runs_in_chunks(cpu_artifact, tiny_ids):
    import runtime

    m = runtime.load(cpu_artifact)
    three = np.concatenate([tiny_ids, tiny_ids[:1]])
    out = m.run({"input_ids": three})["last_hidden_state"]
    one = m.run({"input_ids": tiny_ids[:1]})["last_hidden_state"]
    assert out.shape == (3, 77, 128)
    np.testing.assert_allclose(out[2], one[0], rtol=0, atol=1e-6)
    with pytest.raises(runtime.RuntimeFailure, match="outside 0..999"):
        m.run({"input_ids": np.full((1, 77), 5000)})
    with pytest.raises(runtime.RuntimeFailure, match="expected \\[batch, 77\\]"):
        m.run({"input_ids": np.zeros((1, 10), np.int64)})
