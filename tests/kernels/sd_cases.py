"""Helpers to run the UNet/VAE kernel cases (``sdcompile.kernels.op_cases``: conv2d, group norm, cross-attention,
pointwise and data movement, stated as IR nodes) on an executor and compare them with the op registry's numpy
references."""

from __future__ import annotations

import numpy as np

from sdcompile.kernels.op_cases import BF16_CASES, CASES, F16_CASES, Case, reference_list, tolerance
from sdcompile.quant.reference import dequantize, quantize

__all__ = ["BF16_CASES", "CASES", "F16_CASES", "Case", "case_ids", "check", "run_kernel"]


def run_kernel(ex, case: Case, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Every output of the case's kernel (a split has several)."""
    spec = case.spec()
    params = spec.params
    args = []
    for p, i in zip(params, range(len(params))):
        if p.is_output:
            buf = ex.alloc(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize)
            args.append((buf, p.shape, p.dtype))
            continue
        x = xs[i]
        if p.kind == "raw":
            raw = quantize(x, case.weights[i])
            words = np.zeros(p.words() * 4, np.uint8)
            words[: raw.size] = raw
            buf = ex.alloc(words.size)
            ex.upload(buf, words.view(np.uint32))
            args.append((buf, (p.words(),), "uint32"))
        else:
            buf = ex.alloc(x.nbytes)
            ex.upload(buf, x.astype(p.dtype))
            args.append((buf, p.shape, p.dtype))
    ex.launch(spec.name, args)
    ex.synchronize()
    return [ex.download(a[0], p.shape, p.dtype).astype(np.float32) for a, p in zip(args, params) if p.is_output]


def check(ex, case: Case) -> None:
    spec = case.spec()
    xs = case.inputs()
    # The reference multiplies by the weights the kernel holds (their storage type's values) and reads the
    # activations as stored (rounded to f16/bf16 where the case says).
    ref_in = [
        dequantize(quantize(x, case.weights[i]), case.weights[i], x.shape)
        if i in case.weights
        else x.astype(p.dtype).astype(np.float32)
        for (i, x), p in zip(enumerate(xs), spec.params)
    ]
    outs = [p for p in spec.params if p.is_output]
    for got, want, p in zip(run_kernel(ex, case, xs), reference_list(case, ref_in), outs, strict=True):
        got = got.reshape(want.shape)
        err = np.abs(got - want)
        tol = tolerance(want, p.dtype)
        assert np.all(err <= tol), f"{spec.name}: max error {err.max():.3g}, worst ratio {np.max(err / tol):.3g}"


def case_ids(cases: list[Case] = CASES) -> list[str]:
    return [c.spec().name for c in cases]


def check_view(ex) -> None:
    """A kernel reading and writing parts of buffers at byte offsets (``executor.view``), as the memory plan aliases
    a split: silu of elements 64.. of one buffer into elements 128.. of another."""
    from sdcompile.kernels.spec import KernelSpec

    spec = KernelSpec.make("unary", n=64, fn="silu")
    x = np.random.default_rng(5).standard_normal(256).astype(np.float32)
    src, dst = ex.alloc(x.nbytes), ex.alloc(x.nbytes)
    ex.upload(src, x)
    ex.upload(dst, np.zeros_like(x))
    ex.launch(spec.name, [(ex.view(src, 256, 256), (64,), "float32"), (ex.view(dst, 512, 256), (64,), "float32")])
    ex.synchronize()
    out = ex.download(dst, (256,), "float32")
    part = x[64:128].astype(np.float64)
    np.testing.assert_allclose(out[128:192], part / (1 + np.exp(-part)), rtol=1e-6, atol=1e-7)
    assert not out[:128].any() and not out[192:].any()  # nothing outside the view was written
