"""ONNX reader: the initializers of a model's main graph, from raw_data, the typed fields, or external data files.

The protobuf is parsed by the `onnx` package without its external-data loader; external data is resolved here,
relative to the model's directory, and refused if its path leaves that directory (absolute paths, `..`, symlinks
pointing out). External files are memory-mapped; inline data is moved out of the protobuf once, so each tensor's
bytes live in memory a single time. `model` keeps the ModelProto (initializer data removed) for the graph importer.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.errors import UnsupportedModelError
from sdcompile.formats._common import PLAIN_DTYPES, check_file, check_shape, fail, map_file, to_array
from sdcompile.formats.base import TensorInfo, TensorStore

# TensorProto.DataType -> our dtype
ONNX_DTYPES: dict[int, str] = {
    1: "f32",
    2: "u8",
    3: "i8",
    4: "u16",
    5: "i16",
    6: "i32",
    7: "i64",
    9: "bool",
    10: "f16",
    11: "f64",
    12: "u32",
    13: "u64",
    16: "bf16",
    17: "f8_e4m3",
    19: "f8_e5m2",
}
# which typed repeated field holds each dtype when raw_data is not used (onnx.proto's comments)
_TYPED_FIELD = {
    "f32": "float_data",
    "f64": "double_data",
    "i64": "int64_data",
    "u32": "uint64_data",
    "u64": "uint64_data",
}  # every other supported dtype is in int32_data (f16/bf16/fp8 as bit patterns)

_HINT = "the file is not a valid ONNX model (corrupt or truncated); re-export it"

# torch.onnx.export's TorchScript exporter (its default before torch 2.9, dynamo=False since) renames a weight it
# transposed or folded into a constant after the node that uses it: a Linear's weight becomes "onnx::MatMul_295".
EXPORTER_PREFIX = "onnx::"


def _text(s: str | bytes) -> str:
    # protobuf hands a string field that is not UTF-8 back as bytes; descriptive fields are kept, made readable
    return s if isinstance(s, str) else bytes(s).decode("utf-8", "replace")


class OnnxStore(TensorStore):
    format = "onnx"

    def __init__(self, path: Path | str) -> None:
        super().__init__(Path(path))
        p = self.path
        check_file(p)
        try:
            import onnx
            from google.protobuf.message import DecodeError
        except ImportError:  # pragma: no cover - onnx is a dependency
            raise fail(p, "is an ONNX model but the onnx package is not installed", "pip install onnx") from None
        try:
            model = onnx.load(str(p), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, TypeError, OSError) as e:
            raise fail(p, f"does not parse as an ONNX ModelProto ({str(e)[:200]})", _HINT) from None
        except MemoryError:
            raise fail(p, "is too large or corrupt: parsing it ran out of memory", _HINT) from None
        if not model.HasField("graph") or model.ir_version <= 0:
            raise fail(p, "parses as protobuf but holds no ONNX graph (no ir_version or graph)", _HINT)
        self._dir = p.resolve().parent
        self._ext_maps: dict[Path, np.ndarray] = {}
        self._data: dict[str, Any] = {}  # name -> bytes | np.ndarray (typed) | (ext file, offset, nbytes)

        g = model.graph
        if len(g.sparse_initializer):
            raise fail(
                p,
                f"has {len(g.sparse_initializer)} sparse initializers, which sdcompile does not read",
                "densify them (onnx.numpy_helper) and re-save the model",
            )
        for t in g.initializer:
            self._add(t)
        init_names = set(self._infos)
        self.exporter_names = [n for n in self._infos if n.startswith(EXPORTER_PREFIX)]
        opsets = {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import}
        self.metadata = {
            "ir_version": int(model.ir_version),
            "opset": opsets.get("ai.onnx", 0),
            "opset_imports": {_text(k): v for k, v in opsets.items()},
            "producer_name": _text(model.producer_name),
            "producer_version": _text(model.producer_version),
            "domain": _text(model.domain),
            "model_version": int(model.model_version),
            "graph_name": _text(g.name),
            "inputs": [_text(i.name) for i in g.input if i.name not in init_names],
            "outputs": [_text(o.name) for o in g.output],
            "metadata_props": {_text(m.key): _text(m.value) for m in model.metadata_props},
        }
        self.model = model

    def _add(self, t: Any) -> None:
        import onnx

        p = self.path
        name = t.name
        if not name:
            raise fail(p, "has an initializer without a name", _HINT)
        if not isinstance(name, str):
            raise fail(p, f"has an initializer whose name is not UTF-8 ({bytes(name)[:60]!r})", _HINT)
        if name in self._infos:
            raise fail(p, f"has two initializers named {name!r}", _HINT)
        dtype = ONNX_DTYPES.get(t.data_type)
        if dtype is None:
            try:
                tname = onnx.TensorProto.DataType.Name(t.data_type)
            except ValueError:
                tname = f"id {t.data_type}"
            raise fail(
                p,
                f"initializer {name!r} has ONNX data type {tname}, which sdcompile does not read",
                "convert it to a float or integer type before exporting",
            )
        shape = tuple(int(d) for d in t.dims)
        if t.HasField("segment"):
            raise fail(p, f"initializer {name!r} is a segment of a larger tensor, which is not supported", _HINT)
        isz = PLAIN_DTYPES[dtype].itemsize
        numel = check_shape(p, f"initializer {name!r}", shape, isz, _HINT)
        nbytes = numel * isz
        if t.data_location == onnx.TensorProto.EXTERNAL:
            self._data[name] = self._external(t, nbytes)
        elif t.raw_data:
            if len(t.raw_data) != nbytes:
                raise fail(
                    p,
                    f"initializer {name!r} ({dtype} {list(shape)}) needs {nbytes} bytes but raw_data has "
                    f"{len(t.raw_data)}",
                    _HINT,
                )
            self._data[name] = t.raw_data
            t.ClearField("raw_data")
        else:
            field = _TYPED_FIELD.get(dtype, "int32_data")
            vals = getattr(t, field)
            if len(vals) != numel:
                raise fail(
                    p,
                    f"initializer {name!r} ({dtype} {list(shape)}) needs {numel} values but {field} has {len(vals)}",
                    _HINT,
                )
            st = PLAIN_DTYPES[dtype]
            if field == "int32_data":
                # narrow ints are stored one per int32 as values, f16/bf16/fp8 as their bit patterns
                a = np.asarray(vals, dtype=np.int64).astype("<u2" if dtype == "f16" else st)
            else:
                a = np.asarray(vals).astype(st)
            self._data[name] = a.view(np.uint8).reshape(-1)
            t.ClearField(field)
        self._infos[name] = TensorInfo(name, shape, dtype, nbytes)

    def _external(self, t: Any, nbytes: int) -> tuple[Path, int, int]:
        p = self.path
        kv = {e.key: e.value for e in t.external_data}
        loc = kv.get("location", "")
        hint = "keep external data files next to the model, referenced by a relative path inside its directory"
        where = f"initializer {t.name!r}"
        if not loc:
            raise fail(p, f"{where} has external data without a location", hint)
        # protobuf hands a string field that is not UTF-8 back as bytes
        if not isinstance(loc, str):
            raise fail(p, f"{where} has an external data location that is not UTF-8 ({bytes(loc)[:60]!r})", hint)
        if "\0" in loc:
            raise fail(p, f"{where} has an external data location with a NUL byte ({loc[:60]!r})", hint)
        rel = Path(loc)
        if rel.is_absolute() or rel.drive or "\\" in loc:
            raise fail(p, f"{where} refers to external data by absolute path {loc[:200]!r}; refused", hint)
        try:
            off = int(kv.get("offset", "0"))
            length = int(kv["length"]) if "length" in kv else nbytes
        except ValueError:
            raise fail(p, f"{where} has a non-integer external data offset or length", _HINT) from None
        if off < 0 or length != nbytes:
            raise fail(
                p, f"{where} needs {nbytes} bytes but its external data says offset {off}, length {length}", _HINT
            )
        try:
            target = (self._dir / rel).resolve()
            if not target.is_relative_to(self._dir):
                raise fail(
                    p, f"{where} refers to external data {loc[:200]!r} outside the model's directory; refused", hint
                )
            if not target.exists():
                raise fail(p, f"{where}: external data file {loc[:200]!r} is missing", hint)
            if not target.is_file():
                raise fail(p, f"{where}: external data {loc[:200]!r} is not a regular file", hint)
            size = target.stat().st_size
        except RuntimeError:  # Python < 3.13 reports a symlink loop met by resolve() this way
            raise fail(p, f"{where}: external data location {loc[:200]!r} is a symlink loop", hint) from None
        except OSError as e:
            problem = {
                errno.ELOOP: "is a symlink loop",
                errno.ENAMETOOLONG: "is a name too long for the file system",
                errno.ENOTDIR: "goes through something that is not a directory",
            }.get(e.errno or 0, f"cannot be read ({e.strerror or e})")
            raise fail(p, f"{where}: external data location {loc[:200]!r} {problem}", hint) from None
        if off + length > size:
            raise fail(
                p,
                f"{where} reads bytes {off}..{off + length} of external data {loc[:200]!r}, "
                f"which has only {size} bytes (truncated?)",
                "re-export the model with its external data",
            )
        return (target, off, length)

    def _renamed(self, name: str) -> UnsupportedModelError:
        """Why a weight a lifter asks for is absent when the exporter renamed weights: weights are found by name
        until ONNX graphs are imported through their graph, and a renamed one can only be found through it."""
        some = ", ".join(self.exporter_names[:3]) + (", ..." if len(self.exporter_names) > 3 else "")
        return UnsupportedModelError(
            f"{self.path}: has no weight named {name!r}: torch.onnx.export renamed {len(self.exporter_names)} of its "
            f"{len(self._infos)} weights after the nodes that use them ({some}), and sdcompile finds ONNX weights by "
            "name (it does not import ONNX graphs yet); export the weights instead "
            "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and compile that file, or "
            "re-export with torch.onnx.export(..., do_constant_folding=False), which keeps the parameters' names"
        )

    def missing(self, name: str) -> Exception | None:
        return self._renamed(name) if name not in self._infos and self.exporter_names else None

    def info(self, name: str) -> TensorInfo:
        if name not in self._infos and self.exporter_names:
            raise self._renamed(name)
        return super().info(name)

    def _get(self, name: str) -> tuple[TensorInfo, Any]:
        try:
            return self._infos[name], self._data[name]
        except KeyError:
            if self.exporter_names:
                raise self._renamed(name) from None
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        info, d = self._get(name)
        if isinstance(d, tuple):
            target, off, length = d
            if length == 0:
                return np.empty(0, np.uint8)
            mm = self._ext_maps.get(target)
            if mm is None:
                mm = self._ext_maps[target] = map_file(target)
            return mm[off : off + length]
        if isinstance(d, bytes):
            return np.frombuffer(d, dtype=np.uint8)
        return d

    def array(self, name: str) -> np.ndarray:
        info, _ = self._get(name)
        return to_array(self.raw(name), info.dtype, info.shape)

    def close(self) -> None:
        self._ext_maps.clear()
