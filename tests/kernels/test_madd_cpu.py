"""int8 GEMM on AVX2 (``schedules/cpu_madd.py``, ``vpmaddwd``): the same contract and the same two references as
the VNNI kernel's (``test_vnni_cpu.py``: the quantized product in float64 numpy on the ``gguf`` package's
dequantized weights, and exact arithmetic with the quantization's half step per value), on that test's row-major
cases. Built for Haswell (``SDCOMPILE_MCPU``: AVX2 without VNNI), so it runs on every x86 host with AVX2, AVX-512
ones included."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_madd, cpu_vnni
from sdcompile.ir.ops import im2col_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx
from tests.kernels import test_vnni_cpu as vnni

HASWELL = {"SDCOMPILE_MCPU": "haswell"}
SPECS = [s for s in vnni.SPECS if not s.attr("wlayout")]
NAN = vnni.NAN
# int16 products of float weights (cpu_madd.WIDE_FROM_ROWS rows or more): a partial register block with a residual,
# groups of rows (K 4,096), units split across tasks, a conv, f16 activations
WIDE = {**vnni.EPI, "mma": "int16"}
WIDE_CASES = [
    ("linear", {"M": 520, "N": 128, "K": 96, "wtype": "f16", **WIDE, "residual": True}),
    ("linear", {"M": 600, "N": 64, "K": 4096, "wtype": "f32", **WIDE, "bias": False}),
    ("linear", {"M": 512, "N": 256, "K": 64, "wtype": "bf16", **WIDE}),
    ("conv2d", {"B": 1, "H": 24, "W": 24, "C": 32, "N": 64, "wtype": "f16", **vnni.CONV3, **WIDE}),
    ("linear", {"M": 512, "N": 48, "K": 128, "wtype": "f16", **WIDE, "dt": "hh"}),
]
WIDE_SPECS = [KernelSpec.make(op, **a) for op, a in WIDE_CASES]

built = fx.built_fixture("cpu", lambda: SPECS + [NAN] + WIDE_SPECS, "madd_cpu", env=HASWELL)
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
        packed = KernelSpec.make("linear", M=64, N=64, K=64, wtype="q8_0", **vnni.EPI, wlayout=vnni.PACKED)
        for why, spec in vnni.declined() + [("the VNNI order", packed)]:
            assert not cpu_madd.applicable(spec, 8), why
    monkeypatch.setenv("SDCOMPILE_MCPU", "znver4")
    from sdcompile.codegen import tvm_layer

    with __import__("tvm").target.Target(tvm_layer.cpu_target()):
        assert not cpu_madd.applicable(SPECS[0], 16) and cpu_vnni.applicable(SPECS[0], 16)
    # the cases cover tasks split by units and several groups of rows, for both kinds of products; fewer rows than
    # WIDE_FROM_ROWS keep f32 products
    with _for_haswell(monkeypatch):
        assert all(cpu_madd.applicable(s, 8) for s in WIDE_SPECS)
        few = KernelSpec.make("linear", **{**dict(WIDE_SPECS[2].attrs), "M": cpu_madd.WIDE_FROM_ROWS - 1})
        assert not cpu_madd.applicable(few, 8)
    for specs in (SPECS, WIDE_SPECS):
        gemms = [cpu_madd._MaddGemm(s, {}) for s in specs]
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


def _quantize_blocks(a: np.ndarray, qmax: int):
    """Rows of ``a`` quantized per 32 values as the kernel does, in f32: d = max|a| / qmax, q = round(a (1 / d)) to
    nearest even; (q, d per block) as float64."""
    rows, K = a.shape
    b = a.astype(np.float32).reshape(rows, K // 32, 32)
    d = (np.abs(b).max(-1) / np.float32(qmax)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.rint(b * inv[..., None])
    assert np.abs(q).max() <= qmax
    return q.reshape(rows, K).astype(np.float64), d.astype(np.float64)


@pytest.mark.parametrize("spec", WIDE_SPECS, ids=[s.name for s in WIDE_SPECS])
def test_int16_products_within_their_bounds(ex, spec):
    """Float weights, ``mma="int16"``: x and W both quantized per 32 values to 14 bits (-8,191 .. 8,191). Against
    the quantized product in float64 (the block sums are exact integers: the bound is the f32 sum of K / 32 scaled
    block sums, as for int8); against exact arithmetic, half a step of each operand per value besides. The error
    must be the quantization's: closer to the emulation than to exact arithmetic, by far."""
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(21)
    arrays, w = fx.gemm_inputs(spec, rng)
    x = arrays["x"].astype(np.float64)
    xm = (x if spec.op == "linear" else im2col_np(x, dict(spec.attrs))).reshape(M, K)
    qx, dx = _quantize_blocks(xm, cpu_madd.QMAX_WIDE)
    qw, dw = _quantize_blocks(w, cpu_madd.QMAX_WIDE)
    xq, wq = qx * np.repeat(dx, 32, axis=1), qw * np.repeat(dw, 32, axis=1)
    tail = (arrays["bias"] if spec.attr("bias") else 0) + (arrays["res"] if spec.attr("residual") else 0)
    emulated, exact = xq @ wq.T + tail, xm @ w.T + tail
    got = fx.run_spec(ex, spec, arrays).astype(np.float64).reshape(M, N)
    out_round = 1.01 * vnni.HALF_ULP[spec.param("y").dtype] * np.abs(emulated)
    bound = (K // 32 + 3) * vnni.U32 * (np.abs(xq) @ np.abs(wq).T) + 4 * vnni.U32 * (1 + np.abs(emulated)) + out_round
    err = np.abs(got - emulated)
    assert np.all(err <= bound), float(np.max(err / bound))
    hx, hw = np.repeat(dx / 2, 32, axis=1), np.repeat(dw / 2, 32, axis=1)
    qbound = hx @ np.abs(w).T + (np.abs(xm) + hx) @ hw.T + bound
    assert np.all(np.abs(got - exact) <= qbound), float(np.max(np.abs(got - exact) / qbound))
    if spec.param("y").dtype == "float32":  # (a 16-bit output's rounding hides the difference)
        assert err.max() < 0.1 * np.abs(got - exact).max()


def test_int16_nan_propagates(ex):
    fx.check_nan_rows_and_columns(ex, WIDE_SPECS[2], 7, 37)
