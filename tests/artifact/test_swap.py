"""Replacing an artifact: the output path holds the old or the new artifact whatever instant a compile is killed at,
and the next compile tidies what a killed one left (restoring the old artifact where a kill fell between the two
renames of the fallback swap), never a concurrent compile's directory.

Kills are simulated in a subprocess with ``os._exit`` at each step of the swap: like SIGKILL, it runs no
``finally``, no ``except`` and no clean-up. One test kills a real compile with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import runtime
from runtime.manifest import verify_manifest
from runtime.model import read_manifest
from sdcompile.codegen import artifact
from sdcompile.codegen.artifact import recover_output, write_artifact
from sdcompile.compiler import compile_model
from sdcompile.passes.context import CompileOptions

ROOT = Path(__file__).resolve().parents[2]

# Writes an artifact whose file "payload" says which version it is, dying (os._exit: no clean-up) at step `kill`.
# fallback=1 makes the atomic exchange unavailable, so the swap takes its two renames.
_KILLED_WRITE = r"""
import os, sys
from pathlib import Path
from sdcompile.codegen import artifact

out, version, kill, fallback = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"

def die():
    os._exit(137)

def fill(tmp):
    (tmp / "payload").write_text(version)
    if kill == "fill":
        die()

real_exchange = artifact._exchange
def exchange(a, b):
    if kill == "before-swap":
        die()
    if fallback:
        return False
    done = real_exchange(a, b)
    if not done:
        sys.exit(3)  # this file system cannot exchange: the test is skipped
    if kill == "after-swap":
        die()
    return done
artifact._exchange = exchange

real_rename = os.rename
def rename(src, dst):
    if kill == "between-renames" and Path(dst) == out:  # the old artifact is already renamed away
        die()
    real_rename(src, dst)
    if kill == "after-swap" and Path(dst) == out:
        die()
os.rename = rename

artifact.write_artifact(out, {"format": "sdcompile-artifact"}, fill)
"""


def _write(out: Path, version: str, kill: str = "", fallback: bool = False) -> int:
    r = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITE, str(out), version, kill, "1" if fallback else "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode == 3:
        pytest.skip("this file system has no atomic exchange of directories")
    assert r.returncode in (0, 137), r.stderr
    return r.returncode


def _payload(out: Path) -> str | None:
    try:
        return (out / "payload").read_text()
    except FileNotFoundError:
        return None


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# (kill point, fallback swap?, what the path holds right after the kill)
KILLS = [
    ("fill", False, "old"),
    ("before-swap", False, "old"),
    ("after-swap", False, "new"),
    ("fill", True, "old"),
    ("between-renames", True, None),  # the fallback's one gap: recovered below
    ("after-swap", True, "new"),
]


@pytest.mark.parametrize(
    "kill,fallback,right_after", KILLS, ids=[f"{k}-{'renames' if f else 'exchange'}" for k, f, _ in KILLS]
)
def test_kill_at_each_step_leaves_old_or_new(tmp_path, kill, fallback, right_after):
    out = tmp_path / "art"
    assert _write(out, "old") == 0 and _payload(out) == "old"
    assert _write(out, "new", kill=kill, fallback=fallback) == 137
    assert _payload(out) == right_after
    assert _leftovers(out)  # the killed process could not tidy up
    # The next compile to the path puts back what a kill between the renames left aside and removes the rest.
    recover_output(out)
    assert _payload(out) == (right_after or "old")
    assert _leftovers(out) == []
    assert _write(out, "newer") == 0 and _payload(out) == "newer" and _leftovers(out) == []


def test_path_never_empty_while_artifacts_are_swapped(tmp_path):
    """A reader polling the path while it is replaced again and again always finds a whole artifact."""
    out = tmp_path / "art"
    write_artifact(out, {"format": "sdcompile-artifact"}, lambda d: (d / "payload").write_text("0"))
    if not artifact._exchange(out, out):  # exchanging a path with itself is a no-op where exchange exists
        pytest.skip("this file system has no atomic exchange of directories")
    seen: set = set()
    stop = threading.Event()

    def read():
        while not stop.is_set():
            seen.add(_payload(out))

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(1, 40):
            write_artifact(out, {"format": "sdcompile-artifact"}, lambda d, i=i: (d / "payload").write_text(str(i)))
    finally:
        stop.set()
        t.join()
    assert None not in seen and len(seen) > 1
    assert _leftovers(out) == []


_HOLD_LOCK = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_tidy_spares_a_concurrent_compile(tmp_path):
    pytest.importorskip("fcntl")
    out = tmp_path / "art"
    live, dead, old_style = (tmp_path / n for n in (".art.tmp-1-live", ".art.tmp-2-dead", ".art.tmp-abcd1234"))
    others = [tmp_path / ".art.tmp-1.tmp-3-x", tmp_path / ".other.tmp-4-y", tmp_path / "art.tmp-5-z"]
    for d in (live, dead, old_style, *others):
        d.mkdir()
        (d / "f").write_text("x")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        recover_output(out)
        assert live.exists()  # its owner is alive: a compile in progress
        assert not dead.exists() and not old_style.exists()
        assert all(d.exists() for d in others)  # another output's, or not a leftover at all
    finally:
        holder.kill()
        holder.wait()
    recover_output(out)
    assert not live.exists()


def test_killed_compile_tidied_by_the_next(tiny_ldm_safetensors, tmp_path):
    out = tmp_path / "clip"
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu"))
    before = (out / "manifest.json").read_bytes()
    code = "import sys; from sdcompile.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.Popen(
        [sys.executable, "-c", code, "compile", str(tiny_ldm_safetensors), "-o", str(out), "--type", "q8_0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _leftovers(out) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)  # while it writes kernels and weights into its temporary directory
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert _leftovers(out), "the compile was killed before it wrote anything"
    assert (out / "manifest.json").read_bytes() == before
    # the old artifact, whole (checked without loading: one process that loads a kernel library, then another at
    # the same path, gets the first again from the dynamic loader)
    verify_manifest(out, read_manifest(out))
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu", type="q8_0"))
    assert _leftovers(out) == []
    assert json.loads((out / "manifest.json").read_text())["options"]["type"] == "q8_0"
    runtime.load(out)
