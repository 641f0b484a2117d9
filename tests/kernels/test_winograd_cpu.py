"""conv2d 3x3 by Winograd's F(2x2, 3x3) and F(4x4, 3x3) (``schedules/cpu_winograd.py``) against float64 numpy: f32,
f16, bf16 and GGUF weights, image sizes that are and are not multiples of the tile, K in one pass and several,
several panel blocks, the fused epilogue.

Bound (u = 2^-24). Each output is a signed sum, over channels c and the positions of a tile, of products
A_i U_xi(c) V_xi(c) A_j whose factors are themselves short sums: U = G g G^T, V = B^T d B, then the product (one
rounding), the sum over C channels (C), and A^T M A. Counting each transform's sums and its products by coefficients
that are not powers of two (and the f32 rounding of 1/6 and 1/24), at most ``ROUNDINGS[m]`` roundings besides the C
of the channel sum touch a term, so |y - y64| <= (C + ROUNDINGS[m]) u * mag + the epilogue's rounding, where mag is
the same expression with every coefficient, weight and input replaced by its absolute value (|A|^T [(|G| |g| |G|^T)
. (|B|^T |d| |B|)] |A|, summed over c), computed here in float64. A wrong coefficient, a swapped transform, a lost
tap or a misplaced tile fails it by orders of magnitude: mag is within a small factor of the direct conv's."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_fma, cpu_winograd
from sdcompile.ir.ops import im2col_np, silu_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx

pytestmark = pytest.mark.skipif(cpu_fma.target_isa() is None, reason="needs a CPU with AVX-512 or AVX2 and FMA")

U32 = 2.0**-24
HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": (1, 1, 1, 1)}
EPI = {"bias": True, "residual": False}
ROUNDINGS = {2: 12, 4: 32}
CASES = [
    {"B": 1, "H": 24, "W": 24, "C": 64, "N": 64, "wtype": "f32", **EPI},  # 144 tiles, 6 x 4 register blocks
    # odd height and width (partial tiles), N = 80 (28 x 1 blocks), residual, f16 activations
    {"B": 2, "H": 15, "W": 17, "C": 64, "N": 80, "wtype": "f16", "bias": False, "residual": True, "dt": "hhh"},
    # C = 320: K in three passes, the last one shorter; bf16 weights and activations
    {"B": 1, "H": 24, "W": 23, "C": 320, "N": 64, "wtype": "bf16", **EPI, "residual": True, "dt": "bbb"},
    # several panel blocks (AVX-512: U of one unit 2.8 MB, 7 units), the SiLU epilogue (144 tiles: up to 128
    # Winograd by output channels takes them, ``cpu_winograd_by_weights``); C = 688, 43 vectors: a short last pass
    # for AVX2's units of 16 rows too (2 passes of 352 and 336 channels)
    {"B": 2, "H": 16, "W": 18, "C": 688, "N": 448, "wtype": "f16", **EPI, "act": "silu"},
    # GGUF types decoded into U (``quant_vec``)
    {"B": 1, "H": 32, "W": 32, "C": 64, "N": 64, "wtype": "q8_0", **EPI},
    {"B": 1, "H": 32, "W": 30, "C": 256, "N": 64, "wtype": "q4_k", **EPI},
    # F(4x4, 3x3): 512 4x4 tiles and more (64 on AMD Zen 4: the two GGUF cases above too); sizes that are not
    # multiples of 4, K in passes, a quant type
    {"B": 2, "H": 63, "W": 66, "C": 64, "N": 64, "wtype": "f16", "bias": True, "residual": True},
    {"B": 2, "H": 64, "W": 64, "C": 320, "N": 64, "wtype": "q8_0", **EPI, "act": "silu"},
]
SPECS = [KernelSpec.make("conv2d", **CONV3, **a) for a in CASES]

# without AMX, which would take the quant types (``cpu_amx``), as on AMD Zen 4
built = fx.built_fixture("cpu", SPECS, "winograd_cpu", {"SDCOMPILE_NO_AMX": "1"}, isas=True)
ex = fx.executor_fixture("cpu")


def _matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.array([[float(c) for c in row] for row in mat]) for mat in cpu_winograd.MATRICES[m])


@pytest.mark.parametrize("m", sorted(cpu_winograd.MATRICES))
def test_matrices_compute_the_correlation(m):
    """A^T [(G g G^T) . (B^T d B)] A is the 3x3 correlation of d with g (what a conv computes), in float64."""
    BT, G, AT = _matrices(m)
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    want = np.array([[np.sum(d[y : y + 3, x : x + 3] * g) for x in range(m)] for y in range(m)])
    np.testing.assert_allclose(AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T, want, rtol=1e-12, atol=1e-12)


def test_dispatch():
    from schedules import apply  # noqa: F401  (the rule table imports cpu_winograd)

    for spec in SPECS:
        assert cpu_winograd.applicable(spec, 16), spec.name
        assert cpu_winograd.applicable(spec, 8) and not cpu_winograd.applicable(spec, 4)  # AVX2 too; SSE: none
    g = [cpu_winograd._WinogradConv(s, {}) for s in SPECS]
    assert {w.m for w in g} == {2, 4}
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


def test_tile_size_by_cpu():
    """F(4x4) from fewer tiles where the CPU built for is in ``MIN_TILES_4_BY_CPU``, whatever this host is."""
    import tvm

    unet_32 = {"B": 2, "H": 32, "W": 32}  # 128 4x4 tiles: SD1.5's 32x32 level with guidance
    unet_64 = {"B": 2, "H": 64, "W": 64}  # 512
    for mcpu, m32 in (("znver4", 4), ("sapphirerapids", 2), ("x86-64-v4", 2)):
        with tvm.target.Target({"kind": "llvm", "mcpu": mcpu}):
            assert (cpu_winograd.tile_size(unet_32), cpu_winograd.tile_size(unet_64)) == (m32, 4), mcpu


def test_quantized_convs_over_many_pixels_take_winograd():
    """In f32 mode a quantized 3x3 conv from OVER_PIXELS pixels per image runs here, not on the int8 tile
    kernel (which took the SD1.5 VAE's q8_0 decode to 2.4x the f16 one); below that, on an AMX CPU, the tile kernel
    keeps it."""
    import schedules
    from schedules import cpu_amx
    from schedules.cpu import CpuInfo

    def rule(**change):
        a = {"B": 2, "H": 64, "W": 64, "C": 320, "N": 320, "wtype": "q8_0", **EPI} | change
        return schedules.cpu_rule(KernelSpec.make("conv2d", **CONV3, **a), CpuInfo())

    assert rule() is cpu_winograd.linear
    assert rule(B=1, H=512, W=512, C=128, N=128, wtype="q4_k") is cpu_winograd.linear
    small = KernelSpec.make("conv2d", **CONV3, B=2, H=32, W=32, C=640, N=640, wtype="q8_0", **EPI)
    want = cpu_amx.linear if cpu_amx.applicable(small, 16) else cpu_winograd.linear
    assert rule(H=32, W=32, C=640, N=640) is want


def _tiles(x: np.ndarray, m: int) -> np.ndarray:
    """[B, TH, TW, m + 2, m + 2, C] input tiles of x [B, H, W, C] (zero padding: one before, up to m after)."""
    b, h, w, c = x.shape
    th, tw = -(-h // m), -(-w // m)
    xp = np.zeros((b, m * th + 2, m * tw + 2, c))
    xp[:, 1 : h + 1, 1 : w + 1] = x
    idx_y = m * np.arange(th)[:, None] + np.arange(m + 2)
    idx_x = m * np.arange(tw)[:, None] + np.arange(m + 2)
    return xp[:, idx_y[:, None, :, None], idx_x[None, :, None, :], :]


def _magnitude(spec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """mag (see the module's docstring) as [M, N], in the output's row order."""
    a = dict(spec.attrs)
    B, H, W, C, N = (int(a[k]) for k in ("B", "H", "W", "C", "N"))
    m = cpu_winograd.tile_size(a)
    BT, G, AT = _matrices(m)
    d = np.abs(_tiles(np.abs(x), m))  # [B, TH, TW, m + 2, m + 2, C]
    v = np.einsum("iy,btsyxc,jx->btsijc", np.abs(BT), d, np.abs(BT))
    g = np.abs(w).reshape(N, 3, 3, C)
    u = np.einsum("ik,nklc,jl->nijc", np.abs(G), g, np.abs(G))
    p = np.einsum("btsijc,nijc->btsijn", v, u)
    y = np.einsum("pi,btsijn,qj->btspqn", np.abs(AT), p, np.abs(AT))  # [B, TH, TW, m, m, N]
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(B, m * y.shape[1], m * y.shape[2], N)[:, :H, :W]
    return y.reshape(-1, N)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_within_the_winograd_bound(ex, spec):
    check_within_the_winograd_bound(ex, spec)


def check_within_the_winograd_bound(ex, spec) -> None:
    """The kernel built for ``spec`` within the module's bound; Winograd by output channels
    (``test_winograd_by_weights_cpu.py``) has the same transforms, roundings and order of sums."""
    M, N, K = gemm_mnk(spec)
    C = int(spec.attr("C"))
    rng = np.random.default_rng(17)
    arrays, w = fx.gemm_inputs(spec, rng)
    x = arrays["x"].astype(np.float64)
    xm = im2col_np(x, dict(spec.attrs)).reshape(M, K)
    pre = xm @ w.T + (arrays["bias"] if spec.attr("bias") else 0)
    act = str(spec.attr("act", "none"))
    y = (silu_np(pre) if act == "silu" else pre) + (arrays["res"] if spec.attr("residual") else 0)
    m = cpu_winograd.tile_size(dict(spec.attrs))
    mag = _magnitude(spec, x, w)
    got = fx.run_spec(ex, spec, arrays).reshape(M, N).astype(np.float64)
    out_round = HALF_ULP[spec.param("y").dtype] * np.abs(y)
    # SiLU's slope is at most 1.1, so the sums' error bounds the outputs' after it
    bound = 1.1 * (C + ROUNDINGS[m]) * U32 * mag + 8 * U32 * (1 + np.abs(y)) + 1.01 * out_round
    err = np.abs(got - y)
    assert np.all(err <= bound), float(np.max(err / bound))
    assert np.abs(y).max() > 1  # not trivially small
    # mag is a few times the direct conv's sum of |products| (F(4x4)'s coefficients up to 8: some 50 times), so the
    # bound is not loose by orders of magnitude
    assert np.median(mag / (np.abs(xm) @ np.abs(w).T)) < {2: 8, 4: 64}[m]
