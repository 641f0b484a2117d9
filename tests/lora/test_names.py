"""LoRA names, kinds and prompt tags without compiling: every convention reduced to the same layer key (SDXL's
included, mapping only until its model lifts), LoHa/LoKr deltas against PEFT's own, refusals by name, and the
<lora:NAME:STRENGTH> syntax with its directory lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.lora import LoraError, delta, parse
from runtime.lora.parse import split_name
from runtime.lora.prompt import extract, find, resolve


class Dict:
    """A LoRA file held in memory (what runtime.lora.read gives for a file)."""

    def __init__(self, tensors: dict[str, np.ndarray], path: str = "mem.safetensors") -> None:
        self.t, self.path, self.format = tensors, path, "safetensors"

    def names(self) -> list[str]:
        return list(self.t)

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.t[name], np.float32)


Q = "encoder_layers_0_self_attn_q_proj"
UNET_Q = "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.mark.parametrize(
    "name, want",
    [
        # kohya SD1 / SDXL
        (f"lora_te_text_model_{Q}.lora_down.weight", ("text_encoder", Q, "down")),
        (f"lora_te1_text_model_{Q}.lora_up.weight", ("text_encoder", Q, "up")),
        (f"lora_te2_text_model_{Q}.alpha", ("text_encoder_2", Q, "alpha")),
        (f"lora_unet_{UNET_Q}.lora_down.weight", ("unet", UNET_Q, "down")),
        # diffusers / PEFT, transformers with and without the text_model level
        ("text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight", ("text_encoder", Q, "up")),
        ("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", ("text_encoder_2", Q, "down")),
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight", ("unet", UNET_Q, "down")),
        (
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default.weight",
            ("unet", UNET_Q, "down"),
        ),
        # diffusers' attention processors: to_out_lora adapts to_out[0]
        (
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
            ("unet", UNET_Q.replace("to_q", "to_out_0"), "up"),
        ),
        # stable-diffusion.cpp's converted names, SD1 and SDXL's second encoder
        (
            "lora.model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight.lora_down",
            ("unet", "input_blocks_4_1_transformer_blocks_0_attn1_to_q", "down"),
        ),
        (
            "lora.cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight.alpha",
            ("text_encoder", Q, "alpha"),
        ),
        (
            "lora.cond_stage_model.1.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight.lora_up",
            ("text_encoder_2", Q, "up"),
        ),
        # LyCORIS
        (f"lora_unet_{UNET_Q}.hada_w1_a", ("unet", UNET_Q, "hada_w1_a")),
        (f"lora_unet_{UNET_Q}.lokr_w2_b", ("unet", UNET_Q, "lokr_w2_b")),
        ("model.some_other_tensor", None),
        ("lora_unet_x.something_else", None),
    ],
)
def test_every_convention_gives_one_key(name, want):
    assert split_name(name) == want


def test_sdxl_canonical_names_have_these_aliases():
    """SDXL's second encoder under the canonical 'text_encoder_2.' + HF CLIP path gets the key every SDXL LoRA
    convention above reduces to."""
    from sdcompile.ir import Graph, Module
    from sdcompile.lora.aliases import targets

    g = Graph()
    x = g.add_input("x", (1, 77, 8), "float32", "text_encoder_2")
    for te in ("text_encoder", "text_encoder_2"):
        w = g.add_weight(f"{te}.encoder.layers.0.self_attn.q_proj.weight", (8, 8), "f32", te, None)
        g.add_node("linear", [x, w], f"{te}.q", (1, 77, 8), te, bias=False, act="none", residual=False)
    table, _ = targets(Module(functions={"f": g}))
    assert table["text_encoder_2.encoder.layers.0.self_attn.q_proj.weight"]["aliases"] == [f"text_encoder_2:{Q}"]
    assert table["text_encoder.encoder.layers.0.self_attn.q_proj.weight"]["aliases"] == [f"text_encoder:{Q}"]


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_deltas_match_peft(kind):
    """LoHa and LoKr layers made by PEFT (a library nobody here wrote): sdcompile's delta equals PEFT's
    get_delta_weight for a linear and a 3x3 convolution. PEFT scales LoKr by alpha/r always, LyCORIS (and sdcompile,
    as ComfyUI and sd.cpp) only for decomposed factors: alpha = r makes both 1."""
    import peft
    import torch

    torch.manual_seed(0)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 24)
            self.conv = torch.nn.Conv2d(8, 12, 3, padding=1)

    if kind == "loha":
        cfg = peft.LoHaConfig(r=4, alpha=2, target_modules=["lin", "conv"], init_weights=False)
    else:
        cfg = peft.LoKrConfig(r=4, alpha=4, target_modules=["lin", "conv"], init_weights=False)
    m = peft.get_peft_model(M(), cfg)
    tensors = {}
    for k, v in peft.get_peft_model_state_dict(m).items():
        layer, role = k.removeprefix("base_model.model.").split(".")
        tensors[f"lora_unet_{layer}.{role}"] = v.detach().numpy()
    for layer in ("lin", "conv"):
        tensors[f"lora_unet_{layer}.alpha"] = np.array(cfg.alpha, np.float32)
    f = Dict(tensors)
    parsed = parse(f)
    assert {lay.kind for lay in parsed.layers.values()} == {kind} and not parsed.unrecognized
    for layer in ("lin", "conv"):
        want = getattr(m.base_model.model, layer).get_delta_weight("default").detach().numpy()
        got = delta(f, parsed.layers[f"unet:{layer}"], want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, what",
    [
        ("lora_unet_x.dora_scale", "DoRA"),
        ("lora_unet_x.lora_mid.weight", "Tucker"),
        ("lora_unet_x.hada_t1", "Tucker"),
        ("lora_unet_x.diff", "full weight difference"),
    ],
)
def test_unsupported_kinds_are_refused_by_name(name, what):
    f = Dict({name: np.zeros((2, 2)), "lora_unet_x.lora_down.weight": np.zeros((1, 2))})
    with pytest.raises(LoraError, match=what):
        parse(f)


def test_incomplete_layer_is_listed_not_used():
    f = Dict({"lora_unet_a.lora_down.weight": np.zeros((1, 2)), "lora_unet_b.weird": np.zeros(1)})
    p = parse(f)
    assert not p.layers
    assert "has no up tensor" in p.unrecognized["lora_unet_a.lora_down.weight"]
    assert "of any known convention" in p.unrecognized["lora_unet_b.weird"]


def test_prompt_tags(tmp_path: Path):
    text, loras = extract("a cat <lora:style:0.8>, oil <lora:sub/detail> painting <lora:style:0.2>")
    assert text == "a cat , oil  painting " and loras == [("style", 1.0), ("sub/detail", 1.0)]
    with pytest.raises(LoraError, match="not a number"):
        extract("<lora:x:big>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "style.gguf").write_bytes(b"GGUF")
    (tmp_path / "sub" / "detail").write_bytes(b"x")  # no extension at all
    assert find("style", tmp_path).name == "style.gguf"
    assert find("sub/detail", tmp_path).name == "detail"
    with pytest.raises(LoraError, match=r"no file called nope .* it holds: style.gguf"):
        find("nope", tmp_path)
    with pytest.raises(LoraError, match="leaves the LoRA directory"):
        find("../x", tmp_path)
    (tmp_path / "style.ckpt").write_bytes(b"x")
    with pytest.raises(LoraError, match="2 files"):
        find("style", tmp_path)
    with pytest.raises(LoraError, match="no --lora-model-dir"):
        resolve("a <lora:style:1>", "", None)
    p, n, files, named = resolve("a <lora:sub/detail:0.5>", "blurry <lora:sub/detail:0.25>", tmp_path)
    assert (p, n, named) == ("a ", "blurry ", [("sub/detail", 0.75)]) and files[0][1] == 0.75


def test_peft_alphas_from_diffusers_metadata(tmp_path):
    """A LoRA saved by diffusers' save_lora_weights keeps lora_alpha (and an alpha_pattern) in the safetensors
    metadata, not in tensors: the scale must come from there. Reference: PEFT's own delta of the live adapter."""
    import diffusers
    import peft

    from runtime.lora import open_lora
    from sdcompile import examples_sd as E
    from tests import sd_reference as R

    unet = R.unet_model(E.sd_state(E.TINY_SD, 0), E.TINY_SD)
    cfg = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "to_k"], init_lora_weights=False, alpha_pattern={"attn2.to_k": 2}
    )
    unet.add_adapter(cfg)
    layers = peft.get_peft_model_state_dict(unet)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=layers, unet_lora_adapter_metadata=cfg.to_dict(), weight_name="m.safetensors"
    )
    f = open_lora(tmp_path / "m.safetensors")
    parsed = parse(f)
    checked = set()
    for name, m in unet.named_modules():
        if not hasattr(m, "get_delta_weight") or not name.endswith(("attn1.to_q", "attn2.to_k")):
            continue
        want = m.get_delta_weight("default").detach().numpy()
        got = delta(f, parsed.layers["unet:" + name.replace(".", "_")], want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        checked.add(name.rsplit(".", 1)[-1])
    assert checked == {"to_q", "to_k"}  # scale 2 from lora_alpha, 0.5 from the pattern
