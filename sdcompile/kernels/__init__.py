"""Kernel algorithms as TVM TE computes, independent of target. Schedules live in ``schedules/``."""

from __future__ import annotations

from collections.abc import Callable

from tvm import te

from sdcompile.kernels import attention, embed, linear, norm
from sdcompile.kernels.dequant import supported_types
from sdcompile.kernels.spec import KernelSpec

_COMPUTES: dict[str, Callable[[KernelSpec], list[te.Tensor]]] = {
    "embed": embed.compute,
    "linear": linear.compute,
    "layer_norm": norm.compute,
    "attention": attention.compute,
}


def te_compute(spec: KernelSpec) -> list[te.Tensor]:
    """The kernel's tensors in ``spec.params`` order (inputs, then the output)."""
    return _COMPUTES[spec.op](spec)


__all__ = ["KernelSpec", "te_compute", "supported_types"]
