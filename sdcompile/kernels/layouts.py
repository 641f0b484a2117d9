"""Weight layouts: a weight stored in an order its kernel reads directly, instead of row-major [N, K] (``N`` outputs,
``K`` values each; quant types: each row's blocks in order). ``passes/pack_weights.py`` chooses one; the artifact
writer reorders the stored bytes (``pack``); the TE compute reads W[n, k] where the layout put it (``position``,
``q8_0_scale_byte``, ``q8_0_quant_byte``, ``vnni_q8_0_scale_byte``, ``vnni_q8_0_quant_byte``), so every schedule,
and the reference check, sees the same logical weight.

The first two hold the operands of the AMX-BF16 GEMM (``schedules/cpu_amx_bf16.py``) in tiles of 16 weight rows by
32 values, s-fastest (tile (t, s): rows 16 t .. 16 t + 15, values 32 s .. 32 s + 31), so a unit of weight rows is one
run of tiles in K order:

- ``amx_bf16`` (bf16): a tile is the kernel's B operand itself, 16 rows of 16 words, word r of row p holding values
  2p and 2p + 1 of weight row 16 t + r (low, high half): loaded into a tile register as it is stored. Row p of a
  tile is also the vector ``vdpbf16ps`` multiplies at pair step 16 s + p for those 16 outputs, so the vector unit's
  bf16 GEMM (``schedules/cpu_bf16_dot.py``, no tile unit) reads the same layout;
- ``amx_q8_0`` (q8_0, 544 bytes a tile, as 16 of its blocks): the 16 rows' f16 scales d, then the 512 quants in the
  same order as the B operand's values (row p: for each weight row r, quants 2p and 2p + 1). Decoding is a
  conversion and a multiplication per 16 values and one rounding to bf16 per 32, with no transposes (the row-major
  blocks need a 16 x 16 transpose per tile).

A third holds q8_0 for the int8 GEMM on AVX-512 VNNI (``schedules/cpu_vnni.py``, CPUs without the tile unit),
in the same tiles of 16 weight rows by 32 values, s-fastest:

- ``vnni_q8_0`` (q8_0, the same bytes as row-major q8_0): first every tile's 512 quants, step t = (k % 32) // 4 of
  ``vpdpbusd`` at 64 t, weight row 16 t + r's 4 quants of that step at 4 r (the vector the kernel multiplies), each
  stored as q + 128 (q XOR 0x80: the instruction's unsigned operand); then every tile's 16 f16 scales (32 bytes, in
  the same tile order). The quant tiles, 512 bytes each, stay aligned to the vector; the kernel reads them in place
  where it had decoded the row-major blocks into a panel of this form on every call, which at the UNet's few-row
  GEMMs (4x4 latents, 32 rows) took 30-46% of the kernel's time.

A fourth holds the f32 FMA GEMM's weight panels (``schedules/cpu_fma.py``, f32 products):

- ``fma_f32`` (f32): units of ``FMA_ROWS`` = 64 weight rows, each unit K-major: W[n, k] at
  (n // 64) 64 K + 64 k + n % 64, so that step k of a unit is the 4 vectors its register block multiplies. The
  kernel reads a unit in place instead of transposing it into a panel on every call, which in the model waited on
  the weights coming from memory (the SD1.5 text encoder in f32, AMD Zen 4, 2 threads: 135.6 -> 129.8 ms).
"""

from __future__ import annotations

import numpy as np

AMX_BF16 = "amx_bf16"
AMX_Q8_0 = "amx_q8_0"
VNNI_Q8_0 = "vnni_q8_0"
FMA_F32 = "fma_f32"
LAYOUTS = (AMX_BF16, AMX_Q8_0, VNNI_Q8_0, FMA_F32)
# the storage type each layout holds its values in
DTYPE = {AMX_BF16: "bf16", AMX_Q8_0: "q8_0", VNNI_Q8_0: "q8_0", FMA_F32: "f32"}
# what each layout is, for the compile report
SUMMARY = {
    AMX_BF16: "as bf16 in tile order (the AMX tiles' and vdpbf16ps's operands), loaded in place",
    AMX_Q8_0: "as q8_0 in tile order",
    VNNI_Q8_0: "as q8_0 in vpdpbusd order (the int8 VNNI GEMM's operands), read in place",
    FMA_F32: "as f32 panels of 64 rows, K-major (the f32 FMA GEMM's operands), read in place",
}
Q8_TILE = 16 * 34  # bytes of an amx_q8_0 tile: 16 scales, 512 quants
VNNI_BIAS = 0x80  # added to (XORed into) each vnni_q8_0 quant: vpdpbusd's unsigned operand
FMA_ROWS = 64  # weight rows per fma_f32 unit: the FMA GEMM's 4 vectors per register block (cpu_fma.register_block)


def fits(layout: str, N: int, K: int) -> bool:
    """Whether an [N, K] weight can be stored in ``layout``: whole tiles; fma_f32, whole units of rows and K in whole
    vectors (the kernel's panels have no padding then)."""
    _known(layout)
    if layout == FMA_F32:
        return N % FMA_ROWS == 0 and K % 16 == 0
    return N % 16 == 0 and K % 32 == 0


