"""Image files for the SD pipeline: txt2img writes PNGs, img2img reads PNG (or binary PPM/PGM) input images.

Only the standard library (zlib, struct) and numpy: the runtime must not pull in Pillow. Everything a user hands us
(an input image, an output path) fails with one ``RuntimeFailure`` naming the file, never a traceback, and a
malformed file is refused before anything of the size it claims is allocated.

Conversions between the VAE's tensors and 8-bit RGB follow diffusers' ``VaeImageProcessor`` bit for bit (including
its Pillow LANCZOS resize of img2img inputs, see `resize_lanczos` for the one caveat), so images written here equal
the ones diffusers would save for the same decoder output. The generation parameters written into
each PNG use the "parameters" text chunk that AUTOMATIC1111's webui and stable-diffusion.cpp write, so their PNG Info
readers (and sites that parse it) show how an image was made.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import secrets
import struct
import zlib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from runtime.errors import RuntimeFailure

__all__ = [
    "MAX_PIXELS",
    "encode_png",
    "from_image",
    "generation_parameters",
    "read_png",
    "read_png_text",
    "resize_lanczos",
    "to_image",
    "write_png",
]

# Bound on width * height of any image read or made here (268M pixels, e.g. 16384 x 16384): the dimensions in a
# header are checked against it before anything of that size is allocated.
MAX_PIXELS = 1 << 28
# Input files are read whole; anything larger than this is not an image we can use for img2img anyway.
MAX_FILE_BYTES = 1 << 30
# Decompressed zTXt/iTXt text is capped (ComfyUI's workflow JSON is the largest seen in practice, ~1 MB).
MAX_TEXT_BYTES = 16 << 20
# Deflate cannot expand more than ~1032:1; a header claiming more pixels than the compressed data could hold is a
# truncated or hostile file, refused before decompressing.
_DEFLATE_MAX_RATIO = 1032

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IDAT_CHUNK_BYTES = 1 << 20  # split IDAT so no single chunk gets near the 2^31 length limit
_FILTER_BLOCK_ROWS = 256  # rows filtered at once when writing: bounds the 5-candidate temporaries

# (color type) -> (channels, allowed bit depths), from the PNG specification, section 11.2.2.
_COLOR_TYPES: dict[int, tuple[int, tuple[int, ...]]] = {
    0: (1, (1, 2, 4, 8, 16)),  # grayscale
    2: (3, (8, 16)),  # RGB
    3: (1, (1, 2, 4, 8)),  # palette
    4: (2, (8, 16)),  # grayscale + alpha
    6: (4, (8, 16)),  # RGBA
}
# Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


# --- writing ----------------------------------------------------------------------------------------------------


def write_png(path: str | os.PathLike[str], rgb: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write ``rgb`` (uint8 [H, W, 3]) as an 8-bit RGB PNG with ``text`` as tEXt chunks (iTXt for non-Latin-1 text).

    The file is written to a temporary name in the same folder and renamed over ``path`` (os.replace), so a failure
    or an interrupt never leaves a half-written image, and a reader never sees one. Raises ``RuntimeFailure`` when
    the folder does not exist or cannot be written.
    """
    data = encode_png(rgb, text)  # encode first: a bad array or text never touches the disk
    _write_atomically(Path(path), data)


