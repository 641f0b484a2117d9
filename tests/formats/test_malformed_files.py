"""Every malformed input raises one FormatError that names the file, quickly, without allocating what it claims."""

from __future__ import annotations

import pickle
import re
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sdcompile.errors import FormatError
from sdcompile.formats import open_store
from tests.formats.samples import (
    FakeStorage,
    FakeTensor,
    craft_pickle,
    gguf_bytes,
    legacy_ckpt,
    make_safetensors,
    safetensors_bytes,
    simple_gguf,
    zip_ckpt,
)

u32 = lambda v: struct.pack("<I", v)  # noqa: E731
u64 = lambda v: struct.pack("<Q", v)  # noqa: E731

CASES: dict[str, tuple] = {}  # id -> (builder(tmp_path) -> Path, regex the message must match or None)


def case(name: str, match: str | None = None):
    def deco(fn):
        CASES[name] = (fn, match)
        return fn

    return deco


def write(tmp_path: Path, data: bytes, name: str = "bad.bin") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def st_file(header, data=b"", length=None):
    return lambda tmp: write(tmp, safetensors_bytes(header, data, length), "bad.safetensors")


def one(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"a": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}}


# --- any file ----------------------------------------------------------------------------------------------------

case("missing", "no such file")(lambda tmp: tmp / "nope.safetensors")
case("directory", "is a directory")(lambda tmp: (tmp / "dir.gguf").mkdir() or tmp / "dir.gguf")
case("empty", "empty")(lambda tmp: write(tmp, b"", "empty.ckpt"))
case("png", "PNG")(lambda tmp: write(tmp, b"\x89PNG\r\n\x1a\n" + bytes(100), "img.safetensors"))
case("text", "text file")(lambda tmp: write(tmp, b"model weights go here\n", "w.gguf"))
case("one_byte")(lambda tmp: write(tmp, b"\x80"))
case("random_binary", "unknown format")(lambda tmp: write(tmp, np.random.default_rng(0).bytes(4096)))

# --- safetensors -------------------------------------------------------------------------------------------------


def _st_valid(tmp):
    p = tmp / "ok.safetensors"
    make_safetensors(p)
    return p.read_bytes()


for _cut in (3, 8, 9, 40, -1, -30):

    @case(f"st_truncated_at_{_cut}")
    def _st_trunc(tmp, cut=_cut):
        data = _st_valid(tmp)
        return write(tmp, data[:cut], "bad.safetensors")


