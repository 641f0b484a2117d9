"""Write the artifact directory atomically: manifest, kernels, weights; every file hashed in the manifest, the
manifest covered by a digest of its own (``runtime/manifest.py`` defines both and checks them at load), and signed
with an Ed25519 key on request.

Same inputs and options give the same bytes: nothing time- or machine-dependent goes into the manifest except the
tool versions and the CPU the LLVM code was built for (Ed25519 signatures are deterministic too).

Replacing an artifact: the new one is built in a sibling ``.NAME.tmp-PID-XXXX`` directory, then swapped in with one
atomic exchange of the two directories (Linux ``renameat2(RENAME_EXCHANGE)``), so the path holds the old or the new
artifact at every instant, and the temporary directory holds the old one until it is deleted. Where the system or
file system cannot exchange, the old artifact is renamed to ``.NAME.old-PID-XXXX`` and the new one renamed in: a kill
between the two leaves no artifact at the path for a moment, and the next compile to that path renames the old one
back (`recover_output`). A symlink flipped to the newest build would also be atomic, but then the output path is a
link that `cp -r` and archivers copy as a link, not an artifact. Each such directory is `flock`-ed by the process
that owns it, so a later compile removes only those whose owner is gone, never a concurrent compile's.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.manifest import SIGNATURE_ALGORITHM, key_id, manifest_digest, signed_message

# 2: a module of several functions ("functions"), not one "plan"; 3: the manifest carries its own digest (and a
# signature when signed)
FORMAT_VERSION = 3
WEIGHTS_FILE = "weights.gguf"
LUTS_FILE = "luts.bin"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


WEIGHTS_ALIGN = 64


def write_weights_gguf(path: Path, tensors: list[tuple[str, str, tuple[int, ...], np.ndarray]]) -> None:
    """tensors: (name, storage type, numpy-order shape, raw bytes). Written with the gguf package's writer."""
    import gguf

    from sdcompile.quant.types import get

    w = gguf.GGUFWriter(str(path), arch="sdcompile", use_temp_file=False)
    # Tensor data 64-byte aligned (GGUF's default is 32): the CPU runtime hands the mapped file straight to its
    # kernels, which assume 64-byte aligned tensors, instead of copying every weight.
    w.add_custom_alignment(WEIGHTS_ALIGN)
    for name, dtype, shape, raw in tensors:
        qt = get(dtype)
        if dtype == "f32":
            w.add_tensor(name, raw.view(np.float32).reshape(shape))
        elif dtype == "f16":
            w.add_tensor(name, raw.view(np.float16).reshape(shape))
        else:
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            data = raw.reshape(rows, qt.row_bytes(shape[-1]))
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType(qt.ggml_id))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_artifact(out_dir: Path, manifest: dict, fill, sign_key=None) -> Path:
    """Build the artifact in a temporary sibling directory via `fill(tmpdir)`, hash it, record the manifest's digest
    (and with ``sign_key``, an Ed25519 private key from `load_signing_key`, its signature), then swap it into place.

    An error leaves any earlier artifact at `out_dir` untouched and no half-written one behind; a kill leaves the old
    or the new artifact at `out_dir` (see the module's docstring) and leftovers the next compile removes.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_output(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    lock = _lock(tmp, wait=False)  # a fresh directory: nobody else can hold it
    try:
        fill(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest["files"] = {
            str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files
        }
        seal_manifest(manifest, sign_key)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        _fsync_tree(tmp)  # the data is on disk before a rename makes it the artifact
        if out_dir.exists():
            if not (out_dir / "manifest.json").exists() and any(out_dir.iterdir()):
                from sdcompile.errors import OptionError

                raise OptionError(f"{out_dir} exists and is not an sdcompile artifact; choose another -o")
            _swap(tmp, out_dir)  # tmp now holds the old artifact
        else:
            os.rename(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _unlock(lock)
    return out_dir


# --- digest and signature -------------------------------------------------------------------------------------


def seal_manifest(manifest: dict, sign_key=None) -> None:
    """Record the manifest's digest, and with ``sign_key`` an Ed25519 signature of it, in ``manifest``."""
    manifest.pop("signature", None)
    # The digest of what the runtime will read back: JSON turns tuples into lists and keys into strings.
    digest = manifest_digest(json.loads(json.dumps(manifest)))
    manifest["digest"] = {"sha256": digest}
    if sign_key is not None:
        manifest["signature"] = {
            "algorithm": SIGNATURE_ALGORITHM,
            "key_id": key_id(sign_key.public_key()),
            "value": base64.b64encode(sign_key.sign(signed_message(digest))).decode("ascii"),
        }