def encode_png(rgb: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """The bytes of the PNG `write_png` writes: IHDR, text chunks, IDAT (zlib level 6, per-row filter), IEND."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise RuntimeFailure(
            f"write_png needs a uint8 [H, W, 3] RGB array, got {rgb.dtype} {list(rgb.shape)}; "
            "convert decoder output with to_image first"
        )
    h, w, _ = rgb.shape
    if h * w > MAX_PIXELS:
        raise RuntimeFailure(f"write_png: {w}x{h} is larger than the {MAX_PIXELS}-pixel limit")
    out = [PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_text_chunk(key, value))
    # Level 6 is zlib's default trade-off. Rows are filtered and compressed block by block, so the filtered image
    # never exists whole next to the compressed one.
    comp = zlib.compressobj(6)
    pending = bytearray()
    for block in _filtered_blocks(np.ascontiguousarray(rgb)):
        pending += comp.compress(block)
        while len(pending) >= _IDAT_CHUNK_BYTES:
            out.append(_chunk(b"IDAT", bytes(pending[:_IDAT_CHUNK_BYTES])))
            del pending[:_IDAT_CHUNK_BYTES]
    pending += comp.flush()
    for i in range(0, len(pending), _IDAT_CHUNK_BYTES):
        out.append(_chunk(b"IDAT", bytes(pending[i : i + _IDAT_CHUNK_BYTES])))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _text_chunk(key: str, value: str) -> bytes:
    # Keywords are 1-79 printable Latin-1 characters without leading/trailing spaces (PNG spec 11.3.4.3).
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= 79
        or key != key.strip(" ")
        or any(not (32 <= ord(ch) <= 126 or 161 <= ord(ch) <= 255) for ch in key)
    ):
        raise RuntimeFailure(f"write_png: {key!r} is not a valid PNG text keyword (1-79 printable Latin-1 characters)")
    value = str(value)
    if "\0" in value:
        raise RuntimeFailure(f"write_png: the text for {key!r} contains a NUL character, which PNG text cannot hold")
    kb = key.encode("latin-1")
    try:
        return _chunk(b"tEXt", kb + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        # tEXt is Latin-1 only; prompts in other scripts go into iTXt (UTF-8), as Pillow and the webui do.
        return _chunk(b"iTXt", kb + b"\0\0\0" + b"\0" + b"\0" + value.encode("utf-8"))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The Paeth predictor (PNG spec 9.4) on int16 arrays, elementwise."""
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filtered_blocks(rgb: np.ndarray) -> Iterator[bytes]:
    """Yield the filtered scanlines (filter byte + bytes) in blocks of rows.

    Each row gets the filter (of the five) whose output has the smallest sum of absolute values read as signed
    bytes: libpng's heuristic, cheap to evaluate for all rows at once and usually within a few percent of the best.
    """
    h, w, c = rgb.shape
    flat = rgb.reshape(h, w * c)
    prev = np.zeros((1, w * c), np.int16)
    for r0 in range(0, h, _FILTER_BLOCK_ROWS):
        x = flat[r0 : r0 + _FILTER_BLOCK_ROWS].astype(np.int16)
        b = np.concatenate([prev, x[:-1]])
        a = np.zeros_like(x)
        a[:, c:] = x[:, :-c]
        cc = np.zeros_like(x)
        cc[:, c:] = b[:, :-c]
        cands = np.stack([x, x - a, x - b, x - ((a + b) >> 1), x - _paeth(a, b, cc)]) & 0xFF
        score = np.abs(cands.astype(np.uint8).view(np.int8).astype(np.int32)).sum(axis=2)
        best = np.argmin(score, axis=0)
        rows = np.empty((x.shape[0], w * c + 1), np.uint8)
        rows[:, 0] = best
        rows[:, 1:] = cands[best, np.arange(x.shape[0])]
        prev = x[-1:]
        yield rows.tobytes()


def _write_atomically(path: Path, data: bytes) -> None:
    folder = path.parent
    if not folder.exists():
        raise RuntimeFailure(f"{path}: cannot write: the folder {folder} does not exist; create it or choose another")
    if not folder.is_dir():
        raise RuntimeFailure(f"{path}: cannot write: {folder} is not a folder")
    if path.is_dir():
        raise RuntimeFailure(f"{path}: cannot write: it is a folder; give a file name such as {path / 'image.png'}")
    # A hidden, unique name in the same folder: os.replace is atomic only within one file system. os.open with
    # mode 0o666 (not mkstemp's 0o600) lets the umask give the image the permissions any new file would get.
    tmp = folder / f".{path.name[:100]}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except PermissionError:
        raise RuntimeFailure(
            f"{path}: cannot write: the folder {folder} is not writable; choose another output folder"
        ) from None
    except OSError as e:
        raise RuntimeFailure(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as e:  # also on KeyboardInterrupt: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise RuntimeFailure(f"{path}: cannot write: {e.strerror or e}") from None
        raise


# --- generation parameters -------------------------------------------------------------------------------------


def generation_parameters(
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model_name: str | None,
    scheduler: str | None = None,
    strength: float | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """The text for the PNG "parameters" chunk, in the webui's infotext layout::

        a cat
        Negative prompt: blurry
        Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 512x512, Model: v1-5, Version: sdcompile 0.1.0

    Field names are the ones AUTOMATIC1111's webui (``create_infotext``) and stable-diffusion.cpp
    (``get_image_params``) share (Steps, Sampler, CFG scale, Seed, Size, Model, Version), in the webui's order; readers
    of both key on the names, not the order. Where the two differ we follow the webui, which defines the format:
    the scheduler is its own "Schedule type" field (stable-diffusion.cpp appends it to the Sampler value), img2img
    strength is "Denoising strength", numbers are written as Python writes them (``7.0``, not ``7.000000``), and values
    holding ``,``, ``:`` or a newline are JSON-quoted as the webui quotes them. Pass the sampler's webui name (e.g.
    "Euler a", "DPM++ 2M") so the webui can restore it. ``extra`` fields go after the others, before Version. Only the
    file name of ``model_name`` is kept, so no local paths leak into shared images.
    """
    fields: dict[str, object | None] = {
        "Steps": int(steps),
        "Sampler": sampler,
        "Schedule type": scheduler,
        "CFG scale": float(cfg_scale),
        "Seed": int(seed),
        "Size": f"{int(width)}x{int(height)}",
        "Model": _basename(model_name) if model_name else None,
        "Denoising strength": None if strength is None else float(strength),
    }
    fields.update(extra or {})
    fields["Version"] = _version()
    params = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{params}".strip()


def _quote(value: object) -> str:
    # The webui's infotext_utils.quote: a value that would break the "k: v, k: v" line is written as a JSON string.
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _basename(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _version() -> str:
    # Read from the installed distribution's metadata, which imports no compiler code.
    try:
        return f"sdcompile {metadata.version('sdcompile')}"
    except metadata.PackageNotFoundError:
        return "sdcompile"


# --- reading ----------------------------------------------------------------------------------------------------


def read_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] RGB: PNG, or binary PPM (P6) / PGM (P5) for convenience.

    PNG: every color type (grayscale, gray + alpha, RGB, RGBA, palette) at every bit depth (1/2/4/8/16), all five
    filter types, non-interlaced or Adam7 interlaced, with tRNS transparency. 16-bit samples are reduced to 8 bits
    by rounding ``v * 255 / 65535``; 1/2/4-bit grayscale is scaled to 0..255. Alpha is composited over white
    (``round((c * a + 255 * (255 - a)) / 255)``), as the webui flattens img2img inputs, so transparent areas read
    as white rather than as whatever color the encoder left under them (16-bit color and alpha are reduced to 8 bits
    first). PPM/PGM samples with a maxval other than 255 are scaled to 0..255.

    Any malformed file (bad signature, truncation, bad CRC, bad compressed data, impossible header, more than
    ``MAX_PIXELS`` pixels) raises one ``RuntimeFailure`` naming the file.
    """
    data = _read_file(path)
    try:
        if data.startswith(PNG_SIGNATURE):
            return _decode_png(_parse_png(data, path), path)
        if data[:2] in (b"P6", b"P5"):
            return _decode_pnm(data, path)
    except (ValueError, IndexError, struct.error, zlib.error, OverflowError) as e:
        # A safety net: the checks below are meant to catch everything with a precise message first.
        raise RuntimeFailure(f"{path}: malformed image ({e})") from None
    except MemoryError:
        raise RuntimeFailure(f"{path}: not enough memory to decode this image") from None
    raise RuntimeFailure(f"{path}: not a PNG or binary PPM/PGM image (unrecognized signature {data[:8]!r})")


def read_png_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG as {keyword: text}; a later chunk with the same keyword wins.

    A PPM/PGM file has none and gives ``{}``. The whole file is checked (signature, chunk CRCs) as `read_png` does,
    without decoding the pixels.
    """
    data = _read_file(path)
    if data[:2] in (b"P6", b"P5"):
        return {}
    if not data.startswith(PNG_SIGNATURE):
        raise RuntimeFailure(f"{path}: not a PNG image (unrecognized signature {data[:8]!r})")
    png = _parse_png(data, path)
    out: dict[str, str] = {}
    for kind, body in png.texts:
        key, value = _decode_text(kind, body, path)
        out[key] = value
    return out


def _read_file(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        if p.is_dir():
            raise RuntimeFailure(f"{path}: is a folder, not an image file")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise RuntimeFailure(f"{path}: {size} bytes is too large for an input image (limit {MAX_FILE_BYTES})")
        return p.read_bytes()
    except FileNotFoundError:
        raise RuntimeFailure(f"{path}: no such file") from None
    except OSError as e:
        raise RuntimeFailure(f"{path}: cannot read: {e.strerror or e}") from None


class _Png:
    """The chunks of a PNG that matter for decoding, after the container has been checked."""

    def __init__(self) -> None:
        self.width = self.height = self.depth = self.color = self.interlace = 0
        self.palette: np.ndarray | None = None  # uint8 [n, 3]
        self.trns: bytes | None = None
        self.idat: list[memoryview] = []
        self.texts: list[tuple[bytes, memoryview]] = []


def _parse_png(data: bytes, path: str | os.PathLike[str]) -> _Png:
    """Walk the chunks: lengths within the file, CRCs, IHDR first and valid, IEND present; keep what decoding uses."""

    def fail(msg: str) -> RuntimeFailure:
        return RuntimeFailure(f"{path}: malformed PNG: {msg}")

    view = memoryview(data)
    png = _Png()
    pos = len(PNG_SIGNATURE)
    seen_ihdr = seen_iend = False
    while pos < len(data):
        if pos + 8 > len(data):
            raise fail(f"truncated chunk header at byte {pos}")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > 0x7FFFFFFF or pos + 12 + length > len(data):
            raise fail(f"chunk {kind!r} at byte {pos} claims {length} bytes, past the end of the file (truncated?)")
        if not kind.isalpha() or not kind.isascii():
            raise fail(f"invalid chunk type {kind!r} at byte {pos}")
        body = view[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(view[pos + 4 : pos + 8 + length]) != crc:
            raise fail(f"CRC mismatch in chunk {kind.decode()} at byte {pos} (corrupted file)")
        pos += 12 + length
        if not seen_ihdr and kind != b"IHDR":
            raise fail(f"first chunk is {kind.decode()}, not IHDR")
        if kind == b"IHDR":
            if seen_ihdr:
                raise fail("more than one IHDR chunk")
            seen_ihdr = True
            _check_ihdr(png, body, fail)
        elif kind == b"PLTE":
            if length % 3 or not 3 <= length <= 768:
                raise fail(f"PLTE chunk of {length} bytes (needs 1-256 RGB entries)")
            png.palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"tRNS":
            png.trns = bytes(body)
        elif kind == b"IDAT":
            png.idat.append(body)
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            png.texts.append((kind, body))
        elif kind == b"IEND":
            seen_iend = True
            break  # whatever follows IEND is not part of the image
        elif kind[:1].isupper():
            # Critical chunks we do not know change how pixels are decoded (PNG spec 5.4): refuse, don't guess.
            raise fail(f"unknown critical chunk {kind.decode()}; this decoder cannot read it")
    if not seen_ihdr:
        raise fail("no IHDR chunk (file truncated after the signature)")
    if not seen_iend:
        raise fail("no IEND chunk: the file is truncated")
    return png


def _check_ihdr(png: _Png, body: memoryview, fail: Callable[[str], RuntimeFailure]) -> None:
    if len(body) != 13:
        raise fail(f"IHDR chunk of {len(body)} bytes (needs 13)")
    w, h, depth, color, compression, filt, interlace = struct.unpack(">IIBBBBB", body)
    if not (1 <= w <= 0x7FFFFFFF and 1 <= h <= 0x7FFFFFFF):
        raise fail(f"impossible size {w}x{h}")
    if w * h > MAX_PIXELS:
        raise fail(f"{w}x{h} is {w * h} pixels, more than this reader's limit of {MAX_PIXELS}")
    if color not in _COLOR_TYPES or depth not in _COLOR_TYPES[color][1]:
        raise fail(f"invalid color type {color} with bit depth {depth}")
    if compression != 0 or filt != 0:
        raise fail(f"unknown compression method {compression} or filter method {filt}")
    if interlace not in (0, 1):
        raise fail(f"unknown interlace method {interlace}")
    png.width, png.height, png.depth, png.color, png.interlace = w, h, depth, color, interlace


def _decode_png(png: _Png, path: str | os.PathLike[str]) -> np.ndarray:
    def fail(msg: str) -> RuntimeFailure:
        return RuntimeFailure(f"{path}: malformed PNG: {msg}")

    w, h, depth, color = png.width, png.height, png.depth, png.color
    channels = _COLOR_TYPES[color][0]
    bits = channels * depth  # bits per pixel
    if color == 3 and png.palette is None:
        raise fail("palette image without a PLTE chunk")
    if not png.idat:
        raise fail("no IDAT chunk (no image data)")

    passes = _ADAM7 if png.interlace else ((0, 0, 1, 1),)
    geometry = []  # (x0, y0, dx, dy, pass width, pass height, bytes per row)
    expected = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx) if w > x0 else 0, -(-(h - y0) // dy) if h > y0 else 0
        if pw and ph:  # an empty pass has no rows at all, not even filter bytes
            stride = (pw * bits + 7) // 8
            geometry.append((x0, y0, dx, dy, pw, ph, stride))
            expected += ph * (1 + stride)

    compressed = sum(len(part) for part in png.idat)
    if expected > compressed * _DEFLATE_MAX_RATIO + 1024:
        raise fail(
            f"{compressed} bytes of compressed data cannot hold a {w}x{h} image ({expected} bytes); file truncated?"
        )
    inflater = zlib.decompressobj()
    raw = bytearray()
    try:
        for part in png.idat:
            # max_length bounds memory to the image's size even for a deliberately inflating (bomb) stream.
            raw += inflater.decompress(part, expected - len(raw)) if len(raw) < expected else b""
            if len(raw) >= expected:
                break
    except zlib.error as e:
        raise fail(f"corrupt compressed image data ({e})") from None
    if len(raw) < expected:
        raise fail(f"image data ends after {len(raw)} of {expected} bytes (truncated or corrupt)")

    bpp = max(1, bits // 8)  # filter unit: bytes per complete pixel, at least one byte
    dtype = np.uint16 if depth == 16 else np.uint8
    samples = np.empty((h, w, channels), dtype) if png.interlace else None
    offset = 0
    for x0, y0, dx, dy, pw, ph, stride in geometry:
        rows = np.frombuffer(raw, np.uint8, ph * (1 + stride), offset).reshape(ph, 1 + stride)
        offset += ph * (1 + stride)
        kinds = rows[:, 0]
        if kinds.max() > 4:
            bad = int(np.argmax(kinds > 4))
            raise fail(f"unknown filter type {int(kinds[bad])} on row {bad}")
        part = _unpack(_unfilter(rows[:, 1:], kinds, bpp), pw, channels, depth)
        if samples is None:
            samples = part
        else:
            samples[y0::dy, x0::dx] = part
    assert samples is not None
    return _to_rgb8(samples, png, fail)


def _unfilter(data: np.ndarray, kinds: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the per-row filters (PNG spec 9): data is uint8 [rows, bytes], kinds the filter type of each row."""
    h, stride = data.shape
    if not np.any(kinds >= 3):
        # None / Sub / Up only (what simple encoders such as ours mostly pick): one vectorized step per row.
        out = np.empty_like(data)
        prev = np.zeros(stride, np.uint8)
        for r in range(h):
            k, row = kinds[r], data[r]
            if k == 0:
                out[r] = row
            elif k == 1:
                out[r] = np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
            else:
                np.add(row, prev, out=out[r])
            prev = out[r]
        return out
    return _unfilter_wavefront(data, kinds, bpp)


def _unfilter_wavefront(data: np.ndarray, kinds: np.ndarray, bpp: int) -> np.ndarray:
    """Average and Paeth rows depend on the pixel to the left, so they cannot be vectorized along a row. Pixel
    (r, i) depends only on (r, i-1), (r-1, i) and (r-1, i-1): every anti-diagonal r + i = d depends only on the
    two before it, so we sweep diagonals and vectorize along each (H + W steps instead of H * W)."""
    h, stride = data.shape
    n = stride // bpp
    filt = data.reshape(h, n, bpp).astype(np.int16)
    out = np.zeros((h + 1, n + 1, bpp), np.int16)  # one zero row above and column left: the spec's "outside" bytes
    kind_of_row = kinds.astype(np.intp)
    for d in range(h + n - 1):
        r = np.arange(max(0, d - n + 1), min(h - 1, d) + 1)
        i = d - r
        a, b, c = out[r + 1, i], out[r, i + 1], out[r, i]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        preds = np.stack([np.zeros_like(a), a, b, (a + b) >> 1, paeth])
        pred = preds[kind_of_row[r], np.arange(len(r))]
        out[r + 1, i + 1] = (filt[r, i] + pred) & 0xFF
    return out[1:, 1:].reshape(h, stride).astype(np.uint8)


def _unpack(data: np.ndarray, width: int, channels: int, depth: int) -> np.ndarray:
    """Unfiltered rows -> samples [rows, width, channels] (uint8, or uint16 for 16-bit)."""
    rows = data.shape[0]
    if depth == 8:
        return data[:, : width * channels].reshape(rows, width, channels)
    if depth == 16:
        be = data[:, : width * channels * 2].reshape(rows, width * channels, 2).astype(np.uint16)
        return ((be[..., 0] << 8) | be[..., 1]).reshape(rows, width, channels)
    per_byte = 8 // depth  # depth < 8 only for one channel (gray or palette); leftmost sample in the high bits
    mask = (1 << depth) - 1
    out = np.empty((rows, data.shape[1] * per_byte), np.uint8)
    for j in range(per_byte):
        out[:, j::per_byte] = (data >> (8 - depth * (j + 1))) & mask
    return out[:, :width].reshape(rows, width, 1)


def _reduce16(v: np.ndarray) -> np.ndarray:
    # Rounded v * 255 / 65535: exact at both ends and monotonic (stb_image's v >> 8 biases everything down).
    return ((v.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb8(samples: np.ndarray, png: _Png, fail: Callable[[str], RuntimeFailure]) -> np.ndarray:
    depth, color = png.depth, png.color
    alpha: np.ndarray | None = None
    if color == 3:
        palette = png.palette
        assert palette is not None
        idx = samples[..., 0]
        if int(idx.max()) >= len(palette):
            raise fail(f"palette index {int(idx.max())} past the {len(palette)}-entry palette")
        rgb = palette[idx]
        if png.trns:
            lut = np.full(len(palette), 255, np.uint8)
            t = np.frombuffer(png.trns, np.uint8)[: len(palette)]
            lut[: len(t)] = t
            alpha = lut[idx]
    else:
        top = (1 << depth) - 1
        if color in (0, 2) and png.trns is not None and len(png.trns) == 2 * samples.shape[2]:
            # A tRNS color key: pixels exactly equal to it (compared at the file's own bit depth) are transparent.
            key = np.array(struct.unpack(f">{samples.shape[2]}H", png.trns), np.uint32) & top
            alpha = np.where(np.all(samples == key.astype(samples.dtype), axis=2), 0, 255).astype(np.uint8)
        if depth == 16:
            samples = _reduce16(samples)
        elif depth < 8:
            samples = (samples * (255 // top)).astype(np.uint8)
        if color in (4, 6):
            alpha = samples[..., -1]
            samples = samples[..., :-1]
        rgb = np.repeat(samples, 3, axis=2) if samples.shape[2] == 1 else samples
    if alpha is not None:
        a = alpha[..., None].astype(np.uint32)
        rgb = ((rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _decode_text(kind: bytes, body: memoryview, path: str | os.PathLike[str]) -> tuple[str, str]:
    def fail(msg: str) -> RuntimeFailure:
        return RuntimeFailure(f"{path}: malformed PNG {kind.decode()} chunk: {msg}")

    raw = bytes(body)
    key, sep, rest = raw.partition(b"\0")
    if not sep or not 1 <= len(key) <= 79:
        raise fail("no keyword")

    def inflate(blob: bytes) -> bytes:
        d = zlib.decompressobj()
        try:
            out = d.decompress(blob, MAX_TEXT_BYTES)
        except zlib.error as e:
            raise fail(f"corrupt compressed text ({e})") from None
        if d.unconsumed_tail:
            raise fail(f"text longer than {MAX_TEXT_BYTES} bytes")
        return out

    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        if not rest or rest[0] != 0:
            raise fail("unknown compression method")
        return key.decode("latin-1"), inflate(rest[1:]).decode("latin-1")
    # iTXt: keyword \0 compressed-flag method language \0 translated-keyword \0 text (UTF-8)
    if len(rest) < 2:
        raise fail("truncated header")
    flag, method, rest = rest[0], rest[1], rest[2:]
    _language, sep1, rest = rest.partition(b"\0")
    _translated, sep2, text = rest.partition(b"\0")
    if not (sep1 and sep2) or flag not in (0, 1) or (flag and method != 0):
        raise fail("malformed header")
    try:
        return key.decode("latin-1"), (inflate(text) if flag else text).decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"text is not UTF-8 ({e})") from None


def _decode_pnm(data: bytes, path: str | os.PathLike[str]) -> np.ndarray:
    """Binary PGM (P5) / PPM (P6): 'P6', width, height, maxval separated by whitespace ('#' comments allowed),
    one whitespace byte, then rows of 1- or 2-byte (big-endian) samples."""

    def fail(msg: str) -> RuntimeFailure:
        return RuntimeFailure(f"{path}: malformed {data[:2].decode()} file: {msg}")

    pos, values = 2, []
    for _ in range(3):
        while True:
            if pos >= len(data):
                raise fail("header ends early (truncated)")
            if data[pos : pos + 1] == b"#":
                end = data.find(b"\n", pos)
                pos = len(data) if end < 0 else end + 1
            elif data[pos : pos + 1].isspace():
                pos += 1
            else:
                break
        start = pos
        while pos < len(data) and pos - start < 12 and data[pos : pos + 1].isdigit():
            pos += 1
        if pos == start:
            raise fail(f"expected a number at byte {start}")
        values.append(int(data[start:pos]))
    if pos >= len(data) or not data[pos : pos + 1].isspace():
        raise fail("no whitespace after the header (truncated?)")
    pos += 1
    w, h, maxval = values
    if w < 1 or h < 1 or not 1 <= maxval <= 65535:
        raise fail(f"impossible size {w}x{h} or maxval {maxval}")
    if w * h > MAX_PIXELS:
        raise fail(f"{w}x{h} is {w * h} pixels, more than this reader's limit of {MAX_PIXELS}")
    channels = 3 if data[:2] == b"P6" else 1
    width_bytes = 2 if maxval > 255 else 1
    need = w * h * channels * width_bytes
    if len(data) - pos < need:
        raise fail(f"{len(data) - pos} bytes of pixel data, {w}x{h} needs {need} (truncated)")
    s = np.frombuffer(data, ">u2" if width_bytes == 2 else np.uint8, w * h * channels, pos).reshape(h, w, channels)
    if maxval != 255:
        # Rounded v * 255 / maxval; samples above maxval are invalid but clamped rather than wrapped.
        s = ((np.minimum(s.astype(np.uint32), maxval) * 255 + maxval // 2) // maxval).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(s, 3, axis=2) if channels == 1 else s, dtype=np.uint8)


# --- tensors <-> images -----------------------------------------------------------------------------------------


def to_image(x: np.ndarray) -> np.ndarray:
    """VAE decoder output (float, [-1, 1], [3, H, W] or [1, 3, H, W]) -> uint8 [H, W, 3].

    Exactly diffusers' ``VaeImageProcessor.postprocess(..., output_type="pil")``: ``(x * 0.5 + 0.5).clamp(0, 1)`` in
    the input's precision, then in float32 ``(x * 255).round()`` (round half to even) and cast to uint8. A batch of
    more than one image is refused: call it per image (``to_image(x[i])``). NaN (an overflowing fp16 VAE) is refused
    rather than silently written as black.
    """
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 4:
        raise RuntimeFailure(
            f"to_image takes one image, got a batch of {x.shape[0]}; call it per image: to_image(x[i])"
        )
    if x.ndim != 3 or x.shape[0] != 3 or not np.issubdtype(x.dtype, np.floating):
        raise RuntimeFailure(f"to_image needs a float [3, H, W] or [1, 3, H, W] array, got {x.dtype} {list(x.shape)}")
    if np.isnan(x).any():
        raise RuntimeFailure(
            "to_image: the decoded image contains NaN (the VAE overflowed; fp16 VAEs do this, run the VAE in fp32)"
        )
    half = x.dtype.type(0.5)
    y = np.clip(x * half + half, 0, 1).astype(np.float32)
    return np.ascontiguousarray((y * np.float32(255)).round().astype(np.uint8).transpose(1, 2, 0))


def from_image(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [1, 3, height, width] in [-1, 1], as diffusers' ``VaeImageProcessor.preprocess``.

    An image of another size is first resized to width x height with `resize_lanczos` (Pillow's LANCZOS, the
    filter diffusers uses, reproduced bit for bit; see its caveat), stretching like diffusers' default
    ``resize_mode``; crop or pad beforehand to keep the aspect ratio. Unlike diffusers, width and height are used
    as given, not rounded down to a multiple of 8; the pipeline chooses them. Then ``x / 255`` and ``2 * x - 1`` in
    float32, as diffusers computes.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise RuntimeFailure(f"from_image needs a uint8 [H, W, 3] RGB array, got {rgb.dtype} {list(rgb.shape)}")
    if rgb.shape[:2] != (height, width):
        rgb = resize_lanczos(rgb, width, height)
    x = rgb.astype(np.float32) / np.float32(255)
    x = np.float32(2) * x - np.float32(1)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def resize_lanczos(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize uint8 [H, W, C] to [height, width, C] the way Pillow's ``Image.resize(..., LANCZOS)`` does, bit for bit.

    Pillow's algorithm: separable Lanczos-3, support widened by the scale factor when shrinking (so it filters
    rather than aliases), coefficients normalized to sum 1 and rounded to 22-bit fixed point, horizontal pass first
    with its result rounded and clipped to 8 bits, then the vertical pass. Coefficients are computed with Python's
    math (the same libm calls as Pillow's C), so they match exactly.

    Caveat: that pass order is Pillow's up to 12.x. Pillow 13 chooses the order per size, and when both dimensions
    change and it goes vertical first, pixels can differ from ours by a few levels (each pass alone is still
    bit-exact). A resize along one axis, or to the same size, is exact with every version.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or 0 in rgb.shape:
        raise RuntimeFailure(f"resize needs a uint8 [H, W, C] image, got {rgb.dtype} {list(rgb.shape)}")
    try:
        w, h = operator.index(width), operator.index(height)  # ints and numpy ints; not floats
    except TypeError:
        w = h = 0
    if w < 1 or h < 1:
        raise RuntimeFailure(f"resize: width and height must be positive integers, got {width!r} x {height!r}")
    width, height = w, h
    if width * height > MAX_PIXELS:
        raise RuntimeFailure(f"resize: {width}x{height} is larger than the {MAX_PIXELS}-pixel limit")
    out = rgb
    if out.shape[1] != width:
        out = _resample_axis(out, width, axis=1)
    if out.shape[0] != height:
        out = _resample_axis(out, height, axis=0)
    return np.ascontiguousarray(out)


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _lanczos3(x: float) -> float:
    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v = v * math.pi
        return math.sin(v) / v

    return sinc(x) * sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _pillow_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc: source indices and fixed-point weights [out, ksize]."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    ss = 1.0 / filterscale  # multiplied, not divided, as in Pillow: the two can differ in the last bit
    index = np.zeros((out_size, ksize), np.intp)
    weight = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as the C cast does
        count = min(int(center + support + 0.5), in_size) - xmin
        ws = [_lanczos3((x + xmin - center + 0.5) * ss) for x in range(count)]
        total = 0.0
        for v in ws:  # summed in order like the C loop (Python's sum() may compensate, which changes the bits)
            total += v
        for x, v in enumerate(ws):
            k = v / total if total != 0.0 else v
            weight[xx, x] = int(-0.5 + k * (1 << _PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << _PRECISION_BITS))
        index[xx, :count] = np.arange(xmin, xmin + count)
        index[xx, count:] = xmin  # zero weight
    return index, weight


def _resample_axis(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weight = _pillow_coefficients(img.shape[axis], out_size)
    shape = [1] * img.ndim
    shape[axis] = out_size
    acc = np.full(img.shape[:axis] + (out_size,) + img.shape[axis + 1 :], 1 << (_PRECISION_BITS - 1), np.int64)
    for k in range(index.shape[1]):
        acc += np.take(img, index[:, k], axis=axis).astype(np.int64) * weight[:, k].reshape(shape)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
