"""The `sdcompile` command: inspect, compile, txt2img, img2img, run, bench, kernels, keygen, example.

The image commands follow stable-diffusion.cpp's command line (-p, -n, --steps, --cfg-scale, --sampling-method,
--scheduler, --seed, -W, -H, -o, -i, --strength), with the compile step split off: `compile` makes an artifact once,
`txt2img`/`img2img` run it.

User errors (SdcompileError, RuntimeFailure, bad arguments) print one line `sdcompile: error: ...` and exit non-zero;
internal bugs keep their tracebacks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sdcompile.errors import OptionError, SdcompileError

if TYPE_CHECKING:
    from sdcompile.passes.context import CompileOptions

SD_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
EXAMPLE_MODELS = ("sd-tiny", "sd15", "sd2-tiny", "sdxl-tiny", "sdxl", "clip-tiny", "clip-sd15")
EXAMPLE_FORMATS = ("safetensors", "ckpt", "gguf", "diffusers", "separate")
# The webui's names for the sampling methods and schedules it also has (what its "parameters" reader restores);
# the others keep stable-diffusion.cpp's name.
WEBUI_SAMPLERS = {"euler": "Euler", "euler_a": "Euler a", "ddim": "DDIM", "dpm++2m": "DPM++ 2M", "lcm": "LCM"}
WEBUI_SCHEDULES = {
    "discrete": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "kl_optimal": "KL Optimal",
}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `sdcompile: error:` line like every other user error (exit code 2)."""

    commands: argparse._SubParsersAction | None = None

    def __init__(self, *args, **kwargs):
        # No prefixes of long flags: `--tensor-type-rule` silently meant `--tensor-type-rules`, and a flag added later
        # could change what an abbreviation in someone's script means.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"sdcompile: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            # argparse hands a sub-command's unknown flags up to the top-level parser, whose usage lists only the
            # commands; the user needs the usage of the command they typed
            cmd = self.commands.choices.get(getattr(ns, "cmd", None)) if self.commands else None
            (cmd or self).unrecognized(extra)
        return ns

    def unrecognized(self, extra: list[str]) -> None:
        import difflib

        flags = [o for a in self._actions for o in a.option_strings]
        hints = [m for x in extra if x.startswith("-") for m in difflib.get_close_matches(x.split("=")[0], flags, n=1)]
        self.print_usage(sys.stderr)
        self.error(
            f"unrecognized arguments: {' '.join(extra)}" + (f"; did you mean {', '.join(hints)}?" if hints else "")
        )


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sdcompile",
        description="Ahead-of-time compiler for diffusion models and GGUF-quantized weights (Apache TVM).",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p.commands = sub

    s = sub.add_parser("inspect", help="show a weight file's format, model, tensors by component and memory")
    s.add_argument(
        "file",
        type=Path,
        help="weight file (.safetensors, .gguf, .ckpt/.pt, .onnx), or a diffusers or transformers model folder",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--tensors",
        action="store_true",
        help="list every tensor with its canonical name, the name --tensor-type-rules match",
    )

    s = sub.add_parser(
        "compile",
        help="compile a model into a deployment artifact",
        description="Compile a model into an artifact directory. MODEL is a single-file checkpoint (.safetensors, "
        ".ckpt, .gguf), a diffusers directory, or a text encoder; SD components may also come as separate files "
        "(--diffusion-model, --vae, --clip-l), as stable-diffusion.cpp takes them.",
    )
    s.add_argument(
        "file",
        type=Path,
        nargs="?",
        metavar="MODEL",
        help="checkpoint file or diffusers directory (optional when --diffusion-model is given)",
    )
    s.add_argument("-o", "--output", type=Path, required=True, help="artifact directory to write")
    s.add_argument("--target", choices=["cpu", "vulkan", "cuda"], default="cpu", help="backend (default cpu)")
    s.add_argument("--type", help="storage type for quantizable weights (f32, f16, q8_0, q4_0, ...)")
    s.add_argument(
        "--compute",
        choices=["f32", "bf16"],
        default="f32",
        help="precision of matrix products: bf16 rounds both operands to bf16 and sums in f32 (as PyTorch's bf16 "
        "autocast; ~2e-3 relative error) for float, q8_0 and q4_0 weights and attention on the CPU's AMX tile unit, "
        "or for float weights, attention and (Winograd) the 3x3 convs of any weight type on AVX512_BF16 "
        "(vdpbf16ps) without it; elsewhere products stay f32 and the report says so (default f32)",
    )
    s.add_argument(
        "--act-type",
        choices=["f32", "f16", "bf16"],
        default="f32",
        help="storage of activations inside each function (math stays f32; inputs and outputs stay f32): "
        "f16 or bf16 halve activation memory and traffic (Vulkan: f32, f16; default f32)",
    )
    s.add_argument(
        "--prediction",
        choices=["eps", "v"],
        default=None,
        help="what the UNet predicts: eps (noise; SD 1.x, SD 2.x 512-base, SDXL) or v (SD 2.x 768-v). Read from "
        "the model's scheduler config or metadata where it says; this flag is for checkpoints that do not (an SD "
        "2.x single file), and overrides what they say",
    )
    s.add_argument(
        "--tensor-type-rules",
        default="",
        metavar="R",
        help="'regex=type,...' on canonical tensor names; first match wins",
    )
    s.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="WxH",
        help="image size to compile the SD functions for; repeat or give a comma list for several "
        "(default: the model's own, 512x512 for SD 1.x and SD 2.x 512-base, 768x768 for SD 2.x 768-v, 1024x1024 "
        "for SDXL; each a multiple of 8)",
    )
    s.add_argument("--diffusion-model", default=None, metavar="FILE", help="the UNet as a separate file")
    s.add_argument("--vae", default=None, metavar="FILE", help="a separate VAE (replaces the checkpoint's)")
    s.add_argument("--clip-l", default=None, metavar="FILE", help="the CLIP-L text encoder as a separate file")
    s.add_argument(
        "--components",
        default=None,
        metavar="LIST",
        help=f"SD components to compile, comma-separated (default all: {','.join(SD_COMPONENTS)})",
    )
    s.add_argument(
        "--vae-tiling",
        choices=["auto", "on", "off"],
        default=None,
        help="decode the VAE in overlapping tiles: auto (only where the whole decode does not fit; default), on, off",
    )
    s.add_argument("--vae-tile", type=int, default=None, metavar="N", help="tile size in latent pixels (default 32)")
    s.add_argument(
        "--offload",
        choices=["auto", "on", "off"],
        default=None,
        help="hold only the running component's weights on the device: auto (only where all do not fit; default), "
        "on, off",
    )
    s.add_argument("--fallback-policy", default="lossless", help="lossless | size | exact (see legalize)")
    s.add_argument(
        "--cuda-arch",
        default=None,
        metavar="LIST",
        help="CUDA architectures, e.g. sm_75,sm_86,compute_90 (default sm_75..sm_90 + compute_90)",
    )
    s.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help="e.g. 4GiB (2^32 bytes) or 4GB (4e9 bytes); default: the probed device",
    )
    s.add_argument(
        "--batch", type=int, default=1, help="compiled batch size of a text encoder (larger batches run in chunks)"
    )
    s.add_argument("--dump-ir", type=Path, default=None, metavar="DIR", help="write the IR after each pass")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:STRENGTH]",
        help="merge this LoRA (safetensors, GGUF or .ckpt, by content) into the weights; repeatable",
    )
    s.add_argument(
        "--lora-apply-mode",
        choices=["merge", "runtime"],
        default="merge",
        help="merge: --lora merged into the weights (default); runtime: a hook on every adapted step, so "
        "<lora:NAME:STRENGTH> in a prompt picks LoRAs when the image is made",
    )
    s.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        metavar="KEY",
        help="sign the artifact with this Ed25519 private key (PEM; `sdcompile keygen` makes one), so runtimes "
        "given --trusted-key KEY.pub accept it",
    )

    for cmd, what in (("txt2img", "make an image from a prompt"), ("img2img", "redraw an image guided by a prompt")):
        s = sub.add_parser(cmd, help=f"{what} with a compiled Stable Diffusion artifact", description=what.capitalize())
        _generation_args(s, img2img=cmd == "img2img")

    s = sub.add_parser("run", help="run one function of an artifact on inputs from .npy files")
    s.add_argument("artifact", type=Path, help="artifact directory (what `compile -o` wrote)")
    s.add_argument(
        "--function", default=None, metavar="NAME", help="function to run (default: the artifact's only one)"
    )
    s.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", required=True, help="one per input")
    s.add_argument("--output", type=Path, required=True, metavar="OUT.npz", help="where to write the outputs")
    _trusted_key_arg(s)
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")

    s = sub.add_parser("bench", help="time one function of an artifact over repeated runs on random inputs")
    s.add_argument("artifact", type=Path, help="artifact directory (what `compile -o` wrote)")
    s.add_argument(
        "--function", default=None, metavar="NAME", help="function to time (default: the artifact's only one)"
    )
    s.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")
    s.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    s.add_argument(
        "--profile",
        action="store_true",
        help="time every kernel launch on its own (--repeat runs, median) and print the time, GFLOP/s and GB/s per "
        "op and for the slowest kernels",
    )
    s.add_argument("--top", type=int, default=12, metavar="N", help="with --profile: kernels listed (default 12)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("kernels", help="build and validate every (type, backend) kernel; write the capability table")
    s.add_argument("--check", action="store_true", help="fail if the capability table claims a kernel that fails")
    s.add_argument("--write", action="store_true", help="write the capability table legalization reads")
    s.add_argument("--targets", default="cpu,vulkan,cuda", help="comma-separated backends (default: all three)")
    s.add_argument("--types", default=None, help="comma-separated weight types (default: every type)")
    s.add_argument("--json", action="store_true", help="machine-readable results")

    s = sub.add_parser(
        "tune",
        help="tune a model's hot kernels with TVM MetaSchedule; write records that compile applies where faster",
        description="Lift and plan MODEL as `compile` would, run MetaSchedule on its hottest kernels (FLOPs x "
        "launches: linear, conv2d and attention first), measure each tuned kernel against the built-in schedule "
        "rule on the same inputs and write a tuning record (schedules/records/<target>/<machine>/) only where it "
        "is faster and numerically equal. `compile` applies the records for its target and machine; kernels "
        "without one keep the built-in rules. A second run reuses the records instead of tuning again.",
    )
    s.add_argument("file", type=Path, nargs="?", metavar="MODEL", help="checkpoint file or diffusers directory")
    s.add_argument("--target", choices=["cpu", "vulkan", "cuda"], default="cpu", help="backend (default cpu)")
    s.add_argument("--type", help="storage type for quantizable weights, as compile takes it")
    s.add_argument("--act-type", choices=["f32", "f16", "bf16"], default="f32", help="as compile takes it")
    s.add_argument("--compute", choices=["f32", "bf16"], default="f32", help="as compile takes it")
    s.add_argument("--size", action="append", default=[], metavar="WxH", help="image size(s), as compile takes them")
    s.add_argument("--components", default=None, metavar="LIST", help="SD components, as compile takes them")
    s.add_argument("--diffusion-model", default=None, metavar="FILE", help="the UNet as a separate file")
    s.add_argument("--vae", default=None, metavar="FILE", help="a separate VAE")
    s.add_argument("--clip-l", default=None, metavar="FILE", help="the CLIP-L text encoder as a separate file")
    s.add_argument("--batch", type=int, default=1, help="compiled batch size of a text encoder, as compile takes it")
    s.add_argument(
        "--trials", type=int, default=32, metavar="N", help="MetaSchedule trials (measured candidates) per kernel"
    )
    s.add_argument(
        "--kernels", default=None, metavar="PATTERN", help="tune only kernels whose name matches this regex, or an op"
    )
    s.add_argument("--top", type=int, default=4, metavar="K", help="tune the K hottest (matching) kernels (default 4)")
    s.add_argument(
        "--per-op",
        action="store_true",
        help="--top K counts per op: the K hottest kernels of each op (conv2d, linear, group_norm, ...)",
    )
    s.add_argument(
        "--min-speedup",
        type=float,
        default=1.02,
        metavar="X",
        help="write a record only where the tuned kernel is at least X times as fast as the built-in rule "
        "(default 1.02)",
    )
    s.add_argument("--retune", action="store_true", help="tune kernels that already have a record or lost before")
    s.add_argument(
        "--records",
        type=Path,
        default=None,
        metavar="DIR",
        help="records folder (default: schedules/records, or $SDCOMPILE_RECORDS; compile reads the same)",
    )
    s.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="measure on RPC servers of this tracker")
    s.add_argument("--rpc-key", default=None, metavar="KEY", help="the tracker key of the device to tune for")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for local measurements (default: all)")
    s.add_argument("--seed", type=int, default=1, help="MetaSchedule's random seed (default 1)")
    s.add_argument("--json", action="store_true", help="machine-readable summary")

    s = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing artifacts (compile --sign-key) and checking them (--trusted-key)",
    )
    s.add_argument(
        "-o", "--output", type=Path, required=True, metavar="KEY", help="private key file to write; KEY.pub too"
    )

    s = sub.add_parser(
        "example",
        help="write built-in example weights with random values (SD 1.x checkpoints or a CLIP text encoder)",
    )
    s.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write (a directory for --format diffusers or separate)",
    )
    s.add_argument(
        "--model",
        choices=EXAMPLE_MODELS,
        default=None,
        help="sd-tiny: SD 1.x topology with tiny widths (default); sd15: full-size SD 1.5 (about 4 GiB in f32); "
        "sd2-tiny, sdxl-tiny: SD 2.x (OpenCLIP-H) and SDXL (CLIP-L + OpenCLIP-bigG) topologies with tiny widths; "
        "sdxl: full-size SDXL base (about 14 GiB in f32); clip-tiny, clip-sd15: only the CLIP text encoder",
    )
    s.add_argument(
        "--size",
        choices=["tiny", "sd15"],
        default=None,
        help="older spelling of --model clip-tiny / clip-sd15 (the CLIP text encoder)",
    )
    s.add_argument(
        "--format",
        dest="fmt",
        choices=EXAMPLE_FORMATS,
        default="safetensors",
        help="safetensors (LDM single file), ckpt, gguf (as stable-diffusion.cpp's convert writes it), diffusers "
        "(a directory), separate (--diffusion-model/--vae/--clip-l files); CLIP: safetensors or gguf",
    )
    s.add_argument(
        "--convention",
        default=None,
        help="CLIP tensor names: ldm (default) | transformers | transformers5 | diffusers",
    )
    s.add_argument("--dtype", default="f32", help="f32 | f16; for gguf also q8_0, q4_0, ... (default f32)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    s.add_argument(
        "--no-metadata",
        action="store_true",
        help="SD: no metadata in the file, like the released SD 1.5 files (hyperparameters then come from shapes)",
    )
    # a sub-command's --help opens with what the command does: the summary the top-level help lists for it
    for summary in sub._choices_actions:
        cmd = sub.choices[summary.dest]
        if not cmd.description and summary.help:
            cmd.description = summary.help[0].upper() + summary.help[1:] + "."
    return p


