"""PyTorch checkpoint reader: torch.save round trips (zip and legacy) and hostile pickles that must not run."""

from __future__ import annotations

import collections
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sdcompile.errors import FormatError, UnsafePickleError
from sdcompile.formats import open_store
from sdcompile.formats.ckpt import CkptStore
from tests.formats.samples import FakeStorage, FakeTensor, craft_pickle, legacy_ckpt, zip_ckpt

torch = pytest.importorskip("torch")

LAYOUTS = {"zip": True, "legacy": False}


def _save(obj, path, layout):
    torch.save(obj, path, _use_new_zipfile_serialization=LAYOUTS[layout])
    return path


def _state():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = base
    sd["f16"] = torch.randn(3, 5, generator=g).half()
    sd["bf16"] = torch.randn(7, generator=g).bfloat16()
    sd["f64"] = torch.randn(2, 2, generator=g).double()
    sd["i64"] = torch.arange(5)
    sd["i32"] = torch.arange(-3, 3, dtype=torch.int32)
    sd["i16"] = torch.arange(4, dtype=torch.int16)
    sd["i8"] = torch.arange(-2, 2, dtype=torch.int8)
    sd["u8"] = torch.arange(9, dtype=torch.uint8).reshape(3, 3)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["transposed"] = base.t()  # non-contiguous view sharing base's storage
    sd["offset_view"] = base[1:3, 2:]  # storage offset + non-contiguous rows
    sd["strided"] = base[:, ::2]
    sd["row"] = base[2]  # offset, contiguous
    sd["expanded"] = torch.arange(3.0).expand(4, 3)  # stride 0
    sd["empty"] = torch.zeros(0, 3)
    return sd


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_round_trip_flat(tmp_path, layout):
    sd = _state()
    path = _save(sd, tmp_path / f"{layout}.ckpt", layout)
    st = open_store(path)
    assert isinstance(st, CkptStore) and st.format == "ckpt"
    assert st.metadata["ckpt_layout"] == layout and st.metadata["state_dict_key"] == ""
    assert st.names() == list(sd)
    for name, t in sd.items():
        info = st.info(name)
        assert info.shape == tuple(t.shape), name
        assert info.nbytes == t.numel() * t.element_size()
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.contiguous().numpy()
        got = st.array(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        raw = st.raw(name)
        assert raw.dtype == np.uint8
        assert raw.tobytes() == t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), name
    assert st.info("bf16").dtype == "bf16" and st.info("f16").dtype == "f16" and st.info("bool").dtype == "bool"
    assert not st.raw("row").flags.owndata  # contiguous tensors are views of the memory map


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_nested_state_dict_and_scalars(tmp_path, layout):
    a, b, c = torch.ones(2), torch.zeros(3, dtype=torch.float16), torch.arange(4)
    obj = {
        "epoch": 7,
        "global_step": 1234,
        "name": "run",
        "state_dict": {"encoder": {"w": a, "deep": {"b": b}}, "head.bias": c},
        "optimizer_states": [{"step": 3}],
    }
    st = open_store(_save(obj, tmp_path / "n.pt", layout))
    assert st.names() == ["encoder.w", "encoder.deep.b", "head.bias"]
    assert st.metadata["state_dict_key"] == "state_dict"
    assert st.metadata["epoch"] == 7 and st.metadata["global_step"] == 1234 and st.metadata["name"] == "run"
    np.testing.assert_array_equal(st.array("encoder.deep.b"), b.numpy())


@pytest.mark.parametrize("key", ["model", "module"])
def test_state_dict_under_model_or_module(tmp_path, key):
    st = open_store(_save({key: {"w": torch.ones(2)}, "step": 1}, tmp_path / "m.pth", "zip"))
    assert st.names() == ["w"] and st.metadata["state_dict_key"] == key


