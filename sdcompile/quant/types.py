"""The ggml quant types as data: block size, bytes per block and block layout.

A quantized tensor is stored as rows of blocks; each block encodes `block_size` consecutive values of the innermost
dimension in `type_size` bytes. The layout strings list a block's fields in byte order (type and count), following
ggml's `block_*` structs; they are documentation for people and kernels, checked against the byte sizes by a test.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdcompile.errors import QuantError


@dataclass(frozen=True)
class QuantType:
    name: str  # lower-case, as on the command line: "q4_0"
    ggml_id: int  # the value of enum ggml_type in GGUF files
    block_size: int  # values per block
    type_size: int  # bytes per block
    layout: tuple[tuple[str, str, int], ...]  # (field, element type, count) in byte order
    is_float: bool = False  # plain float types (f32, f16, bf16): no block structure

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n: int) -> int:
        """Bytes for one row of `n` values; `n` must be a multiple of the block size."""
        if n % self.block_size:
            raise QuantError(
                f"a row of {n} values cannot be stored as {self.name}: its block size is {self.block_size}; "
                f"choose a type whose block size divides {n} (for example f16 or q8_0)"
            )
        return n // self.block_size * self.type_size

    def nbytes(self, shape: tuple[int, ...]) -> int:
        rows = 1
        for d in shape[:-1]:
            rows *= d
        return rows * self.row_bytes(shape[-1] if shape else 1)


def _q(name, gid, bs, ts, layout, is_float=False):
    return QuantType(name, gid, bs, ts, tuple(layout), is_float)


_K = 256  # QK_K, the super-block size of the k-quants and i-quants

_TABLE = [
    _q("f32", 0, 1, 4, [("v", "f32", 1)], True),
    _q("f16", 1, 1, 2, [("v", "f16", 1)], True),
    _q("bf16", 30, 1, 2, [("v", "bf16", 1)], True),
    _q("q4_0", 2, 32, 18, [("d", "f16", 1), ("qs", "u8", 16)]),
    _q("q4_1", 3, 32, 20, [("d", "f16", 1), ("m", "f16", 1), ("qs", "u8", 16)]),
    _q("q5_0", 6, 32, 22, [("d", "f16", 1), ("qh", "u8", 4), ("qs", "u8", 16)]),
    _q("q5_1", 7, 32, 24, [("d", "f16", 1), ("m", "f16", 1), ("qh", "u8", 4), ("qs", "u8", 16)]),
    _q("q8_0", 8, 32, 34, [("d", "f16", 1), ("qs", "i8", 32)]),
    _q("q2_k", 10, _K, 84, [("scales", "u8", 16), ("qs", "u8", 64), ("d", "f16", 1), ("dmin", "f16", 1)]),
    _q("q3_k", 11, _K, 110, [("hmask", "u8", 32), ("qs", "u8", 64), ("scales", "u8", 12), ("d", "f16", 1)]),
    _q("q4_k", 12, _K, 144, [("d", "f16", 1), ("dmin", "f16", 1), ("scales", "u8", 12), ("qs", "u8", 128)]),
    _q(
        "q5_k",
        13,
        _K,
        176,
        [("d", "f16", 1), ("dmin", "f16", 1), ("scales", "u8", 12), ("qh", "u8", 32), ("qs", "u8", 128)],
    ),
    _q("q6_k", 14, _K, 210, [("ql", "u8", 128), ("qh", "u8", 64), ("scales", "i8", 16), ("d", "f16", 1)]),
    _q("iq2_xxs", 16, _K, 66, [("d", "f16", 1), ("qs", "u16", 32)]),
    _q("iq2_xs", 17, _K, 74, [("d", "f16", 1), ("qs", "u16", 32), ("scales", "u8", 8)]),
    _q("iq3_xxs", 18, _K, 98, [("d", "f16", 1), ("qs", "u8", 96)]),
    _q("iq1_s", 19, _K, 50, [("d", "f16", 1), ("qs", "u8", 32), ("qh", "u16", 8)]),
    _q("iq4_nl", 20, 32, 18, [("d", "f16", 1), ("qs", "u8", 16)]),
    _q(
        "iq3_s",
        21,
        _K,
        110,
        [("d", "f16", 1), ("qs", "u8", 64), ("qh", "u8", 8), ("signs", "u8", 32), ("scales", "u8", 4)],
    ),
    _q("iq2_s", 22, _K, 82, [("d", "f16", 1), ("qs", "u8", 64), ("qh", "u8", 8), ("scales", "u8", 8)]),
    _q("iq4_xs", 23, _K, 136, [("d", "f16", 1), ("scales_h", "u16", 1), ("scales_l", "u8", 4), ("qs", "u8", 128)]),
    _q("iq1_m", 29, _K, 56, [("qs", "u8", 32), ("qh", "u8", 16), ("scales", "u8", 8)]),
    _q("tq1_0", 34, _K, 54, [("qs", "u8", 48), ("qh", "u8", 4), ("d", "f16", 1)]),
    _q("tq2_0", 35, _K, 66, [("qs", "u8", 64), ("d", "f16", 1)]),
    _q("mxfp4", 39, 32, 17, [("e", "u8", 1), ("qs", "u8", 16)]),
]

QUANT_TYPES: dict[str, QuantType] = {t.name: t for t in _TABLE}
BY_GGML_ID: dict[int, QuantType] = {t.ggml_id: t for t in _TABLE}

# Plain (non-block) element types GGUF may also hold (ids, masks); readers return them in their stored dtype.
GGUF_PLAIN_INT = {24: ("i8", 1), 25: ("i16", 2), 26: ("i32", 4), 27: ("i64", 8), 28: ("f64", 8)}


def get(name: str) -> QuantType:
    """Look a type up by its command-line name, case-insensitively."""
    t = QUANT_TYPES.get(name.lower())
    if t is None:
        raise QuantError(f"unknown quant type {name!r}; known types: {', '.join(QUANT_TYPES)}")
    return t
