"""The sdcompile runtime: loads an artifact and runs it. It imports no compiler code."""

from runtime.errors import NoCompatibleBuild, RuntimeFailure
from runtime.model import Model, load

__all__ = ["Model", "NoCompatibleBuild", "RuntimeFailure", "load"]
