"""CPU executor: calls the kernels of ``kernels_cpu.so`` through TVM's runtime library (not its compiler)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError, LaunchError
from runtime.executors.common import check_args, kernel_table, lookup

ALIGN = 64  # TVM kernels assume 64-byte aligned tensors (and vector loads are happier)


def _import_tvm():
    """Import TVM, as its runtime library alone when this process has not loaded the compiler.

    The runtime-only library (``TVM_USE_RUNTIME_LIB=1``) loads in half the time and a fraction of the memory and
    still loads exported libraries and runs parallel kernels. But ``import tvm`` happens once per process: a
    process that runs an artifact first and compiles afterwards must import ``sdcompile`` (or ``tvm``) before
    creating this executor, which the check below then honours.
    """
    if "tvm" in sys.modules or "sdcompile" in sys.modules:
        import tvm

        return tvm
    previous = os.environ.get("TVM_USE_RUNTIME_LIB")
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    try:
        import tvm
    finally:  # do not leak the setting into subprocesses
        if previous is None:
            del os.environ["TVM_USE_RUNTIME_LIB"]
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = previous
    return tvm


def cpuinfo(field: str) -> str | None:
    """The value of ``field`` ("flags", "model name", "vendor_id") for the first CPU in /proc/cpuinfo (Linux), or
    None where it cannot say."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags as Linux names them, or None where /proc/cpuinfo cannot say."""
    flags = cpuinfo("flags")
    return None if flags is None else set(flags.split())


def check_cpu(cpu: dict) -> None:
    """Refuse, naming them, an artifact whose CPU code needs instructions this CPU lacks (the manifest's
    ``kernels.cpu.requires``): LLVM compiled it for the compiling machine's CPU, and running it here would stop
    with an illegal instruction part-way through."""
    need = cpu.get("requires", []) if isinstance(cpu, dict) else None
    if not isinstance(need, list) or not all(isinstance(f, str) for f in need):
        raise ArtifactError("the manifest's kernels.cpu.requires is not a list of CPU flag names; recompile the model")
    have = cpu_flags()
    if have is None:
        return
    missing = [f for f in need if f not in have]
    if missing:
        raise ArtifactError(
            f"this artifact's CPU code was compiled for a CPU with {', '.join(missing)} "
            f"(LLVM CPU {cpu.get('mcpu', '?')}); this CPU lacks them: compile the model on this machine (or one "
            "like it) and run that artifact"
        )


