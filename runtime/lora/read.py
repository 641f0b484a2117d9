"""Read a LoRA file, whatever it is called: the format comes from its first bytes (safetensors, GGUF, a PyTorch
checkpoint), as sdcompile's readers decide it.

The runtime imports no compiler code, so safetensors (a JSON header and raw arrays) and GGUF (through the `gguf`
package the runtime already reads its weights with) are read here. A pickled `.ckpt`/`.pt` LoRA is read by
sdcompile's restricted unpickler when sdcompile is installed: that reader is the one piece of security-critical code
that refuses to run anything from the file, and a second copy of it would be a second thing to keep safe. Without
sdcompile such a file is refused with what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.lora.errors import LoraError

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16", "I64": "<i8", "I32": "<i4"}


class LoraFile:
    """The tensors of one LoRA file as f32 numpy arrays (numpy order), read lazily by name."""

    def __init__(self, path: Path, fmt: str, names: list[str], read, metadata: dict | None = None) -> None:
        self.path, self.format, self._names, self._read = Path(path), fmt, list(names), read
        self.metadata = metadata or {}

    def names(self) -> list[str]:
        return list(self._names)

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self._read(name), dtype=np.float32)


def detect(path: Path) -> str:
    """ "safetensors" | "gguf" | "ckpt" from the first bytes; a LoraError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = path.stat().st_size
    except OSError as e:
        raise LoraError(f"LoRA {path}: cannot read it ({e.strerror or e})") from None
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5):
        return "ckpt"
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    raise LoraError(
        f"LoRA {path}: not a safetensors, GGUF or PyTorch checkpoint file (starts with {head[:8].hex(' ')}); "
        "LoRAs are read from those formats whatever the file is called"
    )


def _safetensors(path: Path) -> LoraFile:
    data = np.memmap(path, dtype=np.uint8, mode="r")
    n = int(data[:8].view("<u8")[0])
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except ValueError as e:
        raise LoraError(f"LoRA {path}: damaged safetensors header ({e}); re-download the file") from None
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n

    def read(name: str) -> np.ndarray:
        rec = header[name]
        dt = _SAFETENSORS_DTYPES.get(rec.get("dtype"))
        start, stop = (int(x) for x in rec["data_offsets"])
        if dt is None:
            raise LoraError(f"LoRA {path}: tensor {name} has dtype {rec.get('dtype')}, not a float type")
        if base + stop > data.size or stop < start:
            raise LoraError(f"LoRA {path}: tensor {name} lies outside the file (truncated?); re-download it")
        raw = data[base + start : base + stop]
        if dt == "bf16":  # the high half of an f32
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = raw.view(dt)
        return a.reshape([int(d) for d in rec["shape"]])

    return LoraFile(path, "safetensors", sorted(header), read, meta)


def _gguf(path: Path) -> LoraFile:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the gguf package raises assorted errors for damaged files
        raise LoraError(f"LoRA {path}: unreadable GGUF ({e}); re-download or re-convert it") from None
    tensors = {t.name: t for t in reader.tensors}

    def read(name: str) -> np.ndarray:
        t = tensors[name]
        shape = [int(d) for d in reversed(t.shape.tolist())]  # ggml order is innermost first
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)

    return LoraFile(path, "gguf", sorted(tensors), read)


def _ckpt(path: Path) -> LoraFile:
    try:
        from sdcompile.errors import SdcompileError
        from sdcompile.formats import open_store
    except ImportError:
        raise LoraError(
            f"LoRA {path} is a pickled PyTorch checkpoint; reading one needs sdcompile's restricted unpickler, which "
            "is not installed here. Convert the LoRA to safetensors (or GGUF), or install sdcompile"
        ) from None
    try:
        store = open_store(path)
    except SdcompileError as e:
        raise LoraError(f"LoRA {e}") from None
    return LoraFile(path, "ckpt", store.names(), store.array, store.metadata)


def open_lora(path: str | Path) -> LoraFile:
    p = Path(path)
    if not p.is_file():
        raise LoraError(f"LoRA {p}: no such file")
    fmt = detect(p)
    return {"safetensors": _safetensors, "gguf": _gguf, "ckpt": _ckpt}[fmt](p)
