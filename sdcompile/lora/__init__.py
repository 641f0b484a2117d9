"""LoRA on the compiler's side: the alias table of the model's adaptable weights (`aliases.py`) and the derived
weight W + s·B·A (`LoraDelta`); the pass is `sdcompile/passes/lora.py`, the file reading and naming
`runtime/lora/` (shared with the runtime, which must not import the compiler)."""
