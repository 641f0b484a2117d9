"""safetensors reader: an 8-byte little-endian header length, a JSON header, then the raw tensor data, memory-mapped.

The header is parsed here (not by the `safetensors` package) so every inconsistency gets a FormatError that names the
file, and so tensors are zero-copy views of one memory map.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.formats._common import PLAIN_DTYPES, check_file, check_shape, fail, map_file, to_array
from sdcompile.formats.base import TensorInfo, TensorStore

MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

# safetensors dtype names -> ours
DTYPES = {
    "F64": "f64",
    "F32": "f32",
    "F16": "f16",
    "BF16": "bf16",
    "F8_E4M3": "f8_e4m3",
    "F8_E5M2": "f8_e5m2",
    "I64": "i64",
    "I32": "i32",
    "I16": "i16",
    "I8": "i8",
    "U64": "u64",
    "U32": "u32",
    "U16": "u16",
    "U8": "u8",
    "BOOL": "bool",
}

_HINT = "the file is not a valid safetensors file (corrupt or truncated); re-download or re-export it"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r} in the JSON header")
        d[k] = v
    return d


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SafetensorsStore(TensorStore):
    format = "safetensors"

    def __init__(self, path: Path | str) -> None:
        super().__init__(Path(path))
        p = self.path
        size = check_file(p)
        if size < 8:
            raise fail(p, f"is only {size} bytes, too short for a safetensors header (8-byte length + JSON)", _HINT)
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > MAX_HEADER:
                raise fail(p, f"declares a safetensors JSON header of {n} bytes (limit {MAX_HEADER})", _HINT)
            if 8 + n > size:
                raise fail(p, f"is truncated: its JSON header needs {n} bytes but only {size - 8} follow", _HINT)
            text = f.read(n)
        try:
            header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise fail(p, f"has a safetensors header that is not valid JSON ({str(e)[:200]})", _HINT) from None
        if not isinstance(header, dict):
            raise fail(p, f"has a safetensors header that is a JSON {type(header).__name__}, not an object", _HINT)

        meta = header.pop("__metadata__", {})
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise fail(p, "has a __metadata__ entry that is not a JSON object", _HINT)
        self.metadata = dict(meta)

        self._data_start = 8 + n
        data_len = size - self._data_start
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, entry in header.items():
            self._infos[name] = self._parse_entry(name, entry, data_len)

        spans = sorted((b, e, name) for name, (b, e) in self._offsets.items() if e > b)
        for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise fail(p, f"tensors {n0!r} (bytes {b0}..{e0}) and {n1!r} (from byte {b1}) overlap", _HINT)
        self._mm = map_file(p)

    def _parse_entry(self, name: str, entry: Any, data_len: int) -> TensorInfo:
        p = self.path
        if not isinstance(entry, dict):
            raise fail(p, f"tensor {name!r}: header entry is not a JSON object", _HINT)
        dt, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dt, str) or dt not in DTYPES:
            raise fail(
                p,
                f"tensor {name!r} has unknown dtype {dt!r}",
                f"supported safetensors dtypes: {', '.join(DTYPES)}; convert the tensor to one of them",
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise fail(p, f"tensor {name!r} has an invalid shape {str(shape)[:100]} (need a list of ints >= 0)", _HINT)
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise fail(p, f"tensor {name!r} has invalid data_offsets {str(offs)[:100]} (need [begin, end])", _HINT)
        b, e = offs
        if b < 0 or b > e:
            raise fail(p, f"tensor {name!r} has data_offsets [{b}, {e}] with begin > end or negative", _HINT)
        if e > data_len:
            raise fail(
                p,
                f"tensor {name!r} ends at byte {e} of the data section, past its end ({data_len} bytes): "
                "the file is truncated or its header is corrupt",
                "re-download or re-export it",
            )
        ours = DTYPES[dt]
        isz = PLAIN_DTYPES[ours].itemsize
        want = check_shape(p, f"tensor {name!r} ({dt})", shape, isz, _HINT) * isz
        if e - b != want:
            raise fail(
                p,
                f"tensor {name!r} ({dt} {shape}) needs {want} bytes but its data_offsets span {e - b}",
                _HINT,
            )
        self._offsets[name] = (b, e)
        return TensorInfo(name, tuple(shape), ours, e - b)

    def _get(self, name: str) -> tuple[TensorInfo, tuple[int, int]]:
        try:
            return self._infos[name], self._offsets[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        _, (b, e) = self._get(name)
        s = self._data_start
        return self._mm[s + b : s + e]

    def array(self, name: str) -> np.ndarray:
        info, _ = self._get(name)
        return to_array(self.raw(name), info.dtype, info.shape)

    def close(self) -> None:
        # Views handed out keep the map alive; dropping our reference is all that is safe.
        self._mm = np.empty(0, np.uint8)