case("st_header_len_2^63", "header of")(st_file(one(), bytes(8), length=2**63))
case("st_header_len_past_eof", "truncated")(st_file(one(), bytes(8), length=5000))
case("st_garbage_json", "not valid JSON")(st_file(b'{"a": {"dtype": "F32", "shape": [2', bytes(8)))
case("st_invalid_utf8", "not valid JSON")(st_file(b'{"\xff\xfe": 1}', bytes(8)))
case("st_duplicate_key", "duplicate")(st_file(b'{"a": {}, "a": {}}'))
case("st_unknown_dtype", "unknown dtype 'X99'")(st_file(one(dtype="X99"), bytes(8)))
case("st_offset_past_end", "past its end")(st_file(one(shape=(250,), offs=(0, 1000)), bytes(8)))
case("st_begin_after_end", "begin > end")(st_file(one(offs=(8, 0)), bytes(8)))
case("st_negative_offset", "begin > end or negative")(st_file(one(offs=(-8, 0)), bytes(8)))
case("st_wrong_byte_length", "needs 12 bytes")(st_file(one(shape=(3,), offs=(0, 8)), bytes(8)))
case("st_negative_dim", "invalid shape")(st_file(one(shape=(-1, 2)), bytes(8)))
case("st_dims_2^40", "larger than any array")(st_file(one(shape=(2**40, 2**40)), bytes(8)))
case("st_shape_not_list", "invalid shape")(st_file({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}))
case("st_offsets_not_pair", "invalid data_offsets")(st_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}))
case("st_entry_not_object", "not a JSON object")(st_file({"a": 5}))
case("st_metadata_not_object", "__metadata__")(st_file({"__metadata__": [1]}))
# a zero-element tensor passes a bytes == prod(shape) check whatever its other dimensions say (issue 9)
case("st_zero_by_1e30", "larger than any array")(st_file(one(shape=(0, 10**30), offs=(0, 0))))
case("st_zero_by_2^63", "larger than any array")(st_file(one(shape=(0, 2**63 - 1), offs=(0, 0))))
case("st_70_dims", "70 dimensions")(st_file(one(shape=(1,) * 70, offs=(0, 4)), bytes(4)))
case("st_overlap", "overlap")(
    st_file({**one(), "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
)

# --- GGUF --------------------------------------------------------------------------------------------------------

_G = simple_gguf()


def g_file(data: bytes):
    return lambda tmp: write(tmp, data, "bad.gguf")


def g_t(dims, tid=0, off=0, data=b"", kvs=None, **kw):
    return g_file(gguf_bytes(kvs, [("t", dims, tid, off)], data, **kw))


for _cut in (4, 6, 10, 20, 28, 40, 60, len(_G) - 40, len(_G) - 1):
    case(f"gguf_truncated_at_{_cut}", "truncated|past the end")(g_file(_G[:_cut]))

case("gguf_version_99", "unsupported GGUF version 99")(g_file(gguf_bytes(version=99)))
case("gguf_version_1", "version 1")(g_file(gguf_bytes(version=1)))
case("gguf_big_endian", "big-endian")(g_file(b"GGUF" + struct.pack(">I", 3) + struct.pack(">QQ", 0, 0)))
case("gguf_tensor_count_2^60", "claims 1152921504606846976 tensors")(g_file(gguf_bytes(n_tensors=2**60)))
case("gguf_kv_count_2^60", "metadata entries")(g_file(gguf_bytes(n_kv=2**60)))
case("gguf_key_len_2^62", "claims")(g_file(b"GGUF" + u32(3) + u64(0) + u64(1) + u64(2**62) + bytes(64)))
case("gguf_string_len_2^62", "claims")(g_file(gguf_bytes([("k", 8, u64(2**62) + bytes(64))])))
case("gguf_array_count_2^61", "elements in array")(g_file(gguf_bytes([("k", 9, u32(4) + u64(2**61) + bytes(64))])))
case("gguf_str_array_count_2^61", "elements in array")(g_file(gguf_bytes([("k", 9, u32(8) + u64(2**61) + bytes(64))])))
case("gguf_nested_arrays", "nests arrays")(g_file(gguf_bytes([("k", 9, (u32(9) + u64(1)) * 20 + u32(4) + u64(0))])))
case("gguf_unknown_value_type", "unknown value type 99")(g_file(gguf_bytes([("k", 99, bytes(16))])))
case("gguf_unknown_array_type", "unknown element type 77")(g_file(gguf_bytes([("k", 9, u32(77) + u64(1))])))
case("gguf_duplicate_key", "twice")(g_file(gguf_bytes([("k", 4, u32(1)), ("k", 4, u32(2))])))
case("gguf_key_not_utf8", "not UTF-8")(g_file(gguf_bytes([(b"\xff", 4, u32(1))])))
case("gguf_unknown_ggml_type", "unknown ggml type id 99")(g_t([4], tid=99, data=bytes(64)))
case("gguf_n_dims_5", "5 dimensions")(g_t([1, 1, 1, 1, 4], data=bytes(64)))
case("gguf_zero_dim", "invalid dimension 0")(g_t([4, 0], data=bytes(64)))
case("gguf_negative_dim", "invalid dimension")(g_t([2**64 - 1], data=bytes(64)))
case("gguf_dims_2^40", "past the end")(g_t([2**40, 2**40], data=bytes(64)))
case("gguf_offset_past_end", "past the end")(g_t([4], off=1 << 20, data=bytes(64)))
case("gguf_offset_2^63", "past the end")(g_t([4], off=2**63, data=bytes(64)))
case("gguf_misaligned_offset", "not a multiple of the alignment")(g_t([4], off=4, data=bytes(64)))
case("gguf_block_mismatch", "block size 32")(g_t([20], tid=2, data=bytes(64)))
case("gguf_bad_alignment", "power of two")(g_t([4], data=bytes(64), kvs=[("general.alignment", 4, u32(3))]))
case("gguf_duplicate_tensor", "two tensors")(g_file(gguf_bytes(None, [("t", [4], 0, 0), ("t", [4], 0, 32)], bytes(64))))
case("gguf_overlap", "overlap")(g_file(gguf_bytes(None, [("t", [8], 0, 0), ("u", [8], 0, 0)], bytes(64))))

# --- PyTorch checkpoints -----------------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def _zip_valid(tmp):
    torch = _torch()
    p = tmp / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.arange(64.0), "v": torch.ones(3, 3)}}, p)
    return p.read_bytes()


