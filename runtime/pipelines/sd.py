"""The Stable Diffusion pipeline: txt2img and img2img over an artifact's functions.

Host code only: tokenize, call ``encode_text`` once for the unconditional and conditional prompts (batch 2, as
diffusers concatenates them), then per step call ``denoise`` once with both halves (classifier-free guidance in one
UNet call), combine on the host, step the sampler, and finally ``decode_latents``. The text context stays on the
device between the UNet calls (unless prompt emphasis must rescale it first); latents are small and cross each
step. Imports nothing from the compiler.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import RuntimeFailure
from runtime.pipelines.image import from_image, to_image
from runtime.pipelines.samplers import make_rng, make_sampler, standard_normal
from runtime.pipelines.schedules import NoiseSchedule
from runtime.pipelines.tokenizer import END_TOKEN_ID, ClipTokenizer

Progress = Callable[[int, int, float], None]  # (step done, steps, seconds this step)


@dataclass
class Result:
    image: np.ndarray  # uint8 [H, W, 3]
    latents: np.ndarray  # f32 [1, 4, h, w], as the sampler left them (before the VAE's scaling factor)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seed: int = 0


class StableDiffusion:
    def __init__(self, model) -> None:
        """``model``: a loaded artifact (``runtime.load``) compiled from an SD checkpoint."""
        self.model = model
        pipe = model.manifest.get("pipeline")
        if not pipe or pipe.get("kind") != "stable-diffusion":
            raise RuntimeFailure(
                f"{model.path}: not a Stable Diffusion artifact (it holds {sorted(model.functions)}); compile an SD "
                "checkpoint for txt2img"
            )
        self.pipe = pipe
        vocab = Path(model.path) / pipe["vocab"]["file"]
        self.tokenizer = ClipTokenizer(vocab, pad_token_id=pipe["vocab"]["pad_token_id"])
        # One token-id input per text encoder (SDXL: CLIP-L pads with the end token, OpenCLIP bigG with 0), each
        # with its own padding; older artifacts name one, padded as the vocabulary entry says.
        inputs = pipe.get("text_inputs") or [{"input": "input_ids", "pad_token_id": pipe["vocab"]["pad_token_id"]}]
        self.text_inputs: list[tuple[str, ClipTokenizer]] = []
        for spec in inputs:
            pad = int(spec["pad_token_id"])
            tok = self.tokenizer if pad == self.tokenizer.pad_token_id else ClipTokenizer(vocab, pad_token_id=pad)
            self.text_inputs.append((str(spec["input"]), tok))
        # diffusers' SDXL pipelines encode an empty negative prompt as zeros (force_zeros_for_empty_prompt)
        self.zero_empty_negative = bool(pipe.get("force_zeros_for_empty_prompt", False))
        self.schedule = NoiseSchedule.from_config(pipe.get("scheduler") or {})
        self.scaling = float(pipe["vae_scaling_factor"])
        self.batch = int(pipe.get("batch") or 2)

    # --- sizes ---------------------------------------------------------------------------------------------------
    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(s) for s in self.pipe.get("sizes") or []]

    def _fn(self, kind: str, width: int, height: int) -> str:
        name = f"{kind}_{width}x{height}"
        tiling = self.pipe.get("vae_tiling") or {}
        tiled = {"decode_latents": tiling.get("functions") or {}, "encode_image": tiling.get("encode_functions") or {}}
        if name not in self.model.functions and f"{width}x{height}" not in tiled.get(kind, {}):
            have = ", ".join(f"{w}x{h}" for w, h in self.sizes()) or "none"
            raise RuntimeFailure(
                f"{self.model.path} was compiled for image sizes {have}, not {width}x{height}; pick one of those with "
                f"-W/-H, or recompile with --size {width}x{height}"
            )
        return name

    # --- stages --------------------------------------------------------------------------------------------------
    def encode_prompts(self, prompt: str, negative: str, warnings: list[str]):
        """The context [2, 77, D] for (negative, prompt): on the device unless emphasis weights rescale it or an
        empty negative prompt is zeros; with an SDXL model, (context, pooled [2, P]) — the pooled text embedding
        the UNet's added conditioning takes."""
        toks = [self.tokenizer.tokenize(negative), self.tokenizer.tokenize(prompt)]
        for which, t in zip(("negative prompt", "prompt"), toks):
            warnings += [f"{which}: {w}" for w in t.warnings]
        feeds = {}
        for name, tok in self.text_inputs:
            both = toks if tok is self.tokenizer else [tok.tokenize(negative), tok.tokenize(prompt)]
            feeds[name] = np.stack([t.ids for t in both]).astype(np.int32)
        if "eos_mask" in self.model.functions["encode_text"]["inputs"]:
            # the pooled output reads each prompt's first end token: 1.0 there, 0.0 elsewhere (every tokenized
            # prompt has one: the tokenizer always ends it with the end token, whatever it pads with)
            ids = feeds[self.text_inputs[-1][0]]
            mask = np.zeros(ids.shape, np.float32)
            mask[np.arange(ids.shape[0]), np.argmax(ids == END_TOKEN_ID, axis=1)] = 1.0
            feeds["eos_mask"] = mask
        weights = np.stack([t.weights for t in toks])
        outputs = self.model.functions["encode_text"]["outputs"]
        pooled_out = "text_embeds" in outputs
        zero_negative = self.zero_empty_negative and negative == ""
        if np.all(weights == 1.0) and not zero_negative and not pooled_out:
            return self.model.call("encode_text", feeds, download=False)["last_hidden_state"]
        out = self.model.call("encode_text", feeds)
        hidden = out["last_hidden_state"]
        if not np.all(weights == 1.0):
            # stable-diffusion.cpp's emphasis: scale each token's hidden state by its weight, then restore the mean.
            scaled = np.empty_like(hidden)
            for i in range(hidden.shape[0]):
                h = hidden[i]
                before = h.mean()
                h = h * weights[i][:, None]
                scaled[i] = h * (before / h.mean()) if h.mean() != 0 else h
            hidden = scaled
        pooled = out.get("text_embeds")
        if zero_negative:
            hidden = hidden.copy()
            hidden[0] = 0.0
            if pooled is not None:
                pooled = pooled.copy()
                pooled[0] = 0.0
        return (hidden, pooled) if pooled_out else hidden

    def _added_conditioning(self, fn: str, pooled, width: int, height: int) -> dict[str, np.ndarray]:
        """SDXL's added conditioning for (negative, prompt): the pooled embeddings and the size/crop ids
        (original size, crop top-left, target size, as (height, width) pairs: diffusers' add_time_ids with the
        image's own size and no crop)."""
        ins = self.model.functions[fn]["inputs"]
        if "time_ids" not in ins:
            return {}
        n = int(ins["time_ids"]["shape"][1])
        ids = [height, width, 0, 0, height, width]
        if n != len(ids):
            raise RuntimeFailure(
                f"{self.model.path}: its UNet takes {n} size/crop ids; this runtime makes SDXL base's 6 (original "
                "size, crop, target size)"
            )
        return {"text_embeds": np.asarray(pooled, np.float32), "time_ids": np.tile(np.float32(ids), (2, 1))}

    def denoise(
        self,
        context,
        x: np.ndarray,
        *,
        steps: int,
        cfg_scale: float,
        method: str,
        scheduler: str | None,
        rng: np.random.Generator,
        width: int,
        height: int,
        x0: np.ndarray | None = None,
        strength: float = 1.0,
        progress: Progress | None = None,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        fn = self._fn("denoise", width, height)
        added: dict[str, np.ndarray] = {}
        if isinstance(context, tuple):
            context, pooled = context
            added = self._added_conditioning(fn, pooled, width, height)
        sampler = make_sampler(method, self.schedule, steps, scheduler, rng=rng, strength=strength)
        lat = sampler.initial_latents(x, x0)
        n = len(sampler)
        step_times = []
        for i, t in enumerate(sampler.timesteps):
            t0 = time.perf_counter()
            xin = sampler.scale_model_input(lat, i)
            both = np.concatenate([xin, xin]).astype(np.float32)
            tt = np.full((2,), t, np.float32)
            eps = self.model.call(fn, {"x": both, "t": tt, "context": context, **added})["eps"]
            uncond, cond = eps[:1], eps[1:]
            guided = uncond + cfg_scale * (cond - uncond)
            lat = sampler.step(guided, i, lat)
            dt = time.perf_counter() - t0
            step_times.append(dt)
            if progress:
                progress(i + 1, n, dt)
        if timings is not None:
            timings["steps"] = n
            timings["denoise_s"] = float(sum(step_times))
            timings["step_s"] = float(np.median(step_times)) if step_times else 0.0
        return lat.astype(np.float32)

    def decode(self, latents: np.ndarray, width: int, height: int) -> np.ndarray:
        tiling = self.pipe.get("vae_tiling") or {}
        fn = (tiling.get("functions") or {}).get(f"{width}x{height}")
        if fn is not None:
            img = decode_tiled(
                lambda z: self.model.call(fn, {"latents": z})["image"], latents, tiling["tile"], tiling["overlap"]
            )
        else:
            img = self.model.call(self._fn("decode_latents", width, height), {"latents": latents})["image"]
        if not np.isfinite(img).all():
            raise RuntimeFailure("the VAE decoded NaN or infinite values (the latents diverged); try fewer steps")
        return img

    def encode_image(self, rgb: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """An image's latents as diffusers' img2img takes them: a sample of the encoder's distribution (noise from
        the pipeline's generator, drawn before the initial noise), times the scaling factor."""
        x = from_image(rgb, width, height)
        tiling = self.pipe.get("vae_tiling") or {}
        fn = (tiling.get("encode_functions") or {}).get(f"{width}x{height}")
        if fn is not None:
            mom = encode_tiled(
                lambda im: self.model.call(fn, {"image": im})["moments"], x, tiling["tile"], tiling["overlap"]
            )
        else:
            mom = self.model.call(self._fn("encode_image", width, height), {"image": x})["moments"]
        c = mom.shape[1] // 2
        mean, logvar = mom[:, :c], np.clip(mom[:, c:], -30.0, 20.0)
        sample = mean + np.exp(0.5 * logvar) * standard_normal(rng, mean.shape)
        return (sample * self.scaling).astype(np.float32)

    # --- whole pipelines -----------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        negative: str = "",
        *,
        steps: int = 20,
        cfg_scale: float = 7.0,
        method: str = "euler_a",
        scheduler: str | None = None,
        seed: int = 42,
        width: int = 512,
        height: int = 512,
        init_noise: np.ndarray | None = None,
        init_image: np.ndarray | None = None,
        strength: float = 0.75,
        progress: Progress | None = None,
    ) -> Result:
        """txt2img, or img2img when ``init_image`` (uint8 [H, W, 3]) is given. ``init_noise`` (unit variance,
        [1, 4, H/8, W/8]) replaces the seeded initial noise, as diffusers' ``latents`` argument does."""
        fn = self._fn("denoise", width, height)
        shape = tuple(self.model.functions[fn]["inputs"]["x"]["shape"])
        lshape = (1, *shape[1:])
        t_all = time.perf_counter()
        timings: dict[str, float] = {}
        warnings: list[str] = []
        rng = make_rng(seed)
        t0 = time.perf_counter()
        context = self.encode_prompts(prompt, negative, warnings)
        timings["encode_text_s"] = time.perf_counter() - t0
        x0 = None
        if init_image is not None:
            t0 = time.perf_counter()
            x0 = self.encode_image(init_image, width, height, rng)
            timings["encode_image_s"] = time.perf_counter() - t0
        else:
            strength = 1.0
        if init_noise is not None:
            noise = np.asarray(init_noise, np.float32)
            if noise.shape != lshape:
                raise RuntimeFailure(f"initial noise has shape {list(noise.shape)}; this size needs {list(lshape)}")
        else:
            noise = standard_normal(rng, lshape)
        lat = self.denoise(
            context,
            noise,
            steps=steps,
            cfg_scale=cfg_scale,
            method=method,
            scheduler=scheduler,
            rng=rng,
            width=width,
            height=height,
            x0=x0,
            strength=strength,
            progress=progress,
            timings=timings,
        )
        t0 = time.perf_counter()
        img = self.decode(lat, width, height)
        timings["decode_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_all
        return Result(to_image(img), lat, timings, warnings, seed)


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: every (tile - overlap), the last one flush with the edge."""
    if n <= tile:
        return [0]
    step = tile - overlap
    out = list(range(0, n - tile, step))
    return out + [n - tile]


def _ramp(n: int, ov: int, left: bool, right: bool) -> np.ndarray:
    """Blend weights along one axis of a tile: rising over the overlap where a neighbour precedes, falling where
    one follows, 1 elsewhere (never 0, so every pixel has weight)."""
    w = np.ones(n, np.float32)
    r = (np.arange(ov, dtype=np.float32) + 0.5) / ov
    if left:
        w[:ov] = np.minimum(w[:ov], r)
    if right:
        w[n - ov :] = np.minimum(w[n - ov :], r[::-1])
    return w


def _blend_tiles(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int, overlap: int, per: int
) -> np.ndarray:
    """Run ``fn`` on overlapping tiles laid on the latent grid — tile x tile latent pixels, ``per`` input pixels
    each — and blend its outputs linearly across the overlaps (its output pixels per latent pixel: whatever ``fn``
    returns per tile)."""
    h, w = x.shape[2] // per, x.shape[3] // per
    out = wsum = None
    for y in _starts(h, tile, overlap):
        for x0 in _starts(w, tile, overlap):
            part = fn(np.ascontiguousarray(x[:, :, per * y : per * (y + tile), per * x0 : per * (x0 + tile)]))
            f = part.shape[-1] // tile
            if out is None:
                out = np.zeros((1, part.shape[1], h * f, w * f), np.float64)
                wsum = np.zeros((h * f, w * f), np.float64)
            wy = _ramp(tile * f, overlap * f, y > 0, y + tile < h)
            wx = _ramp(tile * f, overlap * f, x0 > 0, x0 + tile < w)
            m = wy[:, None] * wx[None, :]
            out[:, :, y * f : (y + tile) * f, x0 * f : (x0 + tile) * f] += part * m
            wsum[y * f : (y + tile) * f, x0 * f : (x0 + tile) * f] += m
    return (out / wsum).astype(np.float32)


def decode_tiled(
    decode: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, tile: int, overlap: int
) -> np.ndarray:
    """Decode latents [1, C, h, w] in overlapping tiles of tile x tile latent pixels and blend them linearly across
    the overlaps (as stable-diffusion.cpp's and diffusers' tiled VAE decoders do). Not identical to a whole decode:
    each tile's group norms see only that tile, which the overlap and blending hide."""
    return _blend_tiles(decode, latents, tile, overlap, 1)


def encode_tiled(encode: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """Encode an image [1, 3, H, W] in overlapping tiles of 8 * tile pixels and blend the tiles' moments (mean and
    log-variance) linearly across the overlaps in latent space, as stable-diffusion.cpp's tiled encoder does.
    Like the tiled decode, not identical to a whole encode: each tile normalises its own groups."""
    return _blend_tiles(encode, image, tile, overlap, 8)
