"""Errors a user can cause. The CLI prints these without a traceback and exits non-zero.

Each message says what happened, where, and what to do. Internal bugs raise ordinary exceptions and keep their
tracebacks.
"""

from __future__ import annotations


class SdcompileError(Exception):
    """Base of every user-facing error."""

    exit_code = 2


class FormatError(SdcompileError):
    """A weight or graph file is malformed, truncated, unsafe or of an unknown format."""


class UnsafePickleError(FormatError):
    """A pickle-based checkpoint asked to run code or build an object we do not allow."""


class UnsupportedModelError(SdcompileError):
    """A file holds no model sdcompile recognises, or one it cannot lift."""


class QuantError(SdcompileError):
    """An unknown quant type, or a tensor whose shape does not fit a quant type's blocks."""


class OptionError(SdcompileError):
    """A command-line option or API argument is invalid."""


class NoKernelError(SdcompileError):
    """Legalization found no kernel and no allowed fallback for an operation on the chosen backend."""


class MemoryBudgetError(SdcompileError):
    """The memory plan's peak exceeds the budget of the device."""

    exit_code = 3


class OutputError(SdcompileError):
    """An output could not be written: the disk is full, or the place is read-only or not the user's."""


class ToolchainError(SdcompileError):
    """An external tool the build needs (TVM, nvcc) is missing or failed."""
