"""`sdcompile kernels --check`: the capability table legalization reads is what the kernels actually do."""

from __future__ import annotations

import json

import pytest

from sdcompile.backends import TABLE
from sdcompile.kernels import check
from sdcompile.quant.types import QUANT_TYPES


def _vulkan() -> bool:
    try:
        from runtime.executors.vulkan import find_adapter

        return find_adapter() is not None
    except Exception:
        return False


@pytest.fixture(scope="module")
def results():
    targets = ["cpu"] + (["vulkan"] if _vulkan() else [])
    return {t: check.check_target(t, list(QUANT_TYPES)) for t in targets}


def test_committed_table_is_measured_truth(results):
    """Every kernel the committed table claims validates here, and every kernel that validates is claimed."""
    table = json.loads(TABLE.read_text())
    assert check.claims_without_kernel(table, results) == []
    derived = check.table_from(results, table)
    for target in results:
        for op in ("linear", "embed"):
            assert sorted(table[target][op]) == derived[target][op], (target, op)


def test_every_type_has_a_native_kernel_or_a_reason(results):
    table = json.loads(TABLE.read_text())
    for target in results:
        for t in QUANT_TYPES:
            if t not in table[target]["linear"]:
                assert t in table[target]["why_not"], (target, t)


def test_a_broken_amx_kernel_fails_the_check(monkeypatch):
    """The AMX GEMM decodes q4_0 with its own code: decoding it as q8_0 must fail the check."""
    from schedules import cpu_amx
    from sdcompile.codegen import tvm_layer

    if not tvm_layer.host_amx():
        pytest.skip("no AMX on this CPU: the GEMM check runs the tiled path (tested below)")
    monkeypatch.setattr(cpu_amx._Gemm, "decode_q4_0", cpu_amx._Gemm.decode_q8_0)
    res = check.check_target("cpu", ["q4_0"])
    assert res["q4_0"]["gemm"]["status"] == "failed" and res["q4_0"]["gemv"]["status"] == "validated"


def test_a_broken_kernel_fails_the_check(monkeypatch):
    # Decode q4_0 blocks as q4_1 (reads the scale bytes as data): the check must catch it and flag the table.
    # (The GEMV and AMX paths decode q4_0 with their own integer kernels, so only the tiled GEMM, which AMX's
    # absence brings back, and the gather use the broken decoder.)
    from sdcompile.kernels import dequant

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    monkeypatch.setitem(dequant.DECODERS, "q4_0", dequant.DECODERS["q4_1"])
    res = {"cpu": check.check_target("cpu", ["q4_0"])}
    assert res["cpu"]["q4_0"]["gemm"]["status"] == "failed" and res["cpu"]["q4_0"]["embed"]["status"] == "failed"
    wrong = check.claims_without_kernel({"cpu": {"linear": ["q4_0"], "embed": ["q4_0"]}}, res)
    assert len(wrong) == 2 and all("q4_0" in w for w in wrong)
    assert "q4_0" not in check.table_from(res, json.loads(TABLE.read_text()))["cpu"]["linear"]


def test_cli_json(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "sdcompile.cli", "kernels", "--targets", "cpu", "--types", "q8_0", "--json", "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["results"]["cpu"]["q8_0"]["gemv"]["status"] == "validated"
    assert out["table_claims_failing"] == []
