"""GPU schedule of the tiled attention (``sdcompile/kernels/attention_tiled.py``), shared by WebGPU and CUDA and
within WebGPU's limits (256 invocations, 16 KB of workgroup memory, grid <= 65535 per dimension, no blockIdx.z).

A workgroup owns R query rows of one (b, h): threads (threadIdx.y, threadIdx.x) = (row, C-way channel split), so
thread x keeps channels x*E .. x*E+E-1 (E = Dh / C) of its row's running state (m, l, acc) and its tile
accumulator in registers. Per key tile (the one loop left at run time):

1. scores: each thread computes TK/C of its row's TK q.k dot products (keys x, x+C, ...) into workgroup memory;
2. tile max: the row's C threads reduce the row (TVM's cross-thread reduction through workgroup memory);
3. probabilities exp(score - max): the same split as the scores, into a second workgroup buffer;
4. each thread sums its row's probabilities and accumulates p @ v for its E channels (keys outer: one
   workgroup-memory read of p per key for all E channels), then folds the tile into its running state.

Only R x TK scores and probabilities exist at a time: 2 x 16 x 64 floats = 8 KB at most, whatever T is. Keys and
values are read from global memory (every row of a workgroup reads the same key at the same time: one broadcast
read on a GPU, a cached one on lavapipe); staging them in workgroup memory is left to tuning.

Loops inside a tile are unrolled (the keys of a thread's scores, the q.k channels up to 64) or unrolled by 8
(the keys of p @ v), so a tile costs an invocation about 20 loop iterations at run time. That matters beyond
speed on lavapipe (Mesa's Vulkan on the CPU): its shader compiler stops every loop of an invocation once the
invocation has run 65535 loop iterations in total (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS), silently leaving the
rest of the kernel undone. Measured: with the tile's loops rolled, T = 1536 keys at Dh = 40 already came out
wrong; as scheduled here T = 65536 keys is correct (about 1024 tiles x 20 iterations).
"""

from __future__ import annotations

from tvm import s_tir

from sdcompile.kernels.attention_tiled import key_tiles
from sdcompile.kernels.spec import KernelSpec

MAX_THREADS = 256
SHARED_BYTES = 16384
# Channels per thread: the running state and tile accumulator are 4 E registers; more makes lavapipe's private
# arrays (and a GPU's registers) the bottleneck (E = 16 measured several times slower on lavapipe).
MAX_CHANNELS = 8
MAX_ROWS = 32
# The q.k loop over a head's channels unrolls up to this many channels (a whole head up to 64).
DOT_UNROLL = 64
# The tile's loops over keys (p @ v, the sum of p) unroll by this factor.
KEY_UNROLL = 8


def _largest_divisor(n: int, at_most: int) -> int:
    return max(f for f in range(1, min(n, at_most) + 1) if n % f == 0)


