"""Attention with bf16 products on the AMX tile unit (``schedules/cpu_attention_amx.py``, ``compile --compute
bf16``) against float64 numpy, for SD1.5's head sizes (40, 80, 160), cross-attention over 77 keys, queries and keys
of odd lengths, several key blocks (the online softmax's rescaling), a causal mask, a VAE-wide head and 16-bit
activation storage.

Bounds, with u = 2^-8 the unit roundoff of bf16 (8 significant bits, nearest even): the kernel rounds q, k, v and
the probabilities p to bf16 and does everything else in f32. With w_j the exact softmax weights of a query's keys
and |v|_w = sum_j w_j |v_j|:

- against f64 attention of the bf16-rounded q, k, v (``emulated``): each numerator term p_j v_j carries one more
  rounding, of p_j (relative u), which the f64 reference does not make, so |o - o_ref| <= 2 u |v|_w (the f64
  reference may be off the kernel's rounded p by u either way), plus f32 noise (the scores' sums over Dh, exp2's
  2e-7): 1e-5 |v|_w and 1e-6 absolute.
- against f64 attention of the inputs as given (``exact``): also the operands' roundings. A score s_j = c q.k_j
  moves by at most d_j = c sum_d |q_d k_jd| (2u + u^2); exp turns that into a relative change e^d - 1 of p_j,
  and the normalising sum moves by at most e^dmax - 1, so |o - o_ref| <= |v|_w ((1 + u)^2 e^(2 dmax) - 1), the
  (1 + u)^2 for the roundings of p_j and v_j.
- a 16-bit output adds its own rounding, half an ulp of its type relative to |o|.

A kernel that ignored the request (f32 products) would be far inside both bounds, so the test also checks that
the error against the exact reference is well above f32's (1e-4 of the output's magnitude; an f32 kernel's is
about 1e-7)."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.kernels.spec import KernelSpec
from tests.kernels import fixtures as fx
from tests.kernels.guarded import run_guarded

pytestmark = pytest.mark.skipif(not tvm_layer.host_amx_bf16(), reason="needs a CPU with AMX-BF16 (and Linux)")

U = 2.0**-8
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
CODE = {"float16": "h", "bfloat16": "b"}
# (B, S, T, H, Dh, causal, storage)
CASES = [
    (2, 64, 64, 2, 40, False, "float32"),  # SD1.5's 64x64 level: 40 channels, K padded to 64, o^T to 48
    (2, 45, 77, 2, 80, False, "float32"),  # cross-attention: 77 keys padded to 96 and masked; 45 queries
    (1, 50, 50, 1, 160, False, "float32"),  # the 16x16 and 8x8 levels' 160 channels
    (1, 300, 300, 2, 40, False, "float32"),  # three key blocks (128, 128, 44 -> 64): the running max and sum
    (1, 40, 700, 1, 40, False, "float32"),  # six blocks: the pipelined scores alternate buffers in a loop
    (1, 600, 600, 1, 24, True, "float32"),  # causal over five blocks: later blocks wholly masked for early rows
    (1, 77, 77, 2, 64, True, "float32"),  # the text encoder's causal mask
    (1, 33, 200, 3, 20, False, "float32"),  # 20 channels (a partial vector), S != T, both odd
    (1, 5, 3, 1, 17, False, "float32"),  # fewer queries and keys than a tile; 17 channels (one past a vector)
    (1, 64, 64, 1, 512, False, "float32"),  # the VAE's single head of 512 channels
    (2, 40, 77, 2, 40, False, "float16"),
    (1, 130, 130, 2, 80, True, "bfloat16"),  # causal over two key blocks, bf16 storage
]


def _spec(B, S, T, H, Dh, causal, dtype):
    dt = {} if dtype == "float32" else {"dt": CODE[dtype] * 4}
    return KernelSpec.make("attention", B=B, S=S, T=T, H=H, Dh=Dh, causal=causal, mma="bf16", **dt)


SPECS = [_spec(*c) for c in CASES]
built = fx.built_fixture("cpu", lambda: SPECS, "attention_amx_bf16")
ex = fx.executor_fixture("cpu")


def bf16(a: np.ndarray) -> np.ndarray:
    """f32 values rounded to bf16 (nearest even), as f64."""
    b = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def attention_f64(q, k, v, B, S, T, H, Dh, causal):
    """softmax(q k^T / sqrt(Dh) [causal]) v per head, in f64; also the weights and the heads' views."""
    qh = q.reshape(B, S, H, Dh).transpose(0, 2, 1, 3)
    kh = k.reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
    vh = v.reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(Dh)
    if causal:
        s = np.where(np.triu(np.ones((S, T), bool), 1), -np.inf, s)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return w, qh, kh, vh


