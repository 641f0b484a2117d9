"""The built-in SD 1.x example checkpoints: every writer's output reopens with the same tensors, the ckpt loads in
torch, the diffusers directory loads in diffusers/transformers and computes what the LDM state computes, and the
bytes are the same on every run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sdcompile import examples_sd as ex
from sdcompile.examples import example_ids
from sdcompile.formats import open_store
from sdcompile.models import sd_names as sn
from tests import sd_reference as ref

SHAPE = ex.TINY_SD
# sha256 of the tiny example's tensors (names, shapes and float32 bytes in order) for seed 0: the same on every
# machine. Changing the initialisation changes it on purpose; a change from nowhere means numpy's stream moved.
TINY_STATE_SHA256 = "7feb04cb15a29b9300f3e13623cd0c43d1317357073a89f3a976f6a17e472d96"


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return ex.sd_state(SHAPE, 0)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sd_examples")


def _digest(state: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(f"{k}{v.shape}".encode())
        h.update(np.ascontiguousarray(v, np.float32).tobytes())
    return h.hexdigest()


def _file_hashes(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _same(store, expected: dict[str, np.ndarray], rounding=None) -> None:
    # safetensors files list tensors sorted by name; ckpt and GGUF keep the state dict's order
    assert store.names() == (sorted(expected) if store.format == "safetensors" else list(expected))
    for k, v in expected.items():
        want = v if rounding is None else rounding(k, v)
        got = store.array(k)
        assert got.shape == v.shape, k
        np.testing.assert_array_equal(got.astype(np.float32), want, err_msg=k)


def _f16(_name, v):
    return v.astype(np.float16).astype(np.float32)


def test_state_shapes_and_determinism(state):
    assert {k: v.shape for k, v in state.items()} == ex.sd_shapes(SHAPE)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in state.values())
    assert _digest(ex.sd_state(SHAPE, 0)) == _digest(state)
    assert _digest(ex.sd_state(SHAPE, 1)) != _digest(state)
    assert _digest(state) == TINY_STATE_SHA256
    # every tensor is non-trivial: nothing zero-initialised that a bug could hide behind
    assert all(np.abs(v).max() > 0 for v in state.values())
    # the text encoder is sdcompile.examples' CLIP initialisation under the LDM prefix
    parts = ex.split_state(state)
    assert len(parts["unet"]) + len(parts["vae"]) + len(parts["text_encoder"]) == len(state)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("metadata", [True, False])
def test_safetensors(state, out_dir, dtype, metadata):
    p = ex.write_sd(
        out_dir / f"sd_{dtype}_{metadata}.safetensors",
        SHAPE,
        fmt="safetensors",
        dtype=dtype,
        metadata=metadata,
        state=state,
    )
    store = open_store(p)
    assert store.format == "safetensors"
    _same(store, state, _f16 if dtype == "f16" else None)
    meta = {k: str(v) for k, v in ex.sd_metadata(SHAPE).items()}
    assert store.metadata == (meta if metadata else {})


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_ckpt_reads_here_and_in_torch(state, out_dir, dtype):
    import torch

    p = ex.write_sd(out_dir / f"sd_{dtype}.ckpt", SHAPE, fmt="ckpt", dtype=dtype, state=state)
    store = open_store(p)
    assert store.format == "ckpt" and store.metadata["state_dict_key"] == "state_dict"
    _same(store, state, _f16 if dtype == "f16" else None)
    for k, v in ex.sd_metadata(SHAPE).items():
        assert store.metadata[k] == v
    top = torch.load(p, weights_only=True)
    assert list(top) == ["state_dict", *ex.sd_metadata(SHAPE)]
    sd = top["state_dict"]
    assert list(sd) == list(state)
    want_dtype = torch.float16 if dtype == "f16" else torch.float32
    for k, v in state.items():
        assert sd[k].dtype == want_dtype and tuple(sd[k].shape) == v.shape, k
        np.testing.assert_array_equal(sd[k].float().numpy(), _f16(k, v) if dtype == "f16" else v, err_msg=k)
    # and torch can memory-map it (data records aligned as torch.save aligns them)
    mm = torch.load(p, weights_only=True, mmap=True)["state_dict"]
    k0 = next(iter(state))
    np.testing.assert_array_equal(mm[k0].float().numpy(), sd[k0].float().numpy())


@pytest.mark.parametrize("wtype", ["f32", "f16", "q8_0", "q4_0"])
def test_gguf_as_sdcpp_converts(state, out_dir, wtype):
    import gguf

    p = ex.write_sd(out_dir / f"sd_{wtype}.gguf", SHAPE, fmt="gguf", dtype=wtype, metadata=False, state=state)
    store = open_store(p)
    assert store.format == "gguf"
    assert store.metadata == {}  # stable-diffusion.cpp writes no key/value pairs
    assert store.names() == list(state)
    kinds = set()
    for k, v in state.items():
        t = ex.sdcpp_tensor_type(k, v.shape, wtype)
        info = store.info(k)
        assert info.dtype == t and info.shape == v.shape, k
        kinds.add(t)
        if t == "f32":
            want = v
        elif t == "f16":
            want = _f16(k, v)
        else:
            qt = getattr(gguf.GGMLQuantizationType, t.upper())
            want = gguf.quants.dequantize(gguf.quants.quantize(v, qt), qt)
        np.testing.assert_array_equal(store.array(k), want, err_msg=k)
    assert kinds == ({"f32"} if wtype == "f32" else {"f32", wtype})


def test_gguf_type_rules():
    # sd.cpp's exceptions: biases, UNet time embedding, token/position embeddings; kernels for block quant types
    t = ex.sdcpp_tensor_type
    assert t("model.diffusion_model.out.2.bias", (4,), "f16") == "f32"
    assert t("model.diffusion_model.time_embed.0.weight", (128, 32), "q8_0") == "f32"
    assert t(sn.TEXT_PREFIX + "embeddings.token_embedding.weight", (49408, 32), "f16") == "f32"
    assert t("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", (32, 32, 3, 3), "f16") == "f16"
    assert t("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", (32, 32, 3, 3), "q8_0") == "f32"
    assert t("model.diffusion_model.out.0.weight", (32,), "q8_0") == "q8_0"  # norms are converted too
    assert t("first_stage_model.encoder.mid.attn_1.q.weight", (64, 64, 1, 1), "q4_0") == "f32"


def test_gguf_metadata(state, out_dir):
    p = ex.write_sd(out_dir / "sd_meta.gguf", SHAPE, fmt="gguf", dtype="f16", metadata=True, state=state)
    assert open_store(p).metadata == ex.sd_metadata(SHAPE)


def test_separate_files(state, out_dir):
    d = ex.write_sd(out_dir / "separate", SHAPE, fmt="separate", state=state)
    parts = ex.split_state(state)
    unet = open_store(d / ex.SEPARATE_FILES["diffusion_model"])
    vae = open_store(d / ex.SEPARATE_FILES["vae"])
    clip = open_store(d / ex.SEPARATE_FILES["clip_l"])
    # sd.cpp prefixes these with model.diffusion_model. / vae. / cond_stage_model.transformer.
    _same(unet, parts["unet"])
    _same(vae, parts["vae"])
    _same(clip, {sn.TEXT_DIFFUSERS_PREFIX + k: v for k, v in parts["text_encoder"].items()})
    assert unet.metadata == {ex.META_UNET_HEADS: str(SHAPE.unet.heads)}
    assert vae.metadata == {}
    assert clip.metadata[ex.META_TEXT_HEADS] == str(SHAPE.text.heads)


def test_diffusers_directory_files(state, out_dir):
    d = ex.write_sd(out_dir / "diffusers", SHAPE, fmt="diffusers", state=state)
    expected = ex.diffusers_states(state, SHAPE)
    for part, fname in (
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ):
        store = open_store(d / part / fname)
        assert sorted(store.names()) == sorted(expected[part])
        for k, v in expected[part].items():
            np.testing.assert_array_equal(store.array(k), v, err_msg=k)
    # mid-block attention is linear in diffusers files
    assert open_store(d / "vae" / "diffusion_pytorch_model.safetensors").info(
        "encoder.mid_block.attentions.0.to_q.weight"
    ).shape == (64, 64)
    for f in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
    ):
        assert (d / f).is_file(), f


@pytest.fixture(scope="module")
def diffusers_dir(state, out_dir) -> Path:
    return ex.write_sd(out_dir / "diffusers_load", SHAPE, fmt="diffusers", state=state)


@pytest.fixture(scope="module")
def reference(state) -> dict:
    """The reference models, built once from the LDM state with diffusers' converters."""
    pytest.importorskip("diffusers")
    return {
        "text": ref.text_model(state, SHAPE),
        "unet": ref.unet_model(state, SHAPE),
        "vae": ref.vae_model(state, SHAPE),
    }


