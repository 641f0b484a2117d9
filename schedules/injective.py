"""Default schedules for pointwise and data-movement kernels (the ``injective`` family), as TVM's dlight does for
GPUs: every stage but the output is inlined, and the output's loops are fused into one flat index.

- CPU: the flat index is split into chunks run in parallel, the innermost part vectorized where the innermost
  output dimension allows a whole vector without a tail.
- GPU: the flat index is spread over 256-thread workgroups; beyond 65535 workgroups (WebGPU's per-dimension limit,
  e.g. a 512x512x128 VAE activation) each thread takes several elements, a loop inside the kernel, never on the host.
"""

from __future__ import annotations

import math

from tvm import s_tir

from sdcompile.kernels.spec import KernelSpec

GPU_THREADS = 256
GPU_MAX_GRID = 65535


def _flat(sch: s_tir.Schedule, spec: KernelSpec):
    """(block, fused loop, elements, innermost extent) for each output of the kernel (a split has several)."""
    out = []
    for p in spec.params:
        if not p.is_output:
            continue
        blk = sch.get_sblock(p.name)
        loops = sch.get_loops(blk)
        out.append((blk, sch.fuse(*loops) if len(loops) > 1 else loops[0], math.prod(p.shape), p.shape[-1]))
    return out


def cpu(sch: s_tir.Schedule, spec: KernelSpec, info) -> None:
    for _blk, i, total, inner in _flat(sch, spec):
        lanes = info.lanes if inner % info.lanes == 0 and total % info.lanes == 0 else 1
        # Chunks of at least 4096 elements: smaller ones cost more in thread wake-ups than they save.
        chunk = max(lanes, min(4096, total) // lanes * lanes)
        while total % chunk and chunk > lanes:
            chunk -= lanes
        if total % chunk:
            chunk = total
        outer, rest = sch.split(i, [None, chunk])
        sch.parallel(outer)
        if lanes > 1:
            _, vec = sch.split(rest, [None, lanes])
            sch.vectorize(vec)


def gpu(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    for _blk, i, total, _inner in _flat(sch, spec):  # several outputs: one launch each
        threads = min(GPU_THREADS, total)
        per = max(1, -(-total // (threads * GPU_MAX_GRID)))  # elements per thread, so the grid stays in the limit
        if per == 1:
            bx, tx = sch.split(i, [None, threads])
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
            continue
        # Consecutive threads take consecutive elements in each of their `per` rounds (coalesced).
        bx, s, tx = sch.split(i, [None, per, threads])
        sch.reorder(bx, tx, s)
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


def gpu_fallback(sch: s_tir.Schedule, spec: KernelSpec) -> None:
    """Any kernel on a GPU, slowly but within the limits: the output's elements spread over threads as above, and
    every other stage computed per thread, in registers, at the output element that needs it (TVM dlight's
    Fallback rule). For degenerate shapes a hand schedule does not cover, e.g. attention over one key."""
    out = next(p for p in spec.params if p.is_output)
    blk = sch.get_sblock(out.name)
    others = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint != out.name]
    loops = sch.get_loops(blk)
    i = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = math.prod(out.shape)
    threads = min(GPU_THREADS, total)
    bx, tx = sch.split(i, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    for b in reversed(others):  # consumers first, so each producer lands inside its consumer's loop
        sch.set_scope(b, 0, "local")
        sch.compute_at(b, tx)
