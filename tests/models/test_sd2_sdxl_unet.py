"""The SD 2.x and SDXL UNets as lifted (no kernels built), against diffusers' UNet2DConditionModel on the same LDM
weights through the float64 interpreter: linear proj_in/proj_out, 64 channels per head, per-level transformer depths
and SDXL's added conditioning (pooled text embedding and size/crop ids through label_emb)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.errors import UnsupportedModelError
from sdcompile.formats import open_store
from sdcompile.ir import interpret, verify
from sdcompile.models import lift_module
from sdcompile.passes.context import CompileOptions

R = pytest.importorskip("tests.sd_reference")
SD2 = E.SdShape(name="tiny-sd2-unet", unet=E.TINY_SD2_UNET)
SDXL = E.SdShape(name="tiny-sdxl-unet", unet=E.TINY_SDXL_UNET)
POOLED = 64
# bigG beside the UNet (not compiled here): its [width, pooled] projection says the pooled width
PROJ = "conditioner.embedders.1.model."


def _state(shape, extra=()):
    from sdcompile import examples_clip as C

    st = E.unet_state(shape, np.random.default_rng([3, 1]))
    for prefix in extra:
        st.update(C.open_clip_state(C.OpenClipShape(vocab=64, layers=1, positions=8, projection=POOLED), 0, prefix))
    return st


def _lift(tmp_path, st, **opts):
    path = E.write_safetensors(tmp_path / "unet.safetensors", st)
    return lift_module(open_store(path), CompileOptions(sizes=[(64, 64)], components=("unet",), **opts))


def _inputs(ctx: int, rng):
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([10.0, 900.0], np.float32)
    return x, t, rng.standard_normal((2, 77, ctx)).astype(np.float32)


# diffusers computes the sinusoidal embeddings in f32 even in a float64 model (see test_sd_lift): 5e-5 of the peak
TOL = 5e-5


def test_sd2_unet_is_diffusers(tmp_path):
    st = _state(SD2)
    mod = _lift(tmp_path, st, prediction="eps")
    g = mod.functions["denoise_64x64"]
    verify(g)
    cfg = mod.meta["config"]["unet"]
    assert cfg["family"] == "sd2" and cfg["head_dim"] == 64 and cfg["prediction"] == "epsilon"
    heads = sorted({n.attrs["heads"] for n in g.nodes if n.op == "attention"})
    assert heads == [1, 2]  # 64 and 128 channels at 64 per head
    assert g.values["unet.input_blocks.1.1.proj_in.weight"].shape == (64, 64)  # linear, as stored
    x, t, ctx = _inputs(48, np.random.default_rng(0))
    got = interpret.run(g, {"x": x, "t": t, "context": ctx})["eps"]
    want = R.unet_eps(st, SD2, x, t, ctx, dtype="f64")
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL * np.abs(want).max())


def test_sdxl_unet_with_added_conditioning_is_diffusers(tmp_path):
    st = _state(SDXL, [PROJ])
    mod = _lift(tmp_path, st)
    g = mod.functions["denoise_64x64"]
    verify(g)
    assert [(i, g.values[i].shape) for i in g.inputs] == [
        ("x", (2, 4, 8, 8)),
        ("t", (2,)),
        ("context", (2, 77, 128)),
        ("text_embeds", (2, POOLED)),
        ("time_ids", (2, 6)),
    ]
    cfg = mod.meta["config"]["unet"]
    assert cfg["family"] == "sdxl" and cfg["prediction"] == "epsilon" and cfg["time_ids"] == 6
    blocks = sum(1 for k in st if k.endswith("attn1.to_q.weight"))
    assert blocks == 11  # depths 1 and 2 per level (down 1+2, middle 2, up 2x1 + 2x2)
    assert sum(1 for n in g.nodes if n.op == "attention") == 2 * blocks
    rng = np.random.default_rng(1)
    x, t, ctx = _inputs(128, rng)
    pooled = rng.standard_normal((2, POOLED)).astype(np.float32)
    ids = np.array([[1024, 1024, 0, 0, 1024, 1024], [768, 512, 32, 16, 512, 512]], np.float32)
    got = interpret.run(g, {"x": x, "t": t, "context": ctx, "text_embeds": pooled, "time_ids": ids})["eps"]
    want = R.unet_eps(st, SDXL, x, t, ctx, dtype="f64", text_embeds=pooled, time_ids=ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL * np.abs(want).max())
    # the conditioning matters: other ids give another prediction
    other = interpret.run(g, {"x": x, "t": t, "context": ctx, "text_embeds": pooled, "time_ids": ids[::-1].copy()})
    assert np.abs(other["eps"] - got).max() > 100 * TOL * np.abs(want).max()


def test_sdxl_label_emb_width_must_split(tmp_path):
    bad = dataclasses.replace(E.TINY_SDXL_UNET, adm_in=POOLED + 6 * 256 + 7)
    st = _state(E.SdShape(name="bad", unet=bad), [PROJ])
    with pytest.raises(UnsupportedModelError, match="label_emb takes 1607 values"):
        _lift(tmp_path, st)


@pytest.mark.parametrize(
    "meta, option, want, note",
    [
        ({}, None, "v_prediction", "pass --prediction eps"),
        ({}, "eps", "epsilon", None),
        ({"modelspec.prediction_type": "epsilon"}, None, "epsilon", None),
        ({"modelspec.prediction_type": "v"}, None, "v_prediction", None),
        ({"modelspec.prediction_type": "v"}, "eps", "epsilon", "overriding v_prediction from metadata"),
    ],
)
def test_sd2_prediction_is_read_or_flagged_and_reported(tmp_path, meta, option, want, note):
    st = _state(SD2)
    path = E.write_safetensors(tmp_path / "u.safetensors", st, metadata=meta or None)
    mod = lift_module(open_store(path), CompileOptions(sizes=[(64, 64)], components=("unet",), prediction=option))
    assert mod.meta["config"]["unet"]["prediction"] == want
    notes = [n for n in mod.meta["assumptions"] if "predicts" in n]
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and note in notes[0]


def test_v_pred_marker_tensor_is_read(tmp_path):
    st = _state(SD2)
    st["v_pred"] = np.zeros((0,), np.float32)
    mod = _lift(tmp_path, st)
    assert mod.meta["config"]["unet"]["prediction"] == "v_prediction"
    assert not [n for n in mod.meta["assumptions"] if "predicts" in n]


@pytest.mark.parametrize(
    "shape, extra, prediction, side",
    [(SDXL, [PROJ], None, 1024), (SD2, [], "v", 768), (SD2, [], "eps", 512)],
)
def test_without_size_the_models_own_is_compiled_and_reported(tmp_path, shape, extra, prediction, side):
    st = _state(shape, extra)
    path = E.write_safetensors(tmp_path / "u.safetensors", st)
    mod = lift_module(open_store(path), CompileOptions(components=("unet",), prediction=prediction))
    assert list(mod.functions) == [f"denoise_{side}x{side}"]
    assert any(n.startswith(f"image size {side}x{side}") for n in mod.meta["assumptions"])
