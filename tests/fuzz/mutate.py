"""Seeded mutations of weight files: generic byte-level edits plus edits that know each format's structure.

Byte-level edits alone rarely get past a parser's first checks (a flipped bit in a zip member fails its CRC, one in
a JSON header breaks the JSON), so every format also gets edits that keep the container valid and change what it
says: safetensors header fields, GGUF header fields, zip records and the pickle inside a checkpoint, protobuf
fields of an ONNX model. Values are drawn from boundaries (0, 1, 2^31, 2^32, 2^63, -1, 10^30...) where readers
tend to go wrong.

`mutant(fmt, seeds, seed, index)` depends only on its arguments, so a campaign is replayed from (format, seed,
index) and an escaping mutant can be rebuilt anywhere.
"""

from __future__ import annotations

import io
import json
import pickletools
import random
import struct
import warnings
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

Op = Callable[[bytes, random.Random, list[bytes]], "tuple[bytes, str] | None"]

INTS = [
    0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 127, 128, 255, 256, 1023, 4096, 65535, 65536,
    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**33, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
]  # fmt: skip
NEG_INTS = [-1, -2, -(2**31), -(2**63)]
BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]


class Mutant(NamedTuple):
    data: bytes
    how: str  # the edits, in order, for the report and the corpus
    seed_file: int  # which seed file it started from


def _int(rng: random.Random, negative: bool = True, huge: bool = False) -> int:
    pool = INTS + (NEG_INTS if negative else []) + ([10**30, 2**100] if huge else [])
    v = rng.choice(pool)
    return v + rng.choice([0, 0, 0, -1, 1]) if v not in (0,) else v


def _pos(rng: random.Random, n: int) -> int:
    """A position in a buffer of n bytes, biased to the front where headers live half of the time."""
    if n <= 0:
        return 0
    if rng.random() < 0.5:
        return min(n - 1, int(rng.random() ** 3 * n))
    return rng.randrange(n)


# --- generic byte-level edits ------------------------------------------------------------------------------------


