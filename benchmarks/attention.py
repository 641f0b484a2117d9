"""SD1.5's attention kernels at the shapes a guided UNet evaluation runs them (batch 2, 8 heads), against the
machine's peak measured in the same run: the figure the "attention at 70% of the peak it computes in" goal is
checked by.

Per image size (``--sizes``; 256 and 512), every self- and cross-attention shape of the UNet (queries: the level's
pixels; keys: the same pixels, or the prompt's 77 tokens), each with the number of calls one UNet evaluation makes
(5 per level: 2 down and 3 up blocks; the middle block's once). Variants, each the kernel ``compile`` builds for it:

- ``bf16``: ``--compute bf16`` (bf16 products summed in f32; q, k and v stored in bf16, as the UNet artifact stores
  them): the AMX tile unit's kernel where the CPU has AMX-BF16, else ``vdpbf16ps`` (AVX512_BF16, e.g. AMD Zen 4);
  its share is of that unit's peak;
- ``f32``: f32 products (FMA), q, k and v in f32; its share is of the f32 FMA peak;
- ``torch`` (``--torch``): PyTorch's bf16 ``scaled_dot_product_attention`` on the same shapes, for reference.

Each shape's variants run alternately in one process (``--rounds`` rounds of ``--repeat`` calls; the fastest call
counts); the peaks (``sd15.py``'s C program: independent FMA / dot-product chains) are measured before and after and
the higher is used. The UNet row weighs each shape by its calls: the sum of their FLOPs over the sum of their times.
GFLOP/s count 4 S T Dh per head (q.k and p.v), as FlopCounterMode does. Shapes with fewer than 64 queries (the
middle block at 256x256) run the row kernel whatever is asked; they are listed and counted in the UNet row.

    .venv/bin/python benchmarks/attention.py --sizes 256
    .venv/bin/python benchmarks/attention.py --torch --json benchmarks/results/attention_zen4.json \\
        --md benchmarks/results/attention_zen4.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

try:  # `python -m benchmarks.attention` from the repository root
    from benchmarks.common import (
        StallMeter,
        atomic_write_json,
        atomic_write_text,
        machine_info,
        markdown_table,
        utc_now,
    )
    from benchmarks.sd15 import c_peaks
except ImportError:  # `python benchmarks/attention.py`: the script's own directory is on sys.path
    from common import (  # type: ignore[no-redef]
        StallMeter,
        atomic_write_json,
        atomic_write_text,
        machine_info,
        markdown_table,
        utc_now,
    )
    from sd15 import c_peaks  # type: ignore[no-redef]

B, H, PROMPT = 2, 8, 77
DH = (40, 80, 160, 160)  # head channels per UNet level (320, 640, 1280, 1280 channels over 8 heads)
CALLS = (5, 5, 5, 1)  # transformer blocks per level: 2 down + 3 up; the middle block's one at the deepest
VARIANTS = ("bf16", "f32")
TORCH_KERNEL = "torch scaled_dot_product_attention (bf16)"
EXIT_OK = 0


def shapes(size: int) -> list[tuple[int, int, int, int]]:
    """(S, T, Dh, calls) of every attention of one guided UNet evaluation at ``size`` pixels."""
    out = []
    for level, (dh, calls) in enumerate(zip(DH, CALLS, strict=True)):
        pixels = (size // 8 >> min(level, 3)) ** 2
        out += [(pixels, pixels, dh, calls), (pixels, PROMPT, dh, calls)]
    return out


def spec_of(variant: str, S: int, T: int, Dh: int):
    from sdcompile.kernels.spec import KernelSpec

    extra = {"mma": "bf16", "dt": "bbbb"} if variant == "bf16" else {}
    return KernelSpec.make("attention", B=B, S=S, T=T, H=H, Dh=Dh, causal=False, **extra)


def kernel_of(spec) -> tuple[str, str]:
    """The kernel ``compile`` builds for ``spec`` on this host, and the peak it computes against (``c_peaks``'
    wtype): the tile unit's, ``vdpbf16ps``' or the f32 FMA's."""
    from schedules.cpu import CpuInfo, attention_kernel

    flash = attention_kernel(spec, CpuInfo())
    name = flash.__name__ if flash is not None else "schedules.cpu.attention (row kernel)"
    unit = {"schedules.cpu_attention_amx": "bf16-amx", "schedules.cpu_attention_dot": "bf16"}.get(name, "f32")
    return name, unit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="256,512", help="comma-separated image sizes (default 256,512)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every kernel (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape (default 3)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per variant and round (default 10)")
    p.add_argument("--torch", action="store_true", help="also PyTorch's bf16 scaled_dot_product_attention")
    p.add_argument("--workdir", type=Path, default=HERE / ".work" / "attention", help="kernels and the peak program")
    p.add_argument("--json", type=Path, help="write the records here (atomically)")
    p.add_argument("--md", type=Path, help="write a markdown report here (atomically)")
    a = p.parse_args(argv)
    try:
        a.sizes = [int(s) for s in a.sizes.split(",") if s]
    except ValueError:
        p.error(f"--sizes: not a list of integers: {a.sizes!r}")
    if not a.sizes or any(s % 64 or s <= 0 for s in a.sizes):
        p.error("--sizes: positive multiples of 64 (the UNet's deepest level is 1/64 of the image)")
    if min(a.threads, a.rounds, a.repeat) < 1:
        p.error("--threads, --rounds and --repeat must be at least 1")
    if a.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            p.error("--torch needs PyTorch (the test extra: pip install -e '.[test]')")
    return a


