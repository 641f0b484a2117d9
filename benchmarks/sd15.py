"""SD1.5 side by side: sdcompile against stable-diffusion.cpp, diffusers on PyTorch and ONNX Runtime, on the CPU,
beside the machine's measured FMA peak.

One full-size SD1.5 architecture with random weights (the f16, LDM-named single-file checkpoint that
`benchmarks/sd15_check.py` writes, about 2 GB) serves every implementation in the run. Works, all with the same
thread count (default 2):

- ``unet``: one UNet evaluation with classifier-free guidance (batch 2: the latents twice, two text contexts) at
  256² and 512²;
- ``vae_decode``: the VAE decoder, one image, at 512²;
- ``text_encoder``: the CLIP text encoder on two prompts (token ids [2, 77]);
- ``txt2img``: a whole 20-step euler txt2img at 512², cfg 7 (text encoder, 20 guided UNet steps, VAE decode).

Implementations (``--impls``; a family name selects its default variants, or name one, e.g. ``sdcompile-q8_0``,
``sdcompile-f16-actbf16``, ``sdcompile-f16-bf16mm``, ``sdcpp-q8_0-fa``):

- ``sdcompile-<type>[-act<type>][-bf16mm]``: ``runtime.load(artifact, num_threads=T)`` then ``model.call``; the artifact is
  compiled per (variant, components, size) in a child and kept for the next run with ``--keep-artifacts``;
- ``pytorch-f32`` / ``pytorch-bf16``: diffusers' UNet2DConditionModel / AutoencoderKL and transformers'
  CLIPTextModel holding the checkpoint's weights, ``torch.set_num_threads(T)``, inference mode;
- ``onnxruntime-f32``: the same modules exported to ONNX once (TorchScript exporter, static shapes, cached under the
  work folder), ``intra_op_num_threads=T``, all graph optimizations;
- ``sdcpp-<type>[-fa]``: stable-diffusion.cpp through ``stable-diffusion-cpp-python``, ``n_threads=T``, with and
  without flash attention. Its binding has no single-UNet call: a guided step's time comes from its progress
  callback (one UNet evaluation with guidance = one sampling step, two batch-1 calls), the text encoder and VAE
  times from its own log lines of a txt2img at that size.

Every measurement runs in its own child process (peak RSS = that child's VmHWM), is retried when other work stole
CPU time from it (as ``benchmarks/gemv.py`` does) and reports seconds (median, min), attained GFLOP/s from FLOP
counts recounted here with PyTorch's ``FlopCounterMode`` on diffusers' modules, and its share of the f32 FMA peak
measured in the same run. See benchmarks/README.md.

    .venv/bin/python benchmarks/sd15.py --quick --impls sdcompile-f16,pytorch,sdcpp-f16 --works unet
    .venv/bin/python benchmarks/sd15.py                       # everything: hours on 2 cores
    .venv/bin/python benchmarks/sd15.py --from-json benchmarks/results/sd15.json --md benchmarks/results/sd15.md
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # `python -m benchmarks.sd15` from the repository root
    from benchmarks.common import (
        StallMeter,
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        contention,
        fmt,
        load_average,
        machine_info,
        markdown_table,
        pressure,
        time_fn,
        utc_now,
        wait_quiet,
    )
    from benchmarks.sd15_check import CFG, NEGATIVE, PROMPT, TXT2IMG_SEED, error_text, git_state, make_inputs
except ImportError:  # `python benchmarks/sd15.py`: the script's own directory is on sys.path
    from common import (  # type: ignore[no-redef]
        StallMeter,
        atomic_path,
        atomic_write_json,
        atomic_write_text,
        contention,
        fmt,
        load_average,
        machine_info,
        markdown_table,
        pressure,
        time_fn,
        utc_now,
        wait_quiet,
    )
    from sd15_check import (  # type: ignore[no-redef]
        CFG,
        NEGATIVE,
        PROMPT,
        TXT2IMG_SEED,
        error_text,
        git_state,
        make_inputs,
    )

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "sd15"
CKPT_NAME = "sd15_seed0_f16.safetensors"  # written by sd15_check.py (f16, LDM names, seed 0)
QUIET_STALL_PCT = 5.0  # a measurement during which some task waited for a CPU this share of the time is retried
WORKS = ("unet", "vae_decode", "text_encoder", "txt2img")
SIZES = {"unet": (256, 512), "vae_decode": (512,), "text_encoder": (None,), "txt2img": (512,)}
BATCH = {"unet": 2, "vae_decode": 1, "text_encoder": 2, "txt2img": 1}
# (warmup, repeat) per work unless --warmup/--repeat say otherwise; txt2img: one timed generation after loading
TIMING = {"unet": (1, 5), "vae_decode": (1, 3), "text_encoder": (2, 10), "txt2img": (0, 1)}
LDM_PREFIX = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model."}
# SD1.5's published scheduler config (diffusers' EulerDiscreteScheduler for the PyTorch and ORT txt2img loops)
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
SCALING = 0.18215
MiB = 2**20

EXIT_OK, EXIT_PEER_FAILED, EXIT_SDCOMPILE_FAILED = 0, 1, 3


def log(msg: str) -> None:
    print(f"[sd15 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Variant:
    name: str  # as --impls names it and the tables show it
    impl: str  # sdcompile, pytorch, onnxruntime, sd.cpp
    wtype: str  # weight storage (pytorch/onnxruntime: also the compute type)
    act_type: str | None = None  # sdcompile --act-type
    flash_attn: bool | None = None  # sd.cpp
    compute: str | None = None  # sdcompile --compute (products in bf16 on the AMX tile unit)


DEFAULT_VARIANTS = (
    "sdcompile-f32",
    "sdcompile-f16",
    "sdcompile-q8_0",
    "sdcompile-q4_0",
    "sdcompile-q4_k",
    "sdcompile-f16-actf16",
    "sdcompile-f16-actbf16",
    "sdcompile-f16-bf16mm",
    "sdcompile-f16-actbf16-bf16mm",
    "pytorch-f32",
    "pytorch-bf16",
    "onnxruntime-f32",
    "sdcpp-f16",
    "sdcpp-f16-fa",
)
FAMILIES = {"sdcompile": "sdcompile", "pytorch": "pytorch", "onnxruntime": "onnxruntime", "sdcpp": "sd.cpp"}


def parse_variant(name: str) -> Variant:
    """`sdcompile-q8_0-actbf16`, `pytorch-bf16`, `onnxruntime-f32`, `sdcpp-f16-fa` -> a Variant (ValueError if not)."""
    m = re.fullmatch(r"sdcompile-([a-z0-9_]+?)(?:-act(f32|f16|bf16))?(-bf16mm)?", name)
    if m:
        return Variant(name, "sdcompile", m.group(1), m.group(2) or "f32", compute="bf16" if m.group(3) else "f32")
    m = re.fullmatch(r"pytorch-(f32|bf16)", name)
    if m:
        return Variant(name, "pytorch", m.group(1))
    if name == "onnxruntime-f32":
        return Variant(name, "onnxruntime", "f32")
    m = re.fullmatch(r"sdcpp-([a-z0-9_]+?)(-fa)?", name)
    if m:
        return Variant(name, "sd.cpp", m.group(1), flash_attn=bool(m.group(2)))
    raise ValueError(name)


def select_variants(text: str) -> list[Variant]:
    """Family names select their default variants; globs match the defaults; anything else must parse."""
    out: list[str] = []
    for tok in filter(None, (t.strip() for t in text.split(","))):
        if tok in FAMILIES:
            hits = [v for v in DEFAULT_VARIANTS if v.startswith(tok + "-")]
        elif any(c in tok for c in "*?["):
            hits = fnmatch.filter(DEFAULT_VARIANTS, tok)
        else:
            parse_variant(tok)  # raises for an unknown name
            hits = [tok]
        if not hits:
            raise ValueError(tok)
        out += [h for h in hits if h not in out]
    return [parse_variant(n) for n in out]


def plan_works(works: list[str], quick: bool) -> list[tuple[str, int | None]]:
    """(work, size) pairs: the issue's sizes, or 256² for everything with --quick."""
    out = []
    for w in works:
        for s in (256,) if quick and w != "text_encoder" else SIZES[w]:
            out.append((w, s))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sd15.py",
        description="SD1.5 (random weights) on the CPU: sdcompile vs stable-diffusion.cpp, PyTorch and ONNX "
        "Runtime; seconds, peak RSS, attained GFLOP/s and the machine's FMA peak, each measurement in its own process.",
        epilog=f"exit status: {EXIT_OK} when every measurement ran, {EXIT_PEER_FAILED} when a peer failed, "
        f"{EXIT_SDCOMPILE_FAILED} when only sdcompile did, 2 for bad arguments.",
    )
    p.add_argument(
        "--impls",
        default="sdcompile,pytorch,onnxruntime,sdcpp",
        help="comma-separated families (sdcompile, pytorch, onnxruntime, sdcpp: their default variants), globs over "
        f"the defaults, or variant names (sdcompile-<type>[-act<f16|bf16>][-bf16mm], pytorch-f32|bf16, onnxruntime-f32, "
        f"sdcpp-<type>[-fa]). Defaults: {', '.join(DEFAULT_VARIANTS)}",
    )
    p.add_argument("--works", default=",".join(WORKS), help=f"comma-separated subset of {', '.join(WORKS)}")
    p.add_argument("--quick", action="store_true", help="256x256 only (every work, the VAE decode and txt2img too)")
    p.add_argument("--threads", type=int, default=2, help="threads for every implementation (default: 2)")
    p.add_argument("--steps", type=int, default=20, help="txt2img steps (default: 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default: per work)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per measurement (default: per work)")
    p.add_argument(
        "--sdcpp-steps",
        type=int,
        default=3,
        help="sampling steps of each stable-diffusion.cpp generation that times its UNet, text encoder and VAE "
        "(default: 3; it runs 1 + --repeat generations' worth of samples, the first step is warm-up)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run a measurement again, up to this many times, when some task waited for a CPU during 5%% or more of "
        "its timed part (Linux PSI); the attempt with the lowest median is kept (default: 2)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every variant this many times, round by round (variants in turn, the order reversed every other "
        "round), and keep each measurement's round with the lowest median: a phase of a slower machine then falls on "
        "every variant alike instead of on the one measured during it (default: 1)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for a quiet machine (default: 0)",
    )
    p.add_argument("--checkpoint", type=Path, default=HERE / ".work" / "sd15" / CKPT_NAME, help="the f16 LDM file")
    p.add_argument("--workdir", type=Path, default=HERE / ".work" / "sd15_bench", help="cache folder (git-ignored)")
    p.add_argument("--keep-artifacts", action="store_true", help="keep sdcompile artifacts for the next run (disk)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child process (default: 3600)")
    p.add_argument("--json", type=Path, default=HERE / "results" / "sd15.json", help="results file")
    p.add_argument("--md", type=Path, default=HERE / "results" / "sd15.md", help="markdown tables")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG (needs matplotlib; default: beside --md, so a run written elsewhere leaves the results' plot alone)",
    )
    p.add_argument("--merge", action="store_true", help="keep the other measurements of an existing --json file")
    p.add_argument("--from-json", type=Path, help="measure nothing; write --md and --plot from this result file")
    p.add_argument("--note", action="append", default=[], help="a note for the results (repeatable)")
    p.add_argument(
        "--no-amx",
        action="store_true",
        help="measure every implementation without the AMX tile unit, as on a CPU with AVX-512 (VNNI, BF16) but no "
        "AMX such as AMD Zen 4: sdcompile compiles with SDCOMPILE_NO_AMX=1, oneDNN (PyTorch) runs with "
        f"ONEDNN_MAX_CPU_ISA={NO_AMX_ENV['ONEDNN_MAX_CPU_ISA']}; write to their own --json/--md",
    )
    p.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.plot is None:
        a.plot = a.md.with_suffix(".png")
    if a.child or a.from_json:
        return a
    try:
        a.variants = select_variants(a.impls)
    except ValueError as e:
        p.error(f"--impls: unknown implementation or variant {e}")
    try:
        from sdcompile.quant.types import QUANT_TYPES
    except ImportError:  # a broken compiler shows in its rows, not as a usage error
        QUANT_TYPES = None
    if QUANT_TYPES is not None:
        known = {t.lower() for t in QUANT_TYPES} | {"f32", "f16", "bf16"}
        bad = [v.name for v in a.variants if v.impl == "sdcompile" and v.wtype not in known]
        if bad:
            p.error(f"--impls {bad}: sdcompile has no weight type by that name; it has {', '.join(sorted(known))}")
    a.works = [w.strip() for w in a.works.split(",") if w.strip()]
    bad = [w for w in a.works if w not in WORKS]
    if bad:
        p.error(f"unknown --works {bad}; choose from {', '.join(WORKS)}")
    if a.threads < 1 or a.steps < 1 or a.sdcpp_steps < 2 or a.retries < 0:
        p.error("--threads and --steps must be at least 1, --sdcpp-steps at least 2, --retries 0 or more")
    if (a.warmup is not None and a.warmup < 0) or (a.repeat is not None and a.repeat < 1):
        p.error("--warmup must be 0 or more and --repeat at least 1")
    return a


