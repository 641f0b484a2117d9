"""Hand-made regression files, one or more for every malformed-input problem issue 9 lists and for the ones the
fuzzer found beside them. Each escaped the readers before they were fixed (checked by replaying them against the
unfixed readers: `scripts/fuzz_formats.py --replay --sdcompile-from <old checkout>`); `scripts/fuzz_formats.py
--write-crafted` puts them into the corpus, which tests/fuzz/test_fuzz_formats.py replays.

ONNX cases refer to the fixtures every replay folder holds (`seeds.prepare_dir`): weights.bin and a symlink loop.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable

import numpy as np

from tests.fuzz.mutate import zip_records
from tests.fuzz.seeds import ONNX_SIDECAR, _Ops, legacy_ckpt_bytes, zip_ckpt_bytes

CRAFTED: dict[str, tuple[str, Callable[[], bytes]]] = {}  # file name -> (format, builder)


def crafted(name: str, fmt: str):
    def deco(fn: Callable[[], bytes]) -> Callable[[], bytes]:
        CRAFTED[name] = (fmt, fn)
        return fn

    return deco


# --- safetensors: a zero-element tensor passes a byte-count check whatever its other dimensions say ---------------


def _st(shape: list[int], dtype: str = "F32", data: bytes = b"") -> bytes:
    h = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    return struct.pack("<Q", len(h)) + h + data


crafted("zero_by_1e30.safetensors", "safetensors")(lambda: _st([0, 10**30]))
crafted("zero_by_2p63.safetensors", "safetensors")(lambda: _st([0, 2**63 - 1]))
crafted("zero_by_2p62_squared.safetensors", "safetensors")(lambda: _st([2**62, 0, 2**62], "F16"))
crafted("seventy_dims.safetensors", "safetensors")(lambda: _st([1] * 70, data=bytes(4)))


# --- .ckpt: shapes and strides --------------------------------------------------------------------------------------


def _zip_tensor(shape, stride, numel: int = 4, offset: int = 0) -> bytes:
    ops = _Ops(legacy=False)
    ops.b += b"}("
    ops.put_str("w")
    ops.tensor("0", "FloatStorage", numel, offset, shape, stride)
    ops.b += b"u."
    return zip_ckpt_bytes(bytes(ops.b), {"0": np.arange(numel, dtype="<f4").tobytes()})


# a 2 KB file declaring 2^33 elements through a stride of 0: the reader materialized 32 GiB
crafted("stride0_2p33.ckpt", "ckpt")(lambda: _zip_tensor((2**33,), (0,), numel=512))
crafted("stride0_rows.ckpt", "ckpt")(lambda: _zip_tensor((2**31, 4), (0, 1)))
crafted("zero_by_1e30.ckpt", "ckpt")(lambda: _zip_tensor((0, 10**30), (1, 1)))
crafted("zero_by_2p63.ckpt", "ckpt")(lambda: _zip_tensor((2**63 - 1, 0), (0, 1)))
# a dimension of size 1 with an absurd stride: never followed, but numpy refused to build the view
crafted("size1_stride_2p70.ckpt", "ckpt")(lambda: _zip_tensor((1, 2, 2), (2**70, 1, 2)))


# --- .ckpt: zip members whose compression method was edited -------------------------------------------------------


def _edit_method(data: bytes, member: str, method: int) -> bytes:
    """Set a member's compression method in both its local header and the central directory, nothing else."""
    b = bytearray(data)
    records, _ = zip_records(data)
    for r in records:
        if r.name == member.encode():
            struct.pack_into("<H", b, r.central + 10, method)
            struct.pack_into("<H", b, r.local + 8, method)
    return bytes(b)


def _small_zip() -> bytes:
    return _zip_tensor((2, 2), (2, 1))


crafted("method_lzma_storage.ckpt", "ckpt")(lambda: _edit_method(_small_zip(), "archive/data/0", 14))
crafted("method_deflate_pickle.ckpt", "ckpt")(lambda: _edit_method(_small_zip(), "archive/data.pkl", 8))


