"""Executors run compiled kernels on one device. They read the kernel description that the compiler's
``build_kernels`` wrote into the manifest and import nothing from the compiler.

Every executor has the same interface::

    ex = Executor(artifact_dir, kernels, num_threads=None)
    buf = ex.alloc(nbytes); ex.upload(buf, array); ex.launch(name, [(buf, shape, dtype), ...]); ex.synchronize()
    out = ex.download(buf, shape, dtype)

``kernels`` is the dict ``build_kernels`` returned (or just its ``"kernels"`` mapping). Launch arguments come in
the kernel's parameter order; a raw (quantized) weight may be given with its logical shape or as (words,) uint32.
"""

from __future__ import annotations

from pathlib import Path

from runtime.executors.common import kernel_table

BACKENDS = ("cpu", "vulkan")


def create(backend: str, artifact_dir: Path, kernels: dict, num_threads: int | None = None):
    """The executor for ``backend``; imported lazily so that a CPU-only install never loads wgpu."""
    if backend == "cpu":
        from runtime.executors.cpu import Executor
    elif backend == "vulkan":
        from runtime.executors.vulkan import Executor
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return Executor(artifact_dir, kernels, num_threads)


__all__ = ["BACKENDS", "create", "kernel_table"]
