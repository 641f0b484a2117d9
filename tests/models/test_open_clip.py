"""SD 2.x's and SDXL's text encoders (OpenCLIP ViT-H / ViT-bigG, CLIP-L's penultimate layer, the pooled output)
against transformers on the same weights.

The weights are tiny random OpenCLIP towers written under the names SD checkpoints use (sdcompile.examples_clip);
the reference converts them with diffusers' own single-file converters (convert_open_clip_checkpoint,
convert_ldm_clip_checkpoint) and runs transformers' CLIPTextModel / CLIPTextModelWithProjection, so nothing of
sdcompile's naming code is in the reference. The same weights under stable-diffusion.cpp's names and diffusers'
folder names must give the same IR, the same outputs and, after `quantize`, the same per-tensor types.

Tolerances: the interpreter computes in float64, transformers in float32. Through up to 23 layers the float32
rounding reaches ~1e-6 of the largest value (measured: 1.8e-6 at 4.5 for SD 2.x, 1.6e-6 at 3.1 for the pooled
output); the bound is 1e-5 of the largest reference value. Any naming error (q and k swapped, the projection not
transposed, one layer too many or too few, the final norm applied or not) moves values by a tenth or more of that
scale, checked below where it is cheap to show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdcompile import examples as ex
from sdcompile import examples_clip as X
from sdcompile.errors import UnsupportedModelError
from sdcompile.formats import open_store
from sdcompile.formats.base import TensorInfo, TensorStore
from sdcompile.ir import Graph, interpret, verify
from sdcompile.ir.weights import as_f32
from sdcompile.models import clip_text
from sdcompile.passes import quantize
from sdcompile.passes.context import CompileOptions, PassContext
from tests.e2e.helpers import TARGETS

BOS, EOS = X.TINY_H.vocab - 2, X.TINY_H.vocab - 1
RTOL_OF_MAX = 1e-5


def _close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    np.testing.assert_allclose(got, ref, rtol=0, atol=RTOL_OF_MAX * np.abs(ref).max(), err_msg=what)


# --- the reference: diffusers' converters + transformers ------------------------------------------------------------


def _load(model, converted: dict) -> None:
    """Load a diffusers-converted state dict (keys text_model.* and text_projection.weight) into a transformers model,
    whose own keys may lack text_model. (transformers 5's CLIPTextModel)."""
    import torch

    own = model.state_dict()
    pre = "text_model." if any(k.startswith("text_model.") for k in own) else ""
    sd = {}
    for k, v in converted.items():
        k = pre + k.removeprefix("text_model.") if k.startswith("text_model.") else k
        sd[k] = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    assert not missing and not unexpected, (missing[:4], unexpected[:4])


def _config(shape, layers: int, heads: int, act: str, pad: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.width,
        intermediate_size=shape.mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=shape.positions,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=BOS,
        eos_token_id=EOS,  # transformers pools at the first position of this id
        pad_token_id=pad,
        **extra,
    )


def _torch(state: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def sd2_converted(state: dict) -> dict:
    """diffusers' SD 2.x text encoder from an LDM state dict: its converter drops resblock 23 and text_projection."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel

    m = CLIPTextModel(_config(X.TINY_H, X.TINY_H.layers - 1, 2, "gelu", 0))
    return convert_open_clip_checkpoint(m, _torch(state), prefix=X.SD2_PREFIX)


def sd2_reference(state: dict, ids: np.ndarray) -> np.ndarray:
    """SD 2.x's context: diffusers' 23-layer CLIPTextModel's last_hidden_state."""
    import torch
    from transformers import CLIPTextModel

    m = CLIPTextModel(_config(X.TINY_H, X.TINY_H.layers - 1, 2, "gelu", 0)).eval()
    _load(m, sd2_converted(state))
    with torch.no_grad():
        return m(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()


def sdxl_converted(state: dict) -> tuple[dict, dict]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    g = X.TINY_BIGG
    mg = CLIPTextModelWithProjection(_config(g, g.layers, 3, "gelu", 0, g.projection))
    clip_l = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith("conditioner.embedders.0.")})
    return clip_l, convert_open_clip_checkpoint(mg, _torch(state), prefix=X.SDXL_G_PREFIX)


def sdxl_reference(state: dict, ids_l: np.ndarray, ids_g: np.ndarray) -> dict[str, np.ndarray]:
    """diffusers' StableDiffusionXLPipeline.encode_prompt on the converted encoders: CLIP-L's and bigG's
    hidden_states[-2], and bigG's text_embeds."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    lc, gc = sdxl_converted(state)
    L, g = X.TINY_L, X.TINY_BIGG
    ml = CLIPTextModel(_config(L, L.layers, L.heads, "quick_gelu", EOS)).eval()
    mg = CLIPTextModelWithProjection(_config(g, g.layers, 3, "gelu", 0, g.projection)).eval()
    _load(ml, lc)
    _load(mg, gc)
    with torch.no_grad():
        ol = ml(input_ids=torch.from_numpy(ids_l), output_hidden_states=True)
        og = mg(input_ids=torch.from_numpy(ids_g), output_hidden_states=True)
    return {
        "clip_l": ol.hidden_states[-2].numpy(),
        "bigg": og.hidden_states[-2].numpy(),
        "text_embeds": og.text_embeds.numpy(),
    }


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd2_state():
    return X.open_clip_state(X.TINY_H, seed=0)


@pytest.fixture(scope="module")
def sdxl_st():
    return X.sdxl_state(seed=0)


@pytest.fixture(scope="module")
def ids():
    # CLIP-L's tokenizer pads with EOS, OpenCLIP's with 0 ("!"); the first row fills all 16 positions
    s = X.TINY_H.positions
    return {"l": X.prompt_ids(2, s, X.TINY_H.vocab, pad=EOS), "g": X.prompt_ids(2, s, X.TINY_H.vocab, pad=0)}


@pytest.fixture(scope="module")
def files(sd2_state, sdxl_st, tmp_path_factory):
    """The same weights in every layout sdcompile reads them from."""
    d = tmp_path_factory.mktemp("openclip")
    out = {
        "sd2-ldm": ex.write_safetensors(d / "sd2.safetensors", sd2_state),
        "sd2-sdcpp": ex.write_gguf(
            d / "sd2.gguf", X.sdcpp_names(sd2_state, X.SD2_PREFIX, "cond_stage_model.transformer."), "f32"
        ),
        # diffusers' text_encoder/ as the lead's directory reader presents it (LDM CLIP names)
        "sd2-diffusers": ex.write_safetensors(
            d / "sd2_hf.safetensors",
            {"cond_stage_model.transformer." + k: v.numpy() for k, v in sd2_converted(sd2_state).items()},
        ),
        "sdxl-ldm": ex.write_safetensors(d / "sdxl.safetensors", sdxl_st),
    }
    clip_l = {
        k.replace("conditioner.embedders.0.", "cond_stage_model.", 1): v
        for k, v in sdxl_st.items()
        if k.startswith("conditioner.embedders.0.")
    }
    bigg = X.sdcpp_names(
        {k: v for k, v in sdxl_st.items() if k.startswith(X.SDXL_G_PREFIX)},
        X.SDXL_G_PREFIX,
        "cond_stage_model.1.transformer.",
    )
    out["sdxl-sdcpp"] = ex.write_gguf(d / "sdxl.gguf", clip_l | bigg, "f32")
    lc, gc = sdxl_converted(sdxl_st)
    folders = {"text_encoder/" + k: np.asarray(v) for k, v in lc.items()}
    folders |= {"text_encoder_2/" + k: v.numpy() for k, v in gc.items()}
    out["sdxl-diffusers"] = ex.write_safetensors(d / "sdxl_hf.safetensors", folders)
    # stable-diffusion.cpp's convert --clip_l --clip_g of transformers-named files: text_encoders.clip_{l,g}.
    # transformer., and CLIPTextModelWithProjection's text_projection.weight renamed text_model.text_projection,
    # still [out, in]
    comps = {"text_encoders.clip_l.transformer." + k: np.asarray(v) for k, v in lc.items()}
    for k, v in gc.items():
        k = "text_model.text_projection" if k == "text_projection.weight" else k
        comps["text_encoders.clip_g.transformer." + k] = v.numpy()
    out["sdxl-sdcpp-components"] = ex.write_gguf(d / "sdxl_components.gguf", comps, "f32")
    return out


def _feeds(ids) -> dict[str, np.ndarray]:
    return {"input_ids": ids["l"], "input_ids_2": ids["g"], "eos_mask": clip_text.eos_mask_of(ids["g"], EOS)}


# --- which encoders a file holds ---------------------------------------------------------------------------------


def test_find_text_encoders_names_role_layout_and_canonical_prefix(files, tmp_path):
    def found(path):
        return [(e.role, e.names, e.prefix, e.canon) for e in clip_text.find_text_encoders(open_store(path))]

    assert found(files["sd2-ldm"]) == [("sd2", "open_clip", "cond_stage_model.model.", "text_encoder.")]
    assert found(files["sd2-sdcpp"]) == [
        ("sd2", "hf_fused", "cond_stage_model.transformer.text_model.", "text_encoder.")
    ]
    assert found(files["sdxl-ldm"]) == [
        ("sdxl_clip_l", "hf", "conditioner.embedders.0.transformer.text_model.", "text_encoder."),
        ("sdxl_bigg", "open_clip", "conditioner.embedders.1.model.", "text_encoder_2."),
    ]
    assert found(files["sdxl-sdcpp"]) == [
        ("sdxl_clip_l", "hf", "cond_stage_model.transformer.text_model.", "text_encoder."),
        ("sdxl_bigg", "hf_fused", "cond_stage_model.1.transformer.text_model.", "text_encoder_2."),
    ]
    assert found(files["sdxl-diffusers"]) == [
        ("sdxl_clip_l", "hf", "text_encoder/text_model.", "text_encoder."),
        ("sdxl_bigg", "hf", "text_encoder_2/text_model.", "text_encoder_2."),
    ]
    # stable-diffusion.cpp's convert of separate --clip_l / --clip_g files (transformers-named, as ComfyUI's)
    assert found(files["sdxl-sdcpp-components"]) == [
        ("sdxl_clip_l", "hf", "text_encoders.clip_l.transformer.text_model.", "text_encoder."),
        ("sdxl_bigg", "hf", "text_encoders.clip_g.transformer.text_model.", "text_encoder_2."),
    ]
    refiner = X.open_clip_state(X.TINY_BIGG, 1, "conditioner.embedders.0.model.")
    p = ex.write_safetensors(tmp_path / "refiner.safetensors", refiner)
    assert found(p) == [("sdxl_bigg", "open_clip", "conditioner.embedders.0.model.", "text_encoder_2.")]
    sd1 = ex.write_safetensors(tmp_path / "sd1.safetensors", ex.rename(ex.clip_text_state(), "ldm"))
    assert found(sd1) == [("sd1", "hf", "cond_stage_model.transformer.text_model.", "text_encoder.")]
    # what SD reads from each: SD 2.x's penultimate layer only where the file holds the whole OpenCLIP tower
    e = {k: clip_text.find_text_encoders(open_store(files[k])) for k in ("sd2-ldm", "sd2-sdcpp", "sd2-diffusers")}
    assert [(x[0].context_layer, x[0].context_final_norm) for x in e.values()] == [(-2, True), (-2, True), (-1, True)]


# --- SD 2.x ----------------------------------------------------------------------------------------------------------


def test_sd2_context_matches_diffusers_23_layer_encoder(files, sd2_state, ids):
    store = open_store(files["sd2-ldm"])
    g = clip_text.lift(store, batch=2)
    verify(g)
    assert g.inputs == ["input_ids"] and g.outputs == ["last_hidden_state"]
    got = interpret.run(g, {"input_ids": ids["g"]})["last_hidden_state"]
    ref = sd2_reference(sd2_state, ids["g"])
    _close(got, ref, "SD 2.x context")
    # the test tells the layer apart: all 24 layers (through ln_final) are far off
    full = Graph()
    enc = clip_text.find_text_encoders(store)[0]
    out = clip_text.add_text_encoder(full, store, enc, batch=2, layer=-1, hidden_name="h")
    full.outputs.append(out.hidden)
    assert np.abs(interpret.run(full, {"input_ids": ids["g"]})["h"] - ref).max() > 0.1 * np.abs(ref).max()
    # report: gelu and 2 heads assumed from OpenCLIP's names and the width; the last resblock ignored, with why
    notes = " | ".join(g.meta["assumptions"])
    assert "gelu activation (exact erf: OpenCLIP's nn.GELU" in notes and "2 attention heads" in notes
    ign = g.meta["ignored"]
    last = [k for k in ign if ".resblocks.23." in k]
    assert len(last) == 12 and all("penultimate" in ign[k] for k in last)
    assert "text projection" in ign[X.SD2_PREFIX + "text_projection"]
    assert "logit scale" in ign[X.SD2_PREFIX + "logit_scale"]
    used = {v.data.key for v in g.weights()}
    assert used.isdisjoint(ign) and used | set(ign) == set(store.names())


def test_sd2_same_ir_and_outputs_from_sdcpp_gguf_and_diffusers_names(files, ids):
    # diffusers' text_encoder/config.json states gelu; without it a 128-wide transformers-named encoder would be
    # assumed OpenAI CLIP's quick_gelu (test_clip_text_config.py)
    cfgs = {"sd2-diffusers": {"hidden_act": "gelu", "num_attention_heads": 2}}
    graphs = {
        k: clip_text.lift(open_store(files[k]), batch=2, config=cfgs.get(k))
        for k in ("sd2-ldm", "sd2-sdcpp", "sd2-diffusers")
    }
    texts = {k: str(g) for k, g in graphs.items()}
    assert texts["sd2-sdcpp"] == texts["sd2-ldm"] == texts["sd2-diffusers"]
    outs = {k: interpret.run(g, {"input_ids": ids["g"]})["last_hidden_state"] for k, g in graphs.items()}
    np.testing.assert_array_equal(outs["sd2-sdcpp"], outs["sd2-ldm"])
    np.testing.assert_array_equal(outs["sd2-diffusers"], outs["sd2-ldm"])
    ign = graphs["sd2-sdcpp"].meta["ignored"]
    assert "logit scale" in ign["cond_stage_model.model.logit_scale"]  # where sd.cpp's convert leaves it
    assert "text projection" in ign["cond_stage_model.transformer.text_model.text_projection"]
    assert sum("penultimate" in why for why in ign.values()) == 12
    q = "text_encoder.encoder.layers.5.self_attn.k_proj.weight"
    src = {k: graphs[k].values[q].data for k in graphs}
    assert src["sd2-ldm"].key == X.SD2_PREFIX + "transformer.resblocks.5.attn.in_proj_weight"
    assert "slice(" in src["sd2-ldm"].expr.describe() and src["sd2-diffusers"].expr is None


def test_fused_in_proj_of_a_wrong_shape_is_refused_by_name(sd2_state, tmp_path):
    bad = dict(sd2_state)
    key = X.SD2_PREFIX + "transformer.resblocks.3.attn.in_proj_weight"
    bad[key] = bad[key][: 2 * X.TINY_H.width]
    p = ex.write_safetensors(tmp_path / "bad.safetensors", bad)
    with pytest.raises(
        UnsupportedModelError, match=rf"{key} is \[256, 128\]; the fused q/k/v projection .* \[384, 128\]"
    ):
        clip_text.lift(open_store(p))


# --- SDXL ------------------------------------------------------------------------------------------------------------


def test_sdxl_context_and_pooled_match_transformers(files, sdxl_st, ids):
    store = open_store(files["sdxl-ldm"])
    g = clip_text.lift(store, batch=2)
    verify(g)
    assert g.inputs == ["input_ids", "input_ids_2", "eos_mask"]
    assert g.outputs == ["last_hidden_state", "text_embeds"]
    got = interpret.run(g, _feeds(ids))
    ref = sdxl_reference(sdxl_st, ids["l"], ids["g"])
    ctx, wl = got["last_hidden_state"], X.TINY_L.width
    assert ctx.shape == (2, 16, X.TINY_L.width + X.TINY_BIGG.width)
    _close(ctx[..., :wl], ref["clip_l"], "CLIP-L hidden_states[-2]")
    _close(ctx[..., wl:], ref["bigg"], "bigG hidden_states[-2]")
    _close(got["text_embeds"], ref["text_embeds"], "bigG text_embeds")
    # the test tells the pooling position apart: the last position instead of the EOS row is far off
    assert np.abs(got["text_embeds"][1] - ref["text_embeds"][1]).max() < 1e-4
    wrong = dict(_feeds(ids), eos_mask=np.eye(16, dtype=np.float32)[[15, 15]])
    off = interpret.run(g, wrong)["text_embeds"][1]
    assert np.abs(off - ref["text_embeds"][1]).max() > 0.1 * np.abs(ref["text_embeds"]).max()
    ign = g.meta["ignored"]
    assert all("penultimate" in ign[k] for k in ign if ".encoder.layers.2." in k)  # CLIP-L's last layer
    assert "final layer norm not applied" in ign[X.SDXL_L_PREFIX + "final_layer_norm.weight"]
    used = {v.data.key for v in g.weights()}
    assert used.isdisjoint(ign) and used | set(ign) == set(store.names())
    assert g.values["text_encoder_2.text_projection.weight"].shape == (X.TINY_BIGG.projection, X.TINY_BIGG.width)


def test_sdxl_same_ir_and_outputs_from_sdcpp_gguf_and_diffusers_folders(files, ids):
    layouts = ("sdxl-ldm", "sdxl-sdcpp", "sdxl-diffusers", "sdxl-sdcpp-components")
    graphs = {k: clip_text.lift(open_store(files[k]), batch=2) for k in layouts}
    texts = {k: str(g) for k, g in graphs.items()}
    assert all(t == texts["sdxl-ldm"] for t in texts.values())
    outs = {k: interpret.run(g, _feeds(ids)) for k, g in graphs.items()}
    for k in layouts[1:]:
        for o in ("last_hidden_state", "text_embeds"):
            np.testing.assert_array_equal(outs[k][o], outs["sdxl-ldm"][o], err_msg=f"{k} {o}")
    notes = " | ".join(graphs["sdxl-sdcpp"].meta["assumptions"])
    assert "text_model.text_projection read as [in, out]" in notes


def _quantized(path, **opts):
    ctx = PassContext(CompileOptions(**opts))
    g = quantize.run(clip_text.lift(open_store(path), batch=2), ctx)
    verify(g, "quantize")
    return g, {d["tensor"]: d["to"] for d in ctx.report["quantize"]["tensors"]}


@pytest.mark.parametrize(
    "opts",
    [
        {"type": "q8_0"},
        {
            "type": "f16",
            "tensor_type_rules": quantize.parse_rules(r"text_encoder_2\..*(q|k)_proj=q4_0,text_projection=q5_0"),
        },
    ],
    ids=["type-q8_0", "rules"],
)
def test_same_types_and_outputs_after_quantize_from_every_layout(files, ids, opts):
    """The failure issue 11 names: SDXL's fused bigG attention quantized from one file and not from another. Here
    the canonical names make the types and the quantized values the same, whatever the names in the file."""
    got = {k: _quantized(files[k], **opts) for k in ("sdxl-ldm", "sdxl-sdcpp", "sdxl-diffusers")}
    types = {k: t for k, (_, t) in got.items()}
    assert types["sdxl-ldm"] == types["sdxl-sdcpp"] == types["sdxl-diffusers"]
    t = types["sdxl-ldm"]
    if "tensor_type_rules" in opts:
        assert t["text_encoder_2.encoder.layers.1.self_attn.q_proj.weight"] == "q4_0"
        assert t["text_encoder_2.encoder.layers.1.self_attn.v_proj.weight"] == "f16"
        assert t["text_encoder.encoder.layers.1.self_attn.q_proj.weight"] == "f16"
        assert t["text_encoder_2.text_projection.weight"] == "q5_0"
    else:
        fused = [f"text_encoder_2.encoder.layers.{i}.self_attn.{p}_proj.weight" for i in range(4) for p in "qkv"]
        assert all(t[n] == "q8_0" for n in fused)
        assert t["text_encoder_2.text_projection.weight"] == "q8_0"
    weights = {k: {v.name: as_f32(v) for v in g.weights()} for k, (g, _) in got.items()}
    for k in ("sdxl-sdcpp", "sdxl-diffusers"):
        assert weights[k].keys() == weights["sdxl-ldm"].keys()
        for n, w in weights["sdxl-ldm"].items():
            np.testing.assert_array_equal(weights[k][n], w, err_msg=f"{k} {n}")
    outs = {k: interpret.run(g, _feeds(ids)) for k, (g, _) in got.items()}
    for k in ("sdxl-sdcpp", "sdxl-diffusers"):
        np.testing.assert_array_equal(outs[k]["text_embeds"], outs["sdxl-ldm"]["text_embeds"])
        np.testing.assert_array_equal(outs[k]["last_hidden_state"], outs["sdxl-ldm"]["last_hidden_state"])


def test_quantized_sdcpp_gguf_fused_rows_keep_their_values(sdxl_st, tmp_path):
    """A q8_0 GGUF (stable-diffusion.cpp's convert --type q8_0) holds the fused in_proj quantized: the split is
    decoded exactly to f32 (reported), and --type q8_0 quantizes each third again to the same values."""
    from sdcompile.quant.reference import dequantize

    bigg = X.sdcpp_names(
        {k: v for k, v in sdxl_st.items() if k.startswith(X.SDXL_G_PREFIX)},
        X.SDXL_G_PREFIX,
        "cond_stage_model.1.transformer.",
    )
    p = ex.write_gguf(tmp_path / "bigg_q8.gguf", bigg, "q8_0")
    store = open_store(p)
    g = clip_text.lift(store, batch=1)
    assert any("decoded exactly to f32" in n for n in g.meta["assumptions"])
    q = "text_encoder_2.encoder.layers.2.self_attn.k_proj.weight"
    assert g.values[q].dtype == "f32"
    gq, types = _quantized(p, type="q8_0")
    assert types[q] == "q8_0"
    key = "cond_stage_model.1.transformer.text_model.encoder.layers.2.self_attn.in_proj.weight"
    info = store.info(key)
    fused = dequantize(np.asarray(store.raw(key)), info.dtype, info.shape)
    d = X.TINY_BIGG.width
    np.testing.assert_array_equal(as_f32(gq.values[q]), fused[d : 2 * d])


def test_refiner_bigg_alone(sdxl_st, ids, tmp_path):
    """The SDXL refiner keeps bigG alone as its first embedder: its context is bigG's hidden_states[-2] (1280 wide
    at full size), with the pooled output, from the ids bigG's tokenizer pads with 0."""
    # stable-diffusion.cpp's convert of separate --clip_l / --clip_g files
    sdcpp = (
        {
            k.replace("cond_stage_model.1.", "text_encoders.clip_g.", 1).replace(
                "cond_stage_model.transformer.", "text_encoders.clip_l.transformer.", 1
            ): v
            for k, v in open_store(files["sdxl-sdcpp"]).items()
        }
        if False
        else None
    )
    del sdcpp
    refiner = X.open_clip_state(X.TINY_BIGG, 1, "conditioner.embedders.0.model.")  # sdxl_state's bigG weights
    g = clip_text.lift(open_store(ex.write_safetensors(tmp_path / "refiner.safetensors", refiner)), batch=2)
    assert g.inputs == ["input_ids_2", "eos_mask"] and g.outputs == ["last_hidden_state", "text_embeds"]
    got = interpret.run(g, {"input_ids_2": ids["g"], "eos_mask": clip_text.eos_mask_of(ids["g"], EOS)})
    ref = sdxl_reference(sdxl_st, ids["l"], ids["g"])
    _close(got["last_hidden_state"], ref["bigg"], "refiner context")
    _close(got["text_embeds"], ref["text_embeds"], "refiner text_embeds")


def test_metadata_of_two_encoders_speaks_for_the_one_it_names(sdxl_st, tmp_path):
    p = ex.write_safetensors(tmp_path / "m.safetensors", sdxl_st, "f32", {"text_encoder_2.num_attention_heads": "6"})
    heads = [e["config"]["heads"] for e in clip_text.lift(open_store(p)).meta["encoders"]]
    assert heads == [2, 6]
    # a key naming no encoder is ambiguous with two: not read, and the width's head count is reported as assumed
    p = ex.write_safetensors(tmp_path / "g.safetensors", sdxl_st, "f32", {"num_attention_heads": "6"})
    g = clip_text.lift(open_store(p))
    assert [e["config"]["heads"] for e in g.meta["encoders"]] == [2, 3]
    assert any(a.startswith("second text encoder: 3 attention heads") for a in g.meta["assumptions"])


@pytest.mark.parametrize("target", TARGETS)
def test_sdxl_compiled_matches_transformers(target, files, sdxl_st, ids, tmp_path):
    # f32 kernels: summation order and exp/erf implementations differ from PyTorch's; 1e-4 absolute as every other
    # compiled encoder test (tests/e2e/test_clip_text.py) at values up to ~3 (measured: 1.8e-6 on the CPU and on
    # lavapipe). The pooled row goes through the attention kernel with a one-row query (module docstring).
    import runtime
    from sdcompile.compiler import compile_model

    compile_model(files["sdxl-ldm"], tmp_path / "a", CompileOptions(batch=2, target=target))
    model = runtime.load(tmp_path / "a", num_threads=2)
    feeds = _feeds(ids)
    got = model.run({k: v.astype(np.int32) if k.startswith("input_ids") else v for k, v in feeds.items()})
    ref = sdxl_reference(sdxl_st, ids["l"], ids["g"])
    wl = X.TINY_L.width
    np.testing.assert_allclose(got["last_hidden_state"][..., :wl], ref["clip_l"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["last_hidden_state"][..., wl:], ref["bigg"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["text_embeds"], ref["text_embeds"], rtol=0, atol=1e-4)


class _Shapes(TensorStore):
    """Tensor names and shapes without data: lifting reads only these, so full-size layouts cost nothing."""

    format = "shapes"

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__(Path("full-size"))
        self._infos = {k: TensorInfo(k, s, "f16", 2 * int(np.prod(s))) for k, s in shapes.items()}


def _open_clip_shapes(prefix: str, width: int, layers: int) -> dict[str, tuple[int, ...]]:
    d = width
    out = {prefix + "token_embedding.weight": (49408, d), prefix + "positional_embedding": (77, d)}
    for i in range(layers):
        p = f"{prefix}transformer.resblocks.{i}."
        out |= {p + f"{ln}.{wb}": (d,) for ln in ("ln_1", "ln_2") for wb in ("weight", "bias")}
        out |= {p + "attn.in_proj_weight": (3 * d, d), p + "attn.in_proj_bias": (3 * d,)}
        out |= {p + "attn.out_proj.weight": (d, d), p + "attn.out_proj.bias": (d,)}
        out |= {p + "mlp.c_fc.weight": (4 * d, d), p + "mlp.c_fc.bias": (4 * d,)}
        out |= {p + "mlp.c_proj.weight": (d, 4 * d), p + "mlp.c_proj.bias": (d,)}
    out |= {prefix + "ln_final.weight": (d,), prefix + "ln_final.bias": (d,), prefix + "text_projection": (d, d)}
    return out | {prefix + "logit_scale": ()}


def test_full_size_sd2_and_sdxl_layouts_lift_with_the_released_hyperparameters():
    """SD 2.x's ViT-H (24 x 1024) and SDXL's CLIP-L (12 x 768) + ViT-bigG (32 x 1280) as their checkpoints name
    them: 16, 12 and 20 heads of 64; gelu, quick_gelu, gelu; a 2048-wide context and a 1280-wide pooled output."""
    g = clip_text.lift(_Shapes(_open_clip_shapes(X.SD2_PREFIX, 1024, 24)), batch=2)
    verify(g)
    assert (g.meta["config"]["heads"], g.meta["config"]["act"]) == (16, "gelu")
    assert g.values["last_hidden_state"].shape == (2, 77, 1024)
    assert sum(n.op == "attention" for n in g.nodes) == 23
    assert sum(".resblocks.23." in k for k in g.meta["ignored"]) == 12

    clip_l = {
        X.SDXL_L_PREFIX + k: v.shape
        for k, v in ex.clip_text_state(ex.ClipTextShape(49408, 768, 12, 12, 3072, 77)).items()
    }
    g = clip_text.lift(_Shapes(clip_l | _open_clip_shapes(X.SDXL_G_PREFIX, 1280, 32)), batch=2)
    verify(g)
    assert [(e["config"]["heads"], e["config"]["act"]) for e in g.meta["encoders"]] == [
        (12, "quick_gelu"),
        (20, "gelu"),
    ]
    assert g.values["last_hidden_state"].shape == (2, 77, 2048)
    assert g.values["text_embeds"].shape == (2, 1280)
    # CLIP-L runs 11 of its 12 layers; bigG all 32 (the pooled output needs them), plus the pooling attention
    assert sum(n.op == "attention" for n in g.nodes) == 11 + 32 + 1
    assert not [k for k in g.meta["ignored"] if k.startswith(X.SDXL_G_PREFIX + "transformer.")]


def test_fp8_weights_are_read_as_f32_and_reported(sd2_state, ids, tmp_path):
    """fp8 checkpoints (float8_e4m3fn matrices) have no storage type of their own: the values, exact in f32, are
    read as f32, fused in_proj included, and the report says so."""
    import torch
    from safetensors.torch import save_file

    f8 = {
        k: torch.from_numpy(v).to(torch.float8_e4m3fn) if v.ndim == 2 else torch.from_numpy(v)
        for k, v in sd2_state.items()
    }
    save_file(f8, str(tmp_path / "f8.safetensors"))
    g = clip_text.lift(open_store(tmp_path / "f8.safetensors"), batch=2)
    assert any("stored as f8_e4m3 are read as f32" in a for a in g.meta["assumptions"])
    decoded = {k: t.to(torch.float32).numpy() for k, t in f8.items()}
    ref = clip_text.lift(open_store(ex.write_safetensors(tmp_path / "f32.safetensors", decoded)), batch=2)
    assert {v.name: v.dtype for v in g.weights()} == {v.name: v.dtype for v in ref.weights()}
    a = interpret.run(g, {"input_ids": ids["g"]})["last_hidden_state"]
    np.testing.assert_array_equal(a, interpret.run(ref, {"input_ids": ids["g"]})["last_hidden_state"])