def test_parameters_module_state_and_tensor_attributes(tmp_path):
    lin = torch.nn.Linear(3, 2)
    t = torch.arange(4.0)
    t.note = "an attribute makes torch pickle via _rebuild_from_type_v2"
    obj = {"params": dict(lin.named_parameters()), "sd": lin.state_dict(), "t": t}
    for layout in LAYOUTS:
        st = open_store(_save(obj, tmp_path / f"p_{layout}.pt", layout))
        assert set(st.names()) == {"params.weight", "params.bias", "sd.weight", "sd.bias", "t"}
        np.testing.assert_array_equal(st.array("params.weight"), lin.weight.detach().numpy())
        np.testing.assert_array_equal(st.array("t"), t.numpy())


def test_dtypes_without_typed_storage_use_v3(tmp_path):
    # uint16 and float8 have no legacy typed storage: torch writes _rebuild_tensor_v3 with an explicit dtype
    x = torch.randn(4, 4)
    sd = {"u16": torch.arange(5).to(torch.uint16), "e4m3": x.to(torch.float8_e4m3fn), "e5m2": x.to(torch.float8_e5m2)}
    st = open_store(_save(sd, tmp_path / "v3.pt", "zip"))
    assert st.info("u16").dtype == "u16" and st.info("e4m3").dtype == "f8_e4m3"
    np.testing.assert_array_equal(st.array("u16"), np.arange(5, dtype=np.uint16))
    np.testing.assert_array_equal(st.array("e4m3"), sd["e4m3"].float().numpy())
    np.testing.assert_array_equal(st.array("e5m2"), sd["e5m2"].float().numpy())


def test_single_tensor_file(tmp_path):
    st = open_store(_save(torch.arange(3.0), tmp_path / "t.pt", "zip"))
    assert st.names() == ["tensor"]


def test_any_top_level_folder_and_compressed_members(tmp_path):
    path = _save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "orig.ckpt", "zip")
    out = tmp_path / "renamed.ckpt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr("weird folder name/" + info.filename.split("/", 1)[1], src.read(info))
    st = open_store(out)
    np.testing.assert_array_equal(st.array("w"), np.arange(6.0, dtype=np.float32).reshape(2, 3))


class ModelCheckpoint:  # pickled under pytorch_lightning's module name below
    def __init__(self):
        self.best = 1.0


def test_lightning_callback_is_skipped_as_opaque(tmp_path, monkeypatch):
    # A class from pytorch_lightning pickled by reference (as real SD checkpoints do) must not need the package.
    modname = "pytorch_lightning.callbacks.model_checkpoint"
    mod = types.ModuleType(modname)
    mod.ModelCheckpoint = ModelCheckpoint
    monkeypatch.setattr(ModelCheckpoint, "__module__", modname)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, modname, mod)
    obj = {"state_dict": {"w": torch.ones(2)}, "callbacks": {ModelCheckpoint: {"k": 1}}, "cb": ModelCheckpoint()}
    path = _save(obj, tmp_path / "pl.ckpt", "zip")
    monkeypatch.delitem(sys.modules, modname)
    st = open_store(path)
    assert st.names() == ["w"]


def test_crafted_pickle_views_and_shared_storage(tmp_path):
    s = FakeStorage("0", 12)
    data = np.arange(12, dtype=np.float32)
    obj = {"a": FakeTensor(s, 0, (3, 4), (4, 1)), "b": FakeTensor(s, 1, (2, 2), (1, 4)), "c": FakeTensor(s, 11, (), ())}
    for path in (
        zip_ckpt(tmp_path / "z.ckpt", craft_pickle(obj), {"0": data.tobytes()}),
        legacy_ckpt(tmp_path / "l.ckpt", craft_pickle(obj, legacy=True), [("0", data.tobytes(), 4)]),
    ):
        st = open_store(path)
        np.testing.assert_array_equal(st.array("a"), data.reshape(3, 4))
        np.testing.assert_array_equal(st.array("b"), np.array([[1, 5], [2, 6]], dtype=np.float32))
        assert st.array("c").shape == () and st.array("c") == 11


# ---------------------------------------------------------------------------------------------------------------
# hostile pickles: refused before anything runs