def test_diffusers_directory_loads_and_matches_reference(state, diffusers_dir, reference, monkeypatch):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    d = diffusers_dir
    rng = np.random.default_rng(3)
    ids = example_ids(2, SHAPE.text.positions, SHAPE.text.vocab)
    latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([999.0, 10.0])

    # same weights, same modules: the outputs agree bit for bit
    text = CLIPTextModel.from_pretrained(d / "text_encoder", local_files_only=True).eval()
    ctx = ref.text_hidden(state, SHAPE, ids, model=text)
    np.testing.assert_array_equal(ctx, ref.text_hidden(state, SHAPE, ids, model=reference["text"]))

    unet = UNet2DConditionModel.from_pretrained(d / "unet", local_files_only=True).eval()
    np.testing.assert_array_equal(
        ref.unet_eps(state, SHAPE, latents, t, ctx, model=unet),
        ref.unet_eps(state, SHAPE, latents, t, ctx, model=reference["unet"]),
    )

    vae = AutoencoderKL.from_pretrained(d / "vae", local_files_only=True).eval()
    assert vae.config.scaling_factor == SHAPE.vae.scaling_factor
    z = latents / SHAPE.vae.scaling_factor
    img = ref.vae_decode(state, SHAPE, z, model=reference["vae"])
    np.testing.assert_array_equal(ref.vae_decode(state, SHAPE, z, model=vae), img)
    np.testing.assert_array_equal(
        ref.vae_encode_mean(state, SHAPE, img, model=vae),
        ref.vae_encode_mean(state, SHAPE, img, model=reference["vae"]),
    )

    sched = PNDMScheduler.from_pretrained(d / "scheduler", local_files_only=True)
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.steps_offset == 1


