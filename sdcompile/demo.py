"""The main job on the built-in example (`scripts/demo.sh`): Stable Diffusion end to end, through the real CLI.

Writes the built-in tiny SD 1.x checkpoint (random weights, LDM names, safetensors), inspects it, compiles it for
the CPU (f32 and q8_0), for Vulkan (when an adapter exists) and for CUDA (compile only, when nvcc exists), runs
txt2img with each runnable artifact for a fixed prompt and seed, writing PNGs, and prints the agreement with
diffusers' StableDiffusionPipeline on the same weights and the same initial noise, with the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from sdcompile.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 64)
WHY_SIZE = (
    "64x64 images: the tiny model's UNet takes the 8x8 latents down to 1x1 in three steps, as SD 1.5's takes "
    "64x64 latents (512x512 images) to 8x8; its random weights draw nothing at any size, and 64x64 keeps every "
    "compile and run to seconds on two cores"
)
PROMPT, NEGATIVE = "a lighthouse at dusk, oil painting", "blurry"
SEED, CFG = 42, 7.0
# Euler is deterministic after the initial noise, so diffusers' EulerDiscreteScheduler can take the very same noise
# and every difference left is the compiler's.
METHOD, REFERENCE_SCHEDULER = "euler", "EulerDiscreteScheduler"


def _sh(*argv: str, capture: bool = False) -> str:
    """Run one `sdcompile` command in this process, echoed as a shell line; with ``capture``, return its stdout
    instead of printing it."""
    print(f"\n$ sdcompile {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf) if capture else contextlib.nullcontext():
        rc = cli(list(argv))
    if rc != 0:
        raise SystemExit(f"demo: `sdcompile {argv[0]}` failed with exit code {rc}")
    return buf.getvalue()


def _vulkan_adapter() -> object | None:
    try:
        from runtime.executors.vulkan import find_adapter

        return find_adapter()
    except Exception:
        return None


def _cuda_device() -> bool:
    try:
        from runtime.device import probe_cuda

        return bool(probe_cuda())
    except Exception:
        return False


def _reference(state: dict[str, np.ndarray], noise: np.ndarray, steps: int, folder: Path):
    """diffusers' final latents and 8-bit image for `state` (LDM names) from `noise`; None where diffusers (or the
    repository's test helpers that build its pipeline) are not installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import warnings

    try:
        import torch
        import transformers

        transformers.logging.set_verbosity_error()  # its notes about optional image processors are not ours
        from tests.e2e.sd_helpers import diffusers_pipeline
    except ImportError as e:
        print(f"(agreement with diffusers skipped: {e})")
        return None
    pipe = diffusers_pipeline(state, REFERENCE_SCHEDULER, folder)
    kw = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        guidance_scale=CFG,
        width=SIZE[0],
        height=SIZE[1],
        latents=torch.from_numpy(noise),
    )
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    with torch.no_grad():
        lat = pipe(**kw, output_type="latent").images.numpy()
        img = pipe(**kw, output_type="np").images[0]
    return lat, (img * 255).round().astype(np.int16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sdcompile.demo", description=__doc__)
    ap.add_argument("--workdir", type=Path, default=Path("examples/cache"), help="weights and artifacts")
    ap.add_argument("--out", type=Path, default=Path("out/demo"), help="where the PNGs go")
    ap.add_argument("--steps", type=int, default=8, help="sampling steps (default 8)")
    args = ap.parse_args(argv)
    work, out_dir = args.workdir, args.out
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_demo = time.perf_counter()
    progress = [] if sys.stderr.isatty() else ["--no-progress"]
    W, H = SIZE
    size = f"{W}x{H}"

    weights = work / "sd_tiny.safetensors"
    _sh("example", "--model", "sd-tiny", "--format", "safetensors", "-o", str(weights))
    _sh("inspect", str(weights))
    print(f"\n{WHY_SIZE}.")

    from runtime.pipelines.samplers import make_rng, standard_normal

    noise = standard_normal(make_rng(SEED), (1, 4, H // 8, W // 8))  # what txt2img draws first for this seed
    noise_file = work / "sd_noise.npy"
    np.save(noise_file, noise)

    builds = [("cpu", "f32"), ("cpu", "q8_0")]
    adapter = _vulkan_adapter()
    if adapter:
        builds.append(("vulkan", "f32"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        builds.append(("cuda", "f32"))
    rows = []
    for target, qtype in builds:
        art = work / f"sd_tiny_{target}_{qtype}"
        t0 = time.perf_counter()
        _sh("compile", str(weights), "--target", target, "--type", qtype, "--size", size, "-o", str(art), *progress)
        compile_s = time.perf_counter() - t0
        if target == "cuda" and not _cuda_device():
            print(f"(CUDA artifact built in {compile_s:.1f} s without a GPU; it runs where an NVIDIA GPU is present)")
            continue
        png = out_dir / f"txt2img_{target}_{qtype}.png"
        lat_file = work / f"sd_latents_{target}_{qtype}.npy"
        # --json: the demo reads the timings back; the full record is what `--json` prints
        res = json.loads(
            _sh(
                "txt2img",
                str(art),
                "-p",
                PROMPT,
                "-n",
                NEGATIVE,
                "--steps",
                str(args.steps),
                "--cfg-scale",
                str(CFG),
                "--sampling-method",
                METHOD,
                "--seed",
                str(SEED),
                "-W",
                str(W),
                "-H",
                str(H),
                "--init-noise",
                str(noise_file),
                "--save-latents",
                str(lat_file),
                "-o",
                str(png),
                "--json",
                *progress,
                capture=True,
            )
        )
        t = res["timings"]
        print(
            f"wrote {png} and {lat_file}: {t['steps']} steps at {t['step_s']:.3f} s/step, "
            f"{t['total_s']:.2f} s in all (+ {t['load_s']:.2f} s to load); seed {res['seed']} on {res['device']}"
        )
        rows.append((target, qtype, art, png, lat_file, compile_s, t))
    if not adapter:
        print("\nvulkan: no Vulkan adapter found (install mesa-vulkan-drivers for lavapipe); skipped")
    if not nvcc:
        print("\ncuda: nvcc not found (the CUDA toolkit builds CUDA artifacts); skipped")

    from runtime.pipelines.image import read_png
    from sdcompile import examples_sd as E

    state = E.sd_state(E.TINY_SD, 0)
    ref = _reference(state, noise, args.steps, work / "clip_tokenizer")
    print(
        f"\nagreement with diffusers StableDiffusionPipeline ({REFERENCE_SCHEDULER}) on the same weights and initial "
        f"noise:\n{PROMPT!r}, negative {NEGATIVE!r}, {args.steps} steps, cfg {CFG:g}, {size}; max |diff| of the "
        "final latents and of the 8-bit pixels,\nagainst the original f32 weights and against the artifact's own "
        "weights decoded to f32 (the compiler's own error)"
        + (f"; diffusers' latents reach {np.abs(ref[0]).max():.2f}:" if ref is not None else ":")
    )
    print(
        f"{'target':<8}{'type':<6}{'latents':>10}{'pixels':>8}{'latents':>10}{'pixels':>8}"
        f"{'compile s':>11}{'s/step':>8}{'txt2img s':>11}"
    )
    print(f"{'':<14}{'vs f32 weights':>18}{'vs decoded':>18}")
    for target, qtype, art, png, lat_file, compile_s, t in rows:
        cols = ["n/a"] * 4
        if ref is not None:
            lat, img = np.load(lat_file), read_png(png).astype(np.int16)
            own = ref
            if qtype != "f32":
                from tests.e2e.sd_helpers import decoded_state

                own = _reference(decoded_state(art, state), noise, args.steps, work / "clip_tokenizer")
            cols = [
                f"{np.abs(lat - ref[0]).max():.1e}",
                f"{np.abs(img - ref[1]).max()}",
                f"{np.abs(lat - own[0]).max():.1e}",
                f"{np.abs(img - own[1]).max()}",
            ]
        print(
            f"{target:<8}{qtype:<6}{cols[0]:>10}{cols[1]:>8}{cols[2]:>10}{cols[3]:>8}"
            f"{compile_s:>11.1f}{t['step_s']:>8.3f}{t['total_s']:>11.2f}"
        )
    if any(q != "f32" for _, q, *_ in rows):
        print(
            "q8_0 'vs f32 weights' is the quantization --type q8_0 asked for, grown over the steps (random weights "
            "quantize worse than trained ones); 'vs decoded' is what the compiled kernels add to it (on a CPU with "
            "AMX, q8_0 linears also round their activations to 16 bits per block; SDCOMPILE_NO_AMX=1 leaves that out)"
        )
    print(f"\nimages in {out_dir}/; demo took {time.perf_counter() - t_demo:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
