"""Kernel test cases shared by the CPU and Vulkan suites: specs, inputs, numpy references and tolerances.

References are computed in float64 from weights decoded by ``gguf.quants.dequantize`` (bit-exact with ggml), so
the kernels' own decoders are checked against code nobody here wrote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from sdcompile.kernels import spec as S

U32 = 2.0**-24  # unit roundoff of f32

GGUF_TYPES = {
    "f32": Q.F32,
    "f16": Q.F16,
    "bf16": Q.BF16,
    "q8_0": Q.Q8_0,
    "q4_0": Q.Q4_0,
    "q4_1": Q.Q4_1,
    "q5_0": Q.Q5_0,
    "q5_1": Q.Q5_1,
    "tq2_0": Q.TQ2_0,
}


def quantize(w: np.ndarray, wtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(GGUF bytes as little-endian uint32 words, zero-padded; the same weight decoded by gguf as float64)."""
    qt = GGUF_TYPES[wtype]
    raw = w.astype(np.float32) if qt == Q.F32 else quants.quantize(w.astype(np.float32), qt)
    data = raw.tobytes()
    data += b"\0" * (-len(data) % 4)
    decoded = raw if qt == Q.F32 else quants.dequantize(raw, qt)
    return np.frombuffer(data, np.uint32).copy(), np.asarray(decoded, np.float64).reshape(w.shape)


