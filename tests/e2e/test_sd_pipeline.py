"""A tiny SD 1.x checkpoint compiled for the CPU, each function and the whole txt2img/img2img pipeline against
diffusers (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, StableDiffusionPipeline) on the same weights.

Tolerances: the compiled functions run in f32 like the reference, differing only in summation order and the
kernels' exp/erf approximations; at this size that is ~1e-6 of values of O(1), bounded here by 2e-5 relative to
each output's largest magnitude. A whole pipeline compounds that over its steps: latents within 1e-4 relative, the
8-bit image within one level (a value may round the other way).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.sd_helpers import SHAPE, SIZE, compile_sd, diffusers_pipeline, diffusers_txt2img, state

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
R = pytest.importorskip("tests.sd_reference")

W, H = SIZE
H8, W8 = H // 8, W // 8


@pytest.fixture(scope="module")
def st():
    return state()


@pytest.fixture(scope="module")
def ckpt(st, tmp_path_factory):
    from sdcompile import examples_sd as E

    return E.write_sd(tmp_path_factory.mktemp("sd") / "tiny.safetensors", SHAPE, 0, "safetensors", state=st)


@pytest.fixture(scope="module")
def model(ckpt, tmp_path_factory):
    import runtime

    out = tmp_path_factory.mktemp("art") / "sd_cpu"
    compile_sd(ckpt, out, target="cpu")
    return runtime.load(out, num_threads=2)


def _close(got, want, rel=2e-5):
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * max(scale, 1e-6))


def test_functions_and_signatures(model):
    fns = model.functions
    assert set(fns) == {"encode_text", f"denoise_{W}x{H}", f"decode_latents_{W}x{H}", f"encode_image_{W}x{H}"}
    assert fns[f"denoise_{W}x{H}"]["inputs"]["x"]["shape"] == [2, 4, H8, W8]
    assert fns[f"denoise_{W}x{H}"]["inputs"]["t"] == {"shape": [2], "dtype": "float32"}
    assert fns[f"decode_latents_{W}x{H}"]["outputs"]["image"]["shape"] == [1, 3, H, W]
    m = model.manifest
    assert m["source"]["family"] == "sd" and m["source"]["ignored"] == {}  # every tensor of the file is used
    assert m["pipeline"]["vae_scaling_factor"] == pytest.approx(0.18215)


def test_text_encoder(model, st):
    ids = np.random.default_rng(1).integers(0, 49407, (2, 77)).astype(np.int32)
    _close(model.call("encode_text", {"input_ids": ids})["last_hidden_state"], R.text_hidden(st, SHAPE, ids))


def test_unet(model, st):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, H8, W8)).astype(np.float32)
    t = np.array([999.0, 1.0], np.float32)
    ctx = rng.standard_normal((2, 77, SHAPE.unet.context_dim)).astype(np.float32)
    got = model.call(f"denoise_{W}x{H}", {"x": x, "t": t, "context": ctx})["eps"]
    _close(got, R.unet_eps(st, SHAPE, x, t, ctx))


def test_vae_decode_and_encode(model, st):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((1, 4, H8, W8)).astype(np.float32)
    got = model.call(f"decode_latents_{W}x{H}", {"latents": z})["image"]
    _close(got, R.vae_decode(st, SHAPE, z / 0.18215))  # the function divides by the scaling factor itself
    img = np.tanh(rng.standard_normal((1, 3, H, W))).astype(np.float32)
    mom = model.call(f"encode_image_{W}x{H}", {"image": img})["moments"]
    _close(mom[:, :4], R.vae_encode_mean(st, SHAPE, img))


def test_device_tensors_chain_without_copies(model, st):
    """The context stays on the device between calls: the UNet reads encode_text's output buffer."""
    ids = np.random.default_rng(4).integers(0, 49407, (2, 77)).astype(np.int32)
    ctx_dev = model.call("encode_text", {"input_ids": ids}, download=False)["last_hidden_state"]
    x = np.random.default_rng(5).standard_normal((2, 4, H8, W8)).astype(np.float32)
    t = np.array([500.0, 500.0], np.float32)
    a = model.call(f"denoise_{W}x{H}", {"x": x, "t": t, "context": ctx_dev})["eps"]
    b = model.call(f"denoise_{W}x{H}", {"x": x, "t": t, "context": model.download(ctx_dev)})["eps"]
    np.testing.assert_array_equal(a, b)
    # the launches are bound to their buffers once (runtime.model._bound_steps): switching between an uploaded
    # context and the device one must switch what the kernels read
    other = model.call(f"denoise_{W}x{H}", {"x": x, "t": t, "context": model.download(ctx_dev) * 0.5})["eps"]
    assert np.abs(other - a).max() > 1e-3
    again = model.call(f"denoise_{W}x{H}", {"x": x, "t": t, "context": ctx_dev})["eps"]
    np.testing.assert_array_equal(again, a)


