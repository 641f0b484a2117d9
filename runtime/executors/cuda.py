"""Run an artifact's CUDA kernels through the driver API (ctypes on libcuda; no toolkit, no cuda-python).

The artifact holds ``kernels_cuda.fatbin`` (SASS per architecture plus PTX) and the manifest's cuda section, which
``sdcompile.codegen.cuda_build.build_cuda`` writes and the executor receives as ``kernels``::

    {"target": "cuda", "build": {"archs": [...], "ptx": [...], ...},
     "kernels": {name: {"params": [{"name", "kind", "shape", "dtype", ...}, ...],
                        "launch": [{"entry": "device_function_symbol", "grid": [x, y, z], "block": [x, y, z],
                                    "buffers": ["x", "w", "y"],      # kernel parameters by name (or index)
                                    "pods": [{"dtype": "int32", "value": 4}],   # constant scalars, after buffers
                                    "dyn_shared_bytes": 0}, ...]}}}

(``func``/``args``/``shared_mem`` are accepted for ``entry``/``buffers``/``dyn_shared_bytes``; a bare table of
kernels without ``build`` works too.) A kernel's dispatches run in order on the legacy default stream, so each sees
the previous one's writes. TVM orders a device function's parameters buffers first, then scalars.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.device import (
    CUDA_ERROR_NO_BINARY_FOR_GPU,
    CudaError,
    CUdevice,
    CUdeviceptr,
    load_driver,
    probe_cuda,
    select_cuda_build,
)
from runtime.errors import NoCompatibleBuild, RuntimeFailure

FATBIN_FILE = "kernels_cuda.fatbin"

# CUjit_option values (cuda.h) for capturing the PTX JIT's error log.
_CU_JIT_ERROR_LOG_BUFFER = 5
_CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6
_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
_STATIC_SHARED_LIMIT = 48 * 1024  # above this, dynamic shared memory must be opted into per function


@dataclass
class Buffer:
    """Device memory: a CUdeviceptr and its size in bytes."""

    ptr: int
    nbytes: int
    freed: bool = False


# --------------------------------------------------------------------------------------------------- pure helpers


def dispatch_arg_indices(dispatch: Mapping, param_names: Sequence[str], nargs: int) -> list[int]:
    """Which kernel arguments (by index) a dispatch passes to its device function, in order.

    ``dispatch["buffers"]`` (or ``"args"``) lists parameter names or argument indices; without it, every argument is
    passed in order.
    """
    spec = dispatch.get("buffers", dispatch.get("args"))
    if spec is None:
        return list(range(nargs))
    out = []
    for a in spec:
        if isinstance(a, bool):
            raise ValueError(f"dispatch {_entry(dispatch)!r}: bad argument reference {a!r}")
        if isinstance(a, int):
            i = a
        elif isinstance(a, str):
            if a not in param_names:
                raise ValueError(f"dispatch {_entry(dispatch)!r} names unknown parameter {a!r}")
            i = list(param_names).index(a)
        else:
            raise ValueError(f"dispatch {_entry(dispatch)!r}: bad argument reference {a!r}")
        if not 0 <= i < nargs:
            raise ValueError(f"dispatch {_entry(dispatch)!r} uses argument {i}, but the kernel got {nargs}")
        out.append(i)
    return out


_POD_TYPES = {
    "int32": ctypes.c_int32,
    "int64": ctypes.c_int64,
    "uint32": ctypes.c_uint32,
    "uint64": ctypes.c_uint64,
    "float32": ctypes.c_float,
    "float64": ctypes.c_double,
}


def _entry(dispatch: Mapping) -> str:
    return str(dispatch.get("entry", dispatch.get("func")))


def pack_kernel_params(ptrs: Sequence[int], pods: Sequence[Mapping] = ()) -> tuple[ctypes.Array, list]:
    """The ``void** kernelParams`` array cuLaunchKernel takes: one pointer per device-function parameter, each
    pointing at the value (a CUdeviceptr for a buffer, then each scalar in its own C type). Returns the array and the
    value holders, which must stay alive until cuLaunchKernel returns (it copies the values)."""
    holders: list = [CUdeviceptr(int(p)) for p in ptrs]
    for pod in pods:
        ctype = _POD_TYPES.get(str(pod["dtype"]))
        if ctype is None:
            raise ValueError(f"unsupported scalar kernel argument type {pod['dtype']!r}")
        holders.append(ctype(pod["value"]))
    arr = (ctypes.c_void_p * max(len(holders), 1))()
    for i, h in enumerate(holders):
        arr[i] = ctypes.cast(ctypes.pointer(h), ctypes.c_void_p)
    return arr, holders


def _dims(v, what: str, func: str) -> tuple[int, int, int]:
    d = [int(x) for x in v] + [1] * (3 - len(v))
    if len(d) != 3 or any(x < 1 for x in d):
        raise ValueError(f"dispatch {func!r}: bad {what} {v!r}")
    return d[0], d[1], d[2]


def check_args(kernel_name: str, params: Sequence[Mapping], args: Sequence[tuple]) -> None:
    """Check launch arguments (buffer, shape, dtype) against a kernel's parameter list: count and buffer size."""
    if params and len(args) != len(params):
        names = ", ".join(p.get("name", "?") for p in params)
        raise RuntimeFailure(f"kernel {kernel_name} takes {len(params)} arguments ({names}), got {len(args)}")
    for i, (buf, shape, dtype) in enumerate(args):
        p = params[i] if params else {}
        pname = p.get("name", str(i))
        if buf.freed:
            raise RuntimeFailure(f"kernel {kernel_name}: argument {pname} is a freed buffer")
        if p.get("kind") in ("raw", "lut"):
            # A weight in its storage type (its shape is the logical one) or a lookup table: sized by its words.
            need = int(p["words"]) * 4 if "words" in p else None
            what = f"{p.get('dtype', 'raw')}{list(shape)} as {p.get('words')} uint32 words"
        else:
            try:
                need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            except TypeError:
                need = None  # a storage type name (q4_0, ...) without a parameter record: nothing to check
            what = f"{dtype}{list(shape)}"
        if need is not None and buf.nbytes < need:
            raise RuntimeFailure(
                f"kernel {kernel_name}: argument {pname} needs {need} bytes ({what}), but its buffer holds {buf.nbytes}"
            )


