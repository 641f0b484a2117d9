"""The numpy reference dequantize/quantize against the `gguf` package, which matches ggml bit for bit.

Every comparison is on bit patterns (float32 viewed as uint32, or raw bytes), not with a tolerance: a reference that
is off by one ulp would hide kernel bugs of the same size.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from sdcompile.errors import QuantError
from sdcompile.quant import QUANT_TYPES, QuantType, dequantize, get, grids, quantize, reference
from sdcompile.quant.kquants import QUANTIZERS as KQUANTIZERS
from sdcompile.quant.reference import QUANTIZABLE

# gguf.quants.quantize implements these; the k-quants and iq4 quantizers are checked against ggml in test_kquants.py.
GGUF_QUANTIZABLE = [name for name in QUANTIZABLE if name not in KQUANTIZERS]

# gguf's numpy code warns on the overflows and NaNs that some cases exercise on purpose; ours must not warn.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:gguf.*")

ALL_TYPES = list(QUANT_TYPES)
BLOCK_TYPES = [name for name, t in QUANT_TYPES.items() if not t.is_float]


def _gguf_type(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name.upper()]


def _gguf_dequantize(raw: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    t = QUANT_TYPES[name]
    rows = raw.reshape(*shape[:-1], t.row_bytes(shape[-1]))
    return np.asarray(gguf_quants.dequantize(rows, _gguf_type(name)), dtype=np.float32)


def _gguf_quantize(x: np.ndarray, name: str) -> np.ndarray:
    # gguf returns float32/float16 arrays for f32/f16 and uint8 [..., row_bytes] otherwise: compare raw bytes.
    return np.ascontiguousarray(gguf_quants.quantize(x, _gguf_type(name))).view(np.uint8).reshape(-1)


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same shape, float32, same NaN positions, and identical bits everywhere else (so -0.0 != 0.0)."""
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    a, e = actual.view(np.uint32)[~nan], expected.astype(np.float32).view(np.uint32)[~nan]
    bad = np.flatnonzero(a != e)
    assert bad.size == 0, f"{bad.size} values differ, first at {bad[:5]}: {a[bad[:5]]} != {e[bad[:5]]}"


def _f16_field_offsets(t: QuantType) -> list[int]:
    """Byte offsets of the f16 fields of a block, from the layout table."""
    sizes = {"u8": 1, "i8": 1, "u16": 2, "f16": 2, "bf16": 2, "f32": 4}
    offsets, at = [], 0
    for _field, kind, count in t.layout:
        if kind == "f16":
            offsets += [at + 2 * i for i in range(count)]
        at += sizes[kind] * count
    assert at == t.type_size, f"layout of {t.name} adds up to {at} bytes, not {t.type_size}"
    return offsets


