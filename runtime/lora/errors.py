"""The LoRA reader's user errors: a RuntimeFailure (the CLI prints it as one line); the compiler re-raises it as its
own SdcompileError subclass."""

from __future__ import annotations

from runtime.errors import RuntimeFailure


class LoraError(RuntimeFailure):
    """A LoRA file that cannot be read or applied: unreadable, another model's, a kind that is not supported, or one
    that matches none of the model's weights."""
