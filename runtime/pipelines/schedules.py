"""Noise schedules of DDPM-trained diffusion models, and the sigma schedules a sampler can follow.

Vocabulary (shared with diffusers and k-diffusion): ``alphas_cumprod[t]`` (alpha-bar) is the fraction of signal left
at training timestep ``t``; ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` is the same noise level in the
variance-exploding form ``x = x0 + sigma * noise`` that Euler-type samplers integrate. Arrays are float64: the
schedule is computed once per run and its errors should not add to the samplers'. diffusers computes them in float32,
which puts its sigmas within ~1e-6 (relative) of these.

The named sigma schedules are stable-diffusion.cpp's ``--scheduler`` values, computed the way it computes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np

from runtime.errors import RuntimeFailure

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")

# Config keys whose non-default values change the arithmetic in ways this runtime does not implement. A config that
# sets one is refused: sampling it differently without a word would be worse than stopping.
_REFUSED_IF_SET: dict[str, Any] = {
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
    "thresholding": False,
    "clip_sample": False,
}


def _valid(kind: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise RuntimeFailure(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule of a model, as diffusers' scheduler config describes it. Defaults are SD 1.5's.

    ``timestep_spacing`` None means "each sampler's own default", as in diffusers, whose SD 1.5 config has no such
    key: ``EulerDiscreteScheduler`` spaces its steps "linspace", ``DDIMScheduler`` "leading".
    """

    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    steps_offset: int = 1
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = False
    timestep_spacing: str | None = None

    def __post_init__(self) -> None:
        _valid("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _valid("prediction_type", self.prediction_type, PREDICTION_TYPES)
        if self.timestep_spacing is not None:
            _valid("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.num_train_timesteps < 2:
            raise RuntimeFailure(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise RuntimeFailure(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> NoiseSchedule:
        """Read a diffusers ``scheduler_config.json`` dict; missing keys take SD 1.5's values, keys that only other
        samplers read (``skip_prk_steps``, ``_class_name``, ...) are ignored."""
        config = dict(config or {})
        for key, default in _REFUSED_IF_SET.items():
            if config.get(key, default) not in (default, None):
                raise RuntimeFailure(
                    f"scheduler config sets {key}={config[key]!r}, which this runtime does not implement; "
                    f"remove the key (or set it to {default!r}) if the model does not need it"
                )
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in config and config[f.name] is not None:
                kwargs[f.name] = config[f.name]
        try:
            kwargs = {k: _coerce(k, v) for k, v in kwargs.items()}
        except (TypeError, ValueError) as e:
            raise RuntimeFailure(f"scheduler config has a value of the wrong type: {e}") from None
        return cls(**kwargs)

    # -- the per-timestep tables ------------------------------------------------------------------------------------
    @cached_property
    def betas(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        elif self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        else:  # squaredcos_cap_v2: the cosine schedule of Nichol & Dhariwal, capped as diffusers caps it

            def alpha_bar(t: float) -> float:
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])
        return _readonly(betas)

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return _readonly(np.cumprod(1.0 - self.betas))

    @cached_property
    def sigmas(self) -> np.ndarray:
        """Noise level of every training timestep, ascending with ``t``."""
        acp = self.alphas_cumprod
        return _readonly(np.sqrt((1.0 - acp) / acp))

    @cached_property
    def log_sigmas(self) -> np.ndarray:
        return _readonly(np.log(self.sigmas))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def final_alpha_cumprod(self) -> float:
        """alpha-bar after the last step of DDIM/LCM: 1 (clean) or, as SD was configured, that of timestep 0."""
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    # -- conversions ------------------------------------------------------------------------------------------------
    def sigma_to_t(self, sigma: np.ndarray | float) -> np.ndarray:
        """Fractional timestep of a noise level: linear interpolation in log sigma between the two neighbouring
        training timesteps (k-diffusion's and diffusers' ``_sigma_to_t``)."""
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        ls = self.log_sigmas
        low = np.clip(np.searchsorted(ls, log_sigma, side="right") - 1, 0, len(ls) - 2)
        w = np.clip((ls[low] - log_sigma) / (ls[low] - ls[low + 1]), 0.0, 1.0)
        return (1.0 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: np.ndarray | float) -> np.ndarray:
        """Noise level at a fractional timestep, interpolating log sigma (k-diffusion, stable-diffusion.cpp)."""
        t = np.asarray(t, dtype=np.float64)
        low = np.clip(np.floor(t).astype(np.int64), 0, self.num_train_timesteps - 1)
        high = np.clip(np.ceil(t).astype(np.int64), 0, self.num_train_timesteps - 1)
        w = t - low
        return np.exp((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high])

    def t_to_sigma_linear(self, t: np.ndarray | float) -> np.ndarray:
        """Noise level at a fractional timestep, interpolating sigma itself (diffusers' Euler and DPM-Solver)."""
        return np.interp(np.asarray(t, dtype=np.float64), np.arange(self.num_train_timesteps), self.sigmas)

    def alpha_cumprod_at(self, t: np.ndarray | float) -> np.ndarray:
        """alpha-bar at integer timesteps; a negative index is past the end and gives ``final_alpha_cumprod``."""
        t = np.asarray(t, dtype=np.int64)
        return np.where(t >= 0, self.alphas_cumprod[np.maximum(t, 0)], self.final_alpha_cumprod)


def _coerce(key: str, value: Any) -> Any:
    if key in ("beta_start", "beta_end"):
        return float(value)
    if key in ("num_train_timesteps", "steps_offset"):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{key}={value!r} is not an integer")
        return int(value)
    if key == "set_alpha_to_one":
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} is not a boolean")
        return value
    return value


def _readonly(a: np.ndarray) -> np.ndarray:
    # The tables are cached on a frozen schedule and shared by every sampler built from it.
    a.setflags(write=False)
    return a


def sigma_to_alpha_cumprod(sigma: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)


# -- stable-diffusion.cpp's sigma schedules (--scheduler) ---------------------------------------------------------------
# Each returns steps + 1 sigmas, descending, the last one 0 (fully denoised).


def _discrete(s: NoiseSchedule, n: int) -> np.ndarray:
    t_max = s.num_train_timesteps - 1
    if n == 1:
        return np.array([s.sigma_max, 0.0])
    return np.append(s.t_to_sigma(t_max - t_max / (n - 1) * np.arange(n)), 0.0)


def _karras(s: NoiseSchedule, n: int) -> np.ndarray:
    # Karras et al. 2022, eq. (5), rho = 7; the same formula as diffusers' use_karras_sigmas.
    rho = 7.0
    lo, hi = max(s.sigma_min, 1e-6) ** (1 / rho), s.sigma_max ** (1 / rho)
    return np.append((hi + np.linspace(0.0, 1.0, n) * (lo - hi)) ** rho, 0.0)


def _exponential(s: NoiseSchedule, n: int) -> np.ndarray:
    # Evenly spaced in log sigma; the same as diffusers' use_exponential_sigmas.
    return np.append(np.exp(np.linspace(math.log(s.sigma_max), math.log(s.sigma_min), n)), 0.0)


def _sgm_uniform(s: NoiseSchedule, n: int) -> np.ndarray:
    t_max = s.num_train_timesteps - 1
    return np.append(s.t_to_sigma(np.linspace(t_max, 0.0, n + 1)[:n]), 0.0)


def _simple(s: NoiseSchedule, n: int) -> np.ndarray:
    total = s.num_train_timesteps
    # float32 as in stable-diffusion.cpp, so that the truncation picks the same timestep where i * total / n is whole
    offset = (np.arange(n, dtype=np.float32) * np.float32(total / n)).astype(np.int64)
    t = np.maximum(total - 1 - offset, 0)
    return np.append(s.t_to_sigma(t), 0.0)


def _smoothstep(s: NoiseSchedule, n: int) -> np.ndarray:
    t_max = s.num_train_timesteps - 1
    u = 1.0 - np.arange(n) / n
    # std::round rounds halves away from zero, as floor(x + 0.5) does for these non-negative values; np.round would
    # round them to even.
    return np.append(s.t_to_sigma(np.floor(u * u * (3.0 - 2.0 * u) * t_max + 0.5)), 0.0)


def _kl_optimal(s: NoiseSchedule, n: int) -> np.ndarray:
    if n == 1:
        return np.array([s.sigma_max, 0.0])
    t = np.arange(n) / (n - 1)
    lo, hi = math.atan(max(s.sigma_min, 1e-6)), math.atan(s.sigma_max)
    return np.append(np.tan(t * lo + (1.0 - t) * hi), 0.0)


def _lcm(s: NoiseSchedule, n: int) -> np.ndarray:
    return np.append(s.t_to_sigma(lcm_timesteps(s, n).astype(np.float64)), 0.0)


def lcm_timesteps(s: NoiseSchedule, n: int, strength: float = 1.0, original_steps: int = 50) -> np.ndarray:
    """The timesteps LCM was distilled on (every ``num_train_timesteps / original_steps``-th, ending at ``k - 1``),
    ``n`` of them picked evenly from the top, as diffusers' ``LCMScheduler`` and stable-diffusion.cpp pick them.
    ``strength < 1`` (img2img) picks them from the lowest ``int(original_steps * strength)`` of the grid, as diffusers'
    LCM img2img pipeline does."""
    k = s.num_train_timesteps // original_steps
    grid = (np.arange(1, int(original_steps * strength) + 1) * k - 1)[::-1]
    if n > len(grid):
        raise RuntimeFailure(
            f"LCM picks its steps from a grid of {original_steps} timesteps ({len(grid)} at strength {strength}); "
            f"{n} steps do not fit: use at most {len(grid)} steps or a higher strength"
        )
    return grid[np.floor(np.linspace(0, len(grid), n, endpoint=False)).astype(np.int64)]


SigmaSchedule = Callable[[NoiseSchedule, int], np.ndarray]

# stable-diffusion.cpp also has ays, gits, bong_tangent, ltx2: tables tied to one model family or shapes tuned for
# flow models; they are left out rather than approximated.
SCHEDULERS: dict[str, SigmaSchedule] = {
    "discrete": _discrete,
    "karras": _karras,
    "exponential": _exponential,
    "sgm_uniform": _sgm_uniform,
    "simple": _simple,
    "smoothstep": _smoothstep,
    "kl_optimal": _kl_optimal,
    "lcm": _lcm,
}


def sigma_schedule(name: str, schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """``steps + 1`` sigmas of the named stable-diffusion.cpp schedule, descending to 0."""
    _valid("scheduler", name, tuple(SCHEDULERS))
    return SCHEDULERS[name](schedule, steps)
