"""Attention with bf16 products on the vector unit (``schedules/cpu_attention_dot.py``, ``vdpbf16ps``, ``compile
--compute bf16`` on a CPU without AMX-BF16: AMD Zen 4) against float64 numpy, with the bounds and cases of the tile
unit's kernel (``test_attention_amx_bf16.py``: both round q, k, v and the probabilities to bf16 and do everything else
in f32) that this kernel takes (64 queries or more): SD1.5's head sizes, cross-attention over 77 keys, several key
blocks, a causal mask, the VAE's head of 512 channels and 16-bit storage; plus odd channel counts (a pair half
padding) and an odd key count (a pair half masked).

On a CPU with AMX the kernels are built with ``SDCOMPILE_NO_AMX=1``, as for an artifact that must run without the
tile unit, so this path is tested wherever AVX512_BF16 exists. A kernel that ignored the request (f32 products)
would be far inside both bounds, so the error against the exact reference must also be well above f32's."""

from __future__ import annotations

import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx
from tests.kernels.guarded import run_guarded
from tests.kernels.test_attention_amx_bf16 import (
    CASES as AMX_CASES,
)
from tests.kernels.test_attention_amx_bf16 import _run, _spec, assert_within_bounds, case_arrays

pytestmark = pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")

NO_AMX = {"SDCOMPILE_NO_AMX": "1"}
CASES = [c for c in AMX_CASES if c[1] >= 64] + [
    (1, 70, 65, 2, 33, False, "float32"),  # 33 channels (a pair half zero), 65 keys (a pair half masked)
    (2, 96, 96, 1, 40, True, "float16"),  # causal, f16 storage
    # bf16 storage, packed as the words it already is: SD1.5's 40 channels (20 pairs: a second step of 4 words) over
    # 77 keys; 17 pairs (a second step of one word) over an odd key count; odd channels (no whole words: widened)
    (2, 70, 77, 2, 40, False, "bfloat16"),
    (1, 80, 65, 3, 34, False, "bfloat16"),
    (1, 64, 64, 2, 33, False, "bfloat16"),
]
SPECS = [_spec(*c) for c in CASES]
built = fx.built_fixture("cpu", lambda: SPECS, "attention_dot_bf16", NO_AMX)
ex = fx.executor_fixture("cpu")


@pytest.mark.parametrize("case", CASES, ids=[s.name for s in SPECS])
def test_bf16_attention_within_its_bounds(ex, case):
    arrays = case_arrays(case, 3)
    assert_within_bounds(_run(ex, _spec(*case), arrays), arrays, case)


def test_dispatch(monkeypatch):
    """The dispatch picks this kernel for bf16 requests without the tile unit, and not for f32 ones, fewer than 64
    queries or with the tile unit."""
    import schedules
    from schedules import cpu_attention_dot
    from schedules.cpu import CpuInfo, attention

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    for spec in SPECS:
        assert cpu_attention_dot.applicable(spec, 16, False)
        assert not cpu_attention_dot.applicable(spec, 16, True)
    plain = KernelSpec.make("attention", B=1, S=64, T=64, H=1, Dh=40, causal=False)
    short = KernelSpec.make("attention", B=1, S=8, T=8, H=1, Dh=40, causal=False, mma="bf16")
    assert not cpu_attention_dot.applicable(plain, 16, False)
    assert not cpu_attention_dot.applicable(short, 16, False)
    assert schedules.cpu_rule(SPECS[0], CpuInfo()) is attention


def test_reads_stay_inside_the_buffers():
    """Padded shapes with every buffer against an inaccessible page on either side (``tests/kernels/guarded.py``, a
    child process built without AMX): packed k and v rows of padded keys, partial channel vectors and clamped query
    rows must not read past q, k or v."""

    specs = [
        ("attention", {"B": 2, "S": 70, "T": 77, "H": 2, "Dh": 40, "causal": False, "mma": "bf16"}),
        ("attention", {"B": 1, "S": 96, "T": 80, "H": 2, "Dh": 20, "causal": True, "mma": "bf16", "dt": "hhhh"}),
    ]
    run_guarded(specs, NO_AMX)
