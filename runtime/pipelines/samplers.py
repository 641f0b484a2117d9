"""Samplers: the update rule that turns the UNet's noise (or v) prediction into the next latent.

Each sampler reproduces a diffusers scheduler step for step (same timesteps, sigmas, update and latent scaling),
so an image made here can be compared with one made by diffusers from the same initial noise:

======================  ===============================================================  ====================
``--sampling-method``   diffusers class (built ``from_config`` on the model's config)    default spacing
======================  ===============================================================  ====================
``euler``               ``EulerDiscreteScheduler``                                       linspace
``euler_a``             ``EulerAncestralDiscreteScheduler``                              linspace
``ddim``                ``DDIMScheduler`` (eta 0)                                        leading
``ddim_trailing``       ``DDIMScheduler(timestep_spacing="trailing")``                   trailing
``dpm++2m``             ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2)           linspace
``lcm``                 ``LCMScheduler``                                                 LCM's 50-step grid
======================  ===============================================================  ====================

The method names are stable-diffusion.cpp's (it has no plain ``ddim``; here that is diffusers' default DDIM). A
``timestep_spacing`` in the model's config replaces a class's default spacing, as in diffusers (not for LCM, whose
grid is fixed). ``scheduler`` picks one of stable-diffusion.cpp's sigma schedules instead (``schedules.SCHEDULERS``);
``karras`` and ``exponential`` then equal diffusers' ``use_karras_sigmas`` / ``use_exponential_sigmas`` for Euler
and DPM-Solver++. With a named schedule the model's timestep is ``sigma_to_t(sigma)``, fractional, except for
``dpm++2m``, which rounds it as diffusers' DPM-Solver does.

Use (the pipeline owns the UNet and the guidance)::

    rng = make_rng(seed)
    sampler = make_sampler("euler_a", schedule, steps, rng=rng)
    x = sampler.initial_latents(standard_normal(rng, shape))     # or (noise, x0=encoded image) for img2img
    for i, t in enumerate(sampler.timesteps):
        eps = unet(sampler.scale_model_input(x, i), t, ...)      # eps or v, as schedule.prediction_type says
        x = sampler.step(eps, i, x)

The initial noise and the per-step noise of the stochastic samplers (euler_a, lcm) come, in that order, from one
``numpy.random.Generator(PCG64(seed))``: the same seed gives the same image on any machine with the same numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from runtime.errors import RuntimeFailure
from runtime.pipelines.schedules import (
    SCHEDULERS,
    NoiseSchedule,
    lcm_timesteps,
    sigma_schedule,
    sigma_to_alpha_cumprod,
)

SCHEDULER_DEFAULT = "default"  # stable-diffusion.cpp's older name for "the method's own schedule"


def make_rng(seed: int) -> np.random.Generator:
    """The runtime's one source of randomness. PCG64 and numpy's float32 normal sampler are specified bit for bit,
    unlike the platform's C library or a GPU's generator."""
    return np.random.Generator(np.random.PCG64(seed))


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


class Sampler:
    """A denoising schedule plus its update rule.

    ``timesteps[i]`` is the model's timestep input at step ``i`` (float; whole numbers except for fractional
    schedules). ``sigmas`` has one more entry than ``timesteps``: the noise level before each step and after the
    last. Latents passed to ``step`` are in the sampler's own scaling (``init_noise_sigma`` tells which); what the
    last step returns is the clean latent in every case.
    """

    name: str = ""

    def __init__(
        self,
        schedule: NoiseSchedule,
        timesteps: np.ndarray,
        sigmas: np.ndarray,
        init_noise_sigma: float,
        rng: np.random.Generator,
    ) -> None:
        self.schedule = schedule
        self.prediction_type = schedule.prediction_type
        self.timesteps = np.asarray(timesteps, dtype=np.float64)
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.init_noise_sigma = float(init_noise_sigma)
        self.rng = rng
        assert len(self.sigmas) == len(self.timesteps) + 1

    def __len__(self) -> int:
        return len(self.timesteps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, steps={len(self)}, prediction_type={self.prediction_type!r})"

    # -- the interface the pipeline calls ---------------------------------------------------------------------------
    def initial_latents(self, noise: np.ndarray, x0: np.ndarray | None = None) -> np.ndarray:
        """Starting latents: scaled noise for text-to-image, or ``x0`` (an encoded image) noised to the first step."""
        if x0 is None:
            return _f32(noise) * self.init_noise_sigma
        return self.add_noise(x0, noise)

    def scale_model_input(self, x: np.ndarray, i: int) -> np.ndarray:
        self._check_index(i)
        return x

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def add_noise(self, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """``x0`` noised to the level of the first step (img2img)."""
        raise NotImplementedError

    # -- shared arithmetic ------------------------------------------------------------------------------------------
    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self.timesteps):
            raise RuntimeFailure(f"step index {i} is outside this {len(self.timesteps)}-step schedule")

    def _check_step(self, model_output: np.ndarray, i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_index(i)
        if np.shape(model_output) != np.shape(x):
            raise RuntimeFailure(f"model output has shape {np.shape(model_output)}, latents {np.shape(x)}")
        return _f32(model_output), _f32(x)

    def _noise(self, shape: tuple[int, ...]) -> np.ndarray:
        return standard_normal(self.rng, shape)

    def _x0_from_vp(self, model_output: np.ndarray, x: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
        """Predicted clean latent where ``x = alpha * x0 + sigma * noise`` (alpha^2 + sigma^2 = 1)."""
        if self.prediction_type == "epsilon":
            return (x - sigma * model_output) / alpha
        return alpha * x - sigma * model_output


class EulerSampler(Sampler):
    """Euler's method on the probability-flow ODE in k-diffusion's form ``x = x0 + sigma * noise`` (no churn)."""

    name = "euler"

    def scale_model_input(self, x: np.ndarray, i: int) -> np.ndarray:
        self._check_index(i)
        # The UNet was trained on unit-variance inputs x0 + sigma*eps scaled back by 1/sqrt(sigma^2 + 1).
        return _f32(x) / math.sqrt(self.sigmas[i] ** 2 + 1.0)

    def add_noise(self, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return _f32(x0) + _f32(noise) * float(self.sigmas[0])

    def _denoised(self, model_output: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
        if self.prediction_type == "epsilon":
            return x - sigma * model_output
        # v-prediction in the VE scaling (diffusers' EulerDiscreteScheduler): x0 = c_skip * x + c_out * v
        return model_output * (-sigma / math.sqrt(sigma**2 + 1.0)) + x / (sigma**2 + 1.0)

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        eps, xf = self._check_step(model_output, i, x)
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        derivative = (xf - self._denoised(eps, xf, sigma)) / sigma
        return _like(xf + derivative * (sigma_next - sigma), x)


class EulerAncestralSampler(EulerSampler):
    """Euler to a lower noise level ``sigma_down``, then fresh noise ``sigma_up`` back up to the next level."""

    name = "euler_a"

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        eps, xf = self._check_step(model_output, i, x)
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        derivative = (xf - self._denoised(eps, xf, sigma)) / sigma
        out = xf + derivative * (sigma_down - sigma)
        if sigma_up > 0.0:  # the last step (to sigma 0) adds nothing, so it draws nothing
            out = out + self._noise(xf.shape) * sigma_up
        return _like(out, x)


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++ (2M): multistep, second order in log-SNR, on the data prediction (Lu et al. 2022).

    The first step and the last step are first order, as in diffusers (``lower_order_final``, final sigma 0).
    Steps must be taken in order: each uses the previous step's prediction.
    """

    name = "dpm++2m"

    def __init__(
        self, schedule: NoiseSchedule, timesteps: np.ndarray, sigmas: np.ndarray, rng: np.random.Generator
    ) -> None:
        # latents stay in the variance-preserving scaling (alpha * x0 + sigma * noise), so they start as plain noise
        super().__init__(schedule, timesteps, sigmas, 1.0, rng)
        self._previous: tuple[int, np.ndarray] | None = None  # (step, its x0 prediction)

    @staticmethod
    def _alpha_sigma(sigma: float) -> tuple[float, float]:
        alpha = 1.0 / math.sqrt(sigma**2 + 1.0)
        return alpha, sigma * alpha

    def add_noise(self, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
        alpha, sigma = self._alpha_sigma(float(self.sigmas[0]))
        return alpha * _f32(x0) + sigma * _f32(noise)

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        out, xf = self._check_step(model_output, i, x)
        previous = self._previous if i > 0 else None  # step 0 (re)starts the history
        if i > 0 and (previous is None or previous[0] != i - 1):
            done = "no step" if previous is None else f"step {previous[0]}"
            raise RuntimeFailure(f"dpm++2m must be stepped in order: step {i} came after {done}")
        alpha_s, sigma_s = self._alpha_sigma(float(self.sigmas[i]))
        x0 = self._x0_from_vp(out, xf, alpha_s, sigma_s)
        self._previous = (i, x0)
        sigma_next = float(self.sigmas[i + 1])
        if sigma_next == 0.0:
            return _like(x0, x)  # the first-order update to sigma 0 is x0 itself
        alpha_t, sigma_t = self._alpha_sigma(sigma_next)
        lambda_s, lambda_t = math.log(alpha_s / sigma_s), math.log(alpha_t / sigma_t)
        h = lambda_t - lambda_s
        phi = alpha_t * math.expm1(-h)
        result = (sigma_t / sigma_s) * xf - phi * x0
        last = i == len(self.timesteps) - 1
        if previous is not None and not last:
            alpha_p, sigma_p = self._alpha_sigma(float(self.sigmas[i - 1]))
            r = (lambda_s - math.log(alpha_p / sigma_p)) / h
            result = result - (0.5 * phi / r) * (x0 - previous[1])
        return _like(result, x)


class _AlphaSampler(Sampler):
    """Samplers that work on alpha-bar directly, latents in the variance-preserving scaling (DDIM, LCM)."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        timesteps: np.ndarray,
        alpha_t: np.ndarray,
        alpha_prev: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        # sigmas only describe the schedule here; the update reads alpha-bar, which for the default schedules is
        # the training table's value at integer timesteps (no round trip through sigma).
        sigmas = np.sqrt((1.0 - np.append(alpha_t, alpha_prev[-1:])) / np.append(alpha_t, alpha_prev[-1:]))
        super().__init__(schedule, timesteps, sigmas, 1.0, rng)
        self.alpha_t = np.asarray(alpha_t, dtype=np.float64)
        self.alpha_prev = np.asarray(alpha_prev, dtype=np.float64)

    def add_noise(self, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
        a = float(self.alpha_t[0])
        return math.sqrt(a) * _f32(x0) + math.sqrt(1.0 - a) * _f32(noise)


class DDIMSampler(_AlphaSampler):
    """Deterministic DDIM (eta 0), Song et al. 2020, eq. (12)."""

    name = "ddim"

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        out, xf = self._check_step(model_output, i, x)
        a, a_prev = float(self.alpha_t[i]), float(self.alpha_prev[i])
        sqrt_a, sqrt_b = math.sqrt(a), math.sqrt(1.0 - a)
        if self.prediction_type == "epsilon":
            x0, eps = (xf - sqrt_b * out) / sqrt_a, out
        else:
            x0, eps = sqrt_a * xf - sqrt_b * out, sqrt_a * out + sqrt_b * xf
        return _like(math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps, x)


class LCMSampler(_AlphaSampler):
    """Latent Consistency Model multistep sampling (Luo et al. 2023): predict x0 with the consistency boundary
    conditions, then noise it afresh to the next timestep."""

    name = "lcm"
    sigma_data = 0.5
    timestep_scaling = 10.0

    def step(self, model_output: np.ndarray, i: int, x: np.ndarray) -> np.ndarray:
        out, xf = self._check_step(model_output, i, x)
        a = float(self.alpha_t[i])
        x0 = self._x0_from_vp(out, xf, math.sqrt(a), math.sqrt(1.0 - a))
        scaled_t = float(self.timesteps[i]) * self.timestep_scaling
        c_skip = self.sigma_data**2 / (scaled_t**2 + self.sigma_data**2)
        c_out = scaled_t / math.sqrt(scaled_t**2 + self.sigma_data**2)
        denoised = c_out * x0 + c_skip * xf
        if i == len(self.timesteps) - 1:
            return _like(denoised, x)
        a_prev = float(self.alpha_prev[i])
        return _like(math.sqrt(a_prev) * denoised + math.sqrt(1.0 - a_prev) * self._noise(xf.shape), x)


# -- timesteps of each diffusers class (their set_timesteps) -------------------------------------------------------


def _spaced(spacing: str, s: NoiseSchedule, n: int) -> np.ndarray:
    """Timesteps of Euler and DDIM under diffusers' three spacings (DDIM's linspace rounds; Euler's does not)."""
    total = s.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, total - 1, n)[::-1].copy()
    if spacing == "leading":
        return (np.arange(n) * (total // n)).round()[::-1] + s.steps_offset
    return np.arange(total, 0, -total / n).round() - 1  # trailing


def _euler_plan(s: NoiseSchedule, n: int, scheduler: str | None) -> tuple[np.ndarray, np.ndarray, float]:
    spacing = s.timestep_spacing or "linspace"
    if scheduler is not None:
        sigmas = sigma_schedule(scheduler, s, n)
        return s.sigma_to_t(sigmas[:-1]), sigmas, float(sigmas[0])
    # diffusers keeps Euler's timesteps in float32; its sigmas follow from those values
    timesteps = _spaced(spacing, s, n).astype(np.float32).astype(np.float64)
    sigmas = np.append(s.t_to_sigma_linear(timesteps), 0.0)
    # diffusers' "leading" schedule starts below the top timestep, so it scales the initial noise to unit variance
    # of x0 + sigma * noise (an SD-1 era convention kept for compatibility); the other spacings start at sigma_max.
    init = float(sigmas[0]) if spacing in ("linspace", "trailing") else math.sqrt(float(sigmas[0]) ** 2 + 1.0)
    return timesteps, sigmas, init


def _dpm_plan(s: NoiseSchedule, n: int, scheduler: str | None) -> tuple[np.ndarray, np.ndarray]:
    if scheduler is not None:
        sigmas = sigma_schedule(scheduler, s, n)
        # diffusers rounds DPM-Solver's timesteps for Karras/exponential sigmas (the sigmas themselves stay exact)
        return np.round(s.sigma_to_t(sigmas[:-1])), sigmas
    total, spacing = s.num_train_timesteps, s.timestep_spacing or "linspace"
    if spacing == "linspace":  # n + 1 points, last dropped: the final update goes to sigma 0, not to timestep 0
        timesteps = np.linspace(0, total - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        timesteps = (np.arange(n + 1) * (total // (n + 1))).round()[::-1][:-1] + s.steps_offset
    else:
        timesteps = np.arange(total, 0, -total / n).round() - 1
    return timesteps.copy(), np.append(s.t_to_sigma_linear(timesteps), 0.0)


def _ddim_plan(
    s: NoiseSchedule, n: int, scheduler: str | None, spacing: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if scheduler is not None:
        sigmas = sigma_schedule(scheduler, s, n)
        acp = sigma_to_alpha_cumprod(sigmas)
        return s.sigma_to_t(sigmas[:-1]), acp[:-1], acp[1:]
    timesteps = _spaced(spacing, s, n).round().astype(np.int64)
    # diffusers' DDIM steps to t - total // n whatever the spacing (not to the next timestep), ending at
    # final_alpha_cumprod
    prev = timesteps - s.num_train_timesteps // n
    return timesteps.astype(np.float64), s.alpha_cumprod_at(timesteps), s.alpha_cumprod_at(prev)


def _lcm_plan(
    s: NoiseSchedule, n: int, scheduler: str | None, strength: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if scheduler is not None:
        sigmas = sigma_schedule(scheduler, s, n)
        acp = sigma_to_alpha_cumprod(sigmas)
        return s.sigma_to_t(sigmas[:-1]), acp[:-1], acp[1:]
    timesteps = lcm_timesteps(s, n, strength)
    # the last step returns the denoised prediction itself: its "next" alpha-bar is 1 (sigma 0)
    prev = np.append(s.alpha_cumprod_at(timesteps[1:]), 1.0)
    return timesteps.astype(np.float64), s.alpha_cumprod_at(timesteps), prev


# -- construction ------------------------------------------------------------------------------------------------------

# A builder makes the full n-step sampler; strength is passed only to the one that picks img2img steps its own way.
_Builder = Callable[[NoiseSchedule, int, "str | None", np.random.Generator, float], Sampler]


def _build_euler(cls: type[EulerSampler]) -> _Builder:
    def build(s: NoiseSchedule, n: int, scheduler: str | None, rng: np.random.Generator, strength: float) -> Sampler:
        timesteps, sigmas, init = _euler_plan(s, n, scheduler)
        return _start_at(cls(s, timesteps, sigmas, init, rng), start_step(n, strength))

    return build


def _build_dpm(s: NoiseSchedule, n: int, scheduler: str | None, rng: np.random.Generator, strength: float) -> Sampler:
    timesteps, sigmas = _dpm_plan(s, n, scheduler)
    return _start_at(DPMSolverPP2MSampler(s, timesteps, sigmas, rng), start_step(n, strength))


def _build_ddim(default_spacing: str | None) -> _Builder:
    def build(s: NoiseSchedule, n: int, scheduler: str | None, rng: np.random.Generator, strength: float) -> Sampler:
        spacing = default_spacing or s.timestep_spacing or "leading"
        return _start_at(DDIMSampler(s, *_ddim_plan(s, n, scheduler, spacing), rng), start_step(n, strength))

    return build


def _build_lcm(s: NoiseSchedule, n: int, scheduler: str | None, rng: np.random.Generator, strength: float) -> Sampler:
    if scheduler is None:
        # diffusers' LCM img2img pipeline runs all n steps, picked from the lower part of LCM's grid
        start_step(n, strength)  # same validation as the other methods
        return LCMSampler(s, *_lcm_plan(s, n, None, strength), rng)
    return _start_at(LCMSampler(s, *_lcm_plan(s, n, scheduler, 1.0), rng), start_step(n, strength))


SAMPLE_METHODS: dict[str, _Builder] = {
    "euler": _build_euler(EulerSampler),
    "euler_a": _build_euler(EulerAncestralSampler),
    "ddim": _build_ddim(None),
    "ddim_trailing": _build_ddim("trailing"),
    "dpm++2m": _build_dpm,
    "lcm": _build_lcm,
}

# stable-diffusion.cpp's methods that this runtime does not have, so that their names get a specific answer.
_NOT_IMPLEMENTED = ("heun", "dpm2", "dpm++2s_a", "dpm++2mv2", "ipndm", "ipndm_v", "tcd", "res_multistep", "er_sde")


def start_step(steps: int, strength: float) -> int:
    """First step an img2img run takes, as diffusers' ``StableDiffusionImg2ImgPipeline.get_timesteps`` picks it:
    ``strength`` is the fraction of the schedule that is run."""
    if not 0.0 <= strength <= 1.0:
        raise RuntimeFailure(f"strength must be between 0 and 1, got {strength}")
    init_timestep = min(int(steps * strength), steps)
    if init_timestep == 0:
        raise RuntimeFailure(
            f"strength {strength} with {steps} steps runs no step at all; raise the strength or the step count "
            f"(strength at least {1 / steps:.3g} for {steps} steps)"
        )
    return steps - init_timestep


def make_sampler(
    name: str,
    schedule: NoiseSchedule,
    steps: int,
    scheduler: str | None = None,
    *,
    rng: np.random.Generator | int = 0,
    strength: float = 1.0,
) -> Sampler:
    """Build sampler ``name`` (a ``--sampling-method`` value) for ``steps`` steps.

    ``scheduler`` None (or ``"default"``) keeps the schedule of the matching diffusers class; a name from
    ``schedules.SCHEDULERS`` (a ``--scheduler`` value) replaces it. ``rng`` (a Generator, or a seed for one) feeds the
    per-step noise of euler_a and lcm. ``strength < 1`` is img2img: the sampler keeps only the last
    ``int(steps * strength)`` steps (LCM on its own grid: all ``steps``, picked below ``strength`` of it, as diffusers'
    LCM img2img pipeline does), and ``add_noise`` / ``initial_latents(noise, x0)`` noise the image to the first.
    """
    if name not in SAMPLE_METHODS:
        known = ", ".join(SAMPLE_METHODS)
        if name in _NOT_IMPLEMENTED:
            raise RuntimeFailure(f"sampling method {name!r} is not implemented in this runtime; available: {known}")
        raise RuntimeFailure(f"unknown sampling method {name!r}; valid: {known}")
    if scheduler == SCHEDULER_DEFAULT:
        scheduler = None
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise RuntimeFailure(
            f"unknown scheduler {scheduler!r}; valid: {SCHEDULER_DEFAULT}, {', '.join(SCHEDULERS)}"
            " (ays, gits, bong_tangent and ltx2 of stable-diffusion.cpp are not implemented)"
        )
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise RuntimeFailure(f"steps must be a positive integer, got {steps!r}")
    generator = rng if isinstance(rng, np.random.Generator) else make_rng(rng)
    sampler = SAMPLE_METHODS[name](schedule, int(steps), scheduler, generator, float(strength))
    sampler.name = name
    return sampler


def _start_at(sampler: Sampler, k: int) -> Sampler:
    # img2img starts part-way: the schedule is that of the full step count, minus its first k steps (as diffusers'
    # pipeline slices scheduler.timesteps and sets the scheduler's begin_index).
    sampler.timesteps = sampler.timesteps[k:]
    sampler.sigmas = sampler.sigmas[k:]
    if isinstance(sampler, _AlphaSampler):
        sampler.alpha_t = sampler.alpha_t[k:]
        sampler.alpha_prev = sampler.alpha_prev[k:]
    return sampler


def _f32(a: np.ndarray) -> np.ndarray:
    # Work in at least float32 (f16 latents are upcast, as diffusers upcasts them); coefficients stay Python floats so
    # that numpy keeps the array's precision.
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)


def _like(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    return result.astype(np.asarray(x).dtype, copy=False)
