"""Writing a command's outputs so that a failure leaves nothing half-written, and saying why a write failed.

A full disk shows up as ``ENOSPC`` from ``write``, or as a short write with no errno at all (numpy's ``tofile``, which
the gguf package writes tensors with: "N requested and M written"); both become one ``OutputError`` line."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdcompile.errors import OutputError

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_message(e: OSError, target: str | os.PathLike[str] | None = None) -> str:
    """One line for an OSError met while a command ran: what could not be written or read, why, what to do.
    ``target``: the command's output, named where the error itself names no file."""
    where = e.filename if e.filename is not None else target
    what = f"{where}: " if where is not None else ""
    short = e.errno is None and "requested and" in str(e) and "written" in str(e)
    if e.errno in FULL or short:
        return f"{what}no space left on the device ({e.strerror or e}); free some space or write the output elsewhere"
    if e.errno in DENIED:
        return f"{what}not allowed to write here ({e.strerror}); choose a place you can write to"
    return f"{what}{e.strerror or e}"


@contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (a file, or a directory); once the body returns it replaces
    ``path`` (a directory: the old one is removed after the swap), and if the body raises it is removed, so a full
    disk or an interrupt leaves the old output as it was and no partial one. An OSError becomes an ``OutputError``
    naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise OutputError(os_error_message(e, path)) from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()
