"""Tiny SD 2.x (v-prediction) and SDXL compiled for the CPU from single-file checkpoints, txt2img against diffusers'
StableDiffusionPipeline / StableDiffusionXLPipeline holding the same weights (converted by diffusers' own
converters, tests/sd_reference.py).

What this covers end to end: OpenCLIP text towers (SD 2.x: penultimate layer + final norm, padding with 0; SDXL:
CLIP-L and bigG penultimate states concatenated, bigG's pooled and projected EOS row), the UNet's linear projections
and 64-channel heads, SDXL's added conditioning (pooled embedding, size/crop ids), SDXL's empty negative prompt as
zeros, its Euler "leading" schedule, and v-prediction sampling.

Tolerances: compiled f32 against diffusers f32 differ only in summation order; latents within 1e-4 of their peak
after a few steps (as the SD 1.x pipeline test), on the CPU and on Vulkan (lavapipe in CI), SD 2.x in eps and v.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.models.sd import SDXL_SCHEDULER
from tests.kernels.fixtures import vulkan_marks

R = pytest.importorskip("tests.sd_reference")
pytest.importorskip("diffusers")

SIZE = 64


def _compile(tmp, shape, **opts):
    from runtime import load
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions

    tag = "-".join([shape.name] + [f"{v}" for v in opts.values()])
    src = E.write_sd(tmp / f"{shape.name}.safetensors", shape, 0, "safetensors", state=E.sd_state(shape, 0))
    compile_model(src, tmp / f"{tag}.sdc", CompileOptions(sizes=[(SIZE, SIZE)], **opts))
    return load(tmp / f"{tag}.sdc")


TARGETS = [pytest.param("cpu"), pytest.param("vulkan", marks=vulkan_marks())]


def _tokenizer(folder, pad: str):
    import transformers

    from runtime.pipelines.tokenizer import find_vocab
    from tests.clip_vocab import reference_tokenizer

    reference_tokenizer(find_vocab(), folder)  # writes vocab.json / merges.txt
    return transformers.CLIPTokenizer.from_pretrained(str(folder), pad_token=pad, model_max_length=77)


def _run_reference(pipe, prompt, negative, steps, cfg, noise, **extra):
    import torch

    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(
            prompt=prompt,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=cfg,
            height=SIZE,
            width=SIZE,
            latents=torch.from_numpy(noise),
            output_type="latent",
            **extra,
        )
    return out.images.numpy()


def _close(got, want, rel):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= rel * scale, (np.abs(got - want).max(), scale)


def sdxl_reference(st, shape, folder):
    """diffusers' StableDiffusionXLPipeline holding the weights of the LDM state ``st`` (diffusers' converters),
    with SDXL's published Euler scheduler and both tokenizers (CLIP-L's pads with the end token, bigG's with "!")."""
    import diffusers

    layers = shape.open_clip.layers
    return diffusers.StableDiffusionXLPipeline(
        vae=R.vae_model(st, shape),
        text_encoder=R.sdxl_clip_l_model(st, shape),
        text_encoder_2=R.open_clip_model(st, shape.open_clip, "conditioner.embedders.1.model.", layers, True),
        tokenizer=_tokenizer(folder / "tok", "<|endoftext|>"),
        tokenizer_2=_tokenizer(folder / "tok2", "!"),
        unet=R.unet_model(st, shape),
        scheduler=diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )


def generate(model, prompt, negative, steps, cfg, noise):
    """The runtime's txt2img (Euler) from the unit-variance ``noise``: its result."""
    from runtime.pipelines.sd import StableDiffusion

    return StableDiffusion(model).generate(
        prompt, negative, steps=steps, cfg_scale=cfg, method="euler", width=SIZE, height=SIZE, init_noise=noise
    )


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("sd2xl")


