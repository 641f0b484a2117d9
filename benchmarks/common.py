"""Helpers shared by the benchmarks: a timing loop, machine information, atomic file writes and markdown tables.

Only the standard library and numpy, so any benchmark can import this before it imports the things it measures.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

# Distribution names (as pip knows them) whose versions every result file records.
DEFAULT_PACKAGES = (
    "numpy",
    "torch",
    "onnxruntime",
    "onnx",
    "transformers",
    "apache-tvm",
    "safetensors",
    "gguf",
    "sdcompile",
)

# CPU flags that decide which kernels a CPU library can use; recorded so results from different machines can be told
# apart at a glance.
_INTERESTING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@dataclass(frozen=True)
class Timing:
    """Wall-clock times of the timed runs, in milliseconds (warmup runs excluded)."""

    min_ms: float
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs_ms: list[float]

    def summary(self) -> dict[str, float]:
        return {"min_ms": self.min_ms, "median_ms": self.median_ms, "p90_ms": self.p90_ms, "mean_ms": self.mean_ms}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_fn(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 20) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeat` times timed, one call per measurement.

    The garbage collector is paused during the timed runs (as `timeit` does) so a collection triggered by one
    implementation's garbage does not land in another's numbers. p90 interpolates linearly between order statistics.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    for _ in range(max(0, warmup)):
        fn()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    runs: list[float] = []
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            fn()
            runs.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if was_enabled:
            gc.enable()
    a = np.asarray(runs)
    return Timing(
        min_ms=float(a.min()),
        median_ms=float(np.median(a)),
        p90_ms=float(np.percentile(a, 90)),
        mean_ms=float(a.mean()),
        runs_ms=[round(r, 4) for r in runs],
    )


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds` — for one-off durations (compile, export, load)."""

    def __enter__(self) -> Stopwatch:
        self.seconds = float("nan")
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpu_info() -> dict[str, Any]:
    """CPU model, logical/physical/usable core counts, container CPU quota and the SIMD flags that matter here."""
    text = _read("/proc/cpuinfo") or ""
    model = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    phys = core = None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and model is None:
            model = val
        elif key == "flags" and not flags:
            flags = set(val.split())
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
        elif not key and phys is not None and core is not None:  # blank line ends a processor block
            cores.add((phys, core))
            phys = core = None
    if phys is not None and core is not None:
        cores.add((phys, core))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    quota = None
    cpu_max = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
    if cpu_max:
        q, _, p = cpu_max.strip().partition(" ")
        if q != "max" and p:
            quota = round(int(q) / int(p), 2)
    return {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cores": usable,
        "cgroup_cpu_quota": quota,
        "flags": [f for f in _INTERESTING_FLAGS if f in flags],
    }


def memory_total_bytes() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name, without importing the packages (None: not installed)."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: a busy machine during a run makes its numbers suspect."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def pressure() -> dict[str, float] | None:
    """Linux pressure-stall information: % of the last 10 s / 60 s some task waited for CPU, memory or I/O.

    Unlike the load average it is not inflated by the benchmark's own threads before they start, and memory pressure
    shows page-cache thrashing that makes one run out of twenty take seconds.
    """
    out: dict[str, float] = {}
    for res in ("cpu", "memory", "io"):
        for line in (_read(f"/proc/pressure/{res}") or "").splitlines():
            if line.startswith("some "):
                fields = dict(kv.split("=") for kv in line.split()[1:])
                out[f"{res}_some_avg10"] = float(fields["avg10"])
                out[f"{res}_some_avg60"] = float(fields["avg60"])
    return out or None


def contention(stats: dict[str, Any] | None, load: list[float] | None, cores: int | None) -> list[str]:
    """Reasons to distrust numbers taken under `stats` (from `pressure()`) and `load` (from `load_average()`)."""
    why = []
    if load and cores and load[0] > 0.5 * cores:
        why.append(f"1-minute load average {load[0]} on {cores} cores")
    for key, limit in (("cpu_some_avg10", 10.0), ("memory_some_avg10", 1.0), ("io_some_avg10", 10.0)):
        if stats and stats.get(key, 0.0) > limit:
            why.append(f"{key.split('_')[0]} pressure {stats[key]}% (last 10 s)")
    return why


