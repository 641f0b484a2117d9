"""LoRA: read from any file (format by content), names in every common convention, matched to the model's canonical
weights through the aliases the compiler recorded; applied by the compiler (merged into the weights) or by the
runtime (a low-rank branch beside each adapted step, `runtime/lora/branch.py`). Imports no compiler code."""

from runtime.lora.errors import LoraError
from runtime.lora.match import Matched, alias_index, match
from runtime.lora.parse import Layer, delta, factors, parse
from runtime.lora.read import open_lora

__all__ = ["LoraError", "Layer", "Matched", "alias_index", "delta", "factors", "match", "open_lora", "parse"]
