"""LoRA on a tiny SD 1.x model, both modes, every naming convention and file format, against diffusers.

Reference: diffusers' StableDiffusionPipeline on the same weights with the LoRA loaded by its own
`load_lora_weights` (PEFT underneath) at strength 0.8 (`set_adapters`), or merged by its `fuse_lora`; the LoRA's
layers are the diffusers/transformers modules themselves (`lora_files.py`). Outputs compared: the UNet's noise
prediction and the text encoder's last hidden state.

Tolerances: an f32 artifact is within 2e-6 of diffusers' f32 output relative to the output's range (measured); 2e-5
leaves room for other CPUs' summation orders and still fails for a LoRA applied at the wrong place or strength (its
effect is ~0.7 of the range on the UNet, ~0.2 on the text encoder). Quantized bases compile without AMX
(SDCOMPILE_NO_AMX=1), so the kernels compute in f32 on the decoded weights and the same bound holds against a
reference on those decoded weights: runtime mode is exact on a quantized base.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdcompile import examples_sd as E
from tests.e2e import sd_helpers as H
from tests.lora import lora_files as L

pytestmark = pytest.mark.slow
TOL = 2e-5
STRENGTH = 0.8
COMPONENTS = ("text_encoder", "unet")


class Ref:
    """The references for one set of base weights: outputs with the LoRA at STRENGTH and without it."""

    def __init__(self, state: dict, lay: dict, folder: Path, inputs: dict) -> None:
        import torch

        from tests import sd_reference as R

        pipe = H.diffusers_pipeline(state, "EulerDiscreteScheduler", folder)
        lat, t, ctx, ids = inputs["x"], inputs["t"], inputs["context"], inputs["ids"]
        self.base_eps = R.unet_eps(state, H.SHAPE, lat, t, ctx, model=pipe.unet)
        self.base_te = R.text_hidden(state, H.SHAPE, ids, model=pipe.text_encoder)
        pipe.load_lora_weights({k: torch.from_numpy(v) for k, v in L.peft_dict(lay).items()}, adapter_name="a")
        pipe.set_adapters(["a"], adapter_weights=[STRENGTH])
        self.eps = R.unet_eps(state, H.SHAPE, lat, t, ctx, model=pipe.unet)
        self.te = R.text_hidden(state, H.SHAPE, ids, model=pipe.text_encoder)
        pipe.set_adapters(["a"], adapter_weights=[1.0])  # fuse_lora's scale multiplies the adapter's weight
        pipe.fuse_lora(lora_scale=STRENGTH)  # W + 0.8 * scale * B @ A, by diffusers
        self.fused = _weights(pipe.unet, pipe.text_encoder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    from tests import sd_reference as R

    folder = tmp_path_factory.mktemp("lora")
    state = H.state()
    ckpt = E.write_sd(folder / "sd.safetensors", H.SHAPE, H.SEED, "safetensors")
    unet, te = R.unet_model(state, H.SHAPE), R.text_model(state, H.SHAPE)
    lay = L.layers(unet, te)
    to_ldm = L.ldm_names(state, R.diffusers_unet_config(H.SHAPE))
    d = folder / "loras"
    d.mkdir()
    # each convention in a format its extension does not say: the content decides
    files = {
        "peft": L.write_safetensors(d / "peft.bin", L.peft_dict(lay)),
        "kohya": L.write_safetensors(d / "kohya.ckpt", L.kohya_dict(lay)),
        "kohya_ldm": L.write_torch(d / "kohya_ldm.safetensors", L.kohya_dict(lay, to_ldm)),
        "sdcpp": L.write_gguf(d / "sdcpp.safetensors", L.sdcpp_dict(lay, to_ldm)),
    }
    rng = np.random.default_rng(5)
    inputs = {
        "x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "t": np.array([500.0, 20.0], np.float32),
        "context": rng.standard_normal((2, 77, H.SHAPE.unet.context_dim)).astype(np.float32),
        "ids": np.array([[49406, *range(320, 330), *[49407] * 66]] * 2, np.int32),
    }
    torch.set_num_threads(2)
    return {"folder": folder, "ckpt": ckpt, "state": state, "lay": lay, "files": files, "inputs": inputs}


@pytest.fixture(scope="module")
def ref(setup) -> Ref:
    return Ref(setup["state"], setup["lay"], setup["folder"], setup["inputs"])


def _weights(unet, te) -> dict[str, np.ndarray]:
    """The modules' weights under 'unet.'/'text_encoder.' + their module names (the LoRA layers' keys)."""
    out = {}
    for prefix, model in (("unet.", unet), ("text_encoder.", te)):
        for k, v in model.state_dict().items():
            if "lora" not in k:  # a PEFT-wrapped module keeps its own weight as base_layer
                out[prefix + k.replace(".base_layer.", ".")] = v.detach().numpy().copy()
    return out


def _run(model, inputs) -> tuple[np.ndarray, np.ndarray]:
    fn = next(f for f in model.functions if f.startswith("denoise"))
    eps = model.call(fn, {k: inputs[k] for k in ("x", "t", "context")})["eps"]
    te = model.call("encode_text", {"input_ids": inputs["ids"]})["last_hidden_state"]
    return eps, te


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _check(model, inputs, eps_ref, te_ref, what: str) -> None:
    eps, te = _run(model, inputs)
    assert _rel(eps, eps_ref) < TOL, f"{what}: UNet off by {_rel(eps, eps_ref):.2e} of its range"
    assert _rel(te, te_ref) < TOL, f"{what}: text encoder off by {_rel(te, te_ref):.2e} of its range"


def test_runtime_mode_every_convention_and_format(setup, ref, tmp_path):
    """One artifact compiled without a LoRA takes each file at run time, and lets it go again."""
    import runtime

    assert _rel(ref.eps, ref.base_eps) > 0.1 and _rel(ref.te, ref.base_te) > 0.05  # the LoRA matters
    art = tmp_path / "rt"
    m = H.compile_sd(setup["ckpt"], art, components=COMPONENTS, lora_apply_mode="runtime")
    assert not m["lora"]["unhooked"]  # runtime mode: the text encoder's fc1 got its activation split off
    model = runtime.load(art)
    _check(model, setup["inputs"], ref.base_eps, ref.base_te, "no LoRA")
    formats = {"peft": "safetensors", "kohya": "safetensors", "kohya_ldm": "ckpt", "sdcpp": "gguf"}
    for name, path in setup["files"].items():
        (rep,) = model.set_loras([(path, STRENGTH)])
        assert (rep["format"], rep["weights"], rep["unmatched"]) == (formats[name], len(setup["lay"]), {}), name
        _check(model, setup["inputs"], ref.eps, ref.te, f"runtime {name}")
    # two LoRAs at once add up: 0.5 + 0.3 of the same layers is 0.8 of them
    model.set_loras([(setup["files"]["kohya"], 0.5), (setup["files"]["sdcpp"], 0.3)])
    _check(model, setup["inputs"], ref.eps, ref.te, "runtime kohya 0.5 + sd.cpp 0.3")
    model.set_loras([])
    _check(model, setup["inputs"], ref.base_eps, ref.base_te, "LoRA removed")


def test_merge_mode(setup, ref, tmp_path):
    """Two LoRAs merged at compile time (kohya 0.5 + sd.cpp GGUF 0.3 = the reference's 0.8), and the same artifact
    refusing a runtime LoRA that needs the text encoder's fused activation, with the fix named."""
    import runtime
    from runtime.lora import LoraError

    art = tmp_path / "merged"
    m = H.compile_sd(
        setup["ckpt"],
        art,
        components=COMPONENTS,
        loras=[(str(setup["files"]["kohya"]), 0.5), (str(setup["files"]["sdcpp"]), 0.3)],
    )
    rep = m["report"]["lora"]
    assert [f["weights"] for f in rep["files"]] == [len(setup["lay"])] * 2
    assert rep["requantization"]["f32"]["max_abs"] == 0.0
    model = runtime.load(art)
    _check(model, setup["inputs"], ref.eps, ref.te, "merged")
    assert "text_encoder.encoder.layers.0.mlp.fc1.weight" in m["lora"]["unhooked"]
    with pytest.raises(LoraError, match="lora-apply-mode runtime"):
        model.set_loras([(setup["files"]["peft"], 1.0)])


def test_quantized_base(setup, ref, tmp_path, monkeypatch):
    """q8_0 base. Runtime mode: exact on the base (against diffusers on the decoded base with the LoRA). Merge mode:
    the stored weights are the requantized merge, and the report's requantization error is what they hold against
    diffusers' own fused (f32) weights."""
    import runtime

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    rt = tmp_path / "q8_rt"
    H.compile_sd(setup["ckpt"], rt, components=COMPONENTS, type="q8_0", lora_apply_mode="runtime")
    decoded = H.decoded_state(rt, setup["state"], partial=True)
    qref = Ref(decoded, setup["lay"], tmp_path, setup["inputs"])
    model = runtime.load(rt)
    base = _run(model, setup["inputs"])
    model.set_loras([(setup["files"]["kohya"], STRENGTH)])
    lora = _run(model, setup["inputs"])
    # The q8_0 kernels differ from an f32 reference on the decoded weights by themselves (~1e-4 of the UNet's range
    # here, without any LoRA); the branch must add nothing beyond that.
    for i, (what, r_base, r_lora) in enumerate(
        (("UNet", qref.base_eps, qref.eps), ("text encoder", qref.base_te, qref.te))
    ):
        own = _rel(base[i], r_base)
        assert _rel(lora[i], r_lora) < 2 * own + TOL, (
            f"q8_0 runtime {what}: {_rel(lora[i], r_lora):.2e}, base {own:.2e}"
        )
    assert _rel(lora[0], qref.base_eps) > 0.1  # and the LoRA did act

    mg = tmp_path / "q8_merge"
    m = H.compile_sd(
        setup["ckpt"], mg, components=COMPONENTS, type="q8_0", loras=[(str(setup["files"]["kohya"]), STRENGTH)]
    )
    err = m["report"]["lora"]["requantization"]["q8_0"]
    from tests import sd_reference as R

    stored = H.decoded_state(mg, setup["state"], partial=True)  # through diffusers' converter: diffusers' names
    got = _weights(R.unet_model(stored, H.SHAPE), R.text_model(stored, H.SHAPE))
    worst = max(float(np.abs(got[k + ".weight"] - ref.fused[k + ".weight"]).max()) for k in setup["lay"])
    assert 0 < err["max_abs"] and err["rms"] < 0.1 * err["delta_rms"], err
    # The report measured the error against sdcompile's own f32 merge; here it is measured against diffusers' fused
    # weights: the same numbers, within the f32 rounding of the two sums.
    assert worst == pytest.approx(err["max_abs"], rel=1e-3, abs=1e-6)


@pytest.mark.vulkan
def test_runtime_mode_on_vulkan(setup, ref, tmp_path):
    """The branch on Vulkan (a host round trip of each adapted step's input and output): as on the CPU, within the
    bound the Vulkan tests hold the f32 kernels to (2e-5 of the range; measured 7e-6 on lavapipe)."""
    from tests.kernels.fixtures import vulkan_adapter

    if vulkan_adapter() is None:
        pytest.skip("no Vulkan adapter (install mesa-vulkan-drivers for lavapipe, and wgpu)")
    import runtime

    art = tmp_path / "vk"
    H.compile_sd(setup["ckpt"], art, components=COMPONENTS, lora_apply_mode="runtime", target="vulkan")
    model = runtime.load(art)
    model.set_loras([(setup["files"]["sdcpp"], STRENGTH)])
    _check(model, setup["inputs"], ref.eps, ref.te, "vulkan runtime sd.cpp GGUF")


@pytest.mark.vulkan
def test_merge_mode_on_vulkan(setup, ref, tmp_path):
    """Merged at compile time into a Vulkan artifact, from the PEFT file saved as .bin: the same bound."""
    from tests.kernels.fixtures import vulkan_adapter

    if vulkan_adapter() is None:
        pytest.skip("no Vulkan adapter (install mesa-vulkan-drivers for lavapipe, and wgpu)")
    import runtime

    art = tmp_path / "vk_merge"
    H.compile_sd(
        setup["ckpt"], art, components=COMPONENTS, target="vulkan", loras=[(str(setup["files"]["peft"]), STRENGTH)]
    )
    _check(runtime.load(art), setup["inputs"], ref.eps, ref.te, "vulkan merged PEFT .bin")
