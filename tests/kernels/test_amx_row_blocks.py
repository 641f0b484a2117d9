"""AMX GEMMs over many rows run in blocks of rows (``schedules/cpu_amx.row_blocks``): the prepared activations of a
conv's implicit GEMM would otherwise be M x K 16-bit values at once (4.8 GB for SDXL's VAE decoder at 1024x1024,
which measured 13.5 GB peak RSS against a 7.4 GB plan). Blocking changes no arithmetic: each row is prepared and
multiplied exactly as before, so a blocked kernel (the block size lowered to force several blocks, the last one
partial) must equal the unblocked one bit for bit, for the int8 path (q8_0 weights) and the bf16 path."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.codegen import tvm_layer
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(not tvm_layer.host_amx_bf16(), reason="needs a CPU with AMX (and Linux)")

GEO = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1), "bias": True, "residual": False, "act": "none"}
SPECS = [
    KernelSpec.make("conv2d", B=1, H=19, W=17, C=32, N=48, wtype="q8_0", **GEO),  # M = 323: 16-row multiples + 3
    KernelSpec.make("conv2d", B=1, H=19, W=17, C=32, N=48, wtype="f16", mma="bf16", **GEO),
]


def _build(tmp, monkeypatch, block_bytes):
    from schedules import cpu_amx
    from sdcompile.codegen.build import build_kernels

    monkeypatch.setattr(cpu_amx, "X_BLOCK_BYTES", block_bytes)
    out = tmp / f"b{block_bytes}"
    out.mkdir()
    return out, build_kernels(SPECS, "cpu", out)


@pytest.mark.parametrize("spec", SPECS, ids=[s.attr("wtype") for s in SPECS])
def test_blocked_equals_unblocked(tmp_path, monkeypatch, spec):
    from runtime.executors.cpu import Executor
    from schedules import cpu_amx

    M, N, K = gemm_mnk(spec)
    row = 2 * K + 4 * (K // 32)  # the int8 path's prepared bytes per row; bf16: 2 K
    small = 100 * row  # about 100 rows a block: 4 blocks, the last partial
    assert cpu_amx.row_blocks(M, row)[1] == 1  # one block at the built-in size
    monkeypatch.setattr(cpu_amx, "X_BLOCK_BYTES", small)
    assert cpu_amx.row_blocks(M, row)[1] >= 3 and cpu_amx.row_blocks(M, 2 * K, 32)[1] >= 3
    monkeypatch.undo()
    results = []
    for block_bytes in (cpu_amx.X_BLOCK_BYTES, small):
        out, built = _build(tmp_path, monkeypatch, block_bytes)
        ex = Executor(out, built, num_threads=2)
        rng = np.random.default_rng(7)
        x = rng.standard_normal((1, 19, 17, 32)).astype(np.float32)
        words, _ = fx.weight_words(spec, rng.standard_normal((N, K)).astype(np.float32) * 0.1)
        bias = rng.standard_normal(N).astype(np.float32)
        results.append(fx.launch(ex, spec.name, [x, words, bias], (M, N)))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0]).max() > 0
