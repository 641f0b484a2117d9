"""``linear`` with activations stored in f16 or bf16 (``kernels/act.py``) on every CPU path — the TE-scheduled GEMM,
the GEMV kernels (few rows) and the AMX tile kernels (many rows; where the CPU has AMX) — against the same kernel
with f32 activations on the same (rounded) inputs: the 16-bit kernel must equal the f32 one up to the single
rounding of its output (half an ulp of the storage type, relative) plus f32 reassociation noise."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile.kernels.spec import KernelSpec
from sdcompile.quant.reference import quantize
from tests.kernels.fixtures import built_fixture, executor_fixture

HALF_ULP = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
CODE = {"float16": "h", "bfloat16": "b"}
# (M, N, K, weight type): GEMV rows, AMX rows, and a type no integer path takes (the TE schedule)
SHAPES = [(2, 64, 256, "q8_0"), (2, 64, 512, "q4_k"), (40, 64, 256, "q8_0"), (40, 64, 512, "q4_k"), (40, 48, 96, "f16")]
PAIRS = []
# ... and the AMX-BF16 products (--compute bf16), whose vector epilogue rounds to the storage type itself; by rows
# (cpu_amx_bf16.BY_ROWS_FROM) with 4 units of 32 columns, taken two side by side (``Y16_UNITS``) down 5 groups of rows
# (the last one short), and with 3 units (an odd count: one at a time)
MMA = [
    (40, 48, 96, "f16", "bf16"),
    (33, 32, 64, "f32", "bf16"),
    (1100, 128, 64, "f16", "bf16"),
    (1040, 96, 64, "bf16", "bf16"),
]
for m, n, k, t, *mma in [(*s, None) for s in SHAPES] + MMA:
    base = {"M": m, "N": n, "K": k, "wtype": t, "bias": True, "residual": True, "act": "silu"}
    if mma[0]:
        base["mma"] = mma[0]
    for dtype in ("float16", "bfloat16"):
        PAIRS.append((KernelSpec.make("linear", **base), KernelSpec.make("linear", **base, dt=CODE[dtype] * 3), dtype))

built = built_fixture("cpu", lambda: sorted({s for p in PAIRS for s in p[:2]}, key=lambda s: s.name), "act16_cpu")
ex = executor_fixture("cpu")


def _run(ex, spec: KernelSpec, arrays: dict[str, np.ndarray]) -> np.ndarray:
    args = []
    for p in spec.params:
        if p.is_output:
            buf = ex.alloc(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize)
            args.append((buf, p.shape, p.dtype))
            out = (buf, p)
            continue
        a = arrays[p.name]
        a = a if p.kind == "raw" else a.astype(p.dtype)
        buf = ex.alloc(a.nbytes)
        ex.upload(buf, a)
        args.append((buf, (p.words(),) if p.kind == "raw" else p.shape, "uint32" if p.kind == "raw" else p.dtype))
    ex.launch(spec.name, args)
    ex.synchronize()
    return ex.download(out[0], out[1].shape, out[1].dtype).astype(np.float64)


@pytest.mark.parametrize("pair", PAIRS, ids=[p[1].name for p in PAIRS])
def test_16bit_activations_round_once(ex, pair):
    f32_spec, spec, dtype = pair
    M, N, K, wtype = (spec.attr(k) for k in ("M", "N", "K", "wtype"))
    rng = np.random.default_rng(7)
    raw = quantize(rng.standard_normal((N, K)).astype(np.float32) * 0.1, wtype)
    words = np.zeros(spec.param("w").words() * 4, np.uint8)
    words[: raw.size] = raw
    # inputs as the 16-bit kernel holds them, so both kernels see the same values
    x = rng.standard_normal((M, K)).astype(dtype).astype(np.float32)
    res = rng.standard_normal((M, N)).astype(dtype).astype(np.float32)
    arrays = {"x": x, "w": words.view(np.uint32), "bias": rng.standard_normal(N).astype(np.float32), "res": res}
    want = _run(ex, f32_spec, arrays)
    got = _run(ex, spec, arrays)
    tol = HALF_ULP[dtype] * np.abs(want) + 1e-5 * (1 + np.abs(want))
    assert np.all(np.abs(got - want) <= tol), float(np.max(np.abs(got - want) / tol))
    assert not np.array_equal(got, want)  # the output really was rounded to 16 bits