@pytest.mark.parametrize("target", TARGETS)
def test_sdxl_txt2img_matches_diffusers(tmp, target):

    shape = E.TINY_SDXL
    model = _compile(tmp, shape, target=target)
    fns = model.functions
    assert set(fns["encode_text"]["inputs"]) == {"input_ids", "input_ids_2", "eos_mask"}
    assert set(fns["encode_text"]["outputs"]) == {"last_hidden_state", "text_embeds"}
    pipe_info = model.manifest["pipeline"]
    assert pipe_info["family"] == "sdxl" and pipe_info["force_zeros_for_empty_prompt"] is True
    assert pipe_info["scheduler"]["timestep_spacing"] == "leading"
    st = E.sd_state(shape, 0)
    ref = sdxl_reference(st, shape, tmp)
    noise = np.random.default_rng(5).standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    for negative in ("", "blurry"):  # zeros for an empty negative prompt, encoded otherwise
        res = generate(model, "a red fox in snow", negative, 4, 5.0, noise)
        # diffusers zeroes the negative embeddings when no negative prompt is given (None); the runtime's "no
        # negative prompt" is the empty string, as the CLI's default
        want = _run_reference(ref, "a red fox in snow", negative or None, 4, 5.0, noise)
        _close(res.latents, want, 1e-4)


@pytest.mark.parametrize(
    "target,prediction",
    [
        ("cpu", "v"),
        ("cpu", "eps"),
        pytest.param("vulkan", "v", marks=vulkan_marks()),
        pytest.param("vulkan", "eps", marks=vulkan_marks()),
    ],
)
def test_sd2_txt2img_matches_diffusers(tmp, target, prediction):
    import diffusers

    shape = E.TINY_SD2
    model = _compile(tmp, shape, target=target, prediction=prediction)
    kind = {"v": "v_prediction", "eps": "epsilon"}[prediction]
    assert model.manifest["pipeline"]["scheduler"]["prediction_type"] == kind
    assert model.manifest["pipeline"]["text_inputs"] == [{"input": "input_ids", "pad_token_id": 0}]
    st = E.sd_state(shape, 0)
    sched = dict(E.SD15_SCHEDULER_CONFIG, prediction_type=kind)
    ref = diffusers.StableDiffusionPipeline(
        vae=R.vae_model(st, shape),
        text_encoder=R.open_clip_model(st, shape.open_clip, "cond_stage_model.model.", 2, False),
        tokenizer=_tokenizer(tmp / "tok_sd2", "!"),
        unet=R.unet_model(st, shape),
        scheduler=diffusers.EulerDiscreteScheduler.from_config(sched),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    noise = np.random.default_rng(7).standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    res = generate(model, "a lighthouse at dusk", "blurry", 4, 6.0, noise)
    want = _run_reference(ref, "a lighthouse at dusk", "blurry", 4, 6.0, noise)
    _close(res.latents, want, 1e-4)


def test_sdxl_same_image_from_a_single_file_and_a_diffusers_folder(tmp):
    """The format-independence proof end to end: the same SDXL weights as a .safetensors and as a diffusers folder,
    both with --type q8_0, give byte-identical weights in the artifact and the same image."""
    from runtime import load
    from runtime.pipelines.sd import StableDiffusion
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions

    st = E.sd_state(E.TINY_SDXL, 0)
    images, weights = [], []
    for fmt in ("safetensors", "diffusers"):
        src = E.write_sd(tmp / f"xl_{fmt}", E.TINY_SDXL, 0, fmt, state=st)
        out = tmp / f"xl_{fmt}.sdc"
        compile_model(src, out, CompileOptions(sizes=[(SIZE, SIZE)], type="q8_0"))
        weights.append((out / "weights.gguf").read_bytes())
        res = StableDiffusion(load(out)).generate("a red fox", "", steps=3, width=SIZE, height=SIZE, seed=3)
        images.append(res.image)
    assert weights[0] == weights[1]
    assert np.array_equal(images[0], images[1])
