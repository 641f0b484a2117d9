"""UNet and VAE GEMM shapes with bf16 products on the vector unit (``schedules/cpu_bf16_dot.py``, ``vdpbf16ps``)
against sdcompile's f32 kernel for the same spec, and optionally PyTorch's bf16 (oneDNN) restricted to the same ISA
(``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``, set in a child process before torch loads). The 3x3 convs that Winograd
takes are timed three ways with sdcompile: Winograd F(2x2, 3x3) with bf16 products (``schedules/cpu_winograd_dot.py``,
what ``--compute bf16`` runs them with: ``winograd_bf16``), the direct vdpbf16ps GEMM (``bf16_dot``, built with
Winograd's rule turned off) and f32 products (``f32``: Winograd in f32). GFLOP/s count the direct conv's products.

    SDCOMPILE_NO_AMX=1 .venv/bin/python benchmarks/bf16_dot.py --torch     # on a CPU with AMX: turn the tiles off

One thread, CPU time of the calling thread (``time.thread_time``): steady on a machine that others load; minimum of
the repeats. GFLOP/s count 2 M N K. The kernel's ceiling is the machine's vdpbf16ps rate (64 flop per instruction
per cycle and port), not its f32 FMA rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONV3 = {"kh": 3, "kw": 3, "stride": 1, "pads": [1, 1, 1, 1]}
# (name, op, attrs): SD1.5 UNet at 512x512 with guidance (batch 2), and the VAE decoder at 512x512
SHAPES = [
    ("conv3x3 B2 C320 64x64 N320", "conv2d", {"B": 2, "C": 320, "H": 64, "W": 64, "N": 320, **CONV3}),
    ("conv3x3 B2 C640 32x32 N640", "conv2d", {"B": 2, "C": 640, "H": 32, "W": 32, "N": 640, **CONV3}),
    ("conv3x3 B2 C1280 16x16 N1280", "conv2d", {"B": 2, "C": 1280, "H": 16, "W": 16, "N": 1280, **CONV3}),
    ("conv3x3 B2 C1280 8x8 N1280", "conv2d", {"B": 2, "C": 1280, "H": 8, "W": 8, "N": 1280, **CONV3}),
    ("VAE conv3x3 C512 128x128 N512", "conv2d", {"B": 1, "C": 512, "H": 128, "W": 128, "N": 512, **CONV3}),
    ("linear M8192 K320 N2560", "linear", {"M": 8192, "N": 2560, "K": 320, "act": "none"}),
    ("linear M8192 K1280 N320", "linear", {"M": 8192, "N": 320, "K": 1280, "act": "none"}),
]


def gemm_flop(op: str, a: dict) -> float:
    if op == "linear":
        return 2.0 * a["M"] * a["N"] * a["K"]
    return 2.0 * a["B"] * a["H"] * a["W"] * a["N"] * a["C"] * a["kh"] * a["kw"]  # stride 1, same padding


def best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)


def sdcompile_rates(repeat: int) -> list[dict]:
    from runtime.executors.cpu import Executor
    from sdcompile.codegen import tvm_layer
    from sdcompile.codegen.build import build_kernels
    from sdcompile.kernels.spec import KernelSpec

    if not tvm_layer.host_avx512_bf16() or tvm_layer.host_amx_bf16():
        raise SystemExit("needs AVX512_BF16 without AMX-BF16 (set SDCOMPILE_NO_AMX=1 on a CPU with AMX)")

    def spec(op, a, mma):
        extra = {"mma": "bf16"} if mma else {}
        return KernelSpec.make(op, **a, bias=True, residual=False, wtype="f16", **extra)

    from schedules import cpu_winograd_dot

    specs = [spec(op, a, m) for _, op, a in SHAPES for m in (True, False)]
    out = Path(tempfile.mkdtemp(prefix="bf16_dot-"))
    ex = Executor(out / "rules", build_kernels(specs, "cpu", out / "rules"), num_threads=1)
    takes = {sp.name for sp in specs if cpu_winograd_dot.applicable(sp, 16, True)}
    rule = cpu_winograd_dot.applicable
    cpu_winograd_dot.applicable = lambda *a: False  # the same specs on the direct vdpbf16ps GEMM
    try:
        direct = [sp for sp in specs if sp.name in takes]
        ex_direct = Executor(out / "direct", build_kernels(direct, "cpu", out / "direct"), num_threads=1)
    finally:
        cpu_winograd_dot.applicable = rule
    rng = np.random.default_rng(0)
    rows = []
    for name, op, a in SHAPES:
        row = {"shape": name}
        bf, f32 = spec(op, a, True), spec(op, a, False)
        runs = [("bf16_dot", bf, ex), ("f32", f32, ex)]
        if bf.name in takes:
            runs = [("winograd_bf16", bf, ex), ("bf16_dot", bf, ex_direct), ("f32", f32, ex)]
        for key, sp, kex in runs:
            bufs = []
            for p in sp.params:
                if p.kind == "raw":
                    arr = (rng.standard_normal(p.words() * 2) * 0.05).astype(np.float16).view(np.uint32)
                else:
                    arr = rng.standard_normal(p.shape).astype(np.float32)
                buf = kex.alloc(arr.nbytes)
                kex.upload(buf, arr)
                bufs.append(
                    (buf, (p.words(),) if p.kind == "raw" else p.shape, "uint32" if p.kind == "raw" else p.dtype)
                )
            row[key] = (
                gemm_flop(op, a) / best(lambda sp=sp, bufs=bufs, kex=kex: kex.launch(sp.name, bufs), repeat) / 1e9
            )
        rows.append(row)
    return rows


def torch_rates(repeat: int) -> list[dict]:
    """PyTorch bf16 on one thread, in this process (the caller sets ONEDNN_MAX_CPU_ISA before torch loads)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    rows = []
    with torch.no_grad():
        for name, op, a in SHAPES:
            if op == "linear":
                x = torch.randn(a["M"], a["K"], dtype=torch.bfloat16)
                w = torch.randn(a["N"], a["K"], dtype=torch.bfloat16)
                b = torch.randn(a["N"], dtype=torch.bfloat16)
                fn = lambda x=x, w=w, b=b: F.linear(x, w, b)  # noqa: E731
            else:
                x = torch.randn(a["B"], a["C"], a["H"], a["W"], dtype=torch.bfloat16)
                x = x.to(memory_format=torch.channels_last)  # NHWC, as sdcompile's convs and oneDNN's fast path
                w = torch.randn(a["N"], a["C"], a["kh"], a["kw"], dtype=torch.bfloat16)
                w = w.to(memory_format=torch.channels_last)
                b = torch.randn(a["N"], dtype=torch.bfloat16)
                fn = lambda x=x, w=w, b=b: F.conv2d(x, w, b, padding=1)  # noqa: E731
            rows.append({"shape": name, "torch_bf16": gemm_flop(op, a) / best(fn, repeat) / 1e9})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--torch", action="store_true", help="also PyTorch bf16, oneDNN limited to AVX512_CORE_BF16")
    p.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    p.add_argument("--json", type=Path, help="write the records here")
    a = p.parse_args()
    if a.torch_only:
        print(json.dumps(torch_rates(a.repeat)))
        return 0
    rows = sdcompile_rates(a.repeat)
    if a.torch:
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16")
        cmd = [sys.executable, __file__, "--torch-only", "--repeat", str(a.repeat)]
        child = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        for row, t in zip(rows, json.loads(child.stdout.strip().splitlines()[-1])):
            row.update(t)
    for row in rows:
        print(f"{row['shape']:32s} " + "  ".join(f"{k} {v:6.1f}" for k, v in row.items() if k != "shape") + " GFLOP/s")
    if a.json:
        a.json.write_text(json.dumps({"cpu_threads": 1, "load": os.getloadavg(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
