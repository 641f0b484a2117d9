"""Lifting SD 1.x into a module (no kernels built): function signatures, canonical names, derived conv weights,
hyperparameters read or reported as assumed, every file tensor used or listed as ignored with its reason, refusals
that name what was found; and the lifted graphs against diffusers through the numpy interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.errors import UnsupportedModelError
from sdcompile.formats import open_store
from sdcompile.ir import interpret, verify
from sdcompile.models import lift_module
from sdcompile.passes.context import CompileOptions

SIZE = (64, 64)


@pytest.fixture(scope="module")
def st():
    return E.sd_state(E.TINY_SD, 0)


def _write(tmp_path, state, metadata=True, name="m.safetensors"):
    return E.write_sd(tmp_path / name, E.TINY_SD, 0, "safetensors", state=state, metadata=metadata)


def _lift(path, **opts):
    return lift_module(open_store(path), CompileOptions(sizes=[SIZE], **opts))


def test_functions_signatures_and_names(st, tmp_path):
    mod = _lift(_write(tmp_path, st))
    assert list(mod.functions) == ["encode_text", "denoise_64x64", "decode_latents_64x64", "encode_image_64x64"]
    for g in mod.functions.values():
        verify(g)
    d = mod.functions["denoise_64x64"]
    assert [(i, d.values[i].shape) for i in d.inputs] == [("x", (2, 4, 8, 8)), ("t", (2,)), ("context", (2, 77, 32))]
    w = d.values["unet.input_blocks.1.0.in_layers.2.weight"]
    assert w.shape == (32, 9 * 32) and w.data.expr is not None  # [O, C, 3, 3] stored as [O, 3*3*C]
    assert "permute" in w.data.expr.describe()
    assert len(mod.weights()) == len(st) and mod.meta["ignored"] == {}


def test_metadata_is_read_and_its_absence_reported(st, tmp_path):
    with_meta = _lift(_write(tmp_path, st, True, "a.safetensors")).meta["assumptions"]
    without = _lift(_write(tmp_path, st, False, "b.safetensors")).meta["assumptions"]
    assert not any("attention heads" in a for a in with_meta)
    assert any("8 attention heads" in a for a in without) and any("scaling factor 0.18215" in a for a in without)


def test_extra_tensors_are_listed_with_reasons(st, tmp_path):
    extra = dict(st)
    extra["model_ema.decay"] = np.array(0.999, np.float32)
    extra["model_ema.diffusion_modelinput_blocks00weight"] = np.zeros((2, 2), np.float32)
    extra["betas"] = np.zeros(1000, np.float32)
    extra["alphas_cumprod"] = np.zeros(1000, np.float32)
    extra["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(77, dtype=np.float32)
    extra["first_stage_model.loss.logvar"] = np.zeros(1, np.float32)
    extra["some.unknown.tensor"] = np.zeros(3, np.float32)
    ign = _lift(_write(tmp_path, extra)).meta["ignored"]
    assert set(ign) == set(extra) - set(st)
    assert "EMA" in ign["model_ema.diffusion_modelinput_blocks00weight"]
    assert "schedule" in ign["betas"] and "position ids" in ign[next(k for k in ign if k.endswith("position_ids"))]
    assert "loss" in ign["first_stage_model.loss.logvar"]
    assert "not part of any component" in ign["some.unknown.tensor"]


def test_left_out_components_are_reported(st, tmp_path):
    mod = _lift(_write(tmp_path, st), components=("text_encoder", "unet", "vae_decoder"))
    assert "encode_image_64x64" not in mod.functions
    enc = [k for k in mod.meta["ignored"] if k.startswith("first_stage_model.encoder.")]
    assert enc and all("VAE encoder: not compiled" in mod.meta["ignored"][k] for k in enc)


def test_stray_sdxl_tensor_is_listed_not_silently_dropped(st, tmp_path):
    x = dict(st)
    x["conditioner.embedders.1.model.positional_embedding"] = np.zeros((77, 8), np.float32)
    mod = _lift(_write(tmp_path, x))
    why = mod.meta["ignored"]["conditioner.embedders.1.model.positional_embedding"]
    assert "second text encoder" in why and "not a tensor of a complete encoder" in why


def test_missing_tensor_is_named(st, tmp_path):
    x = dict(st)
    del x["model.diffusion_model.output_blocks.3.0.emb_layers.1.bias"]
    with pytest.raises(UnsupportedModelError, match=r"lacks tensor model\.diffusion_model\.output_blocks\.3\.0"):
        _lift(_write(tmp_path, x))


def test_interpreter_runs_the_lifted_unet_like_diffusers(st, tmp_path):
    """The IR as lifted (before any pass), run by the float64 interpreter, is diffusers' UNet: lifting itself is
    right, independent of kernels."""
    R = pytest.importorskip("tests.sd_reference")
    g = _lift(_write(tmp_path, st)).functions["denoise_64x64"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([10.0, 900.0], np.float32)
    ctx = rng.standard_normal((2, 77, 32)).astype(np.float32)
    got = interpret.run(g, {"x": x, "t": t, "context": ctx})["eps"]
    want = R.unet_eps(st, E.TINY_SD, x, t, ctx, dtype="f64")
    # diffusers computes the sinusoidal timestep embedding in f32 even in a float64 model: sin/cos of f32 arguments
    # up to t = 900 carry ~6e-5 of rounding, which the time MLP passes on (1e-5 of the output measured).
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * np.abs(want).max())
