"""Helpers to run the UNet/VAE kernel cases (``sdcompile.kernels.op_cases``: conv2d, group norm, cross-attention,
pointwise and data movement, stated as IR nodes) on an executor and compare them with the op registry's numpy
references."""

from __future__ import annotations

import numpy as np

from sdcompile.kernels.op_cases import CASES, Case, tolerance
from sdcompile.quant.reference import dequantize, quantize

__all__ = ["CASES", "Case", "case_ids", "check", "run_kernel"]


def run_kernel(ex, case: Case, xs: list[np.ndarray]) -> np.ndarray:
    spec = case.spec()
    params = spec.params
    args = []
    for p, i in zip(params, range(len(params))):
        if p.is_output:
            buf = ex.alloc(int(np.prod(p.shape)) * 4)
            args.append((buf, p.shape, "float32"))
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
    out = params[-1]
    return ex.download(args[-1][0], out.shape, "float32")


def check(ex, case: Case) -> None:
    xs = case.inputs()
    # The reference multiplies by the weights the kernel holds: their storage type's values.
    ref_in = [
        dequantize(quantize(x, case.weights[i]), case.weights[i], x.shape) if i in case.weights else x
        for i, x in enumerate(xs)
    ]
    want = case.reference(ref_in)
    got = run_kernel(ex, case, xs).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance(want), err_msg=case.spec().name)


def case_ids() -> list[str]:
    return [c.spec().name for c in CASES]
