"""conv2d 3x3 by Winograd's F(2x2, 3x3) (``schedules/cpu_winograd.py``) against float64 numpy: f32, f16, bf16 and
GGUF weights, even and odd image sizes, K in one pass and several, several panel blocks, the fused epilogue.

Bound (u = 2^-24). Each output is a signed sum, over channels c and the 16 positions of a tile, of products
A_i U_xi(c) V_xi(c) A_j whose factors are themselves short sums: U = G g G^T (two halvings, four roundings), V =
B^T d B (two roundings), then the product (one), the sum over C channels (C), and A^T M A (up to four). So
|y - y64| <= (C + 12) u * mag + the epilogue's rounding, where mag is the same expression with every coefficient,
weight and input replaced by its absolute value (|A|^T [(|G| |g| |G|^T) . (|B|^T |d| |B|)] |A|, summed over c),
computed here in float64. A wrong coefficient, a swapped transform, a lost tap or a misplaced tile fails it by orders
of magnitude: mag is within a small factor of the outputs themselves."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_fma, cpu_winograd
from sdcompile.ir.ops import im2col_np, silu_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(not cpu_fma.target_has_avx512(), reason="needs a CPU with AVX-512")

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
EPI = {"bias": True, "residual": False}
CASES = [
    {"B": 1, "H": 24, "W": 24, "C": 64, "N": 64, "wtype": "f32", **EPI},  # 144 tiles, 6 x 4 register blocks
    # odd height and width (partial tiles), N = 80 (28 x 1 blocks), residual, f16 activations
    {"B": 2, "H": 15, "W": 17, "C": 64, "N": 80, "wtype": "f16", "bias": False, "residual": True, "dt": "hhh"},
    # C = 320: K in three passes, the last one shorter; bf16 weights and activations
    {"B": 1, "H": 24, "W": 23, "C": 320, "N": 64, "wtype": "bf16", **EPI, "residual": True, "dt": "bbb"},
    # several panel blocks (U of one unit: 2.6 MB; 7 units), the SiLU epilogue
    {"B": 2, "H": 16, "W": 16, "C": 640, "N": 448, "wtype": "f16", **EPI, "act": "silu"},
    # GGUF types decoded into U (``quant_vec``)
    {"B": 1, "H": 32, "W": 32, "C": 64, "N": 64, "wtype": "q8_0", **EPI},
    {"B": 1, "H": 32, "W": 30, "C": 256, "N": 64, "wtype": "q4_k", **EPI},
]
SPECS = [KernelSpec.make("conv2d", **CONV3, **a) for a in CASES]

# without AMX, which would take the quant types (``cpu_amx``), as on AMD Zen 4
built = fx.built_fixture("cpu", SPECS, "winograd_cpu", {"SDCOMPILE_NO_AMX": "1"})
ex = fx.executor_fixture("cpu")

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)


def test_dispatch():
    from schedules import apply  # noqa: F401  (the rule table imports cpu_winograd)

    for spec in SPECS:
        assert cpu_winograd.applicable(spec, 16), spec.name
        assert not cpu_winograd.applicable(spec, 8)  # AVX2: no FMA kernel at all
    g = [cpu_winograd._WinogradConv(s, {}) for s in SPECS]
    assert any(w.passes > 1 and w.KR % w.KC for w in g)  # a short last pass
    assert any(w.PB > 1 for w in g)  # several panel blocks
    base = {"B": 2, "H": 16, "W": 16, "C": 64, "N": 64, "wtype": "f16", **EPI}
    for why, change in (
        ("too few tiles", {"H": 8, "W": 8}),
        ("too few channels in", {"C": 32}),
        ("too few channels out", {"N": 48}),
        ("stride 2", {"stride": 2}),
        ("no padding", {"pads": (0, 0, 0, 0)}),
        ("1x1", {"kh": 1, "kw": 1, "pads": (0, 0, 0, 0)}),
        ("bf16 products", {"mma": "bf16"}),
    ):
        spec = KernelSpec.make("conv2d", **(CONV3 | base | change))
        assert not cpu_winograd.applicable(spec, 16), why
    assert cpu_winograd.applicable(KernelSpec.make("conv2d", **CONV3, **base), 16)


def _tiles(x: np.ndarray) -> np.ndarray:
    """[B, TH, TW, 4, 4, C] input tiles of x [B, H, W, C] (zero padding: one before, up to two after)."""
    b, h, w, c = x.shape
    th, tw = -(-h // 2), -(-w // 2)
    xp = np.zeros((b, 2 * th + 2, 2 * tw + 2, c))
    xp[:, 1 : h + 1, 1 : w + 1] = x
    idx_y = 2 * np.arange(th)[:, None] + np.arange(4)
    idx_x = 2 * np.arange(tw)[:, None] + np.arange(4)
    return xp[:, idx_y[:, None, :, None], idx_x[None, :, None, :], :]


def _magnitude(spec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """mag (see the module's docstring) as [M, N], in the output's row order."""
    a = dict(spec.attrs)
    B, H, W, C, N = (int(a[k]) for k in ("B", "H", "W", "C", "N"))
    d = np.abs(_tiles(np.abs(x)))  # [B, TH, TW, 4, 4, C]
    v = np.einsum("iy,btsyxc,jx->btsijc", np.abs(BT), d, np.abs(BT))
    g = np.abs(w).reshape(N, 3, 3, C)
    u = np.einsum("ik,nklc,jl->nijc", np.abs(G), g, np.abs(G))
    m = np.einsum("btsijc,nijc->btsijn", v, u)
    y = np.einsum("pi,btsijn,qj->btspqn", np.abs(AT), m, np.abs(AT))  # [B, TH, TW, 2, 2, N]
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(B, 2 * y.shape[1], 2 * y.shape[2], N)[:, :H, :W]
    return y.reshape(-1, N)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_within_the_winograd_bound(ex, spec):
    M, N, K = gemm_mnk(spec)
    C = int(spec.attr("C"))
    rng = np.random.default_rng(17)
    arrays, w = fx.gemm_inputs(spec, rng)
    x = arrays["x"].astype(np.float64)
    xm = im2col_np(x, dict(spec.attrs)).reshape(M, K)
    pre = xm @ w.T + (arrays["bias"] if spec.attr("bias") else 0)
    act = str(spec.attr("act", "none"))
    y = (silu_np(pre) if act == "silu" else pre) + (arrays["res"] if spec.attr("residual") else 0)
    mag = _magnitude(spec, x, w)
    got = fx.run_spec(ex, spec, arrays).reshape(M, N).astype(np.float64)
    out_round = HALF_ULP[spec.param("y").dtype] * np.abs(y)
    # SiLU's slope is at most 1.1, so the sums' error bounds the outputs' after it
    bound = 1.1 * (C + 12) * U32 * mag + 8 * U32 * (1 + np.abs(y)) + 1.01 * out_round
    err = np.abs(got - y)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.abs(y).max() > 1  # not trivially small
    # the bound is not loose by orders of magnitude: mag is a few times the direct conv's sum of |products|
    assert np.median(mag / (np.abs(xm) @ np.abs(w).T)) < 8