def machine_info(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    return {
        "cpu": cpu_info(),
        "memory_bytes": memory_total_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": package_versions(packages),
        "load_average_start": load_average(),
        "pressure_start": pressure(),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp"):
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure it is removed.

    Readers never see a half-written file, and an interrupted run leaves the previous file (or none) in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the final file should look like any other
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _finite(o: Any) -> Any:
    """NaN/inf become null: strict JSON readers reject them."""
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def fmt(x: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table cell; missing values show as an em dash."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}{suffix}"


def fmt_sci(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.2e}"


def ratio(x: float | None, base: float | None) -> float | None:
    if x is None or base is None or not base or not np.isfinite(x) or not np.isfinite(base):
        return None
    return x / base


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table. `align` is one letter per column: l, r or c (default: first column left, rest right)."""
    headers = [str(h) for h in headers]
    body = [["" if c is None else str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in rows]
    align = align or ("l" + "r" * (len(headers) - 1))
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    widths = [max(w, 3) for w in widths]

    def line(cells: Sequence[str]) -> str:
        out = []
        for c, w, a in zip(cells, widths, align):
            out.append(c.ljust(w) if a == "l" else c.rjust(w) if a == "r" else c.center(w))
        return "| " + " | ".join(out) + " |"

    rule = {
        "l": lambda w: ":" + "-" * (w - 1),
        "r": lambda w: "-" * (w - 1) + ":",
        "c": lambda w: ":" + "-" * (w - 2) + ":",
    }
    sep = "| " + " | ".join(rule[a](w) for a, w in zip(align, widths)) + " |"
    return "\n".join([line(headers), sep] + [line(r) for r in body])


def cache_sizes() -> dict[str, int]:
    """CPU cache sizes in bytes by level as Linux reports them for CPU 0 ({"L1d": ..., "L2": ..., "L3": ...}).

    Inside a VM this is what the hypervisor reports, which may be the whole host socket's last-level cache: a
    benchmark that wants cold caches should size its working set from it, not from a guess.
    """
    out: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")) if base.is_dir() else []:
        level, kind, size = (_read(str(d / f)) for f in ("level", "type", "size"))
        if not (level and kind and size):
            continue
        kind, size = kind.strip(), size.strip().upper()
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        try:
            nbytes = int(size.rstrip("KMG")) * mult
        except ValueError:
            continue
        out[f"L{level.strip()}{'d' if kind == 'Data' else ''}"] = nbytes
    return out


def last_level_cache_bytes() -> int | None:
    sizes = cache_sizes()
    return max(sizes.values()) if sizes else None


def cpu_stall_us() -> int | None:
    """Cumulative µs in which some task waited for a CPU (Linux PSI ``/proc/pressure/cpu``, "some total=").

    The difference over an interval, divided by its length, is the share of that interval the machine was short of
    CPUs: unlike the 10-second average it covers exactly the timed runs.
    """
    for line in (_read("/proc/pressure/cpu") or "").splitlines():
        if line.startswith("some "):
            for kv in line.split()[1:]:
                key, _, val = kv.partition("=")
                if key == "total":
                    return int(val)
    return None


class StallMeter:
    """``with StallMeter() as m: ...; m.pct``: % of the block's wall time some task on the machine waited for a CPU
    (Linux PSI); None where the kernel does not report it."""

    def __enter__(self) -> StallMeter:
        self.pct: float | None = None
        self._s0, self._t0 = cpu_stall_us(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        s1, t1 = cpu_stall_us(), time.monotonic()
        if self._s0 is not None and s1 is not None and t1 > self._t0:
            self.pct = round(100 * (s1 - self._s0) / 1e6 / (t1 - self._t0), 2)


def wait_quiet(
    seconds: float, *, stall_pct: float = 5.0, use_load: bool = True, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Wait until the machine looks idle or ``seconds`` pass; say how it went.

    Idle: less than ``stall_pct`` % CPU stall over the last second (PSI) and, with ``use_load``, no contention by
    the 10-second pressure and the load average (which also counts this process's recent threads).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    t0 = time.monotonic()
    last_log = -1e9
    while True:
        with StallMeter() as now:
            time.sleep(1.0)
        why = contention(pressure(), load_average(), cores) if use_load else []
        if now.pct is not None and now.pct >= stall_pct:
            why.append(f"CPU stall {now.pct}% over the last second")
        waited = time.monotonic() - t0
        if not why or waited >= seconds:
            return {"waited_s": round(waited, 1), "quiet": not why, "why_not": why}
        if log is not None and waited - last_log >= 15:
            log(f"waiting for a quiet machine ({'; '.join(why)}; {waited:.0f}/{seconds:.0f} s)")
            last_log = waited