@pytest.mark.parametrize(
    "method,cls",
    [("euler", "EulerDiscreteScheduler"), ("ddim", "DDIMScheduler"), ("dpm++2m", "DPMSolverMultistepScheduler")],
)
def test_txt2img_matches_diffusers(model, st, method, cls, tmp_path):
    from runtime.pipelines.sd import StableDiffusion

    noise = np.random.default_rng(6).standard_normal((1, 4, H8, W8)).astype(np.float32)
    prompt, negative, steps, cfg = "a lighthouse at dusk, oil painting", "blurry", 6, 7.0
    sd = StableDiffusion(model)
    res = sd.generate(prompt, negative, steps=steps, cfg_scale=cfg, method=method, width=W, height=H, init_noise=noise)
    pipe = diffusers_pipeline(st, cls, tmp_path / "tok")
    if cls == "DPMSolverMultistepScheduler":
        pipe.scheduler = pipe.scheduler.__class__.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
        )
    lat, ref = diffusers_txt2img(pipe, prompt, negative, steps, cfg, noise)
    _close(res.latents, lat, rel=1e-4)
    assert np.abs(res.image.astype(np.int16) - ref).max() <= 1


def test_img2img_runs_the_tail_of_the_schedule(model):
    from runtime.pipelines.sd import StableDiffusion

    sd = StableDiffusion(model)
    init = (np.random.default_rng(7).random((H, W, 3)) * 255).astype(np.uint8)
    steps = []
    res = sd.generate(
        "a cat",
        steps=10,
        method="euler",
        width=W,
        height=H,
        init_image=init,
        strength=0.6,
        progress=lambda i, n, dt: steps.append((i, n)),
    )
    assert steps[-1] == (6, 6)  # diffusers' img2img: int(10 * 0.6) steps
    assert res.image.shape == (H, W, 3) and "encode_image_s" in res.timings


def test_wrong_size_says_which_sizes_exist(model):
    from runtime.errors import RuntimeFailure
    from runtime.pipelines.sd import StableDiffusion

    with pytest.raises(RuntimeFailure, match=rf"compiled for image sizes {W}x{H}, not 128x64.*--size 128x64"):
        StableDiffusion(model).generate("x", width=128, height=64)


def test_prompt_emphasis_scales_the_context_as_stable_diffusion_cpp(model):
    """'(fox:1.5)': the tokens of 'fox' weigh 1.5; each prompt's hidden states are multiplied by their token weights
    and rescaled to keep their mean (stable-diffusion.cpp's rule)."""
    from runtime.pipelines.sd import StableDiffusion

    sd = StableDiffusion(model)
    warn: list[str] = []
    got = sd.encode_prompts("a (fox:1.5) in snow", "", warn)
    toks = [sd.tokenizer.tokenize(""), sd.tokenizer.tokenize("a (fox:1.5) in snow")]
    ids = np.stack([t.ids for t in toks])
    hidden = model.call("encode_text", {"input_ids": ids})["last_hidden_state"]
    w = toks[1].weights
    assert sorted(set(np.round(w, 3))) == [1.0, 1.5]
    scaled = hidden[1] * w[:, None]
    np.testing.assert_allclose(got[1], scaled * (hidden[1].mean() / scaled.mean()), rtol=1e-6)
    np.testing.assert_array_equal(got[0], hidden[0])  # the negative prompt has no emphasis