def _legacy_valid(tmp):
    torch = _torch()
    p = tmp / "ok.pt"
    torch.save({"w": torch.arange(64.0), "v": torch.ones(3, 3)}, p, _use_new_zipfile_serialization=False)
    return p.read_bytes()


for _frac in (0.1, 0.5, 0.9):

    @case(f"zip_truncated_at_{_frac}")
    def _zt(tmp, frac=_frac):
        d = _zip_valid(tmp)
        return write(tmp, d[: int(len(d) * frac)], "bad.ckpt")


for _cut in (5, 16, 30, 200, 400, -100, -8):

    @case(f"legacy_truncated_at_{_cut}")
    def _lt(tmp, cut=_cut):
        return write(tmp, _legacy_valid(tmp)[:cut], "bad.ckpt")


def _crafted(obj, storages=None, legacy=False):
    def build(tmp):
        _torch()
        st = storages if storages is not None else {"0": bytes(16)}
        if legacy:
            return legacy_ckpt(tmp / "bad.ckpt", craft_pickle(obj, legacy=True), [(k, v, 4) for k, v in st.items()])
        return zip_ckpt(tmp / "bad.ckpt", craft_pickle(obj), st)

    return build


_S = FakeStorage("0", 4)
case("ckpt_stride_out_of_bounds", "reaches byte")(_crafted({"w": FakeTensor(_S, 0, (4, 4), (4, 1))}))
case("ckpt_offset_2^40", "reaches byte")(_crafted({"w": FakeTensor(_S, 2**40, (1,), (1,))}))
case("ckpt_dims_2^40", "larger than any array")(_crafted({"w": FakeTensor(_S, 0, (2**40, 2**40), (2**40, 1))}))
case("ckpt_negative_size", "negative")(_crafted({"w": FakeTensor(_S, 0, (-1,), (1,))}))
case("ckpt_size_not_ints", "not a tuple of ints")(_crafted({"w": FakeTensor(_S, 0, ("a",), (1,))}))
case("ckpt_size_stride_mismatch", "different length")(_crafted({"w": FakeTensor(_S, 0, (2, 2), (1,))}))
case("ckpt_storage_missing", "missing")(_crafted({"w": FakeTensor(_S, 0, (4,), (1,))}, storages={}))
case("ckpt_storage_short", "should hold 16 bytes")(
    _crafted({"w": FakeTensor(_S, 0, (4,), (1,))}, storages={"0": bytes(8)})
)
case("ckpt_storage_huge_numel", "reaches byte|should hold")(
    _crafted({"w": FakeTensor(FakeStorage("0", 2**60), 0, (2**60,), (1,))})
)
case("ckpt_unsupported_dtype", "complex|does not read")(
    _crafted({"w": FakeTensor(FakeStorage("0", 2, "ComplexFloatStorage"), 0, (2,), (1,))})
)
case("ckpt_legacy_stride_out_of_bounds", "reaches byte")(
    _crafted({"w": FakeTensor(_S, 0, (4, 4), (4, 1))}, legacy=True)
)
case("ckpt_legacy_huge_numel_in_tail", "truncated")(
    lambda tmp: write(
        tmp,
        _legacy_valid(tmp)[:-300] + struct.pack("<q", 2**60),
        "bad.ckpt",
    )
)
# issue 9: a stride of 0 let a 2 KB file declare 2^33 elements, which raw() then materialized (32 GiB)
case("ckpt_stride0_2^33", "repeats the 4 elements of its storage into 8589934592")(
    _crafted({"w": FakeTensor(_S, 0, (2**33,), (0,))})
)
case("ckpt_stride0_rows", "repeats")(_crafted({"w": FakeTensor(_S, 0, (2**31, 4), (0, 1))}))
case("ckpt_legacy_stride0", "repeats")(_crafted({"w": FakeTensor(_S, 0, (2**33,), (0,))}, legacy=True))
case("ckpt_zero_by_1e30", "larger than any array")(_crafted({"w": FakeTensor(_S, 0, (0, 10**30), (1, 1))}))
case("ckpt_70_dims", "70 dimensions")(_crafted({"w": FakeTensor(_S, 0, (1,) * 70, (1,) * 70)}))
# pickles whose counts made CPython's unpickler allocate what they claim before reading it
case("ckpt_pickle_binbytes8_2^40", "expected 1099511627776 bytes")(
    lambda tmp: zip_ckpt(tmp / "bad.ckpt", b"\x80\x04\x8e" + u64(2**40) + b"abc.", {})
)
case("ckpt_pickle_memo_2^32", "memo entry 4294967280")(
    lambda tmp: zip_ckpt(tmp / "bad.ckpt", b"\x80\x02}r\xf0\xff\xff\xff.", {})
)
case("ckpt_legacy_pickle_binunicode_2^31", "expected 2147483647 bytes")(
    lambda tmp: write(tmp, b"\x80\x02X\xff\xff\xff\x7f" + _legacy_valid(tmp)[2:], "bad.ckpt")
)
case("ckpt_not_a_dict", "holds a list")(_crafted([1, 2, 3]))
case("ckpt_no_tensors", "no tensors")(_crafted({"epoch": 1}))
case("ckpt_garbage_pickle", "corrupt pickle")(lambda tmp: zip_ckpt(tmp / "bad.ckpt", b"\x80\x02garbage!", {}))
case("ckpt_empty_pickle", "corrupt pickle")(lambda tmp: zip_ckpt(tmp / "bad.ckpt", b"", {}))
case("ckpt_plain_pickle", "no torch magic")(lambda tmp: write(tmp, pickle.dumps({"w": [1.0, 2.0]}, protocol=4)))
case("ckpt_bad_legacy_protocol", "protocol")(
    lambda tmp: write(tmp, pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(7, protocol=2))
)
case("ckpt_deeply_nested_dicts", "nested more than 64")(
    lambda tmp: zip_ckpt(
        tmp / "bad.ckpt", b"\x80\x02" + b"}X\x01\x00\x00\x00a" * 200_000 + b"}" + b"s" * 200_000 + b".", {}
    )
)


