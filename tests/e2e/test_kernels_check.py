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
    """Every kernel the committed table claims validates here, and every kernel that validates is claimed: the
    types of each weight op (linear, embed, conv2d) and the ops per backend."""
    table = json.loads(TABLE.read_text())
    assert check.claims_without_kernel(table, results) == []
    derived = check.table_from(results, table)
    for target in results:
        for op in ("linear", "embed", "conv2d", "ops"):
            assert sorted(table[target][op]) == derived[target][op], (target, op)


def test_the_check_covers_conv2d_and_every_kernel_op(results):
    """conv2d is checked per weight type (stride 1 and 2); every weightless kernel op has a case on every backend;
    the checked weight ops are exactly the registry's ops that read a weight in a storage type."""
    from sdcompile.ir.ops import OPS as IR_OPS
    from sdcompile.kernels.spec import KERNELS

    assert set(check.WEIGHT_CHECKS) == {d.kernel for d in IR_OPS.values() if d.weights and d.kernel}
    assert set(check.WEIGHT_CHECKS) | set(check.WEIGHTLESS) == set(KERNELS)
    assert {"conv2d", "group_norm", "attention", "unary", "layer_norm", "timestep_embedding"} <= set(KERNELS)
    for target, res in results.items():
        for t, r in check.type_results(res).items():
            assert set(r) == {"gemv", "gemm", "embed", "conv", "conv_s2"}, (target, t)
        ops = res[check.OPS_KEY]
        assert set(ops) == set(check.WEIGHTLESS), target
        for op, cases in ops.items():
            assert cases and all(c["status"] == "validated" for c in cases.values()), (target, op, cases)
        assert any("_T77" in name for name in ops["attention"]), "a cross-attention case (T keys != S queries)"
    # The stride-2 case has its own geometry (2x2 outputs from a 4x4 image, padded bottom and right only).
    s2 = check.specs_for("q4_0")["conv_s2"]
    assert s2.attr("stride") == 2 and s2.params[-1].shape == (4, 32)
    rendered = check.render(results)
    assert "| conv2d |" in rendered and "| group_norm |" in rendered


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
    res = check.check_target("cpu", ["q4_0"], ops=[])
    assert res["q4_0"]["gemm"]["status"] == "failed" and res["q4_0"]["gemv"]["status"] == "validated"


def test_a_broken_kernel_fails_the_check(monkeypatch):
    # Decode q4_0 blocks as q4_1 (reads the scale bytes as data): the check must catch it and flag the table.
    # (The GEMV and AMX paths decode q4_0 with their own integer kernels, so only the tiled GEMM, which AMX's
    # absence brings back, and the gather use the broken decoder.)
    from sdcompile.kernels import dequant

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    monkeypatch.setitem(dequant.DECODERS, "q4_0", dequant.DECODERS["q4_1"])
    res = {"cpu": check.check_target("cpu", ["q4_0"], ops=[])}
    assert res["cpu"]["q4_0"]["gemm"]["status"] == "failed" and res["cpu"]["q4_0"]["embed"]["status"] == "failed"
    wrong = check.claims_without_kernel({"cpu": {"linear": ["q4_0"], "embed": ["q4_0"]}}, res)
    assert len(wrong) == 2 and all("q4_0" in w for w in wrong)
    assert "q4_0" not in check.table_from(res, json.loads(TABLE.read_text()))["cpu"]["linear"]


