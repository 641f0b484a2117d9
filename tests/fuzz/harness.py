"""Runs mutants (or corpus files) through sdcompile's readers in worker processes and classifies each outcome.

A file must either load (every tensor's `info`, `raw` and `array` consistent with each other) or raise an
`SdcompileError` whose message names the file. Anything else is an escape: another exception, an error message
that does not say which file, a `MemoryError` (even one converted into a clean error: a reader asked for more memory
than a small file can justify), a worker that dies (a crash) or stops answering (a hang).

Workers run with their address space capped a little above what they use after start-up (RLIMIT_AS), so a reader
that believes a header and allocates what it claims fails at once with a MemoryError instead of taking the machine's
memory, and the parent kills any worker that spends more than `timeout` seconds on one file.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tests.fuzz.mutate import mutant
from tests.fuzz.seeds import EXT, prepare_dir

OUTCOMES = ("loaded", "clean", "escape", "hang", "crash")
START_TIMEOUT = 120.0  # seconds a worker may take to import numpy, onnx and the readers on a busy machine
DEFAULT_MEMORY_MB = 512  # what a worker may allocate beyond its start-up size; tiny files need a few MB

# ("mutant", format, campaign seed, index), ("file", format, path), or ("probe", format, misbehaviour) for the
# harness's own tests
Task = tuple


@dataclass
class Result:
    task: Task
    outcome: str  # one of OUTCOMES
    detail: str  # the error message, or what escaped
    seconds: float

    @property
    def fmt(self) -> str:
        return self.task[1]


def _memory_error_behind(e: BaseException) -> bool:
    seen = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        if isinstance(x, MemoryError):
            return True
        seen.add(id(x))
        x = x.__cause__ or x.__context__
    return False


def check(path: Path) -> tuple[str, str]:
    """("loaded", "") | ("clean", message) | ("escape", what went wrong): open `path` and read every tensor."""
    import numpy as np

    from sdcompile.errors import SdcompileError
    from sdcompile.formats import open_store

    try:
        with open_store(path) as st:
            for name in st.names():
                if not isinstance(name, str):
                    return "escape", f"inconsistent: a tensor name is a {type(name).__name__}: {name[:60]!r}"
                info = st.info(name)
                raw = st.raw(name)
                arr = st.array(name)
                if raw.dtype != np.uint8 or raw.size != info.nbytes:
                    return "escape", f"inconsistent: {name!r} raw() has {raw.size} bytes, info says {info.nbytes}"
                if tuple(arr.shape) != tuple(info.shape):
                    return "escape", f"inconsistent: {name!r} array() has shape {arr.shape}, info says {info.shape}"
    except SdcompileError as e:
        msg = str(e)
        if _memory_error_behind(e):
            return "escape", f"MemoryError behind {type(e).__name__}: {msg[:300]}"
        if path.name not in msg:
            return "escape", f"{type(e).__name__} without the file name: {msg[:300]}"
        return "clean", msg[:300]
    except Exception as e:  # noqa: BLE001 - every other exception is exactly what the fuzzer looks for
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "escape", f"{type(e).__name__}: {str(e)[:200]} ({Path(where.filename).name}:{where.lineno})"
    return "loaded", ""


def _limit_memory(mb: int) -> None:
    import resource

    try:
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc: no cap (the parent's timeout still guards against hangs)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _materialize(task: Task, seeds: dict[str, list[bytes]], folder: Path) -> Path:
    """Write the task's file into `folder` (replacing the previous one, so maps of it stay valid) and return it."""
    kind, fmt = task[0], task[1]
    if kind == "mutant":
        data = mutant(fmt, seeds[fmt], task[2], task[3]).data
        name = "mutant" + EXT[fmt]
    else:
        src = Path(task[2])
        data = src.read_bytes()
        name = src.name
    path = folder / name
    tmp = folder / (".tmp-" + name)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _worker(conn: Connection, tasks: list[Task], seeds: dict[str, list[bytes]], folder: str, memory_mb: int) -> None:
    # Import everything a reader may import before capping memory: loading a library later would count against
    # the cap and look like an allocation by the reader.
    import bz2  # noqa: F401
    import lzma  # noqa: F401

    import onnx  # noqa: F401

    import sdcompile.formats.ckpt  # noqa: F401
    import sdcompile.formats.gguf  # noqa: F401
    import sdcompile.formats.onnx  # noqa: F401
    import sdcompile.formats.safetensors  # noqa: F401
    import sdcompile.quant.reference  # noqa: F401

    d = Path(folder)
    prepare_dir(d)
    _limit_memory(memory_mb)
    conn.send("ready")
    for task in tasks:
        t0 = time.perf_counter()
        if task[0] == "probe":
            outcome, detail = _probe(task[2])
        else:
            outcome, detail = check(_materialize(task, seeds, d))
        conn.send((outcome, detail, time.perf_counter() - t0))
    conn.send(None)


