"""PyTorch checkpoints (.ckpt/.pt/.pth/.bin), read without torch and without running anything from the file.

Two layouts exist:
- zip (torch >= 1.6): `<folder>/data.pkl` is the object pickle; the bytes of storage KEY are the member
  `<folder>/data/KEY`, stored uncompressed, so they are memory-mapped in place.
- legacy (`_use_new_zipfile_serialization=False` and torch < 1.6): a sequence of pickles - magic number, protocol
  version, sys_info, the object pickle, the sorted list of storage keys - followed by each storage as an int64
  element count and its raw bytes.

The object pickle is read by `RestrictedUnpickler`: `find_class` returns local stand-ins for an allow-list of
tensor-rebuilding functions and storage/dtype names, and raises `UnsafePickleError` for anything else, so no callable
named by the file is ever imported or called. Tensors become lazy records (storage key, dtype, offset, shape, stride)
that are materialized from the memory map on `raw()`/`array()`.
"""

from __future__ import annotations

import _compat_pickle
import bz2
import collections
import io
import lzma
import pickle
import pickletools
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.errors import FormatError, UnsafePickleError
from sdcompile.formats._common import PLAIN_DTYPES, brief, check_file, check_shape, fail, map_file, prod, to_array
from sdcompile.formats.base import TensorInfo, TensorStore

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_PICKLE = 1 << 30  # a data.pkl this big (uncompressed) is not a checkpoint we can hold; refuse before inflating
MAX_NESTING = 64  # state dicts nest a few levels; names of deeper ones would cost O(depth^2) memory
# Compression methods a zip member may use (the ones Python's zipfile reads too); anything else in a checkpoint is
# damage, since torch.save stores members uncompressed.
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
}
# An LZMA member names its dictionary size, and the decoder allocates it before reading a byte: 64 MiB is xz's and
# 7-Zip's largest preset; more is a corrupt header asking for gigabytes.
MAX_LZMA_DICT = 1 << 26
STATE_DICT_KEYS = ("state_dict", "model", "module", "model_state_dict")

_HINT = "the checkpoint is corrupt or truncated; re-download it, or re-save it with torch.save"
_UNSAFE_HINT = (
    "sdcompile never runs code from a checkpoint; if you trust the file, convert it to safetensors "
    "(load it with torch and save its state_dict() with safetensors.torch.save_file) and use that instead"
)

# Storage class names (torch.FloatStorage, torch.cuda.HalfStorage, ...) -> our dtype; None = known but unsupported.
STORAGE_DTYPES: dict[str, str | None] = {
    "DoubleStorage": "f64",
    "FloatStorage": "f32",
    "HalfStorage": "f16",
    "BFloat16Storage": "bf16",
    "LongStorage": "i64",
    "IntStorage": "i32",
    "ShortStorage": "i16",
    "CharStorage": "i8",
    "ByteStorage": "u8",
    "BoolStorage": "bool",
    "UntypedStorage": "u8",
    "ComplexFloatStorage": None,
    "ComplexDoubleStorage": None,
    "QInt8Storage": None,
    "QUInt8Storage": None,
    "QInt32Storage": None,
    "QUInt4x2Storage": None,
    "QUInt2x4Storage": None,
}
# torch dtype attribute names (torch.float16, ...) -> our dtype; None = known but unsupported.
TORCH_DTYPES: dict[str, str | None] = {
    "float64": "f64",
    "double": "f64",
    "float32": "f32",
    "float": "f32",
    "float16": "f16",
    "half": "f16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "f8_e4m3",
    "float8_e5m2": "f8_e5m2",
    "int64": "i64",
    "long": "i64",
    "int32": "i32",
    "int": "i32",
    "int16": "i16",
    "short": "i16",
    "int8": "i8",
    "uint8": "u8",
    "uint16": "u16",
    "uint32": "u32",
    "uint64": "u64",
    "bool": "bool",
    "complex64": None,
    "complex128": None,
    "cfloat": None,
    "cdouble": None,
    "float8_e4m3fnuz": None,
    "float8_e5m2fnuz": None,
    "qint8": None,
    "quint8": None,
    "qint32": None,
}


# ---------------------------------------------------------------------------------------------------------------
# Local stand-ins for what the pickle may name