def load_signing_key(path: str | Path):
    """The Ed25519 private key in the PEM file ``path`` (`sdcompile keygen`, or ``openssl genpkey -algorithm
    ed25519``); an `OptionError` saying what is wrong otherwise. Read before compiling, so a bad key fails fast."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sdcompile.errors import OptionError

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise OptionError(f"--sign-key {path}: cannot read it ({e.strerror or e})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise OptionError(
            f"--sign-key {path} is encrypted; give an unencrypted key (`sdcompile keygen` writes one, readable only "
            "by you)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise OptionError(
            f"--sign-key {path} is not a PEM private key ({e}); make one with `sdcompile keygen`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise OptionError(f"--sign-key {path} is a {type(key).__name__}; artifacts are signed with Ed25519 keys")
    return key


def generate_signing_key(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``path`` (private, PKCS#8 PEM, readable only by its owner) and ``path``.pub
    (public, SubjectPublicKeyInfo PEM). Refuses to overwrite either file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sdcompile.errors import OptionError

    priv, pub = Path(path), Path(f"{path}.pub")
    for p in (priv, pub):
        if p.exists() or p.is_symlink():
            raise OptionError(f"{p} exists; keygen never overwrites a key: choose another name")
        if not p.parent.is_dir():
            raise OptionError(f"{p}: the folder {p.parent} does not exist; create it first")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    pub.write_bytes(public_pem)
    return priv, pub


# --- replacing an artifact ------------------------------------------------------------------------------------

# Where the system has no flock, a leftover counts as abandoned after this long (no compile runs that long).
STALE_AFTER_S = 24 * 3600


def _leftover_re(name: str) -> re.Pattern:
    # What mkdtemp makes from the prefixes write_artifact and _swap use (and earlier versions used: no pid), and not
    # another output's: a leftover of output "x.tmp-1" is ".x.tmp-1.tmp-...", with a dot this excludes.
    return re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[A-Za-z0-9_-]+")


def recover_output(out_dir: Path) -> list[str]:
    """Tidy what killed compiles to ``out_dir`` left beside it: put back an old artifact that a kill between the two
    renames of the fallback swap left under ``.NAME.old-*`` with nothing at ``out_dir``, and delete every other
    abandoned ``.NAME.tmp-*`` / ``.NAME.old-*`` directory. A directory whose owner is alive (a concurrent compile
    holds its lock) is left alone. Returns what was done, for messages and tests."""
    out_dir = Path(out_dir)
    parent, pattern = out_dir.parent, _leftover_re(out_dir.name)
    done: list[str] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return done
    # old- first: restoring the previous artifact comes before deleting anything
    for p in sorted((e for e in entries if pattern.fullmatch(e.name)), key=lambda e: ".old-" not in e.name):
        if p.is_symlink() or not p.is_dir():
            continue
        lock = _claim(p)
        if lock is None:
            continue
        try:
            if ".old-" in p.name and not out_dir.exists() and (p / "manifest.json").is_file():
                os.rename(p, out_dir)
                done.append(f"restored {out_dir.name} from {p.name}")
            else:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
        finally:
            _unlock(lock)
    return done


def _swap(new: Path, out: Path) -> None:
    """Put directory ``new`` at ``out`` and the old ``out`` at ``new``."""
    if _exchange(new, out):
        return
    # Two renames. The old directory is locked before it moves, so a concurrent `recover_output` cannot take it for
    # a killed compile's and put it back between them.
    lock = _lock(out, wait=True)
    try:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
        os.rename(out, old)  # onto the empty directory mkdtemp made: a name nobody else uses
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old, out)
            raise
        os.rename(old, new)  # for the caller's clean-up
    finally:
        _unlock(lock)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where the C library, the
    kernel or the file system cannot, and the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _lock(path: Path, wait: bool):
    """Hold an exclusive flock on directory ``path`` (released by the system when this process dies); None where the
    system or file system has no locks (leftovers are then told apart by age)."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _claim(path: Path):
    """The lock of a leftover directory whose owner is gone (a handle to release with `_unlock`, or True where there
    are no locks and it is old enough); None while its owner may be alive."""

    def old_enough():
        try:
            return True if time.time() - path.stat().st_mtime > STALE_AFTER_S else None
        except OSError:
            return None

    try:
        import fcntl
    except ImportError:
        return old_enough()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone already: another compile tidied it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        return None if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else old_enough()
    return fd


def _unlock(lock) -> None:
    if isinstance(lock, int) and not isinstance(lock, bool):
        os.close(lock)  # closing the descriptor drops its flock


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync directories; the rename's order is then all there is
        pass
    finally:
        os.close(fd)


def write_luts(path: Path, names: list[str]) -> dict:
    """Write the lookup tables ``names`` (``sdcompile/kernels/luts.py``) back to back as little-endian uint32 words,
    in sorted order; return the manifest's ``luts`` record: {"file", "tables": {name: {"offset": bytes, "words"}}}.

    A separate raw file, not tensors in the weights GGUF: the tables are not model weights (tools reading the
    weights file see only the model), they are tiny, and the runtime reads them with one numpy call.
    """
    from sdcompile.kernels.luts import table_words

    tables, chunks, offset = {}, [], 0
    for name in sorted(set(names)):
        words = np.ascontiguousarray(table_words(name), dtype="<u4")
        tables[name] = {"offset": offset, "words": int(words.size)}
        chunks.append(words.tobytes())
        offset += words.nbytes
    Path(path).write_bytes(b"".join(chunks))
    return {"file": Path(path).name, "tables": tables}
