"""ctypes bridge to ggml's own quantizer: the `libggml-base` that `llama-cpp-python` bundles.

The k-quant and i-quant quantizers of sdcompile are checked byte for byte against `ggml_quantize_chunk`, the function
`llama-quantize` calls. `llama-cpp-python` builds llama.cpp into its wheel and ships the shared libraries in
`site-packages/llama_cpp/lib/`; ggml's quantizers live in `libggml-base.so` (`libggml.so` and `libggml-cpu.so` are
not needed: `ggml_quantize_chunk` is defined and runs entirely in ggml-base). We locate the package without importing
it (importing `llama_cpp` loads libllama and every backend), so a test that needs only the quantizer stays cheap.

The environment variable SDCOMPILE_GGML_BASE may name the library file instead (any ggml build of the same version).

    size_t ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst,
                               int64_t start, int64_t nrows, int64_t n_per_row, const float * imatrix);

`imatrix` is NULL here: that selects the `quantize_row_*_ref` code for the k-quants and `quantize_iq4_nl` /
`quantize_iq4_xs` (best-scale search with ntry = 7) for the i-quants, which is what `sdcompile.quant.kquants` mirrors.
`ggml_quantize_chunk` calls `ggml_quantize_init` itself (a no-op for these types).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from functools import cache
from pathlib import Path

import numpy as np

from sdcompile.quant.types import get

_LIB_NAMES = {
    "linux": ("libggml-base.so",),
    "darwin": ("libggml-base.dylib",),
    "win32": ("ggml-base.dll",),
}


def find_library() -> Path | None:
    """The path of the bundled libggml-base, or None when llama-cpp-python is not installed."""
    override = os.environ.get("SDCOMPILE_GGML_BASE")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    names = _LIB_NAMES.get(sys.platform, _LIB_NAMES["linux"])
    for root in spec.submodule_search_locations:
        for sub in ("lib", ""):
            for name in names:
                p = Path(root) / sub / name
                if p.exists():
                    return p
    return None


@cache
def load() -> ctypes.CDLL:
    """Load libggml-base and declare the functions we call. Raises OSError when it cannot be found or loaded."""
    path = find_library()
    if path is None:
        raise OSError("llama-cpp-python is not installed: no bundled libggml-base to compare with")
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,  # enum ggml_type
        ctypes.c_void_p,  # const float * src
        ctypes.c_void_p,  # void * dst
        ctypes.c_int64,  # start (element index of the first row)
        ctypes.c_int64,  # nrows
        ctypes.c_int64,  # n_per_row
        ctypes.c_void_p,  # const float * imatrix (NULL)
    ]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    return lib


def skip_reason() -> str | None:
    """Why ggml cannot be used here (for pytest.skip), or None when it can."""
    try:
        load()
    except OSError as e:
        return f"ggml reference unavailable: {e}"
    return None


def library_path() -> Path | None:
    return find_library()


def ggml_quantize(arr: np.ndarray, type_name: str) -> bytes:
    """Quantize a 2-D float32 array [rows, n_per_row] with ggml_quantize_chunk (imatrix NULL); the raw bytes."""
    t = get(type_name)
    x = np.ascontiguousarray(arr, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"ggml_quantize takes a 2-D array [rows, n_per_row], got shape {x.shape}")
    nrows, n_per_row = x.shape
    expected_row = t.row_bytes(n_per_row)  # QuantError before any C call: ggml would abort on a partial block
    lib = load()
    name = lib.ggml_type_name(t.ggml_id).decode().lower()
    if name != t.name:
        raise RuntimeError(f"ggml type id {t.ggml_id} is {name!r} in this ggml build, expected {t.name!r}")
    row_size = lib.ggml_row_size(t.ggml_id, n_per_row)
    if row_size != expected_row:
        raise RuntimeError(f"ggml's row size for {t.name} is {row_size}, sdcompile's {expected_row}")
    out = np.zeros(nrows * row_size, dtype=np.uint8)
    lib.ggml_quantize_init(t.ggml_id)
    n = lib.ggml_quantize_chunk(t.ggml_id, x.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, None)
    if n != out.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {n} bytes, expected {out.size}")
    return out.tobytes()