# ------------------------------------------------------------------------------------------------- child helpers


def vm_hwm() -> int:
    """This process's peak RSS (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


_hwm_before_reset: int | None = None  # the loading's peak, which child_main still reports as the process's


def reset_hwm() -> int | None:
    """Start VmHWM again from the current RSS (Linux: `5` to clear_refs), so that a later VmHWM is the run's peak
    without the loading's; the peak before the reset (None where the reset is not possible)."""
    global _hwm_before_reset
    before = vm_hwm()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    _hwm_before_reset = before
    return before


def timing_fields(t, stall_pct: float | None) -> dict[str, Any]:
    runs = [r / 1e3 for r in t.runs_ms]
    return {
        "median_s": t.median_ms / 1e3,
        "min_s": t.min_ms / 1e3,
        "runs_s": [round(r, 4) for r in runs],
        "cpu_stall_pct": stall_pct,
    }


def timed(fn, warmup: int, repeat: int) -> dict[str, Any]:
    with StallMeter() as m:
        t = time_fn(fn, warmup=warmup, repeat=repeat)
    return timing_fields(t, m.pct)


def samples_fields(samples: list[float], stall_pct: float | None) -> dict[str, Any]:
    a = np.asarray(samples, float)
    return {
        "median_s": float(np.median(a)),
        "min_s": float(a.min()),
        "runs_s": [round(float(x), 4) for x in a],
        "cpu_stall_pct": stall_pct,
    }


def _sys_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def fn_name(work: str, size: int | None) -> str:
    return {"unet": "denoise", "vae_decode": "decode_latents"}[work] + f"_{size}x{size}"


def text_ids() -> np.ndarray:
    return make_inputs(256, 256)["ids"]


# ----------------------------------------------------------------------------------------------- children: peaks

PEAK_C = r"""
/* FMA peak: independent multiply-add chains held in registers, no memory traffic, one chain set per thread. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

typedef struct { int mode; double seconds; float a, b; double flops; float sink; } job_t;
#define CHUNK 4096

#if defined(__AVX512F__)
#define NACC 16
static double run_f32(job_t *j, double t_end) {
    __m512 a = _mm512_set1_ps(j->a), b = _mm512_set1_ps(j->b), acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm512_set1_ps((float)i);
    long n = 0;
    do {
        for (int it = 0; it < CHUNK; it++) {
#pragma GCC unroll 16
            for (int i = 0; i < NACC; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
        }
        n += CHUNK;
    } while (now() < t_end);
    __m512 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm512_add_ps(s, acc[i]);
    j->sink = _mm512_reduce_add_ps(s);
    return (double)n * NACC * 16 * 2;
}
#elif defined(__AVX2__) && defined(__FMA__)
#define NACC 12
static double run_f32(job_t *j, double t_end) {
    __m256 a = _mm256_set1_ps(j->a), b = _mm256_set1_ps(j->b), acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm256_set1_ps((float)i);
    long n = 0;
    do {
        for (int it = 0; it < CHUNK; it++) {
#pragma GCC unroll 16
            for (int i = 0; i < NACC; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
        }
        n += CHUNK;
    } while (now() < t_end);
    float out[8];
    __m256 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm256_add_ps(s, acc[i]);
    _mm256_storeu_ps(out, s);
    j->sink = out[0];
    return (double)n * NACC * 8 * 2;
}
#else
static double run_f32(job_t *j, double t_end) { (void)j; (void)t_end; return -1; }
#endif

#if defined(__AVX512BF16__)
/* vdpbf16ps: 32 bf16 pairs multiplied and added pairwise into 16 f32 lanes = 64 FLOP per instruction */
static double run_bf16(job_t *j, double t_end) {
    __m512bh a = (__m512bh)_mm512_cvtne2ps_pbh(_mm512_set1_ps(j->a), _mm512_set1_ps(j->a));
    __m512bh b = (__m512bh)_mm512_cvtne2ps_pbh(_mm512_set1_ps(j->b), _mm512_set1_ps(j->b));
    __m512 acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm512_set1_ps((float)i);
    long n = 0;
    do {
        for (int it = 0; it < CHUNK; it++) {
#pragma GCC unroll 16
            for (int i = 0; i < NACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        }
        n += CHUNK;
    } while (now() < t_end);
    __m512 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm512_add_ps(s, acc[i]);
    j->sink = _mm512_reduce_add_ps(s);
    return (double)n * NACC * 64;
}
#else
static double run_bf16(job_t *j, double t_end) { (void)j; (void)t_end; return -1; }
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
/* tdpbf16ps: 16x16 f32 accumulator += A (16x32 bf16) . B (16x(16x2) bf16) = 16*16*32*2 = 16384 FLOP */
typedef struct __attribute__((packed)) {
    unsigned char palette, start_row, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
} tilecfg_t;
static double run_amx(job_t *j, double t_end) {
    static __thread unsigned short buf[16 * 32] __attribute__((aligned(64)));
    float out[16 * 16] __attribute__((aligned(64)));
    tilecfg_t cfg;
    unsigned int u;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    _tile_loadconfig(&cfg);
    memcpy(&u, &j->a, 4);
    for (int i = 0; i < 16 * 32; i++) buf[i] = (unsigned short)(u >> 16);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
    long n = 0;
    do {
        for (int it = 0; it < CHUNK; it++) {
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
        n += CHUNK;
    } while (now() < t_end);
    _tile_stored(0, out, 64);
    j->sink = out[0];
    _tile_release();
    return (double)n * 4 * 16384;
}
#else
static double run_amx(job_t *j, double t_end) { (void)j; (void)t_end; return -1; }
#endif

static double t_start;
static pthread_barrier_t barrier;

static void *worker(void *p) {
    job_t *j = p;
    pthread_barrier_wait(&barrier);
    double t_end = t_start + j->seconds;
    j->flops = j->mode == 0 ? run_f32(j, t_end) : j->mode == 1 ? run_bf16(j, t_end) : run_amx(j, t_end);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: peak f32|bf16|amx THREADS SECONDS\n"); return 2; }
    int mode = !strcmp(argv[1], "f32") ? 0 : !strcmp(argv[1], "bf16") ? 1 : !strcmp(argv[1], "amx") ? 2 : -1;
    int threads = atoi(argv[2]);
    double seconds = atof(argv[3]);
    if (mode < 0 || threads < 1 || threads > 256 || seconds <= 0) { fprintf(stderr, "bad arguments\n"); return 2; }
#if defined(__AMX_TILE__)
    /* Linux gives a process AMX tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) */
    if (mode == 2 && syscall(SYS_arch_prctl, 0x1023, 18)) { printf("unsupported\n"); return 0; }
#endif
    static job_t jobs[256];
    static pthread_t tid[256];
    pthread_barrier_init(&barrier, NULL, threads + 1);
    /* a and b come from the command line so the compiler cannot fold the chains */
    for (int i = 0; i < threads; i++) {
        jobs[i] = (job_t){mode, seconds, argc > 4 ? (float)atof(argv[4]) : 0.999999f, 1e-7f, 0, 0};
        pthread_create(&tid[i], NULL, worker, &jobs[i]);
    }
    t_start = now();
    pthread_barrier_wait(&barrier);
    double total = 0;
    float sink = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        if (jobs[i].flops < 0) { printf("unsupported\n"); return 0; }
        total += jobs[i].flops;
        sink += jobs[i].sink;
    }
    printf("%.6e %.6f %g\n", total, now() - t_start, (double)sink);
    return 0;
}
"""