def test_reference_outputs_are_realistic(state, reference):
    """Activations stay O(1) through the whole tiny UNet and VAE, and the inputs visibly matter."""
    ids = example_ids(2, SHAPE.text.positions, SHAPE.text.vocab)
    ctx = ref.text_hidden(state, SHAPE, ids, model=reference["text"])
    assert 0.5 < ctx.std() < 2
    unet, vae = reference["unet"], reference["vae"]
    x = np.random.default_rng(5).standard_normal((2, 4, 8, 8)).astype(np.float32)
    e = ref.unet_eps(state, SHAPE, x, np.array([999.0, 999.0]), ctx, model=unet)
    e_t = ref.unet_eps(state, SHAPE, x, np.array([10.0, 10.0]), ctx, model=unet)
    e_c = ref.unet_eps(state, SHAPE, x, np.array([999.0, 999.0]), ctx[::-1].copy(), model=unet)
    assert np.isfinite(e).all() and 0.3 < e.std() < 2 and np.abs(e).max() < 10
    assert np.std(e - e_t) > 0.1 * e.std()  # the timestep matters
    assert np.std(e - e_c) > 0.05 * e.std()  # the text matters
    img = ref.vae_decode(state, SHAPE, x / SHAPE.vae.scaling_factor, model=vae)
    assert np.isfinite(img).all() and 0.2 < img.std() < 2 and np.abs(img).max() < 10
    mean = ref.vae_encode_mean(state, SHAPE, np.clip(img, -1, 1), model=vae)
    assert np.isfinite(mean).all() and 0.2 < mean.std() < 5


@pytest.mark.parametrize(
    "fmt,dtype", [("safetensors", "f16"), ("ckpt", "f32"), ("gguf", "q8_0"), ("diffusers", "f32"), ("separate", "f32")]
)
def test_deterministic_bytes(state, tmp_path, fmt, dtype):
    name = "model" + {"safetensors": ".safetensors", "ckpt": ".ckpt", "gguf": ".gguf"}.get(fmt, "")
    a = ex.write_sd(
        tmp_path / "a" / name if fmt in ("diffusers", "separate") else _mk(tmp_path / "a") / name,
        SHAPE,
        fmt=fmt,
        dtype=dtype,
        state=state,
    )
    b = ex.write_sd(
        tmp_path / "b" / name if fmt in ("diffusers", "separate") else _mk(tmp_path / "b") / name,
        SHAPE,
        0,
        fmt=fmt,
        dtype=dtype,
    )  # regenerated from the seed
    assert _file_hashes(a) == _file_hashes(b)


def _mk(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format"):
        ex.write_sd(tmp_path / "x", fmt="onnx")
    with pytest.raises(ValueError, match="dtype"):
        ex.write_sd(tmp_path / "x.safetensors", fmt="safetensors", dtype="q8_0")
    with pytest.raises(ValueError, match="wtype"):
        ex.write_sd(tmp_path / "x.gguf", fmt="gguf", dtype="q4_k")


def test_streaming_writer_gives_the_same_tensors(tmp_path):
    """write_sd_streaming (full-size SDXL without holding its UNet) writes sd_state's values, readable by the
    safetensors library."""
    from safetensors.numpy import load_file

    p = ex.write_sd_streaming(tmp_path / "xl.safetensors", ex.TINY_SDXL, 0, "f16")
    got, want = load_file(str(p)), ex.sd_state(ex.TINY_SDXL, 0)
    assert set(got) == set(want)
    assert all(np.array_equal(got[k], want[k].astype(np.float16)) for k in want)
