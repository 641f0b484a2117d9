"""Errors a user of the runtime can cause (wrong device, incomplete artifact, bad arguments).

The runtime imports no compiler code, so it has its own hierarchy. ``RuntimeFailure`` derives from ``RuntimeError``
so callers that only know the standard library still catch it. Each message says what happened and what to do.
"""

from __future__ import annotations


class RuntimeFailure(RuntimeError):
    """Base of every user-facing runtime error."""


class NoDeviceError(RuntimeFailure):
    """The device the artifact was built for is not present (no Vulkan adapter, no CUDA driver, ...)."""


class ArtifactError(RuntimeFailure):
    """The artifact is incomplete or inconsistent: a kernel file is missing, a kernel is not in the manifest."""


class ManifestError(ArtifactError):
    """The manifest was changed after compiling (its digest does not match), names a path outside the artifact, or
    describes a plan that cannot run as written (a step on a missing kernel or slot, an output no step writes)."""


class SignatureError(ArtifactError):
    """Trusted keys were given and the artifact is unsigned, or its signature is by none of them."""


class LaunchError(RuntimeFailure):
    """A kernel was called with arguments that do not match its parameters."""


class NoCompatibleBuild(NoDeviceError):
    """The artifact holds no kernel build this device can run (e.g. CUDA code for other architectures)."""
