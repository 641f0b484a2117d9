"""Errors the runtime raises for problems a user can fix (wrong device, missing driver, damaged artifact).

The runtime imports nothing from ``sdcompile``: an artifact runs where only the runtime is installed.
"""

from __future__ import annotations


class RuntimeFailure(Exception):
    """Base of every user-facing runtime error: the message says what happened and what to do."""


class NoCompatibleBuild(RuntimeFailure):
    """The artifact holds no device code the device can run (no SASS for its architecture, no usable PTX)."""
