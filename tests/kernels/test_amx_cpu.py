"""The CPU GEMM path on AMX (``schedules/cpu_amx.py``): ``linear`` with M >= FROM_ROWS for q4_0, q8_0, q4_k and q6_k, built by
``build_kernels`` and run by the CPU executor, against gguf's dequantization and float64 numpy.

Tolerances (the math: ``sdcompile/kernels/linear_amx.py``):

- against ``x @ W^T``: the 16-bit activations' error, ``linear_amx.error_bound`` (sum |w| * 0.51 * dx per output),
  plus f32 rounding;
- against ``linear_amx.reference`` (the same product on the 16-bit activations, in float64): f32 rounding only,
  ``(K / 16 + 16) u sum |x||w|``: the tile unit's int32 sums are exact; each group's sum is rounded to f32 once,
  scaled (two or three roundings) and added to one of K / 32 partial sums. A quant, a scale or an activation in
  the wrong place would be off by about |y|.

The shapes cover one to four tiles of 16 rows of x with partial last tiles (M = 9, 17, 33), an odd and an even
number of 32-value groups (the loop runs two groups per step, on two sets of tile registers), and several tiles of
16 weight rows per parallel task.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.kernels import linear_amx as A
from sdcompile.kernels import spec as S
from tests.kernels import fixtures as fx
from tests.kernels import integer_cases as ic

pytestmark = pytest.mark.skipif(not tvm_layer.host_amx(), reason="the AMX path needs a CPU with AMX-INT8 (and Linux)")

# N = 320 (an SD UNet width): 20 tiles of 16 weight rows, two per task, ten tasks (the chunking once ran 16 tasks
# of two, the last six past the weights, and corrupted the heap); N = 560: 35 tiles, the last task short.
BLOCK_SHAPES = [(9, 16, 32), (16, 32, 96), (17, 48, 64), (33, 16, 288), (64, 64, 512), (20, 560, 128), (40, 320, 64)]
SUPER_SHAPES = [(9, 16, 256), (17, 32, 512), (64, 48, 768), (33, 16, 1280), (24, 320, 256)]
SPECS = [S.linear(m, n, k, t) for t in ("q4_0", "q8_0") for m, n, k in BLOCK_SHAPES]
SPECS += [S.linear(m, n, k, t) for t in ("q4_k", "q6_k") for m, n, k in SUPER_SHAPES]
# the types without a GEMV kernel, which the tile unit takes from one row
SMALL_BLOCK = [(1, 16, 32), (3, 48, 96), (33, 32, 288)]
SMALL_SUPER = [(1, 16, 256), (5, 32, 512), (33, 48, 768)]
SPECS += [S.linear(m, n, k, t) for t in ("q5_0", "q4_1", "q5_1", "iq4_nl") for m, n, k in SMALL_BLOCK]
SPECS += [S.linear(m, n, k, t) for t in ("q2_k", "q3_k", "q5_k", "iq4_xs") for m, n, k in SMALL_SUPER]
SPECS += [
    S.linear(77, 32, 256, "q4_0", bias=True, residual=True, act="gelu"),
    S.linear(16, 32, 288, "q8_0", bias=True),
    S.linear(24, 64, 512, "q4_k", bias=True, act="quick_gelu"),
    S.linear(12, 48, 256, "q6_k", residual=True),
]
EXTREME = [S.linear(18, 16, 512, t) for t in A.TYPES if not t.startswith("iq")]
NONFINITE = S.linear(20, 32, 288, "q8_0")
# at each type's threshold (linear_amx.FROM_ROWS) and one row below it
AT_THRESHOLD = [S.linear(A.FROM_ROWS[t], 32, 256, t) for t in A.TYPES if A.FROM_ROWS[t] > 1]
NOT_AMX = [S.linear(16, 24, 256, "q4_0"), S.linear(16, 16, 256, "iq2_xs")]
NOT_AMX += [S.linear(A.FROM_ROWS[t] - 1, 32, 256, t) for t in A.TYPES if A.FROM_ROWS[t] > 1]


built = fx.built_fixture("cpu", lambda: SPECS + AT_THRESHOLD + EXTREME + [NONFINITE], "amx_cpu")
ex = fx.executor_fixture("cpu")


def test_dispatch(monkeypatch):
    """Enough rows, a supported type and N in whole tiles take the AMX rule; SDCOMPILE_NO_AMX turns it off."""
    from schedules import cpu_amx

    for spec in SPECS + AT_THRESHOLD + EXTREME + [NONFINITE]:
        assert cpu_amx.applicable(spec, 16), spec.name
    for spec in NOT_AMX:
        assert not cpu_amx.applicable(spec, 16), spec.name
    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    assert not any("amx" in a for a in tvm_layer.cpu_target().get("mattr", []))
    assert not cpu_amx.applicable(SPECS[0], 16)


def test_amx_code_uses_the_tile_unit():
    spec = S.linear(32, 64, 256, "q4_0")
    target = tvm_layer.cpu_target()
    mod = tvm_layer.compile_cpu(tvm_layer.scheduled_module([spec], "cpu", target), target).mod
    asm = mod.inspect_source("asm")
    for insn in ("ldtilecfg", "tileloadd", "tdpbssd", "tilestored", "tilerelease"):
        assert insn in asm, insn
    # the kernel asks Linux for the tile state itself and stops with a message (not SIGILL) when refused
    ll = mod.inspect_source("ll")
    assert "@syscall" in ll and "Linux refused this process the AMX tile state" in ll


@pytest.mark.parametrize("spec", SPECS + AT_THRESHOLD, ids=lambda s: s.name)
def test_amx_matches_numpy(ex, spec):
    ic.check_matches(ex, spec, ic.AMX, "16-bit-activation")


@pytest.mark.parametrize("spec", EXTREME, ids=lambda s: s.name)
def test_amx_extreme_values_do_not_overflow(ex, spec):
    ic.check_extreme(ex, spec, ic.AMX)


def test_amx_zero_and_non_finite_activations(ex):
    """As on the GEMV path, with the affected rows inside a tile of 16 that other rows share."""
    ic.check_zero_and_non_finite(ex, NONFINITE, ic.AMX)


def test_amx_model_is_tighter_than_ggml_activations():
    """The 16-bit activation model's error is ~256x below 8-bit activations' on the same data (what ggml does)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    w = rng.standard_normal((32, 512))
    exact = x.astype(np.float64) @ w.T
    err16 = np.abs(A.reference(x, w, "q4_0") - exact).max()
    g = x.reshape(16, -1, 32)
    d = np.abs(g).max(-1, keepdims=True) / 127
    x8 = (np.rint(g / d) * d).reshape(16, 512)
    err8 = np.abs(x8 @ w.T - exact).max()
    assert err16 * 50 < err8
    assert np.all(np.abs(A.reference(x, w, "q4_0") - exact) <= A.error_bound(x, w, "q4_0"))


