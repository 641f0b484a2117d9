"""Image I/O of the SD pipeline: PNG write/read, generation parameters, VAE tensor <-> image conversions.

References: Pillow (reads what we write, writes what we read, and its LANCZOS resize), a small PNG encoder in this
file written from the specification (to reach filter types, bit depths and interlacing Pillow never writes), and
diffusers' VaeImageProcessor for the tensor conversions. Malformed files must give one RuntimeFailure naming the
file, quickly and without allocating what a header claims.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import RuntimeFailure
from runtime.pipelines import image as img
from runtime.pipelines.image import (
    MAX_PIXELS,
    encode_png,
    from_image,
    generation_parameters,
    read_png,
    read_png_text,
    resize_lanczos,
    to_image,
    write_png,
)

SIG = b"\x89PNG\r\n\x1a\n"


# --- a reference PNG encoder, from the specification --------------------------------------------------------------


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(w: int, h: int, depth: int = 8, color: int = 2, interlace: int = 0, compression: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, compression, 0, interlace))


def pack_rows(samples: np.ndarray, depth: int) -> list[bytes]:
    """[h, w, c] samples -> one byte string per row at `depth` bits (big-endian 16-bit, MSB-first sub-byte)."""
    h, w, c = samples.shape
    rows = []
    for y in range(h):
        vals = [int(v) for v in samples[y].reshape(-1)]
        if depth == 16:
            rows.append(b"".join(struct.pack(">H", v) for v in vals))
        elif depth == 8:
            rows.append(bytes(vals))
        else:
            bits = "".join(format(v, f"0{depth}b") for v in vals)
            bits += "0" * (-len(bits) % 8)
            rows.append(bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)))
    return rows


def filter_row(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray([kind])
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out.append((x - pred) & 0xFF)
    return bytes(out)


def scanlines(samples: np.ndarray, depth: int, filters) -> bytes:
    rows = pack_rows(samples, depth)
    bpp = max(1, samples.shape[2] * depth // 8)
    prev = bytes(len(rows[0])) if rows else b""
    out = []
    for y, row in enumerate(rows):
        out.append(filter_row(filters(y), row, prev, bpp))
        prev = row
    return b"".join(out)


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_bytes(
    samples: np.ndarray,
    color: int,
    depth: int,
    filters=lambda y: y % 5,
    interlace: bool = False,
    before_idat: tuple[bytes, ...] = (),
) -> bytes:
    h, w, _ = samples.shape
    if interlace:
        raw = b"".join(
            scanlines(samples[y0::dy, x0::dx], depth, filters) for x0, y0, dx, dy in ADAM7 if w > x0 and h > y0
        )
    else:
        raw = scanlines(samples, depth, filters)
    return (
        SIG
        + ihdr(w, h, depth, color, int(interlace))
        + b"".join(before_idat)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def to8(v: np.ndarray, depth: int) -> np.ndarray:
    if depth == 16:
        return np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return (v.astype(np.int64) * 255 // ((1 << depth) - 1)).astype(np.uint8)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None]
    return np.round((rgb.astype(np.float64) * a + 255 * (255 - a)) / 255).astype(np.uint8)


def save(tmp_path: Path, data: bytes, name: str = "in.png") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


rng = np.random.default_rng(1234)


def random_rgb(h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_rgb(h: int, w: int) -> np.ndarray:
    """A photo-like image, so the writer's per-row filter choice varies (random noise always picks None)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 3 + y, 128 + 90 * np.sin(x / 7 + y / 11), y * 2], -1) + rng.normal(0, 3, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


# --- writing and reading back -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 13), (64, 48), (3, 200), (300, 5)])
def test_round_trip(tmp_path, shape):
    for rgb in (random_rgb(*shape), smooth_rgb(*shape)):
        p = tmp_path / "out.png"
        text = {"parameters": "a cat, oil\nNegative prompt: dog", "Title": "x"}
        write_png(p, rgb, text)
        assert np.array_equal(read_png(p), rgb)
        assert read_png_text(p) == text


