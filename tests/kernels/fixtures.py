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


# The vector ISAs the 16-lane CPU kernels build for (``schedules.cpu_fma.target_isa``), each as the environment of
# its build: the host's AVX-512, and AVX2 as LLVM's Haswell (``SDCOMPILE_MCPU``), which every x86-64 machine with
# AVX2 runs, so that the AVX2 kernels are checked on AVX-512 machines too (and the AVX-512 ones skip on AVX2 ones)
ISA_BUILDS = {"avx512": {}, "avx2": {"SDCOMPILE_MCPU": "haswell"}}


def built_fixture(
    target: str, specs: Callable[[], list] | list, name: str, env: dict[str, str] | None = None, isas: bool = False
):
    """A module-scoped fixture: (directory, build description) of ``specs`` built for ``target``, with the
    environment variables ``env`` set during the build (``SDCOMPILE_NO_AMX``: test the paths AMX would take over);
    with ``isas``, once per ``ISA_BUILDS`` entry this host can run (the tests that use it run once per build)."""

    @pytest.fixture(scope="module", params=list(ISA_BUILDS) if isas else [None])
    def built(request, tmp_path_factory):
        from sdcompile.codegen.build import build_kernels

        isa = request.param
        if isa is not None:
            skip_unless_host_runs(isa)
        out = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {**(env or {}), **(ISA_BUILDS[isa] if isa else {})}.items():
                mp.setenv(k, v)
            return out, build_kernels(specs() if callable(specs) else specs, target, out)

    return built


def skip_unless_host_runs(isa: str) -> None:
    """Skip unless this host runs code built for ``isa`` ("avx512": the host's own build takes the AVX-512 kernels;
    "avx2": the host has AVX2 and FMA)."""
    from schedules import cpu_fma
    from sdcompile.codegen import tvm_layer

    if isa == "avx512" and cpu_fma.target_isa() != "avx512":
        pytest.skip("needs a CPU with AVX-512")
    if isa == "avx2" and not {"avx2", "fma"} <= set(tvm_layer._cpuinfo("flags").split()):
        pytest.skip("needs a CPU with AVX2 and FMA")


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


def run_spec(ex, spec, arrays: dict):
    """Run ``spec``'s kernel on ``ex`` with ``arrays`` (parameter name -> array; a raw weight as its uint32 words,
    activations cast to the parameter's dtype) and return its output, downloaded in the output's own dtype."""
    import numpy as np

    args = []
    for p in spec.params:
        if p.is_output:
            args.append((ex.alloc(max(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize, 4)), p.shape, p.dtype))
            continue
        a = arrays[p.name] if p.kind == "raw" else np.asarray(arrays[p.name]).astype(p.dtype)
        buf = ex.alloc(max(a.nbytes, 4))
        ex.upload(buf, a)
        args.append((buf, (p.words(),) if p.kind == "raw" else p.shape, "uint32" if p.kind == "raw" else p.dtype))
    ex.launch(spec.name, args)
    out = spec.params[-1]
    return ex.download(args[-1][0], out.shape, out.dtype)


def weight_words(spec, w):
    """(storage words, the values they hold as float64) of W [N, K] in the spec's weight type."""
    import numpy as np

    from sdcompile.quant.reference import dequantize, quantize

    wtype = str(spec.attr("wtype"))
    raw = quantize(w.astype(np.float32), wtype)
    words = np.zeros(spec.param("w").words() * 4, np.uint8)
    words[: raw.size] = raw
    return words.view(np.uint32), dequantize(raw, wtype, w.shape).astype(np.float64)


def packed_words(spec, words):
    """The storage words of W as the spec stores them: ``words`` (row-major, as ``weight_words`` gives them) reordered
    into the spec's ``wlayout``, or as they are without one."""
    import numpy as np

    from sdcompile.kernels import layouts
    from sdcompile.kernels.spec import gemm_mnk
    from sdcompile.quant.types import get as get_type

    if not spec.attr("wlayout"):
        return words
    _, N, K = gemm_mnk(spec)
    raw = np.ascontiguousarray(words).view(np.uint8).copy()
    size = get_type(str(spec.attr("wtype"))).row_bytes(K) * N
    raw[:size] = layouts.pack(str(spec.attr("wlayout")), raw[:size], N, K)
    return raw.view(np.uint32)


def gemm_inputs(spec, rng):
    """(arrays for ``run_spec``, W's values as float64) for a linear or conv2d spec: Gaussian x (as its parameter
    stores it: f32, or rounded to f16 / bf16), W ~ 0.1 N(0, 1) in the spec's weight type, bias and residual where
    it has them."""
    import numpy as np

    from sdcompile.kernels.spec import gemm_mnk

    def stored(name, a):
        return a.astype(spec.param(name).dtype).astype(np.float32)

    M, N, K = gemm_mnk(spec)
    words, w = weight_words(spec, rng.standard_normal((N, K)) * 0.1)
    arrays = {"x": stored("x", rng.standard_normal(spec.param("x").shape)), "w": words}
    if spec.attr("bias"):
        arrays["bias"] = rng.standard_normal(N).astype(np.float32)
    if spec.attr("residual"):
        arrays["res"] = stored("res", rng.standard_normal((M, N)))
    return arrays, w


def check_nan_rows_and_columns(ex, spec, row: int, col: int) -> None:
    """A NaN in row ``row`` of x spoils that row of y, a NaN weight in row ``col`` of W that column, and nothing
    else: no NaN lost in a rounding, none smeared across a register block's rows or a vector's lanes."""
    import numpy as np

    from sdcompile.kernels.spec import gemm_mnk

    M, N, K = gemm_mnk(spec)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[row, 17] = np.nan
    w = rng.standard_normal((N, K)) * 0.1
    w[col, 6] = np.nan
    got = run_spec(ex, spec, {"x": x, "w": weight_words(spec, w)[0], "bias": np.zeros(N, np.float32)})
    bad = np.zeros((M, N), bool)
    bad[row, :] = True
    bad[:, col] = True
    np.testing.assert_array_equal(np.isnan(got.reshape(M, N)), bad)
