"""GGUF reader: round trips against files written by gguf.GGUFWriter, cross-checked with gguf.GGUFReader."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from sdcompile.formats import open_store
from sdcompile.formats.gguf import GGUFStore
from tests.formats.samples import gguf_bytes, gguf_string

# types gguf.quants.quantize supports bit-exactly, with the numpy shapes we store them in
QUANTIZED = [
    (Q.Q4_0, (3, 64)),
    (Q.Q4_1, (2, 32)),
    (Q.Q5_0, (2, 2, 64)),
    (Q.Q5_1, (4, 32)),
    (Q.Q8_0, (5, 96)),
    (Q.TQ1_0, (2, 256)),
    (Q.TQ2_0, (1, 512)),
    (Q.MXFP4, (2, 64)),
    (Q.BF16, (3, 7)),
]
# types only ggml can quantize: written as random blocks with raw_dtype, compared byte for byte
RANDOM_BLOCKS = [(Q.Q4_K, (2, 256)), (Q.Q6_K, (1, 512)), (Q.IQ4_XS, (3, 256)), (Q.Q2_K, (2, 2, 256))]

METADATA = [
    ("m.u8", 200, V.UINT8),
    ("m.i8", -100, V.INT8),
    ("m.u16", 60000, V.UINT16),
    ("m.i16", -30000, V.INT16),
    ("m.u32", 4_000_000_000, V.UINT32),
    ("m.i32", -2_000_000_000, V.INT32),
    ("m.f32", 0.5, V.FLOAT32),
    ("m.bool", True, V.BOOL),
    ("m.str", "héllo wörld", V.STRING),
    ("m.u64", 2**63 + 5, V.UINT64),
    ("m.i64", -(2**62), V.INT64),
    ("m.f64", 1.25e-300, V.FLOAT64),
    ("m.arr_i32", [1, -2, 3], V.ARRAY),
    ("m.arr_f32", [0.25, 1.5], V.ARRAY),
    ("m.arr_str", ["a", "bc", "", "日本"], V.ARRAY),
    ("m.arr_bool", [True, False], V.ARRAY),
    ("m.arr_nested", [[1, 2], [3]], V.ARRAY),
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, val, vt in METADATA:
        w.add_key_value(key, val, vt)
    expect: dict[str, tuple[str, tuple, bytes, np.ndarray]] = {}
    for qt, shape in QUANTIZED:
        x = rng.standard_normal(shape).astype(np.float32)
        q = gguf.quants.quantize(x, qt)
        name = f"q.{qt.name.lower()}"
        w.add_tensor(name, q, raw_dtype=qt)
        expect[name] = (qt.name.lower(), shape, q.tobytes(), gguf.quants.dequantize(q, qt))
    for qt, shape in RANDOM_BLOCKS:
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        q = rng.integers(0, 256, size=(*shape[:-1], shape[-1] // bs * ts), dtype=np.uint8)
        name = f"r.{qt.name.lower()}"
        w.add_tensor(name, q, raw_dtype=qt)
        expect[name] = (qt.name.lower(), shape, q.tobytes(), gguf.quants.dequantize(q, qt))
    plain = {
        "p.f32": rng.standard_normal((3, 4)).astype(np.float32),
        "p.f16": rng.standard_normal((5,)).astype(np.float16),
        "p.f64": rng.standard_normal((2, 2)).astype(np.float64),
        "p.i8": np.arange(-4, 4, dtype=np.int8),
        "p.i16": np.arange(6, dtype=np.int16).reshape(3, 2),
        "p.i32": np.arange(5, dtype=np.int32),
        "p.i64": np.arange(4, dtype=np.int64).reshape(2, 2),
        "p.4d": rng.standard_normal((2, 3, 1, 4)).astype(np.float32),
    }
    names = {np.float32: "f32", np.float16: "f16", np.float64: "f64", np.int8: "i8", np.int16: "i16"}
    names |= {np.int32: "i32", np.int64: "i64"}
    for name, a in plain.items():
        w.add_tensor(name, a)
        expect[name] = (names[a.dtype.type], a.shape, a.tobytes(), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, expect


def test_metadata_every_type(written):
    path, _ = written
    st = open_store(path)
    assert isinstance(st, GGUFStore) and st.format == "gguf"
    assert st.version == 3 and st.alignment == 32
    assert st.metadata["general.architecture"] == "llama"
    for key, val, vt in METADATA:
        got = st.metadata[key]
        if vt == V.FLOAT32:
            assert got == pytest.approx(val)
        elif key == "m.arr_f32":
            assert got == pytest.approx(val)
        else:
            assert got == val, key
        assert st.metadata_types[key][0] == int(vt)
    assert st.metadata_types["m.arr_str"] == (int(V.ARRAY), int(V.STRING))


def test_tensors_match_writer_and_reader(written):
    path, expect = written
    st = open_store(path)
    ref = gguf.GGUFReader(str(path))
    assert st.names() == [t.name for t in ref.tensors]
    assert st.data_offset == ref.data_offset
    for t in ref.tensors:
        dtype, shape, raw, _ = expect[t.name]
        info = st.info(t.name)
        assert info.dtype == dtype, t.name
        assert info.shape == tuple(shape) == tuple(int(d) for d in reversed(t.shape))  # GGUF stores innermost first
        assert info.nbytes == len(raw) == t.n_bytes
        got = st.raw(t.name)
        assert got.dtype == np.uint8 and got.tobytes() == raw
        assert not got.flags.owndata  # a view of the memory map


def test_plain_arrays(written):
    path, expect = written
    st = open_store(path)
    for name, (_dtype, shape, _raw, want) in expect.items():
        if name.startswith("p."):
            got = st.array(name)
            assert got.dtype == want.dtype and got.shape == shape
            np.testing.assert_array_equal(got, want)
    bf = st.array("q.bf16")
    assert bf.dtype == np.float32 and bf.shape == (3, 7)
    np.testing.assert_array_equal(bf, expect["q.bf16"][3])


def test_quant_arrays_use_reference_dequantize(written):
    pytest.importorskip("sdcompile.quant.reference")
    path, expect = written
    st = open_store(path)
    for name, (_dtype, shape, _raw, want) in expect.items():
        if name[:2] in ("q.", "r."):
            got = st.array(name)
            assert got.shape == shape and got.dtype == np.float32
            np.testing.assert_array_equal(got, want)


def test_version2_custom_alignment_and_byte_strings(tmp_path):
    kvs = [
        ("general.alignment", 4, (64).to_bytes(4, "little")),
        (
            "tok",
            9,
            (8).to_bytes(4, "little") + (2).to_bytes(8, "little") + gguf_string(b"\xff\xfe") + gguf_string("ok"),
        ),
    ]
    data = np.arange(16, dtype=np.float32).tobytes()
    path = tmp_path / "v2.gguf"
    path.write_bytes(gguf_bytes(kvs, [("a", [16], 0, 0)], data, version=2, alignment=64))
    st = open_store(path)
    assert st.version == 2 and st.alignment == 64 and st.data_offset % 64 == 0
    assert st.metadata["tok"] == [b"\xff\xfe", "ok"]  # invalid UTF-8 kept as bytes, not an error
    np.testing.assert_array_equal(st.array("a"), np.arange(16, dtype=np.float32))