def test_writer_uses_several_filters():
    """A photo-like image gets more than one row filter, so every unfilter path is exercised on our own files."""
    png = img._parse_png(encode_png(smooth_rgb(64, 64)), "mem")
    raw = zlib.decompress(b"".join(png.idat))
    kinds = set(np.frombuffer(raw, np.uint8).reshape(64, -1)[:, 0].tolist())
    assert len(kinds) >= 2, kinds


def test_write_is_atomic_and_replaces(tmp_path):
    p = tmp_path / "out.png"
    p.write_bytes(b"old")
    rgb = random_rgb(5, 6)
    write_png(p, rgb)
    assert np.array_equal(read_png(p), rgb)
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # permissions of any new file, not mkstemp's 0600


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    p = tmp_path / "out.png"
    p.write_bytes(b"old")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(img.os, "replace", boom)
    with pytest.raises(RuntimeFailure, match="No space left"):
        write_png(p, random_rgb(4, 4))
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]


def test_write_errors(tmp_path):
    rgb = random_rgb(2, 2)
    with pytest.raises(RuntimeFailure, match="does not exist"):
        write_png(tmp_path / "missing" / "a.png", rgb)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RuntimeFailure, match="not a folder"):
        write_png(tmp_path / "file" / "a.png", rgb)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(RuntimeFailure, match="it is a folder"):
        write_png(tmp_path / "dir.png", rgb)
    for bad in (rgb.astype(np.float32), rgb[..., :2], rgb[0], np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(RuntimeFailure, match="uint8 \\[H, W, 3\\]"):
            write_png(tmp_path / "a.png", bad)
    for key in ("", "x" * 80, " lead", "tab\tkey"):
        with pytest.raises(RuntimeFailure, match="keyword"):
            write_png(tmp_path / "a.png", rgb, {key: "v"})
    with pytest.raises(RuntimeFailure, match="NUL"):
        write_png(tmp_path / "a.png", rgb, {"k": "a\0b"})
    assert not (tmp_path / "a.png").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write to read-only folders")
def test_write_to_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(RuntimeFailure, match="not writable"):
            write_png(ro / "a.png", random_rgb(2, 2))
    finally:
        ro.chmod(0o755)


# --- Pillow as the reference --------------------------------------------------------------------------------------


def test_pillow_reads_ours(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    params = generation_parameters("a cat", "blurry", 20, "Euler a", 7.0, 42, 64, 48, "v1-5.safetensors")
    for rgb in (random_rgb(48, 64), smooth_rgb(33, 17)):
        p = tmp_path / "out.png"
        write_png(p, rgb, {"parameters": params, "Comment": "ünïcödé ✓ 猫"})  # the second needs iTXt
        with Image.open(p) as im:
            im.verify()  # checks every chunk CRC
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (rgb.shape[1], rgb.shape[0])
            assert np.array_equal(np.asarray(im), rgb)
            assert im.text == {"parameters": params, "Comment": "ünïcödé ✓ 猫"}


def pillow_image(mode: str):
    Image = pytest.importorskip("PIL.Image")
    h, w = 23, 37
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode in ("LA", "RGBA"):
        return Image.frombytes(mode, (w, h), rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8).tobytes())
    base = Image.fromarray(smooth_rgb(h, w))
    if mode == "P":
        return base.convert("P")  # web palette, 8 bits per index
    if mode == "P4":
        return base.quantize(colors=11)  # few colors: Pillow writes 4-bit indices
    if mode == "P-trns":
        q = base.quantize(colors=40)
        q.info["transparency"] = 3
        return q
    return base.convert(mode)


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimize"])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "P4", "P-trns", "1", "I;16"])
def test_we_read_pillow(tmp_path, mode, optimize):
    Image = pytest.importorskip("PIL.Image")
    src = pillow_image(mode)
    buf = io.BytesIO()
    src.save(buf, "PNG", optimize=optimize, **({"transparency": 3} if mode == "P-trns" else {}))
    p = save(tmp_path, buf.getvalue())
    got = read_png(p)
    with Image.open(p) as ref:
        if mode == "I;16":
            want = np.repeat(to8(np.asarray(src), 16)[..., None], 3, axis=2)
        elif mode in ("LA", "RGBA", "P-trns"):
            rgba = np.asarray(ref.convert("RGBA"))
            want = over_white(rgba[..., :3], rgba[..., 3])
        else:
            want = np.asarray(ref.convert("RGB"))
    assert got.dtype == np.uint8 and got.shape == (23, 37, 3)
    assert np.array_equal(got, want)


def test_we_read_pillow_text(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    PngImagePlugin = pytest.importorskip("PIL.PngImagePlugin")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "plain latin-1 é")
    info.add_text("zipped", "compressed " * 50, zip=True)  # zTXt
    info.add_itxt("intl", "猫 " * 40, lang="ja", tkey="ねこ", zip=True)  # compressed iTXt
    info.add_itxt("plainintl", "✓ ok")
    buf = io.BytesIO()
    Image.fromarray(random_rgb(4, 4)).save(buf, "PNG", pnginfo=info)
    p = save(tmp_path, buf.getvalue())
    assert read_png_text(p) == {
        "parameters": "plain latin-1 é",
        "zipped": "compressed " * 50,
        "intl": "猫 " * 40,
        "plainintl": "✓ ok",
    }


# --- every PNG variant, from the reference encoder ----------------------------------------------------------------

VARIANTS = [(0, d) for d in (1, 2, 4, 8, 16)] + [(2, 8), (2, 16), (3, 1), (3, 2), (3, 4), (3, 8)]
VARIANTS += [(4, 8), (4, 16), (6, 8), (6, 16)]


@pytest.mark.parametrize("interlace", [False, True], ids=["progressive", "adam7"])
@pytest.mark.parametrize(("color", "depth"), VARIANTS, ids=[f"color{c}-{d}bit" for c, d in VARIANTS])
def test_every_color_type_depth_filter_and_interlace(tmp_path, color, depth, interlace):
    h, w = 11, 13  # odd sizes: partial bytes at the end of sub-byte rows, small and empty Adam7 passes
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    top = (1 << depth) - 1
    if color == 3:
        n = min(top + 1, 200)
        palette = rng.integers(0, 256, (n, 3), dtype=np.uint8)
        samples = rng.integers(0, n, (h, w, 1)).astype(np.uint8)
        extra = (chunk(b"PLTE", palette.tobytes()),)
        want = palette[samples[..., 0]]
    else:
        samples = rng.integers(0, top + 1, (h, w, channels)).astype(np.uint16 if depth == 16 else np.uint8)
        extra = ()
        s8 = to8(samples, depth)
        want = s8[..., :3] if channels >= 3 else np.repeat(s8[..., :1], 3, axis=2)
        if channels in (2, 4):
            want = over_white(want, s8[..., -1])
    p = save(tmp_path, png_bytes(samples, color, depth, interlace=interlace, before_idat=extra))
    assert np.array_equal(read_png(p), want)


@pytest.mark.parametrize("kind", range(5))
def test_each_filter_type_alone(tmp_path, kind):
    rgb = smooth_rgb(20, 9)
    p = save(tmp_path, png_bytes(rgb, 2, 8, filters=lambda y: kind))
    assert np.array_equal(read_png(p), rgb)


def test_transparency_chunks(tmp_path):
    gray = rng.integers(0, 256, (6, 7, 1), dtype=np.uint8)
    gray[0, :3] = 77
    p = save(tmp_path, png_bytes(gray, 0, 8, before_idat=(chunk(b"tRNS", struct.pack(">H", 77)),)))
    want = np.repeat(gray, 3, axis=2)
    want[gray[..., 0] == 77] = 255  # the key color is fully transparent: white
    assert np.array_equal(read_png(p), want)

    rgb = rng.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    rgb[1, 1] = (1000, 2000, 3000)
    p = save(tmp_path, png_bytes(rgb, 2, 16, before_idat=(chunk(b"tRNS", struct.pack(">3H", 1000, 2000, 3000)),)))
    want = to8(rgb, 16)
    want[np.all(rgb == (1000, 2000, 3000), axis=2)] = 255
    assert np.array_equal(read_png(p), want)

    palette = np.array([[10, 20, 30], [200, 100, 0], [0, 0, 255]], np.uint8)
    idx = rng.integers(0, 3, (4, 5, 1)).astype(np.uint8)
    trns = bytes([0, 128])  # shorter than the palette: the rest are opaque
    p = save(tmp_path, png_bytes(idx, 3, 8, before_idat=(chunk(b"PLTE", palette.tobytes()), chunk(b"tRNS", trns))))
    alpha = np.array([0, 128, 255], np.uint8)[idx[..., 0]]
    assert np.array_equal(read_png(p), over_white(palette[idx[..., 0]], alpha))


def test_large_paeth_image_is_fast(tmp_path):
    """Average/Paeth rows cannot be vectorized along a row; the diagonal sweep keeps a 1024x1024 read well under 1 s
    (a per-byte Python loop would take ~10 s)."""
    rgb = smooth_rgb(1024, 1024)
    rows = np.concatenate([np.full((1024, 1), 4, np.uint8), rgb.reshape(1024, -1)], axis=1)
    # Paeth-filter the whole image at once: filter type 4 on every row, computed vectorized here.
    x = rgb.reshape(1024, -1).astype(np.int16)
    a = np.zeros_like(x)
    a[:, 3:] = x[:, :-3]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    c = np.zeros_like(x)
    c[1:, 3:] = x[:-1, :-3]
    rows[:, 1:] = (x - img._paeth(a, b, c)) & 0xFF
    data = SIG + ihdr(1024, 1024) + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b"")
    p = save(tmp_path, data)
    t = time.perf_counter()
    got = read_png(p)
    assert time.perf_counter() - t < 3.0
    assert np.array_equal(got, rgb)


