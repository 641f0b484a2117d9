"""The math of the CPU GEMV fast path (``linear`` with few rows), as a numpy model that tests and docs share.

``linear`` with M <= ``MAX_ROWS`` rows on an AVX-512 CPU (where AMX does not take it: ``linear_amx.FROM_ROWS``)
runs a hand-written loop nest (``schedules/cpu_gemv.py``) instead of the decode-a-tile-then-matmul schedule, for
the weight types in ``TYPES``. Its math differs from
``linear.py`` in two ways, both like ggml's own CPU kernels:

1. **Activations are quantized to int16 inside the call.** Each row of x is cut into groups of ``group(wtype)``
   values (32: one q4_0/q8_0 block; 256: one k-quant super-block); a group gets the f32 scale
   ``dx = amax / 32767`` and the integers ``xq = rint(x * (32767 / amax))``, |xq| <= 32767 (all zero for an
   all-zero group). ggml uses 8 bits (q8_0 / q8_K) and documents ~1e-2 relative error; 16 bits make the
   activation error 256x smaller, below the f32 path's own rounding for long rows: the absolute error of one
   output is at most ``sum_j |w_j| * dx_g(j) * XQ_ERROR`` (see ``error_bound``), a relative rms error of about
   2e-5 on random data.
2. **Block scales are applied once per block.** The integer quants times xq are summed exactly in int32 (AVX-512
   ``vpdpwssds``: pairs of int16 products), then converted to f32 and multiplied by the block's scales; the
   k-quants' 6/8-bit sub-block scales multiply the quants as integers first (``q * sc`` fits int16), and their
   ``dmin * m`` / ``-32`` offsets use per-sub-block sums of xq. Every integer step is exact (bounds are asserted
   in ``schedules/cpu_gemv.py``), so the only rounding besides the activations' is f32 accumulation over blocks.

``reference`` below computes exactly that in float64 (the kernel differs from it only by f32 rounding).
Non-finite activations give non-finite outputs (a group's scale becomes NaN), as the f32 path does.
"""

from __future__ import annotations

import numpy as np

# Weight types with a GEMV kernel (the others keep the tiled path at every M).
TYPES = ("q4_0", "q8_0", "q4_k", "q6_k")
MAX_ROWS = 8  # M above this uses the tiled matmul: decoding once per tile amortizes better
XQ_MAX = 32767  # |xq| <= XQ_MAX: int16
# |x - dx * xq| <= XQ_ERROR * dx: rint's half step, plus the f32 rounding of 32767 / amax and of x * (32767 / amax)
XQ_ERROR = 0.5 + 2.0**-7


def group(wtype: str) -> int:
    """Activations per int16 scale: the weight type's block (q4_0, q8_0) or super-block (k-quants)."""
    return 32 if wtype in ("q4_0", "q8_0") else 256


def quantize_activations(x: np.ndarray, g: int, qmax: int = XQ_MAX) -> tuple[np.ndarray, np.ndarray]:
    """(xq int32 [M, K], dx f32 [M, K / g]) as the kernel computes them (f32 arithmetic, round half to even):
    ``dx = amax / qmax`` and ``xq = rint(x * (qmax / amax))`` per group of g values of a row."""
    x = np.asarray(x, np.float32)
    M, K = x.shape
    xg = x.reshape(M, K // g, g)
    amax = np.abs(xg).max(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax > 0, np.float32(qmax) / amax, np.float32(0)).astype(np.float32)
    xq = np.rint(xg * inv[..., None]).astype(np.int32).reshape(M, K)
    dx = (amax * np.float32(1.0 / qmax)).astype(np.float32)
    return xq, dx


def grouped_reference(x: np.ndarray, w: np.ndarray, g: int, qmax: int = XQ_MAX) -> np.ndarray:
    """x @ w.T in float64 on the activations a kernel quantizing per g values to +-qmax sees (xq * dx)."""
    xq, dx = quantize_activations(x, g, qmax)
    xd = xq.astype(np.float64) * np.repeat(dx.astype(np.float64), g, axis=1)
    return xd @ np.asarray(w, np.float64).T


def grouped_error_bound(x: np.ndarray, w: np.ndarray, g: int, qmax: int = XQ_MAX) -> np.ndarray:
    """Largest |kernel - x @ w.T| that quantization allows (f32 accumulation comes on top)."""
    _, dx = quantize_activations(x, g, qmax)
    step = np.repeat(dx.astype(np.float64), g, axis=1) * XQ_ERROR
    return step @ np.abs(np.asarray(w, np.float64)).T


def reference(x: np.ndarray, w: np.ndarray, wtype: str) -> np.ndarray:
    """x @ w.T in float64 on the activations the kernel sees (xq * dx); ``w`` the decoded weight [N, K]."""
    return grouped_reference(x, w, group(wtype))


def error_bound(x: np.ndarray, w: np.ndarray, wtype: str) -> np.ndarray:
    """Largest |kernel - x @ w.T| the activation quantization allows (f32 accumulation comes on top)."""
    return grouped_error_bound(x, w, group(wtype))
