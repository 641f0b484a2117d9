"""Quantized matmul y = x @ W^T (W in GGUF block layout): sdcompile against ggml, ONNX Runtime, PyTorch and the
machine's read bandwidth, in one run, with cold caches.

For every weight type, shape n x k (n outputs, k inputs) and batch (rows of x):

- ``sdcompile``: the ``linear`` kernel (``sdcompile.kernels.spec.linear``) built by ``build_kernels(..., "cpu")``,
  weights as raw GGUF words; checked through the runtime's ``Executor.launch``, timed as direct calls of the same
  library's TVM PackedFunc (``--sdcompile-call executor`` times ``Executor.launch``; its overhead is recorded);
- ``ggml`` / ``ggml-repack`` (/ ``ggml-amx`` in AMX builds): ggml's CPU ``mul_mat`` through ctypes
  (``benchmarks/ggml_peer.py``), weights in the plain CPU buffer and in each extra buffer type of the CPU device;
- ``onnxruntime``: ``com.microsoft.MatMulNBits`` (4 bits, block 32, accuracy_level 4) for the 4-bit row (q4_0);
- ``pytorch``: dense ``torch.nn.functional.linear`` in f32 and bf16;
- ``read-bandwidth``: a TVM-compiled parallel vectorized sum over a >= 1 GiB buffer, at the start and the end.

Every implementation cycles through enough distinct weight copies (``--rotate-mb``, by default twice the last-level
cache) that each timed call reads its weights from DRAM. Every output is checked against numpy (weights decoded by
``gguf.quants.dequantize``) before timing. See benchmarks/README.md.

    .venv/bin/python benchmarks/gemv.py --quick                 # smoke run: one shape, few repeats
    .venv/bin/python benchmarks/gemv.py --wait-quiet 300 --quiet-each 30 --plot benchmarks/results/gemv.png
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:  # `python -m benchmarks.gemv` from the repository root
    from benchmarks.common import (
        StallMeter,
        Stopwatch,
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        cache_sizes,
        contention,
        fmt,
        last_level_cache_bytes,
        load_average,
        machine_info,
        markdown_table,
        pressure,
        time_fn,
        utc_now,
    )
    from benchmarks.common import wait_quiet as _wait_quiet
    from benchmarks.ggml_peer import Ggml, GgmlError, buft_impl_name, probe
except ImportError:  # `python benchmarks/gemv.py`: the script's own directory is on sys.path
    from common import (  # type: ignore[no-redef]
        StallMeter,
        Stopwatch,
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        cache_sizes,
        contention,
        fmt,
        last_level_cache_bytes,
        load_average,
        machine_info,
        markdown_table,
        pressure,
        time_fn,
        utc_now,
    )
    from common import wait_quiet as _wait_quiet  # type: ignore[no-redef]
    from ggml_peer import Ggml, GgmlError, buft_impl_name, probe  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
SEED = 0
DEFAULT_TYPES = "q4_0,q4_k,q6_k,q8_0"
DEFAULT_SHAPES = "4096x4096,4096x11008"
DEFAULT_BATCHES = "1,64"
IMPLS = ("sdcompile", "ggml", "onnxruntime", "pytorch", "read-bandwidth")  # ggml includes its extra buffer types
FOUR_BIT = ("q4_0",)  # the row ONNX Runtime's MatMulNBits (4 bits, block 32) is compared in
MIN_ROTATE_MB = 300

# Relative rms error (vs the float64 reference on the same decoded weights) above which an output is a failure.
# f32 math: summation order only (~sqrt(k) u). ggml quantizes activations to 8 bits (q8_0/q8_K), ORT accuracy_level
# 4 likewise, bf16 rounds both operands: ~5e-3. A wiring mistake (transposed or misaligned weights, wrong block
# layout) gives ~1.
TOL_EXACT = 1e-3
QUIET_CPU_PRESSURE = 5.0  # % of the time some task waited for a CPU (PSI): below this the machine counts as quiet
TOL_LOSSY = 5e-2

EXIT_OK = 0
EXIT_PEER_FAILED = 1
EXIT_SDCOMPILE_FAILED = 3


def log(msg: str) -> None:
    print(f"[gemv] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------- arguments


def sdcompile_types() -> list[str] | None:
    try:
        from sdcompile.kernels import supported_types
    except Exception:
        return None
    return list(supported_types())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gemv.py",
        description=(
            "Time y = x @ W^T for GGUF-quantized W: sdcompile's linear kernel, ggml's mul_mat (plain and repacked "
            "buffers), ONNX Runtime MatMulNBits, dense PyTorch, and the machine's read bandwidth; cold caches."
        ),
        epilog=(
            f"exit status: 0 when everything ran and validated, {EXIT_PEER_FAILED} when a peer failed or its output "
            f"disagreed with numpy, {EXIT_SDCOMPILE_FAILED} when sdcompile did (and no peer failed), 2 for bad "
            "arguments. A missing optional peer (llama-cpp-python, onnxruntime, torch) is a failed peer unless "
            "--impls leaves it out."
        ),
    )
    p.add_argument("--types", default=DEFAULT_TYPES, help=f"weight types (default: {DEFAULT_TYPES})")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"n x k pairs, n outputs (default: {DEFAULT_SHAPES})")
    p.add_argument("--batches", default=DEFAULT_BATCHES, help=f"rows of x (default: {DEFAULT_BATCHES})")
    p.add_argument("--threads", type=int, default=2, help="threads for every implementation (default: 2)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per measurement (default: 40; --quick: 8)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls before timing, at least one pass through the weight copies (default: 3; --quick: 1)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: the first shape only, few repeats")
    p.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help=f"comma-separated subset of {', '.join(IMPLS)} (default: all; ggml includes its repacked buffers)",
    )
    p.add_argument(
        "--rotate-mb",
        type=float,
        default=None,
        help="MB of distinct weight copies each implementation cycles through (default: max(300, 2 x last-level "
        "cache))",
    )
    p.add_argument("--bandwidth-mb", type=float, default=1024, help="read-bandwidth buffer size (default: 1024)")
    p.add_argument(
        "--ggml-lib-dir",
        type=Path,
        default=None,
        help="directory with libggml-base.so, libggml-cpu.so, libggml.so (default: llama-cpp-python's llama_cpp/lib)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=HERE / ".work" / "gemv",
        help="where the sdcompile kernels are built (default: benchmarks/.work/gemv)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "gemv.json",
        help="machine-readable results (default: benchmarks/results/gemv.json)",
    )
    p.add_argument(
        "--sdcompile-call",
        choices=("direct", "executor"),
        default="direct",
        help="time sdcompile's kernels as direct TVM PackedFunc calls (default) or through the runtime's "
        "Executor.launch, which adds its Python argument checks (measured and recorded either way)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before starting, wait up to this long for the machine to be quiet (CPU pressure avg10 below 5%% and a "
        "1-minute load average below half the cores); the run starts anyway afterwards (default: 0, no wait)",
    )
    p.add_argument(
        "--quiet-each",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for a second with less than 5%% CPU stall (default: 0)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-time a measurement up to this many times when the CPUs were short (PSI stall) for 5%% or more of it, "
        "keeping the attempt with the lowest median (default: 2)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="FILE",
        help="measure nothing: re-render the markdown (stdout, --markdown) and --plot from a result file",
    )
    p.add_argument("--markdown", type=Path, default=None, help="also write the markdown tables to this file")
    p.add_argument("--plot", type=Path, default=None, help="also draw a PNG bar chart of GB/s (needs matplotlib)")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error("--threads must be at least 1")
    a.repeat = a.repeat if a.repeat is not None else (8 if a.quick else 40)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    if a.warmup < 0:
        p.error("--warmup must be 0 or more")
    a.types = [t.strip().lower() for t in a.types.split(",") if t.strip()]
    known = sdcompile_types()
    unknown = [t for t in a.types if known is not None and t not in known]
    if unknown:
        p.error(f"no sdcompile kernel for --types {unknown}; sdcompile has: {', '.join(known or [])}")
    try:
        a.shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",") if s.strip()]
        a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    except ValueError:
        p.error("--shapes must look like 4096x4096,4096x11008 and --batches like 1,64")
    if any(len(s) != 2 or min(s) < 1 for s in a.shapes) or not a.shapes:
        p.error("--shapes must be positive n x k pairs")
    if not a.batches or min(a.batches) < 1:
        p.error("--batches must be positive")
    if a.quick:
        a.shapes = a.shapes[:1]
    from sdcompile.quant.types import get

    for t in a.types:
        bs = get(t).block_size
        bad = [k for _, k in a.shapes if k % bs]
        if bad:
            p.error(f"{t} needs k to be a multiple of its block size {bs}; got k = {bad}")
    a.impls = [i.strip() for i in a.impls.split(",") if i.strip()]
    bad = [i for i in a.impls if i not in IMPLS]
    if bad:
        p.error(f"unknown --impls {bad}; choose from {', '.join(IMPLS)}")
    llc = last_level_cache_bytes() or 0
    a.rotate_bytes = int((a.rotate_mb if a.rotate_mb is not None else max(MIN_ROTATE_MB, 2 * llc / 1e6)) * 1e6)
    return a


# --------------------------------------------------------------------------------------------------------- weights


def gguf_qtype(t: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[t.upper()]


_FIELD_BYTES = {"u8": 1, "i8": 1, "f16": 2, "u16": 2, "bf16": 2, "f32": 4}


def random_blocks(t: str, n: int, k: int, rng: np.random.Generator, out: np.ndarray) -> None:
    """Fill ``out`` (uint8, at least the tensor's bytes) with valid random [n, k] blocks of type ``t``.

    Random bytes everywhere, except the f16 scale fields (set to small finite positive values, so no NaN, infinity
    or subnormal products) and MXFP4's shared exponent (kept near 2^-7). Speed does not depend on the values as
    long as they are ordinary floats. Float types get small normal values.
    """
    from sdcompile.quant.types import get

    qt = get(t)
    nbytes = qt.nbytes((n, k))
    dst = out[:nbytes]
    if qt.is_float:
        v = rng.standard_normal(n * k, dtype=np.float32) * np.float32(0.05)
        if t == "f32":
            dst.view(np.float32)[:] = v
        elif t == "f16":
            dst.view(np.float16)[:] = v.astype(np.float16)
        else:  # bf16: the top half of the f32 (truncation is a valid bf16)
            dst.view(np.uint16)[:] = (v.view(np.uint32) >> 16).astype(np.uint16)
        return
    dst[:] = np.frombuffer(rng.bytes(nbytes), np.uint8)
    blocks = dst.reshape(-1, qt.type_size)
    off = 0
    for field, ftype, count in qt.layout:
        width = _FIELD_BYTES[ftype] * count
        if ftype == "f16":
            scales = (rng.random((blocks.shape[0], count), dtype=np.float32) * 7e-3 + 1e-3).astype(np.float16)
            blocks[:, off : off + width] = scales.view(np.uint8)
        elif t == "mxfp4" and field == "e":
            blocks[:, off : off + width] = rng.integers(118, 124, (blocks.shape[0], count), dtype=np.uint8)
        off += width
    if off != qt.type_size:
        raise AssertionError(f"{t}: layout covers {off} of {qt.type_size} bytes")
    if t == "iq1_m":  # its f16 block scale is the top nibbles of the four u16 scales (ggml's iq1m_scale_t)
        sc = np.ascontiguousarray(blocks[:, 48:56]).view(np.uint16)
        d = (rng.random(blocks.shape[0], dtype=np.float32) * 7e-3 + 1e-3).astype(np.float16).view(np.uint16)
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        blocks[:, 48:56] = sc.view(np.uint8)


def quantize_real(t: str, w: np.ndarray) -> np.ndarray | None:
    """GGUF bytes of ``w`` quantized by the gguf package (bit-exact with ggml), or None where it cannot."""
    if t == "f32":
        return w.astype(np.float32).reshape(-1).view(np.uint8)
    from gguf import quants

    try:
        q = quants.quantize(w.astype(np.float32), gguf_qtype(t))
    except NotImplementedError:
        return None
    return np.ascontiguousarray(q).reshape(-1).view(np.uint8)  # f16/bf16 come back as 16-bit arrays


def dequantize(t: str, raw: np.ndarray, n: int, k: int) -> np.ndarray:
    from gguf import quants

    from sdcompile.quant.types import get

    nbytes = get(t).nbytes((n, k))
    if t == "f32":
        return raw[:nbytes].view(np.float32).reshape(n, k)
    return np.asarray(quants.dequantize(raw[:nbytes].reshape(n, -1), gguf_qtype(t)), np.float32).reshape(n, k)


class WeightCopies:
    """R distinct copies of one [n, k] weight of type t, 64-byte aligned; copy 0 is the one outputs are checked on.

    Copy 0 is ``w`` quantized by the gguf package where it can quantize the type, else random valid blocks (so K-quant
    rows are checked on random blocks); the others are random valid blocks (distinct bytes, so no cache line or page
    of one copy can serve another).
    """

    def __init__(self, t: str, n: int, k: int, copies: int, w: np.ndarray, rng: np.random.Generator):
        from runtime.executors.cpu import Buffer
        from sdcompile.quant.types import get

        self.type, self.n, self.k = t, n, k
        self.nbytes = get(t).nbytes((n, k))
        words = (self.nbytes + 3) // 4
        self.buffers = [Buffer(words * 4) for _ in range(copies)]
        real = quantize_real(t, w)
        self.real = real is not None
        if real is not None:
            self.buffers[0].array[: self.nbytes] = real
        else:
            random_blocks(t, n, k, rng, self.buffers[0].array)
        for b in self.buffers[1:]:
            random_blocks(t, n, k, rng, b.array)
        self.decoded0 = dequantize(t, self.buffers[0].array, n, k)

    def array(self, i: int) -> np.ndarray:
        return self.buffers[i].array[: self.nbytes]


def copies_for(nbytes: int, rotate_bytes: int) -> int:
    return max(2, math.ceil(rotate_bytes / max(1, nbytes)))


# ----------------------------------------------------------------------------------------------------------- rows


def new_row(impl: str, type_: str, n: int | None, k: int | None, batch: int | None, args) -> dict[str, Any]:
    return {
        "impl": impl,
        "type": type_,
        "backend": "cpu",
        "n": n,
        "k": k,
        "batch": batch,
        "threads": args.threads,
        "median_us": None,
        "min_us": None,
        "p90_us": None,
        "mean_us": None,
        "gbps": None,
        "gbps_best": None,
        "weight_bytes": None,
        "act_bytes": None,
        "copies": None,
        "rotation_bytes": None,
        "rel_rms_err": None,
        "max_abs_err_rel": None,
        "tolerance": None,
        "valid": None,
        "skipped": None,
        "error": None,
    }


def record_error(row: dict[str, Any], stage: str, e: BaseException) -> None:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    row["error"] = f"{stage}: {type(e).__name__}: {msg}"[:500]
    row["traceback"] = traceback.format_exc()[-4000:]
    log(f"{row['impl']} {row['type']} n={row['n']} k={row['k']} batch={row['batch']} failed at {stage}: {msg}")


def validate(row: dict[str, Any], y: np.ndarray, ref: np.ndarray, tol: float) -> None:
    """Compare ``y`` with the float64 reference; a failure is raised (and so recorded as the row's error)."""
    y = np.asarray(y, np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"output shape {list(y.shape)} differs from the reference's {list(ref.shape)}")
    d = y - ref
    rms_ref = float(np.sqrt(np.mean(ref * ref)))
    row["rel_rms_err"] = float(np.sqrt(np.mean(d * d))) / rms_ref if np.all(np.isfinite(y)) else float("inf")
    row["max_abs_err_rel"] = float(np.max(np.abs(d))) / float(np.max(np.abs(ref)))
    row["tolerance"] = tol
    row["valid"] = bool(row["rel_rms_err"] <= tol)
    if not row["valid"]:
        raise AssertionError(f"output disagrees with numpy: relative rms error {row['rel_rms_err']:.3g} > {tol:g}")


def timed(
    row: dict[str, Any],
    run: Callable[[int], Any],
    copies: int,
    weight_bytes: int,
    act_bytes: int,
    args,
) -> None:
    """Time ``run(i)`` cycling through the copies (copy 0 first), one call per measurement, after one untimed pass.

    A measurement during which tasks waited for a CPU (PSI stall of at least 5% of its time: other work was
    competing) is repeated, up to ``--retries`` times, and the attempt with the lowest median is kept; every
    attempt's stall and median are recorded in ``attempts``.
    """
    counter = itertools.count()

    def fn() -> None:
        run(next(counter) % copies)

    best = None
    attempts = []
    for _ in range(1 + max(0, args.retries)):
        waited = wait_quiet(args.quiet_each, use_load=False) if args.quiet_each > 0 else None
        before = pressure()
        with StallMeter() as stall:
            # Warm-up: at least one untimed pass through every copy. Fewer left the first timed pass slow for
            # whichever implementation came first (a run's first 40 calls at ~1.5x, then steady: memory the OS had
            # not settled yet), which is the machine's doing, not the kernel's.
            t = time_fn(fn, warmup=max(args.warmup, copies), repeat=args.repeat)
        attempts.append({"cpu_stall_pct": stall.pct, "median_us": round(t.median_ms * 1e3, 1), "wait_quiet": waited})
        key = t.median_ms  # other work only ever slows a kernel down: the fastest attempt is the least disturbed
        if best is None or key < best[0]:
            best = (key, t, stall.pct, waited, before, pressure())
        if stall.pct is None or stall.pct < QUIET_CPU_PRESSURE:
            break
    _, t, stall_pct, waited, before, after = best
    total = weight_bytes + act_bytes
    row.update(
        median_us=t.median_ms * 1e3,
        min_us=t.min_ms * 1e3,
        p90_us=t.p90_ms * 1e3,
        mean_us=t.mean_ms * 1e3,
        runs_us=[round(r * 1e3, 1) for r in t.runs_ms],
        gbps=total / (t.median_ms * 1e-3) / 1e9,
        gbps_best=total / (t.min_ms * 1e-3) / 1e9,
        weight_bytes=weight_bytes,
        act_bytes=act_bytes,
        copies=copies,
        rotation_bytes=copies * weight_bytes,
        cpu_stall_pct=stall_pct,
        wait_quiet=waited,
        attempts=attempts,
        pressure_before=before,
        pressure_after=after,
    )


def act_bytes_of(batch: int, n: int, k: int) -> int:
    return 4 * batch * (k + n)  # f32 x read + f32 y written


# ------------------------------------------------------------------------------------------------- read bandwidth


class ReadBandwidth:
    """Sum a large f32 buffer with a TVM kernel: parallel over chunks, 64 lanes (four 16-wide accumulators)."""

    LANES = 64
    CHUNKS = 256

    def __init__(self, nbytes: int, threads: int):
        import tvm
        from tvm import te

        from runtime.executors.cpu import Buffer, set_num_threads
        from sdcompile.codegen import tvm_layer

        per = self.CHUNKS * self.LANES
        n = max(per, int(nbytes) // 4 // per * per)
        self.nbytes = n * 4
        J = n // per
        a = te.placeholder((n,), "float32", name="A")
        j = te.reduce_axis((0, J), name="j")
        L = self.LANES
        b = te.compute((self.CHUNKS, L), lambda p, lane: te.sum(a[(p * J + j) * L + lane], axis=j), name="B")
        func = te.create_prim_func([a, b]).with_attr("global_symbol", "read_sum")
        sch = tvm.s_tir.Schedule(tvm.IRModule({"read_sum": func}))
        sch.work_on("read_sum")
        blk = sch.get_sblock("B")
        p, lane, jj = sch.get_loops(blk)
        sch.reorder(p, jj, lane)
        sch.parallel(p)
        sch.vectorize(lane)
        acc = sch.cache_write(blk, 0, "local")  # accumulators in registers, not a store/load per step
        sch.reverse_compute_at(acc, p)
        sch.decompose_reduction(blk, jj)
        target = tvm_layer.cpu_target()
        self.method = f"TVM parallel vectorized f32 sum ({target['mcpu']}, {self.CHUNKS} chunks, {L} lanes)"
        self._fn = tvm_layer.compile_cpu(sch.mod, target).mod["read_sum"]
        self.threads = set_num_threads(tvm, threads)
        self._a = Buffer(self.nbytes)
        self._a.view((n,), "float32")[:] = 1.0  # touch every page; sums are then exact integers, checked below
        self._b = Buffer(self.CHUNKS * L * 4)
        self._args = (self._a.tensor(tvm, (n,), "float32"), self._b.tensor(tvm, (self.CHUNKS, L), "float32"))
        self.n = n

    def run(self) -> None:
        self._fn(*self._args)

    def check(self) -> None:
        got = float(self._b.view((self.CHUNKS, self.LANES), "float32").astype(np.float64).sum())
        if got != self.n:
            raise AssertionError(f"read-bandwidth kernel summed {got}, expected {self.n}")


def measure_bandwidth(args, phase: str) -> dict[str, Any]:
    row = new_row("read-bandwidth", "f32", None, None, None, args)
    row["phase"] = phase
    stage = "build"
    try:
        bw = ReadBandwidth(int(args.bandwidth_mb * 1e6), args.threads)
        row["method"] = bw.method
        row["threads"] = bw.threads
        stage = "run"
        bw.run()
        bw.check()
        timed(row, lambda i: bw.run(), 1, bw.nbytes, 0, args)  # one buffer, far larger than the cache
        row.update(copies=None, rotation_bytes=None, valid=True)
        log(f"read bandwidth ({phase}): {row['gbps']:.1f} GB/s median, {row['gbps_best']:.1f} best")
    except Exception as e:
        record_error(row, stage, e)
    finally:
        bw = None
        gc.collect()
    return row


# ------------------------------------------------------------------------------------------------------ sdcompile


def param_layout(p) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) a kernel parameter is passed as: raw weights and lookup tables as uint32 words."""
    if p.kind in ("raw", "lut"):
        return (p.words(),), "uint32"
    return tuple(p.shape), "int32" if p.dtype == "int32" else "float32"


class Sdcompile:
    """All linear kernels of the run, built once by ``build_kernels``; the runtime's CPU executor; and the same
    library's functions as TVM PackedFuncs, for timing without the executor's per-launch Python checks."""

    def __init__(self, specs, args):
        import tvm

        from runtime.executors.cpu import Executor
        from sdcompile.codegen.build import CPU_LIBRARY, build_kernels
        from sdcompile.kernels.spec import linear

        out = args.workdir / "kernels"
        self.tiny = linear(M=1, N=64, K=256, wtype="f32")  # for measuring Executor.launch's own cost
        specs = [*specs, self.tiny]
        log(f"sdcompile: building {len(specs)} linear kernels -> {out}")
        with Stopwatch() as sw:
            self.description = build_kernels(specs, "cpu", out)
        self.compile_s = sw.seconds
        self.ex = Executor(out, self.description, num_threads=args.threads)
        self.tvm = tvm
        self.module = tvm.runtime.load_module(str(out / CPU_LIBRARY))  # the library the executor loaded
        self.call = args.sdcompile_call
        self.launch_overhead_us = self._launch_overhead()
        log(
            f"sdcompile: built in {self.compile_s:.1f} s, {self.ex.num_threads} threads, timing through "
            f"{self.call}; Executor.launch adds {self.launch_overhead_us:.1f} us per call"
        )

    def _launch_overhead(self) -> float:
        """Executor.launch minus the direct call on a tiny kernel, hot; best of 10 alternating rounds of 200 calls."""
        import time

        spec = self.tiny
        bufs = [self.ex.alloc(4 * math.prod(param_layout(p)[0])) for p in spec.params]
        args = [(b, p.shape, param_layout(p)[1]) for b, p in zip(bufs, spec.params)]
        fns = {"launch": lambda: self.ex.launch(spec.name, args), "direct": self.direct(spec, bufs)}
        best = {k: float("inf") for k in fns}
        for _ in range(10):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(200):
                    fn()
                best[key] = min(best[key], (time.perf_counter() - t0) / 200 * 1e6)
        return best["launch"] - best["direct"]

    @staticmethod
    def path(spec) -> str:
        """Which CPU schedule runs ``spec``: "gemv" (AVX-512 integer dot products), "amx" (tile unit) or "tiled"."""
        from schedules import cpu_amx, cpu_gemv

        if cpu_amx.applicable(spec, 16):
            return "amx"
        return "gemv" if cpu_gemv.applicable(spec, 16) else "tiled"

    def direct(self, spec, bufs) -> Callable[[], None]:
        """A no-argument call of the spec's PackedFunc on these executor buffers (DLPack tensors built once)."""
        f = self.module[spec.name]
        tensors = [b.tensor(self.tvm, *param_layout(p)) for b, p in zip(bufs, spec.params)]
        return lambda: f(*tensors)


def run_sdcompile(sd: Sdcompile, w: WeightCopies, batch: int, x: np.ndarray, ref: np.ndarray, args):
    from sdcompile.kernels.spec import linear

    n, k = w.n, w.k
    row = new_row("sdcompile", w.type, n, k, batch, args)
    row["call"] = (
        "runtime.executors.cpu.Executor.launch"
        if sd.call == "executor"
        else "the kernel's TVM PackedFunc from kernels_cpu.so, called directly (output checked via Executor.launch)"
    )
    row["launch_overhead_us"] = sd.launch_overhead_us
    row["mcpu"] = sd.description.get("cpu", {}).get("mcpu")
    stage = "run"
    try:
        spec = linear(M=batch, N=n, K=k, wtype=w.type)
        ex = sd.ex
        xb, yb = ex.alloc(x.nbytes), ex.alloc(4 * batch * n)
        ex.upload(xb, x)
        ex.upload(yb, np.full((batch, n), np.nan, np.float32))  # an element the kernel skips shows up
        fixed = {"x": xb, "y": yb}
        for p in spec.params:
            if p.kind == "lut":  # the i-quants' grids: constant tables, uploaded once
                from sdcompile.kernels.luts import table_words

                fixed[p.name] = ex.alloc(4 * p.words())
                ex.upload(fixed[p.name], table_words(p.name))
        unknown = [p.name for p in spec.params if p.kind != "raw" and p.name not in fixed]
        if unknown:
            raise ValueError(f"{spec.name}: no input for parameters {unknown}")

        def buffers(wb) -> list:
            return [wb if p.kind == "raw" else fixed[p.name] for p in spec.params]

        def launch_args(wb) -> list:
            return [(b, p.shape, param_layout(p)[1]) for b, p in zip(buffers(wb), spec.params)]

        name = spec.name
        ex.launch(name, launch_args(w.buffers[0]))
        stage = "check"
        row["path"] = sd.path(spec)
        validate(row, ex.download(yb, (batch, n), "float32"), ref, TOL_EXACT)
        stage = "run"
        if sd.call == "executor":
            calls = [launch_args(wb) for wb in w.buffers]

            def run(i: int) -> None:
                ex.launch(name, calls[i])
        else:
            fns = [sd.direct(spec, buffers(wb)) for wb in w.buffers]

            def run(i: int) -> None:
                fns[i]()

        timed(row, run, len(w.buffers), w.nbytes, act_bytes_of(batch, n, k), args)
    except Exception as e:
        record_error(row, stage, e)
    return row


# ----------------------------------------------------------------------------------------------------------- ggml


def ggml_rows(g: Ggml, w: WeightCopies, batches, xs, refs, args) -> list[dict[str, Any]]:
    """ggml on the plain CPU buffer, then on each extra buffer type; one row per (buffer type, batch)."""
    from sdcompile.quant.types import get

    gtype = get(w.type).ggml_id
    rows: list[dict[str, Any]] = []
    bufts: list[tuple[str, int | None]] = [("CPU", None), *g.extra_bufts()]
    dot = g.vec_dot_type_name(gtype)
    for buft_name, buft in bufts:
        impl = "ggml" if buft is None else buft_impl_name(buft_name)
        ws = None
        stage = "load"
        base = {"buffer_type": buft_name, "vec_dot_type": dot}
        try:
            with Stopwatch() as sw:
                ws = g.weights(gtype, w.n, w.k, [w.array(i) for i in range(len(w.buffers))], buft)
            if not ws.handled:
                for b in batches:
                    row = new_row(impl, w.type, w.n, w.k, b, args)
                    row.update(base, repacked=False)
                    row["skipped"] = f"{buft_name} does not handle {w.type} [{w.n}, {w.k}] on this CPU"
                    rows.append(row)
                log(f"{impl}: {buft_name} does not handle {w.type}")
                continue
            base.update(repacked=buft is not None, load_s=round(sw.seconds, 2), buffer_bytes=ws.buffer_bytes)
            for b in batches:
                row = new_row(impl, w.type, w.n, w.k, b, args)
                row.update(base)
                rows.append(row)
                if buft is not None:
                    why = probe(buft_name, gtype, w.n, w.k, b, args.threads, w.array(0), args.ggml_lib_dir)
                    if why is not None:
                        row["skipped"] = f"{buft_name} mul_mat {why}"
                        row["crashed"] = "crashed" in why
                        log(f"{impl} {w.type} batch {b}: {row['skipped']}; not timed")
                        continue
                mm = None
                stage = "build"
                try:
                    mm = ws.matmul(b)
                    mm.set_x(xs[b])
                    stage = "run"
                    mm.run(0)
                    stage = "check"
                    validate(row, mm.y(0), refs[b], TOL_LOSSY)
                    stage = "run"
                    timed(row, mm.run, len(ws.tensors), w.nbytes, act_bytes_of(b, w.n, w.k), args)
                    log_row(row)
                except Exception as e:
                    record_error(row, stage, e)
                finally:
                    if mm is not None:
                        mm.close()
        except Exception as e:
            row = new_row(impl, w.type, w.n, w.k, None, args)
            row.update(base)
            record_error(row, stage, e)
            rows.append(row)
        finally:
            if ws is not None:
                ws.close()
    return rows


# ---------------------------------------------------------------------------------------------------- ONNX Runtime


class OrtPeer:
    """MatMulNBits sessions sharing ORT's global thread pool (so R sessions do not mean R spinning pools)."""

    def __init__(self, threads: int):
        import onnxruntime as ort
        from onnxruntime.capi import _pybind_state as C

        self.ort = ort
        self.shared_pool = False
        with contextlib.suppress(Exception):  # only possible before ORT's environment exists
            C.set_global_thread_pool_sizes(threads, 1)
            self.shared_pool = True
        self.threads = threads
        self.version = ort.__version__

    def session(self, packed: np.ndarray, scales: np.ndarray, n: int, k: int):
        from onnx import TensorProto, helper, numpy_helper

        node = helper.make_node(
            "MatMulNBits",
            ["A", "B", "S"],
            ["Y"],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=32,
            accuracy_level=4,
        )
        graph = helper.make_graph(
            [node],
            "gemv",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", n])],
            [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales.reshape(-1), "S")],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
            ir_version=10,
        )
        so = self.ort.SessionOptions()
        if self.shared_pool:
            so.use_per_session_threads = False
        else:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return self.ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """ORT's own symmetric blockwise 4-bit quantization of [n, k] ``w``: (packed [n, k/32, 16], scales [n, k/32])."""
    n, k = w.shape
    packed = np.zeros((n, k // 32, 16), np.uint8)
    scales = np.zeros((n, k // 32), np.float32)
    zp = np.zeros((n, (k // 32 + 1) // 2), np.uint8)
    try:
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits

        quantize_matmul_4bits(packed, np.ascontiguousarray(w.T, np.float32), scales, zp, 32, n, k, True)
        return packed, scales, "onnxruntime quantize_matmul_4bits (the MatMulNBits quantizer's kernel, symmetric)"
    except ImportError:  # pack q4_0 nibbles and scales into MatMulNBits' layout ourselves
        from gguf import GGMLQuantizationType, quants

        raw = np.asarray(quants.quantize(w.astype(np.float32), GGMLQuantizationType.Q4_0), np.uint8)
        blocks = raw.reshape(n, k // 32, 18)
        scales[:] = blocks[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = np.concatenate([blocks[:, :, 2:] & 15, blocks[:, :, 2:] >> 4], axis=-1)  # q4_0: j and j+16 per byte
        packed[:] = q[..., 0::2] | (q[..., 1::2] << 4)  # MatMulNBits: 2j low, 2j+1 high
        return packed, scales, "q4_0 (gguf) repacked into MatMulNBits' layout"


def ort_dequantize(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    n = packed.shape[0]
    q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, -1, 32).astype(np.float32) - 8.0
    return (q * scales[..., None]).reshape(n, -1)


def ort_rows(peer: OrtPeer, type_: str, w_float: np.ndarray, batches, xs, args, rng) -> list[dict[str, Any]]:
    n, k = w_float.shape
    rows = []
    base = {
        "ort_op": "com.microsoft.MatMulNBits bits=4 block_size=32 accuracy_level=4, f32 scales, no zero points",
        "ort_version": peer.version,
        "ort_shared_thread_pool": peer.shared_pool,
    }
    stage = "quantize"
    sessions = None
    try:
        packed0, scales0, how = ort_quantize(w_float)
        base["ort_quantizer"] = how
        ref_w = ort_dequantize(packed0, scales0).astype(np.float64)
        wbytes = packed0.nbytes + scales0.nbytes
        base["bits_per_weight"] = 8 * wbytes / (n * k)
        r = copies_for(wbytes, args.rotate_bytes)
        stage = "load"
        with Stopwatch() as sw:
            sessions = [peer.session(packed0, scales0, n, k)]
            for _ in range(r - 1):
                p = np.frombuffer(rng.bytes(packed0.nbytes), np.uint8).reshape(packed0.shape)
                sc = rng.random(scales0.shape, dtype=np.float32) * np.float32(0.02) + np.float32(0.002)
                sessions.append(peer.session(p, sc, n, k))
        base["load_s"] = round(sw.seconds, 2)
    except Exception as e:
        row = new_row("onnxruntime", type_, n, k, None, args)
        row.update(base)
        record_error(row, stage, e)
        return [row]
    for b in batches:
        row = new_row("onnxruntime", type_, n, k, b, args)
        row.update(base)
        rows.append(row)
        stage = "bind"
        try:
            x = xs[b]
            y = np.empty((b, n), np.float32)
            bindings = []
            for sess in sessions:
                io = sess.io_binding()
                io.bind_cpu_input("A", x)
                io.bind_output("Y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
                bindings.append((sess, io))

            def run(i: int, bindings=bindings) -> None:
                sess, io = bindings[i]
                sess.run_with_iobinding(io)

            stage = "run"
            run(0)
            stage = "check"
            validate(row, y, xs[b].astype(np.float64) @ ref_w.T, TOL_LOSSY)
            stage = "run"
            timed(row, run, len(sessions), wbytes, act_bytes_of(b, n, k), args)
            log_row(row)
        except Exception as e:
            record_error(row, stage, e)
        finally:
            bindings = None
    sessions = None
    gc.collect()  # the sessions' prepacked weights
    return rows


# -------------------------------------------------------------------------------------------------------- PyTorch


def torch_rows(n: int, k: int, batches, xs, args, rng, w0: np.ndarray) -> list[dict[str, Any]]:
    import torch

    rows = []
    for dtype_name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        esize = torch.finfo(dtype).bits // 8
        wbytes = n * k * esize
        r = copies_for(wbytes, args.rotate_bytes)
        stage = "load"
        ws = None
        try:
            ws = [torch.from_numpy(w0).to(dtype)]
            for _ in range(r - 1):
                ws.append(torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32)).to(dtype))
            ref_w = ws[0].to(torch.float64).numpy()
        except Exception as e:
            row = new_row("pytorch", dtype_name, n, k, None, args)
            record_error(row, stage, e)
            rows.append(row)
            continue
        for b in batches:
            row = new_row("pytorch", dtype_name, n, k, b, args)
            row.update(torch_version=torch.__version__, op="torch.nn.functional.linear", dense=True)
            rows.append(row)
            stage = "run"
            try:
                xt = torch.from_numpy(xs[b]).to(dtype)
                with torch.inference_mode():

                    def run(i: int, xt=xt, ws=ws) -> torch.Tensor:
                        return torch.nn.functional.linear(xt, ws[i])

                    y = run(0).float().numpy()
                    stage = "check"
                    ref = xt.to(torch.float64).numpy() @ ref_w.T
                    validate(row, y, ref, TOL_EXACT if dtype_name == "f32" else TOL_LOSSY)
                    stage = "run"
                    timed(row, run, len(ws), wbytes, esize * b * (n + k), args)
                log_row(row)
            except Exception as e:
                record_error(row, stage, e)
        ws = None
        gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------------------- report


def log_row(row: dict[str, Any]) -> None:
    if row["median_us"] is not None:
        log(
            f"  {row['impl']:<12} {row['type']:<5} {row['n']}x{row['k']} b{row['batch']}: "
            f"{row['median_us']:9.1f} us median ({row['min_us']:.1f} min), {row['gbps']:.1f} GB/s, "
            f"rel err {row['rel_rms_err']:.1e}, {row['copies']} copies"
        )


def impl_order(rows: list[dict[str, Any]]) -> list[str]:
    first = ["sdcompile", "ggml"]
    seen = []
    for r in rows:
        if r["impl"] not in seen and r["impl"] != "read-bandwidth":
            seen.append(r["impl"])
    ggmls = sorted(i for i in seen if i.startswith("ggml-"))
    rest = [i for i in seen if i not in first and i not in ggmls]
    return [i for i in first if i in seen] + ggmls + rest


def read_bandwidth(rows: list[dict[str, Any]]) -> float | None:
    vals = [r["gbps"] for r in rows if r["impl"] == "read-bandwidth" and r["gbps"]]
    return max(vals) if vals else None


def render_markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    cfg = result["config"]
    cpu = result["machine"]["cpu"]
    bw = read_bandwidth(rows)
    impls = impl_order(rows)
    lines = [
        f"### Quantized matmul y = x @ W^T: {cfg['threads']} threads, cold caches, median of {cfg['repeat']} calls",
        "",
        f"{cpu['model']}, {cpu['usable_cores']} usable cores, last-level cache "
        f"{fmt((cfg.get('llc_bytes') or 0) / 2**20, 0)} MiB; every implementation cycles through ≥ "
        f"{cfg['rotate_bytes'] / 1e6:.0f} MB of distinct weight copies; load average "
        f"{result['machine']['load_average_start']} → {result['machine'].get('load_average_end')}",
        "",
        "Read bandwidth ("
        + ", ".join(
            f"{r['phase']}: {fmt(r['gbps'], 1)} GB/s median, {fmt(r['gbps_best'], 1)} best"
            for r in rows
            if r["impl"] == "read-bandwidth"
        )
        + f"); `% BW` below is against {fmt(bw, 1)} GB/s.",
    ]
    for impl in (i for i in impls if i.startswith("ggml-")):
        mine = [r for r in rows if r["impl"] == impl]
        took = sorted({r["type"] for r in mine if r.get("repacked")})
        not_ = sorted({r["type"] for r in mine if r.get("repacked") is False})
        buft = next((r["buffer_type"] for r in mine if r.get("buffer_type")), impl)
        lines.append("")
        lines.append(
            f"ggml extra buffer type {buft} (`{impl}`): takes {', '.join(took) or 'none'} of the types run"
            + (f"; does not handle {', '.join(not_)}" if not_ else "")
            + "."
        )
    shapes = []
    for r in rows:
        key = (r["n"], r["k"], r["batch"])
        if r["impl"] != "read-bandwidth" and r["batch"] is not None and key not in shapes:
            shapes.append(key)
    for n, k, b in shapes:
        sub = [r for r in rows if (r["n"], r["k"], r["batch"]) == (n, k, b)]
        types = []
        for r in sub:
            if r["type"] not in types:
                types.append(r["type"])
        cols = [i for i in impls if any(r["impl"] == i for r in sub)]
        table = []
        for t in types:
            cell: dict[str, dict[str, Any]] = {r["impl"]: r for r in sub if r["type"] == t}
            line = [t]
            for i in cols:
                r = cell.get(i)
                if r is None:
                    line.append("")
                elif r.get("crashed"):
                    line.append("crashes")
                elif r["skipped"]:
                    line.append("not repacked" if i.startswith("ggml-") else "skipped")
                elif r["error"]:
                    line.append("invalid" if r.get("valid") is False else "failed")
                else:
                    mark = " †" if disturbed(r) else ""
                    line.append(f"{fmt(r['median_us'], 0)} µs · {fmt(r['gbps'], 1)} GB/s{mark}")
            sd = cell.get("sdcompile")
            ggml_best = [
                r for i, r in cell.items() if i.startswith("ggml") and r["median_us"] is not None and not r["error"]
            ]
            best = min(ggml_best, key=lambda r: r["median_us"]) if ggml_best else None
            best_min = min(ggml_best, key=lambda r: r["min_us"]) if ggml_best else None
            sd_ok = sd is not None and sd["median_us"] is not None and not sd["error"]

            def pct(r):
                return fmt(100 * r["gbps"] / bw, 0, "%") if r is not None and bw and r["gbps"] else "—"

            line += [
                pct(sd) if sd_ok else "—",
                f"{pct(best)} ({best['impl']})" if best else "—",
                fmt(sd["median_us"] / best["median_us"], 2, "×") if sd_ok and best else "—",
                fmt(sd["min_us"] / best_min["min_us"], 2, "×") if sd_ok and best_min else "—",
            ]
            table.append(line)
        headers = ["type", *cols, "sdcompile % BW", "best ggml % BW", "sdcompile / best ggml", "same, min times"]
        lines += ["", f"#### n × k = {n} × {k}, batch {b}", "", markdown_table(headers, table)]
    lines += [
        "",
        "Cells: median time per call and effective GB/s ((weight bytes + x and y bytes) / median time). `% BW`: that "
        "GB/s against the read bandwidth. `sdcompile / best ggml`: sdcompile's median time over the fastest ggml "
        "variant's (below 1× sdcompile is faster); `same, min times`: the ratio of the fastest single calls, which other "
        "work on the machine disturbs least. `†`: other work competed for the CPUs during that measurement (CPU stall ≥ 5%, after "
        "retries; see Warnings). `not repacked`: that ggml buffer type does not handle the type; `crashes`: "
        "its kernel killed a probe process (see Skipped). "
        "onnxruntime sits in the q4_0 row: MatMulNBits with its own 4-bit quantization of the same float weights "
        "(block 32, f32 scales: 5.0 bits per weight, against q4_0's 4.5). pytorch rows are dense f32/bf16 weights.",
    ]
    if result["warnings"]:
        lines += ["", "Warnings (numbers may be unreliable):", ""] + [f"- {w}" for w in result["warnings"]]
    skipped = sorted({f"{r['impl']} {r['type']} batch {r['batch']}: {r['skipped']}" for r in rows if r.get("crashed")})
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {s}" for s in skipped]
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "Errors:", ""] + [
            f"- {r['impl']} {r['type']} {r['n']}x{r['k']} batch {r['batch']}: {r['error']}" for r in errors
        ]
    return "\n".join(lines) + "\n"


def disturbed(r: dict[str, Any]) -> bool:
    """Whether other work competed for the CPUs during a row's timed runs (PSI stall of 5% or more)."""
    return r.get("cpu_stall_pct") is not None and r["cpu_stall_pct"] >= QUIET_CPU_PRESSURE


def collect_warnings(machine: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    cores = machine["cpu"]["usable_cores"]
    before = contention(machine["pressure_start"], machine["load_average_start"], cores)
    out = ["before the run: " + "; ".join(before)] if before else []
    for r in rows:
        if r.get("cpu_stall_pct") is not None:
            # The stall over exactly the timed runs replaces the 10-second CPU average, which also covers setup
            # work before them; memory and I/O pressure still come from the averages.
            why = [f"CPU stall {r['cpu_stall_pct']}% of the timed runs"] if disturbed(r) else []
            why += [w for w in contention(r.get("pressure_after"), None, None) if not w.startswith("cpu ")]
        else:
            why = contention(r.get("pressure_after"), None, None)
        if r.get("wait_quiet") and not r["wait_quiet"]["quiet"]:
            why.append(f"not quiet after waiting {r['wait_quiet']['waited_s']} s")
        if r["min_us"] and r["p90_us"] and r["p90_us"] > 1.5 * r["min_us"]:
            why.append(f"p90 is {r['p90_us'] / r['min_us']:.1f}× the minimum")
        if why:
            what = (
                r.get("phase", "")
                if r["impl"] == "read-bandwidth"
                else f"{r['type']} {r['n']}x{r['k']} batch {r['batch']}"
            )
            out.append(f"{r['impl']} {what}: " + "; ".join(why))
    bws = [r["gbps"] for r in rows if r["impl"] == "read-bandwidth" and r["gbps"]]
    if len(bws) >= 2 and max(bws) > 1.25 * min(bws):
        out.append(f"read bandwidth moved from {bws[0]:.1f} to {bws[-1]:.1f} GB/s during the run")
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    bw = read_bandwidth(rows)
    impls = impl_order(rows)
    groups = []
    for r in rows:
        key = (r["n"], r["k"], r["batch"])
        if r["impl"] != "read-bandwidth" and r["batch"] is not None and key not in groups:
            groups.append(key)
    cols = 2 if len(groups) > 1 else 1
    nrows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7.5 * cols, 4.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (n, k, b) in zip(axes.flat, groups):
        sub = [r for r in rows if (r["n"], r["k"], r["batch"]) == (n, k, b)]
        types = list(dict.fromkeys(r["type"] for r in sub))
        present = [i for i in impls if any(r["impl"] == i and r["gbps"] for r in sub)]
        width = 0.8 / max(1, len(present))
        for j, impl in enumerate(present):
            color = colors[impls.index(impl) % len(colors)]  # one color per implementation in every panel
            vals = []
            for t in types:
                r = next((r for r in sub if r["impl"] == impl and r["type"] == t and not r["error"]), None)
                vals.append(r["gbps"] if r and r["gbps"] else 0.0)
            xs = np.arange(len(types)) + (j - (len(present) - 1) / 2) * width
            ax.bar(xs, vals, width, label=impl, color=color)
        if bw:
            ax.axhline(bw, color="black", linestyle="--", linewidth=1, label=f"read bandwidth {bw:.1f} GB/s")
        ax.set_xticks(np.arange(len(types)), types)
        ax.set_ylabel("effective GB/s")
        ax.set_title(f"n×k = {n}×{k}, batch {b}, {result['config']['threads']} threads")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    by_label: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(lab, h)
    labels = sorted(by_label, key=lambda lab: (lab.startswith("read"), impls.index(lab) if lab in impls else 0))
    handles = [by_label[lab] for lab in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def gguf_rows(t: str, w_float: np.ndarray, xs, sd, g, args, repacked: dict[str, list[str]]) -> list[dict[str, Any]]:
    """sdcompile and ggml (every buffer type) on the same GGUF weight copies of type ``t``."""
    from sdcompile.quant.types import get

    n, k = w_float.shape
    rows: list[dict[str, Any]] = []
    nbytes = get(t).nbytes((n, k))
    r = copies_for(nbytes, args.rotate_bytes)
    log(f"{t} {n}x{k}: {r} copies x {nbytes / 1e6:.1f} MB")
    try:
        with Stopwatch() as sw:
            w = WeightCopies(t, n, k, r, w_float, np.random.default_rng([SEED, n, k, *map(ord, t)]))
        log(f"  weights ready in {sw.seconds:.1f} s (copy 0 {'gguf-quantized' if w.real else 'random'})")
    except Exception as e:
        row = new_row("sdcompile" if sd is not None else "ggml", t, n, k, None, args)
        record_error(row, "weights", e)
        return [row]
    copy0 = "gguf.quants.quantize" if w.real else "random valid blocks"
    w64 = w.decoded0.astype(np.float64)
    refs = {b: xs[b].astype(np.float64) @ w64.T for b in args.batches}
    del w64
    if sd is not None:
        for b in args.batches:
            row = run_sdcompile(sd, w, b, xs[b], refs[b], args)
            row["weights_copy0"] = copy0
            rows.append(row)
            log_row(row)
    if g is not None:
        g.set_threads(args.threads)
        try:
            for row in ggml_rows(g, w, args.batches, xs, refs, args):
                row["weights_copy0"] = copy0
                rows.append(row)
                if row.get("repacked") and row["impl"] not in repacked.setdefault(t, []):
                    repacked[t].append(row["impl"])
        finally:
            g.free_threadpool()
    return rows


# ------------------------------------------------------------------------------------------------------------ main


def wait_quiet(seconds: float, use_load: bool = True) -> dict[str, Any]:
    """``common.wait_quiet`` with this benchmark's threshold and log (the load average counts this process's own
    recent threads, so the wait before each measurement leaves it out)."""
    return _wait_quiet(seconds, stall_pct=QUIET_CPU_PRESSURE, use_load=use_load, log=log)


def render_only(args) -> int:
    import json

    result = json.loads(args.from_json.read_text(encoding="utf-8"))
    result["warnings"] = collect_warnings(result["machine"], result["rows"])
    md = render_markdown(result)
    if args.markdown:
        atomic_write_text(args.markdown, md)
        log(f"wrote {args.markdown}")
    if args.plot:
        plot(result, args.plot)
        log(f"wrote {args.plot}")
    sys.stdout.write(md)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return render_only(args)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)

    import sdcompile  # noqa: F401 - the compiler's TVM before the runtime's (see runtime/executors/cpu.py)
    from sdcompile.kernels.spec import linear

    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    machine = machine_info()
    machine["caches"] = cache_sizes()
    machine["wait_quiet"] = quiet
    rows: list[dict[str, Any]] = []
    peers: dict[str, Any] = {}

    if "read-bandwidth" in args.impls:
        rows.append(measure_bandwidth(args, "start"))

    sd = None
    if "sdcompile" in args.impls:
        specs = [linear(M=b, N=n, K=k, wtype=t) for t in args.types for n, k in args.shapes for b in args.batches]
        try:
            sd = Sdcompile(specs, args)
            peers["sdcompile"] = {
                "compile_s": round(sd.compile_s, 2),
                "cpu": sd.description.get("cpu"),
                "threads": sd.ex.num_threads,
                "call": sd.call,
                "executor_launch_overhead_us": round(sd.launch_overhead_us, 2),
            }
        except Exception as e:
            row = new_row("sdcompile", ",".join(args.types), None, None, None, args)
            record_error(row, "build", e)
            rows.append(row)

    g = None
    if "ggml" in args.impls:
        try:
            g = Ggml.load(args.ggml_lib_dir)
            g.set_threads(args.threads)
            peers["ggml"] = g.info()
            log(f"ggml: {g.lib_dir}, extra buffer types {peers['ggml']['extra_buffer_types']}")
        except (GgmlError, OSError) as e:
            row = new_row("ggml", ",".join(args.types), None, None, None, args)
            record_error(row, "load", e)
            rows.append(row)
            g = None
        if g is not None:
            g.free_threadpool()  # recreated around each use: idle polling threads must not compete with others

    ort_peer = None
    if "onnxruntime" in args.impls:
        try:
            ort_peer = OrtPeer(args.threads)
            peers["onnxruntime"] = {"version": ort_peer.version, "shared_thread_pool": ort_peer.shared_pool}
        except Exception as e:
            row = new_row("onnxruntime", "q4_0", None, None, None, args)
            record_error(row, "import", e)
            rows.append(row)

    if "pytorch" in args.impls:
        try:
            import torch

            torch.set_num_threads(args.threads)
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
            peers["pytorch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
        except Exception as e:
            row = new_row("pytorch", "f32", None, None, None, args)
            record_error(row, "import", e)
            rows.append(row)
            args.impls = [i for i in args.impls if i != "pytorch"]

    repacked: dict[str, list[str]] = {}
    for n, k in args.shapes:
        rng = np.random.default_rng([SEED, n, k])
        log(f"shape n={n} k={k}: generating float weights and inputs")
        w_float = rng.standard_normal((n, k), dtype=np.float32)
        xs = {b: rng.standard_normal((b, k), dtype=np.float32) for b in args.batches}
        for t in args.types:
            if sd is not None or g is not None:
                rows += gguf_rows(t, w_float, xs, sd, g, args, repacked)
            if ort_peer is not None and t in FOUR_BIT:
                rows += ort_rows(ort_peer, t, w_float, args.batches, xs, args, rng)
        if ort_peer is not None and not any(t in FOUR_BIT for t in args.types):
            log("onnxruntime: no 4-bit type (q4_0) in --types; skipped")
        if "pytorch" in args.impls:
            rows += torch_rows(n, k, args.batches, xs, args, rng, w_float)
        w_float = xs = None
        gc.collect()

    if "read-bandwidth" in args.impls:
        rows.append(measure_bandwidth(args, "end"))
    if g is not None:
        peers["ggml"]["repacked_types"] = repacked
        g.close()

    machine["load_average_end"] = load_average()
    machine["pressure_end"] = pressure()
    result = {
        "benchmark": "gemv",
        "created": utc_now(),
        "config": {
            "op": "y = x @ W^T, W [n, k] in GGUF block layout, x [batch, k] f32, y [batch, n] f32",
            "types": args.types,
            "shapes": [list(s) for s in args.shapes],
            "batches": args.batches,
            "threads": args.threads,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "quick": args.quick,
            "wait_quiet_s": args.wait_quiet,
            "quiet_each_s": args.quiet_each,
            "retries": args.retries,
            "sdcompile_call": args.sdcompile_call,
            "rotate_bytes": args.rotate_bytes,
            "llc_bytes": last_level_cache_bytes(),
            "bandwidth_bytes": int(args.bandwidth_mb * 1e6),
            "seed": SEED,
            "timed_span": "one call per measurement, cycling through the weight copies; x already in place",
            "gbps": "(weight bytes + 4 * batch * (k + n)) / time; pytorch counts its dtype's x and y bytes",
            "tolerances": {"exact_f32": TOL_EXACT, "lossy_activations": TOL_LOSSY},
        },
        "machine": machine,
        "peers": peers,
        "rows": rows,
    }
    result["warnings"] = collect_warnings(machine, rows)
    md = render_markdown(result)
    atomic_write_json(args.json, result)
    log(f"wrote {args.json}")
    if args.markdown:
        atomic_write_text(args.markdown, md)
        log(f"wrote {args.markdown}")
    if args.plot:
        try:
            plot(result, args.plot)
            log(f"wrote {args.plot}")
        except ImportError as e:
            log(f"--plot needs matplotlib ({e}); pip install matplotlib")
    sys.stdout.write(md)
    sys.stdout.flush()

    if any(r["error"] for r in rows if r["impl"] != "sdcompile"):
        return EXIT_PEER_FAILED
    if any(r["error"] for r in rows if r["impl"] == "sdcompile"):
        return EXIT_SDCOMPILE_FAILED
    return EXIT_OK


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
