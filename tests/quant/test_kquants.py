"""The numpy k-quant and iq4 quantizers (sdcompile.quant.kquants) against ggml's own quantizer, byte for byte.

The reference is `ggml_quantize_chunk` (imatrix NULL) in the libggml-base that llama-cpp-python bundles, called through
tests/quant/ggml_ref.py; those tests skip when llama-cpp-python is not installed. All seven types (q2_k, q3_k, q4_k,
q5_k, q6_k, iq4_nl, iq4_xs) are byte-identical to ggml on every input tried: normal, heavy-tailed, outliers, sparse,
all-zero and constant rows, zero sub-blocks, -0.0, tiny and subnormal values, row scales from 1e-12 to 1e22 (where the
searches overflow to inf/NaN in some sub-blocks only) and values so large that they overflow everywhere. A different
but equally good scale choice would show up as a differing block; none does, so the tests assert identity.

Without ggml, the digests in GOLDEN (taken from outputs checked identical to ggml x86-64, llama-cpp-python 0.3.36 /
ggml 0.25.3) still pin the bytes on platform-independent inputs, and the round trip through `gguf.quants.dequantize`
checks that the blocks decode as intended.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from sdcompile.errors import QuantError
from sdcompile.quant import QUANT_TYPES, dequantize, kquants, quantize, reference
from sdcompile.quant.reference import QUANTIZABLE
from tests.quant import ggml_ref

TYPES = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"]

# gguf's numpy dequantizers warn on the inf scales of the "huge" case; that is the data, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _need_ggml() -> None:
    reason = ggml_ref.skip_reason()
    if reason:
        pytest.skip(reason)


def _cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs [rows, n] with n in 256..4096, several hundred 256-value blocks in all."""
    normal = rng.standard_normal((64, 2048))
    outliers = rng.standard_normal((32, 4096))
    outliers[rng.random(outliers.shape) < 0.005] *= 200
    sparse = rng.standard_normal((16, 1024))
    sparse[rng.random(sparse.shape) < 0.8] = 0
    zero_sub = rng.standard_normal((16, 512))
    zero_sub.reshape(16, -1, 16)[:, ::3] = 0  # every third 16-value sub-block zero
    zero_sub.reshape(16, -1, 32)[:, 1::4] = 0
    mixed = rng.standard_normal((8, 4096))
    mixed.reshape(8, -1, 16)[:, ::2] *= 1e-5  # sub-blocks of very different scale within a block
    signed_zeros = np.where(rng.random((4, 256)) < 0.5, -0.0, 0.0)
    signed_zeros[1, ::37] = 0.25
    return {
        "normal": normal,
        "student_t2": rng.standard_t(2, (32, 2048)),
        "laplace": rng.laplace(size=(8, 2048)),
        "outliers": outliers,
        "sparse": sparse,
        "zero_subblocks": zero_sub,
        "mixed_scales": mixed,
        "zeros": np.zeros((4, 1024)),
        "signed_zeros": signed_zeros,
        "constant": np.repeat(np.array([[0.75], [-0.75], [3e-3], [-12.0]]), 768, axis=1),
        "positive": rng.exponential(size=(8, 1024)),
        "integers": rng.integers(-8, 8, (8, 1024)),
        "tiny": rng.standard_normal((8, 1024)) * 1e-7,
        "subnormal": rng.standard_normal((4, 512)) * 1e-40,
        # Row scales from 1e-12 to 1e22: from about 1e13 (q3_k, q6_k, iq4_xs) the x^2-weighted sums overflow for some
        # sub-blocks only, so NaN scales meet finite ones (ggml's `if (s > max)` skips NaN; numpy's argmax picks it).
        "log_scales": rng.standard_normal((68, 256)) * 10.0 ** np.linspace(-12, 22, 68)[:, None],
        "huge": rng.standard_normal((4, 512)) * 1e30,  # x*x overflows: inf and NaN inside the search, as in ggml
    }


def _mismatch(got: np.ndarray, ref: np.ndarray, type_size: int) -> str:
    g, r = got.reshape(-1, type_size), ref.reshape(-1, type_size)
    bad = np.flatnonzero((g != r).any(axis=1))
    same = 1 - len(bad) / len(r)
    return f"{len(bad)} of {len(r)} blocks differ ({same:.2%} identical), first at {bad[:5]}"


@pytest.mark.parametrize("name", TYPES)
def test_byte_identical_to_ggml(name):
    _need_ggml()
    t = QUANT_TYPES[name]
    for case, x in _cases(np.random.default_rng(sum(map(ord, name)))).items():
        x = x.astype(np.float32)
        got = quantize(x, name)
        ref = np.frombuffer(ggml_ref.ggml_quantize(x, name), dtype=np.uint8)
        assert got.shape == ref.shape, case
        if not np.array_equal(got, ref):
            pytest.fail(f"{name}, case {case}: {_mismatch(got, ref, t.type_size)}")


