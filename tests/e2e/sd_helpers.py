"""Shared by the SD end-to-end tests: the tiny SD checkpoint, artifacts compiled from it (cached per session), and
diffusers' StableDiffusionPipeline holding the same weights as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdcompile import examples_sd as E

SHAPE = E.TINY_SD
SIZE = (64, 64)  # 8x8 latents: three downsamplings to 1x1, as fast as CI wants
SEED = 0


def state() -> dict[str, np.ndarray]:
    return E.sd_state(SHAPE, SEED)


def compile_sd(src: Path, out: Path, **opts) -> dict:
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions

    opts.setdefault("sizes", [SIZE])
    return compile_model(src, out, CompileOptions(**opts))


def diffusers_pipeline(st: dict[str, np.ndarray], scheduler_cls: str, folder: Path):
    """diffusers' StableDiffusionPipeline on the same weights (through diffusers' own LDM converters) with the
    scheduler class built ``from_config`` on SD 1.5's published scheduler config."""
    import diffusers

    from runtime.pipelines.tokenizer import find_vocab
    from tests import sd_reference as R
    from tests.clip_vocab import reference_tokenizer

    sched = getattr(diffusers, scheduler_cls).from_config(E.SD15_SCHEDULER_CONFIG)
    pipe = diffusers.StableDiffusionPipeline(
        vae=R.vae_model(st, SHAPE),
        text_encoder=R.text_model(st, SHAPE),
        tokenizer=reference_tokenizer(find_vocab(), folder),
        unet=R.unet_model(st, SHAPE),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_txt2img(pipe, prompt: str, negative: str, steps: int, cfg: float, noise: np.ndarray):
    """(final latents, 8-bit image) of diffusers' pipeline from the unit-variance initial ``noise`` [1, 4, h, w]."""
    import torch

    kw = dict(
        prompt=prompt,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=cfg,
        height=noise.shape[2] * 8,
        width=noise.shape[3] * 8,
        latents=torch.from_numpy(noise),
    )
    with torch.no_grad():
        lat = pipe(**kw, output_type="latent").images.numpy()
        img = pipe(**kw, output_type="np").images[0]
    return lat, (img * 255).round().astype(np.int16)


CANONICAL_TO_LDM = {
    "unet.": "model.diffusion_model.",
    "vae.": "first_stage_model.",
    "text_encoder.": "cond_stage_model.transformer.text_model.",
}


def decoded_tensors(artifact: Path, shapes: dict[str, tuple[int, ...]], prefix: str = ""):
    """(LDM name, f32 values) of each tensor the artifact holds whose canonical name starts with ``prefix``: decoded by
    the gguf package (not by sdcompile), weights stored in a kernel's order put back in row-major order first (the
    manifest says which), then shaped as ``shapes`` says: conv weights are stored [O, KH*KW*C] (channels last), the
    file had [O, C, KH, KW]."""
    import gguf

    from sdcompile.kernels import layouts

    packed = layouts.artifact_layouts(artifact)
    for t in gguf.GGUFReader(str(artifact / "weights.gguf")).tensors:
        if not t.name.startswith(prefix):
            continue
        canonical = next(p for p in CANONICAL_TO_LDM if t.name.startswith(p))
        key = CANONICAL_TO_LDM[canonical] + t.name[len(canonical) :]
        data = t.data if t.name not in packed else layouts.row_major(packed[t.name], t.data, *reversed(t.shape))
        v = np.asarray(gguf.quants.dequantize(data, t.tensor_type), np.float32)
        shape = shapes[key]
        if len(shape) == 4:
            o, c, kh, kw = shape
            v = v.reshape(o, kh, kw, c).transpose(0, 3, 1, 2)
        yield key, np.ascontiguousarray(v.reshape(shape))


def decoded_state(artifact: Path, original: dict[str, np.ndarray], partial: bool = False) -> dict[str, np.ndarray]:
    """The weights an artifact holds, decoded to f32 by the gguf package (not by sdcompile) and put back under LDM
    names and shapes (``decoded_tensors``).
    ``partial``: the artifact compiled some components only; the checkpoint's own weights fill in the rest."""
    out = dict(original) if partial else {}
    out.update(decoded_tensors(artifact, {k: v.shape for k, v in original.items()}))
    assert partial or set(out) == set(original), "the artifact holds other tensors than the checkpoint"
    return out