def _erf(v: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(v)


@dataclass
class Case:
    spec: S.KernelSpec
    inputs: list[np.ndarray]  # in spec.params order, without the output
    ref: np.ndarray  # float64
    tol: np.ndarray  # per-element absolute tolerance


def linear_case(rng: np.random.Generator, spec: S.KernelSpec) -> Case:
    M, N, K = (int(spec.attr(k)) for k in "MNK")
    x = rng.standard_normal((M, K)).astype(np.float32)
    words, wd = quantize(rng.standard_normal((N, K)), str(spec.attr("wtype")))
    x64 = x.astype(np.float64)
    pre = x64 @ wd.T
    # Recursive f32 summation of K products: |error| <= K u sum|x||w| (Higham); +2 u for the decode's own rounding
    # (q4_1/q5_1 compute d*q + m, possibly fused into one rounding where gguf rounds twice).
    bound = (K + 2) * U32 * (np.abs(x64) @ np.abs(wd).T)
    inputs = [x, words]
    if spec.attr("bias"):
        b = rng.standard_normal(N).astype(np.float32)
        inputs.append(b)
        pre = pre + b
    act = spec.attr("act")
    if act == "gelu":
        y = 0.5 * pre * (1 + _erf(pre / math.sqrt(2)))
    elif act == "quick_gelu":
        y = pre / (1 + np.exp(-1.702 * pre))
    else:
        y = pre
    # Both activations have |slope| <= 1.13, so the matmul bound carries over scaled; the kernel's erf
    # (Abramowitz-Stegun, 1.5e-7) and exp add a few f32 ulps of the activation's magnitude.
    tol = 1.2 * bound + (4e-6 * (1 + np.abs(pre)) if act != "none" else 0)
    if spec.attr("residual"):
        r = rng.standard_normal((M, N)).astype(np.float32)
        inputs.append(r)
        y = y + r
    tol = tol + 4 * U32 * (1 + np.abs(y))  # the final additions and the f32 output itself
    return Case(spec, inputs, y, tol)


def embed_case(rng: np.random.Generator, spec: S.KernelSpec) -> Case:
    M, Sq, V, D = (int(spec.attr(k)) for k in "MSVD")
    ids = rng.integers(0, V, M).astype(np.int32)
    ids[-1] = ids[0]  # a repeated token
    words, tok = quantize(rng.standard_normal((V, D)), str(spec.attr("wtype")))
    pos = rng.standard_normal((Sq, D)).astype(np.float32)
    ref = tok[ids] + pos[np.arange(M) % Sq]
    return Case(spec, [ids, words, pos], ref, 2 * U32 * (1 + np.abs(ref)))  # one f32 addition


def layer_norm_case(rng: np.random.Generator, spec: S.KernelSpec) -> Case:
    M, D = int(spec.attr("M")), int(spec.attr("D"))
    eps = float(spec.attr("eps"))
    # An offset mean (|mean| >> std) is where one-pass variance formulas lose digits.
    x = (rng.standard_normal((M, D)) * 0.5 + 3.0).astype(np.float32)
    g = rng.standard_normal(D).astype(np.float32)
    b = rng.standard_normal(D).astype(np.float32)
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(-1, keepdims=True)
    xhat = (x64 - mu) / np.sqrt(var + eps)
    ref = xhat * g + b
    # f32 sums over D values: relative error ~ D u in mean and variance; (x - mean) loses |mean|/std digits.
    rel = 4 * D * U32 * (1 + np.abs(mu) / np.sqrt(var))
    return Case(spec, [x, g, b], ref, rel * (1 + np.abs(xhat * g)) + 4 * U32 * (1 + np.abs(ref)))


def attention_case(rng: np.random.Generator, spec: S.KernelSpec) -> Case:
    B, Sq, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
    q, k, v = (rng.standard_normal((B * Sq, H * Dh)).astype(np.float32) for _ in range(3))

    def heads(a):
        return a.astype(np.float64).reshape(B, Sq, H, Dh).transpose(0, 2, 1, 3)

    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(Dh)
    if spec.attr("causal"):
        s = np.where(np.triu(np.ones((Sq, Sq), bool), 1), -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ heads(v)).transpose(0, 2, 1, 3).reshape(B * Sq, H * Dh)
    # Scores carry Dh u relative error (times |q||k| ~ sqrt(Dh)), which softmax turns into an absolute error of the
    # same size on the probabilities; the output sums S of them times |v| ~ 1. exp adds a few ulps.
    tol = (Dh * math.sqrt(Dh) + 8 * Sq) * U32 * 4 * (1 + np.abs(o))
    return Case(spec, [q, k, v], o, tol)


BUILDERS = {"linear": linear_case, "embed": embed_case, "layer_norm": layer_norm_case, "attention": attention_case}


def linear_specs() -> list[S.KernelSpec]:
    """Every weight type at an odd row count (M = 7 fits no tile); plus odd N and K for the float and a quant type,
    and the epilogue variants."""
    specs = [S.linear(7, 64, 256, t) for t in GGUF_TYPES]
    specs += [S.linear(7, 72, 288, "f32"), S.linear(13, 72, 288, "q4_0")]
    specs += [
        S.linear(7, 64, 256, "q4_0", bias=True, residual=True, act="gelu"),
        S.linear(7, 64, 256, "q8_0", bias=True, act="quick_gelu"),
        S.linear(7, 64, 256, "f16", residual=True),
        S.linear(7, 64, 256, "q4_0", act="gelu"),  # an activation without a bias
        # quick_gelu's exp on large |x| (pre-activations reach +-60 here): overflow to inf must give -0, not NaN.
        S.linear(7, 72, 288, "f32", bias=True, act="quick_gelu"),
    ]
    return specs


def other_specs() -> list[S.KernelSpec]:
    return [
        S.embed(7, 5, 50, 64, "f32"),
        S.embed(7, 5, 50, 64, "f16"),
        S.embed(7, 5, 50, 64, "q8_0"),
        S.embed(7, 5, 50, 64, "q4_0"),
        S.layer_norm(7, 96, 1e-5),
        S.layer_norm(5, 100, 1e-5),  # a row that is no whole number of 16-float vectors
        S.attention(2, 7, 2, 16, False),
        S.attention(2, 7, 2, 16, True),
        S.attention(1, 9, 3, 24, True),
        # Keys and head channels that fit no vector width (13 prime, 40 = 2.5 registers of 16).
        S.attention(1, 13, 2, 40, True),
        S.attention(2, 13, 3, 40, False),
        S.attention(1, 77, 12, 64, True),  # the SD1.5 text encoder's
    ]


def all_specs() -> list[S.KernelSpec]:
    return linear_specs() + other_specs()


def make_case(spec: S.KernelSpec, seed: int = 0) -> Case:
    rng = np.random.default_rng([seed, *map(ord, spec.name)])
    return BUILDERS[spec.op](rng, spec)


def run_case(executor, case: Case) -> np.ndarray:
    """Upload the inputs, launch, download the output; buffers are allocated a little larger than needed, as a
    memory plan would."""
    params = case.spec.params
    args, bufs = [], []
    for p, a in zip(params, case.inputs):
        buf = executor.alloc(a.nbytes + 64)
        executor.upload(buf, a)
        args.append((buf, a.shape if p.kind != "raw" else p.shape, str(a.dtype)))
        bufs.append(buf)
    out = params[-1]
    obuf = executor.alloc(int(np.prod(out.shape)) * 4 + 64)
    executor.upload(obuf, np.full(out.shape, np.nan, np.float32))  # a kernel that skips an element shows up
    args.append((obuf, out.shape, "float32"))
    executor.launch(case.spec.name, args)
    executor.synchronize()
    return executor.download(obuf, out.shape, "float32")


def check(case: Case, got: np.ndarray) -> None:
    err = np.abs(got.astype(np.float64) - case.ref)
    bad = ~(err <= case.tol)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / case.tol, 0)), err.shape)
        raise AssertionError(
            f"{case.spec.name}: {int(bad.sum())} of {bad.size} elements out of tolerance; worst at {i}: "
            f"got {got[i]!r}, want {case.ref[i]!r}, tol {case.tol[i]:.3g}"
        )


