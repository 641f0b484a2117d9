"""conv2d 3x3 by Winograd's F(2x2, 3x3) with bf16 products on the vector unit (``schedules/cpu_winograd_dot.py``,
``vdpbf16ps``, ``compile --compute bf16`` without AMX-BF16: AMD Zen 4) against float64 numpy: f32, f16, bf16 and
GGUF weights, sizes that are and are not multiples of the tile, K in one pass and several, several panel blocks, the
fused epilogue.

On a CPU with AMX the kernels are built with ``SDCOMPILE_NO_AMX=1``, so this path is tested wherever AVX512_BF16
exists.

Two references (u = 2^-24; ``test_winograd_cpu.py`` derives the f32 transforms' ``ROUNDINGS``):
- **emulated**: U = G g G^T and V = B^T d B computed in f32 numpy in the kernel's order of operations
  (``cpu_winograd.transform``), rounded to bf16 (nearest even) as the kernel rounds them, then the products and
  sums in float64. The kernel's only other roundings are its f32 sums over C channels and A^T M A, so |y - y_emu|
  <= (C + 12) u mag_b plus the epilogue's rounding, mag_b the same expression over |U_b| |V_b|. A wrong pairing,
  a lost pair of channels, a misplaced tile or a wrong rounding fails it by orders of magnitude. LLVM may contract
  the transforms' products into FMAs, which moves an f32 value by an ulp and, where that lies on a bf16 rounding
  boundary (about one value in 2^15), its bf16 by one step: a handful of outputs may exceed the bound by that
  term, so at most 0.1% may.
- **exact**: float64 on the unrounded operands: every output within the emulated bound plus bf16's rounding of U
  and V (2^-8 relative per product) over the exact magnitude — the error the kernel adds against an f32 conv,
  whose median is many times the kernel's distance from the emulation (the bf16 roundings are its error)."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import cpu_winograd, cpu_winograd_dot
from sdcompile.codegen import tvm_layer
from sdcompile.ir.ops import im2col_np, silu_np
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from tests.kernels import fixtures as fx
from tests.kernels.test_winograd_cpu import CONV3, EPI, HALF_ULP, U32, _magnitude

pytestmark = pytest.mark.skipif(not tvm_layer.host_avx512_bf16(), reason="needs a CPU with AVX512_BF16")

UB = 2.0**-8
NO_AMX = {"SDCOMPILE_NO_AMX": "1"}
CASES = [
    {"B": 1, "H": 24, "W": 24, "C": 64, "N": 64, "wtype": "f32", **EPI},  # 144 tiles, 6 x 4 register blocks
    # odd height and width (partial tiles), N = 80 (28 x 1 blocks), residual, f16 activations
    {"B": 2, "H": 15, "W": 17, "C": 64, "N": 80, "wtype": "f16", "bias": False, "residual": True, "dt": "hhh"},
    # C = 960: K in four passes of pair words, the last one shorter; bf16 weights and activations
    {"B": 1, "H": 24, "W": 23, "C": 960, "N": 64, "wtype": "bf16", **EPI, "residual": True, "dt": "bbb"},
    # several panel blocks (U of one unit: 2.6 MB; 7 units), the SiLU epilogue (144 tiles: up to 128 Winograd by
    # output channels takes them, ``cpu_winograd_dot_by_weights``)
    {"B": 2, "H": 16, "W": 18, "C": 1280, "N": 448, "wtype": "f16", **EPI, "act": "silu"},
    # GGUF types decoded into U (``quant_vec``), as the f32 Winograd kernel decodes them
    {"B": 1, "H": 32, "W": 32, "C": 64, "N": 64, "wtype": "q8_0", **EPI},
    {"B": 1, "H": 32, "W": 30, "C": 256, "N": 64, "wtype": "q4_k", **EPI},
]
SPECS = [KernelSpec.make("conv2d", **CONV3, **a, mma="bf16") for a in CASES]

built = fx.built_fixture("cpu", SPECS, "winograd_dot_cpu", NO_AMX)
ex = fx.executor_fixture("cpu")


def _bf16(a: np.ndarray) -> np.ndarray:
    """f32 values rounded to bf16 (nearest even), as float32."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def _combine_f32(row, vecs):
    """``cpu_winograd._combine`` in f32 numpy: the same terms in the same order."""
    plus, minus = [], []
    for c, v in zip(row, vecs):
        if c:
            term = v if abs(c) == 1 else v * np.float32(float(abs(c)))
            (plus if c > 0 else minus).append(term)
    acc = plus[0] if plus else np.float32(0) - minus.pop(0)
    for t in plus[1:]:
        acc = acc + t
    for t in minus:
        acc = acc - t
    return acc


def _transform_f32(mat, tile: list, n: int) -> list:
    """``cpu_winograd.transform`` in f32 numpy over arrays of any shape (tile[n y + x])."""
    cols = [[_combine_f32(row, [tile[n * y + x] for y in range(n)]) for row in mat] for x in range(n)]
    out = []
    for i in range(len(mat)):
        out += [_combine_f32(row, [cols[x][i] for x in range(n)]) for row in mat]
    return out


