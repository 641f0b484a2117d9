"""The valid files the fuzzer mutates: small (a few hundred bytes to a few KB, so most mutations land in headers and
pickles rather than in tensor data), written by sdcompile's own example writers where one exists and by hand where a
layout needs covering that no writer produces (legacy .ckpt, compressed zip members, ONNX external data).

Every builder is deterministic: the same call gives the same bytes, so a mutant is fully named by (format, seed,
index) and a campaign can be replayed.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from sdcompile.examples_sd import _Pickle

FORMATS = ("safetensors", "gguf", "ckpt", "onnx")
EXT = {"safetensors": ".safetensors", "gguf": ".gguf", "ckpt": ".ckpt", "onnx": ".onnx"}

# ONNX external data lives beside the model; every mutant's folder gets this file and the traps below (see
# `prepare_dir`), so mutated locations can point at a real file, a directory, a symlink loop or out of the folder.
ONNX_SIDECAR = "weights.bin"


def _small_state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embeddings.token_embedding.weight": rng.standard_normal((4, 32)).astype(np.float32),
        "encoder.layers.0.mlp.fc1.weight": rng.standard_normal((2, 32)).astype(np.float32),
        "encoder.layers.0.mlp.fc1.bias": rng.standard_normal(3).astype(np.float32),
        "final_layer_norm.weight": np.ones(5, np.float32),
    }


# --- safetensors -------------------------------------------------------------------------------------------------


def _safetensors_by_hand() -> bytes:
    """Every dtype the reader knows, a scalar, an empty tensor and padding, laid out as the format allows."""
    rng = np.random.default_rng(3)
    arrays = {
        "f16": ("F16", rng.standard_normal((2, 3)).astype("<f2")),
        "bf16": ("BF16", rng.integers(0, 2**16, (4,), dtype="<u2")),
        "fp8": ("F8_E4M3", rng.integers(0, 256, (3,), dtype="u1")),
        "i64": ("I64", np.arange(3, dtype="<i8")),
        "u8": ("U8", np.arange(5, dtype="u1")),
        "b": ("BOOL", np.array([True, False])),
        "scalar": ("F64", np.array(2.5, dtype="<f8")),
        "empty": ("F32", np.zeros((0, 3), "<f4")),
    }
    header: dict = {"__metadata__": {"format": "pt", "k": "v"}}
    data = bytearray()
    for name, (dt, a) in arrays.items():
        b = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(data)


def safetensors_seeds(folder: Path) -> list[Path]:
    from sdcompile import examples

    a = examples.write_safetensors(folder / "clip.safetensors", _small_state(0), "f16", {"num_attention_heads": "2"})
    b = folder / "dtypes.safetensors"
    b.write_bytes(_safetensors_by_hand())
    return [a, b]


# --- GGUF --------------------------------------------------------------------------------------------------------


def gguf_seeds(folder: Path) -> list[Path]:
    import gguf

    from sdcompile import examples

    state = _small_state(1)
    a = examples.write_gguf(folder / "q8_0.gguf", state, "q8_0", {"num_attention_heads": 2, "note": "tiny"})
    # Metadata arrays (numbers, strings, nested) and a k-quant block: what the writer above does not emit.
    b = folder / "arrays.gguf"
    w = gguf.GGUFWriter(str(b), arch="llama", use_temp_file=False)
    w.add_array("tokenizer.ggml.tokens", ["a", "bc", "\u00e9"])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0])
    w.add_array("x.nested", [[1, 2], [3]])
    w.add_float64("x.f64", 1.25)
    w.add_bool("x.flag", True)
    w.add_int64("x.i64", -7)
    rng = np.random.default_rng(2)
    from sdcompile.quant.reference import quantize

    q = quantize(rng.standard_normal((1, 256)).astype(np.float32), "q4_k").reshape(1, -1)
    w.add_tensor("blk.0.w", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.add_tensor("blk.0.i", np.arange(4, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [a, b]


# --- PyTorch checkpoints -----------------------------------------------------------------------------------------


class _Ops(_Pickle):
    """Protocol-2 opcodes as torch.save's legacy writer emits them: the example writer's opcodes (``_Pickle``), with
    tensors at any offset and stride and, in legacy files, a view in the persistent id."""

    def __init__(self, legacy: bool = True) -> None:
        super().__init__()
        self.legacy = legacy  # legacy persistent ids have a sixth entry, the view

    def tensor(self, key: str, storage: str, numel: int, offset: int, shape, stride, view=None) -> None:
        self.put_global("torch._utils", "_rebuild_tensor_v2")
        self.b += b"(("  # args, then the persistent id ('storage', type, key, location, numel, view)
        self.put_str("storage")
        self.put_global("torch", storage)
        self.put_str(key)
        self.put_str("cpu")
        self.put_int(numel)
        if self.legacy and view is None:
            self.b += b"N"
        elif self.legacy:
            self.b += b"("
            self.put_str(view[0])
            self.put_int(view[1])
            self.put_int(view[2])
            self.b += b"t"
        self.b += b"tQ"
        self.put_int(offset)
        self.put_ints(shape)
        self.put_ints(stride)
        self.b += b"\x89"
        self.put_global("collections", "OrderedDict")
        self.b += b")RtR"


def legacy_ckpt_bytes() -> bytes:
    """A pre-1.6 torch.save file: magic, protocol, sys_info, the object pickle, the storage keys, then each storage as
    an int64 element count and its bytes. It holds a transposed (strided) tensor, a view into a shared storage and
    a half tensor."""
    a = np.arange(12, dtype="<f4")
    h = np.arange(4, dtype="<f2")
    ops = _Ops()
    ops.b += b"}("
    ops.put_str("w")
    ops.tensor("0", "FloatStorage", 12, 0, (3, 4), (1, 3))
    ops.put_str("v")
    ops.tensor("0", "FloatStorage", 12, 0, (4,), (1,), view=("0v", 2, 6))
    ops.put_str("h")
    ops.tensor("1", "HalfStorage", 4, 1, (3,), (1,))
    ops.put_str("epoch")
    ops.put_int(5)
    ops.b += b"u."
    out = bytearray()
    out += pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    out += pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}, protocol=2)
    out += ops.b
    out += pickle.dumps(["0", "1"], protocol=2)
    out += struct.pack("<q", 12) + a.tobytes()
    out += struct.pack("<q", 4) + h.tobytes()
    return bytes(out)


def zip_ckpt_bytes(pkl: bytes, storages: dict[str, bytes]) -> bytes:
    """A zip checkpoint from a data.pkl and its storages, stored uncompressed as torch.save does."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in [("data.pkl", pkl), ("byteorder", b"little")] + [
            (f"data/{k}", v) for k, v in storages.items()
        ]:
            z.writestr(zipfile.ZipInfo("archive/" + name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def recompress(data: bytes, methods: dict[str, int]) -> bytes:
    """The same zip with members re-stored under other compression methods ({member suffix: method}); others keep
    theirs. Checkpoints re-zipped by hand or by a tool look like this, and the reader inflates such members lazily."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for zi in src.infolist():
            method = next((m for suffix, m in methods.items() if zi.filename.endswith(suffix)), zi.compress_type)
            nzi = zipfile.ZipInfo(zi.filename, date_time=(1980, 1, 1, 0, 0, 0))
            nzi.compress_type = method
            dst.writestr(nzi, src.read(zi))
    return out.getvalue()


def ckpt_seeds(folder: Path) -> list[Path]:
    from sdcompile import examples_sd

    state = _small_state(2)
    top = {"state_dict": state, "epoch": 3, "name": "tiny", "lr": 0.5}
    z = examples_sd.write_ckpt(folder / "zip.ckpt", top, "f32")
    h = examples_sd.write_ckpt(folder / "zip_f16.ckpt", {"a": state["encoder.layers.0.mlp.fc1.bias"]}, "f16")
    c = folder / "zip_compressed.ckpt"
    c.write_bytes(
        recompress(
            h.read_bytes(),
            {"data.pkl": zipfile.ZIP_DEFLATED, "data/0": zipfile.ZIP_LZMA, "byteorder": zipfile.ZIP_BZIP2},
        )
    )
    legacy = folder / "legacy.pt"
    legacy.write_bytes(legacy_ckpt_bytes())
    return [z, h, c, legacy]


# --- ONNX --------------------------------------------------------------------------------------------------------


def _onnx_model(external: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "w.raw"),
        helper.make_tensor("w.typed", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]),
        helper.make_tensor("i.int64", TensorProto.INT64, [2], [5, -6]),
        helper.make_tensor("h.f16", TensorProto.FLOAT16, [2], np.array([1, 2], np.float16).view(np.uint16).tolist()),
        helper.make_tensor("b.bool", TensorProto.BOOL, [2], [1, 0]),
        helper.make_tensor("e.empty", TensorProto.FLOAT, [0, 4], []),
    ]
    if external:
        for name, off, n in (("x.a", 0, 4), ("x.b", 16, 2)):
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[n])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", ONNX_SIDECAR), ("offset", str(off)), ("length", str(4 * n))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "w.raw"], ["y"])], "g", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="fuzz")
    m.metadata_props.add(key="k", value="v")
    return m.SerializeToString()


def sidecar_bytes() -> bytes:
    return np.arange(8, dtype="<f4").tobytes()


def prepare_dir(folder: Path) -> None:
    """What an ONNX mutant's folder holds besides the model: its external data file, a sub-folder, a symlink loop,
    a symlink out of the folder, and a file outside it that escaping locations would reach."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ONNX_SIDECAR).write_bytes(sidecar_bytes())
    (folder / "sub").mkdir(exist_ok=True)
    for name, target in (("loop", "loop"), ("loop_a", "loop_b"), ("loop_b", "loop_a"), ("out", "../outside.bin")):
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(target)
    (folder.parent / "outside.bin").write_bytes(sidecar_bytes())


def onnx_seeds(folder: Path) -> list[Path]:
    a = folder / "inline.onnx"
    a.write_bytes(_onnx_model(external=False))
    b = folder / "external.onnx"
    b.write_bytes(_onnx_model(external=True))
    return [a, b]


BUILDERS = {"safetensors": safetensors_seeds, "gguf": gguf_seeds, "ckpt": ckpt_seeds, "onnx": onnx_seeds}


def build_seeds(folder: Path, formats: tuple[str, ...] = FORMATS) -> dict[str, list[bytes]]:
    """{format: [seed file bytes]}; the files are written under `folder` on the way."""
    out = {}
    for fmt in formats:
        d = folder / fmt
        d.mkdir(parents=True, exist_ok=True)
        if fmt == "onnx":
            prepare_dir(d)
        out[fmt] = [p.read_bytes() for p in BUILDERS[fmt](d)]
    return out
