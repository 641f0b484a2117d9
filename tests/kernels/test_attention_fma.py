"""Attention with f32 products on AVX-512 FMAs (``schedules/cpu_attention_fma.py``: flash attention for long
sequences) against float64 numpy: SD1.5's head sizes (40, 80, 160), cross-attention over 77 keys, queries and keys
of odd lengths (padding of both), several key blocks (the online softmax's rescaling), a causal mask, a VAE-wide head,
16-bit activation storage, and f32 k and v both read in place and packed (keys spanning more than L2).

Bound, with u = 2^-24 (f32's unit roundoff) and w_j the exact softmax weights of a query's keys, |v|_w =
sum_j w_j |v_j|: a score s_j = c q.k_j summed in f32 over Dh channels moves by at most d_j = c sum_d |q_d k_jd|
gamma_Dh (gamma_n = n u / (1 - n u), recursive summation); exp turns that into a relative change e^d - 1 of p_j,
the normalising sum by at most e^dmax - 1, so the weights move by e^(2 dmax) - 1 relative. The p.v sums over T keys
add gamma_T relative to |v|_w, exp2's polynomial 1.7e-7 and the running rescales and final division a few u:
|o - o_ref| <= |v|_w ((1 + gamma_T + 1e-6) e^(2 dmax) - 1) + 1e-7, plus half an ulp of a 16-bit output. A kernel with
bf16 products would be off by about 2^-8 |v|_w, far outside it."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_attention_fma
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx
from tests.kernels.guarded import run_guarded
from tests.kernels.test_attention_amx_bf16 import (
    HALF_ULP,
    _run,
    case_arrays,
    exact_reference,
    run_spread,
    score_error_max,
)

pytestmark = pytest.mark.skipif(
    cpu_attention_fma.target_isa() is None, reason="needs a CPU with AVX-512 or AVX2 and FMA"
)

U = 2.0**-24
CODE = {"float16": "h", "bfloat16": "b"}
# (B, S, T, H, Dh, causal, storage); S >= MIN_QUERIES so that the dispatch picks this kernel
CASES = [
    (2, 256, 256, 2, 40, False, "float32"),  # SD1.5's 40 channels (8 groups of 5), four key blocks
    (1, 300, 77, 2, 80, False, "float32"),  # cross-attention: 77 keys (a block and a masked tail); 300 queries
    (1, 260, 50, 1, 160, False, "float32"),  # 160 channels; fewer keys than a block: the tail block alone
    (1, 600, 600, 1, 24, True, "float32"),  # causal over ten blocks: later blocks wholly masked for early rows
    (1, 257, 33, 1, 17, False, "float32"),  # 17 channels (a vector and one, groups of 5 and a tail of 2)
    (1, 256, 4, 1, 64, False, "float32"),  # four keys: one padded softmax step
    (1, 256, 256, 1, 512, False, "float32"),  # the VAE's single head of 512 channels
    (2, 256, 77, 2, 40, False, "float16"),
    (1, 270, 270, 2, 80, True, "bfloat16"),
    (2, 77, 77, 2, 64, True, "float32"),  # the text encoder's 77 causal tokens: one task of 5 query tiles
    (1, 80, 80, 1, 17, True, "float16"),  # 5 whole query tiles; p.v in 4-channel tiles and a tail of 1
    (1, 64, 77, 1, 160, False, "float16"),  # the fewest queries it takes: one tile
    (1, 64, 4100, 2, 80, False, "float32"),  # keys spanning more than L2: f32 k and v packed, a 4-key tail
]


def _spec(B, S, T, H, Dh, causal, dtype):
    dt = {} if dtype == "float32" else {"dt": CODE[dtype] * 4}
    return KernelSpec.make("attention", B=B, S=S, T=T, H=H, Dh=Dh, causal=causal, **dt)


SPECS = [_spec(*c) for c in CASES]
built = fx.built_fixture("cpu", lambda: SPECS, "attention_fma", isas=True)
ex = fx.executor_fixture("cpu")


def _gamma(n: int) -> float:
    return n * U / (1 - n * U)


@pytest.mark.parametrize("case", CASES, ids=[s.name for s in SPECS])
def test_f32_attention_within_its_bound(ex, case):
    T, Dh, dtype = case[2], case[4], case[6]
    spec = _spec(*case)
    arrays = case_arrays(case, 5)
    got = _run(ex, spec, arrays)
    assert np.all(np.isfinite(got))
    exact, vw, (_, qh, kh, _) = exact_reference(arrays, case)
    dmax = score_error_max(qh, kh, case, _gamma(Dh))
    store = HALF_ULP[dtype] * np.abs(exact) * 1.01
    tol = vw * ((1 + _gamma(T) + 1e-6) * np.exp(2 * dmax) - 1) + 1e-7 + store
    err = np.abs(got - exact)
    assert np.all(err <= tol), float(np.max(err / tol))


def test_dispatch(built):
    """From 64 queries on this kernel, fewer the row kernel; the build says which."""
    for spec in SPECS:
        assert cpu_attention_fma.applicable(spec, 16), spec.name
        assert cpu_attention_fma.applicable(spec, 8) and not cpu_attention_fma.applicable(spec, 4)  # AVX2; SSE: rows
    short = KernelSpec.make("attention", B=1, S=cpu_attention_fma.MIN_QUERIES - 1, T=77, H=12, Dh=64, causal=True)
    assert not cpu_attention_fma.applicable(short, 16)
    wide = KernelSpec.make("attention", B=1, S=256, T=256, H=1, Dh=cpu_attention_fma.MAX_DH + 8, causal=False)
    assert not cpu_attention_fma.applicable(wide, 16)
    # the f32 cases read k and v in place but the one whose keys span more than L2 (packed)
    assert [c[2] * c[3] * c[4] * 4 > cpu_attention_fma.L2_BYTES for c in CASES].count(True) == 1


def test_reads_stay_inside_the_buffers():
    """Padded queries and keys, partial channel vectors, 16-bit storage, with every buffer against an inaccessible
    page on either side (``tests/kernels/guarded.py``, a child process)."""

    specs = [
        ("attention", {"B": 1, "S": 272, "T": 80, "H": 2, "Dh": 40, "causal": False}),
        ("attention", {"B": 1, "S": 256, "T": 48, "H": 2, "Dh": 24, "causal": True, "dt": "hhhh"}),
        ("attention", {"B": 1, "S": 64, "T": 77, "H": 2, "Dh": 40, "causal": False}),  # f32 read in place, a tail
        ("attention", {"B": 2, "S": 77, "T": 77, "H": 2, "Dh": 64, "causal": True}),  # 5 query tiles, 3 padded rows
    ]
    run_guarded(specs)


def test_nan_inputs_give_nan_outputs(ex):
    """A NaN in q poisons its query's row of that head, a NaN in k every query of that head, a NaN in v that
    channel of every query of that head, as in exact arithmetic; nothing else."""
    B, S, T, H, Dh = CASES[1][:5]
    spec = _spec(*CASES[1])
    rng = np.random.default_rng(6)
    base = {n: rng.standard_normal((B * L, H * Dh)).astype(np.float32) for n, L in (("q", S), ("k", T), ("v", T))}
    for name, row, col in (("q", 250, 7), ("k", 70, 125), ("v", 3, 41)):
        arrays = {n: a.copy() for n, a in base.items()}
        arrays[name][row, col] = np.nan
        nan = np.isnan(_run(ex, spec, arrays))
        want = np.zeros_like(nan)
        h = col // Dh
        if name == "q":
            want[row, h * Dh : (h + 1) * Dh] = True
        elif name == "k":
            want[:, h * Dh : (h + 1) * Dh] = True
        else:
            want[:, col] = True
        np.testing.assert_array_equal(nan, want, err_msg=name)


def test_spread_logits_stay_fast_and_leave_mxcsr_alone():
    """Logits spread over many octaves (``run_spread``: q and k scaled by 6) give results within the bound and run
    about as fast as ordinary ones: each task flushes denormals to zero (``tir_build.flushing_denormals``), where
    every underflowing exp2 used to cost a microcode assist (75x slower on SD1.5's 1,024-token shape); the caller's
    MXCSR is restored."""
    case = (1, 512, 512, 2, 40, False, "float32")
    best, got, arrays = run_spread(_spec(*case), case)
    for name, arr in arrays.items():
        exact, vw, (_, qh, kh, _) = exact_reference(arr, case)
        dmax = score_error_max(qh, kh, case, _gamma(case[4]))
        tol = vw * ((1 + _gamma(case[2]) + 1e-6) * np.exp(2 * dmax) - 1) + 1e-7
        assert np.all(np.abs(got[name] - exact) <= tol), name
    assert best["spread"] < 4 * best["plain"], best
