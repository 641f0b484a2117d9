"""CUDA build without a GPU: nvcc fatbins for a list of architectures, device probing, build selection, executor.

Needs nvcc (CUDA 13) and cuobjdump (the nvidia-cuda-cuobjdump pip package); no GPU and no driver. Each nvcc run
for the five default architectures takes a second or two for the tiny kernel used here, so the default build is
made once per module.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess

import numpy as np
import pytest

from runtime.device import DeviceList, parse_simulated, probe_cuda, select_cuda_build
from runtime.errors import NoCompatibleBuild, RuntimeFailure
from sdcompile.codegen import cuda_build as cb
from sdcompile.errors import OptionError, ToolchainError

DEFAULT_SASS = ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]


def _tvm_cuda_source() -> str:
    """CUDA C for y = 2*a + b, lowered by TVM for an sm_75 target (source only: no driver on CI)."""
    tvm = pytest.importorskip("tvm")
    from tvm import te

    n = 256
    a = te.placeholder((n,), name="a", dtype="float32")
    b = te.placeholder((n,), name="b", dtype="float32")
    y = te.compute((n,), lambda i: a[i] * 2.0 + b[i], name="y")
    f = te.create_prim_func([a, b, y]).with_attr("global_symbol", "axpy")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"axpy": f}))
    sch.work_on("axpy")
    (i,) = sch.get_loops(sch.get_sblock("y"))
    bx, tx = sch.split(i, [None, 64])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    ex = tvm.compile(sch.mod, target=tvm.target.Target({"kind": "cuda", "arch": "sm_75"}))
    return ex.mod.imports[0].inspect_source()


@pytest.fixture(scope="module")
def source() -> str:
    try:
        cb.find_nvcc()
    except ToolchainError as e:
        pytest.skip(str(e))
    src = _tvm_cuda_source()
    assert "axpy_kernel" in src
    return src


@pytest.fixture(scope="module")
def default_build(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "kernels_cuda.fatbin"
    rec = cb.build_fatbin(source, cb.DEFAULT_ARCHS, out)
    return out, rec


# --------------------------------------------------------------------------------------------------- fatbin


def test_default_archs_constant():
    assert cb.DEFAULT_ARCHS == DEFAULT_SASS
    assert cb.DEFAULT_PTX == "compute_90"
    assert cb.split_archs(None) == (DEFAULT_SASS, ["compute_90"])


def test_default_fatbin_holds_every_arch(default_build):
    out, rec = default_build
    assert out.is_file() and out.stat().st_size > 0
    assert cb.list_fatbin(out) == {"elf": DEFAULT_SASS, "ptx": ["compute_90"]}
    assert rec["file"] == "kernels_cuda.fatbin"
    assert rec["archs"] == DEFAULT_SASS
    assert rec["ptx"] == ["compute_90"]
    assert rec["nvcc_version"].startswith("13.")
    assert rec["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert rec["min_cc"] == "7.5"
    # No temporary file is left beside the output.
    assert [p.name for p in out.parent.iterdir()] == ["kernels_cuda.fatbin"]


def test_fatbin_contains_the_kernel_symbol(default_build):
    out, _ = default_build
    tool = cb.find_cuobjdump()
    res = subprocess.run([str(tool), "--dump-elf-symbols", str(out)], capture_output=True, text=True, check=True)
    assert "axpy_kernel" in res.stdout


def test_build_is_byte_deterministic(source, default_build, tmp_path):
    # Same source and architectures, given in another order, a different directory and file name: nvcc embeds
    # neither path, and the architecture list is normalised.
    out, rec = default_build
    again = tmp_path / "elsewhere" / "other_name.fatbin"
    rec2 = cb.build_fatbin(source, list(reversed(cb.DEFAULT_ARCHS)), again)
    assert again.read_bytes() == out.read_bytes()
    assert rec2["sha256"] == rec["sha256"]
    assert rec2["archs"] == rec["archs"]


def test_custom_arch_list(source, tmp_path):
    sass, ptx = cb.split_archs(cb.parse_arch_list("8.6,75"))
    assert (sass, ptx) == (["sm_75", "sm_86"], ["compute_86"])  # PTX for the newest listed, like nvcc -arch
    out = tmp_path / "k.fatbin"
    rec = cb.build_fatbin(source, sass, out, ptx=ptx[0])
    assert cb.list_fatbin(out) == {"elf": ["sm_75", "sm_86"], "ptx": ["compute_86"]}
    assert rec["min_cc"] == "7.5"


def test_explicit_ptx_and_no_ptx(source, tmp_path):
    sass, ptx = cb.split_archs(cb.parse_arch_list("sm_80,compute_75"))
    assert (sass, ptx) == (["sm_80"], ["compute_75"])
    out = tmp_path / "a.fatbin"
    rec = cb.build_fatbin(source, sass, out, ptx=ptx)
    assert cb.list_fatbin(out) == {"elf": ["sm_80"], "ptx": ["compute_75"]}
    assert rec["min_cc"] == "7.5"  # PTX compute_75 runs on 7.5 through the JIT
    out2 = tmp_path / "b.fatbin"
    rec2 = cb.build_fatbin(source, ["sm_86"], out2, ptx=None)
    assert cb.list_fatbin(out2) == {"elf": ["sm_86"], "ptx": []}
    assert rec2["ptx"] == [] and rec2["min_cc"] == "8.6"


def test_nvcc_error_is_a_toolchain_error(source, tmp_path):
    out = tmp_path / "bad.fatbin"
    with pytest.raises(ToolchainError) as ei:
        cb.build_fatbin(source + "\nthis is not cuda;\n", ["sm_75"], out, ptx=None)
    msg = str(ei.value)
    assert "nvcc" in msg and "error" in msg and "this" in msg  # nvcc's own diagnostics are in the message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary output was removed


def test_missing_nvcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    real = cb.Path.is_file
    monkeypatch.setattr(cb.Path, "is_file", lambda p: False if p.name == "nvcc" else real(p))
    with pytest.raises(ToolchainError, match="nvcc .*not found.*CUDA_HOME"):
        cb.build_fatbin("", ["sm_75"], tmp_path / "x.fatbin")


def test_cuobjdump_is_found_in_the_pip_package():
    tool = cb.find_cuobjdump()
    assert tool.name == "cuobjdump"
    if shutil.which("cuobjdump") is None:
        assert tool.parent.name == "bin" and tool.parent.parent.parent.name == "nvidia"


def test_build_cuda_with_real_specs(tmp_path):
    """The whole cuda section from real kernel specs: TVM's CUDA C for every op, built for the default archs."""
    try:
        cb.find_nvcc()
    except ToolchainError as e:
        pytest.skip(str(e))
    from sdcompile.kernels import spec as ks

    specs = [
        ks.layer_norm(M=2, D=64, eps=1e-5),
        ks.linear(M=2, N=32, K=64, wtype="q8_0", bias=True),
        ks.embed(M=4, S=4, V=16, D=64, wtype="q4_0"),
        ks.attention(B=1, S=4, H=2, Dh=32, causal=True),
    ]
    messages = []
    sec = cb.build_cuda(specs, None, tmp_path, progress=messages.append)
    assert sec["target"] == "cuda"
    assert sec["files"] == ["kernels_cuda.cu", "kernels_cuda.fatbin"]
    assert (tmp_path / "kernels_cuda.cu").read_text().strip()
    assert cb.list_fatbin(tmp_path / "kernels_cuda.fatbin") == {"elf": DEFAULT_SASS, "ptx": ["compute_90"]}
    assert sec["build"]["archs"] == DEFAULT_SASS and sec["build"]["min_cc"] == "7.5"
    assert set(sec["kernels"]) == {s.name for s in specs}
    for s in specs:
        k = sec["kernels"][s.name]
        assert [p["name"] for p in k["params"]] == [p.name for p in s.params]
        assert k["launch"]
        for d in k["launch"]:
            assert ("entry" in d or "func" in d) and len(d["grid"]) == 3 and len(d["block"]) == 3
    raw = sec["kernels"][specs[1].name]["params"][1]
    assert raw["kind"] == "raw" and raw["words"] == 32 * 2 * 34 // 4 and raw["np_dtype"] == "uint32"
    assert messages


