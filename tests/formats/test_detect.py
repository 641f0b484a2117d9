"""Format detection looks at content only: files with wrong or no extensions open with the right reader."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sdcompile.errors import FormatError
from sdcompile.formats import FORMATS, TensorInfo, TensorStore, detect_format, open_store
from tests.formats.samples import make_safetensors, simple_gguf


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    make_safetensors(d / "a.safetensors")
    (d / "a.gguf").write_bytes(simple_gguf())
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {"w": torch.arange(4.0)}}, d / "a.ckpt")
    torch.save({"w": torch.arange(4.0)}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    init = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [init])
    onnx.save(helper.make_model(g), str(d / "a.onnx"))
    return {
        "safetensors": d / "a.safetensors",
        "gguf": d / "a.gguf",
        "ckpt": d / "a.ckpt",
        "legacy": d / "legacy.pt",
        "onnx": d / "a.onnx",
    }


WRONG_NAMES = ["model.png", "weights.txt", "noextension", "x.safetensors", "x.gguf", "x.ckpt", "x.onnx", "x.bin"]


@pytest.mark.parametrize("kind", ["safetensors", "gguf", "ckpt", "legacy", "onnx"])
@pytest.mark.parametrize("new_name", WRONG_NAMES)
def test_detect_from_content_not_name(samples, tmp_path, kind, new_name):
    dst = tmp_path / new_name
    shutil.copy(samples[kind], dst)
    fmt = "ckpt" if kind == "legacy" else kind
    assert fmt in FORMATS
    assert detect_format(dst) == fmt
    with open_store(dst) as st:
        assert isinstance(st, TensorStore) and st.format == fmt and len(st) > 0
        for info in st.infos():
            assert isinstance(info, TensorInfo)
            st.raw(info.name)
            st.array(info.name)


def test_every_store_same_values(samples):
    want = np.arange(4, dtype=np.float32)
    for kind in ("ckpt", "legacy", "onnx"):
        np.testing.assert_array_equal(open_store(samples[kind]).array("w"), want)
    np.testing.assert_array_equal(open_store(samples["gguf"]).array("t"), np.arange(8, dtype=np.float32).reshape(2, 4))


@pytest.mark.parametrize(
    "content,expect",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG image"),
        (b"\xff\xd8\xff\xe0" + bytes(64), "JPEG image"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git lfs pull"),
        (b"<!DOCTYPE html><html></html>", "HTML page"),
        (b'{"_class_name": "UNet2DConditionModel"}', "JSON file"),
        (b"hello, this is just some text\n", "text file"),
        (b"\x1f\x8b\x08\x00" + bytes(30), "gzip"),
        (bytes(range(7, 100)), "unknown format"),
        (b"PK\x03\x04", "zip"),
        (b"GGML" + bytes(20), "pre-GGUF"),
    ],
)
def test_not_a_model(tmp_path, content, expect):
    p = tmp_path / "thing.safetensors"
    p.write_bytes(content)
    with pytest.raises(FormatError, match=expect) as ei:
        open_store(p)
    assert str(p) in str(ei.value)


def test_zip_without_data_pkl(tmp_path):
    import zipfile

    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(FormatError, match="without a data.pkl"):
        detect_format(p)
