"""ggml's own CPU matmul kernels, called through ctypes from the libraries llama-cpp-python bundles.

No llama.cpp model code is involved: a ggml context holds quantized weight tensors and an f32 activation tensor, one
``ggml_mul_mat`` graph per weight copy is built, and ``ggml_backend_graph_compute`` runs it on the CPU backend with a
persistent ggml threadpool (as llama-bench does; without one, ggml creates and joins its threads on every call).
ggml converts the f32 activations to the weight type's dot type (q8_0 / q8_K / f16 / ...) inside mul_mat, so that
conversion is part of every timed call, as it is in llama.cpp.

Weights go into one of two kinds of buffer:

- the plain CPU buffer type (``ggml_backend_cpu_buffer_type``): GGUF bytes as they are;
- an *extra* buffer type of the CPU device (``ggml_backend_dev_get_extra_bufts``, looked up with
  ``ggml_backend_reg_get_proc_address``): CPU_REPACK interleaves rows (q4_0 -> q4_0x8 ...) when the weights are set,
  AMX (only in AMX builds) converts them to its tile layout. Each handles only some types and shapes; which ones is
  asked from ggml itself: with the weight in an extra buffer, ``ggml_backend_dev_supports_op`` answers with that
  buffer type's own ``supports_op`` (ggml-cpu.cpp), and the repack buffer's ``init_tensor`` leaves
  ``tensor->extra`` NULL for a type it cannot repack (setting such a tensor would dereference NULL, so it is never
  done).

Only ``ggml.h`` / ``ggml-backend.h`` / ``ggml-alloc.h`` / ``ggml-cpu.h`` functions are used; ``struct ggml_tensor``
is mirrored to read ``extra`` and ``data``, and the mirror is checked against ggml on load (name and shape read back).

    from benchmarks.ggml_peer import Ggml
    g = Ggml.load()                       # finds site-packages/llama_cpp/lib
    w = g.weights("q4_0", n=4096, k=4096, copies=[bytes_0, bytes_1, ...])           # plain CPU buffer
    mm = w.matmul(batch=1); mm.set_x(x); mm.run(0); y = mm.y(0); mm.close(); w.close()
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_MAX_N_THREADS = 512
GGML_TYPE_F32 = 0
GGML_STATUS_SUCCESS = 0
GGML_BACKEND_DEVICE_TYPE_CPU = 0
GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_CONT = 5
LIBS = ("libggml-base.so", "libggml-cpu.so", "libggml.so")  # load order: each needs the ones before it


class GgmlError(RuntimeError):
    pass


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` from ggml.h (checked against the library in ``Ggml.load``)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class TypeTraitsCpu(ctypes.Structure):
    """``struct ggml_type_traits_cpu`` from ggml-cpu.h."""

    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


TP = ctypes.POINTER(GgmlTensor)
_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
P = ctypes.c_void_p

# name: (library index into LIBS, restype, argtypes); a missing optional symbol becomes None
_SIGNATURES: dict[str, tuple[int, object, list, bool]] = {
    "ggml_init": (0, P, [InitParams], True),
    "ggml_free": (0, None, [P], True),
    "ggml_tensor_overhead": (0, ctypes.c_size_t, [], True),
    "ggml_graph_overhead_custom": (0, ctypes.c_size_t, [ctypes.c_size_t, ctypes.c_bool], True),
    "ggml_new_tensor_2d": (0, TP, [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], True),
    "ggml_set_name": (0, TP, [TP, ctypes.c_char_p], True),
    "ggml_nbytes": (0, ctypes.c_size_t, [TP], True),
    "ggml_row_size": (0, ctypes.c_size_t, [ctypes.c_int, ctypes.c_int64], True),
    "ggml_type_name": (0, ctypes.c_char_p, [ctypes.c_int], True),
    "ggml_mul_mat": (0, TP, [P, TP, TP], True),
    "ggml_new_graph_custom": (0, P, [P, ctypes.c_size_t, ctypes.c_bool], True),
    "ggml_build_forward_expand": (0, None, [P, TP], True),
    "ggml_threadpool_params_init": (0, None, [ctypes.POINTER(ThreadpoolParams), ctypes.c_int], True),
    "ggml_backend_buft_name": (0, ctypes.c_char_p, [P], True),
    "ggml_backend_buffer_free": (0, None, [P], True),
    "ggml_backend_buffer_get_size": (0, ctypes.c_size_t, [P], True),
    "ggml_backend_alloc_ctx_tensors_from_buft": (0, P, [P, P], True),
    "ggml_backend_tensor_set": (0, None, [TP, P, ctypes.c_size_t, ctypes.c_size_t], True),
    "ggml_backend_tensor_get": (0, None, [TP, P, ctypes.c_size_t, ctypes.c_size_t], True),
    "ggml_backend_graph_compute": (0, ctypes.c_int, [P, P], True),
    "ggml_backend_free": (0, None, [P], True),
    "ggml_backend_dev_supports_op": (0, ctypes.c_bool, [P, TP], True),
    "ggml_backend_dev_name": (0, ctypes.c_char_p, [P], True),
    "ggml_backend_dev_description": (0, ctypes.c_char_p, [P], True),
    "ggml_backend_reg_dev_get": (0, P, [P, ctypes.c_size_t], True),
    "ggml_backend_reg_get_proc_address": (0, P, [P, ctypes.c_char_p], True),
    "ggml_backend_cpu_buffer_type": (0, P, [], True),
    "ggml_backend_cpu_init": (1, P, [], True),
    "ggml_backend_cpu_reg": (1, P, [], True),
    "ggml_backend_cpu_set_n_threads": (1, None, [P, ctypes.c_int], True),
    "ggml_backend_cpu_set_threadpool": (1, None, [P, P], True),
    "ggml_threadpool_new": (1, P, [ctypes.POINTER(ThreadpoolParams)], True),
    "ggml_threadpool_free": (1, None, [P], True),
    "ggml_log_set": (0, None, [ctypes.c_void_p, ctypes.c_void_p], False),
    "ggml_cpu_init": (1, None, [], False),
    "ggml_get_type_traits_cpu": (1, ctypes.POINTER(TypeTraitsCpu), [ctypes.c_int], False),
}
_CPU_FEATURES = (
    "avx",
    "avx2",
    "avx_vnni",
    "f16c",
    "fma",
    "avx512",
    "avx512_vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "amx_int8",
    "llamafile",
)


def find_lib_dir() -> Path | None:
    """``site-packages/llama_cpp/lib`` of the installed llama-cpp-python, without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "lib"
        if all((d / name).is_file() for name in LIBS):
            return d
    return None