def set_num_threads(tvm, n: int | None) -> int:
    """Size TVM's thread pool explicitly: its default on a 2-core machine is 1 thread.

    Mode -3 (each worker may run on any of the given cores) keeps the process's CPU affinity intact; the default
    mode pins the calling thread to one core, which would also confine every thread numpy starts afterwards.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = max(1, min(int(n or len(cpus)), len(cpus)))
    tvm.get_global_func("runtime.config_threadpool")(-3, n, [str(c) for c in cpus])
    return int(tvm.runtime.num_threads())


class Buffer:
    """A 64-byte aligned host allocation; views handed to kernels are cached per (shape, dtype)."""

    __slots__ = ("nbytes", "array", "_tensors")

    def __init__(self, nbytes: int):
        raw = np.zeros(nbytes + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        self.nbytes = int(nbytes)
        self.array = raw[start : start + nbytes]
        self._tensors: dict = {}

    def view(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return self.array[:n].view(dtype).reshape(shape)

    def tensor(self, tvm, shape: tuple[int, ...], dtype: str):
        key = (shape, dtype)
        t = self._tensors.get(key)
        if t is None:
            # Kernels hold bf16 activations as their bits (uint16 buffers): TVM's own bf16 lowering is unreliable.
            t = self._tensors[key] = tvm.runtime.from_dlpack(
                self.view(shape, "uint16" if dtype == "bfloat16" else dtype)
            )
        return t


class Executor:
    backend = "cpu"

    def __init__(self, artifact_dir: Path, kernels: dict, num_threads: int | None = None):
        self._tvm = _import_tvm()
        self.artifact_dir = Path(artifact_dir)
        check_cpu(kernels.get("cpu", {}) if isinstance(kernels, dict) else {})
        self.kernels = kernel_table(kernels)
        self.num_threads = set_num_threads(self._tvm, num_threads)
        modules: dict[str, object] = {}
        self._funcs: dict[str, object] = {}
        for name, info in sorted(self.kernels.items()):
            (entry,) = info["launch"]  # one library call per kernel on the CPU
            rel = entry["file"]
            if rel not in modules:
                path = self.artifact_dir / rel
                if not path.is_file():
                    raise ArtifactError(f"kernel library {path} is missing; rebuild the artifact for the cpu target")
                modules[rel] = self._tvm.runtime.load_module(str(_private_copy(path)))
            try:
                self._funcs[name] = modules[rel].get_function(entry["entry"])
            except AttributeError:
                raise ArtifactError(
                    f"{rel} has no kernel {entry['entry']!r}; the library does not match the manifest"
                ) from None

    def device_info(self) -> dict:
        import platform

        name = _cpu_model() or platform.processor() or platform.machine()
        info = {"backend": "cpu", "name": name, "adapter": name, "type": "CPU", "threads": self.num_threads}
        try:
            info["memory_bytes"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not every platform reports it
            pass
        return info

    def alloc(self, nbytes: int) -> Buffer:
        return Buffer(nbytes)

    def adopt(self, array: np.ndarray) -> Buffer:
        """A buffer over ``array``'s own memory when kernels can read it there (64-byte aligned, contiguous): the
        weights file mapped copy-on-write, so weights are in memory once, not once mapped and once copied."""
        a = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if a.ctypes.data % ALIGN or not a.flags.writeable:
            buf = self.alloc(a.size)
            self.upload(buf, a)
            return buf
        v = Buffer.__new__(Buffer)
        v.nbytes, v.array, v._tensors = int(a.size), a, {}
        return v

    def view(self, buf: Buffer, offset: int, nbytes: int) -> Buffer:
        """Bytes [offset, offset + nbytes) of ``buf`` as a buffer of their own (a slice the memory plan aliased)."""
        v = Buffer.__new__(Buffer)
        v.nbytes, v.array, v._tensors = int(nbytes), buf.array[offset : offset + nbytes], {}
        return v

    def free(self, buf: Buffer) -> None:
        """Host memory goes back when the last reference to the buffer does."""
        buf.array = np.zeros(0, np.uint8)
        buf._tensors.clear()

    def upload(self, buf: Buffer, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        buf.array[: data.size] = data

    def download(self, buf: Buffer, shape, dtype) -> np.ndarray:
        return buf.view(tuple(shape), dtype).copy()

    def launch(self, kernel_name: str, args: list[tuple[Buffer, tuple[int, ...], str]]) -> None:
        self.bind(kernel_name, args)()

    def bind(self, kernel_name: str, args: list[tuple[Buffer, tuple[int, ...], str]]):
        """The launch of ``kernel_name`` on ``args`` as a call without arguments, checked once: a model calls the
        same steps on the same buffers every time, and the checks and argument lookups cost ~20 us a step in Python
        (2.3 ms of the SD1.5 text encoder's 146)."""
        info = lookup(self.kernels, kernel_name)
        layouts = check_args(kernel_name, info, args)
        func = self._funcs[kernel_name]
        tensors = [buf.tensor(self._tvm, *lay) for (buf, _, _), lay in zip(args, layouts)]

        def run() -> None:
            try:
                func(*tensors)
            except (ValueError, TypeError) as e:  # TVM's own argument checks: the manifest and the code disagree
                raise LaunchError(
                    f"kernel {kernel_name} refused its arguments ({str(e).splitlines()[0][:200]}): the manifest does "
                    "not match the compiled kernels; recompile the artifact"
                ) from None

        return run

    def synchronize(self) -> None:
        """CPU kernels run synchronously inside ``launch``."""


def _private_copy(path: Path) -> Path:
    """The kernel library under a name of its own content. The system loader hands back an already loaded library
    for a path it has seen, so an artifact recompiled in place and loaded again in the same process would run the
    old kernels; a file named for the content's hash is a new path whenever the content is new."""
    import hashlib
    import shutil
    import tempfile

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:32]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir()) / f"sdcompile-kernels-{uid}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.stat()
    if st.st_uid != uid or st.st_mode & 0o077:  # someone else's folder, or one others may write: not ours to trust
        folder = Path(tempfile.mkdtemp(prefix="sdcompile-kernels-"))
    target = folder / f"{digest}{path.suffix}"
    if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest()[:32] != digest:
        tmp = folder / f".{digest}.{os.getpid()}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)  # atomic: a concurrent loader sees the whole library or none
    return target


def _cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (Linux); platform.processor() is often just the architecture."""
    return cpuinfo("model name")
