"""Builders for tiny weight files of every format, shared by the reader, detection and malformed-input tests."""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# safetensors


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict -> JSON, or raw bytes) and a data section, with an optional fake length."""
    import json

    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if length is None else length
    return struct.pack("<Q", n) + h + data


def make_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A small file written by the safetensors package; returns the tensors it holds."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {
        "w.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "w.f16": rng.standard_normal((4, 2)).astype(np.float16),
        "w.f64": rng.standard_normal((2,)).astype(np.float64),
        "i.i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "i.i32": np.arange(-3, 3, dtype=np.int32),
        "i.i16": np.arange(4, dtype=np.int16),
        "i.i8": np.arange(-4, 4, dtype=np.int8),
        "i.u8": np.arange(7, dtype=np.uint8),
        "b.bool": np.array([True, False, True]),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    save_file(tensors, str(path), metadata={"format": "pt", "note": "tiny"})
    return tensors


# ---------------------------------------------------------------------------------------------------------------
# GGUF, built by hand for precise corruptions


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(
    kvs: list[tuple[str, int, bytes]] | None = None,
    tensors: list[tuple[str, list[int], int, int]] | None = None,
    data: bytes = b"",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    alignment: int = 32,
    magic: bytes = b"GGUF",
) -> bytes:
    """kvs: (key, value type, packed value); tensors: (name, dims innermost first, ggml type, offset)."""
    kvs = kvs or []
    tensors = tensors or []
    out = bytearray(magic + struct.pack("<I", version))
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    for key, vt, packed in kvs:
        out += gguf_string(key) + struct.pack("<I", vt) + packed
    for name, dims, tid, off in tensors:
        out += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", tid, off)
    out += b"\0" * (-len(out) % alignment)
    return bytes(out) + data


def simple_gguf() -> bytes:
    """One f32 tensor [2, 4] (numpy order) = arange(8), one u32 and one string key."""
    kvs = [("general.architecture", 8, gguf_string("llama")), ("x.count", 4, struct.pack("<I", 7))]
    return gguf_bytes(kvs, [("t", [4, 2], 0, 0)], np.arange(8, dtype=np.float32).tobytes())


# ---------------------------------------------------------------------------------------------------------------
# PyTorch checkpoints crafted by hand: a pickle that names torch's rebuild functions by reference (pickling a
# reference never calls it), so tests can describe storages and tensors torch.save would never write.


class FakeStorage:
    def __init__(self, key: str, numel: int, stype: str = "FloatStorage") -> None:
        self.key, self.numel, self.stype = key, numel, stype


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset, size, stride) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        import torch

        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _CraftPickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            import torch

            st = getattr(torch, obj.stype)
            if self.legacy:
                return ("storage", st, obj.key, "cpu", obj.numel, None)
            return ("storage", st, obj.key, "cpu", obj.numel)
        return None


def craft_pickle(obj, legacy: bool = False) -> bytes:
    """Pickle `obj` (holding FakeTensor/FakeStorage) the way torch.save does, protocol 2."""
    import io

    buf = io.BytesIO()
    p = _CraftPickler(buf, protocol=2)
    p.legacy = legacy
    p.dump(obj)
    return buf.getvalue()


def zip_ckpt(path: Path, pkl: bytes, storages: dict[str, bytes], folder: str = "archive") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", pkl)
        zf.writestr(f"{folder}/byteorder", "little")
        for k, v in storages.items():
            zf.writestr(f"{folder}/data/{k}", v)
        zf.writestr(f"{folder}/version", "3\n")
    return path


def legacy_ckpt(path: Path, pkl: bytes, storages: list[tuple[str, bytes, int]]) -> Path:
    """storages: (key, bytes, element size) in file order."""
    out = bytearray()
    out += pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    out += pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    out += pkl
    out += pickle.dumps([k for k, _, _ in storages], protocol=2)
    for _, b, isz in storages:
        out += struct.pack("<q", len(b) // isz) + b
    path.write_bytes(bytes(out))
    return path