def _tile(n, k, K: int):
    """The index of the tile holding W[n, k]: tiles of 16 rows by 32 values, s-fastest."""
    return (n // 16) * (K // 32) + k // 32


def _in_tile(n, k):
    """W[n, k]'s place among its tile's 512 values, in the B operand's order (row p = (k % 32) // 2 of 16 pairs)."""
    return ((k % 32) // 2) * 32 + (n % 16) * 2 + k % 2


def position(layout: str, n, k, K: int):
    """amx_bf16, fma_f32: the element index (in storage order) of W[n, k]; ints or TIR expressions alike."""
    if layout == FMA_F32:
        return (n // FMA_ROWS) * (FMA_ROWS * K) + k * FMA_ROWS + n % FMA_ROWS
    if layout != AMX_BF16:
        raise ValueError(f"weight layout {layout!r} has no element positions (its values are blocks)")
    return _tile(n, k, K) * 512 + _in_tile(n, k)


def q8_0_scale_byte(n, s, K: int):
    """amx_q8_0: the byte offset of the f16 scale of W[n, 32 s .. 32 s + 31]."""
    return _tile(n, 32 * s, K) * Q8_TILE + 2 * (n % 16)


def q8_0_quant_byte(n, k, K: int):
    """amx_q8_0: the byte offset of W[n, k]'s int8 quant (after the tile's 32 bytes of scales)."""
    return _tile(n, k, K) * Q8_TILE + 32 + _in_tile(n, k)


def vnni_q8_0_quant_byte(n, k, K: int):
    """vnni_q8_0: the byte offset of W[n, k]'s quant (stored as q + ``VNNI_BIAS``)."""
    return _tile(n, k, K) * 512 + ((k % 32) // 4) * 64 + (n % 16) * 4 + k % 4


def vnni_q8_0_scale_byte(n, s, N: int, K: int):
    """vnni_q8_0: the byte offset of the f16 scale of W[n, 32 s .. 32 s + 31] (after the N K bytes of quants)."""
    return N * K + _tile(n, 32 * s, K) * 32 + 2 * (n % 16)


def pack(layout: str, raw: np.ndarray, N: int, K: int) -> np.ndarray:
    """The bytes ``raw`` of an [N, K] weight stored row-major in ``DTYPE[layout]``, reordered into ``layout``."""
    _known(layout)
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if layout == FMA_F32:
        w = raw.view(np.uint32).reshape(N // FMA_ROWS, FMA_ROWS, K)
        return np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(-1).view(np.uint8)
    if layout == AMX_BF16:
        w = raw.view(np.uint16).reshape(N // 16, 16, K // 32, 16, 2)
        return np.ascontiguousarray(w.transpose(0, 2, 3, 1, 4)).reshape(-1).view(np.uint8)
    blocks = raw.reshape(N // 16, 16, K // 32, 34)
    d = blocks[..., :2].transpose(0, 2, 1, 3).reshape(N // 16, K // 32, 32)
    if layout == VNNI_Q8_0:
        q = blocks[..., 2:].reshape(N // 16, 16, K // 32, 8, 4).transpose(0, 2, 3, 1, 4) ^ np.uint8(VNNI_BIAS)
        return np.concatenate([q.reshape(-1), d.reshape(-1)])
    q = blocks[..., 2:].reshape(N // 16, 16, K // 32, 16, 2).transpose(0, 2, 3, 1, 4).reshape(N // 16, K // 32, 512)
    return np.ascontiguousarray(np.concatenate([d, q], axis=2)).reshape(-1)


def unpack(layout: str, packed: np.ndarray, N: int, K: int) -> np.ndarray:
    """``pack``'s inverse: the row-major bytes of a weight stored in ``layout``."""
    _known(layout)
    packed = np.ascontiguousarray(packed).reshape(-1).view(np.uint8)
    if layout == FMA_F32:
        w = packed.view(np.uint32).reshape(N // FMA_ROWS, K, FMA_ROWS)
        return np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(-1).view(np.uint8)
    if layout == AMX_BF16:
        w = packed.view(np.uint16).reshape(N // 16, K // 32, 16, 16, 2)
        return np.ascontiguousarray(w.transpose(0, 3, 1, 2, 4)).reshape(-1).view(np.uint8)
    if layout == VNNI_Q8_0:
        q = packed[: N * K].reshape(N // 16, K // 32, 8, 16, 4).transpose(0, 3, 1, 2, 4) ^ np.uint8(VNNI_BIAS)
        d = packed[N * K :].reshape(N // 16, K // 32, 16, 2).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(np.concatenate([d, q.reshape(N // 16, 16, K // 32, 32)], axis=3)).reshape(-1)
    tiles = packed.reshape(N // 16, K // 32, Q8_TILE)
    d = tiles[..., :32].reshape(N // 16, K // 32, 16, 2).transpose(0, 2, 1, 3)
    q = tiles[..., 32:].reshape(N // 16, K // 32, 16, 16, 2).transpose(0, 3, 1, 2, 4).reshape(N // 16, 16, K // 32, 32)
    return np.ascontiguousarray(np.concatenate([d, q], axis=3)).reshape(-1)


def row_major(layout: str, data: np.ndarray, N: int, K: int) -> np.ndarray:
    """A weight's stored data (any dtype and shape, as a reader of the weights file returns it) in row-major order,
    same dtype and shape: what ``unpack`` gives, for readers that decode the file's tensors themselves."""
    data = np.ascontiguousarray(data)
    return unpack(layout, data.view(np.uint8), N, K).view(data.dtype).reshape(data.shape)


def artifact_layouts(artifact) -> dict[str, str]:
    """The layout of each packed weight of an artifact (name -> layout), as its manifest records them: the weights
    file holds those tensors in that order, which a GGUF reader does not know."""
    import json
    from pathlib import Path

    tensors = json.loads((Path(artifact) / "manifest.json").read_text())["weights"]["tensors"]
    return {name: t["layout"] for name, t in tensors.items() if t.get("layout")}


def _known(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}")
