"""Which reader a file needs, decided from its first bytes only, never from its name."""

from __future__ import annotations

import zipfile
from pathlib import Path

from sdcompile.formats._common import check_file, fail
from sdcompile.formats.base import TensorStore
from sdcompile.formats.safetensors import MAX_HEADER

FORMATS = ("safetensors", "gguf", "ckpt", "onnx")

# ModelProto field tags that may follow ir_version (field 1): fields 2..8 and 14 with their wire types, plus the
# two-byte tags of training_info (20), functions (25) and configuration (26).
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}
_ONNX_NEXT_TAGS2 = {b"\xa2\x01", b"\xca\x01", b"\xd2\x01"}

# Things people pass by mistake, so the error can say what the file is.
_NOT_MODELS = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive (extract it first)"),
    (b"BZh", "a bzip2 archive (extract it first)"),
    (b"\xfd7zXZ\x00", "an xz archive (extract it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (extract it first)"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive (extract it first)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the weights (run `git lfs pull` to fetch them)"),
    (b"<!DOCTYPE", "an HTML page (the download returned a web page, not the file)"),
    (b"<html", "an HTML page (the download returned a web page, not the file)"),
    (b"\x7fELF", "an executable"),
]

_HELP = "sdcompile reads safetensors, GGUF, PyTorch checkpoints (.ckpt/.pt) and ONNX models"


def _varint(b: bytes, i: int) -> tuple[int, int] | None:
    v = shift = 0
    while i < len(b) and shift < 64:
        c = b[i]
        v |= (c & 0x7F) << shift
        i += 1
        if not c & 0x80:
            return v, i
        shift += 7
    return None


def _looks_onnx(head: bytes) -> bool:
    if head[:1] != b"\x08":
        return False
    r = _varint(head, 1)
    if r is None or not 1 <= r[0] <= 100:
        return False
    i = r[1]
    return i == len(head) or head[i] in _ONNX_NEXT_TAGS or head[i : i + 2] in _ONNX_NEXT_TAGS2


def _is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1) for n in zf.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError) as e:
        raise fail(path, f"starts like a zip archive but is damaged ({e})", "re-download it") from None


def detect_format(path: Path | str) -> str:
    """One of FORMATS, from the file's content; a FormatError naming the file if it is none of them."""
    p = Path(path)
    size = check_file(p)
    with open(p, "rb") as f:
        head = f.read(64)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        if _is_torch_zip(p):
            return "ckpt"
        raise fail(p, "is a zip archive without a data.pkl, so not a PyTorch checkpoint", _HELP)
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= MAX_HEADER and 8 + n <= size and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and len(head) >= 2 and 2 <= head[1] <= 5:
        return "ckpt"
    if _looks_onnx(head):
        return "onnx"
    for magic, what in _NOT_MODELS:
        if head.startswith(magic):
            raise fail(p, f"is {what}, not a model file", _HELP)
    if head.startswith(b"GGML") or head[:4] in (b"lmgg", b"fmgg", b"tjgg"):
        raise fail(p, "is a pre-GGUF GGML file", "convert it to GGUF with llama.cpp's conversion scripts")
    if head[8:9] == b"{":
        return "safetensors"  # with an impossible header length: its reader says what is wrong
    if head[:1] == b"{" or head[:1] == b"[":
        raise fail(p, "is a JSON file, not a weight file (a config?)", _HELP)
    try:
        chars = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut off at the end of `head` is still text
        chars = head[: e.start].decode("utf-8") if e.start >= len(head) - 3 and e.start > 0 else ""
    text = bool(chars) and all(c.isprintable() or c in "\t\r\n" for c in chars)
    what = "a text file" if text else f"of an unknown format (starts with {head[:16].hex(' ')})"
    raise fail(p, f"is {what}, not a model file", _HELP)


def open_store(path: Path | str) -> TensorStore:
    """Open a weight file with the reader its content calls for. The public entry point of sdcompile.formats."""
    fmt = detect_format(path)
    if fmt == "gguf":
        from sdcompile.formats.gguf import GGUFStore

        return GGUFStore(path)
    if fmt == "safetensors":
        from sdcompile.formats.safetensors import SafetensorsStore

        return SafetensorsStore(path)
    if fmt == "ckpt":
        from sdcompile.formats.ckpt import CkptStore

        return CkptStore(path)
    from sdcompile.formats.onnx import OnnxStore

    return OnnxStore(path)
