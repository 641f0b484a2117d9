"""An SD model's config.json files are read in full: the values the lifter implements are used (numbers against
diffusers built from the same config), design variants it does not implement are refused by name, keys it does not
read are reported, and a config that contradicts the weights is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.errors import UnsupportedModelError
from sdcompile.ir import interpret
from sdcompile.models import lift_module
from sdcompile.models.inputs import open_model
from sdcompile.passes.context import CompileOptions

SIZE = (64, 64)


@pytest.fixture(scope="module")
def st():
    return E.sd_state(E.TINY_SD, 0)


def _pipeline(tmp_path, st, **edits):
    """A diffusers directory whose component configs get ``edits`` ({"unet": {...}, "vae": {...}, ...})."""
    root = E.write_sd(tmp_path / "pipe", E.TINY_SD, 0, "diffusers", state=st)
    for comp, change in edits.items():
        p = root / comp / "config.json"
        cfg = json.loads(p.read_text())
        cfg.update(change)
        p.write_text(json.dumps(cfg))
    return root


def _lift(path, components=("text_encoder", "unet", "vae_decoder", "vae_encoder")):
    opts = CompileOptions(sizes=[SIZE], components=components)
    store, configs = open_model(path, opts)
    return lift_module(store, opts, configs)


UNET_EDITS = {"norm_eps": 1e-2, "flip_sin_to_cos": False, "freq_shift": 1}


def test_unet_config_values_are_used_like_diffusers(st, tmp_path):
    """norm_eps, flip_sin_to_cos and freq_shift as the config says them (LDM fixes 1e-5, True, 0): the lifted UNet
    against diffusers' UNet2DConditionModel built from the same config."""
    R = pytest.importorskip("tests.sd_reference")
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    g = _lift(_pipeline(tmp_path, st, unet=UNET_EDITS), ("unet",)).functions["denoise_64x64"]
    cfg = R.diffusers_unet_config(E.TINY_SD) | UNET_EDITS
    converted = convert_ldm_unet_checkpoint(R._tensors(st, LDM_UNET_KEY), R.diffusers_unet_config(E.TINY_SD))
    model = R._finish(UNet2DConditionModel(**cfg), converted, "f32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([10.0, 900.0], np.float32)
    ctx = rng.standard_normal((2, 77, 32)).astype(np.float32)
    got = interpret.run(g, {"x": x, "t": t, "context": ctx})["eps"]
    want = R.unet_eps(st, E.TINY_SD, x, t, ctx, model=model)
    default = R.unet_eps(st, E.TINY_SD, x, t, ctx)  # the same weights under LDM's fixed values
    scale = np.abs(want).max()
    assert np.abs(default - want).max() > 1e-2 * scale  # the edits change the output: the test can fail
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize(
    ("comp", "key", "value"),
    [
        ("unet", "act_fn", "gelu"),
        ("unet", "center_input_sample", True),
        ("unet", "resnet_time_scale_shift", "scale_shift"),
        ("unet", "only_cross_attention", [True, True, True, False]),
        ("vae", "shift_factor", 0.1159),
        ("vae", "use_post_quant_conv", False),
    ],
)
def test_design_variants_are_refused_by_name(st, tmp_path, comp, key, value):
    with pytest.raises(UnsupportedModelError, match=rf"config\.json says {key} = .*implements only"):
        _lift(_pipeline(tmp_path, st, **{comp: {key: value}}))


@pytest.mark.parametrize(
    ("comp", "key", "value", "weights"),
    [("unet", "cross_attention_dim", 768, 32), ("unet", "in_channels", 9, 4), ("vae", "latent_channels", 16, 4)],
)
def test_config_contradicting_the_weights_is_refused(st, tmp_path, comp, key, value, weights):
    with pytest.raises(UnsupportedModelError, match=rf"says {key} = {value}, its weights say {weights}"):
        _lift(_pipeline(tmp_path, st, **{comp: {key: value}}))


def test_keys_not_read_are_reported_and_known_ones_are_not(st, tmp_path):
    plain = _lift(_pipeline(tmp_path / "a", st)).meta["assumptions"]
    assert not [a for a in plain if "not read" in a], plain  # SD 1.5's published keys are all accounted for
    notes = _lift(
        _pipeline(tmp_path / "b", st, unet={"new_knob": 3}, vae={"other_knob": "x"}, text_encoder={"rope_theta": 1.0})
    ).meta["assumptions"]
    for what, key in (("UNet", "new_knob = 3"), ("VAE", "other_knob = 'x'"), ("text encoder", "rope_theta = 1.0")):
        assert any(a.startswith(what) and key in a and "not read" in a for a in notes), (what, notes)


def test_text_encoder_config_of_a_pipeline_is_read(st, tmp_path):
    mod = _lift(_pipeline(tmp_path, st, text_encoder={"hidden_act": "gelu", "num_attention_heads": 4}))
    g = mod.functions["encode_text"]
    assert g.meta["config"]["act"] == "gelu" and g.meta["config"]["heads"] == 4
    assert any(n.op == "gelu" for n in g.nodes) and not any(n.op == "quick_gelu" for n in g.nodes)
    assert not [a for a in mod.meta["assumptions"] if a.startswith("text encoder")]
