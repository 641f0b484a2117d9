"""Kernel cases for the ops a diffusion UNet and VAE add (conv2d, group norm, cross-attention, pointwise and data
movement), stated as IR nodes: the op registry lowers each to its kernel spec and supplies the numpy reference, so
these cases check the registry's lowering and the kernels together.

Shared by the kernel tests (``tests/kernels/sd_cases.py``) and ``sdcompile kernels --check``, which validates every
weightless kernel op on every backend with the cases here before the capability table may list it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdcompile.ir.ops import get
from sdcompile.kernels.spec import KernelSpec

# f32 kernels against the float64 reference on the same (decoded) weights: accumulation-order rounding over at most
# a few hundred O(1) terms, and the kernels' exp/erf approximations (~1e-7 relative); scaled by the output's
# magnitude where that exceeds 1.
TOL = 2e-4


# Half an ulp of the 16-bit activation types, relative: the one rounding a kernel adds when it stores its output
# in them (inputs are rounded before the reference sees them, and everything in between is f32).
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def tolerance(want: np.ndarray, dtype: str = "float32") -> np.ndarray | float:
    """Absolute error bound for a case's output ``want`` (the float64 reference) stored as ``dtype``."""
    return TOL * max(1.0, float(np.abs(want).max())) + HALF_ULP[dtype] * np.abs(want)