# --------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sm_75,sm_86", ["sm_75", "sm_86"]),
        ("75,86", ["sm_75", "sm_86"]),
        ("8.6", ["sm_86"]),
        ("compute_90", ["compute_90"]),
        ("86, sm_75 ,sm_86", ["sm_75", "sm_86"]),
        ("SM_90,compute_90,10.0", ["sm_90", "sm_100", "compute_90"]),
        ("12.0 120", ["sm_120"]),
    ],
)
def test_parse_arch_list(text, expected):
    assert cb.parse_arch_list(text) == expected


@pytest.mark.parametrize("text", ["sm_52", "5.2", "compute_52", "sm_70", "61"])
def test_too_old_arch_is_refused(text):
    with pytest.raises(OptionError) as ei:
        cb.parse_arch_list(text)
    msg = str(ei.value)
    assert "sm_75" in msg and "oldest" in msg  # what nvcc 13 supports
    assert "cpu or vulkan" in msg  # and what to do


@pytest.mark.parametrize("text", ["", " , ", "sm_99", "foo", "sm_8.6", "9", "sm_90a", "8.66"])
def test_bad_arch_strings(text):
    with pytest.raises(OptionError, match="--cuda-arch"):
        cb.parse_arch_list(text)


def test_build_fatbin_rejects_bad_arch(tmp_path):
    with pytest.raises(OptionError):
        cb.build_fatbin("", ["sm_52"], tmp_path / "x.fatbin")
    with pytest.raises(OptionError):
        cb.build_fatbin("", ["compute_90"], tmp_path / "x.fatbin")
    assert not (tmp_path / "x.fatbin").exists()


