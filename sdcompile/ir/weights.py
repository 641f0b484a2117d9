"""Materialize a weight value: read its source tensor and convert it to the storage type the passes chose."""

from __future__ import annotations

import numpy as np

from sdcompile.ir.graph import Value


def raw_bytes(v: Value, packed: bool = True) -> np.ndarray:
    """The weight's bytes in its storage type (ggml block layout), as a flat uint8 array; in its layout
    (``kernels/layouts.py``) unless ``packed`` is false (row-major, as every reference reads it)."""
    from sdcompile.quant.reference import dequantize, quantize

    d = v.data
    dtype = d.source_dtype
    if d.expr is not None:  # a derived weight: its f32 values, then the types the passes chose
        values = d.expr.evaluate()
        raw = np.ascontiguousarray(quantize(values, dtype)).reshape(-1).view(np.uint8)
    else:
        raw = np.ascontiguousarray(d.store.raw(d.key)).reshape(-1).view(np.uint8)
    for step in d.steps or [v.dtype]:
        if step != dtype:
            if dtype != d.source_dtype or d.expr is not None:
                values = dequantize(raw, dtype, v.shape)
            else:
                values = d.store.array(d.key)
            raw = np.ascontiguousarray(quantize(np.asarray(values, dtype=np.float32), step)).reshape(-1)
            dtype = step
    if dtype != v.dtype:  # internal bug: a pass changed the dtype without recording a step
        raise AssertionError(f"{v.name}: steps {d.steps} end at {dtype}, value says {v.dtype}")
    if packed and d.layout:
        from sdcompile.kernels import layouts

        raw = layouts.pack(d.layout, raw, *v.shape)
    return raw


def as_f32(v: Value) -> np.ndarray:
    """The values the compiled model will compute with: storage bytes decoded back to f32."""
    from sdcompile.quant.reference import dequantize

    return dequantize(raw_bytes(v, packed=False), v.dtype, v.shape).astype(np.float32, copy=False)
