"""Weights stored in a kernel's layout (``kernels/layouts.py``) read by the kernel that takes the spec where the AMX
kernel does not (here: built with ``SDCOMPILE_NO_AMX``): bf16 tiles by the vdpbf16ps GEMM where the CPU has
AVX512_BF16 (``schedules/cpu_bf16_dot.py``, which rounds x to bf16 as well), else, and q8_0 tiles always, by the
generic schedule (TE compute reading W[n, k] at its packed position, f32 products). Against float64 numpy on the same
weights (and x rounded to bf16 where the vdpbf16ps GEMM runs it), within the f32 summation bound, and wrong if the
layout were read row-major."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sdcompile.ir.ops import im2col_np
from sdcompile.kernels import layouts
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

U32 = 2.0**-24
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
SPECS = [
    KernelSpec.make(
        "linear",
        M=20,
        N=32,
        K=64,
        wtype="q8_0",
        bias=False,
        residual=False,
        act="none",
        mma="bf16",
        wlayout="amx_q8_0",
    ),
    KernelSpec.make(
        "linear", M=20, N=48, K=96, wtype="bf16", bias=True, residual=False, act="none", mma="bf16", wlayout="amx_bf16"
    ),
    KernelSpec.make(
        "conv2d",
        B=1,
        H=5,
        W=6,
        C=32,
        N=32,
        wtype="bf16",
        bias=False,
        residual=False,
        mma="bf16",
        wlayout="amx_bf16",
        **CONV3,
    ),
]

built = fx.built_fixture("cpu", SPECS, "packed_weights_cpu", env={"SDCOMPILE_NO_AMX": "1"})
ex = fx.executor_fixture("cpu")


def test_layout_round_trip():
    w = np.arange(32 * 64, dtype=np.uint16).reshape(32, 64)
    flat = layouts.pack(layouts.AMX_BF16, w.view(np.uint8), 32, 64).view(np.uint16)
    np.testing.assert_array_equal(layouts.unpack(layouts.AMX_BF16, flat, 32, 64).view(np.uint16).reshape(32, 64), w)
    assert all(flat[layouts.position(layouts.AMX_BF16, n, k, 64)] == w[n, k] for n in range(32) for k in range(64))
    assert flat[1] == w[0, 1] and flat[2] == w[1, 0]  # pairs of values of a row, then the next row's pair
    assert layouts.fits(layouts.AMX_BF16, 32, 64) and not layouts.fits(layouts.AMX_BF16, 24, 64)
    with pytest.raises(ValueError, match="unknown weight layout"):
        layouts.pack("nchw16", w, 32, 64)


def test_fma_f32_layout_round_trip():
    """The f32 FMA GEMM's panels: a unit's 64 rows at each k, then the next k; ``row_major`` undoes it on data as a
    weights-file reader returns it (any dtype and shape)."""
    N, K = 128, 48
    w = np.arange(N * K, dtype=np.uint32).reshape(N, K)
    flat = layouts.pack(layouts.FMA_F32, w.view(np.uint8), N, K).view(np.uint32)
    np.testing.assert_array_equal(layouts.unpack(layouts.FMA_F32, flat, N, K).view(np.uint32).reshape(N, K), w)
    assert all(flat[layouts.position(layouts.FMA_F32, n, k, K)] == w[n, k] for n in range(N) for k in range(K))
    assert flat[1] == w[1, 0] and flat[64] == w[0, 1] and flat[64 * K] == w[64, 0]
    assert layouts.fits(layouts.FMA_F32, 128, 48)
    assert not layouts.fits(layouts.FMA_F32, 96, 48) and not layouts.fits(layouts.FMA_F32, 128, 40)
    stored = flat.view(np.float32).reshape(N, K)  # a reader sees the tensor's shape over the packed bytes
    np.testing.assert_array_equal(layouts.row_major(layouts.FMA_F32, stored, N, K).view(np.uint32), w)


@pytest.mark.parametrize("layout", [layouts.AMX_Q8_0, layouts.VNNI_Q8_0])
def test_q8_0_layout_round_trip(layout):
    """q8_0 in the tile unit's order and in the VNNI GEMM's: the same bytes reordered (VNNI's quants + 128), every
    quant and scale where the layout's offsets say."""
    from sdcompile.quant.reference import quantize

    N, K = 48, 96
    raw = quantize(np.random.default_rng(1).standard_normal((N, K)).astype(np.float32), "q8_0").view(np.uint8)
    packed = layouts.pack(layout, raw, N, K)
    assert packed.size == raw.size and not np.array_equal(packed, raw)
    np.testing.assert_array_equal(layouts.unpack(layout, packed, N, K), raw)
    if layout == layouts.AMX_Q8_0:
        quant, scale, bias = layouts.q8_0_quant_byte, layouts.q8_0_scale_byte, 0
    else:
        quant, scale, bias = (
            layouts.vnni_q8_0_quant_byte,
            (lambda n, s, K: layouts.vnni_q8_0_scale_byte(n, s, N, K)),
            0x80,
        )
        # step t of a tile: 16 rows' 4 quants each, the vector vpdpbusd multiplies; the scales after every quant
        assert quant(1, 0, K) == 4 and quant(0, 4, K) == 64 and quant(0, 32, K) == 512 and quant(16, 0, K) == 3 * 512
        assert scale(0, 0, K) == N * K
    blocks = raw.reshape(N, K // 32, 34)
    for n in range(N):
        for k in range(K):
            assert packed[quant(n, k, K)] == blocks[n, k // 32, 2 + k % 32] ^ bias
        for s in range(K // 32):
            at = scale(n, s, K)
            assert bytes(packed[at : at + 2]) == bytes(blocks[n, s, :2])


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_kernel_reads_the_layout(ex, spec):
    from schedules import cpu_amx_bf16, cpu_bf16_dot
    from sdcompile.codegen import tvm_layer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDCOMPILE_NO_AMX", "1")
        assert not cpu_amx_bf16.applicable(spec, 16, False)
        dot = cpu_bf16_dot.applicable(spec, 16, True)
    # the vdpbf16ps GEMM takes the bf16 tiles wherever the CPU has it, never the q8_0 ones
    assert dot == (tvm_layer.host_avx512_bf16() and spec.attr("wlayout") == layouts.AMX_BF16)
    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(3)
    words, w = fx.weight_words(spec, rng.standard_normal((N, K)).astype(np.float32))
    packed = fx.packed_words(spec, words)
    x = rng.standard_normal(spec.param("x").shape).astype(np.float32)
    arrays = {"x": x, "w": packed}
    xr = x.astype(ml_dtypes.bfloat16) if dot else x  # the products' operands: x rounded to bf16 (nearest even)
    xm = xr.astype(np.float64)
    xm = xm if spec.op == "linear" else im2col_np(xm, dict(spec.attrs))
    xm = xm.reshape(M, K)
    y = xm @ w.T
    if spec.attr("bias"):
        arrays["bias"] = rng.standard_normal(N).astype(np.float32)
        y = y + arrays["bias"]
    got = fx.run_spec(ex, spec, arrays).reshape(M, N).astype(np.float64)
    tol = (np.abs(xm) @ np.abs(w).T) * (K + 4) * U32 + 4 * U32 * np.abs(y)
    assert np.all(np.abs(got - y) <= tol), float(np.max(np.abs(got - y) / tol))
    # the stored bytes read row-major would be another matrix
    if spec.attr("wlayout") == layouts.AMX_BF16:
        bits = packed.view(np.uint16)[: N * K].reshape(N, K)
        misread = (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        assert np.abs(xm @ misread.T - y).max() > 100 * tol.max()
