"""LoRA on a tiny SDXL, at run time and merged at compile time: one kohya file with SDXL's names (``lora_unet_`` diffusers paths, ``lora_te1_``
for CLIP-L, ``lora_te2_`` for OpenCLIP-bigG, whose q/k/v are slices of a fused in_proj in the checkpoint), stored as
GGUF under a .safetensors name, against diffusers' StableDiffusionXLPipeline with the same layers loaded by its
load_lora_weights at strength 0.8: txt2img latents after 3 steps within 1e-4 of their peak (the bound the SDXL
pipeline test holds an f32 artifact to without LoRA)."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples_sd as E
from tests.lora import lora_files as L

pytestmark = pytest.mark.slow
R = pytest.importorskip("tests.sd_reference")
SIZE = 64


@pytest.mark.parametrize("mode", ["runtime", "merge"])
def test_sdxl_lora_matches_diffusers(tmp_path, mode):
    import torch

    from runtime import load
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions
    from tests.e2e.test_sd2_sdxl_pipeline import _close, _run_reference, generate, sdxl_reference

    shape = E.TINY_SDXL
    st = E.sd_state(shape, 0)
    src = E.write_sd(tmp_path / "xl.safetensors", shape, 0, "safetensors", state=st)
    ref = sdxl_reference(st, shape, tmp_path)
    lay = L.layers(ref.unet, ref.text_encoder, text_encoder_2=ref.text_encoder_2)
    assert {k.split(".")[0] for k in lay} == {"unet", "text_encoder", "text_encoder_2"}
    path = L.write_gguf(tmp_path / "xl_lora.safetensors", L.kohya_dict(lay, sdxl=True))
    noise = np.random.default_rng(5).standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    prompt, negative = "a red fox in snow", "blurry"
    base = _run_reference(ref, prompt, negative, 3, 5.0, noise)
    ref.load_lora_weights({k: torch.from_numpy(v) for k, v in L.peft_dict(lay).items()}, adapter_name="a")
    ref.set_adapters(["a"], adapter_weights=[0.8])
    want = _run_reference(ref, prompt, negative, 3, 5.0, noise)
    assert np.abs(want - base).max() > 0.05 * np.abs(want).max()  # the LoRA matters

    art = tmp_path / "xl.sdc"
    if mode == "merge":  # merged into the weights when the artifact is written
        compile_model(src, art, CompileOptions(sizes=[(SIZE, SIZE)], loras=[(str(path), 0.8)]))
        model = load(art)
        rec = model.manifest["report"]["lora"]
        assert rec["mode"] == "merge" and rec["weights"] == len(lay) - len(L.TE_LAYERS), rec
        res = generate(model, prompt, negative, 3, 5.0, noise)
        _close(res.latents, want, 1e-4)
        return
    compile_model(src, art, CompileOptions(sizes=[(SIZE, SIZE)], lora_apply_mode="runtime"))
    model = load(art)
    (rep,) = model.set_loras([(path, 0.8)])
    # SDXL reads CLIP-L's penultimate layer: its last layer is not part of the model (nor acts in diffusers), so
    # the LoRA's tensors for it are listed as adapting nothing, each with the reason
    last = shape.text.layers - 1
    unused = {k for k in rep["unmatched"] if k.startswith(f"lora_te1_text_model_encoder_layers_{last}_")}
    assert unused == set(rep["unmatched"]) and len(unused) == 3 * len(L.TE_LAYERS), rep["unmatched"]
    assert all(why.startswith("the model leaves out the checkpoint's") for why in rep["unmatched"].values())
    assert (rep["format"], rep["weights"]) == ("gguf", len(lay) - len(L.TE_LAYERS))
    res = generate(model, prompt, negative, 3, 5.0, noise)
    _close(res.latents, want, 1e-4)