PEAK_METHODS = {
    "f32": "C, gcc -O2 -march=native: 16 independent vfmadd231ps zmm chains per thread (AVX2: 12 ymm), no memory "
    "operands; 2 FLOP per lane",
    "bf16": "C, gcc -O2 -march=native: 16 independent vdpbf16ps zmm chains per thread (AVX512_BF16); 64 FLOP per "
    "instruction",
    "bf16-amx": "C, gcc -O2 -march=native: AMX tdpbf16ps on 4 accumulator tiles per thread, tiles loaded once; "
    "16384 FLOP per instruction",
}


def c_peaks(workdir: Path, threads: int, flags: set[str], repeat: int) -> list[dict[str, Any]]:
    """The FMA peaks of a C program compiled here and now (cached under ``workdir``): f32 FMAs, and bf16 dot
    products on the vector unit and the tile unit where the CPU has them; the best of ``repeat`` runs each."""
    records: list[dict[str, Any]] = []
    src = PEAK_C.encode()
    exe = Path(workdir) / "peak" / f"peak-{hashlib.sha256(src).hexdigest()[:12]}"
    if not exe.is_file():
        exe.parent.mkdir(parents=True, exist_ok=True)
        c = exe.with_suffix(".c")
        c.write_bytes(src)
        with atomic_path(exe, suffix=".bin") as tmp:
            subprocess.run(["gcc", "-O2", "-march=native", "-pthread", "-o", str(tmp), str(c)], check=True)
        exe.chmod(0o755)
    modes = [("f32", "f32")]
    if "avx512_bf16" in flags:
        modes.append(("bf16", "bf16"))
    if "amx_bf16" in flags:
        modes.append(("amx", "bf16-amx"))
    for mode, wtype in modes:
        attempts: list[dict[str, Any]] = []
        for _ in range(repeat):
            with StallMeter() as m:
                out = subprocess.run([str(exe), mode, str(threads), "1.0"], capture_output=True, text=True, check=True)
            if out.stdout.strip() == "unsupported":
                attempts = []
                break
            flops, secs, _ = out.stdout.split()
            attempts.append({"gflops": float(flops) / float(secs) / 1e9, "cpu_stall_pct": m.pct})
        if attempts:
            best = max(attempts, key=lambda a: a["gflops"])
            records.append({"work": "fma", "wtype": wtype, **best, "method": PEAK_METHODS[wtype], "runs": attempts})
    return records


BF16_UNITS = {"avx512_bf16", "amx_bf16"}  # cpuinfo flags of units that multiply bf16 (vdpbf16ps, TDPBF16PS)


def child_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """The FMA peaks (``c_peaks``) and a 4096³ torch.matmul in f32 and bf16 (oneDNN; AMX tiles where the CPU has
    them) for what a library attains."""
    threads = spec["threads"]
    records = c_peaks(Path(spec["workdir"]), threads, set(spec["flags"]), spec["repeat"])
    import torch

    torch.set_num_threads(threads)
    for dt in ("f32", "bf16"):
        # bf16 without a bf16 unit is emulated (AMD Zen 3: 0.9 GFLOP/s): 1024^3 there, done in seconds
        n = 4096 if dt == "f32" or BF16_UNITS & set(spec["flags"]) else 1024
        a = torch.randn(n, n).to(getattr(torch, {"f32": "float32", "bf16": "bfloat16"}[dt]))
        b = torch.randn(n, n).to(a.dtype)
        r = timed(lambda a=a, b=b: torch.mm(a, b), 1, spec["repeat"])
        records.append(
            {
                "work": "matmul",
                "wtype": dt,
                "gflops": 2 * n**3 / r["min_s"] / 1e9,
                "method": f"torch.mm {n}x{n}x{n} {dt} (torch {torch.__version__}, oneDNN/MKL; best of "
                f"{spec['repeat']})",
                **r,
            }
        )
    return {"records": records, "torch_config": torch.__config__.show()[-600:]}


