"""A full disk (or a place that cannot be written) while a command writes its output: one `sdcompile: error:` line
that says so, exit status 2, no traceback, and no partial output left behind (an older output stays as it was).

The disk is made full by the writers themselves: ``ENOSPC`` from a write after part of the file went out, numpy's
short write without an errno (what the gguf package's ``tofile`` raises: "N requested and M written"), and the linker's
failure as TVM reports it."""

from __future__ import annotations

import errno

import pytest

from sdcompile import cli, errors
from sdcompile.codegen import tvm_layer
from sdcompile.output_files import os_error_message


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _full_after(nbytes: int):
    """A writer that writes nbytes of its output, then finds the disk full."""

    def write(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_example_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    from sdcompile import examples_sd

    out = tmp_path / "sd.safetensors"
    monkeypatch.setattr(examples_sd, "write_safetensors", _full_after(4096))
    assert cli.main(["example", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("sdcompile: error: ") and str(out) in err and "no space left on the device" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_example_on_a_full_disk_keeps_the_older_output(tmp_path, monkeypatch, capsys):
    from sdcompile import examples_sd

    out = tmp_path / "sd.safetensors"
    assert cli.main(["example", "-o", str(out)]) == 0
    before = out.read_bytes()
    monkeypatch.setattr(examples_sd, "write_safetensors", _full_after(100))
    assert cli.main(["example", "-o", str(out)]) == 2
    assert "no space left" in capsys.readouterr().err
    assert out.read_bytes() == before and _leftovers(tmp_path) == []


def test_compile_on_a_full_disk_says_so_and_leaves_no_artifact(tmp_path, monkeypatch, capsys):
    from sdcompile import compiler

    model = tmp_path / "clip.safetensors"
    assert cli.main(["example", "-o", str(model), "--model", "clip-tiny"]) == 0

    def short_write(path, tensors):  # numpy's tofile on a full disk: no errno
        path.write_bytes(b"GGUF")
        raise OSError("1581056 requested and 235264 written")

    monkeypatch.setattr(compiler, "write_weights_gguf", short_write)
    art = tmp_path / "art"
    assert cli.main(["compile", str(model), "-o", str(art), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sdcompile: error: compile: ") and str(art) in err and "no space left" in err
    assert not art.exists() and _leftovers(tmp_path) == []


class _Exe:
    def __init__(self, message: str):
        self.message = message

    def export_library(self, path: str) -> None:
        raise RuntimeError(self.message)


def test_the_linker_on_a_full_disk_and_failing_otherwise(tmp_path):
    lib = tmp_path / ".art.tmp-1-x" / "kernels_cpu.so"
    full = "Compilation error:\n/usr/bin/ld: final link failed: No space left on device\ncollect2: error: ld returned 1"
    with pytest.raises(errors.OutputError, match="no space left") as e:
        tvm_layer.export_library(_Exe(full + "\nCommand line: g++ -shared -o x"), lib)
    assert str(e.value).startswith(f"{tmp_path}: ")  # the folder the artifact goes to, not its hidden sibling
    other = "Compilation error:\n/usr/bin/ld: cannot find -lfoo\ncollect2: error: ld returned 1 exit status"
    with pytest.raises(errors.ToolchainError, match="cannot find -lfoo") as e:
        tvm_layer.export_library(_Exe(other + "\nCommand line: g++ -shared -o x"), lib)
    assert "Command line" not in str(e.value)
    with pytest.raises(RuntimeError, match="something else"):  # not the linker's: an internal error keeps its trace
        tvm_layer.export_library(_Exe("something else"), lib)


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/x/y"), "/x/y: no space left on the device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "out: no space left on the device"),
        (OSError("10 requested and 3 written"), "out: no space left on the device"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/f"), "/ro/f: not allowed to write here"),
        (OSError(errno.EIO, "Input/output error", "/x"), "/x: Input/output error"),
    ],
)
def test_os_error_messages(error, says):
    assert os_error_message(error, "out").startswith(says)
