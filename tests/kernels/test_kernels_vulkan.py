"""Kernels built for Vulkan (TVM's WGSL) through ``build_kernels`` and run by the wgpu executor, against numpy.

Runs on any Vulkan adapter; in CI that is Mesa's lavapipe (a CPU implementation of Vulkan).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.errors import ArtifactError, NoDeviceError
from sdcompile.kernels import spec as S
from tests.kernels import fixtures as fx
from tests.kernels import kernel_cases as kc

pytestmark = fx.vulkan_marks()

SPECS = kc.all_specs()
DECODE = kc.decode_specs()


built = fx.built_fixture("vulkan", lambda: SPECS + DECODE, "vulkan_kernels")


ex = fx.executor_fixture("vulkan")


def test_description_is_json_and_complete(built):
    out, result = built
    assert json.loads(json.dumps(result)) == result
    assert result["target"] == "vulkan"
    assert sorted(result["kernels"]) == sorted(s.name for s in SPECS + DECODE)
    for info in result["kernels"].values():
        for entry in info["launch"]:
            assert entry["file"] in result["files"] and (out / entry["file"]).is_file()
            assert sorted(entry["buffers"]) == sorted(p["name"] for p in info["params"])
            assert entry["grid"][2] == 1 and max(entry["grid"]) <= 65535
            assert entry["block"][0] * entry["block"][1] * entry["block"][2] <= 256
            code = (out / entry["file"]).read_text()
            assert f"fn {entry['entry']}(" in code and f"@binding({len(entry['buffers'])}) var<uniform>" in code


def test_device_info(ex):
    info = ex.device_info()
    assert info["backend"] == "vulkan" and info["adapter"]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_kernel_matches_numpy(ex, spec):
    case = kc.make_case(spec)
    kc.check(case, kc.run_case(ex, case))


@pytest.mark.parametrize("spec", DECODE, ids=lambda s: s.name)
def test_decode_is_exact_on_special_values(ex, spec):
    case = kc.decode_case(spec)
    kc.check_exact(case, kc.run_case(ex, case))


def _layer_norm_ref(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def test_batched_launches_see_each_others_results(ex):
    # Two launches recorded into one command encoder before any submit: the second reads what the first wrote,
    # and an upload issued afterwards must not overtake them.
    spec = S.layer_norm(7, 96, 1e-5)
    case = kc.make_case(spec)
    x, g, b = case.inputs
    bx, bg, bb, by, bz = (ex.alloc(7 * 96 * 4) for _ in range(5))
    for buf, a in ((bx, x), (bg, g), (bb, b)):
        ex.upload(buf, a)
    vec = [(bg, (96,), "float32"), (bb, (96,), "float32")]
    ex.launch(spec.name, [(bx, (7, 96), "float32"), *vec, (by, (7, 96), "float32")])
    ex.launch(spec.name, [(by, (7, 96), "float32"), *vec, (bz, (7, 96), "float32")])
    ex.upload(bx, np.zeros_like(x))
    first = ex.download(by, (7, 96), "float32")
    kc.check(case, first)
    ref = _layer_norm_ref(first, g, b)
    kc.check(kc.Case(spec, [first, g, b], ref, 1e-5 * (1 + np.abs(ref))), ex.download(bz, (7, 96), "float32"))


def test_missing_shader_and_missing_adapter(built, monkeypatch):
    from runtime.executors import vulkan

    out, result = built
    with pytest.raises(ArtifactError, match="missing"):
        vulkan.Executor(out / "nowhere", result)
    monkeypatch.setattr(vulkan, "vulkan_adapters", lambda: [])
    with pytest.raises(NoDeviceError, match="no Vulkan adapter"):
        vulkan.Executor(out, result)
