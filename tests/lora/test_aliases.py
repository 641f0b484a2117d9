"""The UNet aliases' diffusers names, derived from the LDM names alone (`sdcompile/lora/aliases.py`), against
diffusers' own LDM converter run on the same checkpoint: SD 1.x, SD 2.x and SDXL topologies (tiny)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.lora.aliases import unet_diffusers_config
from sdcompile.models.sd_names import UNET_PREFIX, unet_ldm_to_diffusers
from tests.lora import lora_files as L


@pytest.mark.parametrize("name", ["TINY_SD", "TINY_SD2_UNET", "TINY_SDXL_UNET"])
def test_diffusers_names_of_the_ldm_unet(name):
    from tests import sd_reference as R

    unet = E.TINY_SD.unet if name == "TINY_SD" else getattr(E, name)
    shape = dataclasses.replace(E.TINY_SD, unet=unet)
    state = E.unet_state(shape, np.random.default_rng(0))
    want = L.ldm_names(state, R.diffusers_unet_config(shape, state))  # diffusers module -> LDM module
    ldm = {k[len(UNET_PREFIX) :] for k in state}
    got = unet_ldm_to_diffusers(unet_diffusers_config(ldm))
    assert want, "diffusers converted nothing"
    for d, l in want.items():
        assert got.get(l + ".weight") == d + ".weight", l