def test_ppm_and_pgm(tmp_path):
    rgb = random_rgb(5, 7)
    p = save(tmp_path, b"P6\n# made by hand\n7 5\n255\n" + rgb.tobytes(), "a.ppm")
    assert np.array_equal(read_png(p), rgb)
    assert read_png_text(p) == {}
    deep = rng.integers(0, 1024, (5, 7, 3)).astype(">u2")
    p = save(tmp_path, b"P6 7 5 1023 " + deep.tobytes(), "b.ppm")
    assert np.array_equal(read_png(p), np.round(deep.astype(np.float64) * 255 / 1023).astype(np.uint8))
    gray = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    p = save(tmp_path, b"P5 4 3 255\n" + gray.tobytes(), "c.pgm")
    assert np.array_equal(read_png(p), np.repeat(gray[..., None], 3, axis=2))


# --- malformed input ----------------------------------------------------------------------------------------------


def good_png() -> bytes:
    return encode_png(smooth_rgb(6, 8), {"parameters": "p"})


def with_chunk_data(data: bytes, kind: bytes, new: bytes) -> bytes:
    """Replace the data of the first `kind` chunk, with a correct CRC (to get past the CRC check)."""
    pos = 8
    while True:
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4 : pos + 8] == kind:
            return data[:pos] + chunk(kind, new) + data[pos + 12 + length :]
        pos += 12 + length


