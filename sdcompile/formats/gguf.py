"""GGUF reader (versions 2 and 3, little-endian), memory-mapped; quantized tensors are kept as raw blocks.

Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata key/value pairs, the tensor
infos (name, n_dims, dims innermost first, ggml type id, offset), padding to `general.alignment`, then the data.
Every count and length is checked against the bytes left in the file before anything is allocated, so a corrupt or
hostile header fails at once instead of allocating or looping on a claimed 2^60 entries.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.formats._common import PLAIN_DTYPES, check_file, fail, map_file, prod, to_array
from sdcompile.formats.base import TensorInfo, TensorStore
from sdcompile.quant.types import BY_GGML_ID, GGUF_PLAIN_INT

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 8

# GGUF metadata value types: id -> (name, struct format or None for string/array)
T_STRING, T_ARRAY = 8, 9
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"),
    1: ("int8", "<b"),
    2: ("uint16", "<H"),
    3: ("int16", "<h"),
    4: ("uint32", "<I"),
    5: ("int32", "<i"),
    6: ("float32", "<f"),
    7: ("bool", "<?"),
    8: ("string", None),
    9: ("array", None),
    10: ("uint64", "<Q"),
    11: ("int64", "<q"),
    12: ("float64", "<d"),
}
_NP_VALUE = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}

_HINT = "the file is not a valid GGUF file (corrupt or truncated); re-download or re-convert it"


class _Cursor:
    """Bounds-checked little-endian reads from the memory map; every failure is a FormatError naming the file."""

    def __init__(self, path: Path, buf: Any, size: int) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise fail(
                self.path,
                f"is truncated: {what} needs {n} bytes at offset {self.pos} but only {self.left()} remain",
                _HINT,
            )

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def count(self, what: str, min_item_bytes: int) -> int:
        n = self.u64(what)
        if n * min_item_bytes > self.left():
            raise fail(
                self.path,
                f"claims {n} {what} but only {self.left()} bytes remain (each needs at least {min_item_bytes})",
                _HINT,
            )
        return n

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"the length of {what}")
        if n > self.left():
            raise fail(self.path, f"{what} claims {n} bytes at offset {self.pos} but only {self.left()} remain", _HINT)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def string(self, what: str) -> str | bytes:
        s = self.raw_string(what)
        try:
            return s.decode("utf-8")
        except UnicodeDecodeError:
            return s  # kept as bytes: some vocabularies hold byte tokens that are not valid UTF-8


class GGUFStore(TensorStore):
    format = "gguf"

    def __init__(self, path: Path | str) -> None:
        super().__init__(Path(path))
        p = self.path
        size = check_file(p)
        self._mm = map_file(p)
        self.metadata_types: dict[str, tuple[int, int | None]] = {}  # key -> (GGUF value type, array element type)
        self._offsets: dict[str, int] = {}
        try:
            self._parse(size)
        except RecursionError:
            raise fail(p, "has metadata arrays nested too deeply", _HINT) from None

    def _parse(self, size: int) -> None:
        p = self.path
        c = _Cursor(p, self._mm, size)
        c.need(4, "the magic")
        magic = bytes(self._mm[:4])
        if magic != MAGIC:
            raise fail(p, f"does not start with the GGUF magic (found {magic!r})", "this is not a GGUF file")
        c.pos = 4
        version = c.u32("the version")
        if version == 1:
            raise fail(p, "is GGUF version 1 (obsolete, 32-bit counts)", "re-convert it with a current llama.cpp")
        if version not in (2, 3):
            if (version & 0xFFFF) == 0 and version >> 16:
                raise fail(
                    p,
                    "is a big-endian GGUF file, which is not supported",
                    "convert it to little-endian (gguf-py's gguf_convert_endian.py)",
                )
            raise fail(p, f"has unsupported GGUF version {version} (supported: 2, 3)", _HINT)
        self.version = version
        n_tensors = c.count("tensors", 8 + 4 + 4 + 8)
        n_kv = c.count("metadata entries", 8 + 4 + 1)

        for _ in range(n_kv):
            key = c.string("a metadata key")
            if not isinstance(key, str):
                raise fail(p, f"has a metadata key that is not UTF-8: {key[:60]!r}", _HINT)
            vtype = c.u32(f"the type of metadata {key!r}")
            if key in self.metadata:
                raise fail(p, f"has the metadata key {key!r} twice", _HINT)
            sub = None
            if vtype == T_ARRAY and c.left() >= 4:
                sub = struct.unpack_from("<I", self._mm, c.pos)[0]
            self.metadata[key] = self._value(c, vtype, key, 0)
            self.metadata_types[key] = (vtype, sub)

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(alignment, int)
            or isinstance(alignment, bool)
            or alignment <= 0
            or alignment & (alignment - 1)
        ):
            raise fail(p, f"has general.alignment = {alignment!r}, which is not a positive power of two", _HINT)
        self.alignment = alignment

        infos = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = c.string(f"the name of tensor {i}")
            if not isinstance(name, str):
                raise fail(p, f"tensor {i} has a name that is not UTF-8: {name[:60]!r}", _HINT)
            if name in seen:
                raise fail(p, f"has two tensors named {name!r}", _HINT)
            n_dims = c.u32(f"n_dims of tensor {name!r}")
            if n_dims > MAX_DIMS:
                raise fail(p, f"tensor {name!r} claims {n_dims} dimensions (GGUF allows at most {MAX_DIMS})", _HINT)
            dims = [c.u64(f"the dimensions of tensor {name!r}") for _ in range(n_dims)]
            tid = c.u32(f"the type of tensor {name!r}")
            off = c.u64(f"the offset of tensor {name!r}")
            infos.append((name, dims, tid, off))
            seen.add(name)

        self.data_offset = (c.pos + alignment - 1) // alignment * alignment
        data_len = size - self.data_offset
        spans = []
        for name, dims, tid, off in infos:
            self._infos[name] = self._tensor_info(name, dims, tid, off, data_len)
            spans.append((off, off + self._infos[name].nbytes, name))
            self._offsets[name] = off
        spans.sort()
        for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise fail(p, f"tensors {n0!r} (bytes {b0}..{e0}) and {n1!r} (from byte {b1}) overlap", _HINT)

    def _tensor_info(self, name: str, dims: list[int], tid: int, off: int, data_len: int) -> TensorInfo:
        p = self.path
        for d in dims:
            if d == 0 or d >= 1 << 63:
                raise fail(p, f"tensor {name!r} has an invalid dimension {d} in {dims} (need 0 < d < 2^63)", _HINT)
        shape = tuple(reversed(dims))  # GGUF lists the innermost dimension first; numpy wants it last
        if tid in BY_GGML_ID:
            qt = BY_GGML_ID[tid]
            dtype = qt.name
            row = shape[-1] if shape else 1
            if row % qt.block_size:
                raise fail(
                    p,
                    f"tensor {name!r} has a row of {row} values, not a multiple of {qt.name}'s "
                    f"block size {qt.block_size}",
                    _HINT,
                )
            nbytes = prod(shape) // qt.block_size * qt.type_size
        elif tid in GGUF_PLAIN_INT:
            dtype, itemsize = GGUF_PLAIN_INT[tid]
            nbytes = prod(shape) * itemsize
        else:
            known = sorted(list(BY_GGML_ID) + list(GGUF_PLAIN_INT))
            raise fail(
                p,
                f"tensor {name!r} has unknown ggml type id {tid}",
                f"known ids: {known}; the file may need a newer reader, or be corrupt",
            )
        if off % self.alignment:
            raise fail(p, f"tensor {name!r} has offset {off}, not a multiple of the alignment {self.alignment}", _HINT)
        if off + nbytes > data_len:
            raise fail(
                p,
                f"tensor {name!r} ({dtype} {list(shape)}, {nbytes} bytes at data offset {off}) extends past the end "
                f"of the file ({data_len} bytes of data): the file is truncated or its header is corrupt",
                "re-download or re-convert it",
            )
        return TensorInfo(name, shape, dtype, nbytes)

    def _value(self, c: _Cursor, vtype: int, key: str, depth: int) -> Any:
        if vtype == T_STRING:
            return c.string(f"the string value of {key!r}")
        if vtype == T_ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise fail(self.path, f"metadata {key!r} nests arrays more than {MAX_ARRAY_NESTING} deep", _HINT)
            etype = c.u32(f"the element type of array {key!r}")
            if etype not in VALUE_TYPES:
                raise fail(self.path, f"metadata array {key!r} has unknown element type {etype}", _HINT)
            if etype in _NP_VALUE:
                isz = np.dtype(_NP_VALUE[etype]).itemsize
                n = c.count(f"elements in array {key!r}", isz)
                a = np.frombuffer(self._mm, dtype=_NP_VALUE[etype], count=n, offset=c.pos)
                c.pos += n * isz
                return a.tolist()
            n = c.count(f"elements in array {key!r}", 8 if etype == T_STRING else 12)
            return [self._value(c, etype, key, depth + 1) for _ in range(n)]
        if vtype not in VALUE_TYPES:
            raise fail(self.path, f"metadata {key!r} has unknown value type {vtype}", _HINT)
        v = c.unpack(VALUE_TYPES[vtype][1], f"the value of {key!r}")  # type: ignore[arg-type]
        return v

    def _get(self, name: str) -> tuple[TensorInfo, int]:
        try:
            return self._infos[name], self._offsets[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        info, off = self._get(name)
        s = self.data_offset + off
        return self._mm[s : s + info.nbytes]

    def array(self, name: str) -> np.ndarray:
        info, _ = self._get(name)
        if info.dtype in PLAIN_DTYPES:
            return to_array(self.raw(name), info.dtype, info.shape)
        from sdcompile.quant.reference import dequantize

        return dequantize(self.raw(name), info.dtype, info.shape)

    def close(self) -> None:
        self._mm = np.empty(0, np.uint8)