def buft_impl_name(buft_name: str) -> str:
    """The benchmark's name for an extra buffer type: CPU_REPACK -> ggml-repack, AMX -> ggml-amx."""
    short = buft_name.lower().removeprefix("cpu_")
    return f"ggml-{short}"


class Ggml:
    """The loaded libraries, the CPU backend and its device; one per process."""

    def __init__(self, lib_dir: Path, libs: list[ctypes.CDLL]):
        self.lib_dir = lib_dir
        self._libs = libs
        self.f: dict[str, object] = {}
        for name, (idx, restype, argtypes, required) in _SIGNATURES.items():
            try:
                fn = getattr(libs[idx], name)
            except AttributeError:
                if required:
                    raise GgmlError(f"{LIBS[idx]} in {lib_dir} has no {name}: unsupported ggml version") from None
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            self.f[name] = fn
        self._quiet()
        if "ggml_cpu_init" in self.f:
            self.f["ggml_cpu_init"]()
        self.reg = self.f["ggml_backend_cpu_reg"]()
        self.dev = self.f["ggml_backend_reg_dev_get"](self.reg, 0)
        self.backend = self.f["ggml_backend_cpu_init"]()
        if not self.reg or not self.dev or not self.backend:
            raise GgmlError("ggml's CPU backend did not initialize")
        self.threadpool = None
        self.n_threads = None
        self._check_tensor_layout()

    def _quiet(self) -> None:
        """Drop ggml's debug and info messages (the AMX buffer logs every tensor it converts); keep warnings."""
        if "ggml_log_set" not in self.f:
            return
        last = [GGML_LOG_LEVEL_WARN]

        def cb(level: int, text: bytes, _user: object) -> None:
            if level != GGML_LOG_LEVEL_CONT:
                last[0] = level
            if last[0] >= GGML_LOG_LEVEL_WARN and text:
                sys.stderr.write(text.decode(errors="replace"))

        self._log_cb = _LOG_CALLBACK(cb)  # must outlive every ggml call
        self.f["ggml_log_set"](ctypes.cast(self._log_cb, ctypes.c_void_p), None)

    @classmethod
    def load(cls, lib_dir: str | os.PathLike[str] | None = None) -> Ggml:
        d = Path(lib_dir) if lib_dir else find_lib_dir()
        if d is None:
            raise GgmlError(
                "llama-cpp-python is not installed (no site-packages/llama_cpp/lib with the ggml libraries)"
            )
        libs = [ctypes.CDLL(str(d / name), mode=ctypes.RTLD_GLOBAL) for name in LIBS]
        return cls(d, libs)

    # --- facts -------------------------------------------------------------------------------------------------

    def cpu_features(self) -> dict[str, bool]:
        out = {}
        for feat in _CPU_FEATURES:
            fn = getattr(self._libs[1], f"ggml_cpu_has_{feat}", None)
            if fn is not None:
                fn.restype = ctypes.c_int
                fn.argtypes = []
                out[feat] = bool(fn())
        return out

    def extra_bufts(self) -> list[tuple[str, int]]:
        """(name, handle) of the CPU device's extra buffer types, in ggml's order."""
        addr = self.f["ggml_backend_reg_get_proc_address"](self.reg, b"ggml_backend_dev_get_extra_bufts")
        if not addr:
            return []
        get = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)
        arr = get(self.dev)
        out = []
        i = 0
        while arr and arr[i]:
            out.append((self.f["ggml_backend_buft_name"](arr[i]).decode(), arr[i]))
            i += 1
        return out

    def info(self) -> dict:
        return {
            "lib_dir": self.lib_dir.name,  # the name only: results must not carry machine paths
            "device": self.f["ggml_backend_dev_name"](self.dev).decode(),
            "device_description": self.f["ggml_backend_dev_description"](self.dev).decode(),
            "cpu_features": self.cpu_features(),
            "extra_buffer_types": [name for name, _ in self.extra_bufts()],
            "threadpool": None if self.n_threads is None else {"n_threads": self.n_threads, "poll": self._poll},
        }

    def type_name(self, ggml_type: int) -> str:
        return self.f["ggml_type_name"](ggml_type).decode()

    def vec_dot_type_name(self, ggml_type: int) -> str | None:
        """The type ggml converts the activations to for this weight type (q8_0, q8_K, f16, ...)."""
        fn = self.f.get("ggml_get_type_traits_cpu")
        if fn is None:
            return None
        traits = fn(ggml_type)
        return self.type_name(traits.contents.vec_dot_type) if traits else None

    def row_size(self, ggml_type: int, k: int) -> int:
        return int(self.f["ggml_row_size"](ggml_type, k))

    def _check_tensor_layout(self) -> None:
        ctx = self._ctx(4 * self.f["ggml_tensor_overhead"]())
        try:
            t = self.f["ggml_new_tensor_2d"](ctx, GGML_TYPE_F32, 37, 5)
            self.f["ggml_set_name"](t, b"layout-check")
            s = t.contents
            if s.type != GGML_TYPE_F32 or list(s.ne) != [37, 5, 1, 1] or s.nb[1] != 37 * 4 or s.name != b"layout-check":
                raise GgmlError("struct ggml_tensor in this ggml differs from the ctypes mirror in ggml_peer.py")
        finally:
            self.f["ggml_free"](ctx)

    def _ctx(self, mem: int) -> int:
        ctx = self.f["ggml_init"](InitParams(int(mem) + 4096, None, True))
        if not ctx:
            raise GgmlError("ggml_init failed")
        return ctx

    # --- threads -----------------------------------------------------------------------------------------------

    def set_threads(self, n: int, poll: int = 50) -> None:
        """A persistent threadpool of ``n`` threads for the CPU backend (ggml's default polling level)."""
        self.free_threadpool()
        p = ThreadpoolParams()
        self.f["ggml_threadpool_params_init"](ctypes.byref(p), int(n))
        p.poll = poll
        tp = self.f["ggml_threadpool_new"](ctypes.byref(p))
        if not tp:
            raise GgmlError("ggml_threadpool_new failed")
        self.threadpool, self.n_threads, self._poll = tp, int(n), poll
        self.f["ggml_backend_cpu_set_n_threads"](self.backend, int(n))
        self.f["ggml_backend_cpu_set_threadpool"](self.backend, tp)

    def free_threadpool(self) -> None:
        """Join the threadpool's threads (they poll for work for a while after each graph) before others run."""
        if self.threadpool:
            self.f["ggml_backend_cpu_set_threadpool"](self.backend, None)
            self.f["ggml_threadpool_free"](self.threadpool)
            self.threadpool = None

    def close(self) -> None:
        self.free_threadpool()
        if self.backend:
            self.f["ggml_backend_free"](self.backend)
            self.backend = None

    # --- weights -----------------------------------------------------------------------------------------------

    def weights(
        self, ggml_type: int, n: int, k: int, copies: Sequence[np.ndarray], buft: int | None = None
    ) -> WeightSet:
        """Copies of an [n, k] weight (each its raw GGUF bytes) in one buffer of ``buft`` (None: plain CPU)."""
        return WeightSet(self, ggml_type, n, k, copies, buft)


