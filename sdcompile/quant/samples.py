"""Valid sample weights of any quant type, for kernel checks: real quantizer output where one exists, else random
blocks whose float fields are small and finite.

Random bytes are a valid encoding for every field except the f16 scales (which could be inf/NaN) and mxfp4's shared
exponent (which could overflow); those are overwritten. iq1_m splits its f16 scale across the top nibbles of its
four 16-bit `scales` words.
"""

from __future__ import annotations

import numpy as np

from sdcompile.quant.types import QuantType, get

_SIZE = {"f32": 4, "f16": 2, "bf16": 2, "u8": 1, "i8": 1, "u16": 2}


def _field_offsets(t: QuantType, kind: str) -> list[int]:
    off, out = 0, []
    for _, etype, count in t.layout:
        if etype == kind:
            out += [off + 2 * i for i in range(count)]
        off += _SIZE[etype] * count
    return out


def sample_raw(qtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Flat uint8 bytes of a tensor of `shape` stored as `qtype`."""
    from sdcompile.quant.reference import QUANTIZABLE, quantize

    t = get(qtype)
    if t.name in QUANTIZABLE:
        return quantize(rng.standard_normal(shape).astype(np.float32), t)
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    nblocks = rows * (shape[-1] // t.block_size)
    blocks = rng.integers(0, 256, (nblocks, t.type_size), dtype=np.uint8)
    scales = (rng.uniform(0.5, 1.0, nblocks) * 2.0**-7).astype(np.float16)
    for off in _field_offsets(t, "f16"):
        blocks[:, off : off + 2] = scales.view(np.uint8).reshape(nblocks, 2)
    if t.name == "iq1_m":
        bits = scales.view(np.uint16)
        sc = blocks[:, 48:56].view(np.uint16).copy()  # 4 little-endian u16; their top nibbles hold the scale
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
        blocks[:, 48:56] = sc.view(np.uint8).reshape(nblocks, 8)
    if t.name == "mxfp4":
        blocks[:, 0] = rng.integers(118, 128, nblocks)  # e8m0 exponent: 2^-9 .. 2^0
    return blocks.reshape(-1)