def _probe(what: str) -> tuple[str, str]:
    """Misbehaviour on demand, so the harness's tests can show that each kind is caught."""
    if what == "hang":
        time.sleep(3600)
    elif what == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif what == "alloc":  # what a reader believing a header would do; the memory cap must stop it
        try:
            big = bytearray(4 << 30)
        except MemoryError:
            return "escape", "MemoryError: 4 GiB refused by the memory cap"
        del big
    return "loaded", ""


class _Running:
    def __init__(self, ctx: Any, tasks: list[Task], seeds: dict, folder: Path, memory_mb: int) -> None:
        self.tasks, self.done = tasks, 0
        parent, child = ctx.Pipe(duplex=False)
        self.conn = parent
        self.proc = ctx.Process(target=_worker, args=(child, tasks, seeds, str(folder), memory_mb), daemon=True)
        self.proc.start()
        child.close()
        self.last = time.monotonic()
        self.ready = False  # until the worker has imported everything; a death before is the harness's problem

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()


def run_tasks(
    tasks: Sequence[Task],
    seeds: dict[str, list[bytes]],
    workdir: Path,
    jobs: int = 1,
    timeout: float = 20.0,
    memory_mb: int = DEFAULT_MEMORY_MB,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run every task in `jobs` worker processes; results come back in task order."""
    ctx = mp.get_context("spawn")
    tasks = list(tasks)
    jobs = max(1, min(jobs, len(tasks)))
    bounds = [len(tasks) * k // jobs for k in range(jobs + 1)]
    results: dict[int, Result] = {}
    running: dict[int, tuple[_Running, int]] = {}  # slot -> (worker, index of its first task)
    folders = [workdir / f"w{k}" / "m" for k in range(jobs)]
    for k in range(jobs):
        if bounds[k] < bounds[k + 1]:
            running[k] = (_Running(ctx, tasks[bounds[k] : bounds[k + 1]], seeds, folders[k], memory_mb), bounds[k])

    def record(i: int, r: Result) -> None:
        results[i] = r
        if on_result:
            on_result(r)

    def restart(k: int, w: _Running, first: int, outcome: str, detail: str) -> None:
        i = first + w.done
        record(i, Result(tasks[i], outcome, detail, time.monotonic() - w.last))
        w.stop()
        rest = w.tasks[w.done + 1 :]
        # a fresh folder: the dead worker may have left a half-written file or a stale map behind
        shutil.rmtree(folders[k], ignore_errors=True)
        if rest:
            running[k] = (_Running(ctx, rest, seeds, folders[k], memory_mb), i + 1)
        else:
            del running[k]

    while running:
        by_conn = {w.conn: k for k, (w, _) in running.items()}
        for conn in wait(list(by_conn), timeout=1.0):
            k = by_conn[conn]
            w, first = running[k]
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                w.proc.join(5)
                if not w.ready:
                    for v, _ in running.values():
                        v.stop()
                    raise RuntimeError(f"a fuzz worker died while starting (exit code {w.proc.exitcode})") from None
                restart(k, w, first, "crash", f"worker died (exit code {w.proc.exitcode})")
                continue
            if msg == "ready":
                w.ready, w.last = True, time.monotonic()
                continue
            if msg is None:
                w.stop()
                del running[k]
                continue
            outcome, detail, secs = msg
            record(first + w.done, Result(w.tasks[w.done], outcome, detail, secs))
            w.done += 1
            w.last = time.monotonic()
        now = time.monotonic()
        for k, (w, first) in list(running.items()):
            if now - w.last > (timeout if w.ready else max(timeout, START_TIMEOUT)):
                restart(k, w, first, "hang", f"no answer within {timeout:.0f} s")
    return [results[i] for i in sorted(results)]


def mutant_tasks(fmt: str, seed: int, count: int, start: int = 0) -> list[Task]:
    return [("mutant", fmt, seed, i) for i in range(start, start + count)]


def counts(results: Sequence[Result]) -> dict[str, dict[str, int]]:
    """{format: {outcome: n, "mutants": n}}"""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        c = out.setdefault(r.fmt, {"mutants": 0, **{o: 0 for o in OUTCOMES}})
        c["mutants"] += 1
        c[r.outcome] += 1
    return out


def ensure_importable() -> None:
    """Workers are spawned: they find `tests` and `sdcompile` through the parent's sys.path."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
