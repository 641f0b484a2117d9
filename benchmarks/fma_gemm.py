"""The f32 GEMMs of SD1.5 (``compile`` without ``--compute bf16``) on the built-in rules (``wino``: the 3x3 convs
``schedules/cpu_winograd.py`` takes by Winograd's F(2x2, 3x3) or F(4x4, 3x3), the rest as ``fma``), the
register-blocked FMA kernel (``fma``, ``schedules/cpu_fma.py``; every conv direct), the tiled schedule it replaced
(``schedules/cpu.py``) and PyTorch f32 (oneDNN) on the same shapes, in one process, alternating; minimum of the
repeats.

    .venv/bin/python benchmarks/fma_gemm.py                  # one thread, CPU time of the calling thread
    .venv/bin/python benchmarks/fma_gemm.py --threads 2      # wall time
    .venv/bin/python benchmarks/fma_gemm.py --only conv --json out.json

With one thread the kernels run in the calling thread, so its CPU time (``time.thread_time``) leaves out what other
processes take; with more, wall time. GFLOP/s count 2 M N K (a Winograd conv's too: the direct conv's products, so
the columns compare times). Each kernel's output is checked against PyTorch's
(relative to its range), so a fast wrong kernel cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONV3 = {"kh": 3, "kw": 3, "pads": [1, 1, 1, 1], "stride": 1}
# (label, op, attrs, weight type): the SD1.5 text encoder (2 prompts x 77 tokens, f32 weights), then the UNet at
# 512x512 with guidance (f16 weights)
SHAPES = [
    ("te qkv/out 154x768→768", "linear", {"M": 154, "K": 768, "N": 768, "act": "none"}, "f32"),
    ("te fc1 154x768→3072 qgelu", "linear", {"M": 154, "K": 768, "N": 3072, "act": "quick_gelu"}, "f32"),
    ("te fc2 154x3072→768", "linear", {"M": 154, "K": 3072, "N": 768, "act": "none"}, "f32"),
    ("unet conv 64² 320→320", "conv2d", {"B": 2, "C": 320, "H": 64, "W": 64, "N": 320, **CONV3}, "f16"),
    ("unet conv 32² 640→640", "conv2d", {"B": 2, "C": 640, "H": 32, "W": 32, "N": 640, **CONV3}, "f16"),
    ("unet conv 16² 1280→1280", "conv2d", {"B": 2, "C": 1280, "H": 16, "W": 16, "N": 1280, **CONV3}, "f16"),
    ("unet conv 8² 1280→1280", "conv2d", {"B": 2, "C": 1280, "H": 8, "W": 8, "N": 1280, **CONV3}, "f16"),
    ("unet linear ff 8192x320→2560", "linear", {"M": 8192, "K": 320, "N": 2560, "act": "none"}, "f16"),
    ("unet linear out 8192x1280→320", "linear", {"M": 8192, "K": 1280, "N": 320, "act": "none"}, "f16"),
    # the UNet at 256x256 (its levels at 32², 16², 8², 4²): fewer rows per weight
    ("unet256 conv 32² 320→320", "conv2d", {"B": 2, "C": 320, "H": 32, "W": 32, "N": 320, **CONV3}, "f16"),
    ("unet256 conv 16² 640→640", "conv2d", {"B": 2, "C": 640, "H": 16, "W": 16, "N": 640, **CONV3}, "f16"),
    ("unet256 conv 4² 1280→1280", "conv2d", {"B": 2, "C": 1280, "H": 4, "W": 4, "N": 1280, **CONV3}, "f16"),
    ("unet256 linear ff 2048x320→2560", "linear", {"M": 2048, "K": 320, "N": 2560, "act": "none"}, "f16"),
    ("unet256 linear ff 128x1280→10240", "linear", {"M": 128, "K": 1280, "N": 10240, "act": "none"}, "f16"),
    ("unet256 linear ff-out 128x5120→1280", "linear", {"M": 128, "K": 5120, "N": 1280, "act": "none"}, "f16"),
    # the VAE decoder at 512x512 (one image): its 3x3 convs per level
    ("vae conv 64² 512→512", "conv2d", {"B": 1, "C": 512, "H": 64, "W": 64, "N": 512, **CONV3}, "f16"),
    ("vae conv 128² 512→512", "conv2d", {"B": 1, "C": 512, "H": 128, "W": 128, "N": 512, **CONV3}, "f16"),
    ("vae conv 256² 256→256", "conv2d", {"B": 1, "C": 256, "H": 256, "W": 256, "N": 256, **CONV3}, "f16"),
    ("vae conv 512² 128→128", "conv2d", {"B": 1, "C": 128, "H": 512, "W": 512, "N": 128, **CONV3}, "f16"),
]


def spec_of(op: str, attrs: dict, wtype: str):
    from sdcompile.kernels.spec import KernelSpec

    return KernelSpec.make(op, **attrs, bias=True, residual=False, wtype=wtype)


def gemm_flop(spec) -> float:
    from sdcompile.kernels.spec import gemm_mnk

    M, N, K = gemm_mnk(spec)
    return 2.0 * M * N * K


def build(specs: list, rules: str, threads: int):
    """An executor over ``specs`` built with ``rules``: "wino" (the built-in rules: Winograd for the 3x3 convs it
    takes, else the FMA kernel), "fma" (the FMA kernel for every conv too) or "tiled" (neither)."""
    from runtime.executors.cpu import Executor
    from schedules import cpu_fma, cpu_winograd
    from sdcompile.codegen import build as B

    keep = cpu_fma.applicable, cpu_winograd.applicable
    if rules != "wino":
        cpu_winograd.applicable = lambda spec, lanes: False
    if rules == "tiled":
        cpu_fma.applicable = lambda spec, lanes: False
    B._BUILT.clear()  # the build cache keys on the specs, not on the schedule
    try:
        out = Path(tempfile.mkdtemp(prefix="fma_gemm-"))
        return Executor(out, B.build_kernels(specs, "cpu", out), num_threads=threads)
    finally:
        cpu_fma.applicable, cpu_winograd.applicable = keep


def buffers(ex, spec, arrays: dict) -> list:
    bufs = []
    for p in spec.params:
        a = np.zeros(p.shape, np.float32) if p.is_output else arrays[p.name]
        buf = ex.alloc(a.nbytes)
        ex.upload(buf, a)
        bufs.append((buf, (p.words(),) if p.kind == "raw" else p.shape, "uint32" if p.kind == "raw" else p.dtype))
    return bufs


def torch_fn(op: str, a: dict, x: np.ndarray, w: np.ndarray, b: np.ndarray):
    import torch
    import torch.nn.functional as F

    act = {"none": lambda v: v, "quick_gelu": lambda v: v * torch.sigmoid(1.702 * v)}[a.get("act", "none")]
    tb = torch.from_numpy(b)
    if op == "linear":
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        return lambda: act(F.linear(tx, tw, tb))
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # NHWC in memory
    tw = torch.from_numpy(w.reshape(a["N"], a["kh"], a["kw"], a["C"])).permute(0, 3, 1, 2)
    tw = tw.contiguous(memory_format=torch.channels_last)
    return lambda: F.conv2d(tx, tw, tb, padding=1).permute(0, 2, 3, 1)


def measure(shapes: list, threads: int, repeat: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    specs = [spec_of(op, a, t) for _, op, a, t in shapes]
    exes = {rules: build(specs, rules, threads) for rules in ("wino", "fma", "tiled")}
    clock = time.thread_time if threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    rows = []
    for (label, op, a, wtype), spec in zip(shapes, specs):
        from sdcompile.kernels.spec import gemm_mnk
        from sdcompile.quant.reference import dequantize, quantize

        M, N, K = gemm_mnk(spec)
        x = rng.standard_normal(spec.param("x").shape).astype(np.float32)
        raw = quantize((rng.standard_normal((N, K)) * 0.05).astype(np.float32), wtype)
        w = dequantize(raw, wtype, (N, K)).astype(np.float32)
        words = np.zeros(spec.param("w").words() * 4, np.uint8)
        words[: raw.size] = raw
        b = rng.standard_normal(N).astype(np.float32)
        arrays = {"x": x, "w": words.view(np.uint32), "bias": b}
        fns = {k: (ex, buffers(ex, spec, arrays)) for k, ex in exes.items()}
        calls = {k: (lambda ex=ex, bufs=bufs, n=spec.name: ex.launch(n, bufs)) for k, (ex, bufs) in fns.items()}
        calls["torch"] = torch_fn(op, a, x, w, b)
        with torch.no_grad():
            want = calls["torch"]().reshape(M, N).numpy()
            for k, (ex, bufs) in fns.items():
                calls[k]()
                got = ex.download(bufs[-1][0], (M, N), "float32")
                err = float(np.abs(got - want).max() / np.abs(want).max())
                if err > 1e-4:
                    raise SystemExit(f"{label}: {k} differs from PyTorch by {err:.2g} of the output range")
            best = dict.fromkeys(calls, float("inf"))
            for _ in range(repeat):  # alternating, so a burst of other load hits all three alike
                for k, fn in calls.items():
                    t = clock()
                    fn()
                    best[k] = min(best[k], clock() - t)
        rows.append({"shape": label} | {k: gemm_flop(spec) / t / 1e9 for k, t in best.items()})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5, help="timed calls per kernel")
    p.add_argument("--only", help="shapes whose label contains this")
    p.add_argument("--json", type=Path, help="write the records here")
    a = p.parse_args()
    shapes = [s for s in SHAPES if not a.only or a.only in s[0]]
    rows = measure(shapes, a.threads, a.repeat)
    print(f"GFLOP/s, {a.threads} thread(s), {'CPU' if a.threads == 1 else 'wall'} time")
    print(f"{'shape':32s} {'wino':>7s} {'fma':>7s} {'tiled':>7s} {'torch':>7s}")
    for r in rows:
        print(f"{r['shape']:32s} {r['wino']:7.1f} {r['fma']:7.1f} {r['tiled']:7.1f} {r['torch']:7.1f}")
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "load": os.getloadavg(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
