"""Memory plans for a pipeline: the VAE decoded in overlapping blended tiles, components loaded and freed in turn
(offload), chosen automatically when the budget or a buffer limit asks for it, and a clear error listing what each
configuration would need when nothing fits."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.pipelines.sd import StableDiffusion, decode_tiled
from sdcompile.errors import MemoryBudgetError
from tests.e2e.sd_helpers import SHAPE, compile_sd, state

SIZE = (256, 256)  # 32x32 latents: room for 16x16 tiles with an overlap of 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from sdcompile import examples_sd as E

    return E.write_sd(tmp_path_factory.mktemp("sdmem") / "tiny.safetensors", SHAPE, 0, "safetensors", state=state())


@pytest.fixture(scope="module")
def plain(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "a"
    return out, compile_sd(ckpt, out, target="cpu", sizes=[SIZE], vae_tiling="off", offload="off")


@pytest.fixture(scope="module")
def tiled(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiled") / "a"
    m = compile_sd(
        ckpt, out, target="cpu", sizes=[SIZE], vae_tiling="on", vae_tile=16, vae_tile_overlap=4, offload="on"
    )
    return out, m


def test_tiles_blend_to_the_whole_for_a_local_decoder():
    """With a decoder whose output pixel depends only on the latent under it (8x nearest upsampling), tiled and
    whole decodes are identical: the blend weights sum to one everywhere and tiles are placed right."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1, 4, 37, 23)).astype(np.float32)  # sizes that are not multiples of the stride

    def up(t):
        return t[:, :3].repeat(8, axis=2).repeat(8, axis=3)

    np.testing.assert_allclose(decode_tiled(up, z, 16, 4), up(z), atol=1e-6)


def test_encoder_tiles_blend_to_the_whole_for_a_local_encoder():
    """An encoder whose latent pixel depends only on the 8x8 image block above it (block means): tiled and whole
    encodes are identical."""
    from runtime.pipelines.sd import encode_tiled

    img = np.random.default_rng(1).standard_normal((1, 3, 8 * 37, 8 * 23)).astype(np.float32)

    def pool(t):
        b, c, h, w = t.shape
        m = t.reshape(b, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))
        return np.concatenate([m, m[:, :1] * 2], axis=1)  # [1, 4, h, w] "moments"

    np.testing.assert_allclose(encode_tiled(pool, img, 16, 4), pool(img), atol=1e-6)


def test_plans_record_tiling_and_offload(plain, tiled):
    _, p = plain
    _, t = tiled
    assert "decode_latents_256x256" in p["functions"] and not p["memory"]["offload"]
    assert "decode_latents_tile16" in t["functions"] and "decode_latents_256x256" not in t["functions"]
    assert t["pipeline"]["vae_tiling"] == {
        "tile": 16,
        "overlap": 4,
        "functions": {"256x256": "decode_latents_tile16"},
        "encode_functions": {"256x256": "encode_image_tile16"},
    }
    assert "encode_image_256x256" not in t["functions"] and "encode_image_tile16" in t["functions"]
    mem = t["memory"]
    assert mem["offload"] and mem["peak_bytes"] == mem["offload_peak_bytes"] < mem["resident_peak_bytes"]
    # offload peak = the largest component's weights (the UNet) + activations + io
    unet = mem["functions"]["denoise_256x256"]
    assert unet["components"] == ["unet"] and unet["weights_bytes"] == mem["weights_by_component"]["unet"]
    assert mem["offload_peak_bytes"] == unet["weights_bytes"] + mem["activation_bytes"] + mem["io_bytes"]
    # the tiled decoder's activations are a fraction of the whole decode's
    whole = p["memory"]["functions"]["decode_latents_256x256"]["activation_bytes"]
    assert mem["functions"]["decode_latents_tile16"]["activation_bytes"] < whole / 3


def test_tiled_offloaded_pipeline_matches_whole(plain, tiled):
    import runtime

    a = StableDiffusion(runtime.load(plain[0], num_threads=2))
    m = runtime.load(tiled[0], num_threads=2)
    b = StableDiffusion(m)
    ra = a.generate("a cat", steps=3, method="euler", width=SIZE[0], height=SIZE[1], seed=1)
    rb = b.generate("a cat", steps=3, method="euler", width=SIZE[0], height=SIZE[1], seed=1)
    init = (np.random.default_rng(2).random((SIZE[1], SIZE[0], 3)) * 255).astype(np.uint8)
    ia = a.generate("a cat", steps=4, method="euler", width=SIZE[0], height=SIZE[1], init_image=init, strength=0.5)
    ib = b.generate("a cat", steps=4, method="euler", width=SIZE[0], height=SIZE[1], init_image=init, strength=0.5)
    assert np.abs(ia.latents - ib.latents).mean() < 0.2 * np.abs(ia.latents).mean()  # tiled encode: close, not equal
    np.testing.assert_array_equal(ra.latents, rb.latents)  # offload changes where weights live, not the math
    # Tiles normalise their own statistics (GroupNorm), so a tiled decode is not the whole one; with these random
    # weights it stays within a few levels on average.
    assert np.abs(ra.image.astype(int) - rb.image.astype(int)).mean() < 8
    # only the last component's weights are resident after the decode
    comps = {m.manifest["weights"]["tensors"][n]["component"] for n in m.weights}
    assert comps == {"vae"}


def test_offload_drops_the_launches_bound_to_the_weights_it_frees(tiled):
    """The runtime binds each function's launches to their buffers once (``Model._bound_steps``); those bindings
    hold views of the weights, so when offload swaps components every binding goes (a freed weight stays neither
    referenced nor read), and the function binds again on its next call, with the same results."""
    import runtime

    m = runtime.load(tiled[0], num_threads=2)
    ids = np.arange(2 * 77, dtype=np.int32).reshape(2, 77) % 1000
    first = m.call("encode_text", {"input_ids": ids})["last_hidden_state"]
    assert set(m._bound) == {"encode_text"}
    z = np.random.default_rng(0).standard_normal(m.functions["decode_latents_tile16"]["inputs"]["latents"]["shape"])
    m.call("decode_latents_tile16", {"latents": z.astype(np.float32)})  # the VAE in, the text encoder out
    assert set(m._bound) == {"decode_latents_tile16"}
    np.testing.assert_array_equal(m.call("encode_text", {"input_ids": ids})["last_hidden_state"], first)
    assert set(m._bound) == {"encode_text"}


def test_budget_picks_tiling_or_offload_and_errors_name_each_option(ckpt, plain, tmp_path):
    _, p = plain
    resident = p["memory"]["resident_peak_bytes"]
    m = compile_sd(ckpt, tmp_path / "auto", target="cpu", sizes=[SIZE], memory_budget=resident - 1, vae_tile=16)
    assert m["memory"]["peak_bytes"] <= resident - 1
    assert m["memory"]["tried"] and (m["memory"]["offload"] or m["memory"]["vae_tiling"])
    with pytest.raises(MemoryBudgetError) as e:
        compile_sd(ckpt, tmp_path / "tiny", target="cpu", sizes=[SIZE], memory_budget=1 << 20, vae_tile=16)
    msg = str(e.value)
    assert "exceeds the budget" in msg and "--type q8_0" in msg
    assert "Tried:" in msg and "--offload" in msg and "--vae-tiling" in msg and "peak" in msg
    assert not (tmp_path / "tiny").exists()  # nothing half-written
