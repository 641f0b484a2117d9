"""ONNX reader: initializers from raw_data, typed fields and external data; metadata; external-path safety."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sdcompile.errors import FormatError
from sdcompile.formats import open_store
from sdcompile.formats.onnx import OnnxStore


def _model(inits: list[TensorProto], opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = (
        [helper.make_node("Add", ["x", inits[0].name], ["y"])]
        if inits
        else [helper.make_node("Identity", ["x"], ["y"])]
    )
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    m = helper.make_model(
        g, producer_name="sdcompile-test", producer_version="1.2", opset_imports=[helper.make_opsetid("", opset)]
    )
    helper.set_model_props(m, {"author": "me"})
    return m


def _inits(rng):
    w = rng.standard_normal((2, 3)).astype(np.float32)
    f16 = rng.standard_normal((4,)).astype(np.float16)
    bf_bits = rng.integers(0, 2**16, size=(3,), dtype=np.uint16)
    tensors = {
        "w_raw": (numpy_helper.from_array(w, "w_raw"), "f32", w),
        "w_float_data": (helper.make_tensor("w_float_data", TensorProto.FLOAT, [2, 3], w.ravel().tolist()), "f32", w),
        "i64_typed": (helper.make_tensor("i64_typed", TensorProto.INT64, [3], [1, -2, 3]), "i64", np.array([1, -2, 3])),
        "i8_typed": (helper.make_tensor("i8_typed", TensorProto.INT8, [2], [-5, 7]), "i8", np.array([-5, 7], np.int8)),
        "u8_typed": (
            helper.make_tensor("u8_typed", TensorProto.UINT8, [2], [250, 7]),
            "u8",
            np.array([250, 7], np.uint8),
        ),
        "b_typed": (
            helper.make_tensor("b_typed", TensorProto.BOOL, [2], [True, False]),
            "bool",
            np.array([True, False]),
        ),
        "f16_typed": (helper.make_tensor("f16_typed", TensorProto.FLOAT16, [4], f16), "f16", f16),
        "f64_typed": (
            helper.make_tensor("f64_typed", TensorProto.DOUBLE, [2], [0.5, -1.0]),
            "f64",
            np.array([0.5, -1.0]),
        ),
        "u64_typed": (
            helper.make_tensor("u64_typed", TensorProto.UINT64, [1], [2**63 + 1]),
            "u64",
            np.array([2**63 + 1], np.uint64),
        ),
        "f16_raw": (numpy_helper.from_array(f16, "f16_raw"), "f16", f16),
        "i32_raw": (
            numpy_helper.from_array(np.arange(6, dtype=np.int32).reshape(3, 2), "i32_raw"),
            "i32",
            np.arange(6, dtype=np.int32).reshape(3, 2),
        ),
        "bf16_typed": (
            helper.make_tensor("bf16_typed", TensorProto.BFLOAT16, [3], bf_bits.astype(np.int32).tolist(), raw=False),
            "bf16",
            (bf_bits.astype(np.uint32) << 16).view(np.float32),
        ),
        "scalar": (numpy_helper.from_array(np.array(3.0, np.float32), "scalar"), "f32", np.array(3.0, np.float32)),
    }
    # make_tensor for BFLOAT16 with ints converts values; write the bit patterns directly
    tensors["bf16_typed"][0].ClearField("int32_data")
    tensors["bf16_typed"][0].int32_data.extend(bf_bits.astype(np.int32).tolist())
    return tensors


def _check(st, tensors):
    for name, (_, dtype, want) in tensors.items():
        info = st.info(name)
        assert info.dtype == dtype, name
        assert info.shape == want.shape, name
        got = st.array(name)
        np.testing.assert_array_equal(got, want, err_msg=name)
        if dtype != "bf16":
            assert got.dtype == want.dtype, name
            assert st.raw(name).tobytes() == np.ascontiguousarray(want).tobytes(), name
        else:
            assert got.dtype == np.float32


def test_inline_initializers_and_metadata(tmp_path, rng):
    tensors = _inits(rng)
    path = tmp_path / "m.onnx"
    onnx.save(_model([t for t, _, _ in tensors.values()]), str(path))
    st = open_store(path)
    assert isinstance(st, OnnxStore) and st.format == "onnx"
    assert st.names() == list(tensors)
    _check(st, tensors)
    md = st.metadata
    assert md["opset"] == 17 and md["opset_imports"] == {"ai.onnx": 17}
    assert md["producer_name"] == "sdcompile-test" and md["producer_version"] == "1.2"
    assert md["inputs"] == ["x"] and md["outputs"] == ["y"]
    assert md["metadata_props"] == {"author": "me"}
    assert len(st.model.graph.node) == 1  # the graph stays available to the importer


def test_external_data(tmp_path, rng):
    tensors = _inits(rng)
    big = rng.standard_normal((64, 16)).astype(np.float32)
    tensors["big"] = (numpy_helper.from_array(big, "big"), "f32", big)
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save_model(
        _model([t for t, _, _ in tensors.values()]),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=64,
    )
    assert (path.parent / "weights.bin").stat().st_size >= big.nbytes
    st = open_store(path)
    _check(st, tensors)
    assert not st.raw("big").flags.owndata  # memory-mapped from weights.bin


def _external_model(tmp_path, location, data=None, offset=0, length=None):
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": str(offset), "length": str(16 if length is None else length)}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    if data is not None:
        (d / "w.bin").write_bytes(data)
    path = d / "m.onnx"
    onnx.save(_model([t]), str(path))
    return path


def test_external_data_offset(tmp_path):
    data = np.arange(8, dtype=np.float32).tobytes()
    st = open_store(_external_model(tmp_path, "w.bin", data, offset=16))
    np.testing.assert_array_equal(st.array("w"), np.arange(4, 8, dtype=np.float32))


@pytest.mark.parametrize(
    "location,problem",
    [
        ("../secret.bin", "outside the model's directory"),
        ("sub/../../secret.bin", "outside the model's directory"),
        ("/etc/passwd", "absolute path"),
        ("link.bin", "outside the model's directory"),
        ("missing.bin", "missing"),
    ],
)
def test_external_paths_must_stay_inside(tmp_path, location, problem):
    (tmp_path / "secret.bin").write_bytes(bytes(16))
    path = _external_model(tmp_path, location)
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(FormatError, match=problem) as ei:
        open_store(path)
    assert "m.onnx" in str(ei.value)


def test_external_data_truncated(tmp_path):
    path = _external_model(tmp_path, "w.bin", bytes(8))
    with pytest.raises(FormatError, match="only 8 bytes"):
        open_store(path)


def test_unsupported_dtype_named(tmp_path):
    t = helper.make_tensor("s", TensorProto.STRING, [1], [b"hi"])
    path = tmp_path / "s.onnx"
    onnx.save(_model([t]), str(path))
    with pytest.raises(FormatError, match=r"'s' has ONNX data type STRING"):
        open_store(path)


# --- issue 9: external data locations that broke path handling, shapes numpy cannot hold, exporter names ----------


def _with_bytes(path, placeholder: str, raw: bytes) -> None:
    """Swap a string in a saved model for bytes of the same length (the protobuf API takes only valid UTF-8)."""
    data = path.read_bytes()
    assert len(placeholder) == len(raw) and data.count(placeholder.encode()) == 1
    path.write_bytes(data.replace(placeholder.encode(), raw))


@pytest.mark.parametrize(
    "location,problem",
    [
        ("w.bin\x00.txt", "with a NUL byte"),  # was ValueError: embedded null byte
        ("a" * 300, "is a name too long for the file system"),  # was OSError ENAMETOOLONG
        ("ab/" * 1500 + "w", "is a name too long for the file system"),
        ("loop", "is a symlink loop"),  # was RuntimeError from pathlib
        ("loop_a/w.bin", "is a symlink loop"),
        ("sub", "is not a regular file"),
        ("w.bin/x", "goes through something that is not a directory|is missing"),
    ],
)
def test_external_location_problems(tmp_path, location, problem):
    path = _external_model(tmp_path, location, bytes(16))
    d = path.parent
    (d / "loop").symlink_to("loop")
    (d / "loop_a").symlink_to("loop_b")
    (d / "loop_b").symlink_to("loop_a")
    (d / "sub").mkdir()
    with pytest.raises(FormatError, match=problem) as ei:
        open_store(path)
    assert str(ei.value).startswith(str(path) + ": ")


def test_external_location_not_utf8(tmp_path):
    path = _external_model(tmp_path, "PLACEHOLDER", bytes(16))
    _with_bytes(path, "PLACEHOLDER", b"\xffweights.b\xfe")  # the protobuf library hands it back as bytes
    with pytest.raises(FormatError, match=r"m\.onnx: initializer 'w' has an external data location that is not UTF-8"):
        open_store(path)


def test_initializer_name_not_utf8(tmp_path):
    t = numpy_helper.from_array(np.ones(3, np.float32), "NAME_HERE")
    path = tmp_path / "n.onnx"
    onnx.save(_model([t]), str(path))
    data = path.read_bytes().replace(b"NAME_HERE", b"\xffNAME_HER")  # in the initializer and the Add node's input
    path.write_bytes(data)
    with pytest.raises(FormatError, match=r"n\.onnx: has an initializer whose name is not UTF-8"):
        open_store(path)


@pytest.mark.parametrize("dims,problem", [([0, 2**63 - 1], "larger than any array"), ([1] * 69 + [0], "70 dimensions")])
def test_shapes_numpy_cannot_hold(tmp_path, dims, problem):
    # a zero-element initializer with a huge dimension needs no data, and numpy's reshape failed on it
    path = tmp_path / "z.onnx"
    onnx.save(_model([helper.make_tensor("w", TensorProto.FLOAT, dims, [])]), str(path))
    with pytest.raises(FormatError, match=rf"z\.onnx: initializer 'w' .*{problem}"):
        open_store(path)


def _exported_names_model(tmp_path):
    """Initializers named as torch.onnx.export names them with its default options: a Linear's weight, transposed
    and folded into a constant, is renamed after the MatMul that uses it."""
    inits = [
        numpy_helper.from_array(np.zeros((10, 8), np.float32), "embeddings.token_embedding.weight"),
        numpy_helper.from_array(np.zeros((4, 8), np.float32), "embeddings.position_embedding.weight"),
        numpy_helper.from_array(np.zeros(16, np.float32), "encoder.layers.0.mlp.fc1.bias"),
        numpy_helper.from_array(np.zeros((8, 16), np.float32), "onnx::MatMul_10"),
    ]
    path = tmp_path / "exported.onnx"
    onnx.save(_model(inits), str(path))
    return path


def test_exporter_renamed_weights_are_a_clear_error(tmp_path):
    from sdcompile.errors import UnsupportedModelError

    st = open_store(_exported_names_model(tmp_path))
    assert st.exporter_names == ["onnx::MatMul_10"]
    assert "encoder.layers.0.mlp.fc1.weight" not in st  # membership asks, it does not fail
    assert st.info("encoder.layers.0.mlp.fc1.bias").shape == (16,)
    for read in (st.info, st.raw, st.array):
        with pytest.raises(UnsupportedModelError) as ei:
            read("encoder.layers.0.mlp.fc1.weight")
        msg = str(ei.value)
        assert msg.startswith(f"{st.path}: has no weight named 'encoder.layers.0.mlp.fc1.weight'")
        assert "torch.onnx.export renamed 1 of its 4 weights" in msg and "onnx::MatMul_10" in msg
        assert "safetensors.torch.save_file" in msg and "do_constant_folding=False" in msg


def test_unknown_name_without_exporter_names_stays_a_key_error(tmp_path, rng):
    path = tmp_path / "m.onnx"
    onnx.save(_model([t for t, _, _ in _inits(rng).values()]), str(path))
    with pytest.raises(KeyError):
        open_store(path).info("nope")


def test_torch_export_with_default_names_fails_compile_in_one_line(tmp_path, capsys):
    """The issue's case end to end: torch.onnx.export (TorchScript exporter) of a model whose names look like a CLIP
    text encoder, then `sdcompile compile`: one error line naming the file and what to do, not a KeyError traceback."""
    torch = pytest.importorskip("torch")
    from sdcompile.cli import main

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = torch.nn.Module()
            self.embeddings.token_embedding = torch.nn.Embedding(10, 8)
            self.embeddings.position_embedding = torch.nn.Embedding(4, 8)
            layer = torch.nn.Module()
            layer.mlp = torch.nn.Module()
            layer.mlp.fc1 = torch.nn.Linear(8, 16)
            self.encoder = torch.nn.Module()
            self.encoder.layers = torch.nn.ModuleList([layer])

        def forward(self, ids):
            h = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding.weight
            return self.encoder.layers[0].mlp.fc1(h)

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, 4, dtype=torch.long),), str(path), dynamo=False)
    names = [t.name for t in onnx.load(str(path)).graph.initializer]
    assert any(n.startswith("onnx::MatMul_") for n in names), names  # the exporter's renaming, as the issue met it
    rc = main(["compile", str(path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"sdcompile: error: {path}: has no weight named 'encoder.layers.0.mlp.fc1.weight'"), err