def _read_build(artifact_dir: Path) -> dict | None:
    """The fatbin record from manifest.json's cuda section, if the manifest is there and has one."""
    mf = artifact_dir / "manifest.json"
    if not mf.is_file():
        return None
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError):
        return None
    stack = [m]
    while stack:  # the section's place in the manifest belongs to the artifact writer; find it by content
        x = stack.pop()
        if isinstance(x, dict):
            if x.get("target") == "cuda" and isinstance(x.get("build"), dict):
                return x["build"]
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


# --------------------------------------------------------------------------------------------------- executor


class Executor:
    """Loads the artifact's fatbin on one CUDA device and launches its kernels."""

    def __init__(
        self,
        artifact_dir: Path,
        kernels: dict,
        num_threads: int | None = None,
        *,
        device_index: int = 0,
        build: dict | None = None,
    ) -> None:
        del num_threads  # CPU thread count: irrelevant on a GPU, accepted for the common executor interface
        self.artifact_dir = Path(artifact_dir)
        if isinstance(kernels.get("kernels"), Mapping):  # the manifest's whole cuda section
            if build is None and isinstance(kernels.get("build"), Mapping):
                build = dict(kernels["build"])
            kernels = kernels["kernels"]
        self.kernels = kernels
        self._mod = None
        self._ctx = None
        self._buffers: list[Buffer] = []
        self._funcs: dict[str, ctypes.c_void_p] = {}
        self._bound = threading.local()

        devices = probe_cuda()
        if devices and devices[0].get("simulated"):
            raise RuntimeFailure(
                "CUDA device simulation (SDCOMPILE_SIMULATE_CUDA_DEVICE) only affects probing and build selection; "
                "running kernels needs a real GPU: unset the variable"
            )
        if not devices:
            raise RuntimeFailure(f"cannot run the cuda target: {devices.reason or 'no CUDA device found'}")
        if not 0 <= device_index < len(devices):
            raise RuntimeFailure(
                f"CUDA device {device_index} does not exist: this machine has {len(devices)} "
                f"({', '.join(d['name'] for d in devices)})"
            )
        self.device = devices[device_index]
        fatbin = self.artifact_dir / FATBIN_FILE
        if not fatbin.is_file():
            raise RuntimeFailure(f"{fatbin} is missing: the artifact is incomplete; compile it again for cuda")
        build = build if build is not None else _read_build(self.artifact_dir)
        # Choose before loading, so an incompatible device gets a message naming both sides (NoCompatibleBuild).
        self.code = select_cuda_build(build, self.device) if build is not None else None

        drv = self._drv = load_driver()
        dev = CUdevice()
        drv.check(drv.cuDeviceGet(ctypes.byref(dev), device_index), "cuDeviceGet")
        self._dev = dev
        ctx = ctypes.c_void_p()
        # The primary context is the one the runtime API (and PyTorch etc.) share: no fight over the current context.
        drv.check(drv.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self._ctx = ctx
        self._bind()
        self._load_module(fatbin.read_bytes())

    def _load_module(self, fatbin: bytes) -> None:
        drv = self._drv
        log = ctypes.create_string_buffer(16384)
        opts = (ctypes.c_int * 2)(_CU_JIT_ERROR_LOG_BUFFER, _CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        vals = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p).value, len(log))
        image = ctypes.create_string_buffer(fatbin, len(fatbin))  # the driver copies it during the call
        mod = ctypes.c_void_p()
        rc = drv.cuModuleLoadDataEx(ctypes.byref(mod), ctypes.cast(image, ctypes.c_void_p), 2, opts, vals)
        if rc == CUDA_ERROR_NO_BINARY_FOR_GPU:
            raise NoCompatibleBuild(
                f"CUDA device {self.device['index']} {self.device['name']!r} (compute capability "
                f"{self.device['cc']}) found no code it can run in {self.artifact_dir / FATBIN_FILE} "
                f"({drv.error_text(rc)}); recompile with --cuda-arch sm_{self.device['cc'].replace('.', '')}"
            )
        if rc != 0:
            detail = log.value.decode(errors="replace").strip()
            raise CudaError(
                rc,
                f"loading {FATBIN_FILE} on {self.device['name']!r} failed: {drv.error_text(rc)}"
                + (f"\nJIT log:\n{detail}" if detail else "")
                + "\nThe file may be damaged (check the artifact's hashes) or the driver too old for its PTX: "
                "update the NVIDIA driver",
            )
        self._mod = mod

    def _bind(self) -> None:
        # The current context is per host thread: make ours current on whichever thread calls us.
        if getattr(self._bound, "ok", False):
            return
        self._drv.check(self._drv.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        self._bound.ok = True

    def _function(self, func: str, shared_mem: int) -> ctypes.c_void_p:
        f = self._funcs.get(func)
        if f is None:
            f = ctypes.c_void_p()
            self._drv.check(
                self._drv.cuModuleGetFunction(ctypes.byref(f), self._mod, func.encode()), f"cuModuleGetFunction({func})"
            )
            self._funcs[func] = f
        if shared_mem > _STATIC_SHARED_LIMIT:
            self._drv.check(
                self._drv.cuFuncSetAttribute(f, _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared_mem),
                f"cuFuncSetAttribute({func}, max dynamic shared memory {shared_mem})",
            )
        return f

    # ----------------------------------------------------------------------------------------- interface

    def device_info(self) -> dict:
        ver = ctypes.c_int()
        self._drv.check(self._drv.cuDriverGetVersion(ctypes.byref(ver)), "cuDriverGetVersion")
        return {
            "target": "cuda",
            **{k: self.device[k] for k in ("index", "name", "cc", "total_mem")},
            "memory_bytes": self.device["total_mem"],
            "code": self.code,  # "sm_XX" (SASS) or "compute_XX" (PTX through the JIT); None if the build is unknown
            "driver_version": f"{ver.value // 1000}.{ver.value % 1000 // 10}",
        }

    def alloc(self, nbytes: int) -> Buffer:
        self._bind()
        ptr = CUdeviceptr()
        # cuMemAlloc rejects 0 bytes; an empty tensor still needs a distinct valid address.
        self._drv.check(self._drv.cuMemAlloc_v2(ctypes.byref(ptr), max(int(nbytes), 1)), f"cuMemAlloc({nbytes})")
        buf = Buffer(int(ptr.value), int(nbytes))
        self._buffers.append(buf)
        return buf

    def view(self, buf: Buffer, offset: int, nbytes: int) -> Buffer:
        """Bytes [offset, offset + nbytes) of ``buf`` as a buffer of their own (a slice the memory plan aliased)."""
        return Buffer(buf.ptr + int(offset), int(nbytes))

    def free(self, buf: Buffer) -> None:
        self._bind()
        if not buf.freed:
            self._drv.check(self._drv.cuMemFree_v2(buf.ptr), "cuMemFree")
            buf.freed = True
            self._buffers = [b for b in self._buffers if b is not buf]

    def upload(self, buf: Buffer, array: np.ndarray) -> None:
        self._bind()
        a = np.ascontiguousarray(array)
        if a.nbytes > buf.nbytes:
            raise RuntimeFailure(f"upload of {a.nbytes} bytes into a buffer of {buf.nbytes}")
        if a.nbytes:
            self._drv.check(self._drv.cuMemcpyHtoD_v2(buf.ptr, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")

    def download(self, buf: Buffer, shape, dtype) -> np.ndarray:
        self._bind()
        out = np.empty(tuple(shape), dtype=dtype)
        if out.nbytes > buf.nbytes:
            raise RuntimeFailure(f"download of {out.nbytes} bytes from a buffer of {buf.nbytes}")
        if out.nbytes:
            # Synchronous on the legacy default stream: waits for every kernel launched before it.
            self._drv.check(self._drv.cuMemcpyDtoH_v2(out.ctypes.data, buf.ptr, out.nbytes), "cuMemcpyDtoH")
        return out

    def launch(self, kernel_name: str, args: list[tuple[Buffer, tuple[int, ...], str]]) -> None:
        k = self.kernels.get(kernel_name)
        if k is None:
            raise RuntimeFailure(f"the artifact has no cuda kernel {kernel_name}")
        params = k.get("params") or []
        check_args(kernel_name, params, args)
        self._bind()
        names = [p.get("name") for p in params]
        for d in k["launch"]:
            func = _entry(d)
            idx = dispatch_arg_indices(d, names, len(args))
            grid = _dims(d["grid"], "grid", func)
            block = _dims(d["block"], "block", func)
            shared = int(d.get("dyn_shared_bytes", d.get("shared_mem", 0)))
            f = self._function(func, shared)
            arr, keep = pack_kernel_params([args[i][0].ptr for i in idx], d.get("pods", ()))
            self._drv.check(
                self._drv.cuLaunchKernel(f, *grid, *block, shared, None, arr, None),
                f"cuLaunchKernel({func}, grid={list(grid)}, block={list(block)})",
            )
            del keep  # cuLaunchKernel has copied the argument values

    def synchronize(self) -> None:
        self._bind()
        self._drv.check(self._drv.cuCtxSynchronize(), "cuCtxSynchronize")

    def close(self) -> None:
        """Free buffers, unload the module and release the primary context (also done at garbage collection)."""
        drv = getattr(self, "_drv", None)
        if drv is None or self._ctx is None:
            return
        drv.cuCtxSetCurrent(self._ctx)
        for b in self._buffers:
            if not b.freed:
                drv.cuMemFree_v2(b.ptr)
                b.freed = True
        self._buffers = []
        if self._mod is not None:
            drv.cuModuleUnload(self._mod)
            self._mod = None
        drv.cuDevicePrimaryCtxRelease_v2(self._dev)
        self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