def test_nvcc_command_gencode():
    cmd = cb.nvcc_command("nvcc", ["sm_75", "sm_90"], ["compute_90"], "k.cu", "k.fatbin")
    assert cmd[:2] == ["nvcc", "--fatbin"] and "-O3" in cmd
    pairs = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-gencode"]
    assert pairs == ["arch=compute_75,code=sm_75", "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"]


# --------------------------------------------------------------------------------------------------- selection

DEFAULT_RECORD = {"archs": DEFAULT_SASS, "ptx": ["compute_90"]}


@pytest.mark.parametrize(
    "cc, expected",
    [
        ("7.5", "sm_75"),  # exact SASS
        ("8.0", "sm_80"),
        ("8.6", "sm_86"),
        ("8.7", "sm_86"),  # Jetson Orin: same major, lower minor
        ("8.9", "sm_89"),
        ("9.0", "sm_90"),
        ("10.0", "compute_90"),  # Blackwell: no SASS of its major, PTX through the JIT
        ("12.0", "compute_90"),
    ],
)
def test_select_cuda_build(cc, expected, monkeypatch):
    monkeypatch.setenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", f"Simulated GPU:{cc}:8")
    (dev,) = probe_cuda()
    assert dev["cc"] == cc
    assert select_cuda_build(DEFAULT_RECORD, dev) == expected
    # The manifest's whole cuda section works too.
    assert select_cuda_build({"target": "cuda", "build": DEFAULT_RECORD}, dev) == expected


def test_select_refuses_old_gpu_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", "GeForce GTX 970:5.2:4")
    (dev,) = probe_cuda()
    with pytest.raises(NoCompatibleBuild) as ei:
        select_cuda_build(DEFAULT_RECORD, dev)
    msg = str(ei.value)
    assert isinstance(ei.value, RuntimeFailure)
    assert "GeForce GTX 970" in msg and "5.2" in msg
    for a in DEFAULT_SASS + ["compute_90"]:
        assert a in msg
    assert "CUDA arch 520" in msg
    assert "vulkan" in msg  # nvcc 13 cannot target 5.2, so the advice is another target


def test_select_refuses_and_names_the_arch_to_add():
    rec = {"archs": ["sm_86"], "ptx": []}
    dev = {"index": 0, "name": "Tesla T4", "cc": "7.5"}
    with pytest.raises(NoCompatibleBuild) as ei:
        select_cuda_build(rec, dev)
    msg = str(ei.value)
    assert "7.5" in msg and "sm_86" in msg and "--cuda-arch sm_75" in msg
    # Newer major, no PTX: SASS never crosses a major version.
    with pytest.raises(NoCompatibleBuild, match="--cuda-arch sm_90"):
        select_cuda_build(rec, {"index": 1, "name": "H100", "cc": "9.0"})
    # A lower minor of the same major cannot run higher-minor SASS.
    with pytest.raises(NoCompatibleBuild, match="--cuda-arch sm_80"):
        select_cuda_build(rec, {"index": 0, "name": "A100", "cc": "8.0"})
    # PTX above the device is not usable either.
    with pytest.raises(NoCompatibleBuild):
        select_cuda_build({"archs": [], "ptx": ["compute_90"]}, {"name": "RTX 4090", "cc": "8.9"})


