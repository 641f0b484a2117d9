"""What every kernel test module needs: build a set of specs once per module for a target, an executor over the
build, and (Vulkan) a skip where no adapter exists."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def vulkan_adapter():
    try:
        from runtime.executors.vulkan import find_adapter
    except ImportError:  # wgpu not installed
        return None
    return find_adapter()


def vulkan_marks() -> list:
    """pytestmark for a Vulkan module: the ``vulkan`` marker, skipped without an adapter."""
    return [
        pytest.mark.vulkan,
        pytest.mark.skipif(
            vulkan_adapter() is None, reason="no Vulkan adapter (install mesa-vulkan-drivers for lavapipe, and wgpu)"
        ),
    ]


def built_fixture(target: str, specs: Callable[[], list] | list, name: str, env: dict[str, str] | None = None):
    """A module-scoped fixture: (directory, build description) of ``specs`` built for ``target``, with the
    environment variables ``env`` set during the build (``SDCOMPILE_NO_AMX``: test the paths AMX would take over)."""

    @pytest.fixture(scope="module")
    def built(tmp_path_factory):
        from sdcompile.codegen.build import build_kernels

        out = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in (env or {}).items():
                mp.setenv(k, v)
            return out, build_kernels(specs() if callable(specs) else specs, target, out)

    return built


def executor_fixture(target: str):
    """A module-scoped fixture: the target's executor over the module's ``built`` fixture (CPU: 2 threads)."""

    @pytest.fixture(scope="module")
    def ex(built):
        out, result = built
        if target == "cpu":
            from runtime.executors.cpu import Executor

            return Executor(out, result, num_threads=2)
        from runtime.executors.vulkan import Executor

        return Executor(out, result)

    return ex


def launch(ex, name: str, inputs: list, out_shape: tuple[int, ...]):
    """Run kernel ``name`` on ``ex`` with the arrays ``inputs`` (uploaded in order) and one f32 output of
    ``out_shape``, which it returns."""
    import numpy as np

    args = []
    for a in inputs:
        buf = ex.alloc(a.nbytes)
        ex.upload(buf, a)
        args.append((buf, a.shape, str(a.dtype)))
    y = ex.alloc(int(np.prod(out_shape)) * 4)
    args.append((y, out_shape, "float32"))
    ex.launch(name, args)
    return ex.download(y, out_shape, "float32")