@dataclass(frozen=True)
class Case:
    op: str
    shapes: tuple[tuple[int, ...], ...]
    attrs: dict = field(default_factory=dict)
    weights: dict[int, str] = field(default_factory=dict)  # input index -> storage type of a weight input
    dt: str | None = None  # storage of the float activations (``spec.py``'s codes); None: all f32

    def spec(self) -> KernelSpec:
        d = get(self.op)
        types = [self.weights.get(i, "f32") for i in range(len(self.shapes))]
        out = d.shape(list(self.shapes), self.attrs)  # (a list of shapes for a split; lowerings read the inputs)
        extra = {"dt": self.dt} if self.dt else {}
        return KernelSpec.make(d.kernel, **d.lower(list(self.shapes), types, out, self.attrs), **extra)

    def inputs(self, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        xs = []
        for i, s in enumerate(self.shapes):
            if self.op == "timestep_embedding":
                xs.append(rng.integers(0, 1000, s).astype(np.float32))
            else:
                xs.append(rng.standard_normal(s).astype(np.float32) * (0.2 if i in self.weights else 1.0))
        return xs

    def reference(self, xs: list[np.ndarray]) -> np.ndarray:
        return get(self.op).reference([x.astype(np.float64) for x in xs], self.attrs)


def reference_list(case: Case, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The case's reference outputs as a list (a split has several)."""
    r = case.reference(xs)
    return list(r) if get(case.op).multi else [r]


CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1), "bias": True}
CASES = [
    Case("conv2d", ((2, 8, 8, 32), (64, 288), (64,)), CONV3, {1: "f32"}),
    Case("conv2d", ((2, 8, 8, 32), (64, 288), (64,), (2, 8, 8, 64)), CONV3 | {"residual": True}, {1: "f16"}),
    Case("conv2d", ((1, 8, 8, 32), (32, 288), (32,)), CONV3, {1: "q8_0"}),
    Case("conv2d", ((2, 8, 8, 32), (32, 288), (32,)), CONV3 | {"stride": 2}, {1: "f32"}),  # UNet downsampling
    Case("conv2d", ((1, 9, 9, 32), (32, 288), (32,)), CONV3 | {"stride": 2, "pads": (0, 0, 1, 1)}, {1: "f32"}),  # VAE
    Case("conv2d", ((2, 5, 7, 4), (32, 36), (32,)), CONV3, {1: "f32"}),  # conv_in: 4 channels, odd sizes
    # a VAE-like level: 4,096 pixels in several row blocks, more channels than one column tile (CPU: rows outer)
    Case("conv2d", ((1, 64, 64, 16), (128, 144), (128,)), CONV3, {1: "f16"}),
    Case(
        "conv2d",
        ((2, 4, 4, 64), (32, 64), (32,)),
        {"kh": 1, "kw": 1, "stride": 1, "pads": (0,) * 4, "bias": True},
        {1: "f32"},
    ),
    Case("group_norm", ((2, 64, 64), (64,), (64,)), {"groups": 32, "eps": 1e-5, "act": "silu"}),
    Case("group_norm", ((1, 16, 96), (96,), (96,)), {"groups": 32, "eps": 1e-6}),
    Case("group_norm", ((2, 1, 128), (128,), (128,)), {"groups": 32, "eps": 1e-5, "act": "silu"}),  # a 1x1 level
    Case("group_norm", ((1, 4096, 32), (32,), (32,)), {"groups": 32, "eps": 1e-6}),  # 256 chunks of 16 pixels
    Case("layer_norm", ((2, 77, 64), (64,), (64,)), {"eps": 1e-5}),  # CLIP / transformer blocks
    Case("attention", ((2, 64, 64), (2, 77, 64), (2, 77, 64)), {"heads": 8}),  # cross-attention
    Case("attention", ((2, 64, 32), (2, 64, 32), (2, 64, 32)), {"heads": 1}),  # VAE mid-block: one head
    Case("attention", ((1, 77, 64), (1, 77, 64), (1, 77, 64)), {"heads": 2, "causal": True}),
    Case("silu", ((3, 100),)),
    Case("gelu", ((2, 7, 9),)),
    Case("quick_gelu", ((2, 77, 16),)),  # CLIP ViT-L's MLP (SD 1.x text encoder)
    Case("add", ((2, 4, 4, 64), (2, 1, 1, 64))),
    Case("add", ((2, 16, 32), (2, 16, 32))),
    Case("mul", ((2, 16, 32), (32,))),
    Case("affine", ((1, 8, 8, 4),), {"scale": 1 / 0.18215, "shift": 0.0}),
    Case("geglu", ((2, 16, 128),)),
    Case("transpose", ((2, 4, 8, 6),), {"perm": (0, 2, 3, 1)}),
    Case("transpose", ((2, 8, 6, 4),), {"perm": (0, 3, 1, 2)}),
    Case("concat", ((2, 4, 4, 32), (2, 4, 4, 64)), {"axis": -1}),
    Case("concat", ((2, 3, 20), (2, 3, 7), (2, 3, 16)), {"axis": -1}),  # runs that are not whole vectors
    Case("slice", ((2, 4, 8, 6),), {"axis": 2, "start": 3, "stop": 7}),  # not contiguous: a copy kernel
    Case("split", ((2, 16, 96),), {"axis": -1, "sizes": (32, 64)}),  # a fused qkv-like split of channels
    Case("split", ((3, 5, 7),), {"axis": 0, "sizes": (1, 2)}),
    Case("upsample_nearest", ((2, 4, 4, 32),), {"factor": 2}),
    Case("timestep_embedding", ((2,),), {"dim": 320, "flip": True, "shift": 0.0}),
]
# Activations stored in f16 (and bf16 where a backend has it): each kernel family once, mixed storage where a
# function's f32 input or output meets f16 values inside it (conv_in, the last conv).
F16_CASES = [
    Case("conv2d", ((2, 8, 8, 32), (64, 288), (64,), (2, 8, 8, 64)), CONV3 | {"residual": True}, {1: "f16"}, "hhh"),
    Case("conv2d", ((2, 5, 7, 4), (32, 36), (32,)), CONV3, {1: "f32"}, "fh"),
    Case("conv2d", ((1, 8, 8, 32), (32, 288), (32,)), CONV3, {1: "q8_0"}, "hf"),
    Case("group_norm", ((2, 64, 64), (64,), (64,)), {"groups": 32, "eps": 1e-5, "act": "silu"}, dt="hh"),
    Case("layer_norm", ((2, 77, 64), (64,), (64,)), {"eps": 1e-5}, dt="hh"),
    Case("attention", ((2, 64, 64), (2, 77, 64), (2, 77, 64)), {"heads": 8}, dt="hhhh"),
    Case("attention", ((1, 77, 64), (1, 77, 64), (1, 77, 64)), {"heads": 2, "causal": True}, dt="hhhh"),
    Case("silu", ((3, 100),), dt="hh"),
    Case("add", ((2, 4, 4, 64), (2, 1, 1, 64)), dt="hfh"),
    Case("geglu", ((2, 16, 128),), dt="hh"),
    Case("transpose", ((2, 4, 8, 6),), {"perm": (0, 2, 3, 1)}, dt="hh"),
    Case("concat", ((2, 4, 4, 32), (2, 4, 4, 64)), {"axis": -1}, dt="hhh"),
    Case("split", ((2, 16, 96),), {"axis": -1, "sizes": (32, 64)}, dt="hhh"),
    Case("upsample_nearest", ((2, 4, 4, 32),), {"factor": 2}, dt="hh"),
    Case("timestep_embedding", ((2,),), {"dim": 320, "flip": True, "shift": 0.0}, dt="fh"),
]
BF16_CASES = [
    Case("conv2d", ((2, 8, 8, 32), (64, 288), (64,), (2, 8, 8, 64)), CONV3 | {"residual": True}, {1: "f16"}, "bbb"),
    Case("group_norm", ((2, 64, 64), (64,), (64,)), {"groups": 32, "eps": 1e-5, "act": "silu"}, dt="bb"),
    Case("attention", ((2, 64, 64), (2, 77, 64), (2, 77, 64)), {"heads": 8}, dt="bbbb"),
    Case("concat", ((2, 4, 4, 32), (2, 4, 4, 64)), {"axis": -1}, dt="bhb"),
]


def weightless(case: Case) -> bool:
    """Whether a case's kernel reads no weight in a storage type (those are checked per type instead)."""
    return not any(p.kind == "raw" for p in case.spec().params)
