"""bf16 products on the vector unit (``schedules/cpu_bf16_dot.py``, ``vdpbf16ps``, ``compile --compute bf16`` on a
CPU with AVX512_BF16 but no AMX-BF16): linear and conv2d with f32, f16 and bf16 weights against float64 numpy.

On a CPU with AMX the kernels are built with ``SDCOMPILE_NO_AMX=1``, as a user would for an artifact that must run
without the tile unit, so this path is tested wherever AVX512_BF16 exists.

Bounds (u = 2^-24, f32's unit roundoff; products of bf16 values are exact in f32, the sums round):
- against float64 on the operands rounded to bf16 (nearest even): |y - y_bf16| <= (K + 4) u sum_k |x_k w_k| plus
  the epilogue's rounding. This one is tight: a wrong pairing, a lost pair or a wrong rounding fails it.
- against float64 on the unrounded operands: that bound plus the bf16 rounding, 2^-8 relative per product.
A kernel that ignored the request (f32 products) would pass the second, so the test also checks that its error is
well above the f32 kernel's."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.ir.ops import gelu_np, im2col_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")

U32, UB = 2.0**-24, 2.0**-8  # unit roundoff of round-to-nearest with 24 (f32) and 8 (bf16) significant bits
NO_AMX = {"SDCOMPILE_NO_AMX": "1"}
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
LIN = {"bias": False, "residual": False, "act": "none"}
CASES = [
    # N % 64 == 0: 6 rows x 4 vectors per register block; M = 77 leaves a partial panel
    ("linear", {"M": 77, "N": 128, "K": 64, "wtype": "f32", "bias": True, "residual": True, "act": "gelu"}),
    ("linear", {"M": 50, "N": 320, "K": 2880, "wtype": "f16", "bias": True, "residual": False, "act": "none"}),
    ("linear", {"M": 33, "N": 16, "K": 96, "wtype": "bf16", "bias": False, "residual": False, "act": "silu"}),  # 16 x 1
    ("linear", {"M": 13, "N": 48, "K": 40, "wtype": "f32", **LIN}),  # 8 x 3; K neither a multiple of 32 nor 16
    ("linear", {"M": 5, "N": 32, "K": 18, "wtype": "f16", **LIN}),  # 12 x 2; K below one vector
    # M 128 and 16, in whole 8-row panels: 8 x 2 register blocks (``register_block``)
    ("conv2d", {"B": 2, "H": 8, "W": 8, "C": 32, "N": 64, "wtype": "f16", "bias": True, "residual": False, **CONV3}),
    (
        "conv2d",
        {"B": 1, "H": 9, "W": 9, "C": 64, "N": 32, "wtype": "f32", "bias": True, "residual": True}
        | {"kh": 3, "kw": 3, "stride": 2, "pads": (0, 0, 1, 1)},
    ),
    (
        "conv2d",
        {"B": 1, "H": 6, "W": 7, "C": 48, "N": 80, "wtype": "bf16", "bias": True, "residual": False}
        | {"kh": 1, "kw": 1, "stride": 1, "pads": (0, 0, 0, 0)},
    ),
]
PAIRS = [(KernelSpec.make(op, **a, mma="bf16"), KernelSpec.make(op, **a)) for op, a in CASES]
NAN = KernelSpec.make("linear", M=9, N=64, K=48, wtype="f16", bias=True, residual=False, act="none", mma="bf16")

built = fx.built_fixture("cpu", lambda: [s for p in PAIRS for s in p] + [NAN], "bf16_dot_cpu", NO_AMX)
ex = fx.executor_fixture("cpu")


def _bf16(a: np.ndarray) -> np.ndarray:
    """f32 values rounded to bf16 (nearest even), as float64."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def test_dispatch(monkeypatch):
    from schedules import cpu_amx_bf16, cpu_bf16_dot

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    assert "+avx512bf16" in tvm_layer.cpu_target()["mattr"]  # LLVM's name for this CPU may lack it
    for bf, f32 in PAIRS:
        assert cpu_bf16_dot.applicable(bf, 16, True) and not cpu_bf16_dot.applicable(f32, 16, True)
        assert not cpu_bf16_dot.applicable(bf, 16, False)  # the tile unit takes it, or no AVX512_BF16
    base = {"M": 8, "N": 16, "K": 64, "wtype": "f16", **LIN, "mma": "bf16"}
    for why, change in (("quantized", {"wtype": "q8_0"}), ("N % 16", {"N": 24}), ("K odd", {"K": 33})):
        assert not cpu_bf16_dot.applicable(KernelSpec.make("linear", **(base | change)), 16, True), why
    conv = KernelSpec.make("conv2d", B=1, H=4, W=4, C=4, N=16, wtype="f16", bias=False, residual=False, **CONV3)
    assert not cpu_bf16_dot.applicable(conv, 16, True)  # channels not in whole vectors (a UNet's conv_in)
    if tvm_layer.host_amx_bf16():  # with the tile unit on, the AMX kernel keeps the job
        monkeypatch.delenv("SDCOMPILE_NO_AMX")
        assert cpu_amx_bf16.applicable(PAIRS[0][0], 16, True)


