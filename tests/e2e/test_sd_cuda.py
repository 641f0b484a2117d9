"""The tiny SD checkpoint compiled for CUDA without a GPU: every kernel of all four functions lands in one fatbin with
SASS for each default architecture plus PTX, the kernels' symbols are in it, and a simulated GPU older than the
build is refused with both sides named. (Running it needs a GPU: benchmarks/sd15_check.py does where one is lent.)"""

from __future__ import annotations

import subprocess

import pytest

from sdcompile.codegen import cuda_build as cb
from tests.e2e.sd_helpers import SHAPE, compile_sd, state


def _has_nvcc() -> bool:
    try:
        cb.find_nvcc()
        return True
    except Exception:  # ToolchainError: no CUDA toolkit on this machine
        return False


pytestmark = pytest.mark.skipif(not _has_nvcc(), reason="needs nvcc (CUDA 13)")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from sdcompile import examples_sd as E

    d = tmp_path_factory.mktemp("sdcuda")
    src = E.write_sd(d / "tiny.safetensors", SHAPE, 0, "safetensors", state=state())
    m = compile_sd(src, d / "art", target="cuda")
    return d / "art", m


def test_one_fatbin_for_every_function(artifact):
    out, m = artifact
    fatbin = out / m["kernels"]["build"]["file"]
    assert cb.list_fatbin(fatbin) == {"elf": cb.DEFAULT_ARCHS, "ptx": [cb.DEFAULT_PTX]}
    used = {s["kernel"] for f in m["functions"].values() for s in f["steps"]}
    assert set(m["functions"]) == {"encode_text", "denoise_64x64", "decode_latents_64x64", "encode_image_64x64"}
    assert used == set(m["kernels"]["kernels"])  # every kernel a step launches is in the build, and no other
    syms = subprocess.run(
        [str(cb.find_cuobjdump()), "--dump-elf-symbols", str(fatbin)], capture_output=True, text=True, check=True
    ).stdout
    for name in ("conv2d_", "group_norm_", "attention_", "upsample_nearest_", "timestep_embedding_"):
        assert name in syms


def test_old_gpu_is_refused(artifact, monkeypatch):
    import runtime
    from runtime.errors import RuntimeFailure

    out, _ = artifact
    monkeypatch.setenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", "GeForce GTX 970:5.2:4")
    with pytest.raises(RuntimeFailure, match="compute capability 5.2.*sm_75"):
        runtime.load(out)
