"""The pass pipeline: one plain list, in order, with phase comments. The verifier runs after every pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdcompile.ir import Graph, verify
from sdcompile.passes import act_dtype, fuse, legalize, lora, memory_plan, mma, pack_weights, quantize, round_early
from sdcompile.passes.context import PassContext

Pass = Callable[[Graph, PassContext], Graph]

PIPELINE: list[tuple[str, Pass]] = [
    # storage types: decided on canonical names, independent of the input file format
    ("quantize", quantize.run),
    # operator fusion: dequantize + matmul + bias + activation + residual into one kernel
    ("fuse", fuse.run),
    # LoRA at run time: each linear/conv step records the weight a runtime LoRA branch adapts (merging LoRAs into the
    # weights is module-wide and runs before this list: compiler.compile_graph_passes, passes/lora.merge)
    ("lora_hooks", lora.hooks),
    # backend: every op and weight type must have a kernel on the target, else a recorded fallback
    ("legalize", legalize.run),
    # product precision: bf16 products on the CPU's tile unit where asked (--compute)
    ("mma", mma.run),
    # weight storage order: the operands of the bf16 GEMMs (bf16 products), or the f32 FMA GEMM's panels (f32 products),
    # where every reader of a weight is that kernel
    ("pack_weights", pack_weights.run),
    # activation storage: f16/bf16 inside functions where asked (--act-type), the signatures staying f32
    ("act_dtype", act_dtype.run),
    # bf16 storage, same bits: f32 activations whose every reader rounds them to bf16 first (bf16 products)
    ("round_early", round_early.run),
    # memory: buffer reuse and the peak-memory check against the budget
    ("memory_plan", memory_plan.run),
]


def run_pipeline(g: Graph, ctx: PassContext, dump_ir: Path | None = None, on_pass=None) -> Graph:
    verify(g, "lift")
    if dump_ir is not None:
        dump_ir.mkdir(parents=True, exist_ok=True)
        (dump_ir / "00-lift.ir").write_text(str(g) + "\n")
    for i, (name, fn) in enumerate(PIPELINE, 1):
        g = fn(g, ctx)
        verify(g, name)
        if dump_ir is not None:
            (dump_ir / f"{i:02d}-{name}.ir").write_text(str(g) + "\n")
        if on_pass is not None:
            on_pass(name)
    return g
