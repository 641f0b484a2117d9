"""CPU schedules (LLVM): parallel over output tiles, vector lanes over contiguous output columns, cache blocking.

Shapes are static, so tile sizes are picked per spec. A split whose factor does not divide the extent leaves a
predicate in the loop nest; the factors below divide the common shapes (768, 3072, 64) so the hot loops stay
clean, and odd shapes remain correct, only slower. Vectorized loops get a width that divides their extent
(``_lanes_for``): TVM scalarizes a vector loop with a predicate. Row reductions are vectorized through rfactor, and
importing this module makes LLVM targets lower exp to vector arithmetic (``_vector_exp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, tirx

from sdcompile.kernels.dequant import scale_stages
from sdcompile.kernels.spec import KernelSpec, gemm_mnk
from sdcompile.quant.types import get as get_type

# --- exp ---------------------------------------------------------------------------------------------------------
# TVM lowers exp to LLVM's llvm.exp intrinsic, which x86 LLVM expands into one libm expf call per lane: a vectorized
# softmax or quick_gelu epilogue becomes 16 scalar calls per vector (measured ~5 ns per element, a third of the
# quick_gelu linear's time). The rule below replaces that lowering, for LLVM targets only, with Cephes' expf in
# vector arithmetic. It is registered once, when the CPU schedules are imported; GPU targets keep their own exp,
# and the kernels' TE stays target-neutral.
_TVM_EXP = tvm.ir.Op.get("tirx.exp").get_attr("llvm.FLowerIntrinsic")  # TVM's own rule, kept for other dtypes


def _f32_bits(v: float) -> int:
    return int(np.array(v, np.float32).view(np.int32))


def _vector_exp(call):
    """exp of an f32 scalar or vector: within 1 ulp of the exact value (checked on 10^6 points over [-100, 100]);
    results below 2^-126 are subnormals, 0 below x = -104; +inf above ln(FLT_MAX); NaN stays NaN.

    x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite: ln2 in two parts, so n ln2 is exact), exp(r) from a degree-7
    polynomial, times 2^n built from exponent bits as 2^(n//2) * 2^(n - n//2), so every n in [-150, 128] stays in
    range of a normal power of two."""
    x = call.args[0]
    dtype = str(x.ty)
    if dtype.split("x")[0] != "float32":
        return _TVM_EXP(call)
    lanes = dtype[len("float32") :]  # "" or "x<lanes>"

    def f(v: float):
        return tirx.const(float(np.float32(v)), "float32" + lanes)

    def i(v: int):
        return tirx.const(int(v), "int32" + lanes)

    def as_f32(bits):
        return tirx.reinterpret("float32" + lanes, bits)

    hi, lo = 88.72283935546875, -104.0
    magic = 12582912.0  # 1.5 * 2^23: adding it rounds to an integer, which lands in the low mantissa bits
    t = tirx.Min(tirx.Max(x, f(lo)), f(hi)) * f(1.4426950408889634) + f(magic)
    n = t - f(magic)
    r = x - n * f(0.693359375) - n * f(-2.12194440e-4)  # from x, not the clamped x, so NaN propagates
    p = f(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f(c)
    p = p * (r * r) + r + f(1.0)
    ni = tirx.reinterpret("int32" + lanes, t) - i(_f32_bits(magic))
    half = tirx.shift_right(ni, i(1))
    y = p * as_f32(tirx.shift_left(half + i(127), i(23))) * as_f32(tirx.shift_left(ni - half + i(127), i(23)))
    y = tirx.Select(x < f(lo), f(0.0), y)  # exactly 0 for the attention mask's exp(lowest - max)
    return tirx.Select(x > f(hi), as_f32(i(0x7F800000)), y)


tvm.tirx.op.register_intrin_lowering("tirx.exp", target="llvm", f=_vector_exp, level=99)


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
    M, N, K = gemm_mnk(spec)
    wdq, mm, y = (sch.get_sblock(n) for n in ("wdq", "mm", "y"))
    mr, nv = register_tile(M, N, cpu)
    nb = nv * cpu.lanes if N % cpu.lanes == 0 else _divisor(N, 64)  # output columns per task
    conv = spec.op == "conv2d"
    # K per decoded tile: kb x nb f32 stays in L2. A conv's tile stays inside one kernel tap (kb divides C), so the
    # patch panel below copies whole runs of channels.
    kb = _divisor(int(spec.attr("C")), 256, 16) if conv else _divisor(K, 256, 32)
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
    # A conv over many row blocks (a VAE level: 65,536 pixels) runs a task per row block, with the column tiles
    # inside the K tile: each patch panel is gathered once for all N columns instead of once per column tile (eight
    # times at 512 channels), and the weight tile it meets is decoded per row block (1/512 of the multiply-adds).
    rows_outer = conv and M // mb >= 4 and N > nb
    if rows_outer:
        sch.reorder(mB, k0, n0, m0, k1, m1, *([n1o] if n1o else []), n1i)
        sch.parallel(mB)
        task, tile = mB, n0
    else:
        sch.reorder(n0, mB, k0, m0, k1, m1, *([n1o] if n1o else []), n1i)
        task = tile = sch.fuse(n0, mB)
        sch.parallel(task)
    sch.compute_at(wdq, k0 if not rows_outer else tile)
    if conv:  # the patches of this row block and K tile, gathered once into a panel the micro-kernel streams
        xcol = sch.get_sblock("xcol")
        sch.compute_at(xcol, k0)
        sch.vectorize(sch.get_loops(xcol)[-1])
    for name in scale_stages(str(spec.attr("wtype"))):  # the tile's block scales, decoded once per block
        sch.compute_at(sch.get_sblock(name), k0 if not rows_outer else tile)
    n0 = task
    # Decode with k outer, n inner: stores into the [k][n] tile are contiguous, and the tile's rows of W are read
    # in step. Measured per weight, one thread, M = 1 (decode-bound): 0.5 ns for q4_0/q8_0 against 2 ns for the
    # row-wise order, whose transposed stores become scatters into a few cache sets. Plain floats read 16 rows at
    # a time (rows K * 4 bytes apart share L1 sets, and 64 of them at once thrash the set), as unrolled 16 x 16
    # blocks, k outer: LLVM turns each block into gathers of 8 rows and contiguous stores. Left rolled, it
    # vectorized the k loop instead (scatters, ~1 cycle per weight: 20% of a 77-row f32 matmul). Measured, one
    # thread, f32 (f16): 765 -> 635 us (840 -> 770) at M = 77, N = K = 768; 990 -> 490 us (1360 -> 1100) at M = 1.
    dk, dn = sch.get_loops(wdq)[-2:]
    if get_type(str(spec.attr("wtype"))).is_float and nb % 16 == 0:
        dn0, dn1 = sch.split(dn, [None, 16])
        dk0, dk1 = sch.split(dk, [None, 16])
        sch.reorder(dn0, dk0, dk1, dn1)
        sch.unroll(dk1)
        sch.unroll(dn1)
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


def _lanes_for(n: int, cpu: CpuInfo) -> int:
    """Vector width for a loop of extent n. It must divide n: TVM scalarizes a vectorized loop that has a tail
    predicate. A full register if it divides n, else half of one (LLVM loads <8 x float> in one instruction but
    assembles <10 x float> from three), else the largest divisor that fits (11 lanes for 77 tokens)."""
    if n <= cpu.lanes:
        return n
    pow2 = max(p for p in (1, 2, 4, 8, 16, 32) if p <= cpu.lanes and n % p == 0)
    return pow2 if 2 * pow2 >= cpu.lanes else _divisor(n, cpu.lanes)


def _vector_reduce(sch: s_tir.Schedule, block, lanes: int):
    """Split a row reduction (a block whose last loop sums or maxes over the row) into ``lanes`` partial results,
    each updated by one vector lane, and a final combine of the partials; returns the partials' block, or None
    where there is nothing to gain. A scalar reduction is a chain of dependent adds bound by their latency (4
    cycles each): it made layer_norm 2 ns per element. rfactor needs the reduction's own loop nest, so this comes
    before any compute_at; ``_vectorize_partials`` finishes the job after it."""
    r = sch.get_loops(block)[-1]
    if lanes < 4 or int(sch.get(r).extent) <= lanes:
        return None
    r0, r1 = sch.split(r, [None, lanes])
    return sch.rfactor(r1, 0)


def _vectorize_partials(sch: s_tir.Schedule, rf, depth: int) -> None:
    """Below the ``depth`` loops it was computed at, the partials' loops are (lane, [rows,] element): put the lanes
    innermost and vectorize them."""
    lane, *rows, red = sch.get_loops(rf)[depth:]
    sch.reorder(*rows, red, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(rf, red)
    sch.vectorize(sch.get_loops(init)[-1])


def layer_norm(sch: s_tir.Schedule, spec: KernelSpec, cpu: CpuInfo) -> None:
    """Parallel over rows; the mean and the variance are vector reductions (77 x 768: 128 -> 14 us, one thread)."""
    D = int(spec.attr("D"))
    lanes = _lanes_for(D, cpu)
    mean, var, y = (sch.get_sblock(n) for n in ("mean", "var", "y"))
    mean_rf = _vector_reduce(sch, mean, lanes)
    var_rf = _vector_reduce(sch, var, lanes)
    m, d = sch.get_loops(y)
    sch.parallel(m)
    for blk in (var, var_rf, mean, mean_rf):  # consumers first: each lands before its users in the row loop
        if blk is not None:
            sch.compute_at(blk, m)
    for rf in (mean_rf, var_rf):
        if rf is not None:
            _vectorize_partials(sch, rf, 1)
    d0, d1 = sch.split(d, [None, lanes])
    sch.vectorize(d1)


def _attention_tile(S: int, nvec: int, cpu: CpuInfo) -> tuple[int, int]:
    """(rows, channel vectors) of the p @ v register tile, which also sets the rows of the q k^T tile. At most 4 rows:
    each row costs a broadcast load per key (q.k) or per channel vector (p.v), so tall tiles starve the FMA units
    on loads (16 rows x 1 vector of 8 channels made p @ v one load per multiply-add at SD's 40-channel heads); the
    channel vectors fill the remaining registers (4 rows x 5 vectors). Measured at B2 H8 S1024 Dh40, one thread:
    31 -> 28 ms; softmax's exp and reductions cost about as much as the two products at 40 channels."""
    rows = max(r for r in range(1, min(S, 4) + 1) if S % r == 0)
    ev = max(v for v in range(1, nvec + 1) if nvec % v == 0 and rows * v + v + 1 <= cpu.registers)
    return rows, ev


def attention_kernel(spec: KernelSpec, cpu: CpuInfo):
    """The flash-attention module that takes ``spec`` on this CPU, or None (the row kernel of ``attention``)."""
    from schedules import cpu_attention_amx, cpu_attention_dot, cpu_attention_fma
    from sdcompile.codegen.tvm_layer import host_amx_bf16

    if cpu_attention_amx.applicable(spec, cpu.lanes, host_amx_bf16()):  # --compute bf16: flash attention on AMX
        return cpu_attention_amx
    if cpu_attention_dot.applicable(spec, cpu.lanes, host_amx_bf16()):  # --compute bf16 without AMX: vdpbf16ps
        return cpu_attention_dot
    if cpu_attention_fma.applicable(spec, cpu.lanes):  # f32 products, a UNet's long sequences: FMA flash attention
        return cpu_attention_fma
    return None


def attention(sch: s_tir.Schedule, spec: KernelSpec, cpu: CpuInfo) -> None:
    """Per head, a block of query rows at a time, every step on vectors:

    - the head's keys are staged transposed, kt[d][j] (a cache_read of k laid out [channel][key]), so scores are
      a small matmul: for each channel d, a register tile of rows x key vectors += q[i, d] (broadcast) * kt[d, j:];
    - row max and row sum are vector reductions (rfactor), exp is vectorized (``_vector_exp``);
    - p @ v is a matmul with a rows x channel-vectors register tile, v rows read contiguously.

    Intermediates stay O(rows x S) per task, whatever the sequence length. The rows per block are the p @ v tile's
    (``register_tile``), so they divide S: 11 for 77 tokens, times two 16-channel vectors. Measured at the SD1.5
    text encoder's shape (B1 H12 S77 Dh64), one thread: 2550 -> 250 us, from scalar q.k dot products over Dh, scalar
    row reductions and one libm expf call per score.
    """
    flash = attention_kernel(spec, cpu)
    if flash is not None:
        flash.attention(sch, spec, cpu)
        return
    B, S, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
    if spec.attr("tiled"):
        # The online-softmax kernel (sdcompile/kernels/attention_tiled.py): legalization picks it for GPU backends
        # only, the kernel below handles any length on a CPU, but a tiled spec runs here too. A task per query row
        # walks the key tiles with the running state and the tile's stages in its stack; channel loops are vectors.
        from sdcompile.kernels.attention_tiled import key_tiles

        blocks = ("score", "tmax", "prob", "tsum", "tacc", "run", "o")
        score, tmax, prob, tsum, tacc, run, o = (sch.get_sblock(n) for n in blocks)
        r, c = sch.get_loops(o)
        b, i = sch.split(r, [B, S])
        h, e = sch.split(c, [H, Dh])
        sch.reorder(b, h, i, e)
        task = sch.fuse(b, h, i)
        sch.parallel(task)
        el = _lanes_for(Dh, cpu)
        sch.vectorize(sch.split(e, [None, el])[1])
        tiles = key_tiles(spec)[1]
        sch.compute_at(run, task)
        # (channel, tile) loops; compute_at leaves out a loop of one iteration (one channel, one tile).
        own = sch.get_loops(run)[1:]
        anchor = own[-1] if tiles > 1 else task
        if tiles > 1 and len(own) == 2:
            sch.reorder(own[1], own[0])
        for blk in (tacc, tsum, prob, tmax, score):
            sch.compute_at(blk, anchor)
        *e_acc, j = sch.get_loops(tacc)[2 if tiles > 1 else 1 :]
        if e_acc:  # keys outer, channel vectors inner
            sch.reorder(j, e_acc[0])
            sch.vectorize(sch.split(e_acc[0], [None, el])[1])
        return
    T = int(spec.attr("T", S))  # keys: S for self-attention, the context length for cross-attention
    score, rmax, prob, rsum, oacc, o = (sch.get_sblock(n) for n in ("score", "rmax", "prob", "rsum", "oacc", "o"))
    if T == 1 or S == 1:  # one key (o = v) or one query: loops of extent 1 below, which compute_at drops
        sch.parallel(sch.get_loops(o)[0])
        return
    kl, el = _lanes_for(T, cpu), _lanes_for(Dh, cpu)  # lanes over keys, over head channels
    rows, ev = _attention_tile(S, Dh // el, cpu)
    # Parallel tasks: heads, and for fewer than 8 heads (a VAE's single-head attention) row groups as well; each
    # task stages its head's keys once, so more groups would repeat that transpose.
    # Row groups only for one image: with B > 1 the fused (b, h, group) task loop makes TVM's region analysis see
    # the staged keys as written piecewise and refuse to vectorize (B images already give B tasks).
    groups = _divisor(S // rows, -(-8 // (B * H))) if B == 1 else 1
    r, c = sch.get_loops(o)
    b, i = sch.split(r, [B, S])
    h, e = sch.split(c, [H, Dh])
    ig, i0, i1 = sch.split(i, [groups, None, rows])
    sch.reorder(b, h, ig, i0, i1, e)
    task = sch.fuse(b, h, ig)
    sch.parallel(task)
    kt = sch.cache_read(score, 1, "global")  # score reads (q, k)
    sch.transform_layout(kt, ("write", 0), lambda r, c: (c, r))
    rmax_rf = _vector_reduce(sch, rmax, kl)
    rsum_rf = _vector_reduce(sch, rsum, kl)
    for blk in (oacc, rsum, rsum_rf, prob, rmax, rmax_rf, score):  # consumers first
        if blk is not None:
            sch.compute_at(blk, i0)
    sch.compute_at(kt, task)
    # Below here every block sits under (task, i0); ``*ri`` is the row loop, absent when rows == 1.
    for rf in (rmax_rf, rsum_rf):
        if rf is not None:
            _vectorize_partials(sch, rf, 2)

    # Scores: for each channel d, rows x u key vectors accumulate in registers (each kt vector serves all rows,
    # each q[i, d] becomes an FMA's broadcast operand).
    *ri, j, d = sch.get_loops(score)[2:]
    nkv = T // kl
    u = max(f for f in range(1, nkv + 1) if nkv % f == 0 and f * rows + f + 1 <= cpu.registers)
    jt, ju, jv = sch.split(j, [None, u, kl])
    sch.reorder(jt, d, *ri, ju, jv)
    for lp in (*ri, ju):
        sch.unroll(lp)
    sch.vectorize(jv)
    init = sch.decompose_reduction(score, d)  # after vectorize (TOOLCHAIN.md)
    sch.vectorize(sch.get_loops(init)[-1])

    p0, p1 = sch.split(sch.get_loops(prob)[-1], [None, kl])
    sch.vectorize(p1)

    # p @ v: for each key j, rows x ev channel vectors accumulate p[i, j] (broadcast) * v[j, e:]; heads wider than
    # ev vectors (a VAE's 512 channels) take several passes over the keys.
    *ri, oe, oj = sch.get_loops(oacc)[2:]
    oeo, oe0, oe1 = sch.split(oe, [None, ev, el])
    sch.reorder(oeo, oj, *ri, oe0, oe1)
    for lp in (*ri, oe0):
        sch.unroll(lp)
    sch.vectorize(oe1)
    init = sch.decompose_reduction(oacc, oj)
    sch.vectorize(sch.get_loops(init)[-1])
    e0, e1 = sch.split(e, [None, el])
    sch.vectorize(e1)


def group_norm(sch: s_tir.Schedule, spec: KernelSpec, cpu: CpuInfo) -> None:
    """Three parallel passes, each reading the activation front to back: the chunk sums (``psum``), then the centred
    sums of squares (``pvar``), each a task per chunk of pixels that walks its pixels and, per pixel, every group's
    channels in memory order; then the output, a task per row of pixels with channel vectors. A task per (image,
    group) read each pixel's few channels of one group at a time: with 4 channels per group (the VAE's 128-channel
    levels) four tasks shared every cache line, and loops of 4 channels stayed scalar (measured, one thread,
    B1 N65536 C128 with SiLU: 77 ms)."""
    B, N, C, G = (int(spec.attr(k)) for k in ("B", "N", "C", "G"))
    for name in ("psum", "pvar"):
        part = sch.get_sblock(name)
        bg, k, n1, c1 = sch.get_loops(part)
        b, g = sch.split(bg, [B, G])
        sch.reorder(k, b, n1, g, c1)
        sch.parallel(k)
        if C // G <= 16:
            sch.unroll(c1)
        sch.decompose_reduction(part, n1)
    y = sch.get_sblock("y")
    b, n, c = sch.get_loops(y)
    sch.parallel(sch.fuse(b, n))
    lanes = _lanes_for(C, cpu)
    sch.vectorize(sch.split(c, [None, lanes])[1])


RULES = {
    "linear": linear,
    "embed": embed,
    "layer_norm": layer_norm,
    "group_norm": group_norm,
    "attention": attention,
}
