"""SDXL from any file: every tensor of a checkpoint used or listed with its reason (a VAE-only compile lists the rest);
and the format-independence proof — the same SDXL weights as one .safetensors, a .ckpt and stable-diffusion.cpp's
GGUF names and a diffusers folder, with --type q8_0 and with --tensor-type-rules, give identical per-tensor types (both encoders' fused
attention weights quantized in every case) and identical weights, so identical images (the graphs are the same)."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.compiler import compile_graph_passes
from sdcompile.models import lift_module
from sdcompile.models.inputs import open_model
from sdcompile.passes.context import CompileOptions
from sdcompile.passes.quantize import parse_rules

SHAPE = E.TINY_SDXL
VAE_ONLY = ("vae_decoder", "vae_encoder")


@pytest.fixture(scope="module")
def st():
    return E.sd_state(SHAPE, 0)


@pytest.fixture(scope="module")
def files(st, tmp_path_factory):
    d = tmp_path_factory.mktemp("sdxl_formats")
    fmts = ("safetensors", "ckpt", "gguf", "diffusers")
    return {fmt: E.write_sd(d / f"xl.{fmt}", SHAPE, 0, fmt, state=st) for fmt in fmts}


def _lift(path, components):
    opts = CompileOptions(sizes=[(64, 64)], components=components)
    store, configs = open_model(path, opts)
    return store, lift_module(store, opts, configs)


def _accounted(store, mod) -> None:
    used = {v.data.key for v in mod.weights().values()}
    assert used.isdisjoint(mod.meta["ignored"])
    assert used | set(mod.meta["ignored"]) == set(store.names())


def test_every_tensor_is_used_or_listed(files):
    store, mod = _lift(files["safetensors"], ("text_encoder", "unet", "vae_decoder", "vae_encoder"))
    _accounted(store, mod)
    ign = mod.meta["ignored"]
    # only what SDXL does not run: CLIP-L's last layer (SDXL reads the penultimate), bigG's logit scale
    assert ign and all(k.startswith("conditioner.embedders.") for k in ign), sorted(ign)[:5]
    store, mod = _lift(files["safetensors"], VAE_ONLY)
    assert list(mod.functions) == ["decode_latents_64x64", "encode_image_64x64"]
    _accounted(store, mod)
    assert (
        "second text encoder (OpenCLIP ViT-bigG)"
        in mod.meta["ignored"]["conditioner.embedders.1.model.ln_final.weight"]
    )
    assert "SDXL UNet: not compiled" in mod.meta["ignored"]["model.diffusion_model.label_emb.0.0.weight"]
    # SDXL's VAE: its own scaling factor, and f32 activations under --act-type f16 (both reported)
    assert mod.meta["config"]["vae"]["scaling_factor"] == 0.13025
    assert any("scaling factor 0.13025 (SDXL's" in n for n in mod.meta["assumptions"])
    assert all("overflow f16" in g.meta["act_f16_overflows"] for g in mod.functions.values())


def _types_and_values(path, **opts):
    o = CompileOptions(sizes=[(64, 64)], components=("text_encoder", "unet"), **opts)
    mod, ctx, _ = compile_graph_passes(path, o)
    pool = mod.weights()
    return {k: v.dtype for k, v in pool.items()}, pool


@pytest.mark.parametrize(
    "opts",
    [
        {"type": "q8_0"},
        # rules on canonical names (bigG's split attention weights included), first match wins
        {
            "tensor_type_rules": parse_rules(
                r"text_encoder_2\..*self_attn.*=q4_0,text_encoder\..*=q8_0,unet\..*attn.*=q5_0"
            )
        },
    ],
)
def test_same_types_and_weights_whatever_the_file(files, opts):
    ref_types, ref_pool = _types_and_values(files["safetensors"], **opts)
    fused = [
        k for k in ref_types if k.startswith("text_encoder_2.") and "self_attn." in k and k.endswith("proj.weight")
    ]
    assert fused and all(ref_types[k] not in ("f32", "f16") for k in fused), "bigG's split in_proj not quantized"
    l_attn = [k for k in ref_types if k.startswith("text_encoder.") and k.endswith("q_proj.weight")]
    assert l_attn and all(ref_types[k] == "q8_0" for k in l_attn)
    for fmt in ("ckpt", "gguf", "diffusers"):
        types, pool = _types_and_values(files[fmt], **opts)
        assert types == ref_types, fmt
        for k in ("text_encoder_2.encoder.layers.0.self_attn.k_proj.weight", "unet.label_emb.0.0.weight"):
            a, b = ref_pool[k], pool[k]
            from sdcompile.ir.weights import raw_bytes

            assert np.array_equal(raw_bytes(a), raw_bytes(b)), (fmt, k)


def test_rules_in_the_files_own_names_equal_rules_in_canonical_names(files):
    """A rule written with a checkpoint's own names takes the same tensors as one in canonical names: the fused
    in_proj's name covers the three weights split from it; a diffusers folder answers to its diffusers names."""
    canonical, _ = _types_and_values(
        files["safetensors"], tensor_type_rules=parse_rules(r"text_encoder_2\..*self_attn\.[qkv]_proj\.weight=q4_0")
    )
    own, _ = _types_and_values(
        files["safetensors"], tensor_type_rules=parse_rules(r"embedders\.1\.model\..*attn\.in_proj_weight=q4_0")
    )
    folder, _ = _types_and_values(
        files["diffusers"], tensor_type_rules=parse_rules(r"^text_model\..*self_attn\.[qkv]_proj\.weight=q4_0")
    )
    assert canonical == own
    q4 = {k for k, t in canonical.items() if t == "q4_0"}
    assert len(q4) == 3 * E.TINY_SDXL.open_clip.layers
    # the folder's rule also names CLIP-L's projections (text_encoder/ has the same sub-paths): 3 per CLIP-L layer
    assert {k for k, t in folder.items() if t == "q4_0"} == q4 | {
        k
        for k in canonical
        if k.startswith("text_encoder.encoder.") and k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight"))
    }
