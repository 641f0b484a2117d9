"""q2_k, q3_k, q4_k, q5_k, q6_k, tq1_0 and mxfp4 kernels (linear as GEMV and GEMM, embed), plus the GPU GEMV
schedule for the older types, built for CUDA without a GPU: TVM's CUDA C through nvcc into one fatbin with SASS for
every default architecture and PTX for the newest, read back with cuobjdump. Nothing runs (no GPU here); the same
schedules and decoders run on Vulkan in ``test_kquants_vulkan.py``."""

from __future__ import annotations

import re
import subprocess

import pytest

from sdcompile.codegen import cuda_build as cb
from sdcompile.errors import ToolchainError
from tests.kernels import kquant_cases as kq

SPECS = kq.linear_specs() + kq.embed_specs() + kq.gemv_specs()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    try:
        cb.find_nvcc()
        cb.find_cuobjdump()
    except ToolchainError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("kquant_cuda")
    return out, cb.build_cuda(SPECS, None, out)


def test_fatbin_holds_every_default_arch(built):
    out, rec = built
    assert cb.list_fatbin(out / cb.CUDA_FATBIN_FILE) == {"elf": cb.DEFAULT_ARCHS, "ptx": [cb.DEFAULT_PTX]}
    assert rec["build"]["archs"] == cb.DEFAULT_ARCHS and rec["build"]["ptx"] == [cb.DEFAULT_PTX]


def test_every_kernel_in_every_arch_within_limits(built):
    # cuobjdump's resource usage names each function of each SASS image: every kernel must be in every one, and
    # within WebGPU's 16 KB of workgroup memory, which the GPU schedules promise CUDA too.
    out, rec = built
    text = subprocess.run(
        [str(cb.find_cuobjdump()), "--dump-resource-usage", str(out / cb.CUDA_FATBIN_FILE)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = {e["entry"] for info in rec["kernels"].values() for e in info["launch"]}
    assert len(entries) == len(SPECS)
    per_arch: dict[str, dict[str, int]] = {}
    arch = None
    for line in text.splitlines():
        if m := re.match(r"arch = (sm_\d+)", line.strip()):
            arch = m.group(1)
            per_arch.setdefault(arch, {})
        elif m := re.match(r"Function (\w+):", line.strip()):
            fn = m.group(1)
        elif m := re.search(r"SHARED:(\d+)", line):
            per_arch[arch][fn] = int(m.group(1))
    assert sorted(per_arch) == sorted(cb.DEFAULT_ARCHS)
    for arch, funcs in per_arch.items():
        assert set(funcs) == entries, arch
        assert max(funcs.values()) <= 16384, arch


def test_gemv_launch_geometry(built):
    from schedules.gpu import GEMV_ROWS, GEMV_THREADS

    out, rec = built
    for s in SPECS:
        (entry,) = rec["kernels"][s.name]["launch"]
        assert entry["block"][0] * entry["block"][1] * entry["block"][2] <= 256 and entry["grid"][2] == 1
        if s.op == "linear" and s.attr("M") == 1 and int(s.attr("K")) >= GEMV_THREADS:
            assert entry["block"] == [GEMV_THREADS, GEMV_ROWS, 1], s.name
