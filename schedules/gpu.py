"""GPU schedules, shared by WebGPU (WGSL on Vulkan) and CUDA.

They stay within WebGPU's guaranteed limits — at most 256 invocations and 16 KB of workgroup memory per workgroup,
65535 workgroups per grid dimension, no blockIdx.z (TVM's WebGPU host reserves it) — so one schedule serves both.
Every loop ends up bound to a block or thread axis: a loop left unbound would run on the host and launch the
kernel once per iteration, which the executors do not do.
"""

from __future__ import annotations

from tvm import s_tir

from sdcompile.errors import NoKernelError
from sdcompile.kernels.dequant import scale_stages
from sdcompile.kernels.spec import KernelSpec, gemm_mnk

MAX_THREADS = 256
SHARED_BYTES = 16384
GPU_MAX_GRID = 65535
# Longest key sequence the attention schedule supports: one row of probabilities in workgroup memory, with 2 KB
# left for the reduction buffers. Legalization should read this, not rediscover it.
# 3576, not 3584: a head of 256 or 512 channels needs 16 more bytes of reduction buffers (measured: 16,400 bytes at
# T = 3584, a 448x512 VAE's attention), so longer rows take the tiled kernel.
MAX_ATTENTION_SEQ = (SHARED_BYTES - 2048) // 4 - 8


def _read_index(sch: s_tir.Schedule, block, name: str) -> int:
    """Index of the buffer called ``name`` among a block's reads (cache_read addresses reads by position)."""
    for i, region in enumerate(sch.get(block).reads):
        if str(getattr(region.source, "name", region.source)) == name:
            return i
    raise KeyError(name)


def _cooperative(sch: s_tir.Schedule, block, depth: int, threads: tuple[str, ...], extents: tuple[int, ...]) -> None:
    """Spread a stage computed inside a workgroup (``depth`` loops deep) over all of the workgroup's threads."""
    created = sch.get_loops(block)[depth:]  # compute_at leaves out unit loops, so there may be one or two
    fused = sch.fuse(*created) if len(created) > 1 else created[0]
    parts = sch.split(fused, [None, *extents])
    for lp, t in zip(parts[1:], threads):
        sch.bind(lp, t)


# GEMV (M = 1) geometry: GEMV_ROWS output rows per workgroup, GEMV_THREADS threads per row splitting K, each
# thread GEMV_VEC consecutive elements per step (consecutive threads read consecutive bytes of a block: coalesced).
GEMV_ROWS, GEMV_THREADS, GEMV_VEC = 4, 64, 4