def test_select_prefers_highest_compatible():
    rec = {"archs": ["sm_80", "sm_86"], "ptx": ["compute_75", "compute_80"]}
    assert select_cuda_build(rec, {"cc": "8.9"}) == "sm_86"
    assert select_cuda_build(rec, {"cc": "7.5"}) == "compute_75"
    assert select_cuda_build(rec, {"cc": "9.0"}) == "compute_80"


def test_select_on_a_real_built_record(default_build):
    _, rec = default_build
    assert select_cuda_build(rec, {"cc": "8.7"}) == "sm_86"
    with pytest.raises(NoCompatibleBuild):
        select_cuda_build(rec, {"name": "GTX 970", "cc": "5.2"})


# --------------------------------------------------------------------------------------------------- probing


def test_probe_honours_simulation(monkeypatch):
    monkeypatch.setenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", "GeForce GTX 970:5.2:4")
    devs = probe_cuda()
    assert devs == [{"index": 0, "name": "GeForce GTX 970", "cc": "5.2", "total_mem": 4 << 30, "simulated": True}]


def test_simulation_formats():
    assert parse_simulated("A:8.6")[0]["total_mem"] is None
    two = parse_simulated("GTX 970:5.2:4;RTX 3090:8.6:24")
    assert [(d["index"], d["name"], d["cc"]) for d in two] == [(0, "GTX 970", "5.2"), (1, "RTX 3090", "8.6")]
    assert parse_simulated("Name: with colon:9.0:80")[0]["name"] == "Name: with colon"
    with pytest.raises(RuntimeFailure, match="NAME:CC"):
        parse_simulated("no capability here")
    with pytest.raises(RuntimeFailure, match="NAME:CC"):
        parse_simulated("GPU:86")


def test_probe_without_driver_is_empty_with_reason(monkeypatch):
    monkeypatch.delenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", raising=False)
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a CUDA driver is installed here")
    except OSError:
        pass
    devs = probe_cuda()
    assert isinstance(devs, DeviceList)
    assert devs == [] and "driver" in devs.reason


# --------------------------------------------------------------------------------------------------- executor


def test_executor_without_gpu_fails_cleanly(tmp_path, monkeypatch):
    from runtime.executors import cuda as cx

    monkeypatch.delenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", raising=False)
    if probe_cuda():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeFailure, match="cannot run the cuda target"):
        cx.Executor(tmp_path, {})


def test_executor_refuses_simulated_device(tmp_path, monkeypatch):
    from runtime.executors import cuda as cx

    monkeypatch.setenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", "Simulated:8.6:8")
    with pytest.raises(RuntimeFailure, match="real GPU"):
        cx.Executor(tmp_path, {})


def test_kernel_param_packing():
    from runtime.executors import cuda as cx

    ptrs = [0x7F0000001000, 0x7F0000002000, 0xFFFFFFFF00000000]
    arr, keep = cx.pack_kernel_params(ptrs, [{"dtype": "int32", "value": -7}, {"dtype": "float32", "value": 0.5}])
    got = [ctypes.cast(arr[i], ctypes.POINTER(ctypes.c_uint64)).contents.value for i in range(len(ptrs))]
    assert got == ptrs  # full 64-bit addresses, each behind its own pointer
    assert ctypes.cast(arr[3], ctypes.POINTER(ctypes.c_int32)).contents.value == -7  # then scalars, in C types
    assert ctypes.cast(arr[4], ctypes.POINTER(ctypes.c_float)).contents.value == 0.5
    assert len(keep) == 5
    with pytest.raises(ValueError, match="float16"):
        cx.pack_kernel_params([], [{"dtype": "float16", "value": 1}])


def test_dispatch_argument_order():
    from runtime.executors import cuda as cx

    names = ["x", "w", "bias", "y"]
    assert cx.dispatch_arg_indices({"func": "f"}, names, 4) == [0, 1, 2, 3]
    assert cx.dispatch_arg_indices({"func": "f", "args": [3, "x", 1]}, names, 4) == [3, 0, 1]
    assert cx.dispatch_arg_indices({"entry": "f", "buffers": ["w", "y"]}, names, 4) == [1, 3]
    with pytest.raises(ValueError, match="unknown parameter"):
        cx.dispatch_arg_indices({"func": "f", "args": ["z"]}, names, 4)
    with pytest.raises(ValueError, match="argument 4"):
        cx.dispatch_arg_indices({"func": "f", "args": [4]}, names, 4)


