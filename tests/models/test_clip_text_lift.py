"""Lifting the CLIP text encoder: every naming convention and file format gives the same IR."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile.errors import UnsupportedModelError
from sdcompile.formats import open_store
from sdcompile.ir import interpret, verify
from sdcompile.models import detect_family, lift


def _torch_ckpt(path, state):
    import torch

    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}, "global_step": 1}, path)
    return path


@pytest.fixture(scope="module")
def variants(tiny_state, tmp_path_factory):
    d = tmp_path_factory.mktemp("lift")
    files = {}
    for conv in ("ldm", "diffusers", "transformers", "transformers5", "sdxl-ldm"):
        files[f"safetensors-{conv}"] = ex.write_safetensors(
            d / f"{conv}.bin", ex.rename(tiny_state, conv), "f32", {"num_attention_heads": "2"}
        )
    files["gguf-ldm"] = ex.write_gguf(
        d / "sdcpp.model", ex.rename(tiny_state, "ldm"), "f32", {"num_attention_heads": 2}
    )
    files["ckpt-ldm"] = _torch_ckpt(d / "model.ckpt", ex.rename(tiny_state, "ldm"))
    return files


def test_same_ir_from_every_convention_and_format(variants, tiny_ids):
    graphs = {k: lift(open_store(p)) for k, p in variants.items()}
    texts = {k: str(g) for k, g in graphs.items()}
    first = texts["safetensors-ldm"]
    for k, t in texts.items():
        verify(graphs[k])
        assert t == first, k
    conv = {k: g.meta["convention"] for k, g in graphs.items()}
    assert conv["safetensors-transformers5"] == "transformers5" and conv["gguf-ldm"] == "ldm"
    outs = [interpret.run(g, {"input_ids": tiny_ids[:1]})["last_hidden_state"] for g in graphs.values()]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_hyperparameters_from_shapes_and_metadata(tmp_path):
    shape = ex.ClipTextShape(vocab=300, width=192, layers=3, heads=3, mlp=256, positions=20)
    state = ex.clip_text_state(shape)
    p = ex.write_safetensors(tmp_path / "w.safetensors", ex.rename(state, "transformers"))
    cfg = lift(open_store(p)).meta["config"]
    assert (cfg["vocab"], cfg["width"], cfg["layers"], cfg["mlp"], cfg["positions"]) == (300, 192, 3, 256, 20)
    assert cfg["heads"] == 3  # no metadata: width / 64
    p = ex.write_safetensors(
        tmp_path / "m.safetensors",
        ex.rename(state, "transformers"),
        "f32",
        {"num_attention_heads": "6", "hidden_act": "gelu"},
    )
    g = lift(open_store(p))
    assert g.meta["config"]["heads"] == 6 and g.meta["config"]["act"] == "gelu"
    assert any(n.op == "gelu" for n in g.nodes) and not any(n.op == "quick_gelu" for n in g.nodes)


def test_matches_transformers_with_gelu_and_6_heads(tmp_path):
    shape = ex.ClipTextShape(vocab=300, width=192, layers=2, heads=6, mlp=256, positions=20)
    state = ex.clip_text_state(shape, seed=5)
    p = ex.write_safetensors(
        tmp_path / "m.safetensors", state, "f32", {"num_attention_heads": "6", "hidden_act": "gelu"}
    )
    ids = ex.example_ids(2, 20, 300)
    got = interpret.run(lift(open_store(p)), {"input_ids": ids})["last_hidden_state"].reshape(2, 20, 192)
    ref = ex.transformers_hidden(ex.transformers_clip(state, shape, act="gelu"), ids)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)  # float64 interpreter vs transformers f32


def test_not_a_text_encoder_lists_what_was_found(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "unet.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4), np.float32),
            "first_stage_model.decoder.conv_in.weight": np.zeros((4, 4), np.float32),
        },
        str(p),
    )
    store = open_store(p)
    # SD component names make it an SD checkpoint; its text encoder is what is missing, and the error lists what
    # the file does hold.
    assert detect_family(store) == "sd"
    with pytest.raises(UnsupportedModelError) as e:
        lift(store)
    msg = str(e.value)
    assert "no CLIP text encoder found" in msg and "model.diffusion_model" in msg and "first_stage_model" in msg


def test_missing_tensor_is_named(tiny_state, tmp_path):
    state = ex.rename(tiny_state, "ldm")
    del state["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias"]
    p = ex.write_safetensors(tmp_path / "broken.safetensors", state)
    with pytest.raises(UnsupportedModelError, match=r"lacks tensor .*layers\.1\.mlp\.fc2\.bias"):
        lift(open_store(p))
