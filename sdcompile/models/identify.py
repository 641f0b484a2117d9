"""Name what a file or directory holds when it is not a model sdcompile compiles.

A refusal that says "no CLIP text encoder found" about a LLaMA GGUF, a diffusers UNet or a LoRA sends the user looking
for a bug in the file; one that names what was found ("a LLaMA-family decoder LLM", "a diffusers UNet", "a LoRA")
tells them what to do instead. Everything here only looks: metadata keys, tensor-name patterns and config.json class
names, the fingerprints each tool's files are known by. It is consulted only once lifting has failed, so a
misclassification can never change what compiles.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SUPPORTED = (
    "sdcompile compiles Stable Diffusion 1.x/2.x checkpoints (UNet, VAE, CLIP text encoder) and CLIP text encoders"
)


@dataclass(frozen=True)
class Found:
    what: str  # a noun phrase: "a LLaMA-family decoder LLM (GGUF general.architecture = 'llama')"
    advice: str  # what to do instead, or why it cannot be compiled

    def message(self, where: object) -> str:
        return f"{where}: {self.what}: {self.advice}"


# llama.cpp's general.architecture values of decoder-only LLMs, with the name people know them by. They share the
# LLaMA layout (token embedding, blocks of attention + gated MLP, output head), which the LLM issue will lift.
LLM_ARCHS = {
    "llama": "LLaMA",
    "llama4": "Llama 4",
    "mistral": "Mistral",
    "mistral3": "Mistral 3",
    "mixtral": "Mixtral",
    "qwen": "Qwen",
    "qwen2": "Qwen2",
    "qwen2moe": "Qwen2-MoE",
    "qwen3": "Qwen3",
    "qwen3moe": "Qwen3-MoE",
    "gemma": "Gemma",
    "gemma2": "Gemma 2",
    "gemma3": "Gemma 3",
    "gemma3n": "Gemma 3n",
    "phi2": "Phi-2",
    "phi3": "Phi-3",
    "granite": "Granite",
    "deepseek": "DeepSeek",
    "deepseek2": "DeepSeek-V2/V3",
    "olmo": "OLMo",
    "olmo2": "OLMo 2",
    "command-r": "Command R",
    "cohere2": "Command R7B",
    "internlm2": "InternLM2",
    "exaone": "EXAONE",
    "stablelm": "StableLM",
    "starcoder2": "StarCoder2",
    "falcon": "Falcon",
    "gpt2": "GPT-2",
    "gptneox": "GPT-NeoX",
    "mpt": "MPT",
    "bloom": "BLOOM",
    "smollm3": "SmolLM3",
}
# transformers' model_type of the same families (a config.json beside safetensors weights)
HF_LLM_TYPES = LLM_ARCHS | {"gemma3_text": "Gemma 3", "phi": "Phi", "gpt_neox": "GPT-NeoX"}

_LLM_NOT_YET = "decoder LLMs are not supported yet; " + SUPPORTED
_LORA_ADVICE = (
    "a LoRA holds changes to a base model, not a model of its own; sdcompile cannot apply LoRAs yet. Compile the "
    "base checkpoint"
)


def _llm(name: str, evidence: str) -> Found:
    family = "a LLaMA-family decoder LLM" if name == "LLaMA" else f"a {name} decoder LLM (LLaMA-family)"
    return Found(f"{family} ({evidence})", f"not supported yet: {_LLM_NOT_YET}")


def _gguf_arch(metadata: dict) -> Found | None:
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return None
    if arch in LLM_ARCHS:
        return _llm(LLM_ARCHS[arch], f"GGUF general.architecture = {arch!r}")
    if arch == "clip" and any(str(k).startswith(("clip.vision.", "clip.has_vision_encoder")) for k in metadata):
        return Found(
            "a CLIP vision encoder / multimodal projector (llama.cpp mmproj GGUF)",
            "it encodes images for a multimodal LLM; not supported. " + SUPPORTED,
        )
    if arch in ("t5", "t5encoder"):
        return Found(f"a T5 encoder (GGUF general.architecture = {arch!r})", "not supported yet. " + SUPPORTED)
    if arch in ("bert", "nomic-bert", "jina-bert-v2", "modern-bert"):
        return Found(f"a BERT embedding model (GGUF general.architecture = {arch!r})", "not supported. " + SUPPORTED)
    return None


def _count(names: list[str], rx: str) -> int:
    r = re.compile(rx)
    return sum(1 for n in names if r.search(n))


def _lora(names: list[str]) -> Found | None:
    kohya = [
        n for n in names if n.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_"))
    ]
    if kohya:
        modules = {n.split(".")[0] for n in kohya}
        unet = sum(1 for m in modules if m.startswith(("lora_unet_", "lora_transformer_")))
        te = len(modules) - unet
        return Found(
            f"a LoRA in kohya names ({len(modules)} modules: {unet} of the diffusion model, {te} of the text encoders)",
            _LORA_ADVICE,
        )
    peft = _count(names, r"\.(lora_[AB]|lora_down|lora_up|lora\.down|lora\.up|lora_linear_layer\.(up|down))\.weight$")
    if peft:
        return Found(f"a LoRA in diffusers/PEFT names ({peft} LoRA matrices)", _LORA_ADVICE)
    return None


def _by_names(names: list[str]) -> Found | None:
    s = set(names)

    def has(prefix: str) -> bool:
        return any(n.startswith(prefix) for n in names)

    if "token_embd.weight" in s and has("blk.0."):
        return _llm("LLaMA", "llama.cpp tensor names token_embd / blk.N, no general.architecture")
    if "model.embed_tokens.weight" in s and has("model.layers.0.self_attn."):
        return _llm("LLaMA", "transformers names model.embed_tokens / model.layers.N")
    if has("double_blocks.0.img_attn") or has("model.diffusion_model.double_blocks.0.img_attn"):
        return Found("a Flux transformer (DiT; double_blocks.* / single_blocks.*)", "not supported yet. " + SUPPORTED)
    if has("joint_blocks.0.") or has("model.diffusion_model.joint_blocks.0."):
        return Found("a Stable Diffusion 3 MMDiT (joint_blocks.*)", "not supported yet. " + SUPPORTED)
    if ("x_embedder.weight" in s or "pos_embed.proj.weight" in s) and has("transformer_blocks.0."):
        return Found(
            "a diffusers DiT (SD3/Flux transformer: transformer_blocks.* with a patch embedder)",
            "not supported yet. " + SUPPORTED,
        )
    if has("encoder.block.0.layer.0.SelfAttention."):
        return Found(
            "a T5 encoder (encoder.block.N.layer.*: SD3's and Flux's second text encoder)", "not supported yet"
        )
    if has("vision_model.embeddings.") and not has("text_model."):
        return Found("a CLIP vision encoder (vision_model.*)", "it encodes images, not prompts. " + SUPPORTED)
    if "time_embedding.linear_1.weight" in s and has("down_blocks."):
        xl = "add_embedding.linear_1.weight" in s
        return Found(
            f"a diffusers {'SDXL ' if xl else ''}UNet (UNet2DConditionModel weights under diffusers names)",
            "SDXL UNets cannot be compiled yet"
            if xl
            else "pass the diffusers pipeline directory it belongs to (the folder holding model_index.json, unet/, "
            "vae/ and text_encoder/): its config.json states what the weights alone do not",
        )
    if "decoder.conv_in.weight" in s and has("decoder.up_blocks."):
        return Found(
            "a diffusers VAE (AutoencoderKL weights under diffusers names)",
            "pass it as --vae beside a checkpoint, or pass the diffusers pipeline directory it belongs to",
        )
    if "decoder.conv_in.weight" in s and has("decoder.up."):
        return Found(
            "an SD VAE under LDM names without first_stage_model. (a separate VAE file)",
            "pass it as --vae beside a checkpoint (or beside --diffusion-model and --clip-l)",
        )
    if "input_blocks.0.0.weight" in s:
        xl = has("label_emb.")
        return Found(
            f"{'an SDXL' if xl else 'an SD'} UNet under LDM names without model.diffusion_model. (a separate UNet file)",
            "SDXL UNets cannot be compiled yet"
            if xl
            else "pass it as --diffusion-model, with the text encoder as --clip-l and the VAE as --vae",
        )
    # OpenCLIP text towers are lifted where SD checkpoints keep them (clip_text.PLACES); one elsewhere (a whole
    # OpenCLIP model's text tower under another prefix) is named with the places that are read.
    from sdcompile.models.clip_text import PLACES

    known = tuple(p for _, p, _, _, _ in PLACES if p)
    openclip = sorted(
        n[: -len("token_embedding.weight")]
        for n in names
        if n.endswith("token_embedding.weight")
        and not n.endswith("embeddings.token_embedding.weight")
        and n[: -len("token_embedding.weight")] + "transformer.resblocks.0.attn.in_proj_weight" in s
        and not n.startswith(known)
    )
    if openclip:
        return Found(
            f"an OpenCLIP text encoder under {openclip[0]!r} (OpenCLIP names {openclip[0]}transformer.resblocks.*)",
            "sdcompile reads OpenCLIP text encoders where Stable Diffusion checkpoints keep them "
            "(cond_stage_model.model. for SD 2.x, conditioner.embedders.1.model. for SDXL) or at the top level of a "
            "file; rename its tensors to one of those, or pass the transformers CLIPTextModel of the same model",
        )
    return None


def identify(store) -> Found | None:
    """What ``store`` holds, if its metadata or tensor names say; None for anything not recognised."""
    names = store.names()
    return _gguf_arch(store.metadata) or _lora(names) or _by_names(names)


def describe(store) -> str | None:
    found = identify(store)
    return found.what if found else None


def refusal(store) -> str | None:
    """The message refusing ``store`` by what it holds, or None where nothing was recognised."""
    found = identify(store)
    return found.message(store.path) if found else None


# --- directories ---------------------------------------------------------------------------------------------------

# diffusers' _class_name of pipelines sdcompile cannot compile, with the name people know them by
PIPELINES = {
    "StableDiffusionXLPipeline": "an SDXL pipeline",
    "StableDiffusionXLImg2ImgPipeline": "an SDXL pipeline",
    "StableDiffusionXLInpaintPipeline": "an SDXL inpainting pipeline",
    "StableDiffusion3Pipeline": "a Stable Diffusion 3 pipeline",
    "FluxPipeline": "a Flux pipeline",
    "StableCascadePriorPipeline": "a Stable Cascade pipeline",
    "PixArtAlphaPipeline": "a PixArt pipeline",
    "KandinskyV22Pipeline": "a Kandinsky 2.2 pipeline",
}


def read_json(path: Path) -> dict | None:
    """A JSON object file, or None if it is missing or not one (identification never fails on a bad file)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def is_clip_text_config(cfg: dict | None) -> bool:
    """A transformers CLIPTextModel(WithProjection) config.json (or a full CLIPModel's, whose text_config holds it)."""
    if not cfg:
        return False
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") in ("clip_text_model", "clip") or any(
        isinstance(a, str) and a.startswith("CLIPTextModel") for a in archs
    )


