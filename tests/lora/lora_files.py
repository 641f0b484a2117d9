"""LoRA files for the tests: one random LoRA over a tiny SD 1.x model, written in each naming convention and format.

The layers are taken from diffusers' and transformers' own modules (every Linear and Conv2d of the UNet's attention,
feed-forward, projection and resnet layers, and the text encoder's attention and MLP), so the names are what those
libraries call them, not what sdcompile calls them. The LDM names (kohya LoRAs trained on LDM checkpoints,
stable-diffusion.cpp's converted names) come from diffusers' own LDM converter, run on the tiny checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RANK = 4
ALPHA = 2.0  # scale alpha / rank = 0.5: the kohya files carry it; the PEFT file has it folded into lora_B
# Layers of the UNet a LoRA adapts, by the end of their diffusers module name: attention, feed-forward, the
# transformers' 1x1-conv projections, and the resnets' convolutions (LoCon, 3x3) and time projections.
UNET_LAYERS = (
    ".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out",
    ".conv1", ".conv2", ".time_emb_proj",
)  # fmt: skip
TE_LAYERS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")


def layers(unet, text_encoder, seed: int = 1, text_encoder_2=None) -> dict[str, dict[str, np.ndarray]]:
    """{'unet.<diffusers module>' | 'text_encoder.<transformers module>' | 'text_encoder_2.<...>': {'down', 'up'}}
    with random factors, the delta's size a fair share of the weight's (so a wrong mapping shows)."""
    import torch

    rng = np.random.default_rng(seed)
    out = {}
    models = [("unet.", unet, UNET_LAYERS), ("text_encoder.", text_encoder, TE_LAYERS)]
    if text_encoder_2 is not None:
        models.append(("text_encoder_2.", text_encoder_2, TE_LAYERS))
    for prefix, model, ends in models:
        for name, m in model.named_modules():
            if not name.endswith(ends) or not isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
                continue
            w = m.weight.detach().numpy()
            fan_in = int(np.prod(w.shape[1:]))
            if isinstance(m, torch.nn.Conv2d):
                down = rng.standard_normal((RANK, *w.shape[1:]))
                up = rng.standard_normal((w.shape[0], RANK, 1, 1))
            else:
                down = rng.standard_normal((RANK, w.shape[1]))
                up = rng.standard_normal((w.shape[0], RANK))
            # delta rms ~ 0.5 * weight rms after the 0.5 scale
            gain = float(np.sqrt((w**2).mean())) / np.sqrt(RANK / fan_in) / np.sqrt(RANK)
            out[prefix + name] = {
                "down": (down / np.sqrt(fan_in)).astype(np.float32),
                "up": (up * gain).astype(np.float32),
            }
    return out


def ldm_names(state: dict[str, np.ndarray], unet_config: dict) -> dict[str, str]:
    """diffusers UNet module path -> LDM module path, from diffusers' own converter run on the checkpoint."""
    import torch
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items() if k.startswith(LDM_UNET_KEY)}
    by_ptr = {t.data_ptr(): k[len(LDM_UNET_KEY) :] for k, t in tensors.items()}
    converted = convert_ldm_unet_checkpoint(tensors, unet_config)
    out = {}
    for k, t in converted.items():
        if k.endswith(".weight") and t.data_ptr() in by_ptr:
            out[k[: -len(".weight")]] = by_ptr[t.data_ptr()][: -len(".weight")]
    return out


def peft_dict(lay: dict) -> dict[str, np.ndarray]:
    """diffusers/PEFT names, the scale folded into lora_B (PEFT files carry no alpha: lora_alpha = r)."""
    out = {}
    for mod, t in lay.items():
        out[f"{mod}.lora_A.weight"] = t["down"]
        out[f"{mod}.lora_B.weight"] = t["up"] * np.float32(ALPHA / RANK)
    return out


def kohya_dict(lay: dict, to_ldm: dict[str, str] | None = None, sdxl: bool = False) -> dict[str, np.ndarray]:
    """kohya names (``lora_unet_``/``lora_te_`` + the path with '_'; SDXL: ``lora_te1_``/``lora_te2_``), with
    alpha; the UNet's LDM paths if ``to_ldm`` is given (a LoRA trained on an LDM checkpoint), else its diffusers
    paths."""
    out = {}
    for mod, t in lay.items():
        if mod.startswith("unet."):
            path = mod[len("unet.") :]
            key = "lora_unet_" + (to_ldm[path] if to_ldm else path).replace(".", "_")
        else:
            te, path = mod.split(".", 1)
            lead = {"text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}[te]
            key = lead + "text_model_" + path.removeprefix("text_model.").replace(".", "_")
        out[f"{key}.lora_down.weight"] = t["down"]
        out[f"{key}.lora_up.weight"] = t["up"]
        out[f"{key}.alpha"] = np.array(ALPHA, np.float32)
    return out


def sdcpp_dict(lay: dict, to_ldm: dict[str, str]) -> dict[str, np.ndarray]:
    """stable-diffusion.cpp's converted names (what its `convert` writes for a LoRA, `name_conversion.cpp`)."""
    out = {}
    for mod, t in lay.items():
        if mod.startswith("unet."):
            key = "lora.model.diffusion_model." + to_ldm[mod[len("unet.") :]]
        else:
            key = "lora.cond_stage_model.transformer.text_model." + mod[len("text_encoder.") :].removeprefix(
                "text_model."
            )
        out[f"{key}.weight.lora_down"] = t["down"]
        out[f"{key}.weight.lora_up"] = t["up"]
        out[f"{key}.weight.alpha"] = np.array([ALPHA], np.float32)
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def write_torch(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(path))
    return path


def write_gguf(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "lora")
    for k, v in tensors.items():
        w.add_tensor(k, np.ascontiguousarray(v.reshape(v.shape or (1,))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
