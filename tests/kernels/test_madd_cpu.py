"""int8 GEMM on AVX2 (``schedules/cpu_madd.py``, ``vpmaddwd``): the same contract and the same two references as
the VNNI kernel's (``test_vnni_cpu.py``: the quantized product in float64 numpy on the ``gguf`` package's
dequantized weights, and exact arithmetic with the quantization's half step per value), on that test's row-major
cases. Built for Haswell (``SDCOMPILE_MCPU``: AVX2 without VNNI), so it runs on every x86 host with AVX2, AVX-512
ones included."""

from __future__ import annotations

import pytest

from schedules import cpu_madd, cpu_vnni
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx
from tests.kernels import test_vnni_cpu as vnni

HASWELL = {"SDCOMPILE_MCPU": "haswell"}
SPECS = [s for s in vnni.SPECS if not s.attr("wlayout")]
NAN = vnni.NAN

built = fx.built_fixture("cpu", lambda: SPECS + [NAN], "madd_cpu", env=HASWELL)
ex = fx.executor_fixture("cpu")


@pytest.fixture(autouse=True)
def _host_runs_avx2():
    fx.skip_unless_host_runs("avx2")


def _for_haswell(monkeypatch):
    monkeypatch.setenv("SDCOMPILE_MCPU", "haswell")
    from sdcompile.codegen import tvm_layer

    return __import__("tvm").target.Target(tvm_layer.cpu_target())


def test_dispatch(monkeypatch):
    """Under an AVX2 target without VNNI the kernel takes int8 products of q8_0 / q4_0 (row-major: the VNNI order is
    that kernel's), and nothing else; with VNNI that kernel does."""
    with _for_haswell(monkeypatch):
        for spec in SPECS + [NAN]:
            assert cpu_madd.applicable(spec, 8) and cpu_madd.applicable(spec, 16), spec.name
            assert not cpu_vnni.applicable(spec, 16)
        base = {"M": 64, "N": 64, "K": 64, "wtype": "q8_0", **vnni.EPI}
        for why, change in (
            ("not asked for", {"mma": None}),
            ("bf16 asked for", {"mma": "bf16"}),
            ("another quant type", {"wtype": "q4_k", "K": 256}),
            ("float weights", {"wtype": "f16"}),
            ("few rows", {"M": cpu_vnni.FROM_ROWS - 1}),
            ("N % 16", {"N": 24}),
            ("the VNNI order", {"wlayout": vnni.PACKED}),
        ):
            attrs = {k: v for k, v in (base | change).items() if v is not None}
            assert not cpu_madd.applicable(KernelSpec.make("linear", **attrs), 8), why
    monkeypatch.setenv("SDCOMPILE_MCPU", "znver4")
    from sdcompile.codegen import tvm_layer

    with __import__("tvm").target.Target(tvm_layer.cpu_target()):
        assert not cpu_madd.applicable(SPECS[0], 16) and cpu_vnni.applicable(SPECS[0], 16)
    # the cases cover tasks split by units and several groups of rows
    gemms = [cpu_madd._MaddGemm(s, {}) for s in SPECS]
    assert {(g.NB, g.MR) for g in gemms} == {(1, cpu_madd.MR)}
    assert any(g.UC > 1 for g in gemms) and any(g.GR > 1 for g in gemms)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_int8_products_within_their_bounds(ex, spec):
    vnni.test_int8_products_within_their_bounds(ex, spec)


def test_nan_propagates(ex):
    vnni.test_nan_propagates(ex, NAN)


def test_code_uses_vpmaddwd(monkeypatch):
    """The products are 256-bit ``vpmaddwd`` (2 per row and step: the loop's UNROLL steps over MR rows), no zmm
    register (the build runs on AVX2-only CPUs)."""
    from sdcompile.codegen import tvm_layer

    monkeypatch.setenv("SDCOMPILE_MCPU", "haswell")
    target = tvm_layer.cpu_target()
    with __import__("tvm").target.Target(target):
        mod = tvm_layer.scheduled_module([SPECS[0]], "cpu", target)
    asm = tvm_layer.compile_cpu(mod, target).mod.inspect_source("asm")
    madds = [ln.split("#")[0].strip() for ln in asm.splitlines() if "vpmaddwd" in ln]
    assert len([m for m in madds if m.count("%ymm") >= 2]) >= 2 * cpu_madd.UNROLL * cpu_madd.MR, len(madds)
    assert "%zmm" not in asm