# --- exhaustive decode checks ------------------------------------------------------------------------------------
# Random normal weights never produce subnormal, infinite or NaN halves, nor subnormal block scales; these cases do.


def decode_specs() -> list[S.KernelSpec]:
    return [S.embed(1024, 1, 1024, 64, "f16"), S.embed(1024, 1, 1024, 64, "bf16"), S.embed(64, 1, 64, 64, "q8_0")]


def decode_case(spec: S.KernelSpec) -> Case:
    """An embed (a pure gather, pos = 0) whose table holds every 16-bit pattern once for f16/bf16, or q8_0
    blocks whose f16 scales are subnormal, zero or negative; the output must equal the decoded table exactly."""
    V, D = int(spec.attr("V")), int(spec.attr("D"))
    wtype = str(spec.attr("wtype"))
    ids = np.arange(V, dtype=np.int32)[::-1].copy()
    pos = np.zeros((1, D), np.float32)
    if wtype in ("f16", "bf16"):
        bits = np.arange(V * D, dtype=np.uint32).astype(np.uint16)
        words = bits.view(np.uint32).copy()
        with np.errstate(invalid="ignore"):  # gguf's bf16 decode casts NaN patterns through an integer
            ref = quants.dequantize(bits.view(np.uint8), GGUF_TYPES[wtype]).reshape(V, D).astype(np.float64)
    else:
        rng = np.random.default_rng(1)
        scales = np.concatenate(
            [
                np.float16([0.0, -0.0, 6e-8, -6e-8, 3e-5, 6.1e-5, -65504.0]),
                rng.standard_normal(V * D // 32 - 7).astype(np.float16),
            ]
        )
        qs = rng.integers(-128, 128, (V * D // 32, 32)).astype(np.int8)
        blocks = np.concatenate([scales.view(np.uint8).reshape(-1, 2), qs.view(np.uint8)], axis=1)
        raw = blocks.reshape(-1)
        words = np.frombuffer(raw.tobytes() + b"\0" * (-raw.size % 4), np.uint32).copy()
        ref = quants.dequantize(raw, Q.Q8_0).reshape(V, D).astype(np.float64)
    ref = ref[ids] + 0.0  # + pos (zero); -0.0 + 0.0 = +0.0, as the kernel computes it
    return Case(spec, [ids, words, pos], ref, np.zeros_like(ref))


def check_exact(case: Case, got: np.ndarray) -> None:
    ref = case.ref.astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan), f"{case.spec.name}: NaNs differ"
    diff = (got != ref) & ~nan
    if diff.any():
        i = np.argwhere(diff)[0]
        raise AssertionError(
            f"{case.spec.name}: {int(diff.sum())} values differ; first at {tuple(i)}: got {got[tuple(i)]!r}, "
            f"want {ref[tuple(i)]!r}"
        )
