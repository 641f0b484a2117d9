"""i-quant kernels (linear at M = 1 and M > 1, embed) lowered to CUDA C and built by nvcc into one fatbin for the
default architectures, without a GPU. Numerics are checked on CPU and Vulkan, which share the kernel math and the
GPU schedules; running these needs an NVIDIA GPU (``runtime.executors.cuda``)."""

from __future__ import annotations

import re

import pytest

from sdcompile.codegen import cuda_build as cb
from sdcompile.errors import ToolchainError
from tests.kernels import iquant_cases as ic

SPECS = ic.all_specs()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    try:
        cb.find_nvcc()
    except ToolchainError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("iquant_cuda")
    return out, cb.build_cuda(SPECS, None, out)  # None: the default architectures, as `compile` uses


def test_fatbin_holds_every_default_architecture(built):
    out, result = built
    assert result["build"]["archs"] == cb.DEFAULT_ARCHS and result["build"]["ptx"] == [cb.DEFAULT_PTX]
    try:
        listed = cb.list_fatbin(out / cb.CUDA_FATBIN_FILE)
    except ToolchainError as e:
        pytest.skip(f"fatbin built; cannot list it: {e}")
    assert listed == {"elf": cb.DEFAULT_ARCHS, "ptx": [cb.DEFAULT_PTX]}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_kernel_takes_its_tables(built, spec):
    out, result = built
    source = (out / cb.CUDA_SOURCE_FILE).read_text()
    info = result["kernels"][spec.name]
    tables = [p for p in info["params"] if p["kind"] == "lut"]
    assert [p["name"] for p in tables] == [p.name for p in spec.params if p.kind == "lut"]
    for p in tables:
        assert p["np_dtype"] == "uint32" and p["words"] == p["shape"][0]
    (entry,) = info["launch"]
    assert sorted(entry["buffers"]) == sorted(p.name for p in spec.params) and entry["pods"] == []
    m = re.search(rf'extern "C" __global__ void __launch_bounds__\((\d+)\) {entry["entry"]}\(([^)]*)\)', source)
    assert m and int(m.group(1)) == entry["block"][0] * entry["block"][1] * entry["block"][2]
    # Device parameters are the entry's buffers in order; a table is a plain u32 array.
    names = [a.split()[-1].removesuffix("_ptr") for a in m.group(2).split(",")]
    assert names == entry["buffers"]
    for p in tables:
        assert f"uint* __restrict__ {p['name']}_ptr" in m.group(2)
