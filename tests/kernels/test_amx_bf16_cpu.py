"""bf16 products on the AMX tile unit (``schedules/cpu_amx_bf16.py``, ``compile --compute bf16``): linear and conv2d
with f32, f16 and bf16 weights against float64 numpy on the same weights.

Bound: both operands are rounded to bf16 (relative error <= 2^-9 each), products are exact in f32 and summed in
f32, so |y - y_exact| <= sum_k |x_k w_k| (2 * 2^-9 + 2^-18) + (K + 4) u32 sum_k |x_k w_k|, plus the epilogue's
rounding. A kernel that ignored the request (f32 products) would be far inside the bound, so the test also checks
that its error is well above the f32 kernel's."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.ir.ops import im2col_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(not tvm_layer.host_amx_bf16(), reason="needs a CPU with AMX-BF16 (and Linux)")

# unit roundoff of round-to-nearest with p significant bits: 2^-p (f32: 24 bits, bf16: 8)
U32, UB = 2.0**-24, 2.0**-8
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
CASES = [
    ("linear", {"M": 77, "N": 48, "K": 64, "wtype": "f32", "bias": True, "residual": True, "act": "gelu"}),
    ("linear", {"M": 50, "N": 320, "K": 2880, "wtype": "f16", "bias": True, "residual": False, "act": "none"}),
    ("linear", {"M": 33, "N": 16, "K": 96, "wtype": "bf16", "bias": False, "residual": False, "act": "silu"}),
    ("conv2d", {"B": 2, "H": 8, "W": 8, "C": 32, "N": 48, "wtype": "f16", "bias": True, "residual": False, **CONV3}),
    (
        "conv2d",
        {
            "B": 1,
            "H": 9,
            "W": 9,
            "C": 64,
            "N": 32,
            "wtype": "f32",
            "bias": True,
            "residual": True,
            "kh": 3,
            "kw": 3,
            "stride": 2,
            "pads": (0, 0, 1, 1),
        },
    ),
    # from cpu_amx_bf16.BY_ROWS_FROM rows on, the loop nest goes by rows: a short last group, one weight tile per
    # unit (N = 48); a conv's patches per tap (C in 32-value steps) and per 16 values (C = 16, 2 x 2); the weight panel in
    # two blocks (N x K x 2 bytes past PANEL_BYTES)
    ("linear", {"M": 1100, "N": 48, "K": 64, "wtype": "f16", "bias": True, "residual": True, "act": "gelu"}),
    ("conv2d", {"B": 1, "H": 40, "W": 40, "C": 32, "N": 32, "wtype": "f16", "bias": True, "residual": False, **CONV3}),
    (
        "conv2d",
        {"B": 2, "H": 24, "W": 24, "C": 16, "N": 16, "wtype": "f32", "bias": False, "residual": True}
        | {"kh": 2, "kw": 2, "stride": 1, "pads": (0, 0, 0, 0)},
    ),
    ("linear", {"M": 1030, "N": 1088, "K": 4096, "wtype": "bf16", "bias": False, "residual": False, "act": "none"}),
    # q8_0 / q4_0 blocks decoded into bf16 operands, by weights and by rows
    ("linear", {"M": 77, "N": 48, "K": 96, "wtype": "q8_0", "bias": True, "residual": False, "act": "none"}),
    ("linear", {"M": 1100, "N": 32, "K": 128, "wtype": "q4_0", "bias": False, "residual": True, "act": "none"}),
    ("conv2d", {"B": 1, "H": 36, "W": 36, "C": 32, "N": 16, "wtype": "q8_0", "bias": True, "residual": False, **CONV3}),
    ("conv2d", {"B": 2, "H": 6, "W": 6, "C": 64, "N": 32, "wtype": "q4_0", "bias": True, "residual": False, **CONV3}),
    # one pair of x tiles (M <= 32): q8_0 in tile order decoded chunk by chunk (4 chunks of 10 steps; 2 of 9, one
    # weight tile per unit)
    ("linear", {"M": 20, "N": 64, "K": 1280, "wtype": "q8_0", "bias": True, "residual": True, "act": "none"}),
    ("conv2d", {"B": 2, "H": 4, "W": 4, "C": 64, "N": 48, "wtype": "q8_0", "bias": True, "residual": False, **CONV3}),
    # two pairs of x tiles, K long enough (288 KB of decoded tiles a unit) for chunks: 9 of 16 steps (x's A operands
    # under X_SLICE_BYTES: with more rows they go in slices instead, see the last case)
    ("linear", {"M": 60, "N": 32, "K": 4608, "wtype": "q8_0", "bias": False, "residual": True, "act": "none"}),
    # by rows with K in slices (cpu_amx_bf16.SLICE_ROWS): a conv whose 2 slices of 50 steps (the last 49) cut a tap of
    # 11 steps apart, with a short last group; q8_0 in 2 slices of 64 steps
    ("conv2d", {"B": 1, "H": 33, "W": 33, "C": 352, "N": 32, "wtype": "f16", "bias": True, "residual": True, **CONV3}),
    ("linear", {"M": 1040, "N": 64, "K": 4096, "wtype": "q8_0", "bias": True, "residual": False, "act": "none"}),
    # by weights, stored as tiles (PACKED below), x's A operands past X_SLICE_BYTES: K in 2 slices of 65 steps (the
    # last 64), 34 units in chunks of 3 (the last of 1)
    ("linear", {"M": 160, "N": 1088, "K": 4128, "wtype": "f16", "bias": True, "residual": True, "act": "none"}),
]
PAIRS = [(KernelSpec.make(op, **a, mma="bf16"), KernelSpec.make(op, **a)) for op, a in CASES]

built = fx.built_fixture("cpu", lambda: [s for p in PAIRS for s in p], "amx_bf16_cpu")
ex = fx.executor_fixture("cpu")


def test_dispatch():
    from schedules import cpu_amx_bf16

    rows = [cpu_amx_bf16._Bf16Gemm(bf, {}) for bf, _ in PAIRS]
    assert [g.by_rows for g in rows] == [False] * 5 + [True] * 4 + [False, True, True, False] + [False] * 3 + [
        True
    ] * 2 + [False]
    assert rows[5].NB == 1
    # K 4096 in 2 slices of 64 steps over groups of 256 rows; 32 units per panel block (their sums between slices),
    # so the panel in two blocks
    assert (rows[8].slices, rows[8].KCS, rows[8].RG, rows[8].UPB, rows[8].PB) == (2, 64, 256, 32, 2)
    assert (rows[16].slices, rows[16].KCS, rows[16].KS % rows[16].KCS) == (2, 50, 49)
    assert rows[17].slices == 2 and all(g.slices == 1 for g in rows[:8] + rows[18:])  # by weights: only stored as tiles
    tiles = cpu_amx_bf16._Bf16Gemm(KernelSpec.make("linear", **CASES[18][1], mma="bf16", wlayout="amx_bf16"), {})
    assert (tiles.slices, tiles.KCS, tiles.KS % tiles.KCS, tiles.TPC, tiles.NU % tiles.TPC) == (2, 65, 64, 3, 1)
    # the q8_0 tile layout's chunked decode by weights: (chunks, pairs of x tiles); the plain row-major layout never
    # chunks, short K with several pairs neither
    tiled = [cpu_amx_bf16._Bf16Gemm(p[1], {}) for p in PACKED if p[1].attr("wlayout") == "amx_q8_0"]
    assert sorted((g.KS // g.KC, g.MT2 // 2) for g in tiled if g.q8_chunks) == [(2, 1), (2, 1), (4, 1), (9, 2)]
    # past X_SLICE_BYTES of x with several pairs: K in slices, each unit's tiles decoded per slice
    assert [(g.slices, g.KCS, g.MT2 // 2) for g in tiled if g.slices > 1 and not g.by_rows] == [(2, 65, 5)]
    assert not any(g.q8_chunks for g in rows)
    # by rows, a 16-bit y: two units side by side per pair of x tiles where the unit count allows (Y16_UNITS)
    y16 = {"M": 1100, "K": 64, "wtype": "f16", "bias": True, "residual": False, "act": "none", "mma": "bf16"}
    ub = [
        cpu_amx_bf16._Bf16Gemm(KernelSpec.make("linear", **y16, N=n, **dt), {}).UB
        for n, dt in [(128, {"dt": "bb"}), (128, {}), (96, {"dt": "bb"})]
    ]
    assert ub == [cpu_amx_bf16.Y16_UNITS, 1, 1]

    for bf, f32 in PAIRS:
        assert cpu_amx_bf16.applicable(bf, 16, True) and not cpu_amx_bf16.applicable(f32, 16, True)
    odd = KernelSpec.make("linear", M=8, N=16, K=48, wtype="f16", bias=False, residual=False, act="none", mma="bf16")
    assert not cpu_amx_bf16.applicable(odd, 16, True)  # K not in whole 32-value steps: f32 products
    q = KernelSpec.make("linear", M=8, N=16, K=64, wtype="q4_k", bias=False, residual=False, act="none", mma="bf16")
    assert not cpu_amx_bf16.applicable(q, 16, True)  # k-quants keep their integer kernels


def _run(ex, spec, arrays):
    return fx.run_spec(ex, spec, arrays).astype(np.float64)


@pytest.mark.parametrize("pair", PAIRS, ids=[p[0].name for p in PAIRS])
def test_bf16_products_within_their_bound(ex, pair):
    spec, f32_spec = pair
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(5)
    words, w = fx.weight_words(spec, rng.standard_normal((N, K)).astype(np.float32) * 0.1)
    x = rng.standard_normal(spec.param("x").shape).astype(np.float32)
    arrays = {"x": x, "w": words}
    xm = x.astype(np.float64) if spec.op == "linear" else im2col_np(x.astype(np.float64), dict(spec.attrs))
    xm = xm.reshape(M, K)
    pre = xm @ w.T
    mag = np.abs(xm) @ np.abs(w).T
    if spec.attr("bias"):
        arrays["bias"] = rng.standard_normal(N).astype(np.float32)
        pre = pre + arrays["bias"]
    act = str(spec.attr("act", "none"))
    if act == "gelu":
        from sdcompile.ir.ops import gelu_np

        y = gelu_np(pre)
    elif act == "silu":
        y = pre / (1 + np.exp(-pre))
    else:
        y = pre
    if spec.attr("residual"):
        arrays["res"] = rng.standard_normal((M, N)).astype(np.float32)
        y = y + arrays["res"]
    got, f32 = _run(ex, spec, arrays), _run(ex, f32_spec, arrays)
    tol = mag * (2 * UB + UB * UB + (K + 4) * U32) * 1.2 + 8 * U32 * (1 + np.abs(y))
    assert np.all(np.abs(got - y) <= tol), float(np.max(np.abs(got - y) / tol))
    # the products really were bf16: the f32 kernel's own error is far smaller than this one's
    assert np.abs(got - y).max() > 10 * np.abs(f32 - y).max()


# Weights stored in the kernel's own layouts (``passes/pack_weights.py``, ``kernels/layouts.py``): bf16 as the B
# tiles themselves (the float cases: both loop nests, one and two weight tiles per unit, the by-rows panel in two
# blocks, with their weights rounded to bf16) and q8_0 in tile order (the q8_0 cases, and the float ones' shapes
# quantized) give the same bits as the same weights stored row-major.
def _packed_pairs():
    pairs = []
    for op, a in CASES:
        for wtype, layout in (("bf16", "amx_bf16"), ("q8_0", "amx_q8_0")):
            if a["wtype"] in ("f32", "f16", "bf16", wtype):
                plain = KernelSpec.make(op, **(a | {"wtype": wtype}), mma="bf16")
                pairs.append((plain, KernelSpec.make(op, **(a | {"wtype": wtype}), mma="bf16", wlayout=layout)))
    return pairs


PACKED = _packed_pairs()
built_packed = fx.built_fixture("cpu", lambda: [s for p in PACKED for s in p], "amx_bf16_packed")


@pytest.mark.parametrize("pair", PACKED, ids=[p[1].name for p in PACKED])
def test_packed_weights_same_bits(built_packed, pair):
    from runtime.executors.cpu import Executor

    out, result = built_packed
    pex = Executor(out, result, num_threads=2)
    plain, packed = pair
    M, N, K = gemm_mnk(plain)
    rng = np.random.default_rng(7)
    words, _ = fx.weight_words(plain, rng.standard_normal((N, K)).astype(np.float32) * 0.1)
    arrays = {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in plain.params if p.name not in ("w", "y")}
    arrays["w"] = words
    want = fx.run_spec(pex, plain, arrays)
    arrays["w"] = fx.packed_words(packed, words)
    got = fx.run_spec(pex, packed, arrays)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).max() > 0
