"""Vulkan executor: runs the WGSL kernels TVM generated through wgpu on a Vulkan adapter.

The host side TVM would generate for WebGPU lives here instead, driven by the launch entries in the manifest:
binding i is the entry's i-th buffer, the last binding is a uniform holding the entry's scalar operands followed by
``packGridDimX`` (TVM's WGSL checks workgroup ids against it), and the dispatch size is the entry's grid.

Dispatches are recorded into one command encoder and submitted at ``synchronize``, ``download`` or ``upload``
(a queue write is ordered before everything submitted after it, so pending work must be submitted first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError, LaunchError, NoDeviceError
from runtime.executors.common import check_args, kernel_table, lookup, nbytes_of

# Preference among Vulkan adapters: a real GPU first, lavapipe (a CPU implementation) last.
_ADAPTER_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "CPU": 3}


def _round4(n: int) -> int:
    return (n + 3) & ~3


def _private_runtime_dir() -> None:
    """Give the process a valid XDG_RUNTIME_DIR where it has none.

    Creating a Vulkan instance loads the driver's window-system code (Wayland's client library, through wgpu), which
    prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." several times when the variable is
    unset, empty or not an absolute path: noise on every run in a container, over SSH or under a service, where
    compute needs no display at all. A private folder (mode 0700, as the XDG spec asks, removed at exit) silences
    it; a user's own value that names an existing folder is kept.
    """
    value = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(value) and os.path.isdir(value):
        return
    import atexit
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="sdcompile-xdg-")  # created 0700
    atexit.register(shutil.rmtree, d, True)
    os.environ["XDG_RUNTIME_DIR"] = d


def vulkan_adapters() -> list:
    """Vulkan adapters wgpu can see, best first; empty if wgpu or a Vulkan driver is missing."""
    _private_runtime_dir()  # before wgpu creates its instance, which reads the variable
    try:
        import wgpu
    except ImportError:
        return []
    try:
        adapters = wgpu.gpu.enumerate_adapters_sync()
    except Exception:  # no loader / no ICD: wgpu raises its own error types
        return []
    found = [a for a in adapters if a.info.get("backend_type") == "Vulkan"]
    return sorted(found, key=lambda a: (_ADAPTER_RANK.get(a.info.get("adapter_type"), 9), a.info.get("device", "")))


def find_adapter():
    """The Vulkan adapter an executor would use, or None."""
    found = vulkan_adapters()
    return found[0] if found else None


class Buffer:
    __slots__ = ("nbytes", "gpu", "serial", "offset")
    _count = 0

    def __init__(self, nbytes: int, gpu, offset: int = 0):
        self.nbytes = int(nbytes)
        self.gpu = gpu
        self.offset = int(offset)  # a view: where it starts in ``gpu`` (a multiple of the binding alignment)
        # Bind groups are cached by buffer serial, never reused (an id() could be after the buffer is freed).
        Buffer._count += 1
        self.serial = Buffer._count


class _Kernel:
    """One device function: its pipeline, the uniform with its constant operands, cached bind groups."""

    def __init__(self, device, entry: dict, code: str):
        import wgpu

        self.entry = entry
        self.grid = tuple(int(g) for g in entry["grid"])
        module = device.create_shader_module(code=code, label=entry["entry"])
        self.pipeline = device.create_compute_pipeline(
            layout="auto", compute={"module": module, "entry_point": entry["entry"]}, label=entry["entry"]
        )
        self.layout = self.pipeline.get_bind_group_layout(0)
        words = [np.array(p["value"], dtype=p["dtype"]).view(np.uint32).item() for p in entry.get("pods", [])]
        words.append(self.grid[0])  # packGridDimX: grids stay below 65536, so blockIdx.x is never packed
        data = np.array(words, np.uint32).tobytes()
        self.uniform = device.create_buffer_with_data(data=data, usage=wgpu.BufferUsage.UNIFORM)
        self.uniform_size = len(data)
        self.bind_groups: dict = {}


class Executor:
    backend = "vulkan"

    def __init__(self, artifact_dir: Path, kernels: dict, num_threads: int | None = None):
        del num_threads  # the device schedules its own threads
        self.artifact_dir = Path(artifact_dir)
        self.kernels = kernel_table(kernels)
        self._code: dict[str, str] = {}
        for name, info in sorted(self.kernels.items()):
            for entry in info["launch"]:
                if "grid" not in entry:
                    raise ArtifactError(f"kernel {name} was not built for vulkan (no launch grid in the manifest)")
                path = self.artifact_dir / entry["file"]
                if not path.is_file():
                    raise ArtifactError(f"kernel shader {path} is missing; rebuild the artifact for vulkan")
                self._code[entry["entry"]] = path.read_text(encoding="utf-8")
        adapters = vulkan_adapters()
        if not adapters:
            raise NoDeviceError(
                "no Vulkan adapter found: install a Vulkan driver (on a machine without a GPU, Mesa's lavapipe: "
                "`apt-get install mesa-vulkan-drivers`) and the `wgpu` package, or build for the cpu target"
            )
        self.adapter = adapters[0]
        features = []
        if any("enable f16" in code for code in self._code.values()):
            if "shader-f16" not in self.adapter.features:
                raise NoDeviceError(
                    f"Vulkan adapter {self.adapter.info['device']} lacks shader-f16, which these "
                    "kernels need; build them without f16 arithmetic or use another device"
                )
            features.append("shader-f16")
        lim = self.adapter.limits
        self.max_binding = int(lim["max-storage-buffer-binding-size"])
        self.device = self.adapter.request_device_sync(
            required_features=features,
            required_limits={
                "max-storage-buffer-binding-size": self.max_binding,
                "max-buffer-size": int(lim["max-buffer-size"]),
            },
        )
        self._kernels: dict[str, _Kernel] = {}
        self._encoder = None
        self._fence: Buffer | None = None

    # --- device -------------------------------------------------------------------------------------------------

    def device_info(self) -> dict:
        info = self.adapter.info
        # WebGPU does not report device memory; memory checks are skipped when "memory_bytes" is absent.
        return {
            "backend": "vulkan",
            "name": info.get("device", ""),
            "adapter": info.get("device", ""),
            "type": info.get("adapter_type", ""),
            "driver": info.get("description", ""),
        }

    def alloc(self, nbytes: int) -> Buffer:
        import wgpu

        usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        return Buffer(nbytes, self.device.create_buffer(size=max(4, _round4(nbytes)), usage=usage))

    def view(self, buf: Buffer, offset: int, nbytes: int) -> Buffer:
        """Bytes [offset, offset + nbytes) of ``buf`` as a buffer of their own (a slice the memory plan aliased)."""
        return Buffer(nbytes, buf.gpu, buf.offset + offset)

    def free(self, buf: Buffer) -> None:
        self._submit()  # work recorded against the buffer must be submitted before it goes
        self.synchronize()
        buf.gpu.destroy()

    def upload(self, buf: Buffer, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if data.size > buf.nbytes:
            raise LaunchError(f"upload of {data.size} bytes into a buffer of {buf.nbytes}")
        if data.size % 4:  # queue writes are whole words
            data = np.concatenate([data, np.zeros(4 - data.size % 4, np.uint8)])
        self._submit()
        self.device.queue.write_buffer(buf.gpu, 0, data)

    def download(self, buf: Buffer, shape, dtype) -> np.ndarray:
        n = nbytes_of(tuple(shape), dtype)
        self._submit()
        raw = self.device.queue.read_buffer(buf.gpu, 0, max(4, _round4(n)))
        return np.frombuffer(raw, np.uint8, count=n).view(dtype).reshape(shape).copy()

    def synchronize(self) -> None:
        self._submit()
        # wgpu 0.32's on_submitted_work_done_sync fails inside cffi (a callback signature mismatch); reading a
        # buffer back waits for the queue instead, since the copy runs after everything submitted before it.
        if self._fence is None:
            self._fence = self.alloc(4)
        self.device.queue.read_buffer(self._fence.gpu, 0, 4)

    # --- kernels ------------------------------------------------------------------------------------------------

    def _kernel(self, entry: dict) -> _Kernel:
        k = self._kernels.get(entry["entry"])
        if k is None:  # pipelines are compiled on first use: lavapipe takes a while per shader
            k = self._kernels[entry["entry"]] = _Kernel(self.device, entry, self._code[entry["entry"]])
        return k

    def launch(self, kernel_name: str, args: list[tuple[Buffer, tuple[int, ...], str]]) -> None:
        info = lookup(self.kernels, kernel_name)
        layouts = check_args(kernel_name, info, args)
        by_name = {p["name"]: (buf, nbytes_of(*lay)) for p, (buf, _, _), lay in zip(info["params"], args, layouts)}
        if self._encoder is None:
            self._encoder = self.device.create_command_encoder()
        compute = self._encoder.begin_compute_pass()
        for entry in info["launch"]:
            k = self._kernel(entry)
            bound = [by_name[b] for b in entry["buffers"]]
            key = tuple((buf.serial, size) for buf, size in bound)
            group = k.bind_groups.get(key)
            if group is None:
                for (_, size), pname in zip(bound, entry["buffers"]):
                    if size > self.max_binding:
                        raise LaunchError(
                            f"kernel {kernel_name}: {pname!r} needs a {size}-byte binding; this "
                            f"adapter allows {self.max_binding}"
                        )
                entries = [
                    {"binding": i, "resource": {"buffer": buf.gpu, "offset": buf.offset, "size": max(4, _round4(size))}}
                    for i, (buf, size) in enumerate(bound)
                ]
                entries.append(
                    {"binding": len(bound), "resource": {"buffer": k.uniform, "offset": 0, "size": k.uniform_size}}
                )
                group = k.bind_groups[key] = self.device.create_bind_group(layout=k.layout, entries=entries)
            compute.set_pipeline(k.pipeline)
            compute.set_bind_group(0, group)
            compute.dispatch_workgroups(*k.grid)
        compute.end()

    def _submit(self) -> None:
        if self._encoder is not None:
            self.device.queue.submit([self._encoder.finish()])
            self._encoder = None
