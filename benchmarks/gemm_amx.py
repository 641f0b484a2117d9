"""The bf16 GEMMs of SD1.5 (``compile --compute bf16``: ``linear`` and ``conv2d`` on the AMX tile unit,
``schedules/cpu_amx_bf16.py``) one shape at a time, against PyTorch's bf16 ``linear`` / channels-last ``conv2d`` on the
same shapes, in the same process, alternating; minimum of the repeats.

    .venv/bin/python benchmarks/gemm_amx.py                      # 2 threads, wall time
    .venv/bin/python benchmarks/gemm_amx.py --threads 1          # one thread, CPU time (steadier on a busy machine)
    .venv/bin/python benchmarks/gemm_amx.py --only conv --json out.json

The shapes are the hottest of a guided (batch 2) UNet evaluation at 512x512 (``sdcompile bench --profile``) and of
the VAE decoder at 512x512. Each kernel's output is checked against PyTorch's bf16 result (relative to its range) so
a fast wrong kernel cannot pass unnoticed. With one thread the kernels run in the calling thread, so its CPU time
(``time.thread_time``) leaves out what other processes take; with more, wall time. GFLOP/s count 2 M N K.
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
CONV1 = {"kh": 1, "kw": 1, "pads": [0, 0, 0, 0], "stride": 1}
# (label, op, attrs): UNet 512x512 guided (B 2, latents 64x64 .. 8x8), then the VAE decoder at 512x512 (B 1)
SHAPES = [
    ("unet conv 64² 320→320", "conv2d", {"B": 2, "C": 320, "H": 64, "W": 64, "N": 320, **CONV3}),
    ("unet conv 32² 640→640", "conv2d", {"B": 2, "C": 640, "H": 32, "W": 32, "N": 640, **CONV3}),
    ("unet conv 16² 1280→1280", "conv2d", {"B": 2, "C": 1280, "H": 16, "W": 16, "N": 1280, **CONV3}),
    ("unet conv 16² 2560→1280", "conv2d", {"B": 2, "C": 2560, "H": 16, "W": 16, "N": 1280, **CONV3}),
    ("unet conv 8² 1280→1280", "conv2d", {"B": 2, "C": 1280, "H": 8, "W": 8, "N": 1280, **CONV3}),
    ("unet linear ff 8192x320→2560", "linear", {"M": 8192, "K": 320, "N": 2560}),
    ("unet linear qkv 8192x320→320", "linear", {"M": 8192, "K": 320, "N": 320}),
    ("unet linear ff 2048x640→5120", "linear", {"M": 2048, "K": 640, "N": 5120}),
    ("unet linear ff 512x1280→10240", "linear", {"M": 512, "K": 1280, "N": 10240}),
    ("unet linear out 8192x1280→320", "linear", {"M": 8192, "K": 1280, "N": 320}),
    ("vae conv 64² 512→512", "conv2d", {"B": 1, "C": 512, "H": 64, "W": 64, "N": 512, **CONV3}),
    ("vae conv 256² 256→256", "conv2d", {"B": 1, "C": 256, "H": 256, "W": 256, "N": 256, **CONV3}),
    ("vae conv 512² 128→128", "conv2d", {"B": 1, "C": 128, "H": 512, "W": 512, "N": 128, **CONV3}),
    ("vae conv1x1 256² 512→256", "conv2d", {"B": 1, "C": 512, "H": 256, "W": 256, "N": 256, **CONV1}),
]


def spec_of(op: str, attrs: dict):
    from sdcompile.kernels.spec import KernelSpec

    extra = {"act": "none"} if op == "linear" else {}
    return KernelSpec.make(op, **attrs, **extra, bias=True, residual=False, wtype="f16", mma="bf16")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5, help="timed calls per kernel")
    p.add_argument("--only", default="", help="run the shapes whose label contains this text")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch (faster; no check of the outputs either)")
    p.add_argument("--json", type=Path, help="write the records here")
    a = p.parse_args()

    from runtime.executors.cpu import Executor
    from sdcompile.codegen import tvm_layer
    from sdcompile.codegen.build import build_kernels
    from sdcompile.kernels.spec import gemm_mnk

    if not tvm_layer.host_amx_bf16():
        print("this CPU has no AMX-BF16 (or SDCOMPILE_NO_AMX is set): nothing to measure")
        return 1
    shapes = [s for s in SHAPES if a.only in s[0]]
    specs = [spec_of(op, at) for _, op, at in shapes]
    out = Path(tempfile.mkdtemp(prefix="gemm_amx-"))
    t0 = time.perf_counter()
    ex = Executor(out, build_kernels(specs, "cpu", out), num_threads=a.threads)
    print(f"built {len(specs)} kernels in {time.perf_counter() - t0:.0f} s", flush=True)
    clock = time.thread_time if a.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    records = []
    load = os.getloadavg()
    if not a.no_torch:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(a.threads)
    for (label, op, at), sp in zip(shapes, specs):
        M, N, K = gemm_mnk(sp)
        flop = 2 * M * N * K
        host = {}
        bufs = []
        for prm in sp.params:
            if prm.name == "w":
                arr = (rng.standard_normal(prm.shape) / np.sqrt(K)).astype(np.float16)
            else:
                arr = rng.standard_normal(prm.shape).astype(np.float32)
            host[prm.name] = arr
            buf = ex.alloc(arr.nbytes)
            if not prm.is_output:
                ex.upload(buf, arr)
            bufs.append((buf, prm.shape, prm.dtype))
        ex.launch(sp.name, bufs)  # warm-up
        best = float("inf")
        tbest = float("inf")
        tfn = None
        if not a.no_torch:
            xb = torch.from_numpy(host["x"]).to(torch.bfloat16)
            wb = torch.from_numpy(host["w"].astype(np.float32)).to(torch.bfloat16)
            bb = torch.from_numpy(host["bias"]).to(torch.bfloat16)
            if op == "conv2d":
                xb = xb.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # NHWC storage, as ours
                wb = (
                    wb.reshape(N, at["kh"], at["kw"], at["C"])
                    .permute(0, 3, 1, 2)
                    .contiguous(memory_format=torch.channels_last)
                )
                pad = at["pads"][0]

                def tfn(xb=xb, wb=wb, bb=bb, stride=at["stride"], pad=pad):
                    return F.conv2d(xb, wb, bb, stride=stride, padding=pad)
            else:

                def tfn(xb=xb, wb=wb, bb=bb):
                    return F.linear(xb, wb, bb)

            with torch.no_grad():
                ref = tfn().float()
            if op == "conv2d":
                ref = ref.permute(0, 2, 3, 1)
            ref = ref.reshape(-1, N).numpy()
            got = ex.download(bufs[-1][0], bufs[-1][1], "float32").reshape(-1, N)
            err = float(np.abs(got - ref).max() / (np.abs(ref).max() or 1.0))
        for _ in range(a.repeat):
            t = clock()
            ex.launch(sp.name, bufs)
            best = min(best, clock() - t)
            if tfn is not None:
                with torch.no_grad():
                    t = clock()
                    tfn()
                    tbest = min(tbest, clock() - t)
        rec = {"label": label, "op": op, "M": M, "N": N, "K": K, "ms": best * 1e3, "gflops": flop / best / 1e9}
        line = f"{label:32s} M {M:6d} N {N:5d} K {K:5d}: {rec['ms']:8.2f} ms {rec['gflops']:6.0f} GFLOP/s"
        if tfn is not None:
            rec |= {"torch_ms": tbest * 1e3, "torch_gflops": flop / tbest / 1e9, "max_err_vs_torch": err}
            line += f" | torch bf16 {tbest * 1e3:8.2f} ms {rec['torch_gflops']:6.0f} GFLOP/s ({tbest / best:4.2f}x) | err {err:.1e}"
        print(line, flush=True)
        records.append(rec)
        for buf, _, _ in bufs:
            ex.free(buf)
    meta = {"threads": a.threads, "clock": clock.__name__, "load_before": load, "load_after": os.getloadavg()}
    print(f"load average {load[0]:.2f} before, {meta['load_after'][0]:.2f} after")
    if a.json:
        a.json.write_text(json.dumps({"config": meta, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
