"""Cases for the k-quant, tq1_0 and mxfp4 kernels, shared by the CPU, Vulkan and CUDA suites.

Weights are random valid blocks — random bytes whose f16 scale fields are overwritten with small finite values (the
6-bit, 4-bit and int8 sub-block scales and every quant bit stay random, so every bit pattern of them is exercised) —
or, for the types ``gguf`` can quantize (tq1_0, mxfp4), gguf's own quantization of normal data. References are
``gguf.quants.dequantize`` of the same bytes (bit-exact with ggml) followed by float64 numpy.

Tolerances. The kernels accumulate K products in f32: the recursive-summation bound |err| <= K u sum|x||w|
(Higham; u = 2^-24) is the worst case (random rounding errors grow like sqrt(K) u, so the bound holds with a wide
margin). The decode itself is exact up to ggml's own final rounding of ``(d * sc) * q - dmin * m`` (both products
are exact in f32, see ``dequant_kquants``), but a GPU compiler may reassociate that subtraction with the next
operation (lavapipe does), which costs up to u (|(d sc) q| + |dmin m|) — more than u |w| when the two terms cancel.
So the bounds use ``wmag = |(d sc) q| + |dmin m|`` per weight: gguf's dequantization with ``dmin`` zeroed plus that
with ``d`` zeroed (no formula re-implemented here). A pure gather (``decode_case``) has no next operation to
reassociate with and must be bit-exact.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from sdcompile.kernels import spec as S
from sdcompile.quant.types import get as get_type
from tests.kernels import kernel_cases as kc
from tests.kernels.kernel_cases import U32, Case, _erf

TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "tq1_0", "mxfp4")
GGUF = {t: Q[t.upper()] for t in TYPES}
# Byte offsets of each type's f16 fields (d, then dmin where there is one): the fields randomized to small values.
F16_FIELDS = {"q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,), "tq1_0": (52,)}
QUANTIZABLE = ("tq1_0", "mxfp4")  # gguf.quants.quantize supports these (bit-exact with ggml)


def words_of(raw: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(raw).view(np.uint8).tobytes()
    return np.frombuffer(data + b"\0" * (-len(data) % 4), np.uint32).copy()


def dequantize(raw: np.ndarray, wtype: str, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(quants.dequantize(raw.reshape(shape[0], -1), GGUF[wtype]), np.float64).reshape(shape)


def random_blocks(rng: np.random.Generator, wtype: str, shape: tuple[int, int], exponents=(118, 130)) -> np.ndarray:
    """Random bytes of a [rows, cols] weight with every f16 scale finite and small (|d| ~ 2^-10, weights of order 1; mxfp4's e8m0
    exponent in ``exponents``, so that x @ W neither overflows nor underflows)."""
    qt = get_type(wtype)
    blocks = rng.integers(0, 256, (qt.nbytes(shape) // qt.type_size, qt.type_size), dtype=np.uint8)
    for at in F16_FIELDS.get(wtype, ()):
        d = (rng.standard_normal(len(blocks)) * 2.0**-10).astype(np.float16)
        blocks[:, at : at + 2] = d.view(np.uint8).reshape(-1, 2)
    if wtype == "mxfp4":
        blocks[:, 0] = rng.integers(exponents[0], exponents[1], len(blocks))
    return blocks.reshape(-1)


def weight(rng: np.random.Generator, wtype: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(words, gguf-decoded weight, wmag) for a [rows, cols] weight: quantized normal data where gguf quantizes the
    type, random valid blocks otherwise."""
    if wtype in QUANTIZABLE:
        raw = np.asarray(quants.quantize(rng.standard_normal(shape).astype(np.float32), GGUF[wtype]))
    else:
        raw = random_blocks(rng, wtype, shape)
    return words_of(raw), dequantize(raw, wtype, shape), magnitude(raw, wtype, shape)


def magnitude(raw: np.ndarray, wtype: str, shape: tuple[int, int]) -> np.ndarray:
    """|(d sc) q| + |dmin m| per weight (see the module docstring); |w| for types without a min."""
    fields = F16_FIELDS.get(wtype, ())
    if len(fields) < 2:
        return np.abs(dequantize(raw, wtype, shape))
    qt = get_type(wtype)
    parts = []
    for zeroed in fields:
        b = raw.reshape(-1, qt.type_size).copy()
        b[:, zeroed : zeroed + 2] = 0
        parts.append(np.abs(dequantize(b.reshape(-1), wtype, shape)))
    return parts[0] + parts[1]


def linear_case(rng: np.random.Generator, spec: S.KernelSpec) -> Case:
    M, N, K = (int(spec.attr(k)) for k in "MNK")
    x = rng.standard_normal((M, K)).astype(np.float32)
    words, wd, wmag = weight(rng, str(spec.attr("wtype")), (N, K))
    x64 = x.astype(np.float64)
    pre = x64 @ wd.T
    # K roundings of the f32 sum, two of the decode (see the module docstring), one of each product.
    bound = (K + 3) * U32 * (np.abs(x64) @ wmag.T)
    inputs = [x, words]
    if spec.attr("bias"):
        b = rng.standard_normal(N).astype(np.float32)
        inputs.append(b)
        pre = pre + b
    act = spec.attr("act")
    acts = {
        "gelu": lambda p: 0.5 * p * (1 + _erf(p / np.sqrt(2))),
        "quick_gelu": lambda p: p / (1 + np.exp(-1.702 * p)),
    }
    with np.errstate(over="ignore"):  # quick_gelu of a very negative value: exp overflows, the result is -0
        y = acts[act](pre) if act in acts else pre
    # gelu / quick_gelu have |slope| <= 1.13; their erf and exp add a few f32 ulps of the activation's magnitude.
    tol = 1.2 * bound + (4e-6 * (1 + np.abs(pre)) if act != "none" else 0)
    if spec.attr("residual"):
        r = rng.standard_normal((M, N)).astype(np.float32)
        inputs.append(r)
        y = y + r
    return Case(spec, inputs, y, tol + 4 * U32 * (1 + np.abs(y)))