def _random_blocks(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random stored bytes for `shape`, with every f16 scale finite (exponent bits not all ones)."""
    t = QUANT_TYPES[name]
    raw = rng.integers(0, 256, size=t.nbytes(shape), dtype=np.uint8)
    if t.is_float:
        return raw  # plain floats: NaN and inf are tested separately
    blocks = raw.reshape(-1, t.type_size)
    for at in _f16_field_offsets(t):
        blocks[:, at + 1] &= 0xBF  # clear the top exponent bit of the little-endian f16
    if name == "iq1_m":
        blocks[:, 55] &= 0xBF  # its f16 scale is spread over the top nibbles of 4 uint16s; bit 14 is in byte 55
    return raw


@pytest.mark.parametrize("name", ALL_TYPES)
def test_dequantize_random_blocks_bit_exact(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    t = QUANT_TYPES[name]
    shape = (3, 5, 16 * t.block_size) if not t.is_float else (3, 5, 64)
    raw = _random_blocks(name, shape, rng)
    if not t.is_float:  # the masking above must have worked, or the comparison would be about NaNs
        assert np.isfinite(_gguf_dequantize(raw, name, shape)).all() or name == "mxfp4"
    out = dequantize(raw, name, shape)
    assert_bits_equal(out, _gguf_dequantize(raw, name, shape))


@pytest.mark.parametrize("name", ["f32", "f16", "bf16"])
def test_dequantize_plain_floats_keep_nan_and_inf(name):
    t = QUANT_TYPES[name]
    specials = {
        "f32": [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x80000000, 0x00000001],
        "f16": [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x8000, 0x0001],
        "bf16": [0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0x8000, 0x0001],
    }[name]
    raw = np.array(specials, dtype=f"<u{t.type_size}").view(np.uint8)
    out = dequantize(raw, name, (len(specials),))
    assert np.isnan(out).sum() == 2 and np.isinf(out).sum() == 2
    assert_bits_equal(out, _gguf_dequantize(raw, name, (len(specials),)))


@pytest.mark.parametrize("name", GGUF_QUANTIZABLE)
def test_dequantize_quantized_data_bit_exact(name):
    # Realistic blocks: quantized from normal data by gguf, so the scales are what a converter writes.
    rng = np.random.default_rng(1)
    t = QUANT_TYPES[name]
    x = rng.standard_normal((7, 2 * max(t.block_size, 32))).astype(np.float32)
    raw = _gguf_quantize(x, name)
    assert_bits_equal(dequantize(raw, name, x.shape), _gguf_dequantize(raw, name, x.shape))


def _cases(block: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for the quantizers, as [rows, 2 blocks]: the ordinary case and the ones ggml's code singles out."""
    n = 2 * max(block, 32)
    normal = rng.standard_normal((6, n)).astype(np.float32)
    huge = normal.copy()
    huge[0, 3], huge[1, -1], huge[2, n // 2] = 1e4, -3e4, 6e4  # one value dominates its block
    negative_max = np.abs(normal)
    negative_max[:, ::7] *= -3  # the largest magnitude in each block is negative: q4_0/q5_0 keep its sign
    ties = np.tile(np.array([-0.5, 0.5, 1.5, -2.5, 0.25, 3.5, -7.5, 1.0], np.float32), (4, n // 8))
    ties[:, 0] = 127.0  # q8_0: d = 1, so x * id is exactly a half and roundf must round away from zero
    equal_abs = np.tile(np.array([2.0, -2.0], np.float32), (3, n // 2))  # first of equal magnitudes wins
    equal_abs[1] *= -1
    return {
        "normal": normal,
        "zeros": np.zeros((3, n), np.float32),
        "huge": huge,
        "negative_max": negative_max,
        "ties": ties,
        "equal_abs": equal_abs,
        "tiny": normal * np.float32(1e-6),
        "large": normal * np.float32(1e5),  # scales overflow f16 for some types: inf, as in ggml
        "constant": np.full((2, n), -0.75, np.float32),
        "powers_of_two": np.tile(np.float32(2.0) ** np.arange(-4, 4, dtype=np.float32), (2, n // 8)),
        # Values already -1/0/1: every one of tq1_0's 243 five-trit bytes occurs, so its byte scaling is checked.
        "ternary": rng.integers(-1, 2, size=(64, n)).astype(np.float32),
    }


@pytest.mark.parametrize("name", GGUF_QUANTIZABLE)
def test_quantize_bit_exact_with_gguf(name):
    rng = np.random.default_rng(2)
    for case, x in _cases(QUANT_TYPES[name].block_size, rng).items():
        got = quantize(x, name)
        assert got.dtype == np.uint8 and got.shape == (QUANT_TYPES[name].nbytes(x.shape),), case
        np.testing.assert_array_equal(got, _gguf_quantize(x, name), err_msg=f"{name}, case {case}")


def test_quantize_mxfp4_near_powers_of_two():
    # The shared exponent is floor(log2(amax)): values just below a power of two are where it could go wrong.
    p = np.float32(2.0) ** np.arange(-6, 10, dtype=np.float32)
    x = np.concatenate([p, np.nextafter(p, np.float32(0)), np.nextafter(p, np.float32(np.inf)), -p])
    x = np.repeat(x, 32).reshape(-1, 32) * np.linspace(1, 0.1, 32, dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, "mxfp4"), _gguf_quantize(x, "mxfp4"))


@pytest.mark.parametrize("name", ["f16", "bf16", "f32"])
def test_quantize_plain_floats_special_values(name):
    bits = np.array(
        [
            0x7F800000,  # inf
            0xFF800000,  # -inf
            0x7FC00000,  # quiet NaN
            0x7F800001,  # signalling NaN: bf16 must keep it a NaN, not round it to inf
            0xFFFFFFFF,  # NaN with every payload bit set
            0x7F7FFFFF,  # largest float32: rounds up to inf in bf16 and f16
            0x3F808000,  # exactly halfway between two bf16 values, even below: rounds down
            0x3F818000,  # halfway, odd below: rounds up
            0x00000001,  # smallest subnormal
            0x80000000,  # -0.0
            0x477FF000,  # 65520: rounds to inf in f16
        ],
        dtype=np.uint32,
    )
    x = bits.view(np.float32)
    got = quantize(x, name)
    np.testing.assert_array_equal(got, _gguf_quantize(x, name))
    if name == "bf16":
        out = got.view("<u2")
        assert out[3] == 0x7FC0 and out[5] == 0x7F80 and out[6] == 0x3F80 and out[7] == 0x3F82


def test_quantize_q4_0_all_zero_block_follows_ggml():
    # ggml starts its scan with max = +0.0 and only replaces it on a strictly larger magnitude, so an all-zero block
    # gets d = 0.0 / -8 = -0.0 whatever the zeros' signs (gguf's numpy port takes the first element's sign instead).
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = -0.0
    raw = quantize(x, "q4_0")
    assert raw[:2].tobytes() == b"\x00\x80"
    assert (raw[2:] == 0x88).all()  # every value stored as 8, i.e. zero
    np.testing.assert_array_equal(quantize(np.zeros((1, 32), np.float32), "q4_0"), raw)


@pytest.mark.parametrize("name", ["q4_k", "iq2_xs", "mxfp4", "f16"])
def test_chunk_boundaries(name, monkeypatch):
    # Force tiny chunks so a tensor spans many, with a short last one.
    monkeypatch.setattr(reference, "_CHUNK_VALUES", 512)
    rng = np.random.default_rng(3)
    t = QUANT_TYPES[name]
    shape = (7, 3 * max(t.block_size, 64))
    raw = _random_blocks(name, shape, rng)
    assert_bits_equal(dequantize(raw, name, shape), _gguf_dequantize(raw, name, shape))
    if name in GGUF_QUANTIZABLE:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(quantize(x, name), _gguf_quantize(x, name))


def test_round_trip_and_argument_forms():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    raw = quantize(x, get("q8_0"))
    out = dequantize(raw.tobytes(), "Q8_0", (2, 3, 64))  # bytes, and names are case-insensitive
    assert out.shape == (2, 3, 64) and out.dtype == np.float32
    assert np.abs(out - x).max() < np.abs(x).max() / 127  # q8_0 is within one step of the block scale
    assert_bits_equal(dequantize(raw.reshape(12, 34), QUANT_TYPES["q8_0"], (2, 3, 64)), out)
    assert dequantize(np.zeros(0, np.uint8), "q4_k", (0, 256)).shape == (0, 256)
    assert quantize(np.float64(1.5), "f32").view(np.float32).tolist() == [1.5]


def test_grid_tables_match_gguf_and_ggml():
    np.testing.assert_array_equal(grids.ksigns(), np.frombuffer(gguf_quants.IQ2_XXS.ksigns, np.uint8))
    np.testing.assert_array_equal(grids.kvalues_iq4nl(), gguf_quants.IQ4_NL.kvalues)
    np.testing.assert_array_equal(grids.kvalues_mxfp4(), gguf_quants.MXFP4.kvalues)
    # First entries as written in ggml-common.h (each uint64/uint32 holds one byte per value, lowest byte first).
    ggml_entries = {
        "iq2xxs": (np.uint64, [0x0808080808080808, 0x080808080808082B, 0x0808080808081919, 0x0808080808082B08]),
        "iq3s": (np.uint32, [0x01010101, 0x01010103, 0x01010105, 0x0101010B, 0x0101010F, 0x01010301]),
        "iq1s": (np.uint64, [0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFF01]),
    }
    for name, (dtype, entries) in ggml_entries.items():
        expected = (
            np.array(entries, dtype=dtype).view(np.int8 if name == "iq1s" else np.uint8).reshape(len(entries), -1)
        )
        np.testing.assert_array_equal(grids.grid(name)[: len(entries)], expected, err_msg=name)
    shapes = {"iq2xxs": (256, 8), "iq2xs": (512, 8), "iq2s": (1024, 8), "iq3xxs": (256, 4), "iq3s": (512, 4)}
    for name, shape in {**shapes, "iq1s": (2048, 8)}.items():
        assert grids.grid(name).shape == shape


# ---------------------------------------------------------------------------------------------------------------------
# Errors a user can cause


def test_unknown_type():
    with pytest.raises(QuantError, match="unknown quant type 'q9_9'.*q4_0"):
        dequantize(np.zeros(18, np.uint8), "q9_9", (32,))
    with pytest.raises(QuantError, match="unknown quant type"):
        quantize(np.zeros(32, np.float32), "nope")
    with pytest.raises(QuantError, match="not int"):
        dequantize(np.zeros(18, np.uint8), 2, (32,))


def test_wrong_byte_length_names_type_and_sizes():
    with pytest.raises(QuantError, match=r"q4_k tensor of shape \(2, 256\) takes 288 bytes.*287 bytes were given"):
        dequantize(np.zeros(287, np.uint8), "q4_k", (2, 256))
    with pytest.raises(QuantError, match="takes 4 bytes.*8 bytes"):
        dequantize(np.zeros(8, np.uint8), "f32", (1,))


def test_row_not_a_multiple_of_the_block():
    with pytest.raises(QuantError, match="row of 100 values cannot be stored as q4_0: its block size is 32"):
        dequantize(np.zeros(100, np.uint8), "q4_0", (4, 100))
    with pytest.raises(QuantError, match="row of 128 values cannot be stored as tq2_0: its block size is 256"):
        quantize(np.zeros((2, 128), np.float32), "tq2_0")
    with pytest.raises(QuantError, match="negative"):
        dequantize(np.zeros(0, np.uint8), "q8_0", (-1, 32))


def test_quantize_unsupported_type_lists_the_supported_ones():
    for name in ["iq2_xxs", "iq3_s", "iq1_m"]:
        with pytest.raises(QuantError, match=f"cannot quantize to {name}.*q8_0.*tq2_0"):
            quantize(np.zeros((1, 256), np.float32), name)


def test_quantize_rejects_non_finite_for_block_types():
    x = np.zeros((2, 32), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(QuantError, match=r"shape \(2, 32\).*NaN or infinity to q8_0"):
        quantize(x, "q8_0")
    x[1, 5] = -np.inf
    with pytest.raises(QuantError, match="q4_1"):
        quantize(x, "q4_1")
