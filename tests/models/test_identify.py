"""A refusal names what was found: a LLaMA or Gemma GGUF, a diffusers UNet (file or folder), a separate VAE, a kohya
or PEFT LoRA, an OpenCLIP text encoder — never "no CLIP text encoder found" about something that was never meant to
be one. What compiles is unaffected: identification runs only after lifting failed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile import examples_sd as E
from sdcompile.errors import UnsupportedModelError
from sdcompile.inspect import inspect_file, render_inspect
from sdcompile.models import lift_module
from sdcompile.models.inputs import open_model
from sdcompile.passes.context import CompileOptions


def _refusal(path) -> str:
    opts = CompileOptions(sizes=[(64, 64)])
    with pytest.raises(UnsupportedModelError) as e:
        store, configs = open_model(path, opts)
        lift_module(store, opts, configs)
    msg = str(e.value)
    assert "no CLIP text encoder found" not in msg, msg
    return msg


def _gguf(path, arch: str, names: list[str]):
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch, use_temp_file=False)
    for n in names:
        w.add_tensor(n, np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


LLAMA_NAMES = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight", "output_norm.weight"]


@pytest.mark.parametrize(("arch", "name"), [("llama", "LLaMA-family decoder"), ("gemma3", "Gemma 3 decoder")])
def test_llm_gguf_is_named(tmp_path, arch, name):
    p = _gguf(tmp_path / "m.gguf", arch, LLAMA_NAMES)
    msg = _refusal(p)
    assert name in msg and "not supported yet" in msg and f"general.architecture = {arch!r}" in msg
    info = inspect_file(p)
    assert info["family"] is None and name in info["identified"]
    assert name in render_inspect(info)


def test_llm_gguf_without_architecture_is_named_by_its_tensors(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "llm.safetensors"
    save_file({n: np.zeros((4, 32), np.float32) for n in LLAMA_NAMES}, str(p))
    assert "LLaMA-family decoder" in _refusal(p)


@pytest.fixture(scope="module")
def sd_parts():
    st = E.sd_state(E.TINY_SD, 0)
    return st, E.diffusers_states(st, E.TINY_SD), E.split_state(st)


def test_diffusers_unet_file_and_folder_are_named(sd_parts, tmp_path):
    _, diff, _ = sd_parts
    f = E.write_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", diff["unet"])
    msg = _refusal(f)
    assert "a diffusers UNet" in msg and "model_index.json" in msg
    root = E.write_sd(tmp_path / "pipe", E.TINY_SD, 0, "diffusers")
    msg = _refusal(root / "unet")
    assert "a diffusers UNet folder" in msg and "UNet2DConditionModel" in msg and "pipeline directory" in msg


def test_separate_vae_file_is_named(sd_parts, tmp_path):
    _, diff, parts = sd_parts
    msg = _refusal(E.write_safetensors(tmp_path / "vae.safetensors", parts["vae"]))
    assert "an SD VAE under LDM names" in msg and "--vae" in msg
    msg = _refusal(E.write_safetensors(tmp_path / "dvae.safetensors", diff["vae"]))
    assert "a diffusers VAE" in msg and "--vae" in msg
    msg = _refusal(E.write_safetensors(tmp_path / "unet.safetensors", parts["unet"]))
    assert "an SD UNet under LDM names" in msg and "--diffusion-model" in msg


def test_kohya_and_peft_loras_are_named(tmp_path):
    z = np.zeros((4, 8), np.float32)
    kohya = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": z,
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": z.T.copy(),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": np.array(4.0, np.float32),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": z,
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": z.T.copy(),
    }
    msg = _refusal(E.write_safetensors(tmp_path / "style.safetensors", kohya))
    assert "a LoRA in kohya names (2 modules: 1 of the diffusion model, 1 of the text encoders)" in msg
    assert "base checkpoint" in msg
    peft = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": z, "unet.x.lora_B.weight": z.T.copy()}
    assert "a LoRA in diffusers/PEFT names" in _refusal(E.write_safetensors(tmp_path / "peft.safetensors", peft))


def test_openclip_text_encoder_is_named(tmp_path):
    z = np.zeros((8, 8), np.float32)
    # where SD 2.x keeps it, OpenCLIP names are lifted: an incomplete one is refused by the tensor it lacks
    state = {
        "cond_stage_model.model.token_embedding.weight": z,
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": z,
    }
    msg = _refusal(E.write_safetensors(tmp_path / "openclip.safetensors", state))
    assert "lacks tensor cond_stage_model.model.positional_embedding" in msg
    # elsewhere it is named, with the places sdcompile reads it from
    state = {k.replace("cond_stage_model.model.", "text.", 1): v for k, v in state.items()}
    msg = _refusal(E.write_safetensors(tmp_path / "openclip_text.safetensors", state))
    assert "an OpenCLIP text encoder under 'text.'" in msg and "CLIPTextModel" in msg


def test_sd_checkpoint_without_a_text_encoder_says_what_to_pass(sd_parts, tmp_path):
    st, _, _ = sd_parts
    no_te = {k: v for k, v in st.items() if not k.startswith("cond_stage_model.")}
    msg = _refusal(E.write_safetensors(tmp_path / "no_te.safetensors", no_te))
    assert "no CLIP text encoder" in msg and "--clip-l" in msg and "--components" in msg


def test_unrecognised_file_keeps_the_listing(tmp_path):
    msg = _refusal(ex.write_safetensors(tmp_path / "odd.safetensors", {"foo.bar": np.zeros(3, np.float32)}))
    assert "not a model sdcompile recognises" in msg and "foo.bar" in msg


def test_sdxl_pipeline_directory_is_named(tmp_path):
    root = E.write_sd(tmp_path / "xl", E.TINY_SD, 0, "diffusers")
    idx = json.loads((root / "model_index.json").read_text())
    idx["_class_name"] = "StableDiffusionXLPipeline"
    (root / "model_index.json").write_text(json.dumps(idx))
    msg = _refusal(root)
    assert "an SDXL pipeline" in msg and "without its text_encoder_2/" in msg and "--components vae_decoder" in msg
