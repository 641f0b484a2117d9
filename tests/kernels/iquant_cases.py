"""Kernel cases for the i-quants, shared by the CPU, Vulkan and CUDA suites.

Weights are random valid blocks: random bytes (every grid index, sign and sub-block scale pattern is valid) with the
f16 super-block scales, iq1_m's split one included, overwritten by small finite values of either sign. References are
``gguf.quants.dequantize`` of the same bytes (bit-exact with ggml) and a float64 matmul.
"""

from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType, quants

from sdcompile.kernels import spec as S
from sdcompile.kernels.luts import table_words
from sdcompile.quant.types import get as get_type
from tests.kernels.kernel_cases import U32, Case

IQ_TYPES = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq4_nl", "iq4_xs")
# K = 512: two 256-value super-blocks per row, so block offsets within and across rows are both exercised.
N, K = 64, 512
EMBED = dict(M=64, S=4, V=64, D=512)


def linear_specs() -> list[S.KernelSpec]:
    """Every type at M = 1 (GEMV) and M = 7 (GEMM, fits no tile), plus one with the full epilogue: bias and residual
    move the lookup-table parameter, which must still line up with its buffer."""
    specs = [S.linear(m, N, K, t) for t in IQ_TYPES for m in (1, 7)]
    specs.append(S.linear(7, N, K, "iq2_xs", bias=True, residual=True, act="gelu"))
    return specs


def embed_specs() -> list[S.KernelSpec]:
    return [S.embed(EMBED["M"], EMBED["S"], EMBED["V"], EMBED["D"], t) for t in IQ_TYPES]


def all_specs() -> list[S.KernelSpec]:
    return linear_specs() + embed_specs()


def random_blocks(wtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """GGUF bytes (uint8 [rows, row bytes]) of random valid blocks: d = +-[2^-8, 2^-7], so decoded weights are of
    the order of a real model's (grid values reach 62 and sub-block scales 31)."""
    qt = get_type(wtype)
    blocks = rng.integers(0, 256, (rows * cols // qt.block_size, qt.type_size), dtype=np.uint8)
    d = (rng.uniform(1.0, 2.0, len(blocks)) * rng.choice([-1.0, 1.0], len(blocks)) * 2.0**-8).astype(np.float16)
    bits = d.view(np.uint16)
    if wtype == "iq1_m":  # d's 16 bits are the top nibbles of the four u16 scale words at byte 48, lowest first
        sc = blocks[:, 48:56].copy().view("<u2")
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
        blocks[:, 48:56] = sc.view(np.uint8)
    else:  # every other i-quant starts with d
        blocks[:, 0:2] = bits.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def weight(wtype: str, rows: int, cols: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(the weight's GGUF bytes as uint32 words, the same weight decoded by gguf as float32 [rows, cols])."""
    raw = random_blocks(wtype, rows, cols, rng)
    qt = GGMLQuantizationType(get_type(wtype).ggml_id)
    decoded = np.asarray(quants.dequantize(raw.reshape(rows, -1), qt), np.float32).reshape(rows, cols)
    assert np.isfinite(decoded).all()
    data = raw.tobytes()
    return np.frombuffer(data + b"\0" * (-len(data) % 4), np.uint32).copy(), decoded


def luts(spec: S.KernelSpec) -> list[np.ndarray]:
    """The lookup tables a spec takes, as the artifact stores and the runtime passes them."""
    return [np.array(table_words(p.name)) for p in spec.params if p.kind == "lut"]


def linear_case(spec: S.KernelSpec, rng: np.random.Generator) -> Case:
    M, Nn, Kk = (int(spec.attr(k)) for k in "MNK")
    x = rng.standard_normal((M, Kk)).astype(np.float32)
    words, wd = weight(str(spec.attr("wtype")), Nn, Kk, rng)
    x64, w64 = x.astype(np.float64), wd.astype(np.float64)
    pre = x64 @ w64.T
    # The kernel's decoded weights equal gguf's bit for bit (same f32 operations in the same order), so the error is
    # f32 summation of K products: |error| <= K u sum|x||w| (Higham). +4 u covers a target that rounds the decode
    # differently (a contracted multiply); the output's own rounding and the epilogue's additions add a few u |y|.
    tol = (Kk + 4) * U32 * (np.abs(x64) @ np.abs(w64).T)
    inputs = [x, words]
    if spec.attr("bias"):
        b = rng.standard_normal(Nn).astype(np.float32)
        inputs.append(b)
        pre = pre + b
    y = pre
    if spec.attr("act") == "gelu":
        y = 0.5 * pre * (1 + np.vectorize(math.erf)(pre / math.sqrt(2)))
        # |gelu'| <= 1.13 carries the matmul bound over; the kernel's erf (1.5e-7) adds a few ulps of |pre|.
        tol = 1.2 * tol + 4e-6 * (1 + np.abs(pre))
    if spec.attr("residual"):
        r = rng.standard_normal((M, Nn)).astype(np.float32)
        inputs.append(r)
        y = y + r
    return Case(spec, inputs + luts(spec), y, tol + 4 * U32 * (1 + np.abs(y)))


def embed_case(spec: S.KernelSpec, rng: np.random.Generator) -> Case:
    """A gather of every row (a permutation) plus positions. Decoding is exact and the kernel adds in f32 once, so
    the reference is the same f32 addition and the check is bit-exact (tolerance 0)."""
    M, Sq, V, D = (int(spec.attr(k)) for k in "MSVD")
    words, tok = weight(str(spec.attr("wtype")), V, D, rng)
    ids = rng.permutation(V)[:M].astype(np.int32)
    pos = rng.standard_normal((Sq, D)).astype(np.float32)
    ref = (tok[ids] + pos[np.arange(M) % Sq]).astype(np.float64)
    return Case(spec, [ids, words, pos, *luts(spec)], ref, np.zeros_like(ref))


def make_case(spec: S.KernelSpec, seed: int = 0) -> Case:
    rng = np.random.default_rng([seed, *map(ord, spec.name)])
    return linear_case(spec, rng) if spec.op == "linear" else embed_case(spec, rng)