def test_a_broken_conv_decoder_fails_the_check(monkeypatch):
    """conv2d decodes its weight with its own instance of the decoders: give only the conv kernels a q4_0 decoder
    with a wrong zero point (7, not 8). Both conv checks fail, linear and embed stay validated, and the table
    keeps q4_0 for linear but not for conv2d."""
    from sdcompile.kernels import conv, dequant

    good = dequant.DECODERS["q4_0"]
    broken = dequant.Decoder(
        lambda w, base, j, e, s: s[0] * dequant._signed(dequant._nibble(w, base + 2, j), 7), good.scales
    )
    real = conv.matmul

    def conv_matmul(*args):
        with pytest.MonkeyPatch.context() as m:
            m.setitem(dequant.DECODERS, "q4_0", broken)
            return real(*args)

    monkeypatch.setattr(conv, "matmul", conv_matmul)
    # the TE kernels: on a CPU with AMX, quantized convs take the tile unit's kernel and its own decoders
    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    res = {"cpu": check.check_target("cpu", ["q4_0", "q8_0"], ops=[])}
    r = res["cpu"]["q4_0"]
    assert r["conv"]["status"] == "failed" and r["conv_s2"]["status"] == "failed", r
    assert all(r[k]["status"] == "validated" for k in ("gemv", "gemm", "embed")), r
    assert res["cpu"]["q8_0"]["conv"]["status"] == "validated"
    wrong = check.claims_without_kernel({"cpu": {"linear": ["q4_0"], "conv2d": ["q4_0", "q8_0"]}}, res)
    assert len(wrong) == 1 and wrong[0].startswith("cpu conv2d q4_0")
    table = check.table_from(res, json.loads(TABLE.read_text()))["cpu"]
    assert table["conv2d"] == ["q8_0"] and table["linear"] == ["q4_0", "q8_0"]
    assert "conv2d" in table["ops"] and "conv" in table["why_not"]["q4_0"]


def test_a_broken_pointwise_kernel_fails_the_check(monkeypatch):
    """An `add` kernel that subtracts fails its cases; `mul`, from the same module, still validates; the table drops
    `add` from the backend's ops (and the committed table's claim of it is flagged), and keeps every op this run did
    not check."""
    from tvm import te

    from sdcompile.kernels import pointwise

    real = pointwise.compute

    def compute(spec):
        if spec.op != "add":
            return real(spec)
        x, y, z = real(spec)
        ys = tuple(spec.attr("yshape"))
        return [
            x,
            y,
            te.compute(z.shape, lambda *i: x[i] - y[tuple(0 if d == 1 else v for v, d in zip(i, ys))], name="z"),
        ]

    monkeypatch.setattr(pointwise, "compute", compute)
    res = {"cpu": check.check_target("cpu", [], ops=["add", "mul"])}
    ops = res["cpu"][check.OPS_KEY]
    assert set(ops) == {"add", "mul"}
    assert all(c["status"] == "failed" for c in ops["add"].values()) and len(ops["add"]) == 2
    assert all(c["status"] == "validated" for c in ops["mul"].values())
    base = json.loads(TABLE.read_text())
    wrong = check.claims_without_kernel(base, res)
    assert len(wrong) == 1 and wrong[0].startswith("cpu add: failed")
    table = check.table_from(res, base)["cpu"]
    assert "add" not in table["ops"] and "mul" in table["ops"]
    assert set(base["cpu"]["ops"]) - set(table["ops"]) == {"add"}  # what was not checked keeps its entry
    assert table["linear"] == base["cpu"]["linear"]
    assert "add" in table["ops_why_not"] and table["checked_ops"]["mul"]
    assert "failed" in check.render(res).split("| add |")[1].splitlines()[0]


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


def test_activation_storage_types_come_from_their_cases():
    """The table lists a 16-bit activation type for a backend only where every one of its cases passed, says why
    not otherwise, and flags a committed claim the check contradicts."""
    ok = {"status": "validated", "detail": ""}
    bad = {"status": "failed", "detail": "launch failed: GPUValidationError\nmore"}
    res = {"vulkan": {check.ACT_KEY: {"float16": {"a": ok, "b": ok}, "bfloat16": {"a": bad, "b": ok}}}}
    base = json.loads(TABLE.read_text())
    table = check.table_from(res, base)["vulkan"]
    assert table["act_dtypes"] == ["float32", "float16"]
    assert table["act_why_not"]["bfloat16"] == "1 of 2 cases failed, e.g. a: failed (launch failed: GPUValidationError)"
    claimed = {"vulkan": dict(base["vulkan"], act_dtypes=["float32", "float16", "bfloat16"])}
    assert check.claims_without_kernel(claimed, res) == [
        f"vulkan bfloat16 activations: {check.op_state(res['vulkan'][check.ACT_KEY]['bfloat16'])[1]}"
    ]
    # the committed table agrees with what the cases of each backend can do here
    assert "bfloat16" not in base["vulkan"]["act_dtypes"] and "float16" in base["vulkan"]["act_dtypes"]
    assert {"float16", "bfloat16"} <= set(base["cpu"]["act_dtypes"])