def geometry(spec: KernelSpec) -> tuple[int, int]:
    """(R query rows per workgroup, C threads per row). C is a power of two dividing both Dh and the key tile, so
    the tile's keys split evenly over a row's threads (no tail predicate: TVM cannot place the barriers between
    the stages inside one); R divides S for the same reason and keeps the two score tiles in half the workgroup
    memory."""
    S, Dh = int(spec.attr("S")), int(spec.attr("Dh"))
    tk, _ = key_tiles(spec)
    c = 1
    while Dh // c > MAX_CHANNELS and Dh % (2 * c) == 0 and tk % (2 * c) == 0:
        c *= 2
    rows_fit = (SHARED_BYTES // 2) // (2 * tk * 4)
    return _largest_divisor(S, min(MAX_ROWS, MAX_THREADS // c, rows_fit)), c


def _unroll_inner(sch: s_tir.Schedule, loop, factor: int):
    """Unroll ``loop`` whole when it has at most ``factor`` iterations, else its innermost divisor <= factor."""
    extent = int(sch.get(loop).extent)
    if extent > factor:
        loop = sch.split(loop, [None, _largest_divisor(extent, factor)])[1]
    sch.unroll(loop)


def attention(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    B, S, H, Dh = (int(spec.attr(k)) for k in ("B", "S", "H", "Dh"))
    TK, NT = key_tiles(spec)
    R, C = geometry(spec)
    blocks = ("score", "tmax", "prob", "tsum", "tacc", "run", "o")
    score, tmax, prob, tsum, tacc, run, o = (sch.get_sblock(n) for n in blocks)

    r, c = sch.get_loops(o)
    b, i = sch.split(r, [B, S])
    h, e = sch.split(c, [H, Dh])
    ib, ir = sch.split(i, [None, R])
    tx, ee = sch.split(e, [C, None])  # thread x owns E consecutive channels: a dense register array
    sch.reorder(b, h, ib, ir, tx, ee)
    sch.bind(sch.fuse(b, h), "blockIdx.y")
    sch.bind(ib, "blockIdx.x")
    sch.bind(ir, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")

    # The running state: registers of the thread, the tile loop outermost around its channels. compute_at leaves
    # out loops of one iteration: no channel loop for one channel per thread, no tile loop for a single tile (then
    # the tile's stages go directly under the thread).
    for n in range(3):
        sch.set_scope(run, n, "local")
    sch.compute_at(run, tx)
    own = sch.get_loops(run)[4:]  # (channel, tile), (tile), (channel) or ()
    if NT > 1 and len(own) == 2:
        sch.reorder(own[1], own[0])
    anchor = sch.get_loops(run)[4] if NT > 1 else tx
    depth = 5 if NT > 1 else 4  # loops above a tile's stages: blockIdx.y, blockIdx.x, threadIdx.y, threadIdx.x, tile

    # Consumers first. The tile's stages, per tile: in registers (a thread's own row and channels) or in workgroup
    # memory (what a row's threads share).
    for blk, scope in ((tacc, "local"), (tsum, "local"), (prob, "shared"), (tmax, "shared")):
        sch.set_scope(blk, 0, scope)
        sch.compute_at(blk, anchor)
    if C < TK:
        # Laid out [key % C][key / C] the probabilities never share an index with the scores, so TVM's storage
        # rewrite keeps them apart instead of computing them in place, which would need a barrier per key.
        sch.transform_layout(prob, ("write", 0), lambda b, h, i, j: (b, h, i, j // TK, j % C, (j % TK) // C))
    acc = sch.cache_write(score, 0, "local")  # the q.k sum in a register, stored to workgroup memory once
    sch.set_scope(acc, 0, "shared")
    sch.compute_at(acc, anchor)

    # The tile's rows x keys (acc, prob) and the row reduction (tmax): a row per thread row, keys x, x + C, ...
    # for thread x. The row's threads reduce the row together (TVM's cross-thread reduction).
    for blk in (acc, prob, tmax):
        *rows, keys = sch.get_loops(blk)[depth:]  # no row loop for one row per workgroup
        if rows:
            sch.bind(rows[0], "threadIdx.y")
        ko, kx = sch.split(keys, [None, C])
        sch.bind(kx, "threadIdx.x")
        sch.unroll(ko)
    sch.compute_at(score, sch.get_loops(acc)[-1])
    _unroll_inner(sch, sch.get_loops(score)[-1], DOT_UNROLL)

    _unroll_inner(sch, sch.get_loops(tsum)[-1], KEY_UNROLL)
    *channel, keys = sch.get_loops(tacc)[depth:]  # no channel loop for one channel per thread
    if channel:
        sch.reorder(keys, channel[0])  # keys outer: p[key] read once for the thread's E channels
        sch.unroll(channel[0])
    _unroll_inner(sch, keys, KEY_UNROLL)
    for lp in sch.get_loops(run)[depth:]:
        sch.unroll(lp)
