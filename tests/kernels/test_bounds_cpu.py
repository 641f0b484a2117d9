"""CPU kernels read nothing outside their buffers: each runs with every buffer placed against an inaccessible page,
on either side (``tests/kernels/guarded.py``, in a child process, since a stray read is a fault). Padding and
concatenation evaluate loads they then discard; their addresses must still be inside (a concat once read 5 KB
before its second input, a conv's padding a row before the image)."""

from __future__ import annotations

import pytest

from sdcompile.codegen import tvm_layer
from tests.kernels.guarded import run_guarded

CONV = {"kh": 3, "kw": 3, "stride": 1, "pads": [1, 1, 1, 1], "bias": True, "residual": False, "act": "none"}
VAE_DOWN = dict(CONV, stride=2, pads=[0, 0, 1, 1])
LINEAR = {"bias": True, "residual": False, "act": "none"}
SPECS = [
    ("concat", {"outer": 32, "widths": [1280, 1280]}),
    ("concat", {"outer": 8, "widths": [64, 32, 16]}),
    ("conv2d", dict(CONV, B=2, H=8, W=8, C=32, N=32, wtype="f16")),
    ("conv2d", dict(VAE_DOWN, B=1, H=9, W=9, C=32, N=32, wtype="f32")),
    ("conv2d", dict(CONV, B=1, H=64, W=64, C=16, N=128, wtype="f16")),  # rows outer
    ("conv2d", dict(CONV, B=2, H=15, W=17, C=64, N=64, wtype="f16")),  # Winograd (AVX-512): partial tiles at the edges
    ("upsample_nearest", {"B": 1, "H": 4, "W": 4, "C": 32, "f": 2}),
    ("slices", {"outer": 2, "full": 16, "inner": 96, "starts": [0, 5], "widths": [5, 11]}),
]
AMX = [
    ("conv2d", dict(CONV, B=2, H=8, W=8, C=32, N=32, wtype="q8_0")),
    ("conv2d", dict(VAE_DOWN, B=1, H=9, W=9, C=32, N=32, wtype="q8_0")),
]
AMX_BF16 = [
    ("conv2d", dict(CONV, B=2, H=8, W=8, C=32, N=32, wtype="f16", mma="bf16")),
    ("conv2d", dict(VAE_DOWN, B=1, H=9, W=9, C=32, N=32, wtype="f32", mma="bf16")),
]

# the vdpbf16ps GEMM (no tile unit): the tile kernel's cases, weights converted per call, then read in place from
# the tile unit's layout; and Winograd with vdpbf16ps products
BF16_DOT = AMX_BF16 + [
    ("conv2d", dict(CONV, B=2, H=4, W=4, C=32, N=64, wtype="bf16", mma="bf16", wlayout="amx_bf16")),
    ("linear", dict(LINEAR, M=20, N=48, K=96, wtype="bf16", mma="bf16", wlayout="amx_bf16")),
    ("conv2d", dict(CONV, B=2, H=15, W=17, C=64, N=64, wtype="f16", mma="bf16")),  # Winograd on vdpbf16ps
]


# the int8 VNNI GEMM: q8_0 decoded per call and read in place (``vnni_q8_0``, its scales after the quants), a conv
# whose patches cross the image's edges
VNNI = [
    ("conv2d", dict(CONV, B=2, H=4, W=4, C=32, N=64, wtype="q8_0", mma="int8")),
    ("conv2d", dict(CONV, B=2, H=4, W=4, C=32, N=64, wtype="q8_0", mma="int8", wlayout="vnni_q8_0")),
    ("linear", dict(LINEAR, M=20, N=64, K=96, wtype="q8_0", mma="int8", wlayout="vnni_q8_0")),
]


def test_kernels_stay_inside_their_buffers():
    run_guarded(SPECS)


@pytest.mark.skipif(not tvm_layer.host_amx(), reason="needs AMX")
def test_amx_kernels_stay_inside_their_buffers():
    run_guarded(AMX + (AMX_BF16 if tvm_layer.host_amx_bf16() else []))


@pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs AVX512_BF16")
def test_bf16_dot_kernels_stay_inside_their_buffers():
    run_guarded(BF16_DOT, {"SDCOMPILE_NO_AMX": "1"})


@pytest.mark.skipif(not tvm_layer.host_avx512_vnni(), reason="needs AVX-512 VNNI")
def test_vnni_kernels_stay_inside_their_buffers():
    run_guarded(VNNI, {"SDCOMPILE_NO_AMX": "1"})