class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(marker):
    import builtins
    import os
    import subprocess

    return {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').write('pwned')",)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
        "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w')",)),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.call", "builtins.eval"])
@pytest.mark.parametrize("where", ["zip", "legacy", "legacy-header", "plain-pickle"])
def test_malicious_pickle_is_refused(tmp_path, payload, where):
    marker = tmp_path / "PWNED"
    fn, args = _payloads(marker)[payload]
    evil = _Evil(fn, args)
    path = tmp_path / "evil.ckpt"
    if where in ("zip", "legacy"):
        _save({"state_dict": {"w": torch.ones(2)}, "x": evil}, path, where)
    elif where == "legacy-header":  # in the sys_info pickle, before the object pickle
        legacy_ckpt(path, pickle.dumps({}, protocol=2), [])
        data = path.read_bytes()
        head = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
        path.write_bytes(head + pickle.dumps(evil, protocol=2) + data[len(head) :])
    else:
        path.write_bytes(pickle.dumps(evil, protocol=4))
    assert not marker.exists()
    with pytest.raises(UnsafePickleError) as ei:
        open_store(path)
    msg = str(ei.value)
    assert str(path) in msg
    module = fn.__module__ if payload != "os.system" else "posix"
    assert f"{module}.{fn.__name__}" in msg
    assert not marker.exists()


def test_unsafe_error_is_a_format_error():
    assert issubclass(UnsafePickleError, FormatError)


def test_unknown_torch_global_is_refused(tmp_path):
    # a whole nn.Module pickled by reference: not on the allow-list, refused with the name it asked for
    path = _save({"m": torch.nn.Identity()}, tmp_path / "mod.pt", "zip")
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules\.linear\.Identity"):
        open_store(path)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_unsupported_dtype_outside_state_dict_is_ignored(tmp_path, layout):
    # complex tensors in optimizer state must not stop the weights from loading, nor shift the legacy storage table
    obj = {
        "optimizer": {"c": torch.ones(3, dtype=torch.complex64)},
        "state_dict": {"w": torch.arange(4.0), "v": torch.ones(2, dtype=torch.float64)},
    }
    st = open_store(_save(obj, tmp_path / "c.pt", layout))
    np.testing.assert_array_equal(st.array("w"), np.arange(4.0, dtype=np.float32))
    np.testing.assert_array_equal(st.array("v"), np.ones(2))
    bad = _save({"c": torch.ones(3, dtype=torch.complex64)}, tmp_path / "bad.pt", layout)
    with pytest.raises(FormatError, match=r"bad\.pt: tensor 'c' has dtype (ComplexFloatStorage|complex64)"):
        open_store(bad)


def test_self_referencing_dict(tmp_path):
    s = FakeStorage("0", 2)
    d = {"w": FakeTensor(s, 0, (2,), (1,))}
    d["me"] = d
    path = zip_ckpt(tmp_path / "loop.ckpt", craft_pickle(d), {"0": np.ones(2, np.float32).tobytes()})
    assert open_store(path).names() == ["w"]


# --- bounds (issue 9) ---------------------------------------------------------------------------------------------


def test_expanded_view_within_the_file_size_is_read(tmp_path):
    # stride 0 is legitimate (torch.save keeps expand() views); it is bounded, not refused
    s = FakeStorage("0", 4)
    path = zip_ckpt(tmp_path / "e.ckpt", craft_pickle({"w": FakeTensor(s, 0, (3, 4), (0, 1))}), {"0": _f32(4)})
    st = open_store(path)
    np.testing.assert_array_equal(st.array("w"), np.tile(np.arange(4, dtype=np.float32), (3, 1)))


def test_expanded_view_larger_than_the_file_is_refused_before_allocating(tmp_path):
    s = FakeStorage("0", 4)
    pkl = craft_pickle({"w": FakeTensor(s, 0, (2**20, 4), (0, 1))})  # 16 MiB from a file of a few hundred bytes
    path = zip_ckpt(tmp_path / "big.ckpt", pkl, {"0": _f32(4)})
    with pytest.raises(FormatError, match=r"big\.ckpt: tensor 'w' .*repeats the 4 elements .* into 4194304"):
        open_store(path)