def flip_bits(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    b = bytearray(d)
    k = rng.choice([1, 1, 2, 3, 8])
    for _ in range(k):
        i = _pos(rng, len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b), f"flip {k} bits"


def set_bytes(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    b = bytearray(d)
    i = _pos(rng, len(b))
    k = rng.choice([1, 1, 2, 4])
    for j in range(i, min(len(b), i + k)):
        b[j] = rng.choice(BYTES)
    return bytes(b), f"set {k} bytes at {i}"


def set_int(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    width = rng.choice([1, 2, 4, 4, 8, 8])
    i = _pos(rng, max(1, len(d) - width))
    if rng.random() < 0.5:
        i -= i % width
    v = _int(rng) % (1 << (8 * width))
    order = "little" if rng.random() < 0.85 else "big"
    b = bytearray(d)
    b[i : i + width] = v.to_bytes(width, order)
    return bytes(b), f"set u{8 * width} {order} at {i} to {v}"


def truncate(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    n = _pos(rng, len(d)) if rng.random() < 0.7 else len(d) - rng.randrange(1, min(len(d), 64) + 1)
    return d[:n], f"truncate to {n}"


def extend(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    kind = rng.choice(["zeros", "random", "self"])
    tail = {"zeros": bytes(rng.choice([1, 8, 100, 4096])), "random": rng.randbytes(rng.randrange(1, 200)), "self": d}
    return d + tail[kind], f"append {kind}"


def dup_chunk(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    a = _pos(rng, len(d))
    n = rng.choice([1, 4, 8, 16, 64, 256])
    at = rng.choice([a + n, _pos(rng, len(d))])
    return d[:at] + d[a : a + n] + d[at:], f"duplicate {n} bytes from {a} at {at}"


def del_chunk(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    a = _pos(rng, len(d))
    n = rng.choice([1, 2, 4, 8, 16, 64, 256])
    return d[:a] + d[a + n :], f"delete {n} bytes at {a}"


def insert_random(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    a = _pos(rng, len(d))
    n = rng.choice([1, 2, 4, 8, 32])
    return d[:a] + rng.randbytes(n) + d[a:], f"insert {n} random bytes at {a}"


def copy_over(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str]:
    a, b = _pos(rng, len(d)), _pos(rng, len(d))
    n = rng.choice([2, 4, 8, 16, 64])
    chunk = d[a : a + n]
    return d[:b] + chunk + d[b + len(chunk) :], f"copy {n} bytes from {a} over {b}"


def splice(d: bytes, rng: random.Random, seeds: list[bytes]) -> tuple[bytes, str]:
    other = rng.choice(seeds)
    a, b = _pos(rng, len(d)), _pos(rng, len(other))
    return d[:a] + other[b:], f"splice at {a} with another seed from {b}"


GENERIC: list[Op] = [flip_bits, set_bytes, set_int, set_int, truncate, extend, dup_chunk, del_chunk, insert_random,
                     copy_over, splice]  # fmt: skip


# --- safetensors -------------------------------------------------------------------------------------------------

_ST_DTYPES = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U64", "U32", "U16",
              "U8", "BOOL", "F4", "C64", "", "f32"]  # fmt: skip
_JSON_ODD: list[Any] = [None, True, 1.5, "2", [], {}, [[1]], -1, 10**30, 2**64, "\x00"]


def _st_split(d: bytes) -> tuple[dict, bytes] | None:
    if len(d) < 8:
        return None
    n = int.from_bytes(d[:8], "little")
    try:
        h = json.loads(d[8 : 8 + n])
    except (ValueError, RecursionError):
        return None
    return (h, d[8 + n :]) if isinstance(h, dict) else None


def _st_join(h: dict, data: bytes) -> bytes:
    t = json.dumps(h).encode()
    return struct.pack("<Q", len(t)) + t + data


def _st_entries(h: dict) -> list[str]:
    return [k for k, v in h.items() if k != "__metadata__" and isinstance(v, dict)]


def st_shape(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    sp = _st_split(d)
    if not sp or not _st_entries(sp[0]):
        return None
    h, data = sp
    name = rng.choice(_st_entries(h))
    shape = h[name].get("shape")
    shape = list(shape) if isinstance(shape, list) else [1]
    kind = rng.randrange(6)
    if kind == 0 and shape:
        shape[rng.randrange(len(shape))] = _int(rng, huge=True)
    elif kind == 1:  # an empty tensor whose other dimension is absurd: passes a bytes == prod(shape) check
        shape = [0, rng.choice([10**30, 2**63, 2**64, 2**62, 2**40])] + ([2**40] if rng.random() < 0.3 else [])
    elif kind == 2:
        shape = shape + [1] * rng.choice([1, 30, 40, 70])
    elif kind == 3:
        shape = rng.choice(_JSON_ODD)
    elif kind == 4 and shape:
        shape.insert(rng.randrange(len(shape) + 1), rng.choice([0, 1, 2, -1]))
    else:
        shape = shape[:-1] if shape else [2]
    h[name]["shape"] = shape
    return _st_join(h, data), f"safetensors {name!r} shape = {str(shape)[:80]}"


def st_dtype(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    sp = _st_split(d)
    if not sp or not _st_entries(sp[0]):
        return None
    h, data = sp
    name = rng.choice(_st_entries(h))
    h[name]["dtype"] = rng.choice(_ST_DTYPES + _JSON_ODD[:3])
    return _st_join(h, data), f"safetensors {name!r} dtype = {h[name]['dtype']!r}"


def st_offsets(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    sp = _st_split(d)
    if not sp or not _st_entries(sp[0]):
        return None
    h, data = sp
    names = _st_entries(h)
    name = rng.choice(names)
    offs = h[name].get("data_offsets")
    offs = list(offs) if isinstance(offs, list) and len(offs) == 2 else [0, 0]
    kind = rng.randrange(5)
    if kind == 0:
        offs[rng.randrange(2)] = _int(rng, huge=True)
    elif kind == 1:
        k = rng.choice([-8, -1, 1, 2, 8, 64])
        offs = [o + k if isinstance(o, int) else o for o in offs]
    elif kind == 2:
        other = h[rng.choice(names)].get("data_offsets")
        offs = other if isinstance(other, list) else offs
    elif kind == 3:
        offs = offs[::-1]
    else:
        offs = rng.choice(_JSON_ODD + [[0, 0, 0], [1.0, 2.0]])
    h[name]["data_offsets"] = offs
    return _st_join(h, data), f"safetensors {name!r} data_offsets = {str(offs)[:80]}"


def st_entry(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    sp = _st_split(d)
    if not sp:
        return None
    h, data = sp
    names = _st_entries(h)
    kind = rng.randrange(6)
    if kind == 0 and names:
        n = rng.choice(names)
        h[n].pop(rng.choice(["dtype", "shape", "data_offsets"]), None)
        how = f"drop a field of {n!r}"
    elif kind == 1 and names:
        n = rng.choice(names)
        h[rng.choice(["", "__metadata__", "\x00", "\u00e9" * 3, n + "x"])] = dict(h[n])
        how = f"copy the entry of {n!r} under another name"
    elif kind == 2 and names:
        n = rng.choice(names)
        h[n] = rng.choice(_JSON_ODD)
        how = f"entry {n!r} = {str(h[n])[:40]}"
    elif kind == 3:
        h["__metadata__"] = rng.choice(_JSON_ODD + [{"a": 1}, {"a": None}, {"a": ["x"]}, {"a": "x" * 1000}])
        how = f"__metadata__ = {str(h['__metadata__'])[:40]}"
    elif kind == 4 and names:
        n = rng.choice(names)
        h[n]["extra"] = rng.choice(_JSON_ODD)
        how = f"extra field in {n!r}"
    else:
        h.pop(rng.choice(names), None) if names else None
        how = "drop an entry"
    return _st_join(h, data), how


def st_length(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    if len(d) < 8:
        return None
    n = int.from_bytes(d[:8], "little")
    v = rng.choice([n + rng.choice([-8, -2, -1, 1, 2, 8]), _int(rng, negative=False), len(d), len(d) - 8, 0, 1, 2])
    return struct.pack("<Q", v % 2**64) + d[8:], f"safetensors header length = {v}"


def st_raw_json(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    """Edits a re-serialized dict cannot express: duplicate keys, deep nesting, non-UTF-8, padding."""
    if len(d) < 8:
        return None
    n = int.from_bytes(d[:8], "little")
    text = d[8 : 8 + n]
    kind = rng.randrange(5)
    if kind == 0 and text.startswith(b"{"):
        i = text.find(b"}")
        first = text[1 : i + 1]
        text = b"{" + first + b"," + text[1:] if i > 0 else text
        how = "duplicate the first key"
    elif kind == 1:
        depth = rng.choice([100, 5000, 100_000])
        text = b'{"__metadata__": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
        how = f"metadata nested {depth} deep"
    elif kind == 2:
        i = _pos(rng, len(text))
        text = text[:i] + rng.choice([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"]) + text[i:]
        how = f"bad byte in header at {i}"
    elif kind == 3:
        text = text + rng.choice([b" " * 7, b"\x00" * 8, b"\n"])
        how = "pad the header"
    else:
        text = text.replace(b'"shape": [', b'"shape": [' + str(rng.choice([0, 10**30, -0])).encode() + b", ", 1)
        how = "prepend a dim in the raw text"
    return struct.pack("<Q", len(text)) + text + d[8 + n :], how


SAFETENSORS: list[Op] = [st_shape, st_shape, st_dtype, st_offsets, st_offsets, st_entry, st_length, st_raw_json]


# --- GGUF --------------------------------------------------------------------------------------------------------

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGML_TYPES = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
               29, 30, 31, 34, 35, 39, 40, 99, 2**32 - 1]  # fmt: skip


def gguf_fields(d: bytes) -> list[tuple[int, int, str]]:
    """(offset, width, kind) of every header field a walk of `d` reaches; stops where the file stops making sense."""
    out: list[tuple[int, int, str]] = []
    pos = 0

    def take(width: int, kind: str) -> int:
        nonlocal pos
        if pos + width > len(d):
            raise IndexError
        out.append((pos, width, kind))
        v = int.from_bytes(d[pos : pos + width], "little")
        pos += width
        return v

    def string(kind: str) -> None:
        nonlocal pos
        n = take(8, kind + "_len")
        if n > len(d):
            raise IndexError
        out.append((pos, n, kind))
        pos += n

    def value(vt: int, depth: int) -> None:
        nonlocal pos
        if vt == 8:
            string("str")
        elif vt == 9:
            et = take(4, "array_type")
            n = take(8, "array_count")
            if n > len(d) or depth > 3:
                raise IndexError
            for _ in range(n):
                value(et, depth + 1)
        elif vt in _GGUF_SCALAR:
            take(_GGUF_SCALAR[vt], "scalar")
        else:
            raise IndexError

    try:
        take(4, "magic")
        take(4, "version")
        nt = take(8, "n_tensors")
        nkv = take(8, "n_kv")
        if nt > 1000 or nkv > 1000:
            return out
        for _ in range(nkv):
            string("key")
            value(take(4, "value_type"), 0)
        for _ in range(nt):
            string("name")
            nd = take(4, "n_dims")
            if nd > 8:
                return out
            for _ in range(nd):
                take(8, "dim")
            take(4, "ggml_type")
            take(8, "offset")
    except IndexError:
        pass
    return out


def gguf_field(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    fields = [f for f in gguf_fields(d) if f[2] not in ("magic", "str", "key", "name")]
    if not fields:
        return None
    off, width, kind = rng.choice(fields)
    old = int.from_bytes(d[off : off + width], "little")
    if kind == "ggml_type":
        v = rng.choice(_GGML_TYPES)
    elif kind == "value_type" or kind == "array_type":
        v = rng.choice([0, 4, 6, 7, 8, 9, 10, 12, 13, 99])
    elif kind == "version":
        v = rng.choice([0, 1, 2, 3, 4, 2**24 + 3, 2**32 - 1])
    elif kind in ("dim", "offset", "n_dims") and rng.random() < 0.5:
        v = rng.choice([0, 1, old * 2, old + 32, old - 32, old + 1, 2**32, 2**63 - 1, 2**63])
    else:
        v = rng.choice([old + 1, old - 1, _int(rng)])
    v %= 1 << (8 * width)
    return d[:off] + v.to_bytes(width, "little") + d[off + width :], f"gguf {kind} at {off}: {old} -> {v}"


def gguf_text(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    fields = [f for f in gguf_fields(d) if f[2] in ("str", "key", "name") and f[1] > 0]
    if not fields:
        return None
    off, width, kind = rng.choice(fields)
    i = off + rng.randrange(width)
    b = rng.choice([b"\xff", b"\x00", b"\xc3", b"."])
    return d[:i] + b + d[i + 1 :], f"gguf {kind} byte at {i} = {b!r}"


def gguf_copy_record(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    """Duplicate a key or tensor name over another one of the same length: duplicate keys and names."""
    fields = [f for f in gguf_fields(d) if f[2] in ("key", "name")]
    if len(fields) < 2:
        return None
    a, b = rng.sample(fields, 2)
    if a[1] != b[1]:
        return None
    return d[: b[0]] + d[a[0] : a[0] + a[1]] + d[b[0] + b[1] :], f"gguf {b[2]} at {b[0]} copied from {a[0]}"


GGUF: list[Op] = [gguf_field, gguf_field, gguf_field, gguf_text, gguf_copy_record]


# --- pickles (inside .ckpt) --------------------------------------------------------------------------------------

_GLOBALS = [
    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "BFloat16Storage"), ("torch", "LongStorage"),
    ("torch", "BoolStorage"), ("torch", "ComplexFloatStorage"), ("torch", "QInt8Storage"), ("torch", "float16"),
    ("torch", "Size"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"), ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Tensor"),
    ("collections", "OrderedDict"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "eval"),
    ("os", "system"), ("torch.storage", "UntypedStorage"),
]  # fmt: skip
_OPCODES = [op.code.encode("latin-1") for op in pickletools.opcodes]


def pickle_ops(d: bytes, start: int = 0) -> list[tuple[str, Any, int, int]]:
    """(opcode name, argument, start, end) of each opcode of the pickle at d[start:]; [] if it does not parse."""
    f = io.BytesIO(d)
    f.seek(start)
    out: list[tuple[str, Any, int, int]] = []
    prev = None
    try:
        for op, arg, pos in pickletools.genops(f):
            if prev is not None:
                out.append((prev[0], prev[1], prev[2], pos))
            prev = (op.name, arg, pos)
    except Exception:  # a mutated pickle stops making sense somewhere; edits use what parsed
        return out
    if prev is not None:
        out.append((prev[0], prev[1], prev[2], f.tell()))
    return out


def _pickle_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _pickle_str(s: bytes) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s


def mutate_pickle(p: bytes, rng: random.Random, start: int = 0) -> tuple[bytes, str] | None:
    """One edit of the opcodes of the pickle at p[start:]: an int (a size, stride, offset or storage size), a string
    or its length, a global, an opcode, or a whole opcode dropped or repeated."""
    ops = pickle_ops(p, start)
    if not ops:
        return None
    kind = rng.randrange(7)
    ints = [o for o in ops if o[0] in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG")]
    strs = [o for o in ops if o[0] in ("BINUNICODE", "SHORT_BINUNICODE", "BINSTRING", "SHORT_BINSTRING",
                                       "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES")]  # fmt: skip
    globs = [o for o in ops if o[0] in ("GLOBAL", "STACK_GLOBAL")]
    if kind <= 1 and ints:
        name, arg, a, b = rng.choice(ints)
        v = rng.choice([0, 0, 1, 2, _int(rng, huge=True), arg * 2 if isinstance(arg, int) else 3, -1])
        return p[:a] + _pickle_int(v) + p[b:], f"pickle int at {a}: {arg} -> {v}"
    if kind == 2 and strs:
        name, arg, a, b = rng.choice(strs)
        if rng.random() < 0.5 and name in ("BINUNICODE", "BINSTRING", "BINBYTES"):
            v = rng.choice([0, 1, 2**31 - 1, 2**31, 2**32 - 1, (b - a - 5) * 2, b - a - 4])
            return p[: a + 1] + struct.pack("<I", v % 2**32) + p[a + 5 :], f"pickle string length at {a} = {v}"
        new = rng.choice([b"", b"module", b"storage", b"cpu", b"\xff\xfe", b"x" * 300, b"0", b"1", b"data.pkl"])
        return p[:a] + _pickle_str(new) + p[b:], f"pickle string at {a}: {str(arg)[:20]!r} -> {new[:20]!r}"
    if kind == 3 and globs:
        name, arg, a, b = rng.choice(globs)
        mod, nm = rng.choice(_GLOBALS)
        if name == "GLOBAL":
            return p[:a] + b"c" + f"{mod}\n{nm}\n".encode() + p[b:], f"pickle global at {a} -> {mod}.{nm}"
        return None
    name, arg, a, b = rng.choice(ops)
    if kind == 4:
        return p[:a] + rng.choice(_OPCODES) + p[a + 1 :], f"pickle opcode at {a} ({name}) replaced"
    if kind == 5:
        return p[:a] + p[b:], f"pickle {name} at {a} dropped"
    return p[:b] + p[a:b] + p[b:], f"pickle {name} at {a} repeated"


# --- zip (.ckpt) --------------------------------------------------------------------------------------------------


class _ZipRecord(NamedTuple):
    name: bytes
    central: int  # offset of its central directory entry
    local: int  # offset of its local header


def zip_records(d: bytes) -> tuple[list[_ZipRecord], int] | None:
    """The members of a zip read from its central directory by hand (no validation), and the EOCD offset."""
    e = d.rfind(b"PK\x05\x06")
    if e < 0 or e + 22 > len(d):
        return None
    count, _size, cd = struct.unpack_from("<HII", d, e + 10)
    out, pos = [], cd
    for _ in range(count):
        if pos + 46 > len(d) or d[pos : pos + 4] != b"PK\x01\x02":
            break
        n, m, k = struct.unpack_from("<HHH", d, pos + 28)
        (local,) = struct.unpack_from("<I", d, pos + 42)
        out.append(_ZipRecord(d[pos + 46 : pos + 46 + n], pos, local))
        pos += 46 + n + m + k
    return out, e


_METHODS = [0, 1, 6, 8, 9, 12, 14, 19, 93, 95, 97, 98, 99, 0xFFFF]
# (field, offset in the central entry, offset in the local header, width); None: not in that header
_ZIP_FIELDS = [
    ("flags", 8, 6, 2), ("method", 10, 8, 2), ("crc", 16, 14, 4), ("compressed size", 20, 18, 4),
    ("size", 24, 22, 4), ("name length", 28, 26, 2), ("extra length", 30, 28, 2), ("comment length", 32, None, 2),
    ("local header offset", 42, None, 4),
]  # fmt: skip


def _pick_member(recs: list[_ZipRecord], rng: random.Random) -> _ZipRecord:
    # Members the reader actually opens (data.pkl, storages, byteorder) matter more than version records.
    hot = [r for r in recs if r.name.endswith((b"data.pkl", b"byteorder")) or b"/data/" in r.name]
    return rng.choice(hot if hot and rng.random() < 0.8 else recs)


def zip_method(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    z = zip_records(d)
    if not z or not z[0]:
        return None
    r = _pick_member(z[0], rng)
    v = rng.choice(_METHODS)
    where = rng.choice(["central", "central", "local", "both"])
    b = bytearray(d)
    if where in ("central", "both"):
        struct.pack_into("<H", b, r.central + 10, v)
    if where in ("local", "both") and r.local + 30 <= len(b):
        struct.pack_into("<H", b, r.local + 8, v)
    return bytes(b), f"zip {r.name.decode(errors='replace')} compression method = {v} ({where})"


def zip_field(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    z = zip_records(d)
    if not z or not z[0]:
        return None
    r = _pick_member(z[0], rng)
    field, c_off, l_off, width = rng.choice(_ZIP_FIELDS)
    where = rng.choice(["central", "local"]) if l_off is not None else "central"
    at = r.central + c_off if where == "central" else r.local + l_off  # type: ignore[operator]
    if at + width > len(d):
        return None
    old = int.from_bytes(d[at : at + width], "little")
    if field == "flags":
        v = old ^ rng.choice([0x1, 0x8, 0x40, 0x800, 0x2000])
    else:
        v = rng.choice([0, 1, old + 1, old - 1, old * 2, old + 64, 2 ** (8 * width) - 1, _int(rng, negative=False)])
    v %= 1 << (8 * width)
    b = bytearray(d)
    b[at : at + width] = v.to_bytes(width, "little")
    return bytes(b), f"zip {r.name.decode(errors='replace')} {where} {field}: {old} -> {v}"


def zip_eocd(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    z = zip_records(d)
    if not z:
        return None
    e = z[1]
    off, width, what = rng.choice([(8, 2, "entries on disk"), (10, 2, "entries"), (12, 4, "directory size"),
                                   (16, 4, "directory offset"), (20, 2, "comment length")])  # fmt: skip
    old = int.from_bytes(d[e + off : e + off + width], "little")
    v = rng.choice([0, 1, old + 1, old - 1, 2 ** (8 * width) - 1, old * 2]) % (1 << (8 * width))
    b = bytearray(d)
    b[e + off : e + off + width] = v.to_bytes(width, "little")
    return bytes(b), f"zip end record {what}: {old} -> {v}"


def _rezip(members: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as z:
        warnings.simplefilter("ignore")  # duplicate names are one of the edits
        for zi, data in members:
            nzi = zipfile.ZipInfo(zi.filename, date_time=(1980, 1, 1, 0, 0, 0))
            nzi.compress_type = zi.compress_type
            z.writestr(nzi, data)
    return out.getvalue()


def _zip_members(d: bytes) -> list[tuple[zipfile.ZipInfo, bytes]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(d)) as z:
            return [(zi, z.read(zi)) for zi in z.infolist()]
    except Exception:  # an earlier edit broke the archive; this edit needs a readable one
        return None


def zip_pickle(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    """Edit data.pkl and re-zip with correct CRCs and sizes, so the edit reaches the unpickler."""
    members = _zip_members(d)
    if not members:
        return None
    for i, (zi, data) in enumerate(members):
        if zi.filename.endswith("data.pkl"):
            m = mutate_pickle(data, rng)
            if m is None:
                return None
            members[i] = (zi, m[0])
            return _rezip(members), m[1]
    return None


def zip_member_data(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    """Change a member's bytes (a storage shorter or longer, a byteorder record) keeping the zip consistent."""
    members = _zip_members(d)
    if not members:
        return None
    i = rng.randrange(len(members))
    zi, data = members[i]
    new = rng.choice([data[: len(data) // 2], data + bytes(8), b"", b"big", b"little\n", b"middle", data[:-1]])
    kind = rng.random()
    if kind < 0.3:
        members.append((zi, new))  # the same name twice: zipfile keeps the last one
    elif kind < 0.4:
        members.pop(i)
    else:
        members[i] = (zi, new)
    return _rezip(members), f"zip member {zi.filename}: {len(data)} -> {len(new)} bytes"


def zip_recompress(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    members = _zip_members(d)
    if not members:
        return None
    method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
    for zi, _ in members:
        if rng.random() < 0.5:
            zi.compress_type = method
    return _rezip(members), f"zip members recompressed with method {method}"


def legacy_pickle(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    """Edit one of the pickles of a legacy checkpoint (most often the object pickle, the 4th)."""
    starts, pos = [], 0
    for _ in range(5):
        ops = pickle_ops(d, pos)
        if not ops:
            break
        starts.append(pos)
        pos = ops[-1][3]
    if not starts:
        return None
    which = 3 if len(starts) > 3 and rng.random() < 0.7 else rng.randrange(len(starts))
    m = mutate_pickle(d, rng, starts[which])
    return (m[0], f"legacy pickle {which}: {m[1]}") if m else None


def legacy_storage_count(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    pos = 0
    for _ in range(5):
        ops = pickle_ops(d, pos)
        if not ops:
            return None
        pos = ops[-1][3]
    if pos + 8 > len(d):
        return None
    old = struct.unpack_from("<q", d, pos)[0]
    v = rng.choice([0, 1, old - 1, old + 1, 2**33, 2**60, 2**63 - 1, -1, -(2**63)])
    v = min(max(v, -(2**63)), 2**63 - 1)  # old may already be an extreme from an earlier edit
    return d[:pos] + struct.pack("<q", v) + d[pos + 8 :], f"legacy storage count {old} -> {v}"


def _ckpt_op(zip_ops: list[Op], legacy_ops: list[Op]) -> Op:
    def op(d: bytes, rng: random.Random, s: list[bytes]) -> tuple[bytes, str] | None:
        return rng.choice(zip_ops if d[:2] == b"PK" else legacy_ops)(d, rng, s)

    return op


CKPT: list[Op] = [
    _ckpt_op([zip_method], [legacy_pickle]),
    _ckpt_op([zip_field, zip_eocd], [legacy_storage_count]),
    _ckpt_op([zip_pickle], [legacy_pickle]),
    _ckpt_op([zip_pickle], [legacy_pickle]),
    _ckpt_op([zip_member_data, zip_recompress], [legacy_pickle]),
]


# --- ONNX --------------------------------------------------------------------------------------------------------

# Locations an external-data entry may hold. "\x01NONUTF8\x01" is swapped for bytes that are not UTF-8 after
# serialization (the protobuf API only takes str); "loop", "loop_a", "out" and "sub" exist in every mutant's folder.
_PLACEHOLDER = "\x01NONUTF8\x01"
_LOCATIONS = [
    "weights.bin", "weights.bin\x00.txt", "\x00", _PLACEHOLDER, "a" * 256, "a" * 300, "a/" * 3000 + "w",
    ("x" * 255 + "/") * 20, "loop", "loop_a", "loop/w", "out", "sub", "sub/../weights.bin", "../outside.bin",
    "../../etc/hostname", "/etc/hostname", "C:\\weights.bin", "\\\\server\\share\\w", "~/w", ".", "", " ",
    "weights.bin/", "missing.bin", "./weights.bin", "sub/" * 100 + "w",
]  # fmt: skip
# as long as the placeholder, so no enclosing message's length prefix changes
_NON_UTF8 = [b"\xff\xfeweights", b"weights\xc3.", b"\xed\xa0\x80weight", b"\x80eights.b"]
_EXT_VALUES = ["0", "4", "16", "-1", "1e3", " 4", "0x10", "4.0", "", "99999999999999999999", "9" * 5000, "\x00",
               str(2**63), str(2**64)]  # fmt: skip


def _onnx_parse(d: bytes) -> Any:
    import onnx

    try:
        m = onnx.ModelProto()
        m.ParseFromString(d)
    except Exception:  # an earlier edit broke the protobuf; field edits need a parsable model
        return None
    return m if m.graph.initializer else None


def _onnx_serialize(m: Any, rng: random.Random) -> bytes:
    d = m.SerializeToString()
    ph = _PLACEHOLDER.encode()
    while ph in d:
        d = d.replace(ph, rng.choice(_NON_UTF8), 1)
    return d


def onnx_tensor(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    m = _onnx_parse(d)
    if m is None:
        return None
    inits = m.graph.initializer
    t = rng.choice(inits)
    kind = rng.randrange(8)
    if kind <= 1:
        dims = list(t.dims)
        r = rng.randrange(4)
        if r == 0 and dims:
            dims[rng.randrange(len(dims))] = rng.choice([0, 1, -1, 2**31, 2**62, 2**63 - 1, -(2**63)])
        elif r == 1:
            dims = [0, rng.choice([2**62, 2**63 - 1, 2**40])] + dims
        elif r == 2:
            dims = dims + [1] * rng.choice([1, 40, 70])
        else:
            dims = dims[:-1]
        del t.dims[:]
        t.dims.extend(dims)
        how = f"onnx {t.name!r} dims = {str(dims)[:60]}"
    elif kind == 2:
        t.data_type = rng.choice(list(range(0, 26)) + [99, 2**31 - 1])
        how = f"onnx {t.name!r} data_type = {t.data_type}"
    elif kind == 3:
        if t.raw_data:
            t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)] + rng.choice([b"", bytes(4)])
        else:
            t.float_data.append(1.0)
            t.int64_data.append(2**62)
        how = f"onnx {t.name!r} data length changed"
    elif kind == 4:
        first = inits[0].name if isinstance(inits[0].name, str) else "w"  # bytes when an edit broke its UTF-8
        t.name = rng.choice(["", first, "onnx::MatMul_7", "\x00", "a" * 1000])
        how = f"onnx initializer renamed {t.name[:20]!r}"
    elif kind == 5:
        t.data_location = rng.choice([0, 1])
        how = f"onnx {t.name!r} data_location = {t.data_location}"
    elif kind == 6:
        t.segment.begin, t.segment.end = 0, 1
        how = f"onnx {t.name!r} segment set"
    else:
        m.ir_version = rng.choice([0, 1, 3, 2**62, -1])
        how = f"onnx ir_version = {m.ir_version}"
    return _onnx_serialize(m, rng), how


def onnx_external(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    import onnx

    m = _onnx_parse(d)
    if m is None:
        return None
    t = rng.choice(m.graph.initializer)
    if t.data_location != onnx.TensorProto.EXTERNAL or rng.random() < 0.2:
        t.data_location = onnx.TensorProto.EXTERNAL
        t.ClearField("raw_data")
        if not t.external_data:
            e = t.external_data.add()
            e.key, e.value = "location", "weights.bin"
    kind = rng.randrange(4)
    entries = {e.key: e for e in t.external_data}
    if kind <= 1:
        loc = rng.choice(_LOCATIONS)
        if "location" in entries:
            entries["location"].value = loc
        else:
            e = t.external_data.add()
            e.key, e.value = "location", loc
        how = f"onnx {t.name!r} external location = {loc[:40]!r}"
    elif kind == 2:
        key = rng.choice(["offset", "length", "checksum", "basepath"])
        v = rng.choice(_EXT_VALUES)
        if key in entries:
            entries[key].value = v
        else:
            e = t.external_data.add()
            e.key, e.value = key, v
        how = f"onnx {t.name!r} external {key} = {v[:20]!r}"
    else:
        e = t.external_data.add()
        e.key, e.value = rng.choice([("location", "weights.bin"), ("location", "loop"), ("", ""), ("offset", "0")])
        how = f"onnx {t.name!r} external entry {e.key!r} repeated"
    return _onnx_serialize(m, rng), how


def _wire_fields(d: bytes, start: int, end: int, depth: int, out: list) -> bool:
    """Protobuf fields of d[start:end] as (tag offset, value offset, value end, wire type, depth); nested messages
    are guessed (a length-delimited value that parses completely as fields is walked too)."""

    def varint(i: int) -> tuple[int, int] | None:
        v = shift = 0
        while i < end and shift < 70:
            c = d[i]
            v |= (c & 0x7F) << shift
            i += 1
            if not c & 0x80:
                return v, i
            shift += 7
        return None

    i, found = start, []
    while i < end:
        t = varint(i)
        if t is None:
            return False
        tag, j = t
        wt = tag & 7
        if wt == 0:
            v = varint(j)
            if v is None:
                return False
            found.append((i, j, v[1], 0, depth))
            i = v[1]
        elif wt == 1 or wt == 5:
            n = 8 if wt == 1 else 4
            if j + n > end:
                return False
            found.append((i, j, j + n, wt, depth))
            i = j + n
        elif wt == 2:
            v = varint(j)
            if v is None or v[1] + v[0] > end:
                return False
            found.append((i, v[1], v[1] + v[0], 2, depth))
            i = v[1] + v[0]
        else:
            return False
    out.extend(found)
    if depth < 6:
        for _, a, b, wt, _ in found:
            if wt == 2 and b > a:
                _wire_fields(d, a, b, depth + 1, out)
    return True


def _varint_bytes(v: int) -> bytes:
    v %= 1 << 64
    out = bytearray()
    while True:
        c = v & 0x7F
        v >>= 7
        out.append(c | (0x80 if v else 0))
        if not v:
            return bytes(out)


def onnx_wire(d: bytes, rng: random.Random, _s: list[bytes]) -> tuple[bytes, str] | None:
    fields: list = []
    _wire_fields(d, 0, len(d), 0, fields)
    if not fields:
        return None
    tag_at, a, b, wt, depth = rng.choice(fields)
    kind = rng.randrange(5)
    if kind <= 1 and wt == 0:
        v = rng.choice([0, 1, 2, 3, 7, 16, 99, 2**31, 2**32, 2**62, 2**63, 2**64 - 1])
        return d[:a] + _varint_bytes(v) + d[b:], f"protobuf varint at {a} (depth {depth}) = {v}"
    if kind <= 1 and wt == 2:
        v = max(0, (b - a) + rng.choice([-2, -1, 1, 2, 100]))
        j = tag_at  # the length prefix starts after the tag's last varint byte and ends where the value starts
        while d[j] & 0x80:
            j += 1
        return d[: j + 1] + _varint_bytes(v) + d[a:], f"protobuf length at {tag_at} -> {v}"
    if kind == 2:
        return d[:tag_at] + d[b:], f"protobuf field at {tag_at} (depth {depth}) dropped"
    if kind == 3:
        return d[:b] + d[tag_at:b] + d[b:], f"protobuf field at {tag_at} (depth {depth}) repeated"
    if wt == 2 and b > a:
        i = rng.randrange(a, b)
        bad = rng.choice([b"\xff", b"\x00", b"\xc3", b"\x80"])
        return d[:i] + bad + d[i + 1 :], f"protobuf bytes at {i} = {bad!r}"
    return None


ONNX: list[Op] = [onnx_tensor, onnx_tensor, onnx_external, onnx_external, onnx_wire, onnx_wire]

STRUCTURED: dict[str, list[Op]] = {"safetensors": SAFETENSORS, "gguf": GGUF, "ckpt": CKPT, "onnx": ONNX}


def mutant(fmt: str, seeds: list[bytes], seed: int, index: int) -> Mutant:
    """Mutant number `index` of campaign `seed` for `fmt`: one to three edits of one of the seed files, most of
    them structure-aware."""
    rng = random.Random(f"{seed}/{fmt}/{index}")
    which = rng.randrange(len(seeds))
    d = seeds[which]
    hows = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        r = None
        if rng.random() < 0.7:
            op = rng.choice(STRUCTURED[fmt])
            try:
                r = op(d, rng, seeds)
            except Exception as e:  # noqa: BLE001 - a library refusing an edit of an already-mutated file
                hows.append(f"({op.__name__} not applicable: {type(e).__name__})")
        if r is None:
            r = rng.choice(GENERIC)(d, rng, seeds)
        d, how = r
        hows.append(how)
        if not d:
            break
    return Mutant(d, "; ".join(hows), which)
