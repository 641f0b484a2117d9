"""The CLIP text encoder's hyperparameters come from what the files state: a config.json beside the weights (as
transformers' save_pretrained leaves it) or in a transformers model folder, then metadata, then shapes; what nothing
states is assumed and reported, and a config that contradicts the weights is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile.errors import UnsupportedModelError
from sdcompile.ir import interpret
from sdcompile.models import lift_module
from sdcompile.models.inputs import open_model
from sdcompile.passes.context import CompileOptions

SHAPE = ex.ClipTextShape(vocab=300, width=64, layers=2, heads=2, mlp=128, positions=16)


def save_pretrained(d, act: str = "gelu", shape: ex.ClipTextShape = SHAPE, seed: int = 3):
    """transformers' CLIPTextModel with weights large enough that gelu and quick_gelu visibly differ (CLIP's own
    initialisation keeps pre-activations near 0, where the two agree to 1e-4), saved as transformers saves it."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.width,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        max_position_embeddings=shape.positions,
        hidden_act=act,
        bos_token_id=shape.vocab - 2,
        eos_token_id=shape.vocab - 1,
        pad_token_id=shape.vocab - 1,
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 1.0 / p.shape[1] ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0, 0.1)
    model.save_pretrained(d)
    return model


def _lift(path):
    opts = CompileOptions()
    store, configs = open_model(path, opts)
    return lift_module(store, opts, configs)


def _hidden(model, ids):
    return ex.transformers_hidden(model, ids)


def test_gelu_and_heads_from_config_json_beside_the_weights(tmp_path):
    model = save_pretrained(tmp_path / "te")
    ids = ex.example_ids(2, SHAPE.positions, SHAPE.vocab)
    want = _hidden(model, ids)
    # the test can tell the activations apart: the same weights under quick_gelu are far off
    model.config.hidden_act = "quick_gelu"
    from transformers.activations import ACT2FN

    for m in model.modules():
        if hasattr(m, "activation_fn"):
            m.activation_fn = ACT2FN["quick_gelu"]
    assert np.abs(_hidden(model, ids) - want).max() > 1e-2

    for path in (tmp_path / "te" / "model.safetensors", tmp_path / "te"):  # the weights file, or its folder
        mod = _lift(path)
        cfg = mod.meta["config"]
        assert (cfg["act"], cfg["heads"]) == ("gelu", 2), path  # width 64 alone would say 1 head, quick_gelu
        assert not [a for a in mod.meta["assumptions"] if "activation" in a or "heads" in a]
        got = interpret.run(mod.functions["encode_text"], {"input_ids": ids})["last_hidden_state"]
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=2e-5)


def test_config_contradicting_the_weights_is_refused(tmp_path):
    save_pretrained(tmp_path / "te")
    p = tmp_path / "te" / "config.json"
    cfg = json.loads(p.read_text())
    cfg["intermediate_size"] = 256
    p.write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=r"intermediate_size = 256.*128"):
        _lift(tmp_path / "te" / "model.safetensors")


def test_unknown_activation_is_refused_by_name(tmp_path):
    save_pretrained(tmp_path / "te", act="gelu_new")
    with pytest.raises(UnsupportedModelError, match=r"'gelu_new' is not supported"):
        _lift(tmp_path / "te" / "model.safetensors")


def test_config_keys_not_read_are_reported(tmp_path):
    save_pretrained(tmp_path / "te")
    p = tmp_path / "te" / "config.json"
    cfg = json.loads(p.read_text())
    cfg["rope_theta"] = 10000.0
    p.write_text(json.dumps(cfg))
    notes = _lift(tmp_path / "te" / "model.safetensors").meta["assumptions"]
    assert any("rope_theta" in a and "not read" in a for a in notes), notes
    assert not any("projection_dim" in a or "eos_token_id" in a for a in notes)  # stated, but not for this output


def test_what_nothing_states_is_assumed_and_reported(tmp_path):
    p = ex.write_safetensors(tmp_path / "w.safetensors", ex.rename(ex.clip_text_state(SHAPE), "ldm"))
    mod = _lift(p)
    notes = " | ".join(mod.meta["assumptions"])
    assert "1 attention heads" in notes and "quick_gelu" in notes and "layer-norm eps 1e-05" in notes


def test_openclip_widths_assume_gelu(tmp_path):
    """SD 2.x's OpenCLIP ViT-H (width 1024) and SDXL's ViT-bigG (1280) use gelu, CLIP ViT-L (768) quick_gelu; with
    nothing stated, the width picks the family (as stable-diffusion.cpp does) and the report says so."""
    shape = ex.ClipTextShape(vocab=8, width=1024, layers=1, heads=16, mlp=64, positions=4)
    p = ex.write_safetensors(tmp_path / "h.safetensors", ex.rename(ex.clip_text_state(shape), "transformers"), "f16")
    mod = _lift(p)
    assert mod.meta["config"]["act"] == "gelu" and mod.meta["config"]["heads"] == 16
    assert any("gelu" in a and "OpenCLIP" in a for a in mod.meta["assumptions"])