def test_size_one_dimension_with_any_stride(tmp_path):
    # the stride of a size-1 dimension is never followed; 2^70 used to overflow numpy's as_strided
    s = FakeStorage("0", 4)
    path = zip_ckpt(
        tmp_path / "s.ckpt", craft_pickle({"w": FakeTensor(s, 0, (1, 2, 2), (2**70, 1, 2))}), {"0": _f32(4)}
    )
    np.testing.assert_array_equal(open_store(path).array("w"), np.array([[[0, 2], [1, 3]]], np.float32))


def _f32(n: int) -> bytes:
    return np.arange(n, dtype="<f4").tobytes()


def _rezip(src: Path, dst: Path, methods: dict[str, int]) -> Path:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for zi in a.infolist():
            method = next((m for k, m in methods.items() if zi.filename.endswith(k)), zipfile.ZIP_STORED)
            b.writestr(zipfile.ZipInfo(zi.filename), a.read(zi), compress_type=method)
    return dst


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_compressed_members_every_method(tmp_path, method):
    src = _save({"w": torch.arange(300.0).reshape(3, 100)}, tmp_path / "orig.ckpt", "zip")
    path = _rezip(src, tmp_path / "c.ckpt", {"data.pkl": method, "data/0": method, "byteorder": method})
    st = open_store(path)
    np.testing.assert_array_equal(st.array("w"), np.arange(300.0, dtype=np.float32).reshape(3, 100))


def _patch_member(path: Path, member: str, fmt: str, at_central: int, value: int) -> None:
    from tests.fuzz.mutate import zip_records

    b = bytearray(path.read_bytes())
    for r in zip_records(bytes(b))[0]:
        if r.name.endswith(member.encode()):
            struct.pack_into(fmt, b, r.central + at_central, value)
    path.write_bytes(bytes(b))


@pytest.mark.parametrize(
    "method,problem",
    [
        (zipfile.ZIP_DEFLATED, r"cannot be inflated \(deflate: error"),  # was zlib.error from raw()
        (zipfile.ZIP_LZMA, r"has a damaged LZMA header"),  # was lzma.LZMAError from raw()
        (zipfile.ZIP_BZIP2, r"cannot be inflated \(bzip2: OSError"),
    ],
)
def test_storage_whose_compression_method_was_edited(tmp_path, method, problem):
    path = _save({"w": torch.arange(64.0)}, tmp_path / "m.ckpt", "zip")
    _patch_member(path, "data/0", "<H", 10, method)  # central directory only: zipfile reads the method from there
    st = open_store(path)  # storages are inflated on first use
    with pytest.raises(FormatError, match=r"m\.ckpt: zip member .*data/0 " + problem):
        st.array("w")


def test_compressed_member_larger_than_declared(tmp_path):
    # a member that inflates past its declared size is refused once it passes it, not inflated to its end
    src = _save({"w": torch.zeros(4096)}, tmp_path / "orig.ckpt", "zip")
    path = _rezip(src, tmp_path / "z.ckpt", {"data.pkl": zipfile.ZIP_DEFLATED})
    _patch_member(path, "data.pkl", "<I", 24, 16)  # uncompressed size: 16 bytes
    with pytest.raises(FormatError, match=r"z\.ckpt: zip member .*data\.pkl inflates \(deflate\) past the 16 bytes"):
        open_store(path)


def test_compressed_member_crc_is_checked(tmp_path):
    src = _save({"w": torch.arange(64.0)}, tmp_path / "orig.ckpt", "zip")
    path = _rezip(src, tmp_path / "crc.ckpt", {"data/0": zipfile.ZIP_DEFLATED})
    _patch_member(path, "data/0", "<I", 16, 0x12345678)
    with pytest.raises(FormatError, match=r"crc\.ckpt: zip member .*data/0 fails its CRC check"):
        open_store(path).array("w")