# conv2d on the tile unit: the patches are gathered where prep quantizes them; the result must be exactly the
# AMX linear's on the explicit patch matrix (same rows, same 16-bit split, same sums): 3x3, stride 2 with the VAE's
# bottom/right padding, 1x1 with a residual, and a partial last tile of rows (M = 2 * 5 * 5 = 50).
CONV_CASES = [
    ((2, 8, 8, 32), 48, {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}, "q8_0"),
    ((1, 9, 9, 64), 32, {"kh": 3, "kw": 3, "stride": 2, "pads": (0, 0, 1, 1)}, "q8_0"),
    ((2, 5, 5, 32), 16, {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}, "q4_0"),
    ((2, 4, 4, 256), 32, {"kh": 1, "kw": 1, "stride": 1, "pads": (0, 0, 0, 0)}, "q4_k"),
]


def _conv_specs(shape, n, geo, wtype):
    from sdcompile.ir.ops import conv_out_hw

    B, H, W, C = shape
    conv = S.KernelSpec.make(
        "conv2d", B=B, H=H, W=W, C=C, N=n, wtype=wtype, bias=True, residual=False, act="none", **geo
    )
    ho, wo = conv_out_hw(H, W, geo)
    return conv, S.linear(B * ho * wo, n, geo["kh"] * geo["kw"] * C, wtype, bias=True)


conv_built = fx.built_fixture("cpu", lambda: [s for c in CONV_CASES for s in _conv_specs(*c)], "amx_conv_cpu")


@pytest.mark.parametrize(
    "case", CONV_CASES, ids=[f"{c[3]}-{c[2]['kh']}x{c[2]['kw']}s{c[2]['stride']}" for c in CONV_CASES]
)
def test_amx_conv_equals_amx_linear_on_patches(conv_built, case):
    from runtime.executors.cpu import Executor
    from sdcompile.ir.ops import im2col_np
    from sdcompile.quant.reference import quantize

    conv, lin = _conv_specs(*case)
    from schedules import cpu_amx

    assert cpu_amx.applicable(conv, 16) and cpu_amx.applicable(lin, 16)
    out, built = conv_built
    ex = Executor(out, built, num_threads=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(case[0]).astype(np.float32)
    M, N, K = S.gemm_mnk(conv)
    raw = quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.1, case[3])
    words = np.zeros(conv.param("w").words() * 4, np.uint8)
    words[: raw.size] = raw
    bias = rng.standard_normal(N).astype(np.float32)

    def run(spec, xin):
        return fx.launch(ex, spec.name, [xin, words.view(np.uint32), bias], (M, N))

    patches = im2col_np(x.astype(np.float64), dict(conv.attrs)).reshape(M, K).astype(np.float32)
    got, want = run(conv, x), run(lin, patches)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got).max() > 0