def test_check_args():
    from runtime.executors import cuda as cx

    params = [
        {"name": "x", "kind": "act", "shape": [4, 4], "dtype": "float32"},
        {"name": "w", "kind": "raw", "shape": [2, 32], "dtype": "q8_0", "words": 17},
        {"name": "y", "kind": "act", "shape": [4], "dtype": "float32"},
    ]
    # A raw weight is passed with its logical shape and dtype uint32; its size is its word count.
    ok = [(cx.Buffer(1, 64), (4, 4), "float32"), (cx.Buffer(2, 68), (2, 32), "uint32"), (cx.Buffer(3, 16), (4,), "f")]
    cx.check_args("k", params, ok)
    with pytest.raises(RuntimeFailure, match="takes 3 arguments"):
        cx.check_args("k", params, ok[:2])
    with pytest.raises(RuntimeFailure, match="argument y needs 16 bytes"):
        cx.check_args("k", params, [ok[0], ok[1], (cx.Buffer(3, 8), (4,), "float32")])
    with pytest.raises(RuntimeFailure, match="argument w needs 68 bytes"):
        cx.check_args("k", params, [ok[0], (cx.Buffer(2, 64), (2, 32), "uint32"), ok[2]])
    freed = cx.Buffer(4, 64, freed=True)
    with pytest.raises(RuntimeFailure, match="freed"):
        cx.check_args("k", params, [(freed, (4, 4), "float32"), ok[1], ok[2]])


# A stand-in for libcuda.so.1 with the driver API's exact C signatures: "device memory" is host memory, the module
# loader checks the fatbin magic and finds function names in the image, and cuLaunchKernel runs axpy_kernel on the
# CPU over the requested grid. It exercises the executor's ctypes prototypes (64-bit pointers, size_t, the
# kernel-params array) end to end without a GPU.
FAKE_LIBCUDA_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
typedef unsigned long long CUdeviceptr;
static int cc(int which) { const char *e = getenv("FAKE_CUDA_CC"); int v = e ? atoi(e) : 86;
                           return which ? v % 10 : v / 10; }
int cuInit(unsigned flags) { return flags ? 1 : 0; }
int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *d, int i) { if (i != 0) return 101; *d = 0; return 0; }
int cuDeviceGetName(char *s, int n, int d) { strncpy(s, "Fake GPU", n); return 0; }
int cuDeviceGetAttribute(int *v, int a, int d) {
  if (a == 75) { *v = cc(0); return 0; } if (a == 76) { *v = cc(1); return 0; } return 1; }
int cuDeviceTotalMem_v2(size_t *m, int d) { *m = (size_t)8 << 30; return 0; }
int cuGetErrorName(int rc, const char **s) { *s = rc == 500 ? "CUDA_ERROR_NOT_FOUND" : "CUDA_ERROR_FAKE"; return 0; }
int cuGetErrorString(int rc, const char **s) { *s = "fake error"; return 0; }
static int ctx_token, retained;
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = &ctx_token; retained++; return 0; }
int cuDevicePrimaryCtxRelease_v2(int d) { retained--; return 0; }
int fake_retained(void) { return retained; }
int cuCtxSetCurrent(void *c) { return c == &ctx_token ? 0 : 201; }
int cuCtxSynchronize(void) { return 0; }
typedef struct { unsigned char *img; size_t n; } Mod;
int cuModuleLoadDataEx(void **m, const void *image, unsigned nopt, int *opts, void **vals) {
  const unsigned char *p = image; uint32_t magic; uint16_t hsize; uint64_t fsize;
  memcpy(&magic, p, 4); if (magic != 0xBA55ED50u) return 200;
  memcpy(&hsize, p + 6, 2); memcpy(&fsize, p + 8, 8);
  Mod *mod = malloc(sizeof(Mod)); mod->n = hsize + fsize; mod->img = malloc(mod->n);
  memcpy(mod->img, p, mod->n); *m = mod; return 0; }
int cuModuleUnload(void *m) { Mod *mod = m; free(mod->img); free(mod); return 0; }
int cuModuleGetFunction(void **f, void *m, const char *name) {
  Mod *mod = m; size_t k = strlen(name);
  for (size_t i = 0; i + k <= mod->n; i++)
    if (memcmp(mod->img + i, name, k) == 0 && mod->img[i + k] == 0) { *f = strdup(name); return 0; }
  return 500; }
