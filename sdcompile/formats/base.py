"""The one interface every weight-file reader implements: a lazy, memory-mapped tensor store.

Tensors are described by `TensorInfo` up front (no data read); `raw()` returns the stored bytes (quantized blocks kept
as they are) and `array()` returns a numpy array, dequantized to f32 for quant types. Shapes are in numpy order
(outermost first) whatever order the file uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order, outermost first
    # a quant-type name from sdcompile.quant ("f32", "f16", "bf16", "q4_0", ...) or a plain type:
    # "f64", "i8"/"i16"/"i32"/"i64", "u8"/"u16"/"u32"/"u64", "bool", "f8_e4m3"/"f8_e5m2" (array() gives f32)
    dtype: str
    nbytes: int  # bytes of the stored data


class TensorStore:
    """Base class; readers fill `format`, `metadata` and `_infos`, and implement `raw`."""

    format: str = ""  # "safetensors" | "gguf" | "ckpt" | "onnx"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = {}
        self._infos: dict[str, TensorInfo] = {}

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def missing(self, name: str) -> Exception | None:
        """Why a tensor a lifter looks for is absent, where the file itself can tell (an ONNX export that renamed
        its weights); None: it simply is not there."""
        return None

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor as a uint8 array (a memory-mapped view where the format allows)."""
        raise NotImplementedError

    def array(self, name: str) -> np.ndarray:
        """The tensor as a numpy array in numpy order: f32 for quant types and bf16, else the stored dtype."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