def _hashed_input() -> np.ndarray:
    """[8, 1024] float32 built from an integer hash with exact float operations only: the same bits everywhere."""
    i = np.arange(3 * 8 * 1024, dtype=np.uint64)
    h = (i + np.uint64(12345)) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    u = ((h >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).reshape(3, 8, 1024)
    x = (u[0] + u[1] + u[2] - np.float32(1.5)).astype(np.float32)  # bell-shaped
    x[1] = (u[0, 1] - np.float32(0.5)) / (u[1, 1] + np.float32(0.01))  # heavy tails
    x[2, ::61] *= np.float32(50)  # outliers
    x[3] = 0
    x[4] = np.float32(-0.375)
    x[5] *= np.float32(1e-6)
    x[6].reshape(-1, 16)[::3] = 0  # zero sub-blocks
    x[7] = np.abs(x[7])
    return x


# sha256 of quantize(_hashed_input(), name); recorded from outputs verified identical to ggml_quantize_chunk.
GOLDEN = {
    "q2_k": "34d2acedce77b76bcbf84ab3d5be7324b4a506006a902c101499af14ba39c1ef",
    "q3_k": "77fe75bc019788db5a8455a82b5f9ad870af90969c81f7eb248cdeab8f7e4b11",
    "q4_k": "dd674e200d61611ce514c0ee8f717a874645732b83ac19a016f3b1c68b318572",
    "q5_k": "2786f2ed80c5308142d7bba28c473dcb2bffe27251154002404eea25f5e9f303",
    "q6_k": "aa07538b10750e1574596da62be55c731206d6d6dcd9761fc926ca08c3cbec92",
    "iq4_nl": "12e07cbb528a63c23b8c3d920f966e7fc0e356039e40323f2ca7c2d8dd50032d",
    "iq4_xs": "67b9701b8d65810063549912f23a3d81697c076aa736535ce25641d3cc6e902a",
}


@pytest.mark.parametrize("name", TYPES)
def test_golden_digest(name):
    x = _hashed_input()
    got = quantize(x, name)
    if ggml_ref.skip_reason() is None:
        ref = np.frombuffer(ggml_ref.ggml_quantize(x, name), dtype=np.uint8)
        assert np.array_equal(got, ref), _mismatch(got, ref, QUANT_TYPES[name].type_size)
    assert hashlib.sha256(got.tobytes()).hexdigest() == GOLDEN[name]


# Relative rms error |dequantize(quantize(x)) - x| / |x| on normal data: ggml's own quantizers reach these (they are
# the same bytes); the bounds are loose enough for any seed.
_RMS_BOUND = {"q2_k": 0.40, "q3_k": 0.20, "q4_k": 0.10, "q5_k": 0.05, "q6_k": 0.025, "iq4_nl": 0.10, "iq4_xs": 0.10}


@pytest.mark.parametrize("name", TYPES)
def test_round_trip_through_gguf_dequantize(name):
    t = QUANT_TYPES[name]
    x = np.random.default_rng(7).standard_normal((16, 1024)).astype(np.float32)
    raw = quantize(x, name)
    ours = dequantize(raw, name, x.shape)
    theirs = gguf_quants.dequantize(raw.reshape(16, t.row_bytes(1024)), GGMLQuantizationType[name.upper()])
    np.testing.assert_array_equal(ours.view(np.uint32), np.asarray(theirs, np.float32).view(np.uint32))
    rel = np.sqrt(np.mean((ours - x) ** 2) / np.mean(x**2))
    assert rel < _RMS_BOUND[name], f"{name}: relative rms error {rel:.4f}"
    # Zero rows stay exactly zero, and a constant row decodes close to its value.
    z = np.zeros((1, 256), np.float32)
    assert not dequantize(quantize(z, name), name, z.shape).any()
    c = np.full((1, 256), 0.5, np.float32)
    assert np.abs(dequantize(quantize(c, name), name, c.shape) - 0.5).max() < 0.05


@pytest.mark.parametrize("name", TYPES)
def test_blocks_are_independent_of_chunking(name, monkeypatch):
    # The vectorized code works on many blocks at once; one block alone, and tiny chunks, must give the same bytes.
    x = np.random.default_rng(11).standard_normal((5, 768)).astype(np.float32)
    whole = quantize(x, name)
    row = QUANT_TYPES[name].row_bytes(768)
    assert np.array_equal(quantize(x[2:3], name), whole[2 * row : 3 * row])
    monkeypatch.setattr(reference, "_CHUNK_VALUES", 256)  # one 256-value block (or 8 iq4_nl blocks) per chunk
    assert np.array_equal(quantize(x, name), whole)


def test_registered_and_shape_checks():
    assert set(TYPES) <= set(QUANTIZABLE)
    with pytest.raises(QuantError, match="block size is 256"):
        quantize(np.ones((2, 128), np.float32), "q4_k")
    assert quantize(np.ones((2, 32), np.float32), "iq4_nl").size == 2 * 18  # iq4_nl blocks are 32 values
    with pytest.raises(QuantError, match="NaN or infinity"):
        quantize(np.full((1, 256), np.inf, np.float32), "q6_k")


def test_nearest_int_is_ggmls():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, 4194303.0, -4194303.0], np.float32)
    np.testing.assert_array_equal(kquants.nearest_int(v), [0, 2, 2, 0, -2, 0, 4194303, -4194303])
    # Beyond 2**22 ggml's trick returns the low mantissa bits, not the rounded value; we must return the same.
    assert kquants.nearest_int(np.array([1e10], np.float32))[0] != 10**10
