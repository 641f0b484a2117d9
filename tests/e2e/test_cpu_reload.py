"""The CPU executor after an artifact is recompiled in place: a second load in the same process runs the new
kernels (the system loader would hand back the library it already holds for that path), and a manifest whose
kernel record disagrees with the compiled code is one clear error, not TVM's traceback."""

from __future__ import annotations

import numpy as np
import pytest


def test_recompiled_in_place_runs_the_new_kernels(tiny_ldm_safetensors, tiny_ids, tmp_path):
    import runtime
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions

    out = tmp_path / "art"
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu", type="f32"))
    a = runtime.load(out, num_threads=1).run({"input_ids": tiny_ids})["last_hidden_state"]
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu", type="q4_0"))
    b = runtime.load(out, num_threads=1).run({"input_ids": tiny_ids})["last_hidden_state"]
    c = runtime.load(out, num_threads=1).run({"input_ids": tiny_ids})["last_hidden_state"]
    np.testing.assert_array_equal(b, c)
    assert np.abs(a - b).max() > 1e-3  # q4_0 kernels ran, not the f32 ones loaded first (their names differ too)


def test_kernel_that_refuses_its_arguments_is_a_launch_error(tiny_ldm_safetensors, tmp_path):
    from runtime.errors import LaunchError
    from runtime.executors.cpu import Executor
    from sdcompile.codegen.build import build_kernels
    from sdcompile.kernels.spec import KernelSpec

    spec = KernelSpec.make("unary", n=64, fn="silu")
    built = build_kernels([spec], "cpu", tmp_path)
    info = built["kernels"][spec.name]
    for p in info["params"]:  # the record says 32 elements where the code was compiled for 64
        p["shape"] = [32]
    ex = Executor(tmp_path, built, num_threads=1)
    bufs = [ex.alloc(256), ex.alloc(256)]
    with pytest.raises(LaunchError, match="does not match the compiled kernels; recompile"):
        ex.launch(spec.name, [(bufs[0], (32,), "float32"), (bufs[1], (32,), "float32")])
