"""conv2d 3x3 over 16-128 tiles by Winograd's F(2x2, 3x3) with bf16 products, split by output channels
(``schedules/cpu_winograd_dot_by_weights.py``, ``compile --compute bf16`` without AMX-BF16: AMD Zen 4), within
``cpu_winograd_dot``'s two bounds (the same operands, roundings and order of sums; ``test_winograd_dot_cpu.py``):
float and GGUF weights, one and two vectors of tiles, several groups of them, partial tiles, K in passes with a
shorter last one, the fused epilogue. Built with ``SDCOMPILE_NO_AMX=1`` on a CPU with AMX."""

from __future__ import annotations

import pytest

from schedules import cpu_winograd_dot, cpu_winograd_dot_by_weights
from sdcompile.codegen import tvm_layer
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx
from tests.kernels.test_winograd_cpu import CONV3, EPI
from tests.kernels.test_winograd_dot_cpu import NO_AMX, check_within_bounds

pytestmark = pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")

CASES = [
    # SD1.5's 8x8 level with guidance: 32 tiles (two vectors), 2 passes of 64 pair words
    {"B": 2, "H": 8, "W": 8, "C": 256, "N": 256, "wtype": "f16", **EPI},
    # odd sizes: 20 partial tiles; C = 352: 3 passes, the last shorter; f16 activations, a residual and SiLU
    {"B": 1, "H": 7, "W": 9, "C": 352, "N": 256, "wtype": "f32", "bias": True, "residual": True, "act": "silu",
     "dt": "hhh"},
    # 16 tiles (one vector), bf16 weights and activations, no bias
    {"B": 1, "H": 8, "W": 8, "C": 384, "N": 320, "wtype": "bf16", "bias": False, "residual": False, "dt": "bb"},
    # 90 tiles in three groups of two vectors, the last part padding; a GGUF type decoded into U
    {"B": 2, "H": 17, "W": 9, "C": 256, "N": 256, "wtype": "q8_0", **EPI, "residual": True},
]  # fmt: skip
SPECS = [KernelSpec.make("conv2d", **CONV3, **a, mma="bf16") for a in CASES]

built = fx.built_fixture("cpu", SPECS, "winograd_dot_by_weights_cpu", NO_AMX)
ex = fx.executor_fixture("cpu")


def test_dispatch(monkeypatch):
    import schedules
    from schedules.cpu import CpuInfo

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    for spec in SPECS:
        assert cpu_winograd_dot_by_weights.applicable(spec, 16, True), spec.name
        assert not cpu_winograd_dot_by_weights.applicable(spec, 16, False)  # the tile unit takes it
        assert schedules.cpu_rule(spec, CpuInfo()) is cpu_winograd_dot_by_weights.linear, spec.name
    w = [cpu_winograd_dot_by_weights._WinogradDotByWeights(s, {}) for s in SPECS]
    assert {x.NB for x in w} == {1, 2} and max(x.TG for x in w) > 1
    assert any(x.passes > 1 and x.KR % x.KC for x in w)  # a short last pass
    base = {"B": 2, "H": 8, "W": 8, "C": 1280, "N": 1280, "wtype": "f16", **EPI, "mma": "bf16"}
    assert cpu_winograd_dot_by_weights.applicable(KernelSpec.make("conv2d", **CONV3, **base), 16, True)
    more = KernelSpec.make("conv2d", **(CONV3 | base | {"H": 16, "W": 18}))  # 144 tiles: cpu_winograd_dot's
    assert not cpu_winograd_dot_by_weights.applicable(more, 16, True) and cpu_winograd_dot.applicable(more, 16, True)
    for why, change in (
        ("f32 products", {"mma": None}),
        ("channels not a multiple of 32", {"C": 272}),
        ("too few tiles", {"H": 4, "W": 4}),
        ("stride 2", {"stride": 2}),
    ):
        a = {k: v for k, v in (CONV3 | base | change).items() if v is not None}
        assert not cpu_winograd_dot_by_weights.applicable(KernelSpec.make("conv2d", **a), 16, True), why


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_within_its_bounds(ex, spec):
    check_within_bounds(ex, spec)
