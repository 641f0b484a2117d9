"""f32 GEMM on AVX-512 FMAs (``schedules/cpu_fma.py``): linear and conv2d with f32, f16 and bf16 weights and the
GGUF types it decodes (``schedules/quant_vec.py``) and f32 products, against float64 numpy, through both loop nests
(by weights: fewer than ``BY_ROWS_FROM`` rows; by rows).

Bound (u = 2^-24, f32's unit roundoff; the weights' values are taken as stored, so decoding f16 / bf16 is exact, and a
quant type's as the ``gguf`` package dequantizes it, which the decoder matches bit for bit):
|y - y64| <= (K + 4) u sum_k |x_k w_k| plus the epilogue's rounding (and, for 16-bit activation storage, half an
ulp of the output type). A lost or doubled product, a wrong panel layout or a wrong conv tap fails it by orders of
magnitude; the bf16-rounded products of ``--compute bf16`` would fail it too."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_fma, quant_vec
from sdcompile.codegen import tvm_layer
from sdcompile.ir.ops import gelu_np, im2col_np, quick_gelu_np, silu_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(cpu_fma.target_isa() is None, reason="needs a CPU with AVX-512 or AVX2 and FMA")

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
ACTS = {"none": lambda v: v, "gelu": gelu_np, "quick_gelu": quick_gelu_np, "silu": silu_np}
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
EPI = {"bias": True, "residual": False, "act": "none"}
CASES = [
    # by weights; N % 64 == 0 (6 x 4 register blocks), M = 154 (the SD text encoder's 2 x 77 tokens) leaves a
    # partial row panel
    ("linear", {"M": 154, "N": 128, "K": 96, "wtype": "f32", "bias": True, "residual": True, "act": "quick_gelu"}),
    ("linear", {"M": 32, "N": 64, "K": 40, "wtype": "f16", **EPI}),  # the fewest rows it takes; K % 16 != 0
    ("linear", {"M": 77, "N": 48, "K": 1000, "wtype": "bf16", **EPI | {"act": "gelu"}}),  # 8 x 3; several K passes
    ("linear", {"M": 45, "N": 32, "K": 18, "wtype": "f32", "bias": False, "residual": True, "act": "silu"}),  # 14 x 2
    ("linear", {"M": 50, "N": 16, "K": 64, "wtype": "f16", **EPI, "dt": "hh"}),  # 28 x 1; f16 activations
    (
        "linear",
        {"M": 40, "N": 80, "K": 256, "wtype": "f32", "bias": True, "residual": True, "act": "none"} | {"dt": "bbb"},
    ),  # bf16 activations (x, res and y)
    # K passes by weights (the unit over UNIT_L2_BYTES), the last one shorter
    ("linear", {"M": 40, "N": 64, "K": 4200, "wtype": "f16", **EPI}),
    ("linear", {"M": 130, "N": 32, "K": 16640, "wtype": "f16", **EPI}),  # the same for AVX2's units of 16 rows
    # by rows (M >= BY_ROWS_FROM)
    ("linear", {"M": 1030, "N": 192, "K": 200, "wtype": "f16", "bias": True, "residual": True, "act": "gelu"}),
    ("linear", {"M": 1100, "N": 48, "K": 37, "wtype": "bf16", **EPI, "dt": "hh"}),
    ("conv2d", {"B": 1, "H": 32, "W": 33, "C": 32, "N": 64, "wtype": "f16", **CONV3, "bias": True, "residual": True}),
    # by weights
    ("conv2d", {"B": 2, "H": 8, "W": 8, "C": 32, "N": 64, "wtype": "f32", **CONV3, "bias": True, "residual": False}),
    (
        "conv2d",
        {"B": 1, "H": 15, "W": 15, "C": 48, "N": 32, "wtype": "bf16", "bias": True, "residual": False}
        | {"kh": 3, "kw": 3, "stride": 2, "pads": (0, 0, 1, 1)},
    ),
    (
        "conv2d",
        {"B": 2, "H": 6, "W": 7, "C": 16, "N": 80, "wtype": "f16", "bias": False, "residual": True, "dt": "hhh"}
        | {"kh": 1, "kw": 1, "stride": 1, "pads": (0, 0, 0, 0)},
    ),
    (
        "conv2d",
        {"B": 1, "H": 40, "W": 30, "C": 16, "N": 32, "wtype": "f32", "bias": True, "residual": False, "dt": "bb"}
        | {"kh": 3, "kw": 3, "stride": 1, "pads": (2, 0, 1, 1)},  # by rows, asymmetric pads
    ),
    # swapped (y^T = W x^T: few rows, long K): M past a multiple of 16, K in passes with a short last one, the
    # scalar epilogue with residual and activation, and a quant type's rows converted pass by pass
    ("conv2d", {"B": 2, "H": 4, "W": 4, "C": 256, "N": 64, "wtype": "f16", **CONV3, "bias": True, "residual": True}),
    ("conv2d", {"B": 1, "H": 6, "W": 6, "C": 256, "N": 48, "wtype": "f32", **CONV3, "bias": False, "residual": False}),
    ("linear", {"M": 40, "N": 96, "K": 2064, "wtype": "bf16", "bias": True, "residual": True, "act": "gelu"}),
    ("linear", {"M": 128, "N": 32, "K": 2048, "wtype": "q4_k", **EPI, "dt": "hh"}),
    # GGUF types decoded into the panel (``quant_vec``): each type by weights, and by rows; K over several blocks
    ("linear", {"M": 154, "N": 64, "K": 768, "wtype": "q8_0", **EPI, "residual": True}),
    ("linear", {"M": 40, "N": 32, "K": 96, "wtype": "q4_0", **EPI}),
    ("linear", {"M": 33, "N": 48, "K": 64, "wtype": "q4_1", **EPI}),
    ("linear", {"M": 40, "N": 16, "K": 128, "wtype": "q5_0", **EPI}),
    ("linear", {"M": 40, "N": 64, "K": 96, "wtype": "q5_1", **EPI | {"act": "gelu"}}),
    ("linear", {"M": 77, "N": 64, "K": 768, "wtype": "q4_k", **EPI}),
    ("linear", {"M": 40, "N": 32, "K": 512, "wtype": "q5_k", **EPI}),
    ("linear", {"M": 40, "N": 48, "K": 768, "wtype": "q6_k", **EPI}),
    ("linear", {"M": 40, "N": 64, "K": 4608, "wtype": "q4_k", **EPI}),  # K passes by weights
    ("linear", {"M": 1030, "N": 64, "K": 256, "wtype": "q6_k", **EPI, "dt": "hh"}),  # by rows
    ("linear", {"M": 1024, "N": 32, "K": 512, "wtype": "q4_0", **EPI}),
    ("conv2d", {"B": 1, "H": 9, "W": 7, "C": 32, "N": 32, "wtype": "q8_0", **CONV3, "bias": True, "residual": True}),
    ("conv2d", {"B": 1, "H": 6, "W": 6, "C": 256, "N": 32, "wtype": "q4_k", **CONV3, "bias": True, "residual": False}),
]
SPECS = [KernelSpec.make(op, **a) for op, a in CASES]
# f32 weights stored as the kernel's panels (``layouts.FMA_F32``), read in place: each loop nest that reads them
PANEL_CASES = [
    ("linear", {"M": 154, "N": 128, "K": 96, "bias": True, "residual": True, "act": "quick_gelu"}),  # by weights
    ("linear", {"M": 154, "N": 64, "K": 4224, **EPI}),  # by weights, K in passes (the unit over UNIT_L2_BYTES)
    ("linear", {"M": 1030, "N": 192, "K": 208, "bias": True, "residual": True, "act": "gelu"}),  # by rows
    ("conv2d", {"B": 2, "H": 8, "W": 8, "C": 32, "N": 64, **CONV3, "bias": True, "residual": False}),
    ("conv2d", {"B": 1, "H": 40, "W": 30, "C": 16, "N": 64, **CONV3, "bias": False, "residual": True}),  # by rows
]
PANELS = [KernelSpec.make(op, **a, wtype="f32", wlayout="fma_f32") for op, a in PANEL_CASES]
NAN = KernelSpec.make("linear", M=40, N=64, K=48, wtype="f16", bias=True, residual=False, act="none")
NAN_SWAPPED = KernelSpec.make("linear", M=40, N=64, K=2048, wtype="f16", bias=True, residual=False, act="none")
# x = I: y = W^T, each output one product by 1, so the decoded weights themselves (every decoder of quant_vec)
DECODE = [
    KernelSpec.make("linear", M=256, N=16, K=256, wtype=t, bias=False, residual=False, act="none")
    for t in quant_vec.TYPES
]

# without AMX, which would take the quant types (``cpu_amx``), as on AMD Zen 4
NO_AMX = {"SDCOMPILE_NO_AMX": "1"}
built = fx.built_fixture("cpu", lambda: SPECS + [NAN, NAN_SWAPPED] + DECODE + PANELS, "fma_cpu", NO_AMX, isas=True)
ex = fx.executor_fixture("cpu")


def test_dispatch():
    from schedules import cpu_bf16_dot

    for spec in SPECS + [NAN]:
        assert cpu_fma.applicable(spec, 16) and cpu_fma.applicable(spec, 8), spec.name  # AVX-512, AVX2
        assert not cpu_fma.applicable(spec, 4)  # SSE: the tiled schedule
    nests = {(g.by_rows, g.passes > 1, g.KR % g.KC > 0) for g in (cpu_fma._FmaGemm(s, {}) for s in SPECS)}
    assert sum(g.swap for g in (cpu_fma._FmaGemm(s, {}) for s in SPECS)) >= 4
    # both loop nests, K in one pass and in several, a short last pass
    assert {(r, p) for r, p, _ in nests} >= {(False, False), (False, True), (True, True)}
    assert any(short for _, _, short in nests)
    base = {"M": 64, "N": 64, "K": 64, "wtype": "f16", **EPI}
    for why, change in (
        ("few rows", {"M": cpu_fma.FROM_ROWS - 1}),
        ("a quant type without a vector decoder", {"wtype": "q2_k", "K": 256}),
        ("N % 16", {"N": 24}),
        ("bf16 products", {"mma": "bf16"}),
    ):
        spec = KernelSpec.make("linear", **(base | change))
        assert not cpu_fma.applicable(spec, 16), why
    conv = KernelSpec.make("conv2d", B=1, H=8, W=8, C=4, N=32, wtype="f16", bias=False, residual=False, **CONV3)
    assert not cpu_fma.applicable(conv, 16)  # channels not in whole vectors (a UNet's conv_in)
    assert cpu_bf16_dot.TYPES == cpu_fma.FLOAT_TYPES


def test_code_uses_zmm_fma():
    """The products are 512-bit FMAs with accumulators in registers: the register block's MR x NB
    ``vfmadd231ps`` on zmm registers, none of them with a memory destination (an accumulator spilled)."""
    fx.skip_unless_host_runs("avx512")
    spec = SPECS[0]
    target = tvm_layer.cpu_target()
    asm = tvm_layer.compile_cpu(tvm_layer.scheduled_module([spec], "cpu", target), target).mod.inspect_source("asm")
    fmas = [ln.split("#")[0].strip() for ln in asm.splitlines() if "vfmadd231ps" in ln]
    zmm = [f for f in fmas if f.count("%zmm") == 3]
    assert len(zmm) >= cpu_fma.UNROLL * 24, len(zmm)
    assert "vbroadcastss" in asm


def test_code_uses_ymm_fma_on_avx2():
    """Built for an AVX2 CPU (LLVM's Haswell, whatever this host is), each 16-lane vector is two ymm and the
    register block is 6 rows by one vector (``MR_BY_NB["avx2"]``): 12 accumulators, all in registers, so every
    ``vfmadd231ps`` of the block names three ymm registers (a spilled accumulator would make it read memory), and
    no zmm register appears."""
    spec = SPECS[0]
    target = tvm_layer.cpu_target("haswell")
    asm = tvm_layer.compile_cpu(tvm_layer.scheduled_module([spec], "cpu", target), target).mod.inspect_source("asm")
    fmas = [ln.split("#")[0].strip() for ln in asm.splitlines() if "vfmadd231ps" in ln]
    assert sum(f.count("%ymm") == 3 for f in fmas) >= cpu_fma.UNROLL * 12, len(fmas)
    assert "%zmm" not in asm and "vbroadcastss" in asm
    assert cpu_fma.register_block(128, "avx2") == (1, 6, 16, 8)


@pytest.mark.parametrize("wtype", ["f16", "q8_0"])
def test_swapped_prefetches_the_next_pass(wtype):
    """Swapped with K in passes, each W row's slice for the next pass is prefetched into L2 while this pass's
    products run: float weights a line per iteration of the register block's loop (``prefetch_line``), GGUF types
    row by row as the slice is prepared (``prefetch_slice``); ``prefetcht1`` in the code either way."""
    spec = KernelSpec.make("linear", **(dict(NAN_SWAPPED.attrs) | {"wtype": wtype}))
    g = cpu_fma._FmaGemm(spec, {})
    assert g.swap and g.passes > 1 and g.spread == (wtype == "f16")
    target = tvm_layer.cpu_target()
    asm = tvm_layer.compile_cpu(tvm_layer.scheduled_module([spec], "cpu", target), target).mod.inspect_source("asm")
    assert "prefetcht1" in asm


def test_output_strip_prefetched_for_writing():
    """Not swapped, each register block's strip of y is prefetched for writing (``prefetchw``) as its last pass
    starts: its rows lie a full row apart, which the hardware prefetchers do not follow (SD1.5's 2,048-row linears
    over K 320: 3-5% faster); swapped blocks (columns of y) and Winograd's tiles do not."""
    spec = KernelSpec.make("linear", M=256, N=64, K=320, wtype="f16", bias=True, residual=True, act="none")
    assert cpu_fma._FmaGemm(spec, {}).prefetch_y and not cpu_fma._FmaGemm(NAN_SWAPPED, {}).prefetch_y
    target = tvm_layer.cpu_target()
    asm = tvm_layer.compile_cpu(tvm_layer.scheduled_module([spec], "cpu", target), target).mod.inspect_source("asm")
    assert "prefetchw" in asm


def _run(ex, spec, arrays):
    return fx.run_spec(ex, spec, arrays).astype(np.float64)


_inputs = fx.gemm_inputs


def _gemm_x(spec, x: np.ndarray) -> np.ndarray:
    M, _, K = gemm_mnk(spec)
    x = x.astype(np.float64)
    return (x if spec.op == "linear" else im2col_np(x, dict(spec.attrs))).reshape(M, K)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_f32_products_within_their_bound(ex, spec):
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(11)
    arrays, w = _inputs(spec, rng)
    xm = _gemm_x(spec, arrays["x"])
    pre = xm @ w.T + (arrays["bias"] if spec.attr("bias") else 0)
    y = ACTS[str(spec.attr("act", "none"))](pre) + (arrays["res"] if spec.attr("residual") else 0)
    mag = np.abs(xm) @ np.abs(w).T
    got = _run(ex, spec, arrays).reshape(M, N)
    # the epilogue is monotone with slope <= 1.13 (gelu), so the sums' error bounds the outputs' after it
    out_round = HALF_ULP[spec.param("y").dtype] * np.abs(y)
    bound = 1.2 * (K + 4) * U32 * mag + 8 * U32 * (1 + np.abs(y)) + 1.01 * out_round
    err = np.abs(got - y)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.abs(y).max() > 1  # not trivially small


def test_panel_layout_dispatch():
    """The kernel takes f32 weights stored as its panels in every loop nest but the swapped one (there W's rows are
    read as x's), and no other layout; a weight of a unit narrower than 64 rows or another type is not read so."""
    from sdcompile.kernels import layouts

    if cpu_fma.target_isa() != "avx512":  # AVX2's units are 16 rows: it never reads them (pack_weights asks)
        assert not any(cpu_fma.reads_panels(spec) for spec in PANELS)
        return
    nests = set()
    for spec in PANELS:
        assert cpu_fma.applicable(spec, 16) and cpu_fma.reads_panels(spec), spec.name
        g = cpu_fma._FmaGemm(spec, {})
        assert g.in_place and not g.swap
        nests.add((g.by_rows, g.passes > 1))
    assert nests >= {(False, False), (False, True)} and any(by_rows for by_rows, _ in nests)
    plain = {"M": 154, "N": 128, "K": 96, "wtype": "f32", **EPI}
    for why, change in (
        ("swapped", {"M": 40, "K": 2048}),
        ("units of 48 rows", {"N": 96}),
        ("f16 weights", {"wtype": "f16"}),
        ("K not in whole vectors", {"K": 100}),
        ("the bf16 GEMMs' layout", {"wlayout": layouts.AMX_BF16}),
    ):
        spec = KernelSpec.make("linear", **(plain | {"wlayout": layouts.FMA_F32} | change))
        assert not cpu_fma.applicable(spec, 16), why


@pytest.mark.parametrize("spec", PANELS, ids=[s.name for s in PANELS])
def test_panel_layout_read_in_place(ex, spec):
    """Against float64 numpy on the same weights, within the f32 bound above; the same words row-major give a
    result wrong by the size of the outputs (so the kernel reads the layout, not the row-major order)."""
    from sdcompile.kernels import layouts

    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(13)
    arrays, w = _inputs(spec, rng)
    row_major = arrays["w"]
    arrays["w"] = layouts.pack(layouts.FMA_F32, row_major.view(np.uint8), N, K).view(np.uint32)
    xm = _gemm_x(spec, arrays["x"])
    pre = xm @ w.T + (arrays["bias"] if spec.attr("bias") else 0)
    y = ACTS[str(spec.attr("act", "none"))](pre) + (arrays["res"] if spec.attr("residual") else 0)
    bound = 1.2 * (K + 4) * U32 * (np.abs(xm) @ np.abs(w).T) + 8 * U32 * (1 + np.abs(y))
    got = _run(ex, spec, arrays).reshape(M, N)
    assert np.all(np.abs(got - y) <= bound), float(np.max(np.abs(got - y) / bound))
    wrong = _run(ex, spec, arrays | {"w": row_major}).reshape(M, N)
    assert np.abs(wrong - y).max() > 0.1 * np.abs(y).max()


@pytest.mark.parametrize("spec", [NAN, NAN_SWAPPED], ids=["packed_w", "swapped"])
def test_nan_propagates(ex, spec):
    assert cpu_fma._FmaGemm(spec, {}).swap == (spec is NAN_SWAPPED)
    fx.check_nan_rows_and_columns(ex, spec, row=7, col=37)


@pytest.mark.parametrize("spec", DECODE, ids=[str(s.attr("wtype")) for s in DECODE])
def test_quant_decode_bit_exact_with_gguf(ex, spec):
    """The panel holds exactly the values the ``gguf`` package dequantizes (bit-exact with ggml): random blocks
    (every nibble, fifth bit, sub-scale and sign), raw bytes except the f16 scales, kept finite."""
    import gguf

    N, K = 16, 256
    qtype = getattr(gguf.GGMLQuantizationType, str(spec.attr("wtype")).upper())
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(21)
    raw = rng.integers(0, 256, (N * K // block, size), dtype=np.uint8)
    for scale in {"q8_0": [0], "q4_0": [0], "q5_0": [0], "q4_1": [0, 2], "q5_1": [0, 2], "q6_k": [208]}.get(
        str(spec.attr("wtype")),
        [0, 2],  # q4_k, q5_k: d and dmin
    ):
        raw[:, scale : scale + 2] = np.frombuffer(
            rng.uniform(-1, 1, len(raw)).astype(np.float16).tobytes(), np.uint8
        ).reshape(-1, 2)
    want = gguf.quants.dequantize(raw.reshape(N, -1), qtype).astype(np.float32)
    words = np.zeros(spec.param("w").words() * 4, np.uint8)
    words[: raw.size] = raw.reshape(-1)
    got = fx.run_spec(ex, spec, {"x": np.eye(K, dtype=np.float32), "w": words.view(np.uint32)}).reshape(K, N)
    np.testing.assert_array_equal(got.T, want)
    assert np.abs(want).max() > 0


def _build_run(tmp_path, spec, arrays, name: str) -> np.ndarray:
    from runtime.executors.cpu import Executor
    from sdcompile.codegen.build import build_kernels

    out = tmp_path / name
    out.mkdir()
    ex = Executor(out, build_kernels([spec], "cpu", out), num_threads=2)
    return _run(ex, spec, arrays)


def test_blocked_rows_equal_unblocked(tmp_path, monkeypatch):
    """By weights over more rows than one block holds (``cpu_amx.row_blocks``, lowered to force four blocks, the
    last partial): each row is prepared and summed as before, so the same bits."""
    from schedules import cpu_amx
    from sdcompile.codegen import build

    spec = KernelSpec.make("conv2d", B=1, H=19, W=17, C=32, N=64, wtype="f16", bias=True, residual=False, **CONV3)
    M, _, K = gemm_mnk(spec)
    arrays, _ = _inputs(spec, np.random.default_rng(7))
    results = []
    for block_bytes, blocks in ((cpu_amx.X_BLOCK_BYTES, 1), (100 * 4 * 16 * -(-K // 16), 4)):
        monkeypatch.setattr(cpu_amx, "X_BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(build, "_BUILT", {})  # the build cache keys on the specs, not on this setting
        assert cpu_fma._FmaGemm(spec, {}).NBLK == blocks
        results.append(_build_run(tmp_path, spec, arrays, f"b{blocks}"))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0]).max() > 0


def test_panel_blocks_equal_one(tmp_path, monkeypatch):
    """By rows with the packed weights in several blocks (``PANEL_BYTES`` lowered to one unit per block, the
    last block partial): the same bits as one block."""
    from sdcompile.codegen import build

    spec = KernelSpec.make("linear", M=1024, N=320, K=64, wtype="bf16", bias=True, residual=False, act="silu")
    arrays, _ = _inputs(spec, np.random.default_rng(9))
    results = []
    for panel_bytes, blocks in ((cpu_fma.PANEL_BYTES, 1), (2 * 4 * 64 * 64, 3)):  # 5 units: 2 + 2 + 1
        monkeypatch.setattr(cpu_fma, "PANEL_BYTES", panel_bytes)
        monkeypatch.setattr(build, "_BUILT", {})
        assert cpu_fma._FmaGemm(spec, {}).PB == blocks
        results.append(_build_run(tmp_path, spec, arrays, f"p{blocks}"))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0]).max() > 0


def test_pass_outer_equals_unit_outer(tmp_path, monkeypatch):
    """By rows, a group too large for L2 runs pass by pass over every unit (``GROUP_L2_BYTES``, lowered here to
    force it, with the packed weights in two blocks): each output's sum runs over K in the same order, so the same
    bits as unit by unit."""
    from sdcompile.codegen import build

    spec = KernelSpec.make("linear", M=1024, N=320, K=400, wtype="f16", bias=True, residual=True, act="gelu")
    arrays, _ = _inputs(spec, np.random.default_rng(5))
    NR = cpu_fma.register_block(320)[2]  # AVX-512 units of 64 rows, AVX2 of 16: the same plan scaled by NR / 64
    units = 320 // NR
    monkeypatch.setattr(cpu_fma, "PANEL_BYTES", -(-units // 2) * 4 * NR * 400)  # AVX-512 3 units per block: 3 + 2
    monkeypatch.setattr(cpu_fma, "L1_BYTES", cpu_fma.L1_BYTES * NR // 64)  # 144 values of K per pass: 3 passes
    results = []
    for group_bytes, outer in ((cpu_fma.GROUP_L2_BYTES, False), (0, True)):
        monkeypatch.setattr(cpu_fma, "GROUP_L2_BYTES", group_bytes)
        monkeypatch.setattr(build, "_BUILT", {})
        g = cpu_fma._FmaGemm(spec, {})
        assert (g.pass_outer, g.passes > 1, g.PB) == (outer, True, 2)
        results.append(_build_run(tmp_path, spec, arrays, f"o{outer}"))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0]).max() > 0


def test_unit_groups_equal_single_units(tmp_path, monkeypatch):
    """By weights with K in passes, a task running a group of units (``UG``; here 2 of 5 units per group, the
    last group partial, and two ranges of row panels) sums each output over K in the same order as one unit per
    task: the same bits."""
    from sdcompile.codegen import build

    spec = KernelSpec.make("conv2d", B=1, H=12, W=16, C=64, N=320, wtype="f16", bias=True, residual=True, **CONV3)
    arrays, _ = _inputs(spec, np.random.default_rng(4))
    NR = cpu_fma.register_block(320)[2]  # AVX-512 units of 64 rows (5), AVX2 of 16 (20): the plan scaled to them
    monkeypatch.setattr(cpu_fma, "L1_BYTES", 64 * 4 * NR)  # 64 values of K per pass: 9 passes
    monkeypatch.setattr(cpu_fma, "UNIT_L2_BYTES", 0)  # no unit in one pass
    monkeypatch.setattr(cpu_fma, "TASKS", 16 * 320 // NR // 5)  # two ranges of row panels (AVX-512: as built in)
    results = []
    for slice_bytes, tasks, groups in ((1 << 40, 4, 320 // NR), (0, 6, 3)):
        monkeypatch.setattr(cpu_fma, "X_SLICE_BYTES", slice_bytes)
        monkeypatch.setattr(cpu_fma, "UNIT_TASKS", tasks)
        monkeypatch.setattr(build, "_BUILT", {})
        g = cpu_fma._FmaGemm(spec, {})
        assert (g.NG, g.MS, g.passes) == (groups, 2, 9), (g.NG, g.MS, g.passes)
        results.append(_build_run(tmp_path, spec, arrays, f"g{groups}"))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0]).max() > 0