int cuFuncSetAttribute(void *f, int a, int v) { return 0; }
int cuMemAlloc_v2(CUdeviceptr *p, size_t n) { *p = (CUdeviceptr)(uintptr_t)calloc(1, n); return 0; }
int cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); return 0; }
int cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { memset((void *)(uintptr_t)p, v, n); return 0; }
int cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { memcpy((void *)(uintptr_t)d, s, n); return 0; }
int cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { memcpy(d, (void *)(uintptr_t)s, n); return 0; }
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shmem, void *stream, void **params, void **extra) {
  if (strcmp((const char *)f, "axpy_kernel") != 0 || gy != 1 || gz != 1 || by != 1 || bz != 1) return 1;
  float *a = (float *)(uintptr_t)*(CUdeviceptr *)params[0];
  float *b = (float *)(uintptr_t)*(CUdeviceptr *)params[1];
  float *y = (float *)(uintptr_t)*(CUdeviceptr *)params[2];
  for (unsigned t = 0; t < gx * bx; t++) y[t] = a[t] * 2.0f + b[t];
  return 0; }
"""


@pytest.fixture
def fake_driver(tmp_path, monkeypatch):
    import runtime.device as rd

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fake driver")
    src = tmp_path / "fake_libcuda.c"
    src.write_text(FAKE_LIBCUDA_C)
    lib = tmp_path / "libcuda_fake.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)
    monkeypatch.delenv("SDCOMPILE_SIMULATE_CUDA_DEVICE", raising=False)
    monkeypatch.setattr(rd, "_libcuda_names", lambda: [str(lib)])
    monkeypatch.setattr(rd, "_driver", None)
    monkeypatch.setattr(rd, "_driver_error", None)
    return ctypes.CDLL(str(lib))


def test_probe_through_the_driver_api(fake_driver, monkeypatch):
    monkeypatch.setenv("FAKE_CUDA_CC", "89")
    assert probe_cuda() == [{"index": 0, "name": "Fake GPU", "cc": "8.9", "total_mem": 8 << 30}]


def test_executor_runs_a_kernel_on_the_fake_driver(fake_driver, default_build, monkeypatch):
    from runtime.executors import cuda as cx

    out, rec = default_build
    monkeypatch.setenv("FAKE_CUDA_CC", "87")
    launch = [{"entry": "axpy_kernel", "grid": [4, 1, 1], "block": [64, 1, 1], "buffers": ["a", "b", "y"], "pods": []}]
    params = [{"name": n, "kind": "act", "shape": [256], "dtype": "float32"} for n in "aby"]
    # The manifest's cuda section, as build_cuda writes it.
    section = {"target": "cuda", "build": rec, "kernels": {"axpy": {"params": params, "launch": launch}}}
    ex = cx.Executor(out.parent, section, num_threads=2)
    info = ex.device_info()
    assert info["name"] == "Fake GPU" and info["cc"] == "8.7" and info["code"] == "sm_86"
    assert info["memory_bytes"] == 8 << 30 and info["driver_version"] == "13.0"
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(256, dtype=np.float32), rng.standard_normal(256, dtype=np.float32)
    bufs = [ex.alloc(1024) for _ in range(3)]
    ex.upload(bufs[0], a)
    ex.upload(bufs[1], b)
    ex.launch("axpy", [(bufs[0], (256,), "float32"), (bufs[1], (256,), "float32"), (bufs[2], (256,), "float32")])
    ex.synchronize()
    np.testing.assert_array_equal(ex.download(bufs[2], (256,), np.float32), a * 2 + b)
    with pytest.raises(RuntimeFailure, match="no cuda kernel"):
        ex.launch("missing", [])
    ex.close()
    assert fake_driver.fake_retained() == 0


def test_executor_refuses_an_incompatible_device(fake_driver, default_build, monkeypatch):
    from runtime.executors import cuda as cx

    out, rec = default_build
    monkeypatch.setenv("FAKE_CUDA_CC", "52")
    with pytest.raises(NoCompatibleBuild, match="5.2"):
        cx.Executor(out.parent, {}, build=rec)
    assert fake_driver.fake_retained() == 0


def test_executor_reports_a_missing_function(fake_driver, default_build):
    from runtime.device import CudaError
    from runtime.executors import cuda as cx

    out, _ = default_build
    ex = cx.Executor(out.parent, {"k": {"params": [], "launch": [{"entry": "nope", "grid": [1], "block": [1]}]}})
    assert ex.code is None  # no build record given and no manifest: the driver picks the code
    with pytest.raises(CudaError, match="cuModuleGetFunction\\(nope\\).*NOT_FOUND"):
        ex.launch("k", [])
    ex.close()