def _gemv_fits(N: int, K: int) -> bool:
    return -(-N // GEMV_ROWS) <= GPU_MAX_GRID and K >= GEMV_THREADS


def gemv(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    """Matrix-vector product (M = 1), bound by reading the weight once: a workgroup owns GEMV_ROWS output rows;
    the GEMV_THREADS threads of a row split K, each decoding its own elements straight into a register sum (no
    workgroup-memory staging: every weight is used once), and a workgroup-memory tree reduction (TVM's cross-thread
    allreduce, no subgroup operations) combines them; the epilogue runs on the reduced value."""
    K = _mk(spec)[1]
    mm, y = sch.get_sblock("mm"), sch.get_sblock("y")
    sch.compute_inline(sch.get_sblock("wdq"))
    tx = GEMV_THREADS
    vec = GEMV_VEC if K % (tx * GEMV_VEC) == 0 else 1  # keep the K split exact where possible: no tail predicate
    m, n, k = sch.get_loops(mm)
    nb, ny = sch.split(n, [None, GEMV_ROWS])
    ko, kt, kv = sch.split(k, [None, tx, vec])
    sch.reorder(m, nb, ny, kt, ko, kv)  # kt outside ko: per-thread stages (the scales) go under ko
    sch.bind(sch.fuse(m, nb), "blockIdx.x")
    sch.bind(ny, "threadIdx.y")
    sch.bind(kt, "threadIdx.x")
    sch.unroll(kv)
    # A thread's GEMV_VEC elements share a block: decode the block's scales once per step, into registers.
    for name in scale_stages(str(spec.attr("wtype"))):
        blk = sch.get_sblock(name)
        sch.set_scope(blk, 0, "local")
        sch.compute_at(blk, ko)
    # TVM's cross-thread reduction leaves the row sum with thread x = 0 of the row, which also runs the epilogue
    # (TVM predicates it); the sum goes through workgroup memory (GEMV_ROWS floats) rather than a global buffer.
    sch.set_scope(mm, 0, "shared")
    sch.reverse_compute_at(y, ny)


def linear(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    M, K = _mk(spec)
    if M == 1 and _gemv_fits(int(spec.attr("N")), K):
        if spec.op == "conv2d":
            sch.compute_inline(sch.get_sblock("xcol"))
        gemv(sch, spec)
    else:
        tiled(sch, spec)


def _mk(spec: KernelSpec) -> tuple[int, int]:
    """Rows and reduction length of a linear or conv2d spec (a conv is a GEMM over its patches)."""
    m, _, k = gemm_mnk(spec)
    return m, k


def tiled(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    """Tiled matmul: a workgroup computes a BM x BN output tile, each thread TM x TN of it in registers; per BK
    slice of K, x and the decoded weight are staged in workgroup memory, each weight element decoded once per
    workgroup (the decode is fused into the staging, so a quant type costs nothing extra in the inner loop)."""
    M, K = _mk(spec)
    wdq, mm, y = (sch.get_sblock(n) for n in ("wdq", "mm", "y"))
    # Rows per workgroup follow M: 8 threads x 4 rows for a long input, fewer for a prompt or a decode step (M = 1
    # would otherwise leave 7 of 8 thread rows idle); the freed threads widen the tile along N instead.
    ty = min(8, _pow2_at_least(M, lo=1))
    tm = 4 if M >= 32 else 1
    tx, tn = min(64, 128 // ty), 4
    bk = 16 if tx * tn <= 128 else 8  # workgroup memory: (ty tm + tx tn) bk floats <= 8.5 KB

    for name in scale_stages(str(spec.attr("wtype"))):
        # Each staged weight element decodes its own block scale: no extra workgroup memory.
        sch.compute_inline(sch.get_sblock(name))
    acc = sch.cache_write(mm, 0, "local")
    sch.reverse_compute_inline(y)  # the epilogue runs on the accumulators, at write-back
    m, n, k = sch.get_loops(mm)
    mb, mt, mi = sch.split(m, [None, ty, tm])
    nb, nt, ni = sch.split(n, [None, tx, tn])
    ko, ki = sch.split(k, [None, bk])
    sch.reorder(mb, nb, mt, nt, ko, ki, mi, ni)
    sch.bind(mb, "blockIdx.y")
    sch.bind(nb, "blockIdx.x")
    sch.bind(mt, "threadIdx.y")
    sch.bind(nt, "threadIdx.x")
    sch.reverse_compute_at(acc, nt)

    if spec.op == "conv2d":  # the patch stage itself is what the workgroup stages (never the whole image)
        xs = sch.get_sblock("xcol")
        sch.set_scope(xs, 0, "shared")
    else:
        xs = sch.cache_read(mm, _read_index(sch, mm, "x"), "shared")
    sch.compute_at(xs, ko)
    _cooperative(sch, xs, 5, ("threadIdx.y", "threadIdx.x"), (ty, tx))
    sch.set_scope(wdq, 0, "shared")
    sch.compute_at(wdq, ko)
    _cooperative(sch, wdq, 5, ("threadIdx.y", "threadIdx.x"), (ty, tx))

    sch.unroll(mi)
    sch.unroll(ni)
    sch.decompose_reduction(mm, ko)


def embed(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    y = sch.get_sblock("y")
    m, d = sch.get_loops(y)
    d0, d1 = sch.split(d, [None, min(MAX_THREADS, _pow2_at_least(int(spec.attr("D"))))])
    sch.bind(m, "blockIdx.y")
    sch.bind(d0, "blockIdx.x")
    sch.bind(d1, "threadIdx.x")


def _pow2_at_least(n: int, lo: int = 32) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def _row_threads(width: int) -> int:
    """Threads for one row-wise workgroup: enough to cover the row in one pass, at most 256, a power of two so
    TVM's cross-thread reduction tree is balanced."""
    return min(MAX_THREADS, _pow2_at_least(width))


def layer_norm(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    """One workgroup per row; mean and variance are workgroup-wide reductions kept in workgroup memory."""
    D = int(spec.attr("D"))
    t = _row_threads(D)
    mean, var, y = (sch.get_sblock(n) for n in ("mean", "var", "y"))
    m, d = sch.get_loops(y)
    sch.bind(m, "blockIdx.x")
    d0, d1 = sch.split(d, [None, t])
    sch.bind(d1, "threadIdx.x")
    for red in (var, mean):
        sch.set_scope(red, 0, "shared")
        sch.compute_at(red, m)
        r0, r1 = sch.split(sch.get_loops(red)[-1], [None, t])
        sch.bind(r1, "threadIdx.x")


def attention(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    """One workgroup per query row (b, h, i). Thread tx owns keys j = tx * ceil(S / t) + jo: their scores stay in its
    registers, the row max and sum are workgroup reductions, the probabilities go to workgroup memory (S floats),
    and then thread tx owns output channel tx of the head.

    Scores are registers, not workgroup memory, for a reason beyond space: TVM's storage rewrite would compute the
    probabilities in place over shared scores, and the barrier that needs falls inside the tail predicate of a
    key loop when t does not divide S, which TVM refuses ("Cannot insert syncs inside condition").
    """
    if spec.attr("tiled"):  # keys past MAX_ATTENTION_SEQ (legalization decides): online softmax over key tiles
        from schedules import gpu_attention

        return gpu_attention.attention(sch, spec)
    B, S, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
    T = int(spec.attr("T", S))
    # Threads = channels of a head (or a divisor of it): an exact split keeps the head index affine, which the
    # compute_at region analysis needs to see that a workgroup touches a single head.
    t = Dh if Dh <= MAX_THREADS else max(f for f in range(1, MAX_THREADS + 1) if Dh % f == 0)
    if T > MAX_ATTENTION_SEQ:
        raise NoKernelError(
            f"GPU attention keeps a row of T={T} probabilities in workgroup memory ({T * 4} bytes; at most "
            f"{MAX_ATTENTION_SEQ} keys fit in WebGPU's 16 KB): longer sequences take the tiled kernel (the spec "
            f"attribute tiled, which legalization sets past this length)"
        )
    score, rmax, prob, rsum, oacc, o = (sch.get_sblock(n) for n in ("score", "rmax", "prob", "rsum", "oacc", "o"))
    r, c = sch.get_loops(o)
    b, i = sch.split(r, [B, S])
    h, e = sch.split(c, [H, Dh])
    sch.reorder(b, h, i, e)
    sch.bind(sch.fuse(b, h), "blockIdx.y")
    sch.bind(i, "blockIdx.x")
    e0, e1 = sch.split(e, [None, t])
    sch.bind(e1, "threadIdx.x")

    sch.set_scope(oacc, 0, "local")
    sch.compute_at(oacc, e1)
    for blk, scope in ((rsum, "shared"), (prob, "shared"), (rmax, "shared"), (score, "local")):
        sch.set_scope(blk, 0, scope)
        sch.compute_at(blk, i)
        # The key loop: the last loop, or for the score the one before its q.k reduction.
        jloop = sch.get_loops(blk)[-2 if blk == score else -1]
        # Thread-major split: the thread index drops out of the register array's index, leaving ceil(S / t) slots.
        j1, j0 = sch.split(jloop, [t, None])
        sch.bind(j1, "threadIdx.x")


def group_norm(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    """One workgroup per (image, group), one thread per chunk of pixels: each thread sums its chunk (``psum``,
    then ``pvar``) into workgroup memory, a tree reduction over the chunks gives the mean (then the variance), and
    the threads write the group's outputs. Output loops (b, n, c) become (b, g, n, c') with c = g * C/G + c'."""
    from sdcompile.kernels.group_norm import chunks

    N, C, G = (int(spec.attr(k)) for k in ("N", "C", "G"))
    t = chunks(N)
    psum, mean, pvar, var, y = (sch.get_sblock(n) for n in ("psum", "mean", "pvar", "var", "y"))
    b, n, c = sch.get_loops(y)
    g, c1 = sch.split(c, [G, C // G])
    sch.reorder(b, g, n, c1)
    bg = sch.fuse(b, g)
    sch.bind(bg, "blockIdx.x")
    _, tx = sch.split(sch.fuse(n, c1), [None, t])
    sch.bind(tx, "threadIdx.x")
    for red, part in ((var, pvar), (mean, psum)):
        sch.set_scope(red, 0, "shared")
        sch.compute_at(red, bg)
        sch.set_scope(part, 0, "shared")
        sch.compute_at(part, bg)
        if t > 1:  # one chunk (a single pixel): compute_at drops the unit loops, and one thread does it all
            sch.bind(sch.get_loops(red)[-1], "threadIdx.x")  # the reduction over chunks: a cross-thread tree
            sch.bind(sch.get_loops(part)[1], "threadIdx.x")  # (bg, chunk, n, c'): one chunk per thread


RULES = {
    "linear": linear,
    "embed": embed,
    "layer_norm": layer_norm,
    "group_norm": group_norm,
    "attention": attention,
}
