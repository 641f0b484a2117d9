"""SD 1.x naming maps against diffusers' own LDM converters: same keys, same tensors, nothing left over."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples_sd as ex
from sdcompile.models import sd_names as sn
from tests import sd_reference as ref

pytest.importorskip("diffusers")

SHAPES = [ex.TINY_SD, ex.SD15]


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, np.ndarray]:
    return ex.sd_state(ex.TINY_SD, 0)


def _fake_state(shape: ex.SdShape) -> dict[str, np.ndarray]:
    # zero-stride arrays of the right shapes: SD 1.5 names and shapes without 4 GB of weights
    return {k: np.broadcast_to(np.float32(0), s) for k, s in ex.sd_shapes(shape).items()}


def _state(shape: ex.SdShape, tiny_state: dict) -> dict:
    return tiny_state if shape is ex.TINY_SD else _fake_state(shape)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_unet_map_matches_diffusers_converter(shape, tiny_state):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    state = _state(shape, tiny_state)
    cfg = ref.diffusers_unet_config(shape)
    converted = convert_ldm_unet_checkpoint(state, cfg)
    ldm = _part(state, sn.UNET_PREFIX)
    fwd = sn.unet_diffusers_to_ldm(cfg)
    # every key both ways, nothing left over
    assert set(fwd) == set(converted)
    assert set(fwd.values()) == set(ldm)
    assert sn.unet_ldm_to_diffusers(cfg) == {v: k for k, v in fwd.items()}
    for d, k in fwd.items():
        assert converted[d] is ldm[k], d  # the converter only renames: the very same array
    # our config.json dict gives the same map as the config diffusers derives from the LDM model config
    assert sn.unet_diffusers_to_ldm(ex.unet_config(shape)) == fwd


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_vae_map_matches_diffusers_converter(shape, tiny_state):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = _state(shape, tiny_state)
    cfg = ref.diffusers_vae_config(shape)
    converted = convert_ldm_vae_checkpoint(state, cfg)
    ldm = _part(state, sn.VAE_PREFIX)
    fwd = sn.vae_diffusers_to_ldm(cfg)
    assert set(fwd) == set(converted)
    assert set(fwd.values()) == set(ldm)
    assert sn.vae_ldm_to_diffusers(cfg) == {v: k for k, v in fwd.items()}
    reshaped = set()
    for d, k in fwd.items():
        a, b = converted[d], ldm[k]
        assert a.shape == sn.vae_diffusers_shape(k, b.shape), d
        assert b.shape == sn.vae_ldm_shape(k, a.shape), d
        if a.shape != b.shape:
            reshaped.add(k)
        np.testing.assert_array_equal(a, b.reshape(a.shape), err_msg=d)
    assert reshaped == set(sn.VAE_CONV1X1_KEYS)
    assert sn.vae_diffusers_to_ldm(ex.vae_config(shape)) == fwd


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_maps_cover_the_diffusers_models(shape):
    """Key sets and shapes equal those of the diffusers modules built from our config.json dicts (on the meta
    device: no memory)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    shapes = ex.sd_shapes(shape)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ex.unet_config(shape)).state_dict()
        vae = AutoencoderKL(**ex.vae_config(shape)).state_dict()
    for model, fwd, prefix in (
        (unet, sn.unet_diffusers_to_ldm(ex.unet_config(shape)), sn.UNET_PREFIX),
        (vae, sn.vae_diffusers_to_ldm(ex.vae_config(shape)), sn.VAE_PREFIX),
    ):
        assert set(model) == set(fwd)
        for d, k in fwd.items():
            ldm_shape = shapes[prefix + k]
            assert tuple(model[d].shape) == sn.vae_diffusers_shape(k, ldm_shape), d


def test_configs_agree_with_diffusers_derivation():
    for shape in SHAPES:
        ours, theirs = ex.unet_config(shape), ref.diffusers_unet_config(shape)
        for k, v in theirs.items():  # keys we leave out take diffusers' defaults, which are these
            assert ours.get(k, v) == v, k
        ours, theirs = ex.vae_config(shape), ref.diffusers_vae_config(shape)
        for k, v in theirs.items():
            assert ours[k] == v, k


def test_text_prefix_is_diffusers_clip_prefix(tiny_state):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    converted = convert_ldm_clip_checkpoint(tiny_state)
    text = _part(tiny_state, sn.TEXT_PREFIX)
    assert converted.keys() == {sn.TEXT_DIFFUSERS_PREFIX + k for k in text}


def test_unsupported_layouts_are_refused():
    cfg = ex.unet_config(ex.TINY_SD)
    with pytest.raises(ValueError, match="layers_per_block"):
        sn.unet_diffusers_to_ldm({**cfg, "layers_per_block": [2, 2, 1, 2]})
    with pytest.raises(ValueError, match="mid_block_type"):
        sn.unet_diffusers_to_ldm({**cfg, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn"})


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_vae_key_rename_without_config(shape):
    """The config-free per-key rename (for a diffusers-named VAE file without config.json) agrees with the map."""
    fwd = sn.vae_diffusers_to_ldm(ex.vae_config(shape))
    levels = len(shape.vae.block_out_channels)
    assert {d: sn.vae_key_to_ldm(d, levels) for d in fwd} == fwd
    for bad in ("encoder.up_blocks.0.resnets.0.norm1.weight", "decoder.mid_block.attentions.0.proj.weight", "x.y"):
        with pytest.raises(ValueError):
            sn.vae_key_to_ldm(bad, levels)
