"""CPU conv2d 3x3 (stride 1, padding 1) by Winograd's F(2x2, 3x3) with bf16 products on the vector unit
(AVX512_BF16's ``vdpbf16ps``): ``compile --compute bf16`` on CPUs without the AMX tile unit (AMD Zen 4).

``cpu_winograd``'s loop nest and transforms (Y = A^T [(G g G^T) . (B^T d B)] A, 16 GEMMs over the channels, one
per position of the transformed 4 x 4 tile), with the GEMMs' operands as ``cpu_bf16_dot`` takes them: bf16 pairs of
consecutive channels in one 32-bit word, so each ``vdpbf16ps`` does 32 multiply-adds (twice the f32 FMA rate on
Zen 4) on top of the 2.25x fewer products than the direct conv:

- U = G g G^T in f32 from the weights as stored (f32, f16, bf16, or a GGUF type ``quant_vec`` decodes to f32, as
  ``cpu_winograd`` reads them), rounded to bf16 once (``vcvtne2ps2bf16``) and packed per call into panels [xi][channel
  pair][NR outputs] of pair words (32 channels per conversion, then a 16 x 16 register transpose);
- V = B^T d B in f32, rounded to bf16 once, rows of pair words [channel pair] per tile and xi;
- per pair step the register block multiplies NB weight words by MR broadcast V words; sums in f32; A^T M A and the
  fused epilogue in f32, as ``cpu_winograd``.

Numerics: as PyTorch's bf16 autocast rounds a conv's x and w to bf16 and sums in f32, this rounds U and V, each a
short sum of x or w values (F(2x2)'s coefficients are 0, +-1 and +-1/2): a relative error of 2^-9 on terms whose
magnitudes are at most 4 |d| and 9/4 |g|, so the bound is a small multiple of the direct bf16 conv's
(``tests/kernels/test_winograd_dot_cpu.py``). F(4x4)'s larger, inexact coefficients would multiply it further: not
used. Requirements: channels in whole conversions of 32, N in whole vectors.

Where: every 3x3 conv the f32 Winograd kernel would take (``cpu_winograd.applicable``: 128 tiles and 64 channels
or more), in place of both the direct bf16 GEMM (``cpu_bf16_dot``) and Winograd in f32, which the ``mma`` pass had
kept for the convs over 8,192 pixels. Measured on AMD Zen 4 (2 threads, f16 weights, GFLOP/s counted as the direct
conv's, one process alternating the builds; ``benchmarks/.work`` scratch):

    shape (batch)                    this kernel   direct bf16 (cpu_bf16_dot)   Winograd f32 (F(4x4) from 512 tiles)
    UNet 32x32 320->320 (2)          757 (4.99 ms)   415 (1.82x)                  399 (1.90x)
    UNet 64x64 320->320 (2)          875             403 (2.17x)                  612 (1.43x)
    UNet 32x32 640->640 (2)          768             429 (1.79x)                  375 (2.05x)
    UNet 16x16 1280->1280 (2)        632             428 (1.48x)                  324 (1.95x)
    UNet 16x16 640->640 (2)          674             419 (1.61x)                  367 (1.83x)
    VAE 128x128 512->512 (1)         924             429 (2.15x)                  568 (1.63x)
    VAE 256x256 256->256 (1)         901             407 (2.21x)                  745 (1.21x)

One thread (``benchmarks/bf16_dot.py --torch``, ``results/bf16_dot_zen4.json``): 302-457 GFLOP/s on these shapes
against PyTorch bf16's 223-234 (oneDNN, the same ISA) and the direct GEMM's 199-213.

In the model (alternating in one process): the guided UNet at 256x256 0.925 -> 0.809 s, at 512x512 4.19 -> 3.63 s,
the VAE decode at 512x512 4.57 -> 3.23 s. Error against the f32 artifact (itself within 1e-5 of diffusers), rel rms
over the output: UNet 512x512 8.0e-3 -> 8.6e-3, VAE decode 3.8e-3 -> 7.6e-3 (its convs had been f32 Winograd);
PyTorch's bf16 on the same weights and inputs: 1.4e-2 and 1.2e-2.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules import cpu_winograd
from schedules.cpu_bf16_dot import target_has_bf16_dot
from schedules.tir_build import (
    bf16_words,
    dot_bf16_words,
    importing_bf16_words,
    prim_func,
    replace_body,
    transpose16,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec

# inputs rounded to bf16 before any other use: none (x goes through the f32 input transform first)
ROUNDS_TO_BF16 = ()


def applicable(spec: KernelSpec, lanes: int, host_dot: bool) -> bool:
    """A 3x3 conv asking for bf16 products that the f32 Winograd kernel would take (stride 1, padding 1, enough
    tiles and channels; float weights or a GGUF type ``quant_vec`` decodes), with channels in whole conversions of
    32, on a host with AVX512_BF16 whose tile unit does not take the job (``host_dot``)."""
    return bf16_applicable(spec, lanes, host_dot, cpu_winograd.applicable)


def bf16_applicable(spec: KernelSpec, lanes: int, host_dot: bool, f32_applicable) -> bool:
    """Whether a Winograd kernel with bf16 products takes ``spec``: a conv asking for them, channels in whole
    conversions of 32, a host with AVX512_BF16 and no tile unit taking the job (``host_dot``), and the shape its f32
    counterpart takes (``f32_applicable``, asked about the spec with f32 products: it takes only those)."""
    if spec.attr("mma") != "bf16" or spec.op != "conv2d" or not host_dot or spec.attr("wlayout"):
        return False
    if int(spec.attr("C")) % 32:
        return False
    f32 = KernelSpec(spec.op, tuple(kv for kv in spec.attrs if kv[0] != "mma"))
    return f32_applicable(f32, lanes) and target_has_bf16_dot()


class _WinogradDot(cpu_winograd._WinogradConv):
    PER_WORD = 2  # U and V as bf16 pair words

    def tile_m(self, a: dict) -> int:
        return 2  # F(2x2, 3x3) only (see the module's numerics)

    def build(self) -> None:
        with importing_bf16_words():
            super().build()

    def mac(self, acc, x, w):
        return dot_bf16_words(acc, x, w)

    def pack_filters(self, panel, ul, u, cw) -> None:
        """Unit u's U for channels 32 cw .. 32 cw + 31, all 16 positions, into its panels [xi][pair][NR] (block ul):
        per 16 output channels, each filter's 16 transformed values for the 32 channels as 16 pair words into a
        scratch [xi][row], then per xi a 16 x 16 register transpose into pair steps 16 cw .. 16 cw + 15."""
        scratch = vector_regs(self.XI * 16)
        with T.serial(0, self.NB) as j:
            with T.serial(0, 16) as r:
                row = T.bind(u * self.NR + 16 * j + r)
                halves = []
                for h in range(2):
                    g = [T.bind(self._wvec(row, tap * self.C + 32 * cw + 16 * h, 16)) for tap in range(9)]
                    halves.append(cpu_winograd.transform(self.G, g, 3))
                for xi in range(self.XI):
                    vstore(scratch, (xi * 16 + r) * 16, bf16_words(halves[1][xi], halves[0][xi]), 16)
            with T.serial(0, self.XI) as xi:
                rows = [T.bind(vload(scratch, (xi * 16 + r) * 16, 16)) for r in range(16)]
                for p, vec in enumerate(transpose16(rows)):
                    at = ((ul * self.XI + xi) * self.KR + 16 * cw + p) * self.NR + 16 * j
                    vstore(panel, at, vec, 16)

    def store_v(self, tile, vg, ml) -> None:
        """B^T d B of the tile's channels, 32 at a time, as pair words into row ml of each xi's rows."""
        with T.serial(0, self.C // 32) as cw:
            lo = cpu_winograd.transform(self.BT, tile(32 * cw), self.alpha)
            hi = cpu_winograd.transform(self.BT, tile(32 * cw + 16), self.alpha)
            for xi in range(self.XI):
                vstore(vg, self.xat(xi * self.RG + ml, 16 * cw), bf16_words(hi[xi], lo[xi]), 16)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The bf16 Winograd conv PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _WinogradDot(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the bf16 Winograd loop nest."""
    replace_body(sch, spec, build)


__all__ = ["ROUNDS_TO_BF16", "applicable", "build", "linear"]
