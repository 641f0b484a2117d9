"""Helpers shared by the readers: error messages, file checks, memory maps and dtype conversions."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from sdcompile.errors import FormatError

# Element types of non-quantized tensors: our name -> numpy storage dtype. bf16 and the fp8 types are stored as raw
# unsigned integers of their width (numpy has no such types) and converted to f32 by `to_array`.
PLAIN_DTYPES: dict[str, np.dtype] = {
    "f64": np.dtype("<f8"),
    "f32": np.dtype("<f4"),
    "f16": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),
    "f8_e4m3": np.dtype("u1"),
    "f8_e5m2": np.dtype("u1"),
    "i64": np.dtype("<i8"),
    "i32": np.dtype("<i4"),
    "i16": np.dtype("<i2"),
    "i8": np.dtype("i1"),
    "u64": np.dtype("<u8"),
    "u32": np.dtype("<u4"),
    "u16": np.dtype("<u2"),
    "u8": np.dtype("u1"),
    "bool": np.dtype("?"),
}


def fail(path: Path | str, problem: str, hint: str = "") -> FormatError:
    """A FormatError that names the file, says what is wrong with it and, when known, what to do."""
    msg = f"{path}: {problem}"
    if hint:
        msg += f"; {hint}"
    return FormatError(msg)


def check_file(path: Path | str) -> int:
    """Raise a FormatError unless `path` is a non-empty regular file; return its size."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise fail(p, "no such file", "check the path") from None
    except OSError as e:
        raise fail(p, f"cannot be read ({e.strerror or e})", "check the path and its permissions") from None
    if p.is_dir():
        raise fail(p, "is a directory, not a weight file", "pass the model file inside it") from None
    if not p.is_file():
        raise fail(p, "is not a regular file", "pass a weight file")
    if st.st_size == 0:
        raise fail(p, "is empty (0 bytes)", "the download or conversion probably failed; fetch the file again")
    if not os.access(p, os.R_OK):
        raise fail(p, "is not readable", "check its permissions")
    return st.st_size


def map_file(path: Path | str) -> np.ndarray:
    """Memory-map a whole file read-only as a uint8 array; slices of it are views (no data read)."""
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise fail(path, f"cannot be memory-mapped ({e})", "check that it is a regular, readable file") from None
    # The mmap is closed when the last numpy view of it goes away; closing it earlier would break live views.
    return np.frombuffer(mm, dtype=np.uint8)


def prod(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# numpy 1.x holds at most 32 dimensions (2.x: 64); no weight has more than a handful.
MAX_NDIM = 32
# numpy refuses an array whose size in bytes, counting a zero dimension as 1, does not fit a signed 64-bit integer.
MAX_ARRAY_BYTES = 2**63 - 1


def check_shape(path: Path | str, what: str, shape: tuple[int, ...] | list[int], itemsize: int, hint: str) -> int:
    """Raise a FormatError unless numpy can hold an array of `shape`; return its element count.

    A byte-count check alone lets a zero-element tensor through whatever its other dimensions say ([0, 10^30] needs
    0 bytes), and numpy's reshape then fails with its own error; this bounds every dimension before anything is
    allocated or reshaped."""
    if len(shape) > MAX_NDIM:
        raise fail(path, f"{what} has {len(shape)} dimensions (at most {MAX_NDIM} are supported)", hint)
    span = itemsize
    for d in shape:
        if d < 0:
            raise fail(path, f"{what} has a negative dimension in {brief(shape)}", hint)
        span *= max(int(d), 1)
        if span > MAX_ARRAY_BYTES:
            raise fail(
                path,
                f"{what} has shape {brief(shape)}, larger than any array can be (dimensions multiply past 2^63 bytes)",
                hint,
            )
    return prod(shape)


def brief(x: int | tuple[int, ...] | list[int]) -> str:
    """An int or a shape for a message. str() of an int of thousands of digits raises (Python's conversion limit), and
    a corrupt header can hold one: such a number is shown by its size."""
    if isinstance(x, int):
        return str(x) if x.bit_length() <= 128 else f"<{x.bit_length()}-bit int>"
    text = "[" + ", ".join(brief(int(d)) for d in x) + "]"
    return text if len(text) <= 120 else text[:117] + "..."


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) to float32: bf16 is the upper half of an f32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _e4m3fn_table() -> np.ndarray:
    # OCP FP8 E4M3FN: bias 7, 3 mantissa bits, no infinities; S.1111.111 is NaN.
    t = np.empty(256, dtype=np.float32)
    for b in range(256):
        s = -1.0 if b & 0x80 else 1.0
        e = (b >> 3) & 0xF
        m = b & 0x7
        if e == 0xF and m == 0x7:
            t[b] = np.nan
        elif e == 0:
            t[b] = s * (m / 8.0) * 2.0**-6
        else:
            t[b] = s * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return t


_E4M3FN = _e4m3fn_table()


def to_array(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Stored little-endian bytes (uint8) of a plain-dtype tensor -> numpy array: bf16 and fp8 become f32."""
    st = PLAIN_DTYPES[dtype]
    a = np.asarray(data).view(st)
    if dtype == "bf16":
        a = bf16_to_f32(a)
    elif dtype == "f8_e4m3":
        a = _E4M3FN[a]
    elif dtype == "f8_e5m2":
        # E5M2 is the upper byte of an IEEE f16.
        a = (a.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    return a.reshape(shape)
