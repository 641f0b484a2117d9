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


def test_a_broken_kernel_fails_the_check(monkeypatch):
    # Decode q4_0 blocks as q4_1 (reads the scale bytes as data): the check must catch it and flag the table.
    # (The GEMV path decodes q4_0 with its own integer kernel, so only GEMM and the gather use the broken decoder.)
    from sdcompile.kernels import dequant

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