# Element sizes of the known-but-unsupported types, so legacy files holding them (say, in optimizer state) still parse.
_UNSUPPORTED_ITEMSIZE = {
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
    "QInt32Storage": 4,
    "complex64": 8,
    "cfloat": 8,
    "complex128": 16,
    "cdouble": 16,
    "qint32": 4,
}


def _size_of(name: str, dtype: str | None) -> int:
    return PLAIN_DTYPES[dtype].itemsize if dtype is not None else _UNSUPPORTED_ITEMSIZE.get(name, 1)


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: str | None

    @property
    def itemsize(self) -> int:
        return _size_of(self.name, self.dtype)


@dataclass(frozen=True)
class _TorchDtype:
    name: str
    dtype: str | None


class _StorageRef:
    """A storage named by a persistent id: its root key, dtype and element count, and for legacy views a byte range."""

    def __init__(self, key: str, st: _StorageType, numel: int, view: tuple[int, int] | None = None) -> None:
        self.key, self.dtype, self.itemsize, self.numel, self.view = key, st.dtype, st.itemsize, numel, view
        self.type_name = st.name

    def __setstate__(self, state: Any) -> None:
        raise FormatError("the pickle tries to set the state of a storage")


class _TensorRec:
    """A tensor as the pickle describes it; no data is read until it is materialized."""

    def __init__(self, storage: _StorageRef, dtype: str | None, dtype_name: str, offset: int, shape, stride) -> None:
        self.storage, self.dtype, self.dtype_name = storage, dtype, dtype_name
        self.offset, self.shape, self.stride = offset, shape, stride

    def __setstate__(self, state: Any) -> None:
        # Tensors with python attributes pickle them as state; there is nothing of ours to set.
        pass


def _ints(x: Any, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in x):
        raise FormatError(f"a tensor's {what} is not a tuple of ints: {str(x)[:100]}")
    if any(d < 0 for d in x):
        raise FormatError(f"a tensor's {what} has a negative entry: {tuple(x)}")
    return tuple(int(d) for d in x)


def _make_tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: _TorchDtype | None = None) -> _TensorRec:
    if not isinstance(storage, _StorageRef):
        raise FormatError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise FormatError(f"a tensor has an invalid storage offset {offset!r}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise FormatError(f"a tensor has size {shape} but stride {strides} of a different length")
    if dtype is not None:
        if not isinstance(dtype, _TorchDtype):
            raise FormatError(f"a tensor's dtype is a {type(dtype).__name__}, not a torch dtype")
        return _TensorRec(storage, dtype.dtype, dtype.name, offset, shape, strides)
    return _TensorRec(storage, storage.dtype, storage.type_name, offset, shape, strides)


def _rebuild_tensor(storage, storage_offset, size, stride):  # torch._utils._rebuild_tensor
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, dtype=None, metadata=None
):
    return _make_tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRec):
        raise FormatError(f"a parameter is rebuilt from a {type(data).__name__}, not a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


class _TensorClass:
    """Stand-in for torch.Tensor / torch.nn.Parameter when named as the type in _rebuild_from_type_v2."""


def _rebuild_from_type_v2(func, new_type, args, state):  # torch._tensor._rebuild_from_type_v2
    if func not in _REBUILDERS or not isinstance(args, tuple):
        raise FormatError("a tensor subclass is rebuilt by something other than a tensor-rebuilding function")
    return func(*args)


def _make_size(*args):  # torch.Size
    return _ints(args[0] if args else (), "torch.Size")


def _make_device(*args):  # torch.device("cpu") / torch.device("cuda", 0)
    return ":".join(str(a) for a in args)


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); only plain text encodings are allowed.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise FormatError(f"the pickle calls _codecs.encode with {type(obj).__name__}, {encoding!r}")
    return obj.encode(encoding, "strict")


