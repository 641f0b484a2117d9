"""The main job on the built-in example (`scripts/demo.sh`): the whole slice, end to end, through the real CLI.

Makes a small random CLIP text encoder (LDM names, safetensors), inspects it, compiles it for CPU (f32 and q8_0),
Vulkan (when an adapter exists) and CUDA (compile-only without a GPU), runs each artifact, and prints the agreement
with transformers' CLIPTextModel holding the same weights, and the timing.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from sdcompile import examples as ex
from sdcompile.cli import main as cli


def _sh(*argv: str) -> None:
    print(f"\n$ sdcompile {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    rc = cli(list(argv))
    if rc != 0:
        raise SystemExit(f"demo: `sdcompile {argv[0]}` failed with exit code {rc}")


def _vulkan_adapter() -> str | None:
    try:
        from runtime.executors.vulkan import find_adapter

        return find_adapter()
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sdcompile.demo", description=__doc__)
    ap.add_argument("--workdir", type=Path, default=Path("examples/cache"))
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    args = ap.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    shape = {"tiny": ex.TINY, "sd15": ex.SD15}[args.size]
    weights = work / f"clip_{args.size}_ldm.safetensors"

    _sh("example", "--size", args.size, "--convention", "ldm", "-o", str(weights))
    _sh("inspect", str(weights))

    ids = ex.example_ids(batch=2, positions=shape.positions, vocab=shape.vocab)
    np.save(work / "input_ids.npy", ids)

    def reference(state: dict) -> np.ndarray:
        return ex.transformers_hidden(ex.transformers_clip(state, shape), ids)

    ref_name = "transformers CLIPTextModel"
    ref = reference(ex.clip_text_state(shape))

    runs = [("cpu", "f32"), ("cpu", "q8_0")]
    adapter = _vulkan_adapter()
    if adapter:
        runs.append(("vulkan", "f32"))
    rows = []
    for target, qtype in runs:
        out = work / f"artifact_{target}_{qtype}"
        _sh("compile", str(weights), "--target", target, "--type", qtype, "-o", str(out), "--no-progress")
        npz = work / f"out_{target}_{qtype}.npz"
        t0 = time.perf_counter()
        _sh("run", str(out), "--input", f"input_ids={work / 'input_ids.npy'}", "--output", str(npz))
        _ = time.perf_counter() - t0
        got = np.load(npz)["last_hidden_state"]
        _sh("bench", str(out), "--repeat", "10")
        from sdcompile.report import bench_artifact

        b = bench_artifact(out, repeat=10, warmup=2)
        # vs the same weights decoded from the artifact's storage types: the compiler's own error, without the
        # quantization error it was asked to make
        ref_deq = reference(ex.artifact_state(out))
        rows.append((target, qtype, float(np.abs(got - ref).max()), float(np.abs(got - ref_deq).max()), b["median_ms"]))

    if shutil.which("nvcc"):
        out = work / "artifact_cuda_f32"
        _sh("compile", str(weights), "--target", "cuda", "--type", "f32", "-o", str(out), "--no-progress")
        print("(CUDA artifact built; it runs where an NVIDIA GPU is present)")

    print(f"\nagreement with {ref_name} ({ids.shape[0]} prompts x {ids.shape[1]} tokens), max |diff| of the hidden")
    print("states against the original f32 weights, and against the artifact's own weights decoded to f32:")
    print(f"{'target':<8}{'type':<7}{'vs f32 weights':>16}{'vs decoded':>12}{'median ms':>11}")
    for target, qtype, diff, diff_deq, ms in rows:
        print(f"{target:<8}{qtype:<7}{diff:>16.2e}{diff_deq:>12.2e}{ms:>11.2f}")
    if not adapter:
        print("vulkan: no Vulkan adapter found (install mesa-vulkan-drivers for lavapipe); skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