def config_found(cfg: dict, where: str) -> Found | None:
    """What a config.json describes, where it is a model sdcompile does not compile from that directory."""
    cls = cfg.get("_class_name")
    if cls == "UNet2DConditionModel":
        xl = cfg.get("addition_embed_type") == "text_time"
        return Found(
            f"a diffusers {'SDXL ' if xl else ''}UNet folder ({where}: UNet2DConditionModel)",
            "SDXL UNets cannot be compiled yet"
            if xl
            else "pass the pipeline directory above it (the one holding model_index.json, unet/, vae/ and "
            "text_encoder/)",
        )
    if cls in ("AutoencoderKL", "AutoencoderTiny"):
        return Found(
            f"a diffusers VAE folder ({where}: {cls})",
            "pass the pipeline directory above it, or its weights file as --vae beside a checkpoint",
        )
    if isinstance(cls, str) and cls.endswith("Transformer2DModel"):
        return Found(f"a diffusers DiT folder ({where}: {cls})", "not supported yet. " + SUPPORTED)
    if cls in PIPELINES:
        return Found(f"{PIPELINES[cls]} ({where}: {cls})", "not supported yet. " + SUPPORTED)
    mt = cfg.get("model_type")
    if isinstance(mt, str) and mt in HF_LLM_TYPES:
        return _llm(HF_LLM_TYPES[mt], f"{where}: model_type {mt!r}")
    if mt in ("t5", "umt5") or "T5EncoderModel" in (cfg.get("architectures") or []):
        return Found(f"a T5 encoder ({where}: model_type {mt!r})", "not supported yet. " + SUPPORTED)
    if "peft_type" in cfg:
        return Found(f"a LoRA adapter ({where}: peft_type {cfg['peft_type']!r})", _LORA_ADVICE)
    return None


def directory_found(root: Path) -> Found | None:
    """What a directory that is not a diffusers SD pipeline holds, from its config files."""
    for name in ("model_index.json", "config.json", "adapter_config.json"):
        cfg = read_json(root / name)
        if cfg is not None:
            found = config_found(cfg, name)
            if found is not None:
                return found
    if any(root.glob("pytorch_lora_weights.*")):
        return Found("a LoRA folder (pytorch_lora_weights.*)", _LORA_ADVICE)
    return None
