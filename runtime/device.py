"""Probe CUDA devices through the driver API and choose which code in an artifact's fatbin a device will run.

Only ``ctypes`` and the driver (``libcuda.so.1``) are used: no CUDA toolkit, no cuda-python, nothing from
``sdcompile``. Without a driver, probing returns no devices and says why.

Selection mirrors the CUDA driver's own rules, so the runtime can refuse with a clear message *before* loading
instead of failing inside the driver ("no device code compatible with CUDA arch 520"):

1. SASS for exactly the device's architecture;
2. else SASS of the same major version and a lower-or-equal minor (cubins are binary compatible within a major);
3. else PTX for a compute capability <= the device's (the driver JIT-compiles it);
4. else nothing can run: ``NoCompatibleBuild``.

Testing without a GPU: ``SDCOMPILE_SIMULATE_CUDA_DEVICE="NAME:CC[:MEM_GB]"`` (several separated by ``;``) makes
``probe_cuda`` return those devices without touching the driver, e.g. ``"GeForce GTX 970:5.2:4"``.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Mapping

from runtime.errors import NoCompatibleBuild, RuntimeFailure

SIMULATE_ENV = "SDCOMPILE_SIMULATE_CUDA_DEVICE"

# The oldest architecture the toolkit that builds artifacts (CUDA 13) can target; older GPUs cannot run CUDA code
# from any artifact and need another target.
OLDEST_BUILDABLE_CC = (7, 5)

CUDA_SUCCESS = 0
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_NO_BINARY_FOR_GPU = 209
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76

CUdevice = ctypes.c_int
CUdeviceptr = ctypes.c_uint64
CUresult = ctypes.c_int


class DeviceList(list):
    """A list of device dicts that also says why it is empty (``reason``), e.g. no driver."""

    def __init__(self, devices=(), reason: str | None = None) -> None:
        super().__init__(devices)
        self.reason = reason


# --------------------------------------------------------------------------------------------------- driver


class Driver:
    """The CUDA driver library with the prototypes this runtime uses (all sizes and pointers as 64-bit)."""

    _PROTOS: dict[str, tuple] = {
        "cuInit": (ctypes.c_uint,),
        "cuDriverGetVersion": (ctypes.POINTER(ctypes.c_int),),
        "cuDeviceGetCount": (ctypes.POINTER(ctypes.c_int),),
        "cuDeviceGet": (ctypes.POINTER(CUdevice), ctypes.c_int),
        "cuDeviceGetName": (ctypes.c_char_p, ctypes.c_int, CUdevice),
        "cuDeviceGetAttribute": (ctypes.POINTER(ctypes.c_int), ctypes.c_int, CUdevice),
        "cuDeviceTotalMem_v2": (ctypes.POINTER(ctypes.c_size_t), CUdevice),
        "cuGetErrorName": (CUresult, ctypes.POINTER(ctypes.c_char_p)),
        "cuGetErrorString": (CUresult, ctypes.POINTER(ctypes.c_char_p)),
        "cuDevicePrimaryCtxRetain": (ctypes.POINTER(ctypes.c_void_p), CUdevice),
        "cuDevicePrimaryCtxRelease_v2": (CUdevice,),
        "cuCtxSetCurrent": (ctypes.c_void_p,),
        "cuCtxSynchronize": (),
        "cuModuleLoadDataEx": (
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_void_p),
        ),
        "cuModuleUnload": (ctypes.c_void_p,),
        "cuModuleGetFunction": (ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p),
        "cuFuncSetAttribute": (ctypes.c_void_p, ctypes.c_int, ctypes.c_int),
        "cuMemAlloc_v2": (ctypes.POINTER(CUdeviceptr), ctypes.c_size_t),
        "cuMemFree_v2": (CUdeviceptr,),
        "cuMemcpyHtoD_v2": (CUdeviceptr, ctypes.c_void_p, ctypes.c_size_t),
        "cuMemcpyDtoH_v2": (ctypes.c_void_p, CUdeviceptr, ctypes.c_size_t),
        "cuMemsetD8_v2": (CUdeviceptr, ctypes.c_ubyte, ctypes.c_size_t),
        "cuLaunchKernel": (
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
        ),
    }

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name, argtypes in self._PROTOS.items():
            fn = getattr(lib, name, None)
            if fn is None:
                continue  # an old driver; the call that needs it reports the missing symbol
            fn.argtypes = list(argtypes)
            fn.restype = CUresult

    def __getattr__(self, name: str):
        fn = getattr(self.lib, name, None)
        if fn is None:
            raise RuntimeFailure(
                f"the CUDA driver has no function {name}; it is too old for this runtime: update the NVIDIA driver"
            )
        return fn

    def error_text(self, rc: int) -> str:
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        try:
            self.lib.cuGetErrorName(rc, ctypes.byref(name))
            self.lib.cuGetErrorString(rc, ctypes.byref(text))
        except (AttributeError, OSError):
            pass
        n = name.value.decode() if name.value else f"CUresult {rc}"
        return f"{n} ({text.value.decode()})" if text.value else n

    def check(self, rc: int, what: str) -> None:
        if rc != CUDA_SUCCESS:
            raise CudaError(rc, f"{what} failed: {self.error_text(rc)}")


class CudaError(RuntimeFailure):
    """A CUDA driver call failed; ``code`` is the CUresult."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


