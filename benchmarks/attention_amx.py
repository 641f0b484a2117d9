"""SD1.5's attention shapes (guided batch 2, 8 heads, 512x512): the AMX-BF16 flash-attention kernel
(``compile --compute bf16``, ``schedules/cpu_attention_amx.py``) against the f32 kernel, in the same process,
alternating, minimum of the repeats; optionally PyTorch's bf16 scaled-dot-product attention on the same shapes.

    .venv/bin/python benchmarks/attention_amx.py                     # 2 threads, wall time
    .venv/bin/python benchmarks/attention_amx.py --threads 1         # one thread, CPU time (steadier on a busy machine)
    .venv/bin/python benchmarks/attention_amx.py --torch --json out.json

With one thread the kernels run in the calling thread, so its CPU time (``time.thread_time``) leaves out what other
processes take; with more, wall time. GFLOP/s count 4 S T Dh per head (q.k and p.v), as FlopCounterMode does.
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

# (S, T, Dh): self- and cross-attention per UNet level at 512x512 (8 heads; 64x64, 32x32, 16x16, 8x8 latents)
SHAPES = [
    (4096, 4096, 40),
    (4096, 77, 40),
    (1024, 1024, 80),
    (1024, 77, 80),
    (256, 256, 160),
    (256, 77, 160),
    (64, 64, 160),
    (64, 77, 160),
]
B, H = 2, 8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5, help="timed calls per kernel (f32 at 4096 tokens: 2)")
    p.add_argument("--torch", action="store_true", help="also PyTorch's bf16 SDPA")
    p.add_argument("--json", type=Path, help="write the records here")
    a = p.parse_args()

    from runtime.executors.cpu import Executor
    from sdcompile.codegen import tvm_layer
    from sdcompile.codegen.build import build_kernels
    from sdcompile.kernels.spec import KernelSpec

    if not tvm_layer.host_amx_bf16():
        print("this CPU has no AMX-BF16 (or SDCOMPILE_NO_AMX is set): nothing to compare")
        return 1

    def spec(S, T, Dh, mma):
        return KernelSpec.make("attention", B=B, S=S, T=T, H=H, Dh=Dh, causal=False, **({"mma": "bf16"} if mma else {}))

    specs = [spec(*s, m) for s in SHAPES for m in (True, False)]
    out = Path(tempfile.mkdtemp(prefix="attention_amx-"))
    ex = Executor(out, build_kernels(specs, "cpu", out), num_threads=a.threads)
    clock = time.thread_time if a.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    records = []
    load = os.getloadavg()
    for S, T, Dh in SHAPES:
        flop = 4 * B * H * S * T * Dh
        pair = [spec(S, T, Dh, True), spec(S, T, Dh, False)]
        args = []
        for sp in pair:
            bufs = []
            for prm in sp.params:
                x = rng.standard_normal(prm.shape).astype(np.float32)
                buf = ex.alloc(x.nbytes)
                ex.upload(buf, x)
                bufs.append((buf, prm.shape, prm.dtype))
            ex.launch(sp.name, bufs)  # warm-up
            args.append(bufs)
        best = [float("inf"), float("inf")]
        for r in range(a.repeat):
            for i, sp in enumerate(pair):
                if i == 1 and r >= 2 and S * T >= 4096 * 4096:
                    continue  # the f32 kernel takes seconds there
                t = clock()
                ex.launch(sp.name, args[i])
                best[i] = min(best[i], clock() - t)
        rec = {"S": S, "T": T, "Dh": Dh, "bf16_ms": best[0] * 1e3, "f32_ms": best[1] * 1e3}
        rec["bf16_gflops"], rec["f32_gflops"] = flop / best[0] / 1e9, flop / best[1] / 1e9
        line = (
            f"S {S:5d} T {T:5d} Dh {Dh:3d}: bf16 {rec['bf16_ms']:8.2f} ms {rec['bf16_gflops']:5.0f} GFLOP/s | "
            f"f32 {rec['f32_ms']:8.2f} ms {rec['f32_gflops']:5.0f} GFLOP/s | {best[1] / best[0]:4.1f}x"
        )
        if a.torch:
            import torch
            import torch.nn.functional as F

            torch.set_num_threads(a.threads)
            q, k, v = (torch.randn(B, H, L, Dh, dtype=torch.bfloat16) for L in (S, T, T))
            F.scaled_dot_product_attention(q, k, v)
            tt = float("inf")
            for _ in range(a.repeat):
                t = clock()
                F.scaled_dot_product_attention(q, k, v)
                tt = min(tt, clock() - t)
            rec["torch_bf16_ms"] = tt * 1e3
            line += f" | torch bf16 {tt * 1e3:8.2f} ms ({tt / best[0]:.2f}x ours)"
        print(line, flush=True)
        records.append(rec)
    meta = {"threads": a.threads, "clock": clock.__name__, "load_before": load, "load_after": os.getloadavg()}
    print(f"load average {load[0]:.2f} before, {meta['load_after'][0]:.2f} after")
    if a.json:
        a.json.write_text(json.dumps({"config": meta, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