def test_register_blocks():
    """8 x 2 where x has few rows in whole 8-row panels (two of the cases above take it), else 6 x 4 and the rest."""
    from schedules.cpu_bf16_dot import register_block

    assert register_block(32, 80) == (2, 8) and register_block(128, 4) == (2, 8) and register_block(16, 2) == (2, 8)
    assert register_block(154, 48) == (4, 6) and register_block(136, 80) == (4, 6)  # more rows: 6 x 4
    assert register_block(36, 80) == (4, 6) and register_block(32, 3) == (3, 8)  # not whole 8-row panels; NT odd
    blocks = [register_block(M, N // 16) for M, N, _ in (gemm_mnk(bf) for bf, _ in PAIRS)]
    assert blocks.count((2, 8)) == 2


def test_code_uses_vdpbf16ps(monkeypatch):
    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    spec = PAIRS[0][0]
    target = tvm_layer.cpu_target()
    asm = tvm_layer.compile_cpu(tvm_layer.scheduled_module([spec], "cpu", target), target).mod.inspect_source("asm")
    assert "vdpbf16ps" in asm and "vcvtne2ps2bf16" in asm and "tdpbf16ps" not in asm
    # each panel's strip of y prefetched for writing while its products run (rows a full row apart)
    assert "prefetchw" in asm


def _run(ex, spec, arrays):
    return fx.run_spec(ex, spec, arrays).astype(np.float64)


_weights = fx.weight_words


def _epilogue(spec, pre, arrays):
    if spec.attr("bias"):
        pre = pre + arrays["bias"]
    act = str(spec.attr("act", "none"))
    y = gelu_np(pre) if act == "gelu" else pre / (1 + np.exp(-pre)) if act == "silu" else pre
    return y + arrays["res"] if spec.attr("residual") else y


@pytest.mark.parametrize("pair", PAIRS, ids=[p[0].name for p in PAIRS])
def test_bf16_products_within_their_bound(ex, pair):
    spec, f32_spec = pair
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(5)
    words, w = _weights(spec, rng.standard_normal((N, K)) * 0.1)
    x = rng.standard_normal(spec.param("x").shape).astype(np.float32)
    arrays = {"x": x, "w": words}
    if spec.attr("bias"):
        arrays["bias"] = rng.standard_normal(N).astype(np.float32)
    if spec.attr("residual"):
        arrays["res"] = rng.standard_normal((M, N)).astype(np.float32)
    xm = x.astype(np.float64) if spec.op == "linear" else im2col_np(x.astype(np.float64), dict(spec.attrs))
    xm = xm.reshape(M, K)
    # the epilogue is monotone with slope <= 1.13 (gelu), so the sums' error bounds the outputs' after it
    y_bf = _epilogue(spec, _bf16(xm) @ _bf16(w).T, arrays)
    y = _epilogue(spec, xm @ w.T, arrays)
    mag = np.abs(xm) @ np.abs(w).T
    got, f32 = _run(ex, spec, arrays), _run(ex, f32_spec, arrays)
    rounding = 8 * U32 * (1 + np.abs(y))  # bias, activation and residual in f32
    tight = 1.2 * (K + 4) * U32 * mag + rounding
    assert np.all(np.abs(got - y_bf) <= tight), float(np.max(np.abs(got - y_bf) / tight))
    loose = 1.2 * (2 * UB + UB * UB + (K + 4) * U32) * mag + rounding
    assert np.all(np.abs(got - y) <= loose), float(np.max(np.abs(got - y) / loose))
    # the products really were bf16: the f32 kernel's own error is far smaller than this one's
    assert np.abs(got - y).max() > 10 * np.abs(f32 - y).max()


def test_nan_propagates(ex):
    fx.check_nan_rows_and_columns(ex, NAN, row=4, col=37)


def test_blocked_rows_equal_unblocked(tmp_path, monkeypatch):
    """A GEMM over more rows than one block holds (``cpu_amx.row_blocks``, lowered here to force four blocks, the
    last partial) prepares and multiplies each row as before: the same bits."""
    from runtime.executors.cpu import Executor
    from schedules import cpu_amx
    from sdcompile.codegen.build import build_kernels

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    spec = KernelSpec.make("conv2d", B=1, H=19, W=17, C=32, N=64, wtype="f16", bias=True, residual=False, **CONV3)
    spec = KernelSpec.make("conv2d", **dict(spec.attrs), mma="bf16")
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 19, 17, 32)).astype(np.float32)
    words, _ = _weights(spec, rng.standard_normal((N, K)) * 0.1)
    bias = rng.standard_normal(N).astype(np.float32)
    results = []
    for block_bytes, blocks in ((cpu_amx.X_BLOCK_BYTES, 1), (100 * 4 * K, 4)):  # f32 rows of K: 4 K bytes each
        monkeypatch.setattr(cpu_amx, "X_BLOCK_BYTES", block_bytes)
        assert cpu_amx.row_blocks(M, 4 * K, 6)[1] == blocks
        out = tmp_path / f"b{block_bytes}"
        out.mkdir()
        ex = Executor(out, build_kernels([spec], "cpu", out), num_threads=2)
        results.append(fx.launch(ex, spec.name, [x, words, bias], (M, N)))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0]).max() > 0
