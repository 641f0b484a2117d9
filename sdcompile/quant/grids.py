"""Lookup tables of the ggml i-quants, built once on first use.

The codebooks (iq2xxs_grid, iq2xs_grid, iq2s_grid, iq3xxs_grid, iq3s_grid, iq1s_grid) are data from ggml's
`ggml-common.h`: thousands of numbers we do not want to paste. The `gguf` package (a pinned dependency, maintained
with ggml) carries each one as a hex string of packed indices into a short list of values (`grid_hex`, `grid_map`,
`grid_shape` on the classes in `gguf.quants`); we decode those strings here with our own code. The small tables are
written out below, copied from `ggml-common.h`; `tests/quant/test_reference.py` checks all of them against `gguf`
and spot-checks grid entries against `ggml-common.h`.

Every table is returned as a read-only numpy array; grids are float32 with shape (entries, values per entry), so a
dequantizer can gather rows with `grid[index]` and multiply without further conversion (all entries are small
integers, exact in float32).
"""

from __future__ import annotations

from functools import cache

import numpy as np

# kvalues_iq4nl: the non-linear 4-bit codebook shared by iq4_nl and iq4_xs.
KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
# kvalues_mxfp4: the e2m1 (fp4) values, doubled so they are integers; the block scale is halved to compensate.
KVALUES_MXFP4 = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)
# IQ1S_DELTA: the offset added to every iq1_s / iq1_m grid value, its sign chosen per group by a bit.
IQ1S_DELTA = 0.125

# Which gguf class carries each codebook.
_GRID_SOURCES = {
    "iq2xxs": "IQ2_XXS",
    "iq2xs": "IQ2_XS",
    "iq2s": "IQ2_S",
    "iq3xxs": "IQ3_XXS",
    "iq3s": "IQ3_S",
    "iq1s": "IQ1_S",
}


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@cache
def ksigns() -> np.ndarray:
    """ksigns_iq2xs: 128 sign bytes, indexed by 7 stored sign bits.

    The i-quants store only 7 of every 8 signs: the 8th is implied, chosen so that the number of negative signs is
    even. So entry i is i with bit 7 set when i has an odd number of bits set. We compute it instead of copying it.
    """
    i = np.arange(128, dtype=np.uint8)
    odd = np.unpackbits(i[:, None], axis=1).sum(axis=1) & 1
    return _readonly((i | (odd.astype(np.uint8) << 7)).astype(np.uint8))


@cache
def kvalues_iq4nl() -> np.ndarray:
    return _readonly(np.array(KVALUES_IQ4NL, dtype=np.float32))


@cache
def kvalues_mxfp4() -> np.ndarray:
    return _readonly(np.array(KVALUES_MXFP4, dtype=np.float32))


@cache
def grid(name: str) -> np.ndarray:
    """The codebook `name` (one of iq2xxs, iq2xs, iq2s, iq3xxs, iq3s, iq1s) as float32 [entries, values]."""
    from gguf import quants  # imported here: only the i-quants need it, and it is not light

    cls = getattr(quants, _GRID_SOURCES[name])
    values = np.array(cls.grid_map, dtype=np.float32)
    entries, width = cls.grid_shape

    # The hex string spells bytes; each byte packs several indices into `values`, lowest bits first. An index needs
    # ceil(log2(len(values))) bits, and gguf packs them on a power-of-two stride (3-bit indices take 4 bits).
    index_bits = max(1, (len(values) - 1).bit_length())
    per_byte = 8 // index_bits
    stride = 8 // per_byte
    packed = np.frombuffer(bytes.fromhex(cls.grid_hex.decode("ascii")), dtype=np.uint8)
    shifts = np.arange(0, 8, stride, dtype=np.uint8)
    idx = (packed[:, None] >> shifts) & np.uint8((1 << index_bits) - 1)
    table = values[idx.reshape(-1)]
    if table.size != entries * width:
        raise RuntimeError(f"gguf's {name} grid decodes to {table.size} values, expected {entries}x{width}")
    return _readonly(table.reshape(entries, width))
