"""Tune one kernel for Vulkan and compile with the record: a script, not part of the suite, because lavapipe (Mesa's
CPU Vulkan driver) JIT-compiles every candidate's shader and the run takes minutes on two cores.

    .venv/bin/python tests/tune/vulkan_check.py [--trials N]

It makes the tiny CLIP text encoder, tunes its 77x128x128 linear for the Vulkan adapter (a record is forced: the
check is that one can be written and applied, not that a handful of trials beat the built-in rule), compiles the
model with and without the record and compares the outputs. Exit status 0 when all holds; it prints what it found.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

KERNEL = "linear_K128_M77_N128_actnone_bias_wtypef32"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=4)
    args = ap.parse_args()

    import runtime
    from runtime.executors.vulkan import find_adapter
    from sdcompile import examples as ex
    from sdcompile.compiler import compile_model
    from sdcompile.passes.context import CompileOptions
    from sdcompile.report import render_compile_report
    from sdcompile.tuning import render, tune_model

    if find_adapter() is None:
        print("no Vulkan adapter: install mesa-vulkan-drivers (lavapipe) and wgpu")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = ex.write_safetensors(
            tmp / "clip.safetensors",
            ex.rename(ex.clip_text_state(ex.TINY, seed=0), "ldm"),
            "f32",
            {"num_attention_heads": str(ex.TINY.heads)},
        )
        root = tmp / "records"
        s = tune_model(
            model,
            CompileOptions(target="vulkan"),
            trials=args.trials,
            pattern=KERNEL,
            top=1,
            root=root,
            min_speedup=0.0,
            candidates=1,
            say=print,
        )
        print(render(s))
        assert s["kernels"][0]["status"] == "tuned", s
        os.environ["SDCOMPILE_RECORDS"] = str(root)
        m = compile_model(model, tmp / "tuned", CompileOptions(target="vulkan"))
        print(render_compile_report(m, tmp / "tuned"))
        assert list(m["report"]["tuning"]["kernels"]) == [KERNEL], m["report"].get("tuning")
        os.environ["SDCOMPILE_RECORDS"] = str(tmp / "none")
        plain = compile_model(model, tmp / "plain", CompileOptions(target="vulkan"))
        assert "tuning" not in plain["report"]
        ids = ex.example_ids(batch=2, positions=ex.TINY.positions, vocab=ex.TINY.vocab)
        got, want = (runtime.load(tmp / d).run({"input_ids": ids})["last_hidden_state"] for d in ("tuned", "plain"))
        err = float(np.abs(got - want).max())
        print(f"max |tuned - built-in| over the encoder's output: {err:.3g}")
        assert err <= 1e-5, err
    print("vulkan tuning check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
