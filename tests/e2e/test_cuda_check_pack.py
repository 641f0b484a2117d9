"""benchmarks/cuda_check.py's build step, which needs nvcc but no GPU: the pack a GPU machine runs holds the fatbin
for every default architecture, a build description the runtime's CUDA executor accepts, and the gguf package."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")


def _script():
    spec = importlib.util.spec_from_file_location("cuda_check", ROOT / "benchmarks" / "cuda_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cuda_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_build_pack(tmp_path):
    cc = _script()
    assert cc.main(["build", "--out", str(tmp_path), "--types", "q4_0,iq2_xs"]) == 0
    meta = json.loads((tmp_path / "build.json").read_text())
    assert meta["types"] == ["q4_0", "iq2_xs"]
    build = meta["cuda"]["build"]
    assert build["archs"] == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"] and build["ptx"] == ["compute_90"]
    names = set(meta["cuda"]["kernels"])
    # the check's five cases per type (GEMV, GEMM, embed, two convs), plus GEMV and GEMM at 4096 x 4096 for q4_0
    from sdcompile.kernels.check import specs_for

    per_type = len(specs_for("q4_0"))
    assert per_type == 5 and len(names) == 2 * per_type + 2 and any("M64_N4096" in n and "q4_0" in n for n in names)
    assert (tmp_path / build["file"]).stat().st_size > 0
    assert (tmp_path / "pylib" / "gguf" / "quants.py").is_file()


def test_run_without_a_gpu_says_so(tmp_path, monkeypatch):
    """On a machine without a GPU the run step fails with the runtime's own message, not a traceback deep inside."""
    from runtime.device import probe_cuda

    if any(not d.get("simulated") for d in probe_cuda()):
        pytest.skip("this machine has a GPU")
    cc = _script()
    assert cc.main(["build", "--out", str(tmp_path), "--types", "q8_0"]) == 0
    with pytest.raises(Exception, match="(?i)cuda|gpu|driver|device"):
        cc.main(["run", "--pack", str(tmp_path)])
