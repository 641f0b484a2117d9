"""What the executors share: reading the kernel table and checking launch arguments against it."""

from __future__ import annotations

import math

import numpy as np

from runtime.errors import ArtifactError, LaunchError

try:  # registers "bfloat16" with numpy (activations stored in bf16); TVM depends on it, so it is there with TVM
    import ml_dtypes  # noqa: F401
except ImportError:  # pragma: no cover - a bf16 artifact then fails at np.dtype("bfloat16") with numpy's message
    pass


def kernel_table(kernels: dict) -> dict[str, dict]:
    """Accept the whole ``build_kernels`` result or its ``"kernels"`` mapping."""
    if "kernels" in kernels and "target" in kernels:
        kernels = kernels["kernels"]
    for name, info in kernels.items():
        if not isinstance(info, dict) or "params" not in info or "launch" not in info:
            raise ArtifactError(
                f"kernel {name!r} in the manifest has no params/launch description; rebuild the artifact"
            )
    return kernels


def lookup(kernels: dict[str, dict], name: str) -> dict:
    info = kernels.get(name)
    if info is None:
        raise ArtifactError(f"kernel {name!r} is not in this artifact's manifest; rebuild the artifact")
    return info


def arg_layout(name: str, param: dict, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
    """The (shape, dtype) a kernel receives for one argument.

    Raw weights reach kernels as uint32 words whatever their logical shape, and so do lookup tables (kind "lut");
    every other argument must match the parameter's shape (element count) and dtype exactly.
    """
    if param["kind"] in ("raw", "lut"):
        return (int(param["words"]),), "uint32"
    want = tuple(int(d) for d in param["shape"])
    if np.dtype(dtype) != np.dtype(param["dtype"]) or math.prod(shape) != math.prod(want):
        raise LaunchError(
            f"kernel {name}: argument {param['name']!r} must be {param['dtype']}{list(want)}, got {dtype}{list(shape)}"
        )
    return want, str(np.dtype(param["dtype"]))


def nbytes_of(shape: tuple[int, ...], dtype: str) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def check_args(name: str, info: dict, args: list) -> list[tuple[tuple[int, ...], str]]:
    params = info["params"]
    if len(args) != len(params):
        raise LaunchError(
            f"kernel {name} takes {len(params)} arguments ({', '.join(p['name'] for p in params)}), got {len(args)}"
        )
    layouts = []
    for p, (buf, shape, dtype) in zip(params, args):
        layout = arg_layout(name, p, tuple(shape), dtype)
        if nbytes_of(*layout) > buf.nbytes:
            raise LaunchError(
                f"kernel {name}: buffer for {p['name']!r} has {buf.nbytes} bytes, needs {nbytes_of(*layout)}"
            )
        layouts.append(layout)
    return layouts
