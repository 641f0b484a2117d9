"""The Stable Diffusion commands as a user runs them: `example`, `compile --size`, `txt2img`, `img2img`, and `run` /
`bench` on a multi-function artifact, as real subprocesses (exit codes, one-line errors, PNG text chunks, JSON).

The tiny SD checkpoint is written and compiled (64x64) once per module; every test reuses the artifact.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.e2e.test_cli import sdc

W = H = 64
PROMPT = "a lighthouse at dusk, (oil painting:1.2)"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd_cli") / "tiny.safetensors"
    r = sdc("example", "--model", "sd-tiny", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "SD 1.x" in r.stdout and out.is_file()
    return out


@pytest.fixture(scope="module")
def compiled(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("sd_cli_art") / "art"
    r = sdc("compile", ckpt, "--target", "cpu", "--size", f"{W}x{H}", "-o", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


@pytest.fixture(scope="module")
def artifact(compiled):
    return compiled[0]


def test_compile_report(compiled):
    out, report = compiled
    assert f"for cpu, image sizes {W}x{H}" in report
    names = re.findall(r"^(?:functions)?\s+(\w+)\([^)]*\) -> ", report, re.M)
    assert names == ["encode_text", f"encode_image_{W}x{H}", f"denoise_{W}x{H}", f"decode_latents_{W}x{H}"], report
    assert f"denoise_{W}x{H}(x f32[2, 4, 8, 8], t f32[2], context f32[2, 77, 32]) -> eps f32[2, 4, 8, 8]" in report
    assert "encode_text(input_ids i32[2, 77]) -> last_hidden_state f32[2, 77, 32]" in report
    assert "assumed   VAE: scaling factor 0.18215" in report
    assert "ignored   none" in report  # the example checkpoint holds nothing that is left out
    assert "activations per function" in report and "peak" in report
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["pipeline"]["sizes"]) == [[W, H]]
    for name, f in m["memory"]["functions"].items():
        assert f"{name}" in report and f"in {f['slots']} slots" in report


def test_compile_report_groups_ignored_tensors():
    from pathlib import Path

    from sdcompile.report import render_compile_report

    ignored = {"model_ema.a": "EMA copy", "model_ema.b": "EMA copy", "model_ema.c": "EMA copy", "betas": "buffer"}
    m = {
        "source": {"file": "x", "format": "safetensors", "family": "sd", "convention": "ldm", "ignored": ignored},
        "target": "cpu",
        "functions": {},
        "report": {
            "quantize": {"types": {"f32": 1}},
            "fuse": {"nodes": 1, "fired": {}},
            "legalize": {"backend": "cpu", "native": 1, "fallbacks": [], "policy": "lossless"},
        },
        "memory": {
            "peak_bytes": 2,
            "weights_bytes": 1,
            "activation_bytes": 1,
            "slots": 1,
            "activation_bytes_without_reuse": 1,
            "input_bytes": 0,
        },
        "kernels": {"kernels": {}, "target": "cpu"},
        "files": {},
    }
    text = render_compile_report(m, Path("out"))
    assert "ignored   3 tensors: EMA copy (model_ema.a, model_ema.b, ...)" in text
    assert "          1 tensor: buffer (betas)" in text


def test_txt2img_writes_png_with_parameters(artifact, tmp_path):
    from runtime.pipelines.image import read_png, read_png_text

    png = tmp_path / "out.png"
    r = sdc("txt2img", artifact, "-p", PROMPT, "-n", "blurry", "--steps", "3", "--seed", "7", "-o", png, "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "s/step" in r.stderr  # the progress bar
    assert f"wrote {png}" in r.stdout and "seed 7" in r.stdout
    assert read_png(png).shape == (H, W, 3)
    params = read_png_text(png)["parameters"]
    assert params.startswith(PROMPT + "\nNegative prompt: blurry\n"), params
    for field in (
        "Steps: 3",
        "Sampler: Euler a",
        "CFG scale: 7.0",
        "Seed: 7",
        f"Size: {W}x{H}",
        "Model: tiny.safetensors",
    ):
        assert field in params, params


def test_json_latents_and_init_noise_match_the_python_api(artifact, tmp_path):
    """The CLI with --init-noise gives bit for bit the latents and image of the Python API with the same noise."""
    import runtime
    from runtime.pipelines.image import read_png
    from runtime.pipelines.sd import StableDiffusion

    noise = np.random.default_rng(11).standard_normal((1, 4, H // 8, W // 8)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    png, lat = tmp_path / "n.png", tmp_path / "lat.npy"
    r = sdc(
        "txt2img", artifact, "-p", PROMPT, "--steps", "4", "--seed", "5", "--init-noise", tmp_path / "noise.npy",
        "--save-latents", lat, "-o", png, "--json", "-t", "2", "--scheduler", "karras",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["image"] == str(png) and out["latents"] == str(lat) and out["seed"] == 5
    assert out["width"] == W and out["height"] == H and out["sampling_method"] == "euler_a"
    assert out["scheduler"] == "karras" and "Schedule type: Karras" in out["parameters"]
    t = out["timings"]
    assert t["steps"] == 4 and 0 < t["step_s"] <= t["denoise_s"] <= t["total_s"] and t["load_s"] > 0
    got = np.load(lat)
    assert got.shape == (1, 4, H // 8, W // 8) and got.dtype == np.float32

    model = runtime.load(artifact, num_threads=2)
    res = StableDiffusion(model).generate(
        PROMPT, steps=4, seed=5, scheduler="karras", width=W, height=H, init_noise=noise, method="euler_a"
    )
    np.testing.assert_array_equal(got, res.latents)
    np.testing.assert_array_equal(read_png(png), res.image)


def test_img2img_with_a_random_seed(artifact, tmp_path):
    from runtime.pipelines.image import read_png, read_png_text, write_png

    init = tmp_path / "in.png"
    write_png(init, (np.random.default_rng(3).random((H, W, 3)) * 255).astype(np.uint8))
    png = tmp_path / "i2i.png"
    r = sdc(
        "img2img", artifact, "-i", init, "-p", "a cat", "--strength", "0.5", "--steps", "6",
        "--sampling-method", "dpm++2m", "-o", png, "--json", "--seed", "-1", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "s/step" not in r.stderr  # --no-progress
    out = json.loads(r.stdout)
    assert isinstance(out["seed"], int) and out["seed"] >= 0  # -1: a random seed, reported
    assert out["timings"]["steps"] == 3 and out["strength"] == 0.5  # int(6 * 0.5) steps, as diffusers' img2img
    assert "encode_image_s" in out["timings"]
    assert read_png(png).shape == (H, W, 3)
    params = read_png_text(png)["parameters"]
    assert "Sampler: DPM++ 2M" in params and "Denoising strength: 0.5" in params and "Steps: 6" in params
    assert f"Seed: {out['seed']}," in params


def test_run_and_bench_name_a_function(artifact, tmp_path):
    ids = np.random.default_rng(0).integers(0, 49407, (2, 77)).astype(np.int32)
    np.save(tmp_path / "ids.npy", ids)
    r = sdc("run", artifact, "--input", f"input_ids={tmp_path / 'ids.npy'}", "--output", tmp_path / "o.npz")
    assert r.returncode == 2 and "--function" in r.stderr and "denoise_64x64" in r.stderr, r.stderr
    r = sdc(
        "run", artifact, "--function", "encode_text", "--input", f"input_ids={tmp_path / 'ids.npy'}",
        "--output", tmp_path / "o.npz",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "o.npz")["last_hidden_state"].shape == (2, 77, 32)
    r = sdc("bench", artifact, "--function", f"denoise_{W}x{H}", "--repeat", "2", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert b["function"] == f"denoise_{W}x{H}" and b["batch"] == 2 and 0 < b["min_ms"] <= b["max_ms"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["txt2img", "{art}", "-p", "x", "-W", "128", "-o", "{tmp}/o.png"],
            "compiled for image sizes 64x64, not 128x64",
        ),
        (["txt2img", "{tmp}/no_artifact", "-p", "x", "-o", "{tmp}/o.png"], "no such artifact"),
        (["txt2img", "{art}", "-p", "x", "-o", "{tmp}/missing/o.png"], "does not exist"),
        (["txt2img", "{art}", "-p", "x", "-o", "{tmp}"], "is a directory"),
        (["txt2img", "{art}", "-p", "x", "-o", "{tmp}/o.png", "--sampling-method", "nope"], "unknown sampling method"),
        (["txt2img", "{art}", "-p", "x", "-o", "{tmp}/o.png", "--scheduler", "nope"], "unknown scheduler"),
        (["txt2img", "{art}", "-o", "{tmp}/o.png"], "-p/--prompt"),  # argparse's own errors are one line too
        (["txt2img", "{art}", "-p", "x", "-o", "{tmp}/o.png", "--init-noise", "{tmp}/nothere.npy"], "nothere.npy"),
        (["img2img", "{art}", "-p", "x", "-i", "{tmp}/nothere.png", "-o", "{tmp}/o.png"], "nothere.png"),
        (["compile", "-o", "{tmp}/a"], "--diffusion-model"),
        (["compile", "{art}/manifest.json", "-o", "{tmp}/a", "--size", "60x64"], "multiples of 8"),
    ],
)
def test_user_errors_are_one_line(args, needle, artifact, tmp_path):
    args = [a.format(art=artifact, tmp=tmp_path) for a in args]
    r = sdc(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("sdcompile: error:") and r.stderr.strip().count("\n") == 0, r.stderr
    assert needle in r.stderr, r.stderr
    assert not (tmp_path / "o.png").exists()


def test_example_formats(tmp_path):
    r = sdc("example", "--model", "sd-tiny", "--format", "separate", "-o", tmp_path / "sep")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "sep").iterdir()} >= {
        "unet.safetensors",
        "vae.safetensors",
        "clip_l.safetensors",
    }
    assert "--diffusion-model" in r.stdout  # says how to compile the three files
    r = sdc("example", "--model", "sd-tiny", "--format", "gguf", "--dtype", "q8_0", "-o", tmp_path / "t.gguf")
    assert r.returncode == 0, r.stderr
    r = sdc("inspect", tmp_path / "t.gguf", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["family"] == "sd", r.stderr
    r = sdc("example", "--model", "sd-tiny", "--convention", "transformers", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "--convention" in r.stderr


def test_txt2img_names_the_missing_components(tmp_path):
    """An artifact compiled with --components that leave out what txt2img/img2img need is refused by name."""
    from sdcompile.cli import _sd_size
    from sdcompile.errors import OptionError

    m = {
        "pipeline": {"kind": "stable-diffusion", "sizes": [[64, 64]]},
        "functions": {"encode_text": {}, "denoise_64x64": {}, "decode_latents_64x64": {}},
    }
    assert _sd_size(tmp_path, m, None, None, img2img=False) == (64, 64)
    with pytest.raises(OptionError, match="compiled without vae_encoder; img2img needs"):
        _sd_size(tmp_path, m, None, None, img2img=True)
    del m["functions"]["denoise_64x64"]
    with pytest.raises(OptionError, match="compiled without unet; txt2img needs"):
        _sd_size(tmp_path, m, 64, 64, img2img=False)
