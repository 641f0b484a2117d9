"""Tiled attention (online softmax over key tiles, ``sdcompile/kernels/attention_tiled.py`` with the GPU schedule
``schedules/gpu_attention.py``): Vulkan (lavapipe in CI) against the op registry's float64 reference at Stable
Diffusion's shapes, the same specs on the CPU, CUDA C without a GPU (and nvcc where installed), and legalization
choosing it where the untiled GPU kernel cannot hold the keys.

Tolerance: max |o - reference| <= 1e-5 * max |reference|, for every case (measured: at most 1.5e-6; f32 q.k over
up to 512 channels and sums over up to 65536 keys, against float64).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from sdcompile.ir.ops import get as get_op
from sdcompile.kernels.spec import KernelSpec
from tests.kernels.fixtures import built_fixture, executor_fixture, vulkan_marks

REL_TOL = 1e-5


def tiled(B: int, S: int, T: int, H: int, Dh: int, causal: bool = False) -> KernelSpec:
    return KernelSpec.make("attention", B=B, S=S, T=T, H=H, Dh=Dh, causal=causal, tiled=True)


# (id, spec, scale of q): SD 1.5 at 512x512 unless noted. Query rows are cut down where lavapipe would take minutes
# (every query row walks all T keys the same way, so fewer rows test the same thing); each distinct spec costs
# lavapipe a shader compile of a few seconds, so cases share specs where they can.
UNET_SELF = tiled(B=2, S=64, T=4096, H=8, Dh=40)
CASES = [
    # UNet level 0 self-attention: 64x64 latent pixels = 4096 tokens, 8 heads of 40 (S cut from 4096 to 64).
    ("unet_self_4096", UNET_SELF, 1.0),
    # The same with scores spread over tens: tile maxima differ widely, so the running rescaling is exercised.
    ("unet_self_4096_sharp", UNET_SELF, 12.0),
    # UNet level 1 cross-attention: 1024 pixels x 77 context tokens, heads of 80 (one key tile, padded).
    ("unet_cross_1024x77", tiled(B=1, S=1024, T=77, H=2, Dh=80), 1.0),
    # VAE mid-block: one head of 512 channels; 32x32 latent (256x256 image): S = T = 1024.
    ("vae_1024", tiled(B=1, S=1024, T=1024, H=1, Dh=512), 1.0),
    # VAE at 512x512 (4096 tokens) and at 1024x1024 (16384 tokens), queries cut down.
    ("vae_4096", tiled(B=1, S=32, T=4096, H=1, Dh=512), 1.0),
    ("vae_16384", tiled(B=1, S=8, T=16384, H=1, Dh=512), 1.0),
    # CLIP-like causal self-attention (key tiles wholly above the diagonal).
    ("causal_77", tiled(B=1, S=77, T=77, H=2, Dh=64, causal=True), 1.0),
    # Odd sizes: 11 rows per workgroup for 33 queries, the second key tile holds 36 keys of 64.
    ("odd_33x100", tiled(B=2, S=33, T=100, H=1, Dh=40), 1.0),
    # 1024 key tiles: far past lavapipe's 65535 loop iterations per invocation were the tile's loops rolled; 17
    # queries (prime): one row per workgroup.
    ("keys_65536", tiled(B=1, S=17, T=65536, H=1, Dh=40), 1.0),
]
SPECS = list(dict.fromkeys(c[1] for c in CASES))
# The whole UNet level-0 self-attention (43 GFLOP): about a minute on lavapipe with 2 cores.
FULL = ("unet_self_4096_full", tiled(B=2, S=4096, T=4096, H=8, Dh=40), 1.0)


def _inputs(spec: KernelSpec, qscale: float) -> list[np.ndarray]:
    B, S, T, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "T", "H", "Dh"))
    rng = np.random.default_rng(B * 7 + S * 5 + T * 3 + Dh)
    q = (rng.standard_normal((B * S, H * Dh)) * qscale).astype(np.float32)
    k, v = (rng.standard_normal((B * T, H * Dh)).astype(np.float32) for _ in range(2))
    return [q, k, v]


def _reference(spec: KernelSpec, xs: list[np.ndarray]) -> np.ndarray:
    B, S, T, H = (int(spec.attr(k)) for k in ("B", "S", "T", "H"))
    q, k, v = (x.astype(np.float64) for x in xs)
    W = q.shape[1]
    ref = get_op("attention").reference(
        [q.reshape(B, S, W), k.reshape(B, T, W), v.reshape(B, T, W)],
        {"heads": H, "causal": bool(spec.attr("causal"))},
    )
    return ref.reshape(B * S, W)


def _run(ex, spec: KernelSpec, xs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    args = []
    for x in xs:
        buf = ex.alloc(x.nbytes)
        ex.upload(buf, x)
        args.append((buf, x.shape, "float32"))
    out = ex.alloc(xs[0].nbytes)
    args.append((out, xs[0].shape, "float32"))
    t0 = time.perf_counter()
    ex.launch(spec.name, args)
    ex.synchronize()
    seconds = time.perf_counter() - t0
    return ex.download(out, xs[0].shape, "float32"), seconds


def _check(ex, spec: KernelSpec, qscale: float) -> float:
    xs = _inputs(spec, qscale)
    got, seconds = _run(ex, spec, xs)
    want = _reference(spec, xs)
    err = float(np.abs(got - want).max())
    assert err <= REL_TOL * float(np.abs(want).max()), f"{spec.name}: max error {err:.3g}"
    return seconds


def _vulkan(f):
    for mark in vulkan_marks():
        f = mark(f)
    return f


built = built_fixture("vulkan", lambda: [*SPECS, FULL[1]], "attention_tiled_vk")
ex = executor_fixture("vulkan")


@_vulkan
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vulkan_matches_reference(ex, case):
    _, spec, qscale = case
    _check(ex, spec, qscale)


@_vulkan
@pytest.mark.slow
def test_vulkan_full_unet_self_attention(ex):
    _, spec, qscale = FULL
    seconds = _check(ex, spec, qscale)  # includes lavapipe's shader compile (a second or two)
    print(f"{spec.name}: {seconds:.1f} s on lavapipe")


@_vulkan
def test_vulkan_launch_within_webgpu_limits(built):
    _, result = built
    for name, info in result["kernels"].items():
        (launch,) = info["launch"]  # one kernel, no blockIdx.z
        assert launch["grid"][2] == 1 and max(launch["grid"]) <= 65535, name
        assert np.prod(launch["block"]) <= 256, name


CPU_CASES = [c for c in CASES if c[0] in ("causal_77", "odd_33x100", "vae_4096")] + [
    ("one_tile", tiled(B=2, S=7, T=3, H=3, Dh=12), 1.0),  # a single key tile, mostly padding
]


@pytest.fixture(scope="module")
def cpu_ex(tmp_path_factory):
    from runtime.executors.cpu import Executor
    from sdcompile.codegen.build import build_kernels

    out = tmp_path_factory.mktemp("attention_tiled_cpu")
    return Executor(out, build_kernels([c[1] for c in CPU_CASES], "cpu", out), num_threads=2)


@pytest.mark.parametrize("case", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_cpu_runs_tiled_specs(cpu_ex, case):
    # Legalization only tiles for GPU backends, but a tiled spec is a valid kernel everywhere.
    _, spec, qscale = case
    _check(cpu_ex, spec, qscale)


CUDA_SPECS = [SPECS[0], SPECS[3], SPECS[5]]  # Dh 40 (8 x 16 threads), 512 (64 x 4), causal 64 (8 x 11)


@pytest.fixture(scope="module")
def cuda_source():
    from sdcompile.codegen.build import lower_gpu

    return lower_gpu(CUDA_SPECS, "cuda")


def _kernel_body(source: str, entry: str) -> str:
    start = source.index(f"{entry}(", source.index(f"{entry}(") + 1)  # the definition, after the declaration
    end = source.find('extern "C" __global__', start)
    return source[start : end if end > 0 else len(source)]


def test_cuda_source_without_gpu(cuda_source):
    source, launch = cuda_source
    for spec in CUDA_SPECS:
        (entry,) = launch[spec.name]
        assert entry["grid"][2] == 1 and max(entry["grid"]) <= 65535
        assert np.prod(entry["block"]) <= 256 and "dyn_shared_bytes" not in entry
        body = _kernel_body(source, entry["entry"])
        shared = sum(int(n) for n in re.findall(r"__shared__ (?:alignas\(\d+\) )?float \w+\[(\d+)\]", body))
        assert 0 < shared * 4 <= 16384, (spec.name, shared)
        assert "expf" in body or "__expf" in body


def test_cuda_builds_with_nvcc(cuda_source, tmp_path):
    from sdcompile.codegen import cuda_build as cb
    from sdcompile.errors import ToolchainError

    try:
        cb.find_nvcc()
    except ToolchainError as e:
        pytest.skip(str(e))
    source, _ = cuda_source
    rec = cb.build_fatbin(source, ["sm_75"], tmp_path / "attention.fatbin", ptx=[])
    assert rec["archs"] == ["sm_75"] and (tmp_path / "attention.fatbin").stat().st_size > 0


# --- legalization ----------------------------------------------------------------------------------------------


def _attention_graph(T: int):
    from sdcompile.ir.graph import Graph

    g = Graph()
    q = g.add_input("q", (1, 16, 128), "float32", "unet")
    k = g.add_input("k", (1, T, 128), "float32", "unet")
    v = g.add_input("v", (1, T, 128), "float32", "unet")
    g.add_node("attention", [q, k, v], "o", (1, 16, 128), "unet", heads=2, causal=False)
    g.outputs.append("o")
    return g


@pytest.mark.parametrize(
    ("target", "T", "want"),
    [("vulkan", 4096, True), ("cuda", 4096, True), ("cpu", 4096, False), ("vulkan", None, False)],
    ids=["vulkan_4096", "cuda_4096", "cpu_4096", "vulkan_at_limit"],
)
def test_legalize_tiles_long_gpu_attention(target, T, want):
    from schedules.gpu import MAX_ATTENTION_SEQ
    from sdcompile.codegen.plan import node_spec
    from sdcompile.ir import verify
    from sdcompile.passes import legalize
    from sdcompile.passes.context import CompileOptions, PassContext

    g = _attention_graph(MAX_ATTENTION_SEQ if T is None else T)
    ctx = PassContext(CompileOptions(target=target))
    out = legalize.run(g, ctx)
    verify(out, "legalize")
    (node,) = out.nodes
    assert bool(node.attrs.get("tiled")) is want
    assert ctx.report["legalize"]["tiled_attention"] == (["o"] if want else [])
    assert "tiled" not in g.nodes[0].attrs  # the pass works on a copy
    spec = node_spec(out, node)
    assert spec.attr("tiled") is (True if want else None)
    assert ("tiled" in spec.name) is want  # untiled specs keep their names