def inputs(ex, spec, rng) -> list:
    """Random q, k, v (unit normal, in each parameter's storage dtype) and the output buffer."""
    bufs = []
    for prm in spec.params:
        x = rng.standard_normal(prm.shape).astype(np.float32)
        if prm.dtype == "bfloat16":
            x = (x.view(np.uint32) >> 16).astype(np.uint16)
        buf = ex.alloc(x.nbytes)
        ex.upload(buf, x)
        bufs.append((buf, prm.shape, prm.dtype))
    return bufs


def torch_call(S: int, T: int, Dh: int, threads: int):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    q, k, v = (torch.randn(B, H, n, Dh, dtype=torch.bfloat16) for n in (S, T, T))
    return lambda: F.scaled_dot_product_attention(q, k, v)


def fastest(fn, calls: int) -> tuple[float, float]:
    """The fastest of ``calls`` calls of fn (seconds), and the % of their time some task waited for a CPU."""
    best = float("inf")
    with StallMeter() as m:
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return best, m.pct or 0.0


def record(size: int, S: int, T: int, Dh: int, calls: int, variant: str, kernel: str, unit, secs: float, stall: float):
    """One measurement: a shape, what ran it, its fastest call (``pct_peak`` comes once the peaks are final)."""
    return {
        "size": size,
        "S": S,
        "T": T,
        "Dh": Dh,
        "calls": calls,
        "variant": variant,
        "kernel": kernel,
        "unit": unit,
        "min_ms": secs * 1e3,
        "gflops": 4 * B * H * S * T * Dh / secs / 1e9,
        "cpu_stall_pct": stall,
    }


def measure(a: argparse.Namespace, log=print) -> dict[str, Any]:
    from runtime.executors.cpu import Executor
    from sdcompile.codegen.build import build_kernels

    machine = machine_info()
    flags = set(machine.get("cpu", {}).get("flags", []))
    log("FMA peaks (before)")
    peaks = {r["wtype"]: r for r in c_peaks(a.workdir, a.threads, flags, 3)}
    todo = [(size, *s) for size in a.sizes for s in shapes(size)]
    specs = {(v, S, T, Dh): spec_of(v, S, T, Dh) for _, S, T, Dh, _ in todo for v in VARIANTS}
    log(f"building {len(set(specs.values()))} kernels")
    out = Path(tempfile.mkdtemp(prefix="kernels-", dir=a.workdir))
    ex = Executor(out, build_kernels(sorted(set(specs.values()), key=lambda s: s.name), "cpu", out), a.threads)
    rng = np.random.default_rng(0)
    records = []
    load0 = os.getloadavg()
    for size, S, T, Dh, calls in todo:
        calls_of = {}
        for v in VARIANTS:
            sp = specs[v, S, T, Dh]
            bufs = inputs(ex, sp, rng)
            calls_of[v] = (lambda sp=sp, bufs=bufs: ex.launch(sp.name, bufs)), sp
        best = {v: float("inf") for v in calls_of}
        stall = {v: 0.0 for v in calls_of}
        for fn, _ in calls_of.values():
            fn()  # warm-up
        for r in range(a.rounds):
            for v in calls_of if r % 2 == 0 else reversed(list(calls_of)):
                secs, pct = fastest(calls_of[v][0], a.repeat)
                best[v], stall[v] = min(best[v], secs), max(stall[v], pct)
        line = f"{size}x{size} S {S:5d} T {T:5d} Dh {Dh:3d} x{calls}:"
        for v, (_, sp) in calls_of.items():
            records.append(record(size, S, T, Dh, calls, v, *kernel_of(sp), best[v], stall[v]))
            unit = records[-1]["unit"]
            pct = f" {100 * records[-1]['gflops'] / peaks[unit]['gflops']:4.1f}%" if unit in peaks else ""
            line += f" | {v} {best[v] * 1e3:8.3f} ms {records[-1]['gflops']:5.0f} GFLOP/s{pct}"
        log(line)
    if a.torch:  # after every kernel: PyTorch's OpenMP threads spin after each call and would slow the kernels'
        time.sleep(1.0)
        for size, S, T, Dh, calls in todo:
            fn = torch_call(S, T, Dh, a.threads)
            fn()
            secs, pct = fastest(fn, a.rounds * a.repeat)
            records.append(record(size, S, T, Dh, calls, "torch", TORCH_KERNEL, None, secs, pct))
            log(f"{size}x{size} S {S:5d} T {T:5d} Dh {Dh:3d} x{calls}: torch {secs * 1e3:8.3f} ms")
    log("FMA peaks (after)")
    for r in c_peaks(a.workdir, a.threads, flags, 3):
        if r["gflops"] > peaks[r["wtype"]]["gflops"]:
            peaks[r["wtype"]] = r
    shutil.rmtree(out, ignore_errors=True)  # this run's kernels: rebuilt by the next one
    for rec in records:  # against the higher of the two peak measurements
        if rec["unit"] in peaks:
            rec["pct_peak"] = 100 * rec["gflops"] / peaks[rec["unit"]]["gflops"]
    return {
        "created": utc_now(),
        "machine": machine,
        "threads": a.threads,
        "rounds": a.rounds,
        "repeat": a.repeat,
        "load_before": load0,
        "load_after": os.getloadavg(),
        "peaks": list(peaks.values()),
        "records": records,
        "unet": unet_rows(records, peaks),
    }