def _zip_method(member: str, method: int):
    """The valid zip checkpoint with one member's compression method edited in both of its headers (issue 9)."""

    def build(tmp):
        from tests.fuzz.mutate import zip_records

        b = bytearray(_zip_valid(tmp))
        for r in zip_records(bytes(b))[0]:
            if r.name.endswith(member.encode()):
                struct.pack_into("<H", b, r.central + 10, method)
                struct.pack_into("<H", b, r.local + 8, method)
        return write(tmp, bytes(b), "bad.ckpt")

    return build


case("ckpt_pickle_method_deflate", "data.pkl cannot be inflated .deflate")(_zip_method("data.pkl", 8))
case("ckpt_pickle_method_lzma", "data.pkl has a damaged LZMA header")(_zip_method("data.pkl", 14))
case("ckpt_pickle_method_bzip2", "data.pkl cannot be inflated .bzip2")(_zip_method("data.pkl", 12))
case("ckpt_pickle_method_99", "compressed with method 99")(_zip_method("data.pkl", 99))
case("ckpt_storage_method_99", "compressed with method 99")(_zip_method("data/0", 99))
case("ckpt_byteorder_method_lzma", "byteorder is too short for an LZMA header")(_zip_method("byteorder", 14))


@case("ckpt_torchscript", "TorchScript")
def _ts(tmp):
    p = tmp / "bad.pt"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("m/code/__torch__.py", "")
        zf.writestr("m/constants.pkl", pickle.dumps((), protocol=2))
    return p


# --- ONNX --------------------------------------------------------------------------------------------------------


