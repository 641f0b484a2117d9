"""An SDXL checkpoint (single file or diffusers folder) until SDXL support lands: compiling its UNet or text encoders
is refused by name; its VAE compiles, and every other tensor is listed as ignored with an SDXL reason (the compile
report, text and JSON, shows the list: tests/e2e/test_cli_report.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.errors import UnsupportedModelError
from sdcompile.models import lift_module
from sdcompile.models.inputs import open_model
from sdcompile.passes.context import CompileOptions

VAE_ONLY = ("vae_decoder", "vae_encoder")


def sdxl_state(st: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """SDXL's single-file layout on tiny SD weights: CLIP-L under conditioner.embedders.0, an OpenCLIP-bigG under
    conditioner.embedders.1 and a UNet with label_emb (only the names matter here)."""
    out = {}
    for k, v in st.items():
        out[k.replace("cond_stage_model.", "conditioner.embedders.0.", 1)] = v
    z = np.zeros((8, 8), np.float32)
    out["conditioner.embedders.1.model.token_embedding.weight"] = z
    out["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"] = z
    out["conditioner.embedders.1.model.text_projection"] = z
    out["model.diffusion_model.label_emb.0.0.weight"] = z
    return out


@pytest.fixture(scope="module")
def st():
    return E.sd_state(E.TINY_SD, 0)


def _lift(path, components):
    opts = CompileOptions(sizes=[(64, 64)], components=components)
    store, configs = open_model(path, opts)
    return store, lift_module(store, opts, configs)


def _accounted(store, mod) -> None:
    used = {v.data.key for v in mod.weights().values()}
    assert used.isdisjoint(mod.meta["ignored"])
    assert used | set(mod.meta["ignored"]) == set(store.names())


def test_single_file_refused_by_name_and_vae_alone_accounts_for_every_tensor(st, tmp_path):
    p = E.write_safetensors(tmp_path / "sdxl.safetensors", sdxl_state(st))
    for comps in (("text_encoder",), ("text_encoder", "unet", "vae_decoder")):
        with pytest.raises(UnsupportedModelError, match=r"an SDXL checkpoint.*OpenCLIP-bigG text encoder cannot"):
            _lift(p, comps)
    store, mod = _lift(p, VAE_ONLY)
    assert list(mod.functions) == ["decode_latents_64x64", "encode_image_64x64"]
    _accounted(store, mod)
    ign = mod.meta["ignored"]
    assert "second text encoder (OpenCLIP ViT-bigG)" in ign["conditioner.embedders.1.model.token_embedding.weight"]
    assert "SDXL UNet" in ign["model.diffusion_model.label_emb.0.0.weight"]
    assert "SDXL UNet" in ign["model.diffusion_model.input_blocks.0.0.weight"]
    te = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
    assert "first text encoder (CLIP ViT-L)" in ign[te]
    # SDXL's VAE: its own scaling factor, and f32 activations under --act-type f16 (both reported)
    assert mod.meta["config"]["vae"]["scaling_factor"] == 0.13025
    assert any("scaling factor 0.13025 (SDXL's" in n for n in mod.meta["assumptions"])
    assert all("overflow f16" in g.meta["act_f16_overflows"] for g in mod.functions.values())


def test_diffusers_folder_refused_by_name_and_vae_alone_accounts_for_every_tensor(st, tmp_path):
    root = E.write_sd(tmp_path / "xl", E.TINY_SD, 0, "diffusers", state=st)
    shutil.copytree(root / "text_encoder", root / "text_encoder_2")  # its presence marks SDXL, as diffusers lays it
    idx = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps(idx | {"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(UnsupportedModelError, match=r"an SDXL pipeline.*--components vae_decoder,vae_encoder"):
        _lift(root, ("text_encoder", "unet", "vae_decoder", "vae_encoder"))
    store, mod = _lift(root, VAE_ONLY)
    _accounted(store, mod)
    reasons = {n.split("/")[0]: why for n, why in mod.meta["ignored"].items() if "/" in n}
    assert set(reasons) == {"unet", "text_encoder", "text_encoder_2"}
    assert "second text encoder" in reasons["text_encoder_2"] and "SDXL UNet" in reasons["unet"]
