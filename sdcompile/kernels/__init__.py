"""Kernel algorithms as TVM TE computes, independent of target. Schedules live in ``schedules/``.

TVM is imported on first use, not on import: the IR and passes import ``spec`` without paying for the compiler.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from sdcompile.kernels.spec import KERNELS, KernelSpec

if TYPE_CHECKING:
    from tvm import te


def te_compute(spec: KernelSpec) -> list[te.Tensor]:
    """The kernel's tensors in ``spec.params`` order (inputs, then the output); the module is the kernel op's
    declaration in ``spec.KERNELS``."""
    return import_module(f"sdcompile.kernels.{KERNELS[spec.op].module}").compute(spec)


def supported_types() -> tuple[str, ...]:
    """Weight types with a native decoder (``linear`` and ``embed`` accept all of them)."""
    return import_module("sdcompile.kernels.dequant").supported_types()


__all__ = ["KernelSpec", "te_compute", "supported_types"]
