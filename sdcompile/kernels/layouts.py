"""Weight layouts: a weight stored in an order its kernel reads directly, instead of row-major [N, K] (``N`` outputs,
``K`` values each). ``passes/pack_weights.py`` chooses one; the artifact writer packs the values (``pack``); the TE
compute reads W[n, k] at ``position`` (so every schedule, and the reference check, sees the same logical weight).

``amx_bf16``: the B operands of the AMX-BF16 GEMM (``schedules/cpu_amx_bf16.py``), bf16. Tile (t, s) holds weight
rows 16 t .. 16 t + 15 by values 32 s .. 32 s + 31 as 16 rows of 16 words: word r of row p holds values 2p and
2p + 1 of weight row 16 t + r (low, high half). Tiles run s-fastest, so a unit of weight rows is one run of 1 KB tiles
in K order, which the kernel loads straight into tile registers (nothing decoded per call).
"""

from __future__ import annotations

import numpy as np

AMX_BF16 = "amx_bf16"
LAYOUTS = (AMX_BF16,)
# storage type each layout holds its values in
DTYPE = {AMX_BF16: "bf16"}


def fits(layout: str, N: int, K: int) -> bool:
    """Whether an [N, K] weight can be stored in ``layout`` (whole tiles)."""
    _known(layout)
    return N % 16 == 0 and K % 32 == 0


def position(layout: str, n, k, K: int):
    """The element index (in storage order) of W[n, k]; ints or TIR expressions alike."""
    _known(layout)
    return ((n // 16) * (K // 32) + k // 32) * 512 + ((k % 32) // 2) * 32 + (n % 16) * 2 + k % 2


def pack(layout: str, w: np.ndarray) -> np.ndarray:
    """The elements of the row-major [N, K] array ``w`` (any element type) in ``layout``'s order, flat."""
    _known(layout)
    n, k = w.shape
    return np.ascontiguousarray(w.reshape(n // 16, 16, k // 32, 16, 2).transpose(0, 2, 3, 1, 4)).reshape(-1)


def unpack(layout: str, flat: np.ndarray, N: int, K: int) -> np.ndarray:
    """``pack``'s inverse: the row-major [N, K] array of a weight stored in ``layout``."""
    _known(layout)
    return np.ascontiguousarray(flat.reshape(N // 16, K // 32, 16, 16, 2).transpose(0, 3, 1, 2, 4)).reshape(N, K)


def _known(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}")
