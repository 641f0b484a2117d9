"""LoRA at run time: the low-rank branch y += s·up(down(x)) beside each adapted step of the plan.

The compiler recorded, for every linear/conv2d step, the weight it reads (``step["lora"]``: the weight, the argument
positions of x and y, a convolution's geometry) and, for the artifact, every adaptable weight with the names a LoRA
file may give it (``manifest["lora"]["targets"]``). Here the chosen LoRAs are matched against those names, and each
adapted step gets a branch: before the kernel runs, x's projection down(x) is taken (so a step whose output reuses
x's memory cannot spoil it); after it, s·up(·) is added to y. The base weights are never touched, so the branch is
exact on a quantized base, and another LoRA or strength is a new `set_loras` call, not a recompile.

The branch runs on the host in numpy, on copies of x and y: on the CPU executor those are plain memory reads; on
Vulkan and CUDA each adapted step costs a round trip of its input and output (correct, not fast: a device kernel
for the branch is future work). A convolution's down projection is the same KxK convolution as the step (numpy
im2col, in the kernel's (ky, kx, c) order); LoHa/LoKr layers have no low rank and run as their full delta.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.lora.errors import LoraError
from runtime.lora.match import alias_index, match
from runtime.lora.parse import delta, factors


def _im2col(x: np.ndarray, kh: int, kw: int, stride: int, pads) -> np.ndarray:
    """[B, H, W, C] -> [B, Ho, Wo, kh*kw*C] patches in (ky, kx, c) order, zero padded (the conv kernel's order)."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    _, h, w, _ = x.shape
    ho, wo = (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1
    cols = [
        xp[:, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride, :]
        for ky in range(kh)
        for kx in range(kw)
    ]
    return np.concatenate(cols, axis=-1)


@dataclass
class StepBranch:
    """The branches of one step: each (down [r, K], up [O, r] with strength and scale folded in); a full delta is
    (delta [O, K], None)."""

    hook: dict
    parts: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        h = self.hook
        if "kh" in h:
            x = _im2col(x.reshape(h["x_shape"]), h["kh"], h["kw"], h["stride"], h["pads"])
        return x.reshape(-1, x.shape[-1])

    def before(self, ex, args) -> list[np.ndarray]:
        buf, shape, dtype = _host_arg(ex, args[self.hook["x"]])
        x = self._rows(np.asarray(ex.download(buf, tuple(shape), dtype), np.float32))
        return [x @ down.T for down, _ in self.parts]

    def after(self, ex, args, projected: list[np.ndarray]) -> None:
        buf, shape, dtype = _host_arg(ex, args[self.hook["y"]])
        y = np.asarray(ex.download(buf, tuple(shape), dtype), np.float32)
        add = sum(p if up is None else p @ up.T for p, (_, up) in zip(projected, self.parts))
        y = y + add.reshape(y.shape)
        ex.upload(buf, y.astype(dtype))


def _host_arg(ex, arg):
    """A step argument the branch can copy to and from the host: the Vulkan executor copies whole buffers, so a view
    inside one (a slice the memory plan aliased) is refused there rather than read at the wrong place."""
    if getattr(arg[0], "offset", 0) and type(ex).__module__.endswith("vulkan"):
        raise LoraError("a runtime LoRA branch on a Vulkan artifact meets a sliced buffer; merge the LoRA instead")
    return arg


def _conv_rows(a: np.ndarray) -> np.ndarray:
    """[n, C, kh, kw] -> [n, kh*kw*C] in the kernel's (ky, kx, c) order."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(a.shape[0], -1)


@dataclass
class RuntimeLoras:
    """The LoRAs chosen for the next images, as branches per function and step; ``report`` says per LoRA what it
    adapted and what it left."""

    steps: dict[str, dict[int, StepBranch]]
    report: list[dict]


def hooks_of(functions: dict[str, dict]) -> dict[str, dict[int, dict]]:
    """{function: {step index: hook}}; a hook that does not fit its step means a damaged manifest."""
    out: dict[str, dict[int, dict]] = {}
    for fn, f in functions.items():
        for i, s in enumerate(f["steps"]):
            h = s.get("lora")
            if h is None:
                continue
            n = len(s["args"])
            ok = isinstance(h, dict) and isinstance(h.get("weight"), str)
            ok = ok and all(isinstance(h.get(k), int) and 0 <= h[k] < n for k in ("x", "y"))
            if ok and "kh" in h:
                ok = all(isinstance(h.get(k), int) and h[k] > 0 for k in ("kh", "kw", "stride"))
                ok = ok and len(h.get("pads", [])) == 4 and len(h.get("x_shape", [])) == 4
            if not ok:
                raise LoraError(f"function {fn!r} step {i}: its LoRA hook is damaged; recompile the artifact")
            out.setdefault(fn, {})[i] = h
    return out


def prepare(manifest: dict, loras: list[tuple[str | Path, float]], backend: str) -> RuntimeLoras:
    """Match ``loras`` ((file, strength) pairs) against an artifact and build its branches."""
    rec = manifest.get("lora")
    if not isinstance(rec, dict) or not rec.get("targets"):
        raise LoraError(
            "this artifact records no LoRA targets (it was compiled by an sdcompile without LoRA support); "
            "recompile it with --lora-apply-mode runtime"
        )
    targets: dict[str, dict] = rec["targets"]
    index = alias_index(targets)
    hooks = hooks_of(manifest["functions"])
    hooked = {h["weight"] for fh in hooks.values() for h in fh.values()}
    unhooked: dict[str, str] = rec.get("unhooked") or {}
    components = {a.split(":", 1)[0] for t in targets.values() for a in t["aliases"]}
    per_weight: dict[str, list[tuple[np.ndarray, np.ndarray | None]]] = {}
    report = []
    for path, strength in loras:
        m = match(path, targets, index, components, rec.get("ignored") or {})
        missing = sorted(set(m.layers) - hooked)
        if missing:
            why = "; ".join(f"{w}: {unhooked.get(w, 'no step reads it')}" for w in missing[:3])
            raise LoraError(
                f"LoRA {path} adapts {len(missing)} weights that this artifact has no runtime hook for ({why}); "
                "recompile with --lora-apply-mode runtime, or merge the LoRA at compile time (--lora)"
            )
        for name, layer in m.layers.items():
            shape = tuple(targets[name]["shape"])
            conv = len(shape) == 4
            f = factors(m.file, layer, shape)
            if f is None:  # LoHa / LoKr: the full delta
                d = delta(m.file, layer, shape) * np.float32(strength)
                part = (_conv_rows(d) if conv else d.reshape(shape[0], -1), None)
            else:
                down, up, scale = f
                down = _conv_rows(down) if conv else down
                part = (down.astype(np.float32), (up * np.float32(strength * scale)).astype(np.float32))
            per_weight.setdefault(name, []).append(part)
        report.append(
            {
                "file": Path(str(path)).name,
                "format": m.format,
                "strength": strength,
                "weights": len(m.layers),
                "unmatched": m.unmatched,
            }
        )
    steps: dict[str, dict[int, StepBranch]] = {}
    for fn, fh in hooks.items():
        for i, h in fh.items():
            if h["weight"] in per_weight:
                steps.setdefault(fn, {})[i] = StepBranch(h, per_weight[h["weight"]])
    return RuntimeLoras(steps, report)