def _heads_to_rows(a, B, S, H, Dh):
    return a.transpose(0, 2, 1, 3).reshape(B * S, H * Dh)


def case_arrays(case, seed: int) -> dict:
    """q, k, v of a case as the storage type holds them (as f64), rows [B * L, H * Dh]; q scaled up a little so that
    some rows' softmax is sharp."""
    B, S, T, H, Dh, _, dtype = case
    rng = np.random.default_rng(seed)
    return {
        n: (rng.standard_normal((B * L, H * Dh)) * f).astype(np.float32).astype(dtype).astype(np.float64)
        for n, L, f in (("q", S, 1.5), ("k", T, 1.0), ("v", T, 1.0))
    }


def exact_reference(arrays: dict, case):
    """(f64 attention of the inputs as given, |v|_w per output, the weights and heads' views of attention_f64)."""
    B, S, T, H, Dh, causal, _ = case
    w, qh, kh, vh = attention_f64(arrays["q"], arrays["k"], arrays["v"], B, S, T, H, Dh, causal)
    return _heads_to_rows(w @ vh, B, S, H, Dh), _heads_to_rows(w @ np.abs(vh), B, S, H, Dh), (w, qh, kh, vh)


def score_error_max(qh, kh, case, rel: float) -> np.ndarray:
    """Per output, the largest bound over the query's (unmasked) keys on a score's error, where each product of
    c q.k may be off by ``rel`` of its magnitude: c sum_d |q_d k_jd| rel, in the rows layout of the outputs."""
    B, S, T, H, Dh, causal, _ = case
    d = (np.abs(qh) @ np.abs(kh).transpose(0, 1, 3, 2)) / np.sqrt(Dh) * rel
    if causal:
        d = np.where(np.triu(np.ones((S, T), bool), 1), 0.0, d)
    return _heads_to_rows(np.repeat(d.max(-1)[..., None], Dh, -1), B, S, H, Dh)  # [B, H, S, Dh] as rows


def _run(ex, spec, arrays):
    args = []
    for p in spec.params:
        a = np.zeros(p.shape, p.dtype) if p.is_output else arrays[p.name].astype(p.dtype)
        buf = ex.alloc(max(a.nbytes, 4))
        ex.upload(buf, a)
        args.append((buf, p.shape, p.dtype))
    ex.launch(spec.name, args)
    out = spec.params[-1]
    return ex.download(args[-1][0], out.shape, out.dtype).astype(np.float64)


@pytest.mark.parametrize("case", CASES, ids=[s.name for s in SPECS])
def test_bf16_attention_within_its_bounds(ex, case):
    spec = _spec(*case)
    arrays = case_arrays(case, 3)
    assert_within_bounds(_run(ex, spec, arrays), arrays, case)


def assert_within_bounds(got, arrays: dict, case) -> None:
    """The kernel's outputs ``got`` for ``arrays`` within both bounds of the module docstring, and well above an f32
    kernel's error (also used by ``test_attention_dot_bf16.py``: the vector unit's kernel rounds the same values)."""
    B, S, T, H, Dh, causal, dtype = case
    assert np.all(np.isfinite(got))
    exact, vw, (_, qh, kh, _) = exact_reference(arrays, case)  # vw: |v|_w per output
    we, *_, vhe = attention_f64(*(bf16(arrays[n]) for n in "qkv"), B, S, T, H, Dh, causal)
    emulated = _heads_to_rows(we @ vhe, B, S, H, Dh)

    store = HALF_ULP[dtype] * np.abs(exact) * 1.01
    tol_emulated = vw * (2 * U + 1e-5) + 1e-6 + store
    err = np.abs(got - emulated)
    assert np.all(err <= tol_emulated), float(np.max(err / tol_emulated))

    dmax = score_error_max(qh, kh, case, 2 * U + U * U)
    tol_exact = vw * ((1 + U) ** 2 * np.exp(2 * dmax) - 1) * 1.01 + 1e-6 + store
    err = np.abs(got - exact)
    assert np.all(err <= tol_exact), float(np.max(err / tol_exact))
    # the products really were bf16: far above an f32 kernel's error
    assert err.max() > 1e-4 * np.abs(exact).max()