@crafted("lzma_dictionary_4g.ckpt", "ckpt")
def _lzma_dict() -> bytes:
    """A genuinely LZMA-compressed storage whose header asks for a 4 GiB dictionary, which the decoder allocated."""
    src = zipfile.ZipFile(io.BytesIO(_small_zip()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for zi in src.infolist():
            nzi = zipfile.ZipInfo(zi.filename, date_time=(1980, 1, 1, 0, 0, 0))
            nzi.compress_type = zipfile.ZIP_LZMA if zi.filename.endswith("data/0") else zipfile.ZIP_STORED
            z.writestr(nzi, src.read(zi))
    b = bytearray(out.getvalue())
    zi = zipfile.ZipFile(io.BytesIO(bytes(b))).getinfo("archive/data/0")
    n, m = struct.unpack_from("<HH", b, zi.header_offset + 26)
    struct.pack_into("<I", b, zi.header_offset + 30 + n + m + 5, 0xFFFFFFFF)
    return bytes(b)


# --- .ckpt: pickles whose counts make CPython's unpickler allocate before it reads --------------------------------


def _zip_pickle(body: bytes) -> bytes:
    return zip_ckpt_bytes(b"\x80\x02" + body, {})


# BINBYTES8 claiming 2^40 bytes
crafted("pickle_binbytes8_2p40.ckpt", "ckpt")(lambda: _zip_pickle(b"\x8e" + struct.pack("<Q", 2**40) + b"abc."))
# LONG_BINPUT at memo index 2^32 - 16: the unpickler grew its memo to twice that many entries (64 GiB)
crafted("pickle_memo_2p32.ckpt", "ckpt")(lambda: _zip_pickle(b"}r\xf0\xff\xff\xff."))


# BINUNICODE claiming 2 GiB - 1 bytes: read from an open file, the unpickler allocated them before finding 10 bytes
@crafted("legacy_binunicode_2g.ckpt", "ckpt")
def _legacy_huge_string() -> bytes:
    d = legacy_ckpt_bytes()
    return d[:2] + b"X\xff\xff\xff\x7f" + d[2:]  # inside the first pickle (the magic number)


# --- ONNX external data -----------------------------------------------------------------------------------------


def _onnx_external(location: str, name: str = "w") -> bytes:
    from onnx import TensorProto, helper

    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[2])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "8")):
        e = t.external_data.add()
        e.key, e.value = k, v
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Add", ["x", name], ["y"])], "g", [x], [y], [t])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _not_utf8(placeholder: str, bad: bytes) -> bytes:
    assert len(placeholder) == len(bad)  # same length: no enclosing message's length prefix changes
    d = _onnx_external(placeholder) if placeholder.startswith("LOC") else _onnx_external(ONNX_SIDECAR, placeholder)
    return d.replace(placeholder.encode(), bad)


crafted("location_nul.onnx", "onnx")(lambda: _onnx_external(ONNX_SIDECAR + "\x00.txt"))
crafted("location_not_utf8.onnx", "onnx")(lambda: _not_utf8("LOCATION", b"\xffweights"))
crafted("location_too_long.onnx", "onnx")(lambda: _onnx_external("a" * 300))
crafted("location_path_too_long.onnx", "onnx")(lambda: _onnx_external("ab/" * 1500 + "w"))
crafted("location_symlink_loop.onnx", "onnx")(lambda: _onnx_external("loop"))
crafted("location_symlink_loop_pair.onnx", "onnx")(lambda: _onnx_external("loop_a/w"))
crafted("initializer_name_not_utf8.onnx", "onnx")(lambda: _not_utf8("NAME", b"\xfe\xffNA"))


def _onnx_dims(dims: list[int]) -> bytes:
    from onnx import TensorProto, helper

    t = helper.make_tensor("w", TensorProto.FLOAT, dims, [])
    g = helper.make_graph([], "g", [], [], [t])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


crafted("zero_by_2p63.onnx", "onnx")(lambda: _onnx_dims([0, 2**63 - 1]))
crafted("seventy_dims.onnx", "onnx")(lambda: _onnx_dims([1] * 69 + [0]))