def _trusted_key_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=None,
        metavar="PUB",
        help="run only an artifact signed by this Ed25519 public key (PEM, KEY.pub from `sdcompile keygen`); "
        "repeat to trust several",
    )


def _generation_args(s: argparse.ArgumentParser, img2img: bool) -> None:
    s.add_argument("artifact", type=Path, help="artifact compiled from an SD checkpoint (`sdcompile compile`)")
    _trusted_key_arg(s)
    if img2img:
        s.add_argument("-i", "--init-img", type=Path, required=True, help="the image to start from (PNG, PPM, PGM)")
        s.add_argument(
            "--strength",
            type=float,
            default=0.75,
            help="how much to change it: 0 keeps it, 1 ignores it (default 0.75; runs int(steps * strength) steps)",
        )
    s.add_argument("-p", "--prompt", required=True, help="what to draw; (word:1.2) and [word] weigh words")
    s.add_argument("-n", "--negative-prompt", default="", help="what to avoid (default none)")
    s.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    s.add_argument("--cfg-scale", type=float, default=7.0, help="classifier-free guidance scale (default 7.0)")
    s.add_argument(
        "--sampling-method",
        default="euler_a",
        metavar="M",
        help="euler, euler_a (default), ddim, ddim_trailing, dpm++2m, lcm",
    )
    s.add_argument(
        "--scheduler",
        default=None,
        metavar="S",
        help="sigma schedule: default (the method's own), discrete, karras, exponential, sgm_uniform, simple, "
        "smoothstep, kl_optimal, lcm",
    )
    s.add_argument("-s", "--seed", type=int, default=42, help="random seed; -1 picks one and reports it (default 42)")
    s.add_argument("-W", "--width", type=int, default=None, help="image width (default: the first compiled size)")
    s.add_argument("-H", "--height", type=int, default=None, help="image height (default: the first compiled size)")
    s.add_argument("-o", "--output", type=Path, default=Path("output.png"), help="PNG to write (default output.png)")
    s.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    s.add_argument(
        "--init-noise",
        type=Path,
        default=None,
        metavar="FILE.npy",
        help="initial noise [1, 4, H/8, W/8] (unit variance) instead of the seed's, e.g. to compare with diffusers",
    )
    s.add_argument("--save-latents", type=Path, default=None, metavar="FILE.npy", help="also write the final latents")
    s.add_argument(
        "--lora-model-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where <lora:NAME:STRENGTH> in the prompt finds NAME (by file stem, any extension)",
    )
    s.add_argument("--json", action="store_true", help="print timings, seed and paths as JSON")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _version() -> str:
    from sdcompile import __version__

    return f"sdcompile {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from runtime.errors import RuntimeFailure

    try:
        return {
            "inspect": cmd_inspect,
            "compile": cmd_compile,
            "txt2img": cmd_generate,
            "img2img": cmd_generate,
            "run": cmd_run,
            "bench": cmd_bench,
            "example": cmd_example,
            "kernels": cmd_kernels,
            "keygen": cmd_keygen,
            "tune": cmd_tune,
        }[args.cmd](args)
    except (SdcompileError, RuntimeFailure) as e:
        print(f"sdcompile: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("sdcompile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sdcompile ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the machine's, not the input's: a full disk (a compile's artifact), a read-only place
        from sdcompile.output_files import os_error_message

        print(f"sdcompile: error: {args.cmd}: {os_error_message(e, getattr(args, 'output', None))}", file=sys.stderr)
        return 2


def cmd_inspect(args) -> int:
    from sdcompile.inspect import inspect_file, render_inspect

    info = inspect_file(args.file)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(render_inspect(info, tensors=args.tensors))
    return 0


def parse_sizes(values: list[str]) -> list[tuple[int, int]]:
    """`--size` values ("512x512", repeated or comma-separated) as [(width, height)], in order, without repeats."""
    out: list[tuple[int, int]] = []
    for v in values:
        for part in v.split(","):
            part = part.strip().lower()
            if not part:
                continue
            m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", part)
            if not m:
                raise OptionError(f"--size {part!r} is not WIDTHxHEIGHT (e.g. 512x512)")
            w, h = int(m[1]), int(m[2])
            if w <= 0 or h <= 0 or w % 8 or h % 8:
                raise OptionError(f"--size {part}: width and height must be positive multiples of 8 (the VAE's factor)")
            if (w, h) not in out:
                out.append((w, h))
    return out


def parse_components(value: str) -> tuple[str, ...]:
    comps = tuple(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))
    unknown = [c for c in comps if c not in SD_COMPONENTS]
    if unknown or not comps:
        raise OptionError(
            f"--components {value!r}: unknown component {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(SD_COMPONENTS)}"
        )
    return comps


def _model_options(args, **extra) -> CompileOptions:
    """The compile options that pick and shape the model, shared by compile and tune (so that tune plans exactly the
    kernels compile builds): the model's files, target, types, sizes, components, batch; ``extra`` adds the rest."""
    from sdcompile.passes.context import CompileOptions

    if args.batch < 1:
        raise OptionError(f"--batch must be at least 1, got {args.batch}")
    if args.file is None and not args.diffusion_model:
        raise OptionError("no model given: pass MODEL (a checkpoint or diffusers directory) or --diffusion-model FILE")
    for opt, f in (("MODEL", args.file), ("--diffusion-model", args.diffusion_model), ("--vae", args.vae)):
        if f is not None and not Path(f).exists():
            raise OptionError(f"{opt} {f}: no such file or directory")
    if args.clip_l is not None and not Path(args.clip_l).exists():
        raise OptionError(f"--clip-l {args.clip_l}: no such file or directory")
    opts = CompileOptions(
        target=args.target,
        type=args.type,
        batch=args.batch,
        act_type=args.act_type,
        compute=args.compute,
        prediction=getattr(args, "prediction", None),
        diffusion_model=args.diffusion_model,
        vae=args.vae,
        clip_l=args.clip_l,
        **extra,
    )
    sizes = parse_sizes(args.size)
    if sizes:
        opts.sizes = sizes
    if args.components is not None:
        opts.components = parse_components(args.components)
    if opts.type is not None:
        from sdcompile.quant.types import get

        get(opts.type)
    return opts


def cmd_compile(args) -> int:
    from sdcompile.compiler import compile_model
    from sdcompile.passes.memory_plan import parse_size
    from sdcompile.passes.quantize import parse_rules
    from sdcompile.report import render_compile_report

    archs = None
    if args.cuda_arch is not None:
        from sdcompile.codegen.cuda_build import parse_arch_list

        archs = parse_arch_list(args.cuda_arch)
    opts = _model_options(
        args,
        tensor_type_rules=parse_rules(args.tensor_type_rules),
        fallback_policy=args.fallback_policy,
        memory_budget=parse_size(args.memory_budget) if args.memory_budget else None,
        cuda_archs=archs,
        lora_apply_mode=args.lora_apply_mode,
    )
    if args.lora:
        from sdcompile.passes.lora import parse_lora_arg

        opts.loras = [parse_lora_arg(a) for a in args.lora]
    if args.vae_tiling is not None:
        opts.vae_tiling = args.vae_tiling
    if args.vae_tile is not None:
        if args.vae_tile < 1:
            raise OptionError(f"--vae-tile must be at least 1 latent pixel, got {args.vae_tile}")
        opts.vae_tile = args.vae_tile
    if args.offload is not None:
        opts.offload = args.offload
    manifest = compile_model(
        args.file,
        args.output,
        opts,
        progress=not args.no_progress and sys.stderr.isatty(),
        dump_ir=args.dump_ir,
        sign_key=args.sign_key,
    )
    if args.json:
        keys = ("target", "source", "functions", "pipeline", "memory", "report", "files")
        print(json.dumps({k: manifest[k] for k in keys if k in manifest}, indent=1))
    else:
        from sdcompile.lora.report import render

        print("\n".join([render_compile_report(manifest, args.output), *render(manifest)]))
    return 0


# --- txt2img / img2img ------------------------------------------------------------------------------------------


def check_output_file(path: Path, option: str, suffix: str | None) -> None:
    """Refuse an output path that cannot be written (or, with ``suffix``, is named for another format), before any
    work is done."""
    if path.is_dir():
        example = path / ("output" + (suffix or ""))
        raise OptionError(f"{option} {path} is a directory; give a file name such as {example}")
    folder = path.parent
    if not folder.exists():
        raise OptionError(f"{option} {path}: the folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise OptionError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(f"{option} {path}: the folder {folder} is not writable")
    if suffix is not None and path.suffix.lower() != suffix:
        raise OptionError(f"{option} {path}: the file is written as {suffix[1:].upper()}; give it the {suffix} suffix")


def _load_array(path: Path, option: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise OptionError(f"{option} {path}: cannot read it as a .npy array ({e})") from None


def _save_npy(path: Path, arr) -> None:
    """np.save under exactly this name (np.save itself appends .npy), replacing the file only when complete."""
    import numpy as np

    from sdcompile.output_files import written_atomically

    with written_atomically(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def _sd_size(path: Path, manifest: dict, width: int | None, height: int | None, img2img: bool) -> tuple[int, int]:
    """-W/-H checked against what an SD artifact was compiled for (sizes and components); a missing one is taken
    from the first compiled size."""
    pipe = manifest.get("pipeline") or {}
    fns = manifest["functions"]
    if pipe.get("kind") != "stable-diffusion":
        raise OptionError(
            f"{path}: not a Stable Diffusion artifact (it holds {', '.join(sorted(fns))}); compile an SD checkpoint "
            "for txt2img and img2img"
        )
    sizes = [tuple(s) for s in pipe.get("sizes") or []]
    dw, dh = sizes[0] if sizes else (512, 512)
    width = dw if width is None else width
    height = dh if height is None else height
    tag = f"{width}x{height}"
    tiled = (pipe.get("vae_tiling") or {}).get("functions") or {}
    need = {
        "text_encoder": "encode_text" in fns,
        "unet": any(f.startswith("denoise_") for f in fns),
        "vae_decoder": any(f.startswith("decode_latents_") for f in fns),
    }
    if img2img:
        need["vae_encoder"] = any(f.startswith("encode_image_") for f in fns)
    missing = [c for c, have in need.items() if not have]
    if missing:
        cmd = "img2img" if img2img else "txt2img"
        raise OptionError(
            f"{path} was compiled without {', '.join(missing)}; {cmd} needs {', '.join(need)} (compile without "
            "--components, or list them all)"
        )
    if f"denoise_{tag}" not in fns or (img2img and f"encode_image_{tag}" not in fns):
        have = ", ".join(f"{w}x{h}" for w, h in sizes) or "none"
        raise OptionError(
            f"{path} was compiled for image sizes {have}, not {tag}; pick one of those with -W/-H, or recompile with "
            f"--size {tag}"
        )
    if f"decode_latents_{tag}" not in fns and tag not in tiled:
        raise OptionError(f"{path} holds no VAE decoder for {tag}; recompile with --size {tag}")
    return width, height


class _StepBar:
    """tqdm progress bar on stderr, one tick per sampling step, showing the seconds of the last step."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.enabled, self.desc, self.bar = enabled, desc, None

    def __call__(self, i: int, n: int, seconds: float) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=n,
                desc=self.desc,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}",
            )
        self.bar.set_postfix_str(f"{seconds:.3f} s/step", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_generate(args) -> int:
    """txt2img, or img2img with -i."""
    import secrets
    import time

    import numpy as np

    import runtime
    from runtime.model import read_manifest
    from runtime.pipelines.image import generation_parameters, read_png, write_png
    from runtime.pipelines.samplers import make_sampler
    from runtime.pipelines.schedules import NoiseSchedule
    from runtime.pipelines.sd import StableDiffusion

    img2img = args.cmd == "img2img"
    # everything a user can get wrong is checked before the model loads and the sampling starts
    if not args.artifact.exists():
        raise OptionError(f"{args.artifact}: no such artifact; make one with `sdcompile compile MODEL -o DIR`")
    check_output_file(args.output, "-o", ".png")
    if args.save_latents is not None:
        check_output_file(args.save_latents, "--save-latents", ".npy")
    if args.threads is not None and args.threads < 1:
        raise OptionError(f"--threads must be at least 1, got {args.threads}")
    if not math.isfinite(args.cfg_scale):
        raise OptionError(f"--cfg-scale must be a finite number, got {args.cfg_scale}")
    if args.seed < -1 or args.seed >= 2**63:
        raise OptionError(f"--seed must be between 0 and 2^63-1, or -1 for a random seed; got {args.seed}")
    for opt, v in (("-W", args.width), ("-H", args.height)):
        if v is not None and (v <= 0 or v % 8):
            raise OptionError(f"{opt} {v}: image sizes are positive multiples of 8")
    strength = args.strength if img2img else 1.0
    # the sampler's own checks (method, schedule, steps, strength) on SD's default schedule: cheap and early
    make_sampler(args.sampling_method, NoiseSchedule.from_config({}), args.steps, args.scheduler, strength=strength)
    manifest = read_manifest(args.artifact)
    width, height = _sd_size(args.artifact, manifest, args.width, args.height, img2img)
    init = read_png(args.init_img) if img2img else None
    noise = None
    if args.init_noise is not None:
        noise = _load_array(args.init_noise, "--init-noise")
        want = [1, *manifest["functions"][f"denoise_{width}x{height}"]["inputs"]["x"]["shape"][1:]]
        if list(noise.shape) != want or noise.dtype.kind != "f":
            raise OptionError(
                f"--init-noise {args.init_noise}: {noise.dtype}{list(noise.shape)}, but {width}x{height} needs "
                f"float{want}"
            )
    seed = secrets.randbelow(2**31) if args.seed == -1 else args.seed
    from runtime.lora.prompt import resolve

    prompt, negative, lora_files, _ = resolve(args.prompt, args.negative_prompt, args.lora_model_dir)

    t0 = time.perf_counter()
    model = runtime.load(args.artifact, num_threads=args.threads, trusted_keys=args.trusted_key)
    lora_report = model.set_loras(lora_files)
    sd = StableDiffusion(model)
    load_s = time.perf_counter() - t0
    bar = _StepBar(not args.no_progress, "img2img" if img2img else "txt2img")
    try:
        res = sd.generate(
            prompt,
            negative,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            method=args.sampling_method,
            scheduler=args.scheduler,
            seed=seed,
            width=width,
            height=height,
            init_noise=noise,
            init_image=init,
            strength=strength,
            progress=bar,
        )
    finally:
        bar.close()
    scheduler = None if args.scheduler in (None, "default") else args.scheduler
    params = generation_parameters(
        args.prompt,
        args.negative_prompt,
        args.steps,
        WEBUI_SAMPLERS.get(args.sampling_method, args.sampling_method),
        args.cfg_scale,
        seed,
        width,
        height,
        model.manifest["source"].get("file"),
        scheduler=WEBUI_SCHEDULES.get(scheduler, scheduler) if scheduler else None,
        strength=strength if img2img else None,
    )
    write_png(args.output, res.image, {"parameters": params})
    if args.save_latents is not None:
        _save_npy(args.save_latents, np.asarray(res.latents, np.float32))
    for r in lora_report:
        if r["unmatched"]:
            first = next(iter(r["unmatched"].items()))
            res.warnings.append(
                f"LoRA {r['file']}: {len(r['unmatched'])} tensors adapt no weight of this model (e.g. {first[0]}: "
                f"{first[1]})"
            )
    for w in res.warnings:
        print(f"sdcompile: warning: {w}", file=sys.stderr)
    timings = {"load_s": load_s, **res.timings}
    dev = model.device
    device = f"{model.manifest['target']} ({dev.get('name') or dev.get('adapter') or dev.get('backend')})"
    if args.json:
        out = {
            "image": str(args.output),
            "latents": None if args.save_latents is None else str(args.save_latents),
            "seed": seed,
            "prompt": args.prompt,
            "negative_prompt": args.negative_prompt,
            "width": width,
            "height": height,
            "steps": args.steps,
            "sampling_method": args.sampling_method,
            "scheduler": scheduler,
            "cfg_scale": args.cfg_scale,
            "strength": strength if img2img else None,
            "artifact": str(args.artifact),
            "device": device,
            "timings": timings,
            "warnings": res.warnings,
            "loras": lora_report,
            "parameters": params,
        }
        print(json.dumps(out, indent=1))
    else:
        t = res.timings
        n = int(t.get("steps", 0))
        parts = [f"text {t['encode_text_s']:.2f} s"]
        if "encode_image_s" in t:
            parts.append(f"image {t['encode_image_s']:.2f} s")
        parts += [f"{n} steps {t['denoise_s']:.2f} s ({t['step_s']:.3f} s/step)", f"decode {t['decode_s']:.2f} s"]
        print(
            f"wrote {args.output}: {width}x{height}, seed {seed}, {args.sampling_method}"
            + (f"/{scheduler}" if scheduler else "")
            + f", cfg {args.cfg_scale:g}"
            + (f", strength {strength:g}" if img2img else "")
            + f", on {device}"
        )
        if args.save_latents is not None:
            print(f"wrote {args.save_latents}: latents float32{list(res.latents.shape)}")
        for r in lora_report:
            print(f"lora  {r['file']} ({r['format']}) strength {r['strength']:g}: {r['weights']} weights, at run time")
        print(f"time  {t['total_s']:.2f} s = " + " + ".join(parts) + f" (load {load_s:.2f} s before)")
    return 0


# --- run / bench ------------------------------------------------------------------------------------------------


def _load_npy(spec: str):
    import numpy as np

    if "=" not in spec:
        raise OptionError(f"--input {spec!r} is not NAME=FILE.npy")
    name, file = spec.split("=", 1)
    try:
        return name, np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise OptionError(f"--input {name}: cannot read {file} as a .npy array ({e})") from None


def cmd_run(args) -> int:
    import numpy as np

    import runtime
    from runtime.model import read_manifest
    from sdcompile.report import pick_function

    check_output_file(args.output, "--output", None)
    fn = pick_function(args.artifact, read_manifest(args.artifact)["functions"], args.function)
    inputs = dict(_load_npy(s) for s in args.input)
    model = runtime.load(args.artifact, num_threads=args.threads, trusted_keys=args.trusted_key)
    # a single-function artifact takes any batch (run in compiled-size chunks); otherwise the exact signature
    out = model.run(inputs) if len(model.functions) == 1 else model.call(fn, inputs)
    tmp = args.output.with_name(args.output.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(args.output)
    for k, v in out.items():
        print(f"{k}: {v.dtype}{list(v.shape)}  mean {v.mean():+.5f}  std {v.std():.5f}")
    print(f"wrote {args.output}")
    return 0


def cmd_bench(args) -> int:
    from sdcompile.report import bench_artifact

    if args.repeat < 1 or args.warmup < 0:
        raise OptionError(f"--repeat must be at least 1 and --warmup at least 0 (got {args.repeat}, {args.warmup})")
    if args.profile:
        return _bench_profile(args)
    res = bench_artifact(
        args.artifact, repeat=args.repeat, warmup=args.warmup, threads=args.threads, function=args.function
    )
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{res['artifact']} {res['function']} on {res['device']}: {res['repeat']} runs, batch {res['batch']}")
        print(f"  min {res['min_ms']:.2f} ms   median {res['median_ms']:.2f} ms   max {res['max_ms']:.2f} ms")
    return 0


def _bench_profile(args) -> int:
    import runtime
    from runtime.model import read_manifest
    from runtime.profile import profile
    from sdcompile.report import pick_function, random_inputs

    fn = pick_function(args.artifact, read_manifest(args.artifact)["functions"], args.function)
    model = runtime.load(args.artifact, num_threads=args.threads)
    res = profile(model, fn, random_inputs(model.functions[fn]), repeat=args.repeat, warmup=min(args.warmup, 1))
    if args.json:
        print(json.dumps(res, indent=1))
        return 0

    def row(r: dict, name: str) -> str:
        g = f"{r['gflops']:.0f}" if r["gflops"] else "-"
        share = 100 * r["seconds"] / res["total_s"] if res["total_s"] else 0
        return f"{name:<48} {r['calls']:>5} {r['seconds'] * 1e3:>10.1f} {share:>5.1f}% {g:>8} {r['gbytes_per_s']:>7.1f}"

    print(f"{args.artifact} {fn}: kernels timed one by one, median of {args.repeat} runs")
    head = f"{'':<48} {'calls':>5} {'ms':>10} {'share':>6} {'GFLOP/s':>8} {'GB/s':>7}"
    print(head.replace(" " * 48, f"{'op':<48}", 1))
    for r in res["by_op"]:
        print(row(r, r["op"]))
    print(f"{'total':<48} {sum(r['calls'] for r in res['by_op']):>5} {res['total_s'] * 1e3:>10.1f}")
    print()
    print(head.replace(" " * 48, f"{'slowest kernels':<48}", 1))
    for r in res["kernels"][: args.top]:
        print(row(r, r["kernel"][:48]))
    return 0


def cmd_keygen(args) -> int:
    from sdcompile.codegen.artifact import generate_signing_key

    priv, pub = generate_signing_key(args.output)
    print(f"wrote {priv} (private: keep it secret; compile --sign-key {priv})")
    print(f"wrote {pub} (public: give it to whoever runs the artifacts; --trusted-key {pub})")
    return 0


def cmd_tune(args) -> int:
    from sdcompile.tuning import render, tune_model

    opts = _model_options(args)
    rpc = None
    if (args.rpc_tracker is None) != (args.rpc_key is None):
        raise OptionError("--rpc-tracker and --rpc-key go together: the tracker's HOST:PORT and the device's key")
    if args.rpc_tracker is not None:
        host, _, port = args.rpc_tracker.rpartition(":")
        if not host or not port.isdigit():
            raise OptionError(f"--rpc-tracker {args.rpc_tracker!r} is not HOST:PORT")
        rpc = (host, int(port), args.rpc_key)
    summary = tune_model(
        args.file,
        opts,
        trials=args.trials,
        pattern=args.kernels,
        top=args.top,
        per_op=args.per_op,
        rpc=rpc,
        root=args.records,
        min_speedup=args.min_speedup,
        retune=args.retune,
        threads=args.threads,
        seed=args.seed,
        say=None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True)),
    )
    print(json.dumps(summary, indent=1) if args.json else render(summary))
    return 0


def cmd_kernels(args) -> int:
    import json as _json

    from sdcompile.backends import TABLE
    from sdcompile.kernels import check
    from sdcompile.quant.types import QUANT_TYPES, get

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in ("cpu", "vulkan", "cuda"):
            raise OptionError(f"unknown target {t!r} in --targets; choose from cpu, vulkan, cuda")
    types = [get(t).name for t in args.types.split(",")] if args.types else list(QUANT_TYPES)
    results = {}
    for tg in targets:
        results[tg] = check.check_target(tg, types, progress=None if args.json else lambda m: print(m, file=sys.stderr))
    base = _json.loads(TABLE.read_text())
    wrong = check.claims_without_kernel(base, results)
    table = check.table_from(results, base)
    if args.write:
        check.write_table(table)
    if args.json:
        print(_json.dumps({"results": results, "table_claims_failing": wrong}, indent=1))
    else:
        print(check.render(results))
        if args.write:
            print(f"\nwrote {TABLE.name}")
    if args.check and wrong:
        print(
            "sdcompile: error: the capability table claims kernels that do not validate:\n  " + "\n  ".join(wrong),
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_example(args) -> int:
    model = args.model
    if args.size is not None:
        if model is not None and model != f"clip-{args.size}":
            raise OptionError(f"--size {args.size} (the CLIP example) contradicts --model {model}; give one of them")
        model = f"clip-{args.size}"
    model = model or "sd-tiny"
    if model.startswith("clip-"):
        return _example_clip(args, model[len("clip-") :])
    return _example_sd(args, model)


def _example_clip(args, size: str) -> int:
    from sdcompile import examples as ex
    from sdcompile.output_files import written_atomically

    shape = {"tiny": ex.TINY, "sd15": ex.SD15}[size]
    convention = args.convention or "ldm"
    if convention not in dict(ex.CONVENTIONS):
        raise OptionError(f"unknown convention {convention!r}; choose from {', '.join(dict(ex.CONVENTIONS))}")
    if args.fmt not in ("safetensors", "gguf"):
        raise OptionError(f"the CLIP example is written as safetensors or gguf, not {args.fmt}")
    state = ex.rename(ex.clip_text_state(shape, args.seed), convention)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"num_attention_heads": shape.heads}
    if args.fmt == "safetensors" and args.dtype not in ("f32", "f16"):
        raise OptionError("safetensors examples are f32 or f16; use --format gguf for quantized examples")
    with written_atomically(args.output) as tmp:
        if args.fmt == "safetensors":
            ex.write_safetensors(tmp, state, args.dtype, {k: str(v) for k, v in meta.items()})
        else:
            ex.write_gguf(tmp, state, args.dtype, meta)
    print(f"wrote {args.output} ({size} CLIP text encoder, {convention} names, {args.fmt}, {args.dtype})")
    return 0


_FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def _example_sd(args, model: str) -> int:
    from sdcompile import examples_sd as E
    from sdcompile.output_files import written_atomically
    from sdcompile.passes.memory_plan import fmt_bytes

    if args.convention not in (None, "ldm"):
        raise OptionError(
            "--convention is for the CLIP example; an SD example's names follow its --format (LDM names for "
            "safetensors, ckpt and gguf, diffusers names for diffusers)"
        )
    shape = {"sd-tiny": E.TINY_SD, "sd15": E.SD15, "sd2-tiny": E.TINY_SD2, "sdxl-tiny": E.TINY_SDXL, "sdxl": E.SDXL}[
        model
    ]
    if shape.family != "sd1" and args.fmt == "separate":
        raise OptionError(f"--model {model}: written as safetensors, ckpt, gguf or diffusers")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.fmt in ("diffusers", "separate") and args.output.exists() and not args.output.is_dir():
        raise OptionError(f"-o {args.output}: --format {args.fmt} writes a directory, and this is a file")
    if args.fmt not in ("diffusers", "separate") and args.output.is_dir():
        raise OptionError(f"-o {args.output} is a directory; --format {args.fmt} writes one file")
    try:
        with written_atomically(args.output) as tmp:  # a full disk leaves no partial checkpoint
            E.write_sd(tmp, shape, args.seed, args.fmt, dtype=args.dtype, metadata=not args.no_metadata)
    except ValueError as e:
        raise OptionError(f"--format {args.fmt} --dtype {args.dtype}: {e}") from None
    out = args.output
    files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    names = {"diffusers": "diffusers names", "separate": "one file per component"}.get(args.fmt, "LDM names")
    print(
        f"wrote {out} ({shape.name}: {_FAMILY_NAMES[shape.family]} with random weights, {names}, {args.fmt}, "
        f"{args.dtype}; {fmt_bytes(size)})"
    )
    if args.fmt == "separate":
        parts = " ".join(f"--{role.replace('_', '-')} {out / f}" for role, f in E.SEPARATE_FILES.items())
        print(f"compile it with: sdcompile compile {parts} -o ARTIFACT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
