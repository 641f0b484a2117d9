"""What every pass receives besides the IR: the compile options and the report it appends its decisions to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompileOptions:
    target: str = "cpu"  # "cpu" | "vulkan" | "cuda"
    type: str | None = None  # default storage type for quantizable weights; None keeps the file's type
    tensor_type_rules: list[tuple[str, str]] = field(default_factory=list)  # (regex, type), first match wins
    fallback_policy: str = "lossless"
    memory_budget: int | None = None  # bytes; None: the probed device limit where one can be probed
    cuda_archs: list[str] | None = None
    batch: int = 1
    weights_format: str = "gguf"  # "gguf" | "safetensors"
    compute: str = "f32"  # precision of matrix products: "f32" | "bf16" (CPU: AMX-BF16 tiles where the host has them)
    act_type: str = "f32"  # storage of float activations inside functions: "f32" | "f16" | "bf16" (math stays f32)
    prediction: str | None = None  # "eps" | "v": what the UNet predicts, where the checkpoint does not say (SD 2.x)
    # Diffusion models: image sizes (width, height) compiled, the components compiled, separate component files
    # (as stable-diffusion.cpp's --diffusion-model, --vae, --clip-l take them; a separate VAE overrides the
    # checkpoint's).
    # None: the model's own size (SD 1.x and SD 2.x 512-base: 512x512, SD 2.x 768-v: 768x768, SDXL: 1024x1024)
    sizes: list[tuple[int, int]] | None = None
    components: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    vae: str | None = None
    diffusion_model: str | None = None
    clip_l: str | None = None
    # Memory: decode the VAE in overlapping tiles of this many latent pixels ("auto": only where the whole decode
    # does not fit the budget or a buffer limit; "off"); hold only the running component's weights on the device
    # ("auto": only where all of them do not fit; "on"; "off").
    vae_tiling: str = "auto"
    vae_tile: int = 32
    vae_tile_overlap: int | None = None  # latent pixels; None: a quarter of the tile
    offload: str = "auto"
    # LoRA: (file, strength) pairs merged into the weights; "merge" or "runtime" (the artifact keeps a hook on every
    # adaptable step so a LoRA can be chosen when the image is made; see passes/lora.py)
    loras: list[tuple[str, float]] = field(default_factory=list)
    lora_apply_mode: str = "merge"


@dataclass
class PassContext:
    options: CompileOptions
    report: dict[str, Any] = field(default_factory=dict)
