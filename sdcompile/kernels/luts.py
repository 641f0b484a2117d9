"""Lookup tables that kernels read as device data: which weight types need which table, and each table's words.

The i-quants decode through ggml's codebooks (``ggml-common.h``): a grid index selects 8 (iq2, iq1) or 4 (iq3) small
values packed one per byte into a u64 (or u32) entry. Kernels receive a table as a flat buffer of little-endian
``uint32`` words — the one buffer layout all targets share (WGSL has no 8-bit or 64-bit types) — in ggml's own
layout: entry ``i`` of a u64 grid is words ``2i`` (values 0..3) and ``2i + 1`` (values 4..7), value ``k`` in byte
``k % 4``; a u32 grid has one word per entry. Signed grids (iq1s: -1, 0, 1) hold two's-complement bytes.

A kernel whose weight type needs tables takes one ``kind="lut"`` parameter per table (``spec.py``), named after the
table; the artifact stores every table its plan uses once (``sdcompile.codegen.artifact.write_luts``) and the
runtime uploads each once and passes it wherever a step says ``{"lut": name}``.

Two of ggml's small tables are not tables here: ``ksigns_iq2xs`` (the 8th sign bit is the parity of the 7 stored ones)
is computed with a few shifts, and ``kvalues_iq4nl`` (16 bytes) is held in four constant words — both cheaper than a
memory load and one buffer binding fewer.

Numpy only: ``spec.py`` (imported by the IR and passes) reads ``TABLE_WORDS`` without loading TVM or building a table.
"""

from __future__ import annotations

from functools import cache

import numpy as np

# Table name -> (source codebook in ``sdcompile.quant.grids``, entries, values per entry). Names follow ggml's.
TABLES: dict[str, tuple[str, int, int]] = {
    "iq1s_grid": ("iq1s", 2048, 8),
    "iq2s_grid": ("iq2s", 1024, 8),
    "iq2xs_grid": ("iq2xs", 512, 8),
    "iq2xxs_grid": ("iq2xxs", 256, 8),
    "iq3s_grid": ("iq3s", 512, 4),
    "iq3xxs_grid": ("iq3xxs", 256, 4),
}

# uint32 words of each table: entries * values / 4 (one byte per value).
TABLE_WORDS: dict[str, int] = {name: n * width // 4 for name, (_, n, width) in TABLES.items()}

# Weight type -> the tables its decoder reads, in kernel parameter order. Types not listed read none.
TYPE_TABLES: dict[str, tuple[str, ...]] = {
    "iq1_s": ("iq1s_grid",),
    "iq1_m": ("iq1s_grid",),
    "iq2_xxs": ("iq2xxs_grid",),
    "iq2_xs": ("iq2xs_grid",),
    "iq2_s": ("iq2s_grid",),
    "iq3_xxs": ("iq3xxs_grid",),
    "iq3_s": ("iq3s_grid",),
}


def tables_for(wtype: str) -> tuple[str, ...]:
    """The lookup tables a kernel decoding ``wtype`` reads (empty for most types)."""
    return TYPE_TABLES.get(wtype.lower(), ())


@cache
def _words(name: str) -> bytes:
    from sdcompile.quant import grids

    source, entries, width = TABLES[name]
    values = grids.grid(source)  # float32 [entries, width], small integers
    if values.shape != (entries, width):
        raise RuntimeError(f"codebook {source} has shape {values.shape}, expected {(entries, width)}")
    # One byte per value, two's complement for iq1s's -1 (0xFF), exactly the bytes of ggml's grid entries.
    as_bytes = values.astype(np.int16).astype(np.uint8)
    return as_bytes.reshape(-1).tobytes()


def table_words(name: str) -> np.ndarray:
    """The table ``name`` as little-endian uint32 words (a read-only array of ``TABLE_WORDS[name]`` words)."""
    if name not in TABLES:
        raise KeyError(f"unknown lookup table {name!r}; known: {', '.join(sorted(TABLES))}")
    a = np.frombuffer(_words(name), dtype="<u4")
    assert a.size == TABLE_WORDS[name]
    return a