_driver: Driver | None = None
_driver_error: str | None = None


def _libcuda_names() -> list[str]:
    if sys.platform == "win32":
        return ["nvcuda.dll"]
    return ["libcuda.so.1", "libcuda.so"]


def load_driver() -> Driver:
    """Load and initialise the CUDA driver (once per process); ``RuntimeFailure`` saying why when impossible."""
    global _driver, _driver_error
    if _driver is not None:
        return _driver
    if _driver_error is not None:
        raise RuntimeFailure(_driver_error)
    lib = None
    errors = []
    for name in _libcuda_names():
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            errors.append(f"{name}: {e}")
    if lib is None:
        _driver_error = (
            "no CUDA driver: could not load " + "; ".join(errors) + ". Running the cuda target needs an NVIDIA GPU "
            "with its driver installed; on this machine run an artifact built for the cpu or vulkan target"
        )
        raise RuntimeFailure(_driver_error)
    drv = Driver(lib)
    rc = drv.cuInit(0)
    if rc == CUDA_ERROR_NO_DEVICE:
        _driver_error = (
            "the CUDA driver is installed but reports no CUDA device (CUDA_ERROR_NO_DEVICE); check that the GPU is "
            "visible (nvidia-smi, CUDA_VISIBLE_DEVICES), or run an artifact built for the cpu or vulkan target"
        )
        raise RuntimeFailure(_driver_error)
    if rc != CUDA_SUCCESS:
        _driver_error = (
            f"cuInit failed: {drv.error_text(rc)}; the NVIDIA driver is not working (check nvidia-smi), "
            "or run an artifact built for the cpu or vulkan target"
        )
        raise RuntimeFailure(_driver_error)
    _driver = drv
    return drv


# --------------------------------------------------------------------------------------------------- probing


def parse_simulated(spec: str) -> list[dict]:
    """Devices from ``SDCOMPILE_SIMULATE_CUDA_DEVICE``: ``NAME:CC[:MEM_GB]``, several separated by ``;``."""
    devices = []
    for i, item in enumerate(p for p in spec.split(";") if p.strip()):
        parts = item.strip().rsplit(":", 2)
        mem_gb: str | None = None
        if len(parts) == 3 and _is_cc(parts[1]):
            name, cc, mem_gb = parts
        else:
            name, _, cc = item.strip().rpartition(":")
        if not name or not _is_cc(cc):
            raise RuntimeFailure(
                f"{SIMULATE_ENV}={spec!r}: cannot read {item!r}; write NAME:CC[:MEM_GB], e.g. 'GeForce GTX 970:5.2:4'"
            )
        total = None
        if mem_gb is not None:
            try:
                total = int(float(mem_gb) * (1 << 30))
            except ValueError:
                raise RuntimeFailure(f"{SIMULATE_ENV}: memory {mem_gb!r} in {item!r} is not a number of GB") from None
        major, minor = parse_cc(cc)
        devices.append(
            {"index": i, "name": name.strip(), "cc": f"{major}.{minor}", "total_mem": total, "simulated": True}
        )
    return devices


def _is_cc(s: str) -> bool:
    return re.fullmatch(r"\s*\d+\.\d\s*", s) is not None


def parse_cc(cc: str | tuple[int, int] | Mapping) -> tuple[int, int]:
    """'8.6', (8, 6) or a device dict -> (8, 6)."""
    if isinstance(cc, Mapping):
        cc = cc["cc"]
    if isinstance(cc, tuple):
        return int(cc[0]), int(cc[1])
    m = re.fullmatch(r"\s*(\d+)\.(\d)\s*", str(cc))
    if not m:
        raise ValueError(f"not a compute capability: {cc!r} (expected MAJOR.MINOR such as 8.6)")
    return int(m.group(1)), int(m.group(2))


