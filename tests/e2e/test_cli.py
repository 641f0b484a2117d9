"""The `sdcompile` command: real subprocesses, exit codes, one-line errors without tracebacks, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def sdc(*args, env=None, timeout=600):
    import os

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sdcompile.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
    )


@pytest.fixture(scope="module")
def cli_artifact(tiny_ldm_safetensors, tmp_path_factory) -> Path:
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions

    out = tmp_path_factory.mktemp("cli") / "art"
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu"))
    return out


def test_help_and_version():
    r = sdc("--help")
    assert r.returncode == 0 and "compile" in r.stdout and "inspect" in r.stdout
    assert sdc("--version").stdout.startswith("sdcompile ")
    assert sdc("compile").returncode == 2  # argparse: missing arguments


def test_inspect_json(tiny_ldm_safetensors):
    r = sdc("inspect", tiny_ldm_safetensors, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "safetensors" and info["family"] == "clip_text"
    assert info["components"]["text_encoder"]["tensors"] == 2 + 2 * 16 + 2
    assert info["model"]["heads"] == 2 and info["model"]["layers"] == 2
    assert info["memory_estimate"]["peak_bytes"] > info["memory_estimate"]["weights_bytes"]
    r = sdc("inspect", tiny_ldm_safetensors)
    assert "text_encoder" in r.stdout and "clip_text" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["inspect", "README.md"], "README.md"),
        (["inspect", "no/such/file.gguf"], "file.gguf"),
        (["compile", "{model}", "-o", "{tmp}/x", "--type", "q9_9"], "unknown quant type"),
        (["compile", "{model}", "-o", "{tmp}/x", "--memory-budget", "10KiB"], "exceeds the budget"),
        (["compile", "{model}", "-o", "{tmp}/x", "--tensor-type-rules", "fc1"], "regex=type"),
        (["compile", "{model}", "-o", "{tmp}/x", "--target", "cuda", "--cuda-arch", "sm_52"], "sm_52"),
        (["run", "{tmp}", "--input", "input_ids=x.npy", "--output", "{tmp}/o.npz"], "not an sdcompile artifact"),
        (["run", "{art}", "--input", "input_ids=nothere.npy", "--output", "{tmp}/o.npz"], "nothere.npy"),
        (["run", "{art}", "--input", "input_ids", "--output", "{tmp}/o.npz"], "NAME=FILE.npy"),
    ],
)
def test_user_errors_are_one_line(args, needle, tiny_ldm_safetensors, cli_artifact, tmp_path):
    args = [a.format(model=tiny_ldm_safetensors, tmp=tmp_path, art=cli_artifact) for a in args]
    r = sdc(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("sdcompile: error:") and needle in r.stderr, r.stderr


def test_compile_run_bench(tiny_ldm_safetensors, tiny_ids, tmp_path):
    out = tmp_path / "art"
    r = sdc("compile", tiny_ldm_safetensors, "--target", "cpu", "--type", "q8_0", "-o", out)
    assert r.returncode == 0, r.stderr
    for needle in ("legalize", "memory", "peak", "q8_0"):
        assert needle in r.stdout
    np.save(tmp_path / "ids.npy", tiny_ids)
    r = sdc("run", out, "--input", f"input_ids={tmp_path / 'ids.npy'}", "--output", tmp_path / "o.npz")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "o.npz")["last_hidden_state"].shape == (2, 77, 128)
    r = sdc("bench", out, "--repeat", "3", "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert 0 < b["min_ms"] <= b["median_ms"] <= b["max_ms"]


def test_cuda_artifact_refused_on_too_old_device(tiny_ldm_safetensors, tiny_ids, tmp_path):
    """Compile for CUDA (nvcc, no GPU needed), then load on a simulated GTX 970 (sm_52): a clear refusal."""
    import shutil

    if not shutil.which("nvcc"):
        pytest.skip("nvcc not installed")
    out = tmp_path / "cuda"
    r = sdc("compile", tiny_ldm_safetensors, "--target", "cuda", "--cuda-arch", "sm_75,sm_86", "-o", out)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["kernels"]["build"]["archs"] == ["sm_75", "sm_86"]
    from sdcompile.codegen.cuda_build import list_fatbin

    held = list_fatbin(out / m["kernels"]["build"]["file"])  # cuobjdump on the artifact's own fatbin
    assert held["elf"] == ["sm_75", "sm_86"] and held["ptx"] == ["compute_86"]
    np.save(tmp_path / "ids.npy", tiny_ids)
    r = sdc(
        "run",
        out,
        "--input",
        f"input_ids={tmp_path / 'ids.npy'}",
        "--output",
        tmp_path / "o.npz",
        env={"SDCOMPILE_SIMULATE_CUDA_DEVICE": "GeForce GTX 970:5.2:4"},
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "5.2" in r.stderr and "sm_75" in r.stderr and "sm_86" in r.stderr, r.stderr


def test_example_clip_keeps_its_old_options(tmp_path):
    """`example --size tiny` (the CLIP example's older spelling) still writes the CLIP text encoder."""
    out = tmp_path / "clip.safetensors"
    r = sdc("example", "--size", "tiny", "--convention", "transformers", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "CLIP text encoder" in r.stdout
    info = json.loads(sdc("inspect", out, "--json").stdout)
    assert info["family"] == "clip_text" and info["model"]["width"] == 128
    r = sdc("example", "--size", "tiny", "--model", "sd-tiny", "-o", out)
    assert r.returncode == 2 and r.stderr.startswith("sdcompile: error:") and "--model" in r.stderr


def test_argument_errors_are_one_line():
    r = sdc("compile", "--target", "tpu", "-o", "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("sdcompile: error: argument --target") and r.stderr.strip().count("\n") == 0
    assert "sdcompile compile --help" in r.stderr


def test_output_problems_are_found_before_compiling(tiny_ldm_safetensors, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    r = sdc("compile", str(tiny_ldm_safetensors), "-o", str(f))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "a file of that name exists" in r.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = sdc("compile", str(tiny_ldm_safetensors), "-o", str(busy))
    assert r.returncode == 2 and "not an sdcompile artifact" in r.stderr and (busy / "notes.txt").exists()
    r = sdc("compile", str(tiny_ldm_safetensors), "-o", str(tmp_path / "missing" / "art"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_example_gguf_in_every_type_sdcompile_quantizes(tmp_path):
    """Every type sdcompile's own quantizers write (k-quants and iq4 included, which the gguf package cannot); rows
    that do not fill a type's blocks stay f16, as llama.cpp's quantizer does."""
    from sdcompile.formats import open_store
    from sdcompile.quant.reference import QUANTIZABLE

    for t in [t for t in QUANTIZABLE if t not in ("f32", "f16", "bf16")]:
        out = tmp_path / f"clip_{t}.gguf"
        r = sdc("example", "--model", "clip-tiny", "--format", "gguf", "--dtype", t, "-o", str(out))
        assert r.returncode == 0, (t, r.stderr)
        types = {i.dtype for i in open_store(out).infos()}
        assert t in types and types <= {t, "f16", "f32"}, (t, types)