def ihdr_fields(**kw) -> bytes:
    f = {"w": 8, "h": 6, "depth": 8, "color": 2, "compression": 0, "filt": 0, "interlace": 0} | kw
    return struct.pack(">IIBBBBB", *f.values())


def idat_of(raw: bytes) -> bytes:
    return with_chunk_data(good_png(), b"IDAT", zlib.compress(raw))


ROW = bytes(1 + 8 * 3)  # one filter-0 row of the 8-pixel-wide good_png
MALFORMED = {
    "empty": (b"", "not a PNG"),
    "text file": (b"hello world\n", "not a PNG"),
    "jpeg": (b"\xff\xd8\xff\xe0" + bytes(40), "not a PNG"),
    "signature only": (SIG, "no IHDR"),
    "bad signature": (b"\x89PNG\r\n\x1a\x00" + good_png()[8:], "not a PNG"),
    "chunk before IHDR": (SIG + chunk(b"tEXt", b"a\0b") + good_png()[8:], "not IHDR"),
    "no IEND": (good_png()[:-12], "no IEND"),
    "huge chunk length": (SIG + struct.pack(">I", 0xFFFFFFF0) + b"IHDR" + bytes(20), "past the end"),
    "IHDR too short": (SIG + chunk(b"IHDR", bytes(12)) + chunk(b"IEND", b""), "IHDR chunk of 12"),
    "zero width": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(w=0)), "impossible size"),
    "giant": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(w=1 << 20, h=1 << 20)), "limit"),
    "too wide": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(w=1 << 31)), "impossible size"),
    "bad color type": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(color=5)), "color type 5"),
    "16-bit palette": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(color=3, depth=16)), "color type 3"),
    "compression 1": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(compression=1)), "compression"),
    "interlace 2": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(interlace=2)), "interlace"),
    "claims more than the data holds": (
        with_chunk_data(good_png(), b"IHDR", ihdr_fields(w=1 << 14, h=1 << 14)),
        "cannot hold",
    ),
    "corrupt zlib": (with_chunk_data(good_png(), b"IDAT", b"\x78\x9c" + bytes(range(7, 60))), "corrupt compressed"),
    "too little data": (idat_of(ROW * 5), "ends after"),
    "bad filter type": (idat_of(ROW * 3 + b"\x05" + ROW[1:] + ROW * 2), "filter type 5 on row 3"),
    "no IDAT": (SIG + ihdr(8, 6) + chunk(b"IEND", b""), "no IDAT"),
    "palette without PLTE": (with_chunk_data(good_png(), b"IHDR", ihdr_fields(color=3)), "without a PLTE"),
    "palette index out of range": (
        SIG
        + ihdr(2, 1, 8, 3)
        + chunk(b"PLTE", bytes(6))
        + chunk(b"IDAT", zlib.compress(b"\0\1\5"))
        + chunk(b"IEND", b""),
        "palette index 5",
    ),
    "PLTE of 4 bytes": (SIG + ihdr(1, 1, 8, 3) + chunk(b"PLTE", bytes(4)) + chunk(b"IEND", b""), "PLTE chunk of 4"),
    "unknown critical chunk": (good_png()[:33] + chunk(b"ABCD", b"x") + good_png()[33:], "unknown critical"),
    "bad chunk type": (good_png()[:33] + chunk(b"a1c\0", b"") + good_png()[33:], "invalid chunk type"),
    "ppm header only": (b"P6\n", "header ends early"),
    "ppm truncated": (b"P6 4 4 255\n" + bytes(20), "truncated"),
    "ppm zero size": (b"P6 0 4 255\n", "impossible size"),
    "ppm maxval": (b"P6 1 1 70000\n" + bytes(6), "maxval 70000"),
    "ppm garbage": (b"P6 a b c\n", "expected a number"),
    "ppm giant": (b"P6 100000 100000 255\n" + bytes(30), "limit"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed(tmp_path, name):
    data, message = MALFORMED[name]
    p = save(tmp_path, data, "bad file.png")
    with pytest.raises(RuntimeFailure, match=message) as e:
        read_png(p)
    assert str(p) in str(e.value)


def test_every_truncation_and_bit_flip(tmp_path):
    """Every prefix and every single-bit or byte flip of a small PNG is refused (signature, lengths, CRCs, IEND)."""
    data = good_png()
    p = tmp_path / "f.png"
    for cut in range(len(data)):
        p.write_bytes(data[:cut])
        with pytest.raises(RuntimeFailure, match="f.png"):
            read_png(p)
        with pytest.raises(RuntimeFailure, match="f.png"):
            read_png_text(p)
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            p.write_bytes(bytes(bad))
            with pytest.raises(RuntimeFailure, match="f.png"):
                read_png(p)


def test_giant_dimensions_allocate_nothing(tmp_path):
    # 16384 x 16384 RGBA16 (2 GiB of pixels) within the pixel limit, backed by a valid but tiny zlib stream.
    data = SIG + ihdr(1 << 14, 1 << 14, 16, 6) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
    p = save(tmp_path, data)
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(RuntimeFailure, match="cannot hold"):
        read_png(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t < 1.0 and peak < 10 << 20


def test_decompression_is_bounded(tmp_path):
    """A stream that inflates far beyond the image (a zip bomb) is only inflated as far as the image needs."""
    raw = b"\0" + bytes(3) + bytes(64 << 20)  # a 1x1 image's row, then 64 MiB more
    data = SIG + ihdr(1, 1) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    p = save(tmp_path, data)
    tracemalloc.start()
    got = read_png(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(got, np.zeros((1, 1, 3), np.uint8)) and peak < 10 << 20


def test_malformed_text_chunks(tmp_path):
    p = save(tmp_path, with_chunk_data(good_png(), b"tEXt", b"no separator"))
    assert read_png(p).shape == (6, 8, 3)  # pixels do not depend on text chunks
    with pytest.raises(RuntimeFailure, match="no keyword"):
        read_png_text(p)
    cases = {
        b"k\0\0\0\0\0\xff\xfe": "not UTF-8",  # iTXt text must be UTF-8
        b"k\0\1\0\0\0not zlib": "corrupt compressed text",
        b"k\0\2\0\0\0": "malformed header",  # compression flag 2
        b"k\0": "truncated header",
    }
    for body, message in cases.items():
        p = save(tmp_path, good_png()[:33] + chunk(b"iTXt", body) + good_png()[33:], "itxt.png")
        with pytest.raises(RuntimeFailure, match=message) as e:
            read_png_text(p)
        assert "itxt.png" in str(e.value)
    bomb = b"k\0\0" + zlib.compress(bytes(img.MAX_TEXT_BYTES + 1))  # zTXt inflating past the text cap
    p = save(tmp_path, good_png()[:33] + chunk(b"zTXt", bomb) + good_png()[33:], "ztxt.png")
    with pytest.raises(RuntimeFailure, match="text longer than"):
        read_png_text(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RuntimeFailure, match="no such file"):
        read_png(tmp_path / "nope.png")
    with pytest.raises(RuntimeFailure, match="is a folder"):
        read_png(tmp_path)


# --- generation parameters ----------------------------------------------------------------------------------------


def test_generation_parameters_format(monkeypatch):
    monkeypatch.setattr(img, "_version", lambda: "sdcompile 0.1.0")
    assert generation_parameters("a cat", "blurry", 20, "Euler a", 7, 42, 512, 512, "/models/v1-5.safetensors") == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 512x512, Model: v1-5.safetensors, "
        "Version: sdcompile 0.1.0"
    )
    text = generation_parameters(
        "a dog\non two lines",
        "",
        30,
        "DPM++ 2M",
        7.5,
        -1,
        768,
        512,
        r"C:\m\sd.ckpt",
        scheduler="Karras",
        strength=0.75,
        extra={"Clip skip": 2, "Note": "a, b: c", "Unused": None},
    )
    assert text == (
        "a dog\non two lines\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: -1, Size: 768x512, "
        'Model: sd.ckpt, Denoising strength: 0.75, Clip skip: 2, Note: "a, b: c", Version: sdcompile 0.1.0'
    )


def test_generation_parameters_version_is_real():
    assert generation_parameters("p", "", 1, "Euler", 1.0, 0, 8, 8, None).endswith(img._version())
    assert img._version().startswith("sdcompile")


# --- tensors <-> images -------------------------------------------------------------------------------------------


def decoder_output(h: int, w: int, dtype=np.float32) -> np.ndarray:
    x = rng.uniform(-1.3, 1.3, (1, 3, h, w)).astype(dtype)
    # exact halfway cases after scaling: (x * 0.5 + 0.5) * 255 = k + 0.5 rounds half to even
    x.reshape(-1)[:6] = ((np.array([0.5, 1.5, 2.5, 126.5, 253.5, 254.5]) / 255 - 0.5) / 0.5).astype(dtype)
    return x


def test_to_image_formula():
    x = decoder_output(9, 7)
    want = np.round(np.clip(x[0] * np.float32(0.5) + np.float32(0.5), 0, 1) * np.float32(255)).astype(np.uint8)
    got = to_image(x)
    assert got.shape == (9, 7, 3) and got.dtype == np.uint8
    assert np.array_equal(got, want.transpose(1, 2, 0))
    assert np.array_equal(to_image(x[0]), got)
    assert to_image(np.full((3, 2, 2), -5.0, np.float32)).max() == 0
    assert to_image(np.full((3, 2, 2), np.inf, np.float32)).min() == 255


def test_to_image_refuses():
    with pytest.raises(RuntimeFailure, match="batch of 2"):
        to_image(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(RuntimeFailure, match="NaN"):
        to_image(np.full((3, 2, 2), np.nan, np.float32))
    with pytest.raises(RuntimeFailure, match="float"):
        to_image(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(RuntimeFailure, match=r"\[3, H, W\]"):
        to_image(np.zeros((4, 4, 3), np.float32))


def test_from_image_formula():
    rgb = random_rgb(8, 16)
    x = from_image(rgb, 16, 8)
    assert x.shape == (1, 3, 8, 16) and x.dtype == np.float32
    assert np.array_equal(x[0], (np.float32(2) * (rgb.astype(np.float32) / np.float32(255)) - 1).transpose(2, 0, 1))
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_image(x), rgb)  # 8-bit values survive the round trip exactly
    with pytest.raises(RuntimeFailure, match="uint8"):
        from_image(rgb.astype(np.float32), 16, 8)
    with pytest.raises(RuntimeFailure, match="positive"):
        from_image(rgb, 0, 8)


SIZES = [((48, 40), (64, 56)), ((100, 37), (24, 16)), ((64, 64), (40, 64)), ((33, 77), (33, 50)), ((1, 1), (8, 8))]
SIZES += [((5, 5), (300, 2)), ((600, 200), (512, 256))]


@pytest.mark.parametrize(("src", "dst"), SIZES, ids=[f"{a}x{b}-{c}x{d}" for (a, b), (c, d) in SIZES])
def test_resize_matches_pillow_lanczos(src, dst):
    """Pillow up to 12 resizes horizontally then vertically, and resize_lanczos reproduces it bit for bit. Newer
    Pillow picks the pass order per size; each single pass is still bit-exact, and the vertical-first result is too."""
    Image = pytest.importorskip("PIL.Image")
    rgb = smooth_rgb(*src) if src[0] > 8 else random_rgb(*src)
    (h, w), (oh, ow) = src, dst
    ref = np.asarray(Image.fromarray(rgb).resize((ow, oh), Image.Resampling.LANCZOS))
    ours = resize_lanczos(rgb, ow, oh)
    assert ours.shape == (oh, ow, 3)
    if h == oh or w == ow:
        assert np.array_equal(ours, ref)
    else:
        vertical_first = img._resample_axis(img._resample_axis(rgb, oh, axis=0), ow, axis=1)
        assert np.array_equal(ours, ref) or np.array_equal(vertical_first, ref)
        assert np.abs(ours.astype(int) - ref).max() <= 8


def test_resize_refuses():
    with pytest.raises(RuntimeFailure, match="pixel limit"):
        resize_lanczos(random_rgb(2, 2), 1 << 15, 1 << 14)
    with pytest.raises(RuntimeFailure, match="positive"):
        resize_lanczos(random_rgb(2, 2), 2.5, 2)  # type: ignore[arg-type]
    assert MAX_PIXELS == 1 << 28


def test_matches_diffusers_vae_image_processor():
    torch = pytest.importorskip("torch")
    Image = pytest.importorskip("PIL.Image")
    image_processor = pytest.importorskip("diffusers.image_processor")
    proc = image_processor.VaeImageProcessor()  # the SD pipelines' defaults: resize with lanczos, normalize

    for dtype in (np.float32, np.float16):
        x = decoder_output(40, 56, dtype)
        ref = proc.postprocess(torch.from_numpy(x), output_type="pil")[0]
        assert np.array_equal(to_image(x), np.asarray(ref)), dtype

    rgb = smooth_rgb(48, 64)
    for w, h in ((64, 48), (40, 48), (64, 32)):  # same size, and resizes along one axis (order-independent)
        ref = proc.preprocess(Image.fromarray(rgb), height=h, width=w).numpy()
        assert np.array_equal(from_image(rgb, w, h), ref), (w, h)
    ref = proc.preprocess(Image.fromarray(rgb), height=72, width=40).numpy()
    assert np.abs(from_image(rgb, 40, 72) - ref).max() <= 8 / 127.5  # two axes: see test_resize_matches_pillow