def test_dispatch():
    from schedules import cpu_attention_amx

    for spec in SPECS:
        assert cpu_attention_amx.applicable(spec, 16, True)
        assert not cpu_attention_amx.applicable(spec, 16, False)  # no AMX-BF16: the f32 kernel
    plain = KernelSpec.make("attention", B=1, S=8, T=8, H=1, Dh=40, causal=False)
    assert not cpu_attention_amx.applicable(plain, 16, True)  # no request: the f32 kernel
    wide = KernelSpec.make("attention", B=1, S=8, T=8, H=1, Dh=cpu_attention_amx.MAX_DH + 8, causal=False, mma="bf16")
    assert not cpu_attention_amx.applicable(wide, 16, True)


def test_reads_stay_inside_the_buffers():
    """Padded shapes (channels to 32, keys to 32, queries to 32) with every buffer against an inaccessible page on
    either side (``tests/kernels/guarded.py``, a child process; sizes in whole 64-byte lines, which it needs): the
    partial vectors at a head's end, the clamped rows of padded keys and queries must not read past q, k or v."""

    specs = [
        ("attention", {"B": 2, "S": 45, "T": 77, "H": 2, "Dh": 40, "causal": False, "mma": "bf16"}),
        ("attention", {"B": 1, "S": 40, "T": 40, "H": 2, "Dh": 20, "causal": True, "mma": "bf16", "dt": "hhhh"}),
    ]
    run_guarded(specs)


def test_nan_inputs_give_nan_outputs(ex):
    """A NaN in q poisons its query's row of that head, a NaN in k or v every query of that head, as in exact
    arithmetic (and PyTorch); nothing else."""
    B, S, T, H, Dh = CASES[1][:5]
    spec = _spec(*CASES[1])
    rng = np.random.default_rng(4)
    base = {n: rng.standard_normal((B * L, H * Dh)).astype(np.float32) for n, L in (("q", S), ("k", T), ("v", T))}
    for name, row, col in (("q", 50, 7), ("k", 3, 125), ("v", 80, 41)):
        arrays = {n: a.copy() for n, a in base.items()}
        arrays[name][row, col] = np.nan
        nan = np.isnan(_run(ex, spec, arrays))
        want = np.zeros_like(nan)
        h = col // Dh
        if name == "q":
            want[row, h * Dh : (h + 1) * Dh] = True
        elif name == "k":
            want[(row // T) * S : (row // T + 1) * S, h * Dh : (h + 1) * Dh] = True
        else:  # v: one channel of every query of that image and head
            want[(row // T) * S : (row // T + 1) * S, col] = True
        np.testing.assert_array_equal(nan, want, err_msg=name)


def run_spread(spec, case) -> tuple[dict, dict, dict]:
    """The case with ordinary q and k and with both scaled by 6 (logits spread over many octaves: most exp2 far below
    2^-126), alternating, 3 rounds on one thread: (best seconds, last outputs, inputs) per kind. Checks that the
    calling thread's MXCSR came back without flush-to-zero (a denormal still survives a product)."""
    import tempfile
    import time
    from pathlib import Path

    from runtime.executors.cpu import Executor
    from sdcompile.codegen.build import build_kernels

    out = Path(tempfile.mkdtemp(prefix="attention_spread-"))
    one = Executor(out, build_kernels([spec], "cpu", out), num_threads=1)
    arrays = {s: case_arrays(case, 9) for s in ("plain", "spread")}
    for n in ("q", "k"):
        arrays["spread"][n] = arrays["spread"][n] * 6
    best, got = {}, {}
    for _ in range(3):
        for name, arr in arrays.items():
            t = time.perf_counter()
            got[name] = _run(one, spec, arr)
            best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
    tiny = np.float32(1e-39)
    assert tiny * np.float32(1.0) == tiny
    return best, got, arrays


def test_spread_logits_stay_fast_and_leave_mxcsr_alone():
    """Spread logits (``run_spread``) run about as fast as ordinary ones: denormals are flushed in each task (without
    it 10x slower on SD1.5's 1,024-token shape); the outputs are finite and the caller's MXCSR is restored."""
    best, got, _ = run_spread(_spec(1, 512, 512, 2, 40, False, "float32"), (1, 512, 512, 2, 40, False, "float32"))
    assert all(np.all(np.isfinite(g)) for g in got.values())
    assert best["spread"] < 4 * best["plain"], best
