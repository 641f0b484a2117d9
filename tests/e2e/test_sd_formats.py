"""Format independence for a whole SD checkpoint: the same weights as an LDM safetensors file, a .ckpt, a GGUF as
stable-diffusion.cpp writes it, a diffusers directory and separate component files (--diffusion-model, --vae,
--clip-l) compile to the same per-tensor types and give the same image, bit for bit; and a quantized artifact
agrees with diffusers run on the artifact's own decoded weights."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.sd_helpers import SHAPE, SIZE, compile_sd, decoded_state, state

W, H = SIZE
FORMATS = ["safetensors", "ckpt", "gguf", "diffusers", "separate"]


@pytest.fixture(scope="module")
def st():
    return state()


@pytest.fixture(scope="module")
def compiled(st, tmp_path_factory):
    """{format: (manifest, loaded model)} for q8_0 artifacts from each format."""
    import runtime
    from sdcompile import examples_sd as E

    root = tmp_path_factory.mktemp("fmts")
    out = {}
    for fmt in FORMATS:
        src = E.write_sd(root / f"src_{fmt}", SHAPE, 0, fmt, state=st)
        opts = {"target": "cpu", "type": "q8_0"}
        if fmt == "separate":
            src, opts = (
                None,
                opts
                | {
                    "diffusion_model": str(src / "unet.safetensors"),
                    "vae": str(src / "vae.safetensors"),
                    "clip_l": str(src / "clip_l.safetensors"),
                },
            )
        art = root / f"art_{fmt}"
        m = compile_sd(src, art, **opts)
        out[fmt] = (m, runtime.load(art, num_threads=2), art)
    return out


def test_same_tensor_types(compiled):
    types = {f: {n: t["dtype"] for n, t in m["weights"]["tensors"].items()} for f, (m, _, _) in compiled.items()}
    base = types["safetensors"]
    assert len(base) == 964 and {"q8_0", "f32"} <= set(base.values())
    for f, t in types.items():
        assert t == base, f"{f} differs from safetensors"


def test_same_image(compiled):
    from runtime.pipelines.sd import StableDiffusion

    imgs = {}
    for f, (_, model, _) in compiled.items():
        res = StableDiffusion(model).generate(
            "a red fox in snow", "", steps=4, method="euler", seed=3, width=W, height=H
        )
        imgs[f] = res
    for f, r in imgs.items():
        np.testing.assert_array_equal(r.latents, imgs["safetensors"].latents, err_msg=f)
        np.testing.assert_array_equal(r.image, imgs["safetensors"].image, err_msg=f)


def test_quantized_unet_matches_diffusers_on_its_decoded_weights(compiled, st):
    """q8_0 linears and convs: the artifact against diffusers holding exactly the values the artifact stores
    (decoded by the gguf package). The CPU's AMX/VNNI paths quantize activations to 16 bits per block (relative
    error ~2e-5 per matmul): allow 5e-4 relative over a whole UNet."""
    R = pytest.importorskip("tests.sd_reference")
    _, model, art = compiled["safetensors"]
    dec = decoded_state(art, st)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, H // 8, W // 8)).astype(np.float32)
    t = np.array([700.0, 50.0], np.float32)
    ctx = rng.standard_normal((2, 77, SHAPE.unet.context_dim)).astype(np.float32)
    got = model.call(f"denoise_{W}x{H}", {"x": x, "t": t, "context": ctx})["eps"]
    want = R.unet_eps(dec, SHAPE, x, t, ctx)
    orig = R.unet_eps(st, SHAPE, x, t, ctx)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-4 * scale)
    # and the quantization itself is visible: the decoded weights are not the original ones
    assert np.abs(want - orig).max() > 10 * np.abs(got - want).max()
    z = rng.standard_normal((1, 4, H // 8, W // 8)).astype(np.float32)
    img = model.call(f"decode_latents_{W}x{H}", {"latents": z})["image"]
    ref = R.vae_decode(dec, SHAPE, z / 0.18215)
    np.testing.assert_allclose(img, ref, rtol=0, atol=5e-4 * float(np.abs(ref).max()))