class WeightSet:
    def __init__(self, g: Ggml, ggml_type: int, n: int, k: int, copies: Sequence[np.ndarray], buft: int | None):
        self.g, self.type, self.n, self.k = g, int(ggml_type), int(n), int(k)
        f = g.f
        self.buft = buft or f["ggml_backend_cpu_buffer_type"]()
        self.buft_name = f["ggml_backend_buft_name"](self.buft).decode()
        self.extra = buft is not None
        self.nbytes = g.row_size(self.type, k) * n
        self.ctx = g._ctx(len(copies) * f["ggml_tensor_overhead"]())
        self.buffer = None
        self.tensors = []
        for i in range(len(copies)):
            t = f["ggml_new_tensor_2d"](self.ctx, self.type, k, n)  # ggml order: ne0 = k (contiguous), ne1 = n
            f["ggml_set_name"](t, f"w{i}".encode())
            self.tensors.append(t)
        if f["ggml_nbytes"](self.tensors[0]) != self.nbytes:
            raise GgmlError(f"ggml says an [{n}, {k}] {g.type_name(self.type)} tensor has a different size")
        self.buffer = f["ggml_backend_alloc_ctx_tensors_from_buft"](self.ctx, self.buft)
        if not self.buffer:
            self.close()
            raise GgmlError(f"could not allocate {len(copies)} x {self.nbytes} bytes in {self.buft_name}")
        self.buffer_bytes = int(f["ggml_backend_buffer_get_size"](self.buffer))
        self.handled = self._handled()
        if self.handled:
            for t, data in zip(self.tensors, copies):
                a = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
                if a.size < self.nbytes:
                    raise ValueError(f"a weight copy has {a.size} bytes, needs {self.nbytes}")
                f["ggml_backend_tensor_set"](t, a.ctypes.data, 0, self.nbytes)  # an extra buffer repacks here

    def _handled(self) -> bool:
        """Whether ggml computes mul_mat with these weights in this buffer (always, for the plain CPU buffer).

        For an extra buffer type, the CPU device's supports_op asks that buffer type (ggml-cpu.cpp); the repack
        buffer additionally needs a repack routine (``tensor->extra``) before anything may be set."""
        if not self.extra:
            return True
        if self.buft_name == "CPU_REPACK" and not self.tensors[0].contents.extra:
            return False
        f = self.g.f
        ctx = self.g._ctx(2 * f["ggml_tensor_overhead"]())
        try:
            x = f["ggml_new_tensor_2d"](ctx, GGML_TYPE_F32, self.k, 1)
            return bool(f["ggml_backend_dev_supports_op"](self.g.dev, f["ggml_mul_mat"](ctx, self.tensors[0], x)))
        finally:
            f["ggml_free"](ctx)

    def matmul(self, batch: int) -> MatMul:
        if not self.handled:
            raise GgmlError(f"{self.buft_name} does not handle {self.g.type_name(self.type)} [{self.n}, {self.k}]")
        return MatMul(self, batch)

    def close(self) -> None:
        if self.buffer:
            self.g.f["ggml_backend_buffer_free"](self.buffer)
            self.buffer = None
        if self.ctx:
            self.g.f["ggml_free"](self.ctx)
            self.ctx = None


