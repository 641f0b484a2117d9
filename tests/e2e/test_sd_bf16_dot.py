"""``--compute bf16`` where the products run on the vector unit (AMD Zen 4: ``vdpbf16ps``, no tile unit; on a CPU
with AMX the tile unit is turned off and the CPU taken for one whose vdpbf16ps is fast): the tiny SD VAE decode,
whose 32x32-level 3x3 convs run Winograd with bf16 products (``schedules/cpu_winograd_dot.py``) and the others the
direct vdpbf16ps GEMM, against diffusers' VAE in float64-accurate f32 on the same weights.

Tolerance: every product rounds both operands to bf16 (2^-8 relative, ``u``), Winograd's operands are short sums
whose magnitudes grow the bound a few times (``test_winograd_dot_cpu.py``), and the decoder chains some 15 convs and
norms whose errors add up roughly as a random walk (sqrt(15) ~ 4): within 8 u of the output's range. The error must
also be well above f32's (the f32 pipeline is within 2e-5, ``test_sd_pipeline.py``): bf16 products did run."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from tests import sd_reference as R
from tests.e2e.sd_helpers import SHAPE, SIZE, compile_sd, state

pytestmark = pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")

U = 2.0**-8
W, H = SIZE


def test_vae_decode_with_bf16_products_on_the_vector_unit(tmp_path, monkeypatch):
    import runtime
    from schedules import cpu_winograd_dot
    from sdcompile import examples_sd as E
    from sdcompile.kernels.spec import KernelSpec

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    monkeypatch.setattr(tvm_layer, "host_bf16_dot_fast", lambda: True)  # Intel's is slow: mma would keep f32
    st = state()
    ckpt = E.write_sd(tmp_path / "tiny.safetensors", SHAPE, 0, "safetensors", state=st)
    m = compile_sd(ckpt, tmp_path / "bf16", compute="bf16", components=["vae_decoder"])
    convs = [KernelSpec.make(k["op"], **k["attrs"]) for k in m["kernels"]["kernels"].values() if k["op"] == "conv2d"]
    winograd = [s for s in convs if cpu_winograd_dot.applicable(s, 16, True)]
    assert winograd and any(s.attr("mma") == "bf16" and s not in winograd for s in convs)  # both kernels ran

    z = np.random.default_rng(3).standard_normal((1, 4, H // 8, W // 8)).astype(np.float32)
    got = runtime.load(tmp_path / "bf16", num_threads=2).call(f"decode_latents_{W}x{H}", {"latents": z})["image"]
    want = R.vae_decode(st, SHAPE, z / 0.18215)
    err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert 2.0**-14 < err < 8 * U, err