def child_flops(spec: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per image for each work, counted by FlopCounterMode on diffusers' modules built on the meta device.

    On meta tensors scaled_dot_product_attention decomposes into the matmuls it does, so the attention's QK^T and
    AV products are counted; on real CPU tensors PyTorch takes `_scaled_dot_product_flash_attention_for_cpu`, which
    FlopCounterMode has no formula for, and they are silently left out. Both totals are kept."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from sdcompile import examples_sd as E
    from tests import sd_reference as R

    shape = E.SHAPES[MODEL]
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in E.text_config(shape).items() if k not in ("architectures", "transformers_version")}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**R.diffusers_unet_config(shape)).eval()
        vae = AutoencoderKL(**R.diffusers_vae_config(shape)).eval()
        te = CLIPTextModel(CLIPTextConfig(**cfg)).eval()
    sdpa = F.scaled_dot_product_attention

    def no_attention(q, k, v, *a, **kw):  # same output shape, no FLOPs counted
        return torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)

    def count(f) -> tuple[float, float]:
        out = []
        for attn in (sdpa, no_attention):
            F.scaled_dot_product_attention = attn
            try:
                with FlopCounterMode(display=False) as fc, torch.no_grad():
                    f()
            finally:
                F.scaled_dot_product_attention = sdpa
            out.append(float(fc.get_total_flops()))
        return out[0], out[1]

    res: dict[str, Any] = {}
    ctx = torch.empty(2, 77, shape.unet.context_dim, device="meta")
    for s in spec["sizes"]:
        x = torch.empty(2, 4, s // 8, s // 8, device="meta")
        t = torch.empty(2, device="meta")
        total, no_attn = count(lambda x=x, t=t: unet(x, t, encoder_hidden_states=ctx))
        res[f"unet_{s}"] = {"flops": total / 2, "flops_without_attention": no_attn / 2, "per": "image (batch 1)"}
        z = torch.empty(1, 4, s // 8, s // 8, device="meta")
        total, no_attn = count(lambda z=z: vae.decode(z))
        res[f"vae_decode_{s}"] = {"flops": total, "flops_without_attention": no_attn, "per": "image"}
    ids = torch.zeros(2, 77, dtype=torch.long, device="meta")
    total, no_attn = count(lambda: te(input_ids=ids))
    res["text_encoder"] = {"flops": total / 2, "flops_without_attention": no_attn / 2, "per": "prompt (batch 1)"}
    return {"flops": res}


# ------------------------------------------------------------------------------------------- children: sdcompile


def child_compile(spec: dict[str, Any]) -> dict[str, Any]:
    from sdcompile.compiler import compile_model
    from sdcompile.errors import SdcompileError
    from sdcompile.passes.context import CompileOptions

    out = Path(spec["artifact"])
    shutil.rmtree(out, ignore_errors=True)
    size = spec["size"] or 512
    opts = CompileOptions(
        target="cpu",
        type=spec["wtype"],
        act_type=spec["act_type"],
        compute=spec.get("compute") or "f32",
        sizes=[(size, size)],
        components=tuple(spec["components"]),
    )
    t0 = time.perf_counter()
    try:
        m = compile_model(Path(spec["checkpoint"]), out, opts)
    except SdcompileError as e:
        return {"error": f"compile refused: {error_text(e)}"}
    return {
        "compile_s": round(time.perf_counter() - t0, 1),
        "kernels": len(((m.get("kernels") or {}).get("kernels")) or {}),
        "weights_bytes": (m.get("memory") or {}).get("weights_bytes"),
        "planned_peak_bytes": (m.get("memory") or {}).get("peak_bytes"),
    }


def child_sdcompile(spec: dict[str, Any]) -> dict[str, Any]:
    import runtime

    work, size, threads = spec["work"], spec["size"], spec["threads"]
    t0 = time.perf_counter()
    model = runtime.load(spec["artifact"], num_threads=threads)
    load_s = time.perf_counter() - t0
    reset = reset_hwm() is not None
    if work == "txt2img":
        from runtime.pipelines.sd import StableDiffusion

        pipe = StableDiffusion(model)
        steps: list[float] = []

        def gen() -> None:
            steps.clear()
            pipe.generate(
                PROMPT,
                NEGATIVE,
                steps=spec["steps"],
                cfg_scale=CFG,
                method="euler",
                seed=TXT2IMG_SEED,
                width=size,
                height=size,
                progress=lambda i, n, dt: steps.append(dt),
            )

        r = timed(gen, spec["warmup"], spec["repeat"])
        r["step_s_median"] = float(np.median(steps)) if steps else None
    else:
        x = make_inputs(size or 256, size or 256)
        if work == "unet":
            fn, inputs = fn_name(work, size), {"x": x["x"], "t": x["t"], "context": x["context"]}
        elif work == "vae_decode":
            fn, inputs = fn_name(work, size), {"latents": x["latents"]}
        else:
            fn, inputs = "encode_text", {"input_ids": x["ids"]}
        r = timed(lambda: model.call(fn, inputs), spec["warmup"], spec["repeat"])
    return {"records": [{**r, "load_s": load_s, "peak_rss_run_bytes": vm_hwm() if reset else None}]}


# ------------------------------------------------------------------------------- children: PyTorch / ONNX Runtime


def torch_module(ckpt: str, component: str, dtype: str):
    """diffusers' UNet / AutoencoderKL or transformers' CLIPTextModel holding the checkpoint's weights in `dtype`,
    built on the meta device and given the converted tensors (no second copy of the weights)."""
    import torch
    from safetensors import safe_open

    from sdcompile import examples_sd as E
    from tests import sd_reference as R

    shape = E.SHAPES[MODEL]
    tdt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    prefix = LDM_PREFIX[component]
    state = {}
    with safe_open(ckpt, "pt") as f:
        for k in f.keys():
            if k.startswith(prefix):
                state[k] = f.get_tensor(k).to(tdt)
    if component == "text_encoder":  # small: the reference's own builder (it knows transformers' naming changes)
        m = R.text_model({k: v.float().numpy() for k, v in state.items()}, shape)
        return m.to(tdt).eval()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    if component == "unet":
        cfg = R.diffusers_unet_config(shape)
        converted, cls = convert_ldm_unet_checkpoint(state, cfg), UNet2DConditionModel
    else:
        cfg = R.diffusers_vae_config(shape)
        converted, cls = convert_ldm_vae_checkpoint(state, cfg), AutoencoderKL
    del state
    with torch.device("meta"):
        m = cls(**cfg)
    missing, unexpected = m.load_state_dict(converted, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{component}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    left = [n for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{component}: tensors left on the meta device: {left[:5]}")
    return m.to(tdt).eval()


def _torch_wrappers():
    import torch

    class UnetEps(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, x, t, context):
            return self.m(x, t, encoder_hidden_states=context).sample

    class VaeDecode(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, latents):
            return self.m.decode(latents).sample

    class TextHidden(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids).last_hidden_state

    return UnetEps, VaeDecode, TextHidden


def guided_euler(encode, unet, decode, steps: int, size: int, to_t, to_np) -> None:
    """A 20-step txt2img as diffusers' StableDiffusionPipeline runs it (token ids given: tokenizing is not timed):
    text encoder on both prompts, `steps` guided euler steps (batch 2), VAE decode. `to_t`/`to_np` convert between
    the implementation's arrays and torch tensors for diffusers' scheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(**SCHEDULER)
    sched.set_timesteps(steps)
    ctx = encode(text_ids().astype(np.int64))
    g = torch.Generator().manual_seed(TXT2IMG_SEED)
    lat = torch.randn((1, 4, size // 8, size // 8), generator=g) * sched.init_noise_sigma
    for t in sched.timesteps:
        xin = sched.scale_model_input(torch.cat([lat, lat]), t)
        eps = to_t(unet(to_np(xin), np.full((2,), float(t), np.float32), ctx))
        uncond, cond = eps.chunk(2)
        lat = sched.step(uncond + CFG * (cond - uncond), t, lat).prev_sample
    decode(to_np(lat / SCALING))


def child_pytorch(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    work, size, dtype = spec["work"], spec["size"], spec["wtype"]
    tdt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    t0 = time.perf_counter()
    comps = {"unet": ["unet"], "vae_decode": ["vae"], "text_encoder": ["text_encoder"]}.get(
        work, ["text_encoder", "unet", "vae"]
    )
    mods = {c: torch_module(spec["checkpoint"], c, dtype) for c in comps}
    load_s = time.perf_counter() - t0
    reset = reset_hwm() is not None
    x = make_inputs(size or 256, size or 256)

    def arr(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(tdt if a.dtype.kind == "f" else torch.long)

    te = lambda ids: mods["text_encoder"](input_ids=arr(ids)).last_hidden_state  # noqa: E731
    un = lambda xx, tt, cc: mods["unet"](arr(xx), arr(tt), encoder_hidden_states=cc).sample  # noqa: E731
    de = lambda z: mods["vae"].decode(arr(z)).sample  # noqa: E731
    with torch.inference_mode():
        if work == "unet":
            xx, tt, cc = arr(x["x"]), arr(x["t"]), arr(x["context"])
            f = lambda: mods["unet"](xx, tt, encoder_hidden_states=cc).sample  # noqa: E731
        elif work == "vae_decode":
            z = arr(x["latents"] / SCALING)
            f = lambda: mods["vae"].decode(z).sample  # noqa: E731
        elif work == "text_encoder":
            ids = arr(x["ids"].astype(np.int64))
            f = lambda: mods["text_encoder"](input_ids=ids).last_hidden_state  # noqa: E731
        else:
            f = lambda: guided_euler(  # noqa: E731
                te, un, de, spec["steps"], size, lambda y: y.float(), lambda y: y.numpy()
            )
        r = timed(f, spec["warmup"], spec["repeat"])
    return {"records": [{**r, "load_s": load_s, "peak_rss_run_bytes": vm_hwm() if reset else None}]}


def onnx_path(workdir: Path, what: str, size: int | None, ckpt: Path) -> Path:
    import torch

    tag = f"{ckpt.stem}-{ckpt.stat().st_size}-torch{torch.__version__.split('+')[0]}"
    name = what if size is None else f"{what}_{size}"
    return workdir / "onnx" / f"{name}-{tag}" / "model.onnx"


def child_export(spec: dict[str, Any]) -> dict[str, Any]:
    """Export one module to ONNX (TorchScript exporter, static shapes, opset 17; weights over 2 GB go to external
    data files beside model.onnx), into a temporary folder renamed into place when complete."""
    import warnings

    import torch

    UnetEps, VaeDecode, TextHidden = _torch_wrappers()
    what, size, path = spec["what"], spec["size"], Path(spec["path"])
    x = make_inputs(size or 256, size or 256)
    t0 = time.perf_counter()
    if what == "unet":
        mod = UnetEps(torch_module(spec["checkpoint"], "unet", "f32"))
        args = tuple(torch.from_numpy(x[k]) for k in ("x", "t", "context"))
        names, out = ["x", "t", "context"], ["eps"]
    elif what == "vae_decoder":
        mod = VaeDecode(torch_module(spec["checkpoint"], "vae", "f32"))
        args, names, out = (torch.from_numpy(x["latents"]),), ["latents"], ["image"]
    else:
        mod = TextHidden(torch_module(spec["checkpoint"], "text_encoder", "f32"))
        args, names, out = (torch.from_numpy(x["ids"].astype(np.int64)),), ["input_ids"], ["last_hidden_state"]
    tmp = path.parent.with_name(path.parent.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: expected
            torch.onnx.export(
                mod.eval(),
                args,
                str(tmp / path.name),
                input_names=names,
                output_names=out,
                opset_version=17,
                dynamo=False,
                do_constant_folding=True,
            )
        shutil.rmtree(path.parent, ignore_errors=True)
        tmp.rename(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"export_s": round(time.perf_counter() - t0, 1)}


def child_onnxruntime(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    work, size = spec["work"], spec["size"]

    def session(path: str):
        so = ort.SessionOptions()
        so.intra_op_num_threads = spec["threads"]
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])

    t0 = time.perf_counter()
    sess = {k: session(p) for k, p in spec["onnx"].items()}
    load_s = time.perf_counter() - t0
    reset = reset_hwm() is not None
    x = make_inputs(size or 256, size or 256)
    te = lambda ids: sess["text_encoder"].run(None, {"input_ids": ids})[0]  # noqa: E731
    un = lambda xx, tt, cc: sess["unet"].run(None, {"x": xx, "t": tt, "context": cc})[0]  # noqa: E731
    de = lambda z: sess["vae_decoder"].run(None, {"latents": z})[0]  # noqa: E731
    if work == "unet":
        f = lambda: un(x["x"], x["t"], x["context"])  # noqa: E731
    elif work == "vae_decode":
        z = (x["latents"] / SCALING).astype(np.float32)
        f = lambda: de(z)  # noqa: E731
    elif work == "text_encoder":
        ids = x["ids"].astype(np.int64)
        f = lambda: te(ids)  # noqa: E731
    else:
        import torch

        f = lambda: guided_euler(  # noqa: E731
            te,
            un,
            de,
            spec["steps"],
            size,
            torch.from_numpy,
            lambda y: y.numpy().astype(np.float32),
        )
    r = timed(f, spec["warmup"], spec["repeat"])
    return {"records": [{**r, "load_s": load_s, "peak_rss_run_bytes": vm_hwm() if reset else None}]}


# ------------------------------------------------------------------------------------- children: stable-diffusion.cpp

_SDCPP_TIMES = re.compile(r"(get_learned_condition|sampling|decode_first_stage) completed, taking ([0-9.]+)\s*s")


def child_sdcpp(spec: dict[str, Any]) -> dict[str, Any]:
    """stable-diffusion.cpp through its Python binding. Works at one size share one process: `gens` txt2img
    generations of `steps` steps each; a guided UNet evaluation is the wall time between two progress callbacks
    (the first step of the first generation is warm-up), the text encoder (both prompts) and the VAE decode come
    from the library's own "... completed, taking X s" log lines. `txt2img` times whole generate_image calls."""
    import ctypes

    try:
        import stable_diffusion_cpp as sdc
        from stable_diffusion_cpp import StableDiffusion
    except ImportError as e:
        raise RuntimeError(
            f"stable-diffusion-cpp-python is not installed ({e}): pip install -e '.[peers]' (compiles ~8 minutes)"
        ) from None

    lines: list[str] = []

    @sdc.sd_log_callback
    def on_log(level, text, data):  # replaces the binding's printer: kept for parsing (and the child's log file)
        lines.append(text.decode("utf-8", errors="replace"))

    sdc.sd_set_log_callback(on_log, ctypes.c_void_p(0))
    work, size, threads = spec["work"], spec["size"], spec["threads"]
    t0 = time.perf_counter()
    sd = StableDiffusion(
        model_path=spec["checkpoint"],
        n_threads=threads,
        wtype=spec["wtype"],
        flash_attn=spec["flash_attn"],
        vae_decode_only=True,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    info = sdc.sd_get_system_info().decode("utf-8", errors="replace").strip()
    reset = reset_hwm() is not None
    marks: list[tuple[float, int]] = []

    def generate(steps: int) -> None:
        sd.generate_image(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            width=size,
            height=size,
            cfg_scale=CFG,
            sample_method="euler",
            sample_steps=steps,
            seed=TXT2IMG_SEED,
            progress_callback=lambda step, n, _t: marks.append((time.perf_counter(), step)),
        )

    common = {"load_s": load_s, "system_info": info}
    if work == "txt2img":
        r = timed(lambda: generate(spec["steps"]), spec["warmup"], spec["repeat"])
        rec = {**r, **common, "work": "txt2img"}
        log_times = [(m.group(1), float(m.group(2))) for m in map(_SDCPP_TIMES.search, lines) if m]
        rec["log_s"] = log_times[-3:]
        rec["peak_rss_run_bytes"] = vm_hwm() if reset else None
        return {"records": [rec], "log_tail": lines[-5:]}
    step_s: list[float] = []
    with StallMeter() as meter:
        for g in range(spec["gens"]):
            marks.clear()
            generate(spec["sdcpp_steps"])
            ts = [t for t, step in marks if step >= 0]
            step_s += [b - a for a, b in zip(ts, ts[1:])][1 if g == 0 else 0 :]
    found: dict[str, list[float]] = {}
    for m in filter(None, map(_SDCPP_TIMES.search, lines)):
        found.setdefault(m.group(1), []).append(float(m.group(2)))
    run_hwm = vm_hwm() if reset else None
    records = []
    how = {
        "unet": "wall time between stable-diffusion.cpp's progress callbacks: one euler step with guidance (two "
        "batch-1 UNet calls)",
        "text_encoder": "stable-diffusion.cpp's log: get_learned_condition (prompt and negative prompt)",
        "vae_decode": "stable-diffusion.cpp's log: decode_first_stage",
    }
    samples = {
        "unet": step_s,
        "text_encoder": found.get("get_learned_condition", []),
        "vae_decode": found.get("decode_first_stage", []),
    }
    for w in spec["works"]:
        if not samples[w]:
            records.append({"work": w, "error": f"no {w} time in stable-diffusion.cpp's progress or log", **common})
            continue
        records.append(
            {
                "work": w,
                **samples_fields(samples[w], meter.pct),
                **common,
                "timed_as": how[w],
                "peak_rss_run_bytes": run_hwm,
            }
        )
    return {"records": records, "sampling_log_s": found.get("sampling", []), "log_tail": lines[-5:]}


CHILDREN = {
    "peak": child_peak,
    "flops": child_flops,
    "compile": child_compile,
    "export": child_export,
    "sdcompile": child_sdcompile,
    "pytorch": child_pytorch,
    "onnxruntime": child_onnxruntime,
    "sd.cpp": child_sdcpp,
}


def child_main(spec_file: str) -> int:
    _sys_path()
    spec = json.loads(Path(spec_file).read_text())
    try:
        res = CHILDREN[spec["kind"]](spec)
    except BaseException as e:  # noqa: BLE001 - whatever happened goes back to the parent as the result
        res = {"error": error_text(e), "traceback": traceback.format_exc()[-3000:]}
    res["peak_rss_bytes"] = max(vm_hwm(), _hwm_before_reset or 0)  # the whole process's peak, loading included
    Path(spec["result"]).write_text(json.dumps(res, default=float))
    return 0


# ------------------------------------------------------------------------------------------------------- parent


# --no-amx: the children's environment (the same instruction sets as a Zen 4, on a CPU that also has AMX; its port
# layout stays this CPU's, so this is the code path, not Zen 4's speed)
NO_AMX_ENV = {"SDCOMPILE_NO_AMX": "1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
CHILD_ENV: dict[str, str] = {}


def spawn(spec: dict[str, Any], workdir: Path, timeout: float, threads: int) -> dict[str, Any]:
    """Run one child; its result (with `wall_s`), or one with `error` if it died or ran past `timeout`."""
    kind = spec["kind"].replace(".", "")
    spec_file, result_file = workdir / f".{kind}.spec.json", workdir / f".{kind}.result.json"
    result_file.unlink(missing_ok=True)
    spec_file.write_text(json.dumps({**spec, "result": str(result_file)}))
    n = str(threads)
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "TVM_NUM_THREADS": n,
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "PYTHONWARNINGS": "ignore",
        **CHILD_ENV,
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_file)], env=env)
    try:
        rc = proc.wait(timeout=timeout)
        stopped = None
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        stopped = f"no result after {timeout:.0f} s; stopped (--timeout)"
    res = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if stopped:
        res["error"] = stopped
    elif not result_file.is_file():
        sig = f" (signal {-rc}{', likely the OOM killer' if rc == -9 else ''})" if rc < 0 else ""
        res["error"] = f"child exited with status {rc}{sig} before it finished"
    if res.get("error"):  # results name files relative to the repository, never by this machine's paths
        res["error"] = res["error"].replace(str(ROOT) + os.sep, "")
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    for f in (spec_file, result_file):
        f.unlink(missing_ok=True)
    return res


def new_record(v: Variant, work: str, size: int | None, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "impl": v.impl,
        "variant": v.name,
        "work": work,
        "size": size,
        "batch": BATCH[work],
        "wtype": v.wtype,
        "act_type": v.act_type,
        "compute": v.compute,
        "flash_attn": v.flash_attn,
        "threads": args.threads,
        "steps": args.steps if work == "txt2img" else None,
        "median_s": None,
        "min_s": None,
        "runs_s": None,
        "peak_rss_mb": None,
        "peak_rss_run_mb": None,
        "gflop": None,
        "gflops": None,
        "cpu_stall_pct": None,
        "error": None,
        "created": utc_now(),
    }


def work_gflop(flops: dict[str, Any], work: str, size: int | None, steps: int) -> float | None:
    """FLOPs (in GFLOP) of one measurement: batch 2 for the UNet and the text encoder, the whole txt2img."""
    try:
        if work == "unet":
            return 2 * flops[f"unet_{size}"]["flops"] / 1e9
        if work == "vae_decode":
            return flops[f"vae_decode_{size}"]["flops"] / 1e9
        if work == "text_encoder":
            return 2 * flops["text_encoder"]["flops"] / 1e9
        return (
            2 * flops["text_encoder"]["flops"]
            + steps * 2 * flops[f"unet_{size}"]["flops"]
            + flops[f"vae_decode_{size}"]["flops"]
        ) / 1e9
    except KeyError:
        return None


def finish(rec: dict[str, Any], res: dict[str, Any], child: dict[str, Any], gflop: float | None) -> None:
    for k in ("median_s", "min_s", "runs_s", "cpu_stall_pct", "load_s", "timed_as", "step_s_median", "log_s"):
        if k in res:
            rec[k] = res[k]
    if res.get("error"):
        rec["error"] = res["error"]
    if child.get("peak_rss_bytes"):
        rec["peak_rss_mb"] = round(child["peak_rss_bytes"] / MiB, 1)
    if res.get("peak_rss_run_bytes"):
        rec["peak_rss_run_mb"] = round(res["peak_rss_run_bytes"] / MiB, 1)
    rec["gflop"] = gflop
    if gflop and rec.get("median_s"):
        rec["gflops"] = gflop / rec["median_s"]


def measure(
    args: argparse.Namespace, spec: dict[str, Any], key_work: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a measuring child, again (up to --retries) while other work stole CPU time from its timed part or the
    child died from a signal; keep the attempt with the lowest median of `key_work` (other work only ever slows a
    run down). Every attempt, crashes included, is listed."""
    attempts: list[dict[str, Any]] = []
    best = None
    while True:
        quiet = wait_quiet(args.wait_quiet, log=log) if args.wait_quiet > 0 else None
        res = spawn(spec, args.workdir, args.timeout, args.threads)
        recs = res.get("records") or []
        key = next((r for r in recs if r.get("work", key_work) == key_work), recs[0] if recs else {})
        stall, med = key.get("cpu_stall_pct"), key.get("median_s")
        attempts.append(
            {"cpu_stall_pct": stall, "median_s": med, "wall_s": res.get("wall_s"), "wait_quiet": quiet}
            | ({"error": res["error"]} if res.get("error") else {})
        )
        more = len(attempts) <= args.retries
        if res.get("error") or med is None:
            best = best or res
            if more and "signal" in (res.get("error") or ""):
                log(f"  {res['error']}: measuring again")
                continue
            return best, attempts
        if best is None or best.get("error") or med < _key_median(best, key_work):
            best = res
        if stall is None or stall < QUIET_STALL_PCT or not more:
            return best, attempts
        log(f"  CPU stall {stall}% during the timed part: measuring again")


def _key_median(res: dict[str, Any], key_work: str) -> float:
    recs = res.get("records") or []
    key = next((r for r in recs if r.get("work", key_work) == key_work), recs[0] if recs else {})
    return key.get("median_s") or float("inf")


def warmup_repeat(args: argparse.Namespace, work: str) -> tuple[int, int]:
    w, r = TIMING[work]
    if args.quick and work != "txt2img":
        r = min(r, 3)
    return (args.warmup if args.warmup is not None else w), (args.repeat if args.repeat is not None else r)


def artifact_for(
    args: argparse.Namespace, v: Variant, work: str, size: int | None, log_prefix: str
) -> tuple[Path | None, dict[str, Any]]:
    """The cached artifact for (variant, components, size), compiled in a child when missing or built from other
    compiler code (the code key covers uncommitted changes under sdcompile/, runtime/, schedules/)."""
    comps = {
        "unet": ["unet"],
        "vae_decode": ["vae_decoder"],
        "text_encoder": ["text_encoder"],
        "txt2img": ["text_encoder", "unet", "vae_decoder"],
    }[work]
    tag = f"{v.name}-{'+'.join(comps)}" + (f"-{size}" if size else "") + ("-noamx" if CHILD_ENV else "")
    art = args.workdir / "artifacts" / tag
    record = art.parent / f"{tag}.compile.json"
    if record.is_file() and (art / "manifest.json").is_file():
        info = json.loads(record.read_text())
        if args.code_key and info.get("code_key") == args.code_key:
            return art, {**info, "reused": True}
    log(f"{log_prefix}: compiling {'+'.join(comps)}" + (f" {size}x{size}" if size else ""))
    spec = {
        "kind": "compile",
        "checkpoint": str(args.checkpoint),
        "artifact": str(art),
        "wtype": v.wtype,
        "act_type": v.act_type,
        "compute": v.compute,
        "size": size,
        "components": comps,
        "threads": args.threads,
    }
    art.parent.mkdir(parents=True, exist_ok=True)
    info = spawn(spec, args.workdir, args.timeout, args.threads)
    info.pop("traceback", None)
    if info.get("error"):
        return None, info
    info["compile_peak_rss_mb"] = round(info.pop("peak_rss_bytes", 0) / MiB, 1)
    info["code_key"] = args.code_key
    atomic_write_json(record, info)
    return art, info


def onnx_for(args: argparse.Namespace, work: str, size: int | None) -> tuple[dict[str, str] | None, dict[str, Any]]:
    whats = {
        "unet": [("unet", size)],
        "vae_decode": [("vae_decoder", size)],
        "text_encoder": [("text_encoder", None)],
        "txt2img": [("text_encoder", None), ("unet", size), ("vae_decoder", size)],
    }[work]
    paths, info = {}, {"export_s": {}}
    for what, s in whats:
        path = onnx_path(args.workdir, what, s, args.checkpoint)
        if not path.is_file():
            log(f"onnxruntime: exporting {what}" + (f" {s}x{s}" if s else "") + " to ONNX (once; cached)")
            r = spawn(
                {"kind": "export", "what": what, "size": s, "path": str(path), "checkpoint": str(args.checkpoint)},
                args.workdir,
                args.timeout,
                args.threads,
            )
            if r.get("error"):
                return None, {"error": f"export {what}: {r['error']}"}
            info["export_s"][what] = r.get("export_s")
            info.setdefault("export_peak_rss_mb", {})[what] = round(r.get("peak_rss_bytes", 0) / MiB, 1)
        paths[what] = str(path)
    return paths, info


def run_variant(args: argparse.Namespace, v: Variant, plan: list[tuple[str, int | None]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = {"checkpoint": str(args.checkpoint), "threads": args.threads, "steps": args.steps}
    if v.impl == "sd.cpp":
        return run_sdcpp(args, v, plan, base)
    for work, size in plan:
        rec = new_record(v, work, size, args)
        label = f"{v.name} {work}" + (f" {size}x{size}" if size else "")
        warmup, repeat = warmup_repeat(args, work)
        spec = {**base, "kind": v.impl, "work": work, "size": size, "wtype": v.wtype}
        spec |= {"warmup": warmup, "repeat": repeat}
        art = None
        if v.impl == "sdcompile":
            art, info = artifact_for(args, v, work, size, v.name)
            rec["compile"] = {k: info.get(k) for k in ("compile_s", "kernels", "weights_bytes", "reused", "error")}
            rec["compile"]["peak_rss_mb"] = info.get("compile_peak_rss_mb")
            if art is None:
                rec["error"] = info.get("error")
                log(f"{label}: {rec['error']}")
                out.append(rec)
                continue
            spec["artifact"] = str(art)
        elif v.impl == "onnxruntime":
            paths, info = onnx_for(args, work, size)
            rec["onnx"] = info
            if paths is None:
                rec["error"] = info["error"]
                log(f"{label}: {rec['error']}")
                out.append(rec)
                continue
            spec["onnx"] = paths
        log(f"{label}: measuring ({warmup} warm-up, {repeat} timed)")
        res, attempts = measure(args, spec, work)
        r = (res.get("records") or [{}])[0]
        finish(
            rec, {**r, "error": res.get("error") or r.get("error")}, res, work_gflop(args.flops, work, size, args.steps)
        )
        rec["attempts"] = attempts
        log_record(label, rec)
        out.append(rec)
        if art is not None and not args.keep_artifacts:
            shutil.rmtree(art, ignore_errors=True)
            (art.parent / f"{art.name}.compile.json").unlink(missing_ok=True)
    return out


def run_sdcpp(args, v: Variant, plan, base) -> list[dict[str, Any]]:
    """One child per size for the UNet, the text encoder and the VAE decode (the binding runs them together), one
    per txt2img."""
    out: list[dict[str, Any]] = []
    by_size: dict[int, list[str]] = {}
    for work, size in plan:
        if work != "txt2img":
            by_size.setdefault(size or 0, []).append(work)
    if 0 in by_size:  # the text encoder rides along with the smallest size that runs anyway
        te = by_size.pop(0)
        sizes = sorted(by_size) or [256]
        by_size.setdefault(sizes[0], []).extend(te)
    common = {**base, "kind": "sd.cpp", "wtype": v.wtype, "flash_attn": bool(v.flash_attn)}
    for size, works in sorted(by_size.items()):
        # enough generations for --repeat samples of each work: every step after the very first times the UNet,
        # every generation times the text encoder and the VAE once
        gens = 1
        if "unet" in works:
            gens = max(gens, -(-(warmup_repeat(args, "unet")[1] + 1) // args.sdcpp_steps))
        if {"vae_decode", "text_encoder"} & set(works):
            gens = max(gens, warmup_repeat(args, "vae_decode")[1])
        spec = {**common, "work": "parts", "works": works, "size": size}
        spec |= {"gens": gens, "sdcpp_steps": args.sdcpp_steps}
        label = f"{v.name} {'+'.join(works)} {size}x{size}"
        log(f"{label}: {gens} generation(s) of {args.sdcpp_steps} steps")
        res, attempts = measure(args, spec, "unet" if "unet" in works else works[0])
        recs = {r.get("work"): r for r in res.get("records") or []}
        for w in works:
            s = None if w == "text_encoder" else size
            rec = new_record(v, w, s, args)
            r = recs.get(w, {})
            finish(rec, {**r, "error": res.get("error") or r.get("error")}, res, work_gflop(args.flops, w, s, 0))
            rec["attempts"] = attempts
            rec["system_info"] = r.get("system_info")
            if w == "unet":
                rec["timed_as"] = r.get("timed_as")
                rec["sdcpp_sampling_log_s"] = res.get("sampling_log_s")
            rec["shares_process_with"] = [x for x in works if x != w]
            log_record(f"{v.name} {w}" + (f" {s}x{s}" if s else ""), rec)
            out.append(rec)
    for work, size in plan:
        if work != "txt2img":
            continue
        warmup, repeat = warmup_repeat(args, work)
        rec = new_record(v, work, size, args)
        spec = {**common, "work": "txt2img", "size": size, "warmup": warmup, "repeat": repeat}
        log(f"{v.name} txt2img {size}x{size}: {args.steps} steps")
        res, attempts = measure(args, spec, "txt2img")
        r = (res.get("records") or [{}])[0]
        finish(
            rec, {**r, "error": res.get("error") or r.get("error")}, res, work_gflop(args.flops, work, size, args.steps)
        )
        rec["attempts"] = attempts
        log_record(f"{v.name} txt2img {size}x{size}", rec)
        out.append(rec)
    return out


def log_record(label: str, rec: dict[str, Any]) -> None:
    if rec.get("error"):
        log(f"{label}: FAILED: {rec['error']}")
        return
    log(
        f"{label}: median {rec['median_s']:.3f} s, min {rec['min_s']:.3f} s, "
        f"{fmt(rec.get('gflops'), 1)} GFLOP/s, peak RSS {fmt(rec.get('peak_rss_mb'), 0)} MB "
        f"(run {fmt(rec.get('peak_rss_run_mb'), 0)}), CPU stall {fmt(rec.get('cpu_stall_pct'), 1)}%"
    )


def measure_peaks(args: argparse.Namespace, phase: str, flags: list[str]) -> list[dict[str, Any]]:
    """The peak child, again (up to --retries) while other work disturbed it; the best figure of each kind."""
    log(f"FMA peak ({phase})")
    spec = {"kind": "peak", "threads": args.threads, "flags": flags, "repeat": 3, "workdir": str(args.workdir)}
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for attempt in range(1 + args.retries):
        res = spawn(spec, args.workdir, args.timeout, args.threads)
        if res.get("error"):
            log(f"peak measurement failed: {res['error']}")
            if not best:
                return [{"impl": "peak", "work": "fma", "wtype": "f32", "phase": phase, "error": res["error"]}]
            break
        for r in res["records"]:
            k = (r["work"], r["wtype"])
            if k not in best or r["gflops"] > best[k]["gflops"]:
                best[k] = {**r, "attempt": attempt + 1}
        stalls = [r.get("cpu_stall_pct") for r in best.values()]
        if all(x is not None and x < QUIET_STALL_PCT for x in stalls) or attempt == args.retries:
            break
        log("  other work competed for the CPUs: measuring the peaks again")
    out = []
    for r in best.values():
        out.append({"impl": "peak", "threads": args.threads, "phase": phase, "created": utc_now(), "error": None, **r})
        log(f"  {r['work']} {r['wtype']}: {r['gflops']:.1f} GFLOP/s (CPU stall {fmt(r.get('cpu_stall_pct'), 1)}%)")
    return out


def flop_counts(args: argparse.Namespace) -> dict[str, Any]:
    """FLOPs per work, counted once per torch/diffusers/transformers version and cached in the work folder."""
    from importlib.metadata import version

    key = "-".join(version(p) for p in ("torch", "diffusers", "transformers"))
    cache = args.workdir / "flops.json"
    sizes = [256, 512]
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("key") == key:
            return old["flops"]
    log("counting FLOPs (FlopCounterMode on diffusers' modules, meta tensors)")
    res = spawn({"kind": "flops", "sizes": sizes}, args.workdir, args.timeout, args.threads)
    if res.get("error"):
        log(f"FLOP count failed: {res['error']}; GFLOP/s will be missing")
        return {}
    atomic_write_json(cache, {"key": key, "flops": res["flops"]})
    return res["flops"]


def ensure_checkpoint(args: argparse.Namespace) -> None:
    if args.checkpoint.is_file():
        return
    try:
        from benchmarks import sd15_check
    except ImportError:
        import sd15_check  # type: ignore[no-redef]
    log(f"writing the SD1.5 checkpoint (random weights, f16) -> {args.checkpoint.name}")
    ns = argparse.Namespace(workdir=args.checkpoint.parent, model=MODEL, timeout=args.timeout)
    path, _ = sd15_check.ensure_checkpoint(ns)
    if path != args.checkpoint:
        raise SystemExit(f"--checkpoint must be named {CKPT_NAME} to be written here")


# ------------------------------------------------------------------------------------------------------- report

NOTES = [
    "stable-diffusion.cpp keeps convolution weights in f16 whatever its weight type says and never quantizes the "
    "VAE; its guidance runs two batch-1 UNet calls per step. Its binding has no single-UNet call: its `unet` time is "
    "the wall time between two progress callbacks of a txt2img (one euler step with guidance), its `text_encoder` "
    "and `vae_decode` times are the library's own log lines (get_learned_condition, decode_first_stage) from the "
    "same process, so those records share one peak RSS (the whole pipeline's).",
    "GFLOP/s = the work's FLOPs / median seconds. FLOPs are counted by PyTorch's FlopCounterMode on diffusers' "
    "modules on the meta device, so attention's QK^T and AV products count; on real CPU tensors FlopCounterMode "
    "misses them (no formula for `_scaled_dot_product_flash_attention_for_cpu`), which gives the smaller figures "
    "(677 / 172 / 2,480 GFLOP) quoted before.",
    "Peak RSS: `child` is the measuring process's VmHWM (loading included: PyTorch converts the f16 file to its "
    "dtype, stable-diffusion.cpp copies the weights into its buffers, sdcompile maps its artifact); `run` restarts "
    "the count after loading (Linux clear_refs), so it is the weights that stay resident plus the work's own memory.",
    "`% f32 peak` divides by the f32 FMA peak for every row: rows computing in bf16 (PyTorch bf16, on AMX tiles "
    "where the CPU has them) can pass 100%; their own ceiling is the bf16 peaks above.",
    "sdcompile `q4_0`/`q4_k`: `--type` applies to every quantizable weight (linears and convolutions); rows that "
    "are not a multiple of the block stay f16. `act…`: --act-type (activation storage; math stays f32). `bf16mm`: "
    "--compute bf16 (products of bf16 operands summed in f32, as PyTorch's bf16, on the AMX tile unit or "
    "vdpbf16ps; where the CPU has neither, int8 products of q8_0/q4_0 weights on VNNI or AVX2, and on AVX2 int16 "
    "products of float weights: the compile report says which).",
    "PyTorch and ONNX Runtime txt2img: the components in diffusers' EulerDiscreteScheduler loop with guidance, as "
    "StableDiffusionPipeline runs them (token ids given); sdcompile: its runtime's pipeline; stable-diffusion.cpp: "
    "generate_image (euler). All: cfg 7, seed 42.",
]

WORK_TITLES = {
    "unet": "UNet evaluation with guidance (batch 2)",
    "vae_decode": "VAE decode (1 image)",
    "text_encoder": "text encoder (2 prompts, 77 tokens)",
    "txt2img": "txt2img",
}


def peak_of(records: list[dict[str, Any]], work: str, wtype: str) -> float | None:
    vals = [r["gflops"] for r in records if r.get("impl") == "peak" and r["work"] == work and r["wtype"] == wtype]
    vals = [x for x in vals if x]
    return max(vals) if vals else None


def _best(rows: list[dict[str, Any]], impl: str) -> dict[str, Any] | None:
    ok = [r for r in rows if r["impl"] == impl and r.get("median_s")]
    return min(ok, key=lambda r: r["median_s"]) if ok else None


def _x(peer: dict[str, Any] | None, r: dict[str, Any]) -> str:
    if not peer or not r.get("median_s"):
        return "—"
    return f"{peer['median_s'] / r['median_s']:.2f}×"


def _run_label(run: str | None) -> str:
    """A merged row's run, short: month-day hour:minute (UTC)."""
    return f"{run[5:10]} {run[11:16]}Z" if run and len(run) >= 16 else (run or "")


def render_markdown(result: dict[str, Any]) -> str:
    m, cfg, recs = result["machine"], result["config"], result["records"]
    cpu = m["cpu"]
    f32 = peak_of(recs, "fma", "f32")
    lines = [
        f"### SD1.5 architecture (random weights), {cfg['threads']} threads{' (--quick)' if cfg.get('quick') else ''}",
        "",
        f"{result['created']}; {cpu['model']}, {cpu['usable_cores']} usable cores, flags {' '.join(cpu['flags'])}; "
        f"AMX {'yes' if 'amx_tile' in cpu['flags'] else 'no'}; load average {m.get('load_average_start')} at the "
        f"start, {m.get('load_average_end')} at the end; sdcompile commit {cfg.get('commit')}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        "",
        *(
            [
                "Runs merged here (`--merge`): "
                + "; ".join(f"{x['run']} (commit {x.get('commit')})" for x in cfg.get("runs") or [])
                + ". Each row's run is in its `run` column (UTC) and in the JSON.",
                "",
            ]
            if len(cfg.get("runs") or []) > 1
            else []
        ),
        "Machine peaks measured (best of 3 at the start and the end of each run; the best over the runs):",
        "",
    ]
    seen = set()
    for r in recs:
        if r.get("impl") != "peak" or (r["work"], r["wtype"]) in seen:
            continue
        seen.add((r["work"], r["wtype"]))
        lines.append(
            f"- {r['work']} {r['wtype']}: {fmt(peak_of(recs, r['work'], r['wtype']), 1)} GFLOP/s — {r.get('method')}"
        )
    fl = result.get("flops") or {}
    if fl:
        lines += [
            "",
            "FLOPs (FlopCounterMode, diffusers' modules; per image, in brackets without attention's products): "
            + "; ".join(
                f"{k} {v['flops'] / 1e9:.1f} ({v['flops_without_attention'] / 1e9:.1f}) GFLOP" for k, v in fl.items()
            ),
        ]
    merged = len(cfg.get("runs") or []) > 1  # each row says which run (and so which code) it comes from
    groups: list[tuple[str, Any]] = []
    for r in recs:
        if r.get("impl") != "peak" and (r["work"], r["size"]) not in groups:
            groups.append((r["work"], r["size"]))
    order = {w: i for i, w in enumerate(WORKS)}
    groups.sort(key=lambda g: (order[g[0]], g[1] or 0))
    for work, size in groups:
        rows = [r for r in recs if r.get("impl") != "peak" and r["work"] == work and r["size"] == size]
        sdcpp, torch_best, ort = _best(rows, "sd.cpp"), _best(rows, "pytorch"), _best(rows, "onnxruntime")
        title = WORK_TITLES[work] + (f" at {size}x{size}" if size else "")
        if work == "txt2img":
            title += f", {rows[0].get('steps')} steps"
        body = []
        for r in rows:
            disturbed = r.get("cpu_stall_pct") is not None and r["cpu_stall_pct"] >= QUIET_STALL_PCT
            body.append(
                [
                    r["variant"] + (" †" if disturbed else ""),
                    fmt(r.get("median_s"), 3),
                    fmt(r.get("min_s"), 3),
                    fmt(r.get("gflops"), 1),
                    fmt(100 * r["gflops"] / f32, 1) if r.get("gflops") and f32 else "—",
                    f"{fmt(r.get('peak_rss_run_mb'), 0)} / {fmt(r.get('peak_rss_mb'), 0)}",
                    _x(sdcpp, r),
                    _x(torch_best, r),
                    _x(ort, r),
                    fmt(r.get("cpu_stall_pct"), 1),
                ]
                + ([_run_label(r.get("run"))] if merged else [])
                + (["failed" if r.get("error") else ""] if any(x.get("error") for x in rows) else [])
            )
        lines += [
            "",
            f"#### {title}",
            "",
            markdown_table(
                [
                    "variant",
                    "median s",
                    "min s",
                    "GFLOP/s",
                    "% f32 peak",
                    "peak RSS MB run / child",
                    "vs sd.cpp",
                    "vs PyTorch",
                    "vs ORT",
                    "CPU stall %",
                ]
                + (["run"] if merged else [])
                + ([""] if any(x.get("error") for x in rows) else []),
                body,
            ),
        ]
    lines += [
        "",
        "`vs X`: X's median / this row's median, against X's fastest variant in the same table (above 1× this row "
        "is faster). `†`: some task waited for a CPU during 5% or more of the timed part even after the retries "
        "(other work on the machine): compare such rows with care.",
    ]
    bad = [r for r in recs if r.get("error")]
    if bad:
        lines += ["", "Failures:", ""] + [
            f"- {r.get('variant', r['impl'])} {r['work']} {r.get('size') or ''}: {r['error']}" for r in bad
        ]
    if result.get("warnings"):
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in result["warnings"]]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in NOTES + result.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in result["records"] if r.get("impl") != "peak" and r.get("gflops")]
    groups = list(dict.fromkeys((r["work"], r["size"]) for r in recs))
    if not groups:
        return
    impls = ["sdcompile", "pytorch", "onnxruntime", "sd.cpp"]
    colors = dict(zip(impls, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9, 0.45 * sum(1 for _ in recs) + 1.6 * len(groups)), squeeze=False
    )
    peaks = []  # (label, GFLOP/s, line style)
    for w, t, style in (("fma", "f32", "-"), ("matmul", "f32", "--"), ("matmul", "bf16", ":")):
        val = peak_of(result["records"], w, t)
        if val:
            peaks.append((f"{w} {t} peak {val:.0f}", val, style))
    for ax, (work, size) in zip(axes[:, 0], groups):
        rows = [r for r in recs if (r["work"], r["size"]) == (work, size)]
        ys = np.arange(len(rows))
        ax.barh(ys, [r["gflops"] for r in rows], color=[colors.get(r["impl"], "gray") for r in rows])
        ax.set_yticks(ys, [r["variant"] for r in rows])
        ax.invert_yaxis()
        for y, r in zip(ys, rows):
            ax.text(r["gflops"], y, f" {r['median_s']:.2f} s", va="center", fontsize=8)
        for label, val, style in peaks:
            ax.axvline(val, color="black", linestyle=style, linewidth=0.8, label=label)
        ax.set_title(WORK_TITLES[work] + (f", {size}x{size}" if size else ""), fontsize=10)
        ax.set_xlabel("attained GFLOP/s")
        ax.grid(axis="x", alpha=0.3)
    if peaks:
        axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"SD1.5, {result['config']['threads']} threads, {result['machine']['cpu']['model']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_outputs(result: dict[str, Any], args: argparse.Namespace) -> None:
    md = render_markdown(result)
    atomic_write_text(args.md, md)
    log(f"wrote {args.md}")
    try:
        plot(result, args.plot)
        log(f"wrote {args.plot}")
    except ImportError as e:
        log(f"no plot: matplotlib is not installed ({e}); pip install matplotlib")
    sys.stdout.write(md)


def collect_warnings(machine: dict[str, Any], recs: list[dict[str, Any]]) -> list[str]:
    out = []
    before = contention(
        machine.get("pressure_start"), machine.get("load_average_start"), machine["cpu"]["usable_cores"]
    )
    if before:
        out.append("before the run: " + "; ".join(before))
    for r in recs:
        if r.get("cpu_stall_pct") is not None and r["cpu_stall_pct"] >= QUIET_STALL_PCT:
            if r["impl"] == "peak":
                out.append(
                    f"peak {r['work']} {r['wtype']} ({r['phase']}): CPU stall {r['cpu_stall_pct']}% of its best run"
                )
                continue
            what = f"{r.get('variant', r['impl'])} {r['work']} {r.get('size') or ''}".strip()
            out.append(
                f"{what}: CPU stall {r['cpu_stall_pct']}% of the timed part after {len(r.get('attempts') or [])} attempt(s)"
            )
    for r in recs:
        died = [a for a in r.get("attempts") or [] if a.get("error")]
        if died and not r.get("error"):
            what = f"{r.get('variant', r['impl'])} {r['work']} {r.get('size') or ''}".strip()
            out.append(f"{what}: {len(died)} of {len(r['attempts'])} attempts failed ({died[0]['error']})")
    by_run: dict[Any, list[float]] = {}
    for r in recs:
        if r.get("impl") == "peak" and r["work"] == "fma" and r["wtype"] == "f32" and r.get("gflops"):
            by_run.setdefault(r.get("run"), []).append(r["gflops"])
    for run, f32 in by_run.items():
        if len(f32) >= 2 and max(f32) > 1.15 * min(f32):
            during = f"during the run {run}" if len(by_run) > 1 else "during the run"
            out.append(f"the f32 FMA peak moved from {f32[0]:.0f} to {f32[-1]:.0f} GFLOP/s {during}")
    if len(by_run) > 1:
        best = {run: max(v) for run, v in by_run.items()}
        if max(best.values()) > 1.15 * min(best.values()):
            out.append(
                "the merged runs ran at different speeds (best f32 FMA peak per run: "
                + ", ".join(f"{run} {v:.0f}" for run, v in best.items())
                + " GFLOP/s): compare rows of the same run"
            )
    return out


def best_of_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """--rounds: per measurement (variant, work, size), the round with the lowest median (a failed one only where
    every round failed), in the first round's order, with every round's median listed (``round_medians_s``)."""
    if len(rounds) == 1:
        return rounds[0]
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    for recs in rounds:
        for r in recs:
            by_key.setdefault((r.get("variant"), r["work"], r.get("size")), []).append(r)
    out = []
    for key in dict.fromkeys((r.get("variant"), r["work"], r.get("size")) for r in rounds[0]):
        recs = by_key[key]
        ok = [r for r in recs if not r.get("error") and r.get("median_s") is not None]
        best = min(ok, key=lambda r: r["median_s"]) if ok else recs[0]
        out.append({**best, "round_medians_s": [r.get("median_s") for r in recs]})
    return out


def merge_records(
    old: dict[str, Any], records: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """--merge: the old file's measurements this run did not repeat, and all of its peaks, each tagged with the run
    that measured it, before this run's records; the old runs; the old notes. Peaks stay with their run, so a row
    kept from a faster or slower phase of the machine is still set beside the peak it ran with (and ``peak_of``
    takes the best over all of them)."""
    old_runs = (old.get("config") or {}).get("runs") or [
        {"run": old.get("created"), "commit": (old.get("config") or {}).get("commit")}
    ]
    done = {(r.get("variant"), r["work"], r.get("size")) for r in records if r.get("impl") != "peak"}
    kept = []
    for r in old.get("records", []):
        if r.get("impl") == "peak" or (r.get("variant"), r["work"], r.get("size")) not in done:
            kept.append({"run": old_runs[-1]["run"], **r})
    return kept + records, old_runs, list(old.get("notes", []))


def main(argv: list[str] | None = None) -> int:
    _sys_path()
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    if args.from_json:  # measure nothing: render a result file again (adding any --note to it)
        result = json.loads(args.from_json.read_text())
        if args.note:
            result["notes"] = [n for n in result.get("notes", []) if n not in args.note] + args.note
            atomic_write_json(args.from_json, result)
        write_outputs(result, args)
        return EXIT_OK
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.checkpoint = args.checkpoint.resolve()
    _sys_path()
    machine = machine_info(
        ("numpy", "torch", "diffusers", "transformers", "onnxruntime", "apache-tvm", "stable-diffusion-cpp-python")
    )
    args.commit, args.code_key = git_state()
    if args.no_amx:
        CHILD_ENV.update(NO_AMX_ENV)
        machine["isa_limit"] = dict(NO_AMX_ENV)
        args.note.append(
            "Without AMX (--no-amx): every implementation ran with the AMX tile unit off (sdcompile "
            "SDCOMPILE_NO_AMX=1; PyTorch/oneDNN "
            f"ONEDNN_MAX_CPU_ISA={NO_AMX_ENV['ONEDNN_MAX_CPU_ISA']}), the instruction sets of an AMD Zen 4, on this "
            "CPU. sdcompile's --compute bf16 there: q8_0/q4_0 weights get int8 products on AVX512_VNNI (vpdpbusd, "
            "activations quantized per 32 values as ggml's q8_0), float weights bf16 products on vdpbf16ps only "
            "where it runs at the f32 FMA rate (AMD); this Intel CPU's runs at half of it, so they stay f32 here; "
            "attention is f32 (flash attention on FMAs). PyTorch's bf16 rows run vdpbf16ps at this CPU's half rate "
            "(Zen 4: at its FMA rate), so they say which code path runs, not Zen 4's speed"
        )
    if not BF16_UNITS & set(machine["cpu"]["flags"]) and "pytorch-bf16" not in args.impls.split(","):
        # without a unit that multiplies bf16 PyTorch emulates it (AMD Zen 3: torch.mm at 0.9 GFLOP/s against 111
        # in f32), so its bf16 rows would take hours and say nothing; named explicitly, it still runs
        left = [v for v in args.variants if v.name == "pytorch-bf16"]
        args.variants = [v for v in args.variants if v.name != "pytorch-bf16"]
        if left:
            args.note.append(
                "pytorch-bf16 left out: this CPU has no bf16 dot products (neither AVX512_BF16 nor AMX-BF16), so "
                "PyTorch emulates bf16 (the peak records' bf16 torch.mm); its fastest dtype here is f32"
            )
    ensure_checkpoint(args)
    plan = plan_works(args.works, args.quick)
    args.flops = flop_counts(args)
    run = utc_now()
    records = measure_peaks(args, "start", machine["cpu"]["flags"])
    rounds: list[list[dict[str, Any]]] = []
    for i in range(max(1, args.rounds)):
        if args.rounds > 1:
            log(f"round {i + 1} of {args.rounds}")
        order = args.variants if i % 2 == 0 else list(reversed(args.variants))
        rounds.append([rec for v in order for rec in run_variant(args, v, plan)])
    records += best_of_rounds(rounds)
    records += measure_peaks(args, "end", machine["cpu"]["flags"])
    for r in records:
        r["run"] = run
    machine["load_average_end"] = load_average()
    machine["pressure_end"] = pressure()
    notes = list(args.note)
    runs = [{"run": run, "commit": args.commit, "variants": [v.name for v in args.variants], "works": args.works}]
    if args.merge and args.json.is_file():
        records, old_runs, old_notes = merge_records(json.loads(args.json.read_text()), records)
        runs = old_runs + runs
        notes = [n for n in old_notes if n not in notes] + notes
    result = {
        "benchmark": "sd15",
        "created": utc_now(),
        "config": {
            "model": "SD1.5 architecture (sdcompile.examples_sd.SHAPES['sd15']), random weights, seed 0",
            "checkpoint": args.checkpoint.name,
            "threads": args.threads,
            "quick": args.quick,
            "works": args.works,
            "plan": [[w, s] for w, s in plan],
            "variants": [v.name for v in args.variants],
            "steps": args.steps,
            "sdcpp_steps": args.sdcpp_steps,
            "retries": args.retries,
            "commit": args.commit,
            "runs": runs,
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "cfg_scale": CFG,
            "seed": TXT2IMG_SEED,
        },
        "machine": machine,
        "flops": args.flops,
        "records": records,
        "notes": notes,
    }
    result["warnings"] = collect_warnings(machine, records)
    atomic_write_json(args.json, result)
    log(f"wrote {args.json}")
    write_outputs(result, args)
    failed = [r for r in records if r.get("error")]
    if any(r["impl"] != "sdcompile" for r in failed):
        return EXIT_PEER_FAILED
    return EXIT_SDCOMPILE_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
