"""safetensors reader: round trips against files written by the safetensors package."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.errors import FormatError
from sdcompile.formats import open_store
from sdcompile.formats.safetensors import SafetensorsStore
from tests.formats.samples import make_safetensors, safetensors_bytes

_OURS = {
    np.dtype("float32"): "f32",
    np.dtype("float16"): "f16",
    np.dtype("float64"): "f64",
    np.dtype("int64"): "i64",
    np.dtype("int32"): "i32",
    np.dtype("int16"): "i16",
    np.dtype("int8"): "i8",
    np.dtype("uint8"): "u8",
    np.dtype("bool"): "bool",
}


def test_round_trip_numpy(tmp_path):
    path = tmp_path / "m.safetensors"
    want = make_safetensors(path)
    with open_store(path) as st:
        assert isinstance(st, SafetensorsStore)
        assert st.format == "safetensors"
        assert st.metadata == {"format": "pt", "note": "tiny"}
        assert sorted(st.names()) == sorted(want)
        for name, a in want.items():
            info = st.info(name)
            assert info.shape == a.shape
            assert info.dtype == _OURS[a.dtype]
            assert info.nbytes == a.nbytes
            assert st.raw(name).dtype == np.uint8
            assert st.raw(name).tobytes() == a.tobytes()
            got = st.array(name)
            assert got.dtype == a.dtype and got.shape == a.shape
            np.testing.assert_array_equal(got, a)


def test_bf16_and_fp8_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t32 = torch.randn(4, 8)
    tensors = {
        "bf": t32.to(torch.bfloat16),
        "e4m3": t32.to(torch.float8_e4m3fn),
        "e5m2": t32.to(torch.float8_e5m2),
    }
    path = tmp_path / "b.safetensors"
    save_file(tensors, str(path))
    st = open_store(path)
    assert st.info("bf").dtype == "bf16" and st.info("bf").nbytes == 64
    assert st.info("e4m3").dtype == "f8_e4m3" and st.info("e5m2").dtype == "f8_e5m2"
    for name, t in tensors.items():
        got = st.array(name)
        assert got.dtype == np.float32 and got.shape == (4, 8)
        np.testing.assert_array_equal(got, t.float().numpy())
        assert st.raw(name).tobytes() == t.view(torch.uint8).numpy().tobytes()


def test_fp8_e4m3_all_bit_patterns(tmp_path):
    torch = pytest.importorskip("torch")
    bits = np.arange(256, dtype=np.uint8)
    header = {"x": {"dtype": "F8_E4M3", "shape": [256], "data_offsets": [0, 256]}}
    path = tmp_path / "f8.safetensors"
    path.write_bytes(safetensors_bytes(header, bits.tobytes()))
    got = open_store(path).array("x")
    want = torch.from_numpy(bits).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(got, want)  # NaN positions compare equal in assert_array_equal


def test_raw_is_a_view_of_the_map(tmp_path):
    path = tmp_path / "m.safetensors"
    make_safetensors(path)
    st = open_store(path)
    r = st.raw("w.f32")
    assert not r.flags.owndata and not r.flags.writeable
    arr = st.array("w.f32")
    st.close()
    assert arr.sum() == pytest.approx(float(arr.sum()))  # views stay valid after close


def test_empty_header_and_padding(tmp_path):
    # the spec allows trailing spaces in the header (used for alignment)
    path = tmp_path / "pad.safetensors"
    header = b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}   '
    path.write_bytes(safetensors_bytes(header, b"\x01\x02"))
    st = open_store(path)
    assert st.array("a").tolist() == [1, 2]
    path2 = tmp_path / "none.safetensors"
    path2.write_bytes(safetensors_bytes({}, b""))
    assert len(open_store(path2)) == 0


def test_unknown_tensor_name_is_keyerror(tmp_path):
    path = tmp_path / "m.safetensors"
    make_safetensors(path)
    with pytest.raises(KeyError, match="nope"):
        open_store(path).raw("nope")


def test_overlap_rejected(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = tmp_path / "o.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(12)))
    with pytest.raises(FormatError, match="overlap"):
        open_store(path)
