"""conv2d 3x3 over few tiles by Winograd's F(2x2, 3x3), split by output channels (``schedules/
cpu_winograd_by_weights.py``), against float64 numpy within ``cpu_winograd``'s bound (the same transforms and order of
sums; see ``tests/kernels/test_winograd_cpu.py``): f32, f16, bf16 and GGUF weights, one and two vectors of tiles,
partial tiles and a partial last vector, K in passes with a shorter last one, the fused epilogue."""

from __future__ import annotations

import pytest

from schedules import cpu_fma, cpu_winograd_by_weights
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx
from tests.kernels.test_winograd_cpu import CONV3, EPI, check_within_the_winograd_bound

pytestmark = pytest.mark.skipif(cpu_fma.target_isa() is None, reason="needs a CPU with AVX-512 or AVX2 and FMA")

CASES = [
    # SD1.5's 8x8 level with guidance (32 tiles, two vectors of them), 2 passes of 128 channels
    {"B": 2, "H": 8, "W": 8, "C": 256, "N": 256, "wtype": "f32", **EPI},
    # odd sizes: 4 x 5 partial tiles (20: the second vector mostly padding); 3 passes, the last shorter; f16
    # activations, a residual and SiLU
    {"B": 1, "H": 7, "W": 9, "C": 320, "N": 256, "wtype": "f16", "bias": True, "residual": True, "act": "silu",
     "dt": "hhh"},
    # 16 tiles (one vector, 16 rows per register block), bf16 weights and activations, no bias
    {"B": 1, "H": 8, "W": 8, "C": 384, "N": 320, "wtype": "bf16", "bias": False, "residual": False, "dt": "bb"},
    # 128 tiles (SD1.5's 16x16 level with guidance): four groups of two tile vectors, each with its own V^T and M
    {"B": 2, "H": 16, "W": 16, "C": 256, "N": 256, "wtype": "f16", **EPI},
    # 90 tiles in three groups, the last one part padding; odd sizes
    {"B": 2, "H": 17, "W": 9, "C": 256, "N": 256, "wtype": "f32", **EPI, "residual": True},
    # a GGUF type decoded into U
    {"B": 2, "H": 8, "W": 8, "C": 256, "N": 256, "wtype": "q4_k", **EPI, "residual": True},
]  # fmt: skip
SPECS = [KernelSpec.make("conv2d", **CONV3, **a) for a in CASES]

# without AMX, whose int8 tile kernel would take the quant type (``cpu_amx``), as on AMD Zen 4
built = fx.built_fixture("cpu", SPECS, "winograd_by_weights_cpu", {"SDCOMPILE_NO_AMX": "1"}, isas=True)
ex = fx.executor_fixture("cpu")


def test_dispatch(monkeypatch):
    import schedules
    from schedules.cpu import CpuInfo

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    for spec in SPECS:
        assert cpu_winograd_by_weights.applicable(spec, 16), spec.name
        assert schedules.cpu_rule(spec, CpuInfo()) is cpu_winograd_by_weights.linear, spec.name
        assert cpu_winograd_by_weights.applicable(spec, 8) and not cpu_winograd_by_weights.applicable(spec, 4)
    w = [cpu_winograd_by_weights._WinogradByWeights(s, {}) for s in SPECS]
    # one and several groups of tiles (AVX2: blocks of one vector)
    assert {x.NB for x in w} == set(cpu_winograd_by_weights.MR_BY_NB[cpu_fma.target_isa()]) and max(x.TG for x in w) > 1
    assert any(x.passes > 1 and x.C % x.KC for x in w)  # a short last pass
    base = {"B": 2, "H": 8, "W": 8, "C": 1280, "N": 1280, "wtype": "f16", **EPI}
    assert cpu_winograd_by_weights.applicable(KernelSpec.make("conv2d", **CONV3, **base), 16)
    for why, change in (
        ("too few tiles", {"H": 4, "W": 4}),
        ("more tiles: cpu_winograd's", {"H": 16, "W": 18}),
        ("too few channels in", {"C": 128}),
        ("N not in units", {"N": 1296}),
        ("stride 2", {"stride": 2}),
        ("1x1", {"kh": 1, "kw": 1, "pads": (0, 0, 0, 0)}),
        ("bf16 products", {"mma": "bf16"}),
        ("weights in a layout", {"wtype": "f32", "wlayout": "fma_f32"}),
    ):
        spec = KernelSpec.make("conv2d", **(CONV3 | base | change))
        assert not cpu_winograd_by_weights.applicable(spec, 16), why


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_within_the_winograd_bound(ex, spec):
    check_within_the_winograd_bound(ex, spec)