class MatMul:
    """y_i = x @ W_i^T for every weight copy i: one ggml graph each, sharing the f32 activation tensor x."""

    def __init__(self, ws: WeightSet, batch: int):
        g, f = ws.g, ws.g.f
        self.ws, self.batch = ws, int(batch)
        r = len(ws.tensors)
        graph_nodes = 4
        mem = (1 + r) * f["ggml_tensor_overhead"]() + r * f["ggml_graph_overhead_custom"](graph_nodes, False)
        self.ctx = g._ctx(mem)
        self.buffer = None
        self.x = f["ggml_new_tensor_2d"](self.ctx, GGML_TYPE_F32, ws.k, self.batch)
        self.ys, self.graphs = [], []
        for w in ws.tensors:
            y = f["ggml_mul_mat"](self.ctx, w, self.x)  # ne = [n, batch]: row-major [batch, n]
            gr = f["ggml_new_graph_custom"](self.ctx, graph_nodes, False)
            f["ggml_build_forward_expand"](gr, y)
            self.ys.append(y)
            self.graphs.append(gr)
        self.buffer = f["ggml_backend_alloc_ctx_tensors_from_buft"](self.ctx, f["ggml_backend_cpu_buffer_type"]())
        if not self.buffer:
            self.close()
            raise GgmlError("could not allocate the activation and output tensors")
        self._compute = f["ggml_backend_graph_compute"]
        self._backend = g.backend

    def set_x(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != (self.batch, self.ws.k):
            raise ValueError(f"x must be [{self.batch}, {self.ws.k}], got {list(x.shape)}")
        self.ws.g.f["ggml_backend_tensor_set"](self.x, x.ctypes.data, 0, x.nbytes)

    def run(self, i: int) -> None:
        status = self._compute(self._backend, self.graphs[i])
        if status != GGML_STATUS_SUCCESS:
            raise GgmlError(f"ggml_backend_graph_compute returned status {status}")

    def y(self, i: int) -> np.ndarray:
        out = np.empty((self.batch, self.ws.n), np.float32)
        self.ws.g.f["ggml_backend_tensor_get"](self.ys[i], out.ctypes.data, 0, out.nbytes)
        return out

    def close(self) -> None:
        if self.buffer:
            self.ws.g.f["ggml_backend_buffer_free"](self.buffer)
            self.buffer = None
        if self.ctx:
            self.ws.g.f["ggml_free"](self.ctx)
            self.ctx = None


# --- crash probe -----------------------------------------------------------------------------------------------------


def probe(
    buft_name: str,
    ggml_type: int,
    n: int,
    k: int,
    batch: int,
    threads: int,
    weights: np.ndarray,
    lib_dir: Path | None = None,
) -> str | None:
    """Run one mul_mat of ``weights`` (an [n, k] tensor's raw bytes) in extra buffer type ``buft_name`` in a child
    process, and compare it with the plain CPU buffer's result. None when it ran and agreed; otherwise why not.

    An extra buffer type's kernels can kill the process (ggml's AMX tiles fault in ``ldtilecfg`` for batch > 1 in
    GCC 12 builds), and a benchmark must survive a peer that crashes.
    """
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ggml-probe-") as tmp:
        path = Path(tmp) / "w.npy"
        np.save(path, np.ascontiguousarray(weights).reshape(-1).view(np.uint8))
        cmd = [sys.executable, str(Path(__file__).resolve()), "probe", buft_name, str(ggml_type), str(n), str(k)]
        cmd += [str(batch), str(threads), str(path)] + ([str(lib_dir)] if lib_dir else [])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return "probe timed out after 300 s"
    if p.returncode == 0:
        return None
    if p.returncode < 0:
        try:
            name = signal.Signals(-p.returncode).name
        except ValueError:
            name = f"signal {-p.returncode}"
        return f"crashed ({name}) in a probe process"
    tail = (p.stderr or p.stdout).strip().splitlines()
    return f"probe failed: {tail[-1] if tail else f'exit status {p.returncode}'}"


def _probe_main(argv: list[str]) -> int:
    buft_name, gtype, n, k, batch, threads = argv[0], *map(int, argv[1:6])
    raw = np.load(argv[6])
    g = Ggml.load(argv[7] if len(argv) > 7 else None)
    g.set_threads(threads)
    bufts = dict(g.extra_bufts())
    if buft_name not in bufts:
        print(f"no extra buffer type {buft_name}", file=sys.stderr)
        return 2
    x = np.random.default_rng(0).standard_normal((batch, k), dtype=np.float32)
    ys = []
    for buft in (None, bufts[buft_name]):
        ws = g.weights(gtype, n, k, [raw], buft)
        if not ws.handled:
            print(f"{buft_name} does not handle this type", file=sys.stderr)
            return 3
        mm = ws.matmul(batch)
        mm.set_x(x)
        mm.run(0)
        ys.append(mm.y(0).astype(np.float64))
        mm.close()
        ws.close()
    err = float(np.sqrt(np.mean((ys[1] - ys[0]) ** 2) / np.mean(ys[0] ** 2)))
    if not err < 5e-2:
        print(f"{buft_name} result differs from the plain CPU buffer's: relative rms {err:.3g}", file=sys.stderr)
        return 4
    g.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 8 and sys.argv[1] == "probe":
        sys.exit(_probe_main(sys.argv[2:]))
    print(__doc__)
