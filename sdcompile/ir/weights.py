"""Materialize a weight value: read its source tensor and convert it to the storage type the passes chose."""

from __future__ import annotations

import numpy as np

from sdcompile.ir.graph import Value


def raw_bytes(v: Value) -> np.ndarray:
    """The weight's bytes in its storage type (ggml block layout), as a flat uint8 array."""
    from sdcompile.quant.reference import quantize

    d = v.data
    if v.dtype == d.source_dtype:
        return np.ascontiguousarray(d.store.raw(d.key)).reshape(-1).view(np.uint8)
    return np.ascontiguousarray(quantize(np.asarray(d.store.array(d.key), dtype=np.float32), v.dtype)).reshape(-1)


def as_f32(v: Value) -> np.ndarray:
    """The values the compiled model will compute with: storage bytes decoded back to f32."""
    from sdcompile.quant.reference import dequantize

    return dequantize(raw_bytes(v), v.dtype, v.shape).astype(np.float32, copy=False)
