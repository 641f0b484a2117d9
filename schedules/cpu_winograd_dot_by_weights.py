"""CPU conv2d 3x3 (stride 1, padding 1) by Winograd's F(2x2, 3x3) with bf16 products on the vector unit
(AVX512_BF16's ``vdpbf16ps``) for convs over 16 to 128 tiles: ``cpu_winograd_by_weights``'s loop nest (by output
channels, U transformed pass by pass in L2, the GEMMs swapped: tiles in the lanes) with ``cpu_winograd_dot``'s
operands, for ``compile --compute bf16`` on CPUs without the AMX tile unit (AMD Zen 4), where the direct bf16 GEMM
(``cpu_bf16_dot``) or ``cpu_winograd_dot`` ran.

- U = G g G^T in f32 from the weights as stored, rounded to bf16 once and kept as words of consecutive channel pairs
  (32 channels per ``vcvtne2ps2bf16``), the rows the broadcasts read;
- V = B^T d B in f32 per tile, transposed into vectors over 16 tiles per channel, and two channels' vectors
  interleaved into words of pairs (``interleaved_bf16``), rounded to bf16 once;
- per pair step the register block multiplies NB tile words by MR broadcast U words; sums, A^T M A and the fused
  epilogue in f32.

Numerics: ``cpu_winograd_dot``'s (U and V rounded to bf16 once, products and sums in f32, the sums over channel pairs
in order), so its bound holds (``tests/kernels/test_winograd_dot_cpu.py``). Requirements: channels in whole
conversions of 32.

Measured (AMD Zen 4, 2 threads, f16 weights, GFLOP/s counted as the direct conv's, alternating in one process;
``benchmarks/.work`` scratch), against what ran before: the direct GEMM on the weights stored as bf16 tiles
(``cpu_bf16_dot``) at 32 tiles, ``cpu_winograd_dot`` at 128:

    shape (batch 2)          this kernel   before
    8x8 1280 -> 1280         662           428 (direct)
    8x8 2560 -> 1280         572           407 (direct)
    16x16 1280 -> 1280       792           534 (cpu_winograd_dot)
    16x16 640 -> 640         739           573 (cpu_winograd_dot)

In the model, the UNet at 256x256 with guidance and bf16 products (``sdcompile bench``, alternating): 858-864 ->
769-791 ms; its output against the f32 artifact 9.37e-3 -> 9.45e-3 (rel rms; PyTorch bf16 on the same weights
1.4e-2). Those convs' weights stay as the file stores them (this kernel transforms them; ``pack_weights`` asks the
dispatch): 247 of the UNet's weights are stored as bf16 tiles instead of 258.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules import cpu_winograd, cpu_winograd_by_weights, cpu_winograd_dot
from schedules.cpu_attention_amx import interleaved_bf16
from schedules.tir_build import (
    bf16_words,
    dot_bf16_words,
    importing_bf16_words,
    prim_func,
    replace_body,
    splat,
    transpose16,
    vector_regs,
    vload,
    vstore,
)
from sdcompile.kernels.spec import KernelSpec

# inputs rounded to bf16 before any other use: none (x goes through the f32 input transform first)
ROUNDS_TO_BF16 = ()


def applicable(spec: KernelSpec, lanes: int, host_dot: bool) -> bool:
    """A 3x3 conv asking for bf16 products that ``cpu_winograd_by_weights`` would take with f32 products, with
    channels in whole conversions of 32, on a host with AVX512_BF16 whose tile unit does not take the job
    (``host_dot``)."""
    return cpu_winograd_dot.bf16_applicable(spec, lanes, host_dot, cpu_winograd_by_weights.applicable)


class _WinogradDotByWeights(cpu_winograd_by_weights._WinogradByWeights):
    PER_WORD = 2  # U and V as bf16 pair words

    def build(self) -> None:
        with importing_bf16_words():
            super().build()

    def mac(self, acc, x, w):
        return dot_bf16_words(acc, x, w)

    def u_words(self, row, w0) -> list:
        """U's 16 xi vectors of pair words w0 .. w0 + 15 (channels 2 w0 .. 2 w0 + 31) of output channel ``row``."""
        halves = []
        for h in range(2):
            g = [T.bind(self._wvec(row, tap * self.C + 2 * w0 + 16 * h, 16)) for tap in range(9)]
            halves.append(cpu_winograd.transform(self.G, g, 3))
        return [bf16_words(halves[1][xi], halves[0][xi]) for xi in range(self.XI)]

    def prep_v(self, tv, cw) -> None:
        """V^T of tiles 16 tv .. 16 tv + 15 (zeros past T) as pair words 16 cw .. 16 cw + 15 (channels 32 cw ..
        32 cw + 31): per tile B^T d B of both halves, per xi two 16 x 16 transposes into vectors over the tiles, then
        consecutive channels' vectors interleaved into words."""
        scratch = vector_regs(self.XI * 32)  # [xi][half][tile]
        tg, j = tv // self.NB, tv % self.NB
        with T.serial(0, 16) as i:
            m = T.bind(tv * 16 + i)
            with T.If(m < self.T):
                with T.Then():
                    tile = self.input_tile(m)
                    for h in range(2):
                        for xi, v in enumerate(cpu_winograd.transform(self.BT, tile(32 * cw + 16 * h), self.alpha)):
                            vstore(scratch, ((xi * 2 + h) * 16 + i) * 16, v, 16)
                with T.Else():
                    for k in range(self.XI * 2):
                        vstore(scratch, (k * 16 + i) * 16, splat(0.0, "float32", 16), 16)
        with T.serial(0, self.XI) as xi:
            chans = []  # channel 32 cw + c's vector over the 16 tiles
            for h in range(2):
                chans += transpose16([T.bind(vload(scratch, ((xi * 2 + h) * 16 + r) * 16, 16)) for r in range(16)])
            for p in range(16):
                at = ((tg * self.XI + xi) * self.KR + 16 * cw + p) * self.NR + 16 * j
                vstore(self.vt, at, interleaved_bf16(chans[2 * p], chans[2 * p + 1], "float32x16"), 16)


def build(spec: KernelSpec, params: list) -> tirx.PrimFunc:
    """The PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _WinogradDotByWeights(spec, bufs).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with this loop nest."""
    replace_body(sch, spec, build)


__all__ = ["ROUNDS_TO_BF16", "applicable", "build", "linear"]
