"""int8 GEMM on AVX-512 VNNI (``schedules/cpu_vnni.py``): linear and conv2d with q8_0 and q4_0 weights and
activations quantized per 32 values as ggml's q8_0 (``mma="int8"``).

Two references, both float64 numpy, neither the kernel's code:

- **the quantized product** (``emulated``): x quantized exactly as the kernel's contract says (d = max|x| / 127 and
  round(x / d) to nearest even, in f32 as IEEE defines it: numpy's float32 does the same operations), times the
  weights the ``gguf`` reference dequantizes. The block sums are exact integers; what is left is the f32 sum of K / 32
  scaled block sums and the scale's two roundings: |err| <= (K / 32 + 3) u sum_blocks |d_x d_w s| (recursive
  summation, Higham), plus the epilogue's few roundings of |y|;
- **exact arithmetic** on the f32 inputs (``exact``): the quantization of x moves each value by at most d_x / 2,
  so |err| <= sum_k |w_k| d_x(k) / 2 plus the above. The test also checks that the error is mostly there: a kernel
  that forgot to quantize x (f32 products) would pass the first bound only by luck and is caught by the second
  check, that the error against exact arithmetic is well above f32's."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_vnni
from sdcompile.ir.ops import im2col_np
from sdcompile.kernels import layouts
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(not cpu_vnni.target_has_vnni(), reason="needs a CPU with AVX-512 VNNI")

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
PACKED = layouts.VNNI_Q8_0
EPI = {"bias": True, "residual": False, "act": "none", "mma": "int8"}
CASES = [
    # 4 weight vectors x 3 rows; M = 154 (two prompts) leaves a partial register block; residual and q4_0
    ("linear", {"M": 154, "N": 128, "K": 96, "wtype": "q8_0", **EPI, "residual": True}),
    ("linear", {"M": 50, "N": 64, "K": 64, "wtype": "q4_0", **EPI, "bias": False}),
    ("linear", {"M": 31, "N": 32, "K": 160, "wtype": "q8_0", **EPI}),  # 2 x 6
    ("linear", {"M": 17, "N": 16, "K": 32, "wtype": "q4_0", **EPI}),  # 1 x 12, one block, rows just past FROM_ROWS
    ("linear", {"M": 20, "N": 256, "K": 64, "wtype": "q8_0", **EPI}),  # one group: units split across tasks
    ("linear", {"M": 300, "N": 64, "K": 4096, "wtype": "q8_0", **EPI}),  # three groups of rows (512 KB each)
    ("linear", {"M": 40, "N": 48, "K": 128, "wtype": "q4_0", **EPI, "dt": "hh"}),  # f16 activations
    ("linear", {"M": 40, "N": 32, "K": 64, "wtype": "q8_0", **EPI, "residual": True, "dt": "bbb"}),  # bf16
    ("conv2d", {"B": 1, "H": 13, "W": 11, "C": 32, "N": 64, "wtype": "q8_0", **CONV3, **EPI, "residual": True}),
    (
        "conv2d",
        {"B": 2, "H": 6, "W": 7, "C": 48, "N": 32, "wtype": "q4_0", **EPI}
        | {"kh": 2, "kw": 2, "stride": 1, "pads": (0, 0, 1, 1)},  # C % 32 == 16: blocks across taps, per 16 values
    ),
    (
        "conv2d",
        {"B": 1, "H": 15, "W": 15, "C": 64, "N": 16, "wtype": "q8_0", **EPI}
        | {"kh": 3, "kw": 3, "stride": 2, "pads": (0, 0, 1, 1)},  # stride 2, asymmetric pads
    ),
    # q8_0 stored in the kernel's order (``layouts.VNNI_Q8_0``), read in place: a partial register block, a conv,
    # three groups of rows and K in two passes
    ("linear", {"M": 154, "N": 128, "K": 96, "wtype": "q8_0", **EPI, "residual": True, "wlayout": PACKED}),
    ("conv2d", {"B": 1, "H": 13, "W": 11, "C": 32, "N": 64, "wtype": "q8_0", **CONV3, **EPI, "wlayout": PACKED}),
    ("linear", {"M": 300, "N": 64, "K": 4096, "wtype": "q8_0", **EPI, "wlayout": PACKED}),
]
SPECS = [KernelSpec.make(op, **a) for op, a in CASES]
NAN = KernelSpec.make("linear", M=40, N=64, K=64, wtype="q8_0", bias=True, residual=False, act="none", mma="int8")
NAN_PACKED = KernelSpec.make("linear", **dict(NAN.attrs), wlayout=PACKED)

built = fx.built_fixture("cpu", lambda: SPECS + [NAN, NAN_PACKED], "vnni_cpu")
ex = fx.executor_fixture("cpu")


def test_dispatch():
    for spec in SPECS + [NAN]:
        assert cpu_vnni.applicable(spec, 16), spec.name
        assert not cpu_vnni.applicable(spec, 8)
    for why, spec in declined():
        assert not cpu_vnni.applicable(spec, 16), why
    conv = KernelSpec.make(
        "conv2d", B=1, H=8, W=8, C=8, N=32, wtype="q8_0", bias=False, residual=False, mma="int8", **CONV3
    )
    assert not cpu_vnni.applicable(conv, 16)  # channels not in whole vectors
    # the cases cover every register block shape, tasks split by units, and several groups of rows
    gemms = [cpu_vnni._VnniGemm(s, {}) for s in SPECS]
    assert {g.NB for g in gemms} == {1, 2, 4} and any(g.UC > 1 for g in gemms) and any(g.GR > 1 for g in gemms)
    assert any(g.packed and g.GR > 1 and g.passes > 1 for g in gemms)
    # the tile unit's q8_0 order is not this kernel's
    amx = KernelSpec.make("linear", M=64, N=64, K=64, wtype="q8_0", **EPI, wlayout=layouts.AMX_Q8_0)
    assert not cpu_vnni.applicable(amx, 16)


def declined() -> list:
    """(why, spec): int8 GEMMs neither integer kernel (this one, ``cpu_madd``) takes."""
    base = {"M": 64, "N": 64, "K": 64, "wtype": "q8_0", **EPI}
    changes = (
        ("not asked for", {"mma": None}),
        ("bf16 asked for", {"mma": "bf16"}),
        ("another quant type", {"wtype": "q4_k", "K": 256}),
        ("float weights", {"wtype": "f16"}),
        ("few rows", {"M": cpu_vnni.FROM_ROWS - 1}),
        ("N % 16", {"N": 24}),
    )
    specs = [KernelSpec.make("linear", **{k: v for k, v in (base | c).items() if v is not None}) for _, c in changes]
    return [(why, spec) for (why, _), spec in zip(changes, specs)]


def test_groups_of_rows_balanced():
    """Every group runs all its register blocks, so the groups are cut equal: SD1.5's shapes with more rows than a
    group holds are padded by less than a block per group (2,048 rows over K 320 had run as 2 x 1,638 rows)."""
    for M, K in ((2048, 320), (2048, 1280), (512, 2560), (128, 5120), (300, 4096), (8192, 320)):
        for N in (320, 1280, 64):
            g = cpu_vnni._VnniGemm(KernelSpec.make("linear", M=M, N=N, K=K, wtype="q8_0", **EPI), {})
            assert g.RG % g.MR == 0 and g.RG * g.K <= max(cpu_vnni.X_GROUP_BYTES, g.MR * g.K), (M, N, K)
            assert g.GR * g.RG >= M and g.GR * g.RG - M < g.GR * g.MR, (M, N, K, g.GR, g.RG)


def _inputs(spec, rng):
    arrays, w = fx.gemm_inputs(spec, rng)
    arrays["w"] = fx.packed_words(spec, arrays["w"])
    return arrays, w


def quantize_q8_0(xm: np.ndarray):
    """Rows of f32 x quantized per 32 values as the kernel's contract (and ggml's AVX code) says, in f32: (int8
    values, f32 scales [M, K / 32])."""
    M, K = xm.shape
    xb = xm.astype(np.float32).reshape(M, K // 32, 32)
    d = np.abs(xb).max(-1) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv[..., None])
    assert np.abs(q).max() <= 127
    return q, d.astype(np.float32)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_int8_products_within_their_bounds(ex, spec):
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(12)
    arrays, w = _inputs(spec, rng)
    x = arrays["x"].astype(np.float64)
    xm = (x if spec.op == "linear" else im2col_np(x, dict(spec.attrs))).reshape(M, K)
    q, d = quantize_q8_0(xm)
    xq = (q * d[..., None].astype(np.float64)).reshape(M, K)
    tail = (arrays["bias"] if spec.attr("bias") else 0) + (arrays["res"] if spec.attr("residual") else 0)
    emulated, exact = xq @ w.T + tail, xm @ w.T + tail
    got = fx.run_spec(ex, spec, arrays).astype(np.float64).reshape(M, N)
    out_round = 1.01 * HALF_ULP[spec.param("y").dtype] * np.abs(emulated)
    # per block: |d_x d_w s| = |sum of the block's dequantized products| <= the block's sum of |xq w|
    mag = np.abs(xq) @ np.abs(w).T
    bound = (K // 32 + 3) * U32 * mag + 4 * U32 * (1 + np.abs(emulated)) + out_round
    err = np.abs(got - emulated)
    assert np.all(err <= bound), float(np.max(err / bound))
    # against exact arithmetic: the activations' quantization, at most half a step per value
    half_step = np.repeat(d / 2, 32, axis=1).astype(np.float64)
    qbound = half_step @ np.abs(w).T + bound
    err = np.abs(got - exact)
    assert np.all(err <= qbound), float(np.max(err / qbound))
    assert err.max() > 1e-4 * np.abs(exact).max()  # the products really were int8 (f32's error is ~1e-7)


@pytest.mark.parametrize("spec", [NAN, NAN_PACKED], ids=["row_major", "packed"])
def test_nan_propagates(ex, spec):
    """A NaN or an infinity in a row of x spoils that row (its block has no finite scale), a weight block whose
    scale is NaN that column; nothing else: no NaN lost in the quantization, none smeared across a register block."""
    from sdcompile.quant.types import get as get_type

    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[7, 17], x[30, 40] = np.nan, np.inf
    words, _ = fx.weight_words(NAN, rng.standard_normal((N, K)) * 0.1)
    raw = words.view(np.uint8).copy()
    at = 37 * get_type("q8_0").row_bytes(K) + get_type("q8_0").type_size  # column 37, its second block's f16 scale
    raw[at : at + 2] = np.array([0x7E00], "<u2").view(np.uint8)
    w = fx.packed_words(spec, raw.view(np.uint32))
    got = fx.run_spec(ex, spec, {"x": x, "w": w, "bias": np.zeros(N, np.float32)}).reshape(M, N)
    bad = np.zeros((M, N), bool)
    bad[[7, 30], :] = True
    bad[:, 37] = True
    np.testing.assert_array_equal(np.isnan(got), bad)


def test_code_uses_vpdpbusd():
    """The products are 512-bit ``vpdpbusd`` with the sums in registers: the register block's 12 per step, none
    with a memory destination."""
    from sdcompile.codegen import tvm_layer

    target = tvm_layer.cpu_target()
    asm = tvm_layer.compile_cpu(tvm_layer.scheduled_module([SPECS[0]], "cpu", target), target).mod.inspect_source("asm")
    dots = [ln.split("#")[0].strip() for ln in asm.splitlines() if "vpdpbusd" in ln]
    assert len([d for d in dots if d.count("%zmm") >= 2]) >= 8 * 12, len(dots)