def probe_cuda() -> DeviceList:
    """CUDA devices as [{"index", "name", "cc": "8.6", "total_mem": bytes}]; empty (with ``.reason``) if none."""
    sim = os.environ.get(SIMULATE_ENV)
    if sim:
        return DeviceList(parse_simulated(sim), None)
    try:
        drv = load_driver()
    except RuntimeFailure as e:
        return DeviceList([], str(e))
    try:
        count = ctypes.c_int()
        drv.check(drv.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        devices = []
        for i in range(count.value):
            dev = CUdevice()
            drv.check(drv.cuDeviceGet(ctypes.byref(dev), i), f"cuDeviceGet({i})")
            name = ctypes.create_string_buffer(256)
            drv.check(drv.cuDeviceGetName(name, len(name), dev), "cuDeviceGetName")
            major, minor = ctypes.c_int(), ctypes.c_int()
            drv.check(
                drv.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
                "cuDeviceGetAttribute(major)",
            )
            drv.check(
                drv.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
                "cuDeviceGetAttribute(minor)",
            )
            mem = ctypes.c_size_t()
            drv.check(drv.cuDeviceTotalMem_v2(ctypes.byref(mem), dev), "cuDeviceTotalMem")
            devices.append(
                {
                    "index": i,
                    "name": name.value.decode(errors="replace"),
                    "cc": f"{major.value}.{minor.value}",
                    "total_mem": int(mem.value),
                }
            )
    except RuntimeFailure as e:
        return DeviceList([], str(e))
    reason = None if devices else "the CUDA driver reports no devices"
    return DeviceList(devices, reason)


# --------------------------------------------------------------------------------------------------- selection


def _arch_cc(arch: str) -> tuple[int, int]:
    n = int(re.fullmatch(r"(?:sm|compute)_(\d+)", arch).group(1))
    return n // 10, n % 10


def _build_record(build: Mapping) -> Mapping:
    # Accept the fatbin record itself or the manifest's whole cuda section that holds it under "build".
    return build["build"] if "build" in build and isinstance(build["build"], Mapping) else build


def select_cuda_build(build: Mapping, device: Mapping) -> str:
    """The code in ``build`` that ``device`` will run: "sm_XX" (SASS) or "compute_XX" (PTX, JIT-compiled).

    ``build`` is the fatbin record (``{"archs": [...], "ptx": [...]}``) or the manifest's cuda section holding it;
    ``device`` a dict from ``probe_cuda``. Raises ``NoCompatibleBuild`` when nothing fits.
    """
    rec = _build_record(build)
    sass = list(rec.get("archs", []))
    ptx = list(rec.get("ptx", []))
    major, minor = parse_cc(device)
    exact = f"sm_{major}{minor}"
    if exact in sass:
        return exact
    same_major = [a for a in sass if _arch_cc(a)[0] == major and _arch_cc(a)[1] <= minor]
    if same_major:
        return max(same_major, key=_arch_cc)
    jit = [p for p in ptx if _arch_cc(p) <= (major, minor)]
    if jit:
        return max(jit, key=_arch_cc)
    raise NoCompatibleBuild(_no_build_message(sass, ptx, device, major, minor))


def _no_build_message(sass: list[str], ptx: list[str], device: Mapping, major: int, minor: int) -> str:
    cc = f"{major}.{minor}"
    held = ", ".join(sass) if sass else "no SASS"
    if ptx:
        held += "; PTX " + ", ".join(f"{p} (runs on >= {'.'.join(map(str, _arch_cc(p)))})" for p in ptx)
    else:
        held += "; no PTX"
    where = f"CUDA device {device.get('index', 0)} {device.get('name', '?')!r}"
    head = (
        f"{where} has compute capability {cc}, but this artifact holds device code only for {held}: "
        f"no device code compatible with CUDA arch {major}{minor}0."
    )
    if (major, minor) < OLDEST_BUILDABLE_CC:
        o = OLDEST_BUILDABLE_CC
        return (
            f"{head} CUDA 13, which builds sdcompile's CUDA code, supports compute capability {o[0]}.{o[1]} "
            f"(sm_{o[0]}{o[1]}) and newer, so no --cuda-arch can make a cuda artifact for this GPU; compile for the "
            "vulkan target (sdcompile compile --target vulkan) or the cpu target instead"
        )
    want = f"sm_{major}{minor}"
    all_archs = ",".join(sorted(set(sass) | {want}, key=_arch_cc) + ptx)
    return (
        f"{head} Recompile with --cuda-arch {want} (or keep the others: --cuda-arch {all_archs}); "
        "PTX for an architecture at or below the device's (e.g. compute_75) also runs, through the driver's JIT"
    )
