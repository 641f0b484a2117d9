"""The math of the CPU GEMM fast path on AMX (``linear`` with at least ``FROM_ROWS[type]`` rows), as a numpy model
that tests and docs share.

``linear`` with M >= FROM_ROWS[type] rows, a weight type in ``TYPES`` and a CPU with AMX-INT8 (Sapphire Rapids and
later) runs a hand-written loop nest (``schedules/cpu_amx.py``) on the CPU's tile unit instead of decoding tiles of W to f32 for
an f32 matmul. Its math is ggml's for these types:

1. **Activations are quantized to 16 bits inside the call**, as on the GEMV path, per group of ``group(wtype)``
   values of a row (32: a q4_0/q8_0 block; 256: a k-quant super-block): ``dx = amax / 32512`` and
   ``xq = rint(x * (32512 / amax))``, |xq| <= 32512 = 127 * 256, split into two int8 halves ``xq = 256 xh + xl``
   (xh = floor((xq + 128) / 256) in [-127, 127], xl in [-128, 127]). The tile unit multiplies bytes only, so each
   product runs once per half; the tile unit is ~30x faster than AVX-512 dot products here, so the second product
   costs little next to the work around it, and the activation error stays that of 16 bits: at most
   ``sum_j |w_j| * dx_g(j) * XQ_ERROR`` per output (``error_bound``), a relative rms error of ~2e-5 on random data,
   where ggml's 8-bit activations give ~5e-3.
2. **Weights become integers, exactly**: q4_0 ``q - 8``, q5_0 ``q - 16``, q8_0 ``q``, q4_1 / q5_1 ``q`` (int8) with
   their f16 block scale (q4_1 / q5_1: and their f16 offset ``m``, applied as ``m * dx * sum(xq)``); the k-quants
   fold their integer sub-block scales in, ``P = sc * q`` (q2_k 0..45, q3_k -128..124, q4_k 0..945, q5_k 0..1953,
   with ``dmin * m`` per 16 or 32 kept apart) or ``P = sc * (q - 32)`` (q6_k, -4096..4064), split into bytes
   ``P = 256 Ph + Pl``. The tile unit sums
   byte products exactly in int32 (``TDPBSSD``, ``TDPBUSD``): per q4_0/q8_0 block ``256 sum(q xh) + sum(q xl)``,
   exact in int32; per k-quant super-block ``65536 sum(Ph xh) + 256 (sum(Ph xl) + sum(Pl xh)) + sum(Pl xl)``,
   whose three parts are each below 2^24, so exact in f32, and are added in f32. Each block's or super-block's
   sum is then multiplied by its weight scale (``d``) and its activation scale, and q4_k subtracts
   ``dmin * m * dx * sum(xq)`` per 32.

``reference`` below computes exactly that in float64 (the kernel differs from it only by f32 rounding).
Non-finite activations give non-finite outputs (the group's scale becomes NaN), as the f32 path does.
"""

from __future__ import annotations

import numpy as np

from sdcompile.kernels import linear_gemv as G

TYPES = ("q4_0", "q8_0", "q4_k", "q6_k", "q5_0", "q4_1", "q5_1", "q2_k", "q3_k", "q5_k", "iq4_nl", "iq4_xs")
# Rows of x from which the tile unit beats the GEMV path (which takes M <= 8): the tile unit's cost hardly changes
# from 1 to 16 rows, the GEMV path's grows with each. Measured, 4096 x 4096, 2 threads, weights in cache (the GEMV
# path at M = 5..8 is past the memory limit): q8_0 at M = 5 2.6 ms vs 2.1, q4_0 at 6 2.5 vs 2.2, q6_k at 7 2.5 vs
# 2.3, q4_k at 8 2.9 vs 2.7 (and at 7 2.4 vs 2.5).
# Types without a GEMV kernel: the tile unit from one row (4096 x 4096, M = 1: ~2.2 ms, against ~5 ms for the tiled
# schedule's f32 decode).
FROM_ROWS = {"q8_0": 5, "q4_0": 6, "q6_k": 7, "q4_k": 8}
FROM_ROWS.update({t: 1 for t in ("q5_0", "q4_1", "q5_1", "q2_k", "q3_k", "q5_k", "iq4_nl", "iq4_xs")})
XQ_MAX = 127 * 256  # |xq| <= 32512: xq = 256 xh + xl with xh, xl in int8
TILE = 16  # rows of the weight tile (outputs per task step) and of the activation tile (rows of x)
# |x - dx * xq| <= XQ_ERROR * dx (as for the GEMV path: rint's half step plus f32 rounding of the scaling)
XQ_ERROR = G.XQ_ERROR


def group(wtype: str) -> int:
    """Activations per scale: a block (32) or a k-quant super-block (256), as on the GEMV path."""
    return 256 if wtype.endswith("_k") or wtype == "iq4_xs" else 32


def quantize_activations(x: np.ndarray, wtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(xq int32 [M, K], dx f32 [M, K / group]) as the kernel computes them (f32 arithmetic, round half to even)."""
    return G.quantize_activations(x, group(wtype), XQ_MAX)


def reference(x: np.ndarray, w: np.ndarray, wtype: str) -> np.ndarray:
    """x @ w.T in float64 on the activations the kernel sees (xq * dx); ``w`` the decoded weight [N, K]."""
    return G.grouped_reference(x, w, group(wtype), XQ_MAX)


def error_bound(x: np.ndarray, w: np.ndarray, wtype: str) -> np.ndarray:
    """Largest |kernel - x @ w.T| the activation quantization allows (f32 accumulation comes on top)."""
    return G.grouped_error_bound(x, w, group(wtype), XQ_MAX)
