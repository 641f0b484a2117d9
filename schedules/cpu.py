"""CPU schedules (LLVM): parallel over output tiles, vector lanes over contiguous output columns, cache blocking.

Shapes are static, so tile sizes are picked per spec. A split whose factor does not divide the extent leaves a
predicate in the loop nest; the factors below divide the common shapes (768, 3072, 64) so the hot loops stay
clean, and odd shapes remain correct, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

from sdcompile.kernels.dequant import scale_stages
from sdcompile.kernels.spec import KernelSpec
from sdcompile.quant.types import get as get_type


@dataclass(frozen=True)
class CpuInfo:
    """What the schedules need to know about the CPU: f32 lanes per vector register and how many registers."""

    lanes: int = 16  # AVX-512
    registers: int = 32


def _divisor(n: int, cap: int, multiple: int = 1) -> int:
    """The largest divisor of n that is <= cap and a multiple of ``multiple``; cap itself if there is none."""
    for f in range(min(cap, n), 0, -1):
        if n % f == 0 and f % multiple == 0:
            return f
    return min(cap, n)


def register_tile(M: int, N: int, cpu: CpuInfo) -> tuple[int, int]:
    """(rows, vectors) of the matmul register tile: rows x vectors accumulators, plus one register per weight
    vector and one broadcast of x, must fit the register file. Rows must divide M: a tail predicate inside the
    unrolled tile makes LLVM shuffle the whole accumulator set every iteration (measured 3x slower)."""
    best = (1, 1)
    for nv in range(4, 0, -1):
        if N % (nv * cpu.lanes):
            continue
        for mr in range(min(M, 16), 0, -1):
            if M % mr == 0 and mr * nv + nv + 1 <= cpu.registers and mr * nv > best[0] * best[1]:
                best = (mr, nv)
    return best


def _row_block(M: int, mr: int, target: int = 512) -> int:
    """Rows per block for a long input: a multiple of mr dividing M, the largest <= target unless that is tiny
    (M / mr prime, say), then the smallest above it."""
    blocks = [mr * d for d in range(1, M // mr + 1) if (M // mr) % d == 0]
    below = [b for b in blocks if b <= target]
    return below[-1] if below and below[-1] >= target // 4 else min(b for b in blocks if b > target)


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu: CpuInfo) -> None:
    M, N, K = (int(spec.attr(k)) for k in "MNK")
    wdq, mm, y = (sch.get_sblock(n) for n in ("wdq", "mm", "y"))
    mr, nv = register_tile(M, N, cpu)
    nb = nv * cpu.lanes if N % cpu.lanes == 0 else _divisor(N, 64)  # output columns per task
    kb = _divisor(K, 256, 32)  # K per decoded tile: kb x nb f32 stays in L2
    m, n, k = sch.get_loops(mm)
    n0, n1 = sch.split(n, [None, nb])
    k0, k1 = sch.split(k, [None, kb])
    # Rows per task: all of them for a prompt-sized M, so each decoded tile serves every row; for long inputs (a
    # UNet's 4096 tokens) blocks of at most 512 rows keep the x panel (rows x kb) in L2, at the price of decoding
    # W once per block, which is small next to 2 * 512 flops per weight.
    mb = M if M <= 512 else _row_block(M, mr)
    mB, m = sch.split(m, [None, mb])
    m0, m1 = sch.split(m, [None, mr])
    # n0 outermost and parallel; each decoded tile (k0) serves every row block m0 before the next is decoded.
    n1o, n1i = sch.split(n1, [None, cpu.lanes]) if nb % cpu.lanes == 0 else (None, n1)
    sch.reorder(n0, mB, k0, m0, k1, m1, *([n1o] if n1o else []), n1i)
    sch.parallel(sch.fuse(n0, mB))
    n0 = sch.get_loops(mm)[0]
    sch.compute_at(wdq, k0)
    for name in scale_stages(str(spec.attr("wtype"))):  # the tile's block scales, decoded once per block
        sch.compute_at(sch.get_sblock(name), k0)
    # Decode with k outer, n inner: stores into the [k][n] tile are contiguous, and the tile's rows of W are read
    # in step. Measured per weight, one thread, M = 1 (decode-bound): 0.5 ns for q4_0/q8_0 against 2 ns for the
    # row-wise order, whose transposed stores become scatters into a few cache sets. Plain floats read 16 rows at
    # a time: rows K * 4 bytes apart share L1 sets, and 64 of them at once thrash the set.
    dk, dn = sch.get_loops(wdq)[-2:]
    if get_type(str(spec.attr("wtype"))).is_float and nb % 16 == 0:
        dn0, dn1 = sch.split(dn, [None, 16])
        sch.reorder(dn0, dk, dn1)
    # LLVM handles <16 x float> well but scalarizes odd widths like <48 x float>: vectorize one register's width.
    sch.unroll(m1)
    if n1o is not None:
        sch.unroll(n1o)
    sch.vectorize(n1i)
    sch.reverse_compute_at(y, n0)
    ym, yn = sch.get_loops(y)[-2:]
    sch.vectorize(yn)
    # vectorize must precede decompose_reduction (TOOLCHAIN.md).
    init = sch.decompose_reduction(mm, k0)
    sch.vectorize(sch.get_loops(init)[-1])


def embed(sch: s_tir.Schedule, spec: KernelSpec, cpu: CpuInfo) -> None:
    y = sch.get_sblock("y")
    m, d = sch.get_loops(y)
    sch.parallel(m)


def layer_norm(sch: s_tir.Schedule, spec: KernelSpec, cpu: CpuInfo) -> None:
    D = int(spec.attr("D"))
    mean, var, y = (sch.get_sblock(n) for n in ("mean", "var", "y"))
    m, d = sch.get_loops(y)
    sch.parallel(m)
    sch.compute_at(var, m)
    sch.compute_at(mean, m)
    if D % cpu.lanes == 0:
        d0, d1 = sch.split(d, [None, cpu.lanes])
        sch.vectorize(d1)


def attention(sch: s_tir.Schedule, spec: KernelSpec, cpu: CpuInfo) -> None:
    B, S, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
    score, rmax, prob, rsum, oacc, o = (sch.get_sblock(n) for n in ("score", "rmax", "prob", "rsum", "oacc", "o"))
    r, c = sch.get_loops(o)
    b, i = sch.split(r, [B, S])
    h, e = sch.split(c, [H, Dh])
    sch.reorder(b, h, i, e)
    row = sch.fuse(b, h, i)
    sch.parallel(row)
    # Every intermediate lives per query row: O(S) floats, whatever the sequence length.
    sch.compute_at(oacc, row)
    sch.compute_at(rsum, row)
    sch.compute_at(prob, row)
    sch.compute_at(rmax, row)
    sch.compute_at(score, row)
    # oacc: for each key j, add p_j * v[j, :] across the head's Dh lanes (contiguous in v).
    oe, oj = sch.get_loops(oacc)[-2:]
    sch.reorder(oj, oe)
    sch.vectorize(oe)
    sch.decompose_reduction(oacc, oj)
    sch.vectorize(e)


RULES = {"linear": linear, "embed": embed, "layer_norm": layer_norm, "attention": attention}