def _onnx(tensor_fn=None):
    from onnx import TensorProto, helper, numpy_helper

    t = numpy_helper.from_array(np.arange(256, dtype=np.float32), "w")
    if tensor_fn:
        tensor_fn(t)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [t])
    return helper.make_model(g).SerializeToString()


for _frac in (0.3, 0.6, 0.95):
    case(f"onnx_truncated_at_{_frac}")(lambda tmp, f=_frac: write(tmp, _onnx()[: int(len(_onnx()) * f)], "bad.onnx"))
case("onnx_garbage_after_tag")(lambda tmp: write(tmp, b"\x08\x07\x12" + np.random.default_rng(1).bytes(500)))
case("onnx_raw_data_wrong_length", "raw_data has 1020")(
    lambda tmp: write(tmp, _onnx(lambda t: setattr(t, "raw_data", t.raw_data[:-4])), "bad.onnx")
)
case("onnx_negative_dim", "negative dimension")(
    lambda tmp: write(tmp, _onnx(lambda t: (t.ClearField("dims"), t.dims.extend([-1, -256]))), "bad.onnx")
)
case("onnx_no_graph", "no ONNX graph")(lambda tmp: write(tmp, b"\x08\x07\x12\x03abc"))


@pytest.mark.parametrize("name", list(CASES))
def test_malformed(tmp_path, name):
    build, match = CASES[name]
    path = build(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(FormatError) as ei:
        open_store(path)
    elapsed = time.perf_counter() - t0
    msg = str(ei.value)
    assert type(ei.value) is FormatError
    assert path.name in msg, msg
    if match:
        assert re.search(match, msg), msg
    assert elapsed < 1.0, f"{name} took {elapsed:.2f} s"


def test_messages_say_what_to_do(tmp_path):
    p = write(tmp_path, safetensors_bytes(one(shape=(250,), offs=(0, 1000)), bytes(8)), "x.safetensors")
    with pytest.raises(FormatError, match=r"x\.safetensors: .*truncated.*re-download"):
        open_store(p)
    p = write(tmp_path, gguf_bytes(version=99), "x.gguf")
    with pytest.raises(FormatError, match=r"x\.gguf: .*; .*re-download or re-convert"):
        open_store(p)


def test_safetensors_header_not_an_object(tmp_path):
    # detection needs a "{" after the length, so this reaches only the reader called directly
    from sdcompile.formats.safetensors import SafetensorsStore

    p = write(tmp_path, safetensors_bytes(b"[1, 2]"), "arr.safetensors")
    with pytest.raises(FormatError, match=r"arr\.safetensors: .*JSON list, not an object"):
        SafetensorsStore(p)


def _fuzz_samples(tmp):
    torch = _torch()
    import onnx

    make_safetensors(tmp / "a.safetensors")
    (tmp / "a.gguf").write_bytes(simple_gguf())
    torch.save({"state_dict": {"w": torch.arange(16.0).reshape(4, 4).t(), "h": torch.ones(3).bfloat16()}}, tmp / "z.pt")
    torch.save({"w": torch.arange(16.0), "h": torch.ones(3).half()}, tmp / "l.pt", _use_new_zipfile_serialization=False)
    (tmp / "o.onnx").write_bytes(_onnx())
    onnx.load(str(tmp / "o.onnx"))  # pay the first-parse cost outside the timed loop
    return [tmp / n for n in ("a.safetensors", "a.gguf", "z.pt", "l.pt", "o.onnx")]


def test_random_corruptions_raise_only_format_error(tmp_path):
    """Random truncations and byte flips: a file either opens and reads, or raises FormatError - nothing else."""
    rng = np.random.default_rng(2024)
    for src in _fuzz_samples(tmp_path):
        base = src.read_bytes()
        for _ in range(150):
            b = bytearray(base)
            if rng.integers(0, 4) == 0:
                b = b[: rng.integers(0, len(b))]
            else:
                for _ in range(rng.integers(1, 6)):
                    b[rng.integers(0, len(b))] = rng.integers(0, 256)
            p = write(tmp_path, bytes(b), "fuzz.bin")
            t0 = time.perf_counter()
            try:
                st = open_store(p)
                for name in st.names():
                    st.array(name)
            except FormatError as e:
                assert "fuzz.bin" in str(e)
            assert time.perf_counter() - t0 < 1.0