def embed_case(rng: np.random.Generator, spec: S.KernelSpec) -> Case:
    """A gather of random valid blocks plus a position table: each output is one decoded weight plus one f32
    addition, which the compiler may reassociate with the decode's subtraction (u wmag, see the module docstring)."""
    M, Sq, V, D = (int(spec.attr(k)) for k in "MSVD")
    wtype = str(spec.attr("wtype"))
    ids = rng.integers(0, V, M).astype(np.int32)
    ids[-1] = ids[0]  # a repeated token
    raw = random_blocks(rng, wtype, (V, D))
    tok, wmag = dequantize(raw, wtype, (V, D)), magnitude(raw, wtype, (V, D))
    pos = rng.standard_normal((Sq, D)).astype(np.float32)
    ref = tok[ids] + pos[np.arange(M) % Sq]
    return Case(spec, [ids, words_of(raw), pos], ref, 2 * U32 * (wmag[ids] + np.abs(ref)))


def decode_case(spec: S.KernelSpec) -> Case:
    """A pure gather (pos = 0) of every row of a table of random blocks (mxfp4: every e8m0 exponent once,
    subnormal 2^-128 and 2^-127 and overflowing 2^127 x 12 included); the output must equal gguf's decode bit for
    bit (a target that flushed subnormals would differ on mxfp4's e < 2 blocks; lavapipe and LLVM do not)."""
    V, D = int(spec.attr("V")), int(spec.attr("D"))
    wtype = str(spec.attr("wtype"))
    rng = np.random.default_rng(list(map(ord, spec.name)))
    raw = random_blocks(rng, wtype, (V, D), exponents=(0, 256))
    if wtype == "mxfp4":  # every exponent at least once
        raw.reshape(-1, 17)[:256, 0] = np.arange(256)
    ids = np.arange(V, dtype=np.int32)[::-1].copy()
    with np.errstate(over="ignore"):  # 2^127 x 12 overflows to inf, as in ggml
        ref = dequantize(raw, wtype, (V, D))[ids] + 0.0
    tol = np.zeros_like(ref)  # bit-exact (+ 0.0 only turns -0 into +0, which compares equal)
    return Case(spec, [ids, words_of(raw), np.zeros((1, D), np.float32)], ref, tol)


def check(case: Case, got: np.ndarray) -> None:
    """``kernel_cases.check``, except that infinite references (mxfp4's largest exponents) must match exactly."""
    inf = np.isinf(case.ref)
    if inf.any():
        bad = got[inf] != case.ref[inf]
        assert not bad.any(), f"{case.spec.name}: {int(bad.sum())} infinite values differ"
    finite = Case(case.spec, case.inputs, np.where(inf, 0.0, case.ref), np.where(inf, 0.0, case.tol))
    kc.check(finite, np.where(inf, np.float32(0), got))


def linear_specs() -> list[S.KernelSpec]:
    """Each type as a GEMV (M = 1) and a GEMM (M = 7: fits no tile), N = 64, K = 512 (two super-blocks per row),
    plus the epilogue variants on two types at M = 64."""
    specs = [S.linear(m, 64, 512, t) for t in TYPES for m in (1, 7)]
    specs += [
        S.linear(64, 64, 512, "q4_k", bias=True, residual=True, act="gelu"),
        S.linear(1, 64, 512, "q6_k", bias=True, act="quick_gelu"),
        S.linear(7, 96, 256, "mxfp4", bias=True, residual=True),
    ]
    return specs


def embed_specs() -> list[S.KernelSpec]:
    return [S.embed(7, 5, 50, 256, t) for t in TYPES]


def decode_specs() -> list[S.KernelSpec]:
    return [S.embed(64, 1, 64, 512, t) for t in TYPES]


def gemv_specs() -> list[S.KernelSpec]:
    """The GPU GEMV schedule (M = 1) for the types that predate it: every one at N = 64, K = 256; odd N and K
    (tail predicates on rows and on K) with the full epilogue; K below one row of threads (the tiled fallback)."""
    specs = [S.linear(1, 64, 256, t) for t in kc.GGUF_TYPES]
    specs += [
        S.linear(1, 5, 288, "q4_0", bias=True, residual=True, act="gelu"),
        S.linear(1, 72, 288, "f32"),
        S.linear(1, 8, 32, "q8_0"),
    ]
    return specs


BUILDERS = {"linear": linear_case, "embed": embed_case}


def make_case(spec: S.KernelSpec, seed: int = 0) -> Case:
    """A case for any spec: the builders above for this module's types, ``kernel_cases`` for the others."""
    if str(spec.attr("wtype")) not in TYPES:
        return kc.make_case(spec, seed)
    rng = np.random.default_rng([seed, *map(ord, spec.name)])
    return BUILDERS[spec.op](rng, spec)
