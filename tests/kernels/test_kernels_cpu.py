"""Kernels built for the CPU (LLVM) through ``build_kernels`` and run by the CPU executor, against numpy."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from runtime.errors import ArtifactError, LaunchError
from runtime.executors.cpu import Executor
from sdcompile.codegen.build import build_kernels, lower_gpu
from sdcompile.kernels import spec as S
from tests.kernels import fixtures as fx
from tests.kernels import kernel_cases as kc

SPECS = kc.all_specs()
DECODE = kc.decode_specs()


# One build for the whole module: LLVM compile time dominates the suite.
built = fx.built_fixture("cpu", lambda: SPECS + DECODE, "cpu_kernels")
ex = fx.executor_fixture("cpu")


def test_description_is_json_and_complete(built):
    out, result = built
    assert json.loads(json.dumps(result)) == result
    assert result["target"] == "cpu" and result["files"] == ["kernels_cpu.so"]
    assert result["cpu"]["mcpu"]
    assert sorted(result["kernels"]) == sorted(s.name for s in SPECS + DECODE)
    lin = result["kernels"][SPECS[0].name]
    assert lin["op"] == "linear" and lin["attrs"]["wtype"] == "f32"
    assert [p["name"] for p in lin["params"]] == ["x", "w", "y"]
    assert lin["launch"] == [{"entry": SPECS[0].name, "file": "kernels_cpu.so", "buffers": ["x", "w", "y"]}]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_kernel_matches_numpy(ex, spec):
    case = kc.make_case(spec)
    kc.check(case, kc.run_case(ex, case))


@pytest.mark.parametrize("spec", DECODE, ids=lambda s: s.name)
def test_decode_is_exact_on_special_values(ex, spec):
    case = kc.decode_case(spec)
    kc.check_exact(case, kc.run_case(ex, case))


def test_repeated_launches_reuse_buffers(ex):
    # Cached tensor views must see new contents, and a larger-than-needed buffer must work.
    spec = S.layer_norm(7, 96, 1e-5)
    a, b = kc.make_case(spec, seed=1), kc.make_case(spec, seed=2)
    bufs = [ex.alloc(x.nbytes + 256) for x in a.inputs] + [ex.alloc(7 * 96 * 4 + 256)]
    args = [(buf, x.shape, str(x.dtype)) for buf, x in zip(bufs, a.inputs)] + [(bufs[-1], (7, 96), "float32")]
    for case in (a, b):
        for buf, x in zip(bufs, case.inputs):
            ex.upload(buf, x)
        ex.launch(spec.name, args)
        ex.synchronize()
        kc.check(case, ex.download(bufs[-1], (7, 96), "float32"))


def test_user_errors(ex, built):
    spec = S.layer_norm(7, 96, 1e-5)
    buf = ex.alloc(7 * 96 * 4)
    with pytest.raises(ArtifactError, match="not in this artifact"):
        ex.launch("no_such_kernel", [])
    with pytest.raises(LaunchError, match="takes 4 arguments"):
        ex.launch(spec.name, [(buf, (7, 96), "float32")])
    with pytest.raises(LaunchError, match="must be float32"):
        ex.launch(spec.name, [(buf, (7, 95), "float32")] * 4)
    with pytest.raises(LaunchError, match="bytes, needs"):
        ex.launch(
            spec.name,
            [(ex.alloc(16), (7, 96), "float32")] + [(buf, (96,), "float32")] * 2 + [(buf, (7, 96), "float32")],
        )
    out, result = built
    with pytest.raises(ArtifactError, match="missing"):
        Executor(out / "nowhere", result)


def test_same_specs_give_same_bytes(tmp_path):
    specs = [S.linear(7, 64, 256, "q4_0", bias=True), S.layer_norm(7, 96, 1e-5)]
    results = [build_kernels(list(order), "cpu", tmp_path / str(i)) for i, order in enumerate((specs, specs[::-1]))]
    assert results[0] == results[1]
    assert (tmp_path / "0/kernels_cpu.so").read_bytes() == (tmp_path / "1/kernels_cpu.so").read_bytes()


def test_lower_gpu_gives_cuda_source_without_a_gpu(tmp_path):
    specs = [S.linear(7, 64, 256, "q4_0", bias=True, act="gelu"), S.attention(2, 7, 2, 16, True)]
    source, launch = lower_gpu(specs, "cuda")
    assert sorted(launch) == sorted(s.name for s in specs)
    for s in specs:
        (entry,) = launch[s.name]
        assert f'extern "C" __global__ void __launch_bounds__({np.prod(entry["block"])}) {entry["entry"]}(' in source
        assert sorted(entry["buffers"]) == sorted(p.name for p in s.params) and entry["pods"] == []
        assert 1 <= np.prod(entry["block"]) <= 256 and entry["grid"][2] == 1
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed: CUDA source generated but not compiled")
    (tmp_path / "k.cu").write_text(source)
    subprocess.run(
        [nvcc, "--cubin", "-arch=sm_75", "-o", str(tmp_path / "k.cubin"), str(tmp_path / "k.cu")],
        check=True,
        capture_output=True,
    )


def test_missing_kernels_are_user_errors(monkeypatch):
    # Legalization decides fallbacks from these facts; reaching codegen without one is a NoKernelError, not a crash.
    from schedules.gpu import MAX_ATTENTION_SEQ
    from sdcompile.errors import NoKernelError
    from sdcompile.kernels import dequant, supported_types

    assert set(kc.GGUF_TYPES) <= set(supported_types())
    monkeypatch.delitem(dequant.DECODERS, "q2_k")  # every ggml type has a decoder now: pretend one is missing
    with pytest.raises(NoKernelError, match="q2_k"):
        lower_gpu([S.linear(1, 64, 256, "q2_k")], "webgpu")
    with pytest.raises(NoKernelError, match="tiled kernel"):
        lower_gpu([S.attention(1, MAX_ATTENTION_SEQ + 1, 1, 64, False)], "webgpu")


def test_exp_is_vector_code_within_an_ulp():
    # Kernels' exp on the CPU is schedules.cpu._vector_exp (a lowering rule for LLVM targets), not libm's expf one
    # lane at a time: check it on a vectorized loop over the values softmax and quick_gelu produce, and the edges.
    import tvm
    from tvm import te

    import schedules.cpu  # noqa: F401 - registers the rule (scheduled_module imports it before any CPU compile)
    from sdcompile.codegen import tvm_layer

    edges = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, 88.72, 88.7229, 89.0, -87.3, -100.0, -103.9, -104.5]
    edges += [np.finfo(np.float32).min, np.finfo(np.float32).max, 0.5, -0.5, 1.0, -1.0]
    x = np.concatenate([edges, np.random.default_rng(0).uniform(-110, 100, 4096 - len(edges))]).astype(np.float32)
    a = te.placeholder(x.shape, "float32", name="a")
    b = te.compute(x.shape, lambda i: te.exp(a[i]), name="b")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
    (i,) = sch.get_loops(sch.get_sblock("b"))
    sch.vectorize(sch.split(i, [None, 16])[1])
    exe = tvm_layer.compile_cpu(sch.mod, tvm_layer.cpu_target())
    assert "expf" not in exe.mod.inspect_source("asm")
    out = tvm.runtime.tensor(np.zeros_like(x))
    exe.mod["main"](tvm.runtime.tensor(x), out)
    got = out.numpy()
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
        ref32 = ref.astype(np.float32)
    finite = np.isfinite(ref32)
    assert np.array_equal(got[~finite], ref32[~finite], equal_nan=True)  # NaN stays NaN; +inf on f32 overflow
    ulp = np.maximum(np.spacing(ref32[finite]), np.float32(2.0**-149)).astype(np.float64)
    err = np.abs(got[finite] - ref[finite]) / ulp
    assert err.max() <= 1.0, (x[finite][np.argmax(err)], err.max())


def test_kernels_built_for_another_cpu(tmp_path, monkeypatch):
    """``SDCOMPILE_MCPU`` builds for the CPU it names instead of this one: an AVX2 CPU (LLVM's Haswell) here gives
    code and a manifest that need AVX2 and FMA but no AVX-512, the optional units this host may have (AMX,
    AVX512_BF16, VNNI) are not used, and the kernels still give numpy's answer on this host."""
    from schedules import cpu_fma
    from sdcompile.codegen import tvm_layer

    fx.skip_unless_host_runs("avx2")
    monkeypatch.setenv("SDCOMPILE_MCPU", "haswell")
    assert tvm_layer.cpu_target() == {"kind": "llvm", "mcpu": "haswell"}
    assert not (tvm_layer.host_amx() or tvm_layer.host_avx512_bf16() or tvm_layer.host_avx512_vnni())
    assert cpu_fma.target_isa() == "avx2"
    spec = S.KernelSpec.make("linear", M=64, N=32, K=48, wtype="f32", bias=True, residual=False, act="none")
    result = build_kernels([spec], "cpu", tmp_path)
    assert result["cpu"]["mcpu"] == "haswell"
    assert {"avx2", "fma"} <= set(result["cpu"]["requires"]) and "avx512f" not in result["cpu"]["requires"]
    rng = np.random.default_rng(0)
    arrays, w = fx.gemm_inputs(spec, rng)
    got = fx.run_spec(Executor(tmp_path, result, num_threads=2), spec, arrays)
    want = arrays["x"].astype(np.float64) @ w.T + arrays["bias"]
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)