def _tiles(x: np.ndarray) -> np.ndarray:
    """[B, TH, TW, 4, 4, C] input tiles of x [B, H, W, C] (zero padding: one before, up to two after)."""
    b, h, w, c = x.shape
    th, tw = -(-h // 2), -(-w // 2)
    xp = np.zeros((b, 2 * th + 2, 2 * tw + 2, c), x.dtype)
    xp[:, 1 : h + 1, 1 : w + 1] = x
    iy = 2 * np.arange(th)[:, None] + np.arange(4)
    ix = 2 * np.arange(tw)[:, None] + np.arange(4)
    return xp[:, iy[:, None, :, None], ix[None, :, None, :], :]


def _emulated(spec, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the sums A^T [U_b . V_b] A in float64, their magnitude with every factor's absolute value) as [M, N], U_b and
    V_b the kernel's bf16 operands (f32 transforms rounded to bf16)."""
    a = dict(spec.attrs)
    B, H, W, C, N = (int(a[k]) for k in ("B", "H", "W", "C", "N"))
    BT, G, AT = cpu_winograd.MATRICES[2]
    d = _tiles(x.astype(np.float32))  # [B, TH, TW, 4, 4, C]
    v = _transform_f32(BT, [d[..., i, j, :] for i in range(4) for j in range(4)], 4)
    g = w.astype(np.float32).reshape(N, 3, 3, C)
    u = _transform_f32(G, [g[:, i, j, :] for i in range(3) for j in range(3)], 3)
    vb = np.stack([_bf16(t) for t in v], axis=3).astype(np.float64)  # [B, TH, TW, 16, C]
    ub = np.stack([_bf16(t) for t in u], axis=1).astype(np.float64)  # [N, 16, C]
    at = np.array([[float(c) for c in row] for row in AT])
    out = []
    for f in (lambda t: t, np.abs):
        p = np.einsum("btsxc,nxc->btsxn", f(vb), f(ub)).reshape(*vb.shape[:3], 4, 4, N)
        y = np.einsum("pi,btsijn,qj->btspqn", f(at), p, f(at))  # [B, TH, TW, 2, 2, N]
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(B, 2 * y.shape[1], 2 * y.shape[2], N)[:, :H, :W]
        out.append(y.reshape(-1, N))
    return out[0], out[1]


def test_dispatch(monkeypatch):
    """The CPU dispatch gives bf16 3x3 convs that the f32 Winograd kernel would take to this kernel where the tile
    unit is off, and not f32 ones, channels not in whole conversions of 32, shapes Winograd does not take, or with
    the tile unit on."""
    import schedules
    from schedules.cpu import CpuInfo

    monkeypatch.setenv("SDCOMPILE_NO_AMX", "1")
    for spec in SPECS:
        assert cpu_winograd_dot.applicable(spec, 16, True), spec.name
        assert not cpu_winograd_dot.applicable(spec, 16, False)  # the tile unit takes it
        assert schedules.cpu_rule(spec, CpuInfo()) is cpu_winograd_dot.linear
    base = {"B": 2, "H": 16, "W": 16, "C": 64, "N": 64, "wtype": "f16", **EPI, "mma": "bf16"}
    for why, change in (
        ("f32 products", {"mma": None}),
        ("channels not a multiple of 32", {"C": 80}),
        ("too few tiles", {"H": 8, "W": 8}),
        ("stride 2", {"stride": 2}),
        ("a type quant_vec does not decode", {"wtype": "iq2_xxs"}),
    ):
        a = {k: v for k, v in (CONV3 | base | change).items() if v is not None}
        assert not cpu_winograd_dot.applicable(KernelSpec.make("conv2d", **a), 16, True), why


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_within_its_bounds(ex, spec):
    check_within_bounds(ex, spec)


def check_within_bounds(ex, spec) -> None:
    """The kernel built for ``spec`` within the emulated and the exact bound (the module's docstring); Winograd by
    output channels with bf16 products (``tests/kernels/test_winograd_dot_by_weights_cpu.py``) has the same."""
    M, N, K = gemm_mnk(spec)
    C = int(spec.attr("C"))
    rng = np.random.default_rng(23)
    arrays, w = fx.gemm_inputs(spec, rng)
    x = arrays["x"].astype(np.float64)
    bias = arrays["bias"] if spec.attr("bias") else 0
    res = arrays["res"] if spec.attr("residual") else 0
    act = silu_np if str(spec.attr("act", "none")) == "silu" else (lambda t: t)
    got = fx.run_spec(ex, spec, arrays).reshape(M, N).astype(np.float64)
    out_round = HALF_ULP[spec.param("y").dtype]

    emu, mag_b = _emulated(spec, x, w)
    y_emu = act(emu + bias) + res
    # SiLU's slope is at most 1.1, so the sums' error bounds the outputs' after it
    tight = 1.1 * (C + 12) * U32 * mag_b + 8 * U32 * (1 + np.abs(y_emu)) + 1.01 * out_round * np.abs(y_emu)
    over = np.abs(got - y_emu) > tight
    assert over.mean() <= 1e-3, (int(over.sum()), float(np.max(np.abs(got - y_emu) / tight)))

    xm = im2col_np(x, dict(spec.attrs)).reshape(M, K)
    y = act(xm @ w.T + bias) + res
    mag = _magnitude(spec, x, w)  # the f32 Winograd test's (|A|^T [(|G| |g| |G|^T) . (|B|^T |d| |B|)] |A|)
    exact = 1.1 * (UB + (C + 12) * U32) * mag + 8 * U32 * (1 + np.abs(y)) + 1.01 * out_round * np.abs(y)
    err = np.abs(got - y)
    assert np.all(err <= exact), float(np.max(err / exact))
    assert np.abs(y).max() > 1  # not trivially small
    # the bf16 roundings of U and V are the error: the kernel is far closer to their emulation than to the exact
    # conv (a kernel on f32 products would be the other way round, and fail the tight bound); with 16-bit outputs
    # their own rounding hides both
    if not out_round:
        assert 20 * np.median(np.abs(got - y_emu)) < np.median(err)