def _opaque(qualname: str) -> type:
    """A class that swallows any construction and state: for harmless objects we do not need (training callbacks)."""

    class Opaque:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __setstate__(self, state: Any) -> None:
            pass

        def __repr__(self) -> str:
            return f"<skipped {qualname}>"

    Opaque.__qualname__ = Opaque.__name__ = f"Skipped[{qualname}]"
    return Opaque


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorClass,
    ("torch._tensor", "Tensor"): _TensorClass,
    ("torch.nn.parameter", "Parameter"): _TensorClass,
    ("torch", "Size"): _make_size,
    ("torch", "device"): _make_device,
    ("_codecs", "encode"): _codecs_encode,
}
for _qual in (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "argparse.Namespace",
):
    _mod, _name = _qual.rsplit(".", 1)
    _ALLOWED[(_mod, _name)] = _opaque(_qual)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build containers, plain values and lazy tensor records."""

    def __init__(self, file: Any, path: Path, persistent_load: Any = None) -> None:
        super().__init__(file)
        self._path = path
        self._pload = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        asked = f"{module}.{name}"
        # Protocol-2 pickles written by Python 3 use Python 2 names (__builtin__, commands); map them back as
        # pickle's own find_class does, so the allow-list and the error message see the real names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        hit = _ALLOWED.get((module, name))
        if hit is not None:
            return hit
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        if module == "torch.storage" and name in ("UntypedStorage", "_UntypedStorage", "TypedStorage"):
            return _StorageType(name, "u8")
        if module == "torch" and name in TORCH_DTYPES:
            return _TorchDtype(name, TORCH_DTYPES[name])
        written = f" (written as {asked})" if asked != f"{module}.{name}" else ""
        raise UnsafePickleError(
            f"{self._path}: the checkpoint's pickle asks for {module}.{name}{written}, which is not on the allow-list of "
            f"tensor-rebuilding functions; refused without running it. {_UNSAFE_HINT}"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._pload is None:
            raise FormatError("a persistent id appears where none is expected")
        return self._pload(pid)


# ---------------------------------------------------------------------------------------------------------------


def _storage_type(x: Any) -> _StorageType:
    if isinstance(x, _StorageType):
        return x
    if isinstance(x, _TorchDtype):  # some writers put the dtype itself in the persistent id
        return _StorageType(x.name, x.dtype)
    raise FormatError(f"a storage's type is a {type(x).__name__}, not a torch storage type")


def _key(x: Any) -> str:
    if isinstance(x, bytes):
        x = x.decode("ascii", "replace")
    if not isinstance(x, (str, int)) or isinstance(x, bool):
        raise FormatError(f"a storage key is a {type(x).__name__}")
    return str(x)


def _nonneg(x: Any, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise FormatError(f"{what} is {str(x)[:40]!r}, not a non-negative int")
    return x


class _MapReader:
    """pickletools reads from the memory map through this: read(n) returns what the file has (an open file's read(n)
    allocates n bytes first, and n is whatever a corrupt header says) and readline() looks a bounded way ahead."""

    MAX_LINE = 1 << 20  # text opcodes (GLOBAL, INT) hold short lines

    def __init__(self, mm: np.ndarray, pos: int) -> None:
        self.mm, self.pos = mm, pos

    def read(self, n: int) -> bytes:
        b = bytes(self.mm[self.pos : self.pos + max(n, 0)])
        self.pos += len(b)
        return b

    def readline(self) -> bytes:
        window = self.mm[self.pos : self.pos + self.MAX_LINE]
        hits = np.flatnonzero(window == ord("\n"))
        return self.read(int(hits[0]) + 1 if hits.size else len(window))

    def tell(self) -> int:
        return self.pos


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _scan_pickle(f: Any) -> int:
    """Walk one pickle's opcodes from `f` without building anything and return where it ends.

    CPython's unpickler allocates what a counted opcode (BINBYTES8, BINUNICODE, BYTEARRAY8...) claims before reading
    it, and grows its memo to twice the index a PUT names, so a few edited bytes make it allocate gigabytes.
    pickletools reads each counted argument with read(n), which returns only what exists, and fails when a count runs
    past the end; memo indices are bounded here by the number of opcodes (a pickler numbers them in order)."""
    n_ops = 0
    try:
        for op, arg, _pos in pickletools.genops(f):
            n_ops += 1
            if op.name in _MEMO_PUTS and isinstance(arg, int) and arg > n_ops:
                raise FormatError(f"the pickle stores memo entry {arg} after only {n_ops} opcodes")
    except (ValueError, EOFError, struct.error, OverflowError) as e:
        raise FormatError(f"has a corrupt pickle ({str(e)[:200]})") from None
    return f.tell()


class CkptStore(TensorStore):
    format = "ckpt"

    def __init__(self, path: Path | str) -> None:
        super().__init__(Path(path))
        p = self.path
        self._size = check_file(p)
        self._mm = map_file(p)
        self._storages: dict[str, _StorageRef] = {}  # root storages by key
        self._data: dict[str, tuple[int, int] | bytes] = {}  # root key -> (file offset, nbytes) or inflated bytes
        self._tensors: dict[str, _TensorRec] = {}
        self._compressed: dict[str, zipfile.ZipInfo] = {}
        self._big_endian = False
        head = bytes(self._mm[:4])
        try:
            if head == b"PK\x03\x04":
                top = self._load_zip()
            elif head[:1] == b"\x80":
                top = self._load_legacy()
            else:
                raise fail(p, "is neither a zip checkpoint nor a pickle", "this is not a PyTorch checkpoint")
            self._collect(top)
        except FormatError as e:
            if str(e).startswith(str(p)):
                raise
            raise type(e)(f"{p}: {e}; {_HINT}") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, zlib.error, lzma.LZMAError) as e:
            raise fail(p, f"is a damaged zip archive ({type(e).__name__}: {str(e)[:200]})", _HINT) from None
        except OSError as e:
            raise fail(p, f"cannot be read ({e})", "check the file and its permissions") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
            raise fail(p, f"has a corrupt pickle ({type(e).__name__}: {str(e)[:200]})", _HINT) from None
        except (MemoryError, OverflowError, RuntimeError, struct.error) as e:  # RecursionError is a RuntimeError
            raise fail(p, f"has a corrupt pickle ({type(e).__name__}: {str(e)[:200]})", _HINT) from None

    # -- zip ------------------------------------------------------------------------------------------------------

    def _load_zip(self) -> Any:
        p = self.path
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
            pkls = sorted(n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1))
            if not pkls:
                raise fail(
                    p, "is a zip archive without a data.pkl", "it is not a PyTorch checkpoint (torch.save writes one)"
                )
            pkl = pkls[0]
            prefix = pkl[: -len("data.pkl")]
            if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
                raise fail(
                    p,
                    "is a TorchScript archive (torch.jit.save), not a checkpoint",
                    "load it with torch.jit.load and save its state_dict() with torch.save or safetensors",
                )
            if prefix + "byteorder" in names:
                order = self._read_member(zf.getinfo(prefix + "byteorder"), 64)[:16].strip()
                if order not in (b"little", b"big"):
                    raise fail(p, f"has an unknown byteorder record {order!r}", _HINT)
                self._big_endian = order == b"big"
            data = self._read_member(zf.getinfo(pkl), MAX_PICKLE)
            end = _scan_pickle(io.BytesIO(data))
            top = RestrictedUnpickler(io.BytesIO(data[:end]), p, self._persistent_zip).load()
            del data
            members = {n[len(prefix) + 5 :]: zf.getinfo(n) for n in names if n.startswith(prefix + "data/")}
            for key in self._storages:
                zi = members.get(key)
                if zi is None:
                    raise fail(p, f"has no data for storage {key!r} ({prefix}data/{key} is missing)", _HINT)
                self._check_member(zi)
                if zi.compress_type == zipfile.ZIP_STORED:
                    self._data[key] = (self._member_offset(zi), zi.file_size)
                else:
                    # Re-zipped with compression: the bytes cannot be mapped; inflate this member on first use.
                    self._data[key] = b""
                    self._compressed[key] = zi
        return top

    def _member_offset(self, zi: zipfile.ZipInfo) -> int:
        """Where a member's (compressed) bytes start in the file, checked to lie inside it."""
        h = zi.header_offset
        if h < 0 or h + 30 > self._size or bytes(self._mm[h : h + 4]) != b"PK\x03\x04":
            raise fail(self.path, f"zip member {zi.filename} has a broken local header", _HINT)
        n, m = struct.unpack_from("<HH", self._mm, h + 26)
        off = h + 30 + n + m
        if off + zi.compress_size > self._size:
            raise fail(self.path, f"zip member {zi.filename} extends past the end of the file (truncated)", _HINT)
        return off

    def _check_member(self, zi: zipfile.ZipInfo) -> int:
        """Refuse a member whose header the reader cannot follow before anything reads it; return where its
        (compressed) bytes start."""
        p = self.path
        if zi.flag_bits & 0x1:
            raise fail(p, f"zip member {zi.filename} is encrypted", "re-save the checkpoint with torch.save")
        if zi.compress_type not in ZIP_METHODS:
            raise fail(
                p,
                f"zip member {zi.filename} says it is compressed with method {zi.compress_type}, which is not one of "
                f"{', '.join(f'{k} ({v})' for k, v in ZIP_METHODS.items())}: the archive is damaged",
                _HINT,
            )
        off = self._member_offset(zi)
        if zi.compress_type == zipfile.ZIP_STORED and zi.compress_size != zi.file_size:
            raise fail(
                p,
                f"zip member {zi.filename} is stored uncompressed but its sizes disagree "
                f"({zi.compress_size} != {zi.file_size})",
                _HINT,
            )
        return off

    def _read_member(self, zi: zipfile.ZipInfo, limit: int) -> bytes:
        """A whole member, inflated here rather than by zipfile: zipfile's bzip2 and LZMA readers inflate a read's
        worth of input without an output bound, and an edited header turns into zlib.error, LZMAError, OSError or
        struct.error from deep inside it. Output is capped at the member's declared size, and its CRC checked."""
        p = self.path
        off = self._check_member(zi)
        size = zi.file_size
        if size > limit:
            raise fail(p, f"zip member {zi.filename} claims {size} bytes (limit {limit})", _HINT)
        comp = bytes(self._mm[off : off + zi.compress_size])
        method = ZIP_METHODS[zi.compress_type]
        try:
            if zi.compress_type == zipfile.ZIP_STORED:
                data = comp
            elif zi.compress_type == zipfile.ZIP_DEFLATED:
                data = zlib.decompressobj(-15).decompress(comp, size + 1)
            elif zi.compress_type == zipfile.ZIP_BZIP2:
                data = bz2.BZ2Decompressor().decompress(comp, size + 1)
            else:
                data = self._lzma_decompressor(zi, comp).decompress(comp[9:], size + 1)
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as e:
            raise fail(
                p, f"zip member {zi.filename} cannot be inflated ({method}: {type(e).__name__}: {str(e)[:200]})", _HINT
            ) from None
        if len(data) != size:
            got = "past the" if len(data) > size else f"to {len(data)} bytes, not the"
            raise fail(p, f"zip member {zi.filename} inflates ({method}) {got} {size} bytes its header says", _HINT)
        if zlib.crc32(data) != zi.CRC:
            raise fail(p, f"zip member {zi.filename} fails its CRC check", _HINT)
        return data

    def _lzma_decompressor(self, zi: zipfile.ZipInfo, comp: bytes) -> lzma.LZMADecompressor:
        # zip's LZMA header: version (2 bytes), properties size (2, always 5), then the LZMA1 properties: one byte of
        # lc/lp/pb and the dictionary size, which the decoder allocates up front.
        if len(comp) < 9:
            raise fail(self.path, f"zip member {zi.filename} is too short for an LZMA header", _HINT)
        psize, props, dict_size = struct.unpack_from("<H", comp, 2)[0], comp[4], struct.unpack_from("<I", comp, 5)[0]
        if psize != 5 or props >= 9 * 5 * 5 or dict_size > MAX_LZMA_DICT:
            raise fail(
                self.path,
                f"zip member {zi.filename} has a damaged LZMA header (properties size {psize}, byte {props}, "
                f"dictionary {dict_size} bytes; at most {MAX_LZMA_DICT})",
                _HINT,
            )
        lc, lp, pb = props % 9, props // 9 % 5, props // 45
        flt = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[flt])

    def _persistent_zip(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or len(pid) < 5 or _key(pid[0]) != "storage":
            raise FormatError(f"unknown persistent id {str(pid)[:100]}")
        st, key, numel = _storage_type(pid[1]), _key(pid[2]), _nonneg(pid[4], "a storage size")
        return self._root(key, st, numel)

    def _root(self, key: str, st: _StorageType, numel: int) -> _StorageRef:
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, st, numel)
        return ref

    # -- legacy -----------------------------------------------------------------------------------------------------

    def _load_legacy(self) -> Any:
        p = self.path
        pos = 0

        def load(pload=None):
            # each pickle is scanned before it is unpickled, from its own bytes only (see _scan_pickle)
            nonlocal pos
            end = _scan_pickle(_MapReader(self._mm, pos))
            obj = RestrictedUnpickler(io.BytesIO(bytes(self._mm[pos:end])), p, pload).load()
            pos = end
            return obj

        magic = load()
        if magic != LEGACY_MAGIC:
            raise fail(
                p,
                "is a pickle but not a PyTorch checkpoint (no torch magic number)",
                "sdcompile reads torch.save files, not arbitrary pickles",
            )
        proto = load()
        if proto != LEGACY_PROTOCOL:
            raise fail(p, f"has unsupported legacy checkpoint protocol {proto!r} (expected {LEGACY_PROTOCOL})")
        sys_info = load()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            self._big_endian = True
        top = load(self._persistent_legacy)
        keys = load()
        if not isinstance(keys, list):
            raise FormatError(f"the storage key list is a {type(keys).__name__}")
        for k in keys:
            key = _key(k)
            ref = self._storages.get(key)
            isz = ref.itemsize if ref else 1
            if pos + 8 > self._size:
                raise fail(p, f"is truncated: storage {key!r} is missing", _HINT)
            (n,) = struct.unpack_from("<q" if not self._big_endian else ">q", self._mm, pos)
            if n < 0 or pos + 8 + n * isz > self._size:
                raise fail(
                    p,
                    f"is truncated: storage {key!r} claims {n} elements of {isz} bytes at offset {pos + 8} "
                    f"but the file has {self._size} bytes",
                    _HINT,
                )
            self._data[key] = (pos + 8, n * isz)
            pos += 8 + n * isz
        return top

    def _persistent_legacy(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or not pid:
            raise FormatError(f"unknown persistent id {str(pid)[:100]}")
        kind = _key(pid[0])
        if kind == "module":
            raise FormatError("the checkpoint pickles whole nn.Module objects (with their source code)")
        if kind != "storage" or len(pid) != 6:
            raise FormatError(f"unknown persistent id {str(pid)[:100]}")
        _, st, key, _loc, numel, view = pid
        st, key, numel = _storage_type(st), _key(key), _nonneg(numel, "a storage size")
        root = self._root(key, st, numel)
        if view is None:
            return root
        if not isinstance(view, tuple) or len(view) != 3:
            raise FormatError(f"a storage view is described by {str(view)[:100]}")
        vkey, off, vsize = _key(view[0]), _nonneg(view[1], "a view offset"), _nonneg(view[2], "a view size")
        return _StorageRef(vkey, st, vsize, view=(key, off * st.itemsize))

    # -- state dict -------------------------------------------------------------------------------------------------

    def _collect(self, top: Any) -> None:
        p = self.path
        if isinstance(top, _TensorRec):
            top = {"tensor": top}
        if not isinstance(top, dict):
            raise fail(p, f"holds a {type(top).__name__}, not a dict of tensors", "save a state_dict() instead")
        for k, v in top.items():
            if isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str))):
                self.metadata[k] = v
        sd, where = top, ""
        if not any(isinstance(v, _TensorRec) for v in top.values()):
            for k in STATE_DICT_KEYS:
                v = top.get(k)
                if isinstance(v, dict) and _has_tensor(v):
                    sd, where = v, k
                    break
        self.metadata["state_dict_key"] = where
        self.metadata["ckpt_layout"] = "zip" if bytes(self._mm[:2]) == b"PK" else "legacy"
        self._tensors = _flatten(sd)
        if not self._tensors:
            raise fail(p, "holds no tensors", "is it an optimizer or config file rather than model weights?")
        for name, t in self._tensors.items():
            self._infos[name] = self._check(name, t)

    def _check(self, name: str, t: _TensorRec) -> TensorInfo:
        p = self.path
        if t.dtype is None:
            raise fail(
                p,
                f"tensor {name!r} has dtype {t.dtype_name}, which sdcompile does not read",
                "convert it to float32/float16/bfloat16 before saving",
            )
        isz = PLAIN_DTYPES[t.dtype].itemsize
        n = check_shape(p, f"tensor {name!r}", t.shape, isz, _HINT)
        avail = self._storage_nbytes(t.storage, name)
        if n:
            last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
            if (last + 1) * isz > avail:
                raise fail(
                    p,
                    f"tensor {name!r} (shape {brief(t.shape)}, stride {brief(t.stride)}, offset {brief(t.offset)}) "
                    f"reaches byte {brief((last + 1) * isz)} of its storage, which has {avail} bytes",
                    _HINT,
                )
            # Strides that repeat elements (a stride of 0, as expand() makes) let a small storage describe any number
            # of elements, all of which raw() materializes. torch.save keeps such views as they are, so they are
            # read, but never into more bytes than the whole file holds: more is a header asking for memory.
            if n > avail // isz and n * isz > self._size:
                raise fail(
                    p,
                    f"tensor {name!r} (shape {brief(t.shape)}, stride {brief(t.stride)}) repeats the {avail // isz} "
                    f"elements of its storage into {n} ({n * isz} bytes, more than the whole {self._size}-byte file)",
                    "the file is corrupt, or holds an expanded view; save the tensor with .contiguous() instead",
                )
        return TensorInfo(name, t.shape, t.dtype, n * isz)

    def _storage_nbytes(self, ref: _StorageRef, name: str) -> int:
        root_key = ref.view[0] if ref.view else ref.key
        root = self._storages.get(root_key)
        loc = self._data.get(root_key)
        if root is None or loc is None:
            raise fail(self.path, f"tensor {name!r} refers to storage {root_key!r}, whose data is missing", _HINT)
        have = loc[1] if isinstance(loc, tuple) else self._compressed[root_key].file_size
        declared = root.numel * root.itemsize
        if have < declared:
            raise fail(
                self.path,
                f"storage {root_key!r} should hold {declared} bytes but the file has {have} (truncated?)",
                _HINT,
            )
        if ref.view:
            off = ref.view[1]
            size = ref.numel * ref.itemsize
            if off + size > declared:
                raise fail(self.path, f"storage view {ref.key!r} lies outside storage {root_key!r}", _HINT)
            return size
        return declared

    def _storage_bytes(self, ref: _StorageRef) -> np.ndarray:
        root_key = ref.view[0] if ref.view else ref.key
        loc = self._data[root_key]
        if isinstance(loc, tuple):
            buf = self._mm[loc[0] : loc[0] + loc[1]]
        else:
            if not loc:
                zi = self._compressed[root_key]
                loc = self._data[root_key] = self._read_member(zi, zi.file_size)
            buf = np.frombuffer(loc, dtype=np.uint8)
        if ref.view:
            off = ref.view[1]
            buf = buf[off : off + ref.numel * ref.itemsize]
        return buf

    # -- access -----------------------------------------------------------------------------------------------------

    def _get(self, name: str) -> tuple[TensorInfo, _TensorRec]:
        try:
            return self._infos[name], self._tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's elements in C order as little-endian bytes (a view of the map when the tensor is contiguous)."""
        info, t = self._get(name)
        st = PLAIN_DTYPES[info.dtype]
        isz = st.itemsize
        buf = self._storage_bytes(t.storage)
        n = prod(t.shape)
        if n == 0:
            return np.empty(0, np.uint8)
        if _contiguous(t.shape, t.stride):
            out = buf[t.offset * isz : (t.offset + n) * isz]
        else:
            elems = buf[: len(buf) // isz * isz].view(st)
            # the stride of a dimension of size 1 is never followed, and may be any number: use 0
            strides = tuple(s * isz if d > 1 else 0 for d, s in zip(t.shape, t.stride))
            view = np.lib.stride_tricks.as_strided(elems[t.offset :], shape=t.shape, strides=strides, writeable=False)
            out = np.ascontiguousarray(view).view(np.uint8).reshape(-1)
        if self._big_endian and isz > 1:
            out = out.view(st.newbyteorder(">")).astype(st).view(np.uint8)
        return out

    def array(self, name: str) -> np.ndarray:
        info, _ = self._get(name)
        return to_array(self.raw(name), info.dtype, info.shape)

    def close(self) -> None:
        self._mm = np.empty(0, np.uint8)


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expect = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != expect:
            return False
        expect *= d
    return True


def _has_tensor(d: dict) -> bool:
    return bool(_flatten(d))


def _flatten(root: dict) -> dict[str, _TensorRec]:
    """Tensors in nested dicts, named by their dotted key paths, in file order.

    Iterative and cycle-safe: a pickle can build a dict nested 100k deep, or one that contains itself.
    """
    out: dict[str, _TensorRec] = {}
    seen = {id(root)}
    stack: list[tuple[str, Any]] = [("", iter(root.items()))]
    while stack:
        prefix, items = stack[-1]
        for k, v in items:
            name = f"{prefix}{k}"
            if isinstance(v, _TensorRec):
                out[name] = v
            elif isinstance(v, dict) and id(v) not in seen:
                if len(stack) >= MAX_NESTING:
                    raise FormatError(f"dicts are nested more than {MAX_NESTING} levels deep (at {name[:200]!r}...)")
                seen.add(id(v))
                stack.append((name + ".", iter(v.items())))
                break
        else:
            stack.pop()
    return out