def unet_rows(records: list[dict[str, Any]], peaks: dict[str, Any]) -> list[dict[str, Any]]:
    """Per size and variant: every shape weighed by its calls per UNet evaluation."""
    rows = []
    for size in sorted({r["size"] for r in records}):
        for v in dict.fromkeys(r["variant"] for r in records):
            rs = [r for r in records if r["size"] == size and r["variant"] == v]
            flop = sum(r["calls"] * r["gflops"] * r["min_ms"] / 1e3 for r in rs)
            secs = sum(r["calls"] * r["min_ms"] / 1e3 for r in rs)
            units = {r["unit"] for r in rs if r["S"] >= 64}
            row = {"size": size, "variant": v, "ms": secs * 1e3, "gflops": flop / secs}
            if len(units) == 1 and (unit := units.pop()) in peaks:
                row["unit"], row["pct_peak"] = unit, 100 * row["gflops"] / peaks[unit]["gflops"]
            rows.append(row)
    return rows


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    cpu = m.get("cpu", {})
    lines = [
        f"### SD1.5 attention kernels, guided batch 2, {res['threads']} threads",
        "",
        f"{res['created']}; {cpu.get('model', '?')}, flags {' '.join(sorted(set(cpu.get('flags', [])) & KEY_FLAGS))}; "
        f"load average {res['load_before'][0]:.2f} before, {res['load_after'][0]:.2f} after; "
        f"{res['rounds']} alternating rounds of {res['repeat']} calls, the fastest call",
        "",
        "Peaks (the best of the runs before and after): "
        + "; ".join(f"{p['wtype']} {p['gflops']:.1f} GFLOP/s ({p['method']})" for p in res["peaks"]),
        "",
    ]
    variants = list(dict.fromkeys(r["variant"] for r in res["records"]))
    with_peak = {v for v in variants if any("pct_peak" in r for r in res["records"] if r["variant"] == v)}
    for size in sorted({r["size"] for r in res["records"]}):
        head = ["S", "T", "Dh", "calls"]
        for v in variants:
            head += [f"{v} ms", f"{v} GFLOP/s"] + ([f"{v} % peak"] if v in with_peak else [])

        def cells(r: dict[str, Any], v: str) -> list[str]:
            pct = [f"{r['pct_peak']:.1f}" if "pct_peak" in r else ""] if v in with_peak else []
            return [f"{r.get('min_ms', r.get('ms')):.3f}", f"{r['gflops']:.0f}"] + pct

        rows = []
        for S, T, Dh, calls in shapes(size):
            row: list[Any] = [S, T, Dh, calls]
            for v in variants:
                row += cells(
                    next(x for x in res["records"] if (x["size"], x["S"], x["T"], x["variant"]) == (size, S, T, v)), v
                )
            rows.append(row)
        row = ["UNet", "", "", sum(c for *_, c in shapes(size))]
        for v in variants:
            row += cells(next(x for x in res["unet"] if (x["size"], x["variant"]) == (size, v)), v)
        rows.append(row)
        lines += [f"#### {size}x{size}", "", markdown_table(head, rows), ""]
    kernels = sorted({(r["variant"], r["kernel"], r["unit"] or "-") for r in res["records"] if r["S"] >= 64})
    lines += ["Kernels (queries >= 64): " + "; ".join(f"{v}: `{k}` (peak: {u})" for v, k, u in kernels), ""]
    lines += [
        "`calls`: per guided UNet evaluation. `UNet`: the sum of every shape's FLOPs times its calls over the sum of "
        "its times times its calls. `% peak`: of the peak of the unit the kernel computes on (bf16: the tile unit's "
        "where the kernel is `cpu_attention_amx`, else `vdpbf16ps`; f32: the FMA peak); the UNet row's share where "
        "all its shapes of 64 queries or more use one unit.",
    ]
    return "\n".join(lines) + "\n"


KEY_FLAGS = {"avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    res = measure(a)
    for u in res["unet"]:
        pct = f" ({u['pct_peak']:.1f}% of the {u['unit']} peak)" if "pct_peak" in u else ""
        print(f"UNet {u['size']}x{u['size']} {u['variant']}: {u['ms']:.2f} ms, {u['gflops']:.0f} GFLOP/s{pct}")
    if a.json:
        atomic_write_json(a.json, res)
    if a.md:
        atomic_write_text(a.md, render(res))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
