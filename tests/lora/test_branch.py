"""The runtime's LoRA branch on its own: for a linear and a strided, padded 3x3 convolution step, the branch's
addition equals the weight delta applied by the op registry's numpy reference (im2col in the kernel's order), for a
low-rank LoRA (run as down then up) and a LoHa (run as its full delta)."""

from __future__ import annotations

import numpy as np

from runtime.lora.branch import StepBranch, _conv_rows
from runtime.lora.parse import Layer, delta, factors
from sdcompile.ir.ops import im2col_np


class Host:
    """An executor whose buffers are numpy arrays (what the CPU executor's download/upload do)."""

    def download(self, buf, shape, dtype):
        return buf["a"].reshape(shape).astype(dtype).copy()

    def upload(self, buf, array):
        buf["a"] = np.asarray(array).reshape(buf["a"].shape)


class Dict:
    path, format = "mem", "safetensors"

    def __init__(self, t):
        self.t = t

    def names(self):
        return list(self.t)

    def array(self, n):
        return np.asarray(self.t[n], np.float32)


def _branch(f, layer, shape, strength, hook):
    conv = len(shape) == 4
    fac = factors(f, layer, shape)
    if fac is None:
        d = delta(f, layer, shape) * np.float32(strength)
        return StepBranch(hook, [(_conv_rows(d) if conv else d.reshape(shape[0], -1), None)])
    down, up, scale = fac
    return StepBranch(hook, [(_conv_rows(down) if conv else down, up * np.float32(strength * scale))])


def _run(branch, x, y0):
    ex, xb, yb = Host(), {"a": x.copy()}, {"a": y0.copy()}
    args = [(xb, x.shape, "float32"), (yb, y0.shape, "float32")]
    p = branch.before(ex, args)
    branch.after(ex, args, p)
    return yb["a"]


def test_linear_and_conv_branches():
    rng = np.random.default_rng(0)
    r, o, c = 3, 6, 5
    t = {
        "lora_unet_lin.lora_down.weight": rng.standard_normal((r, c)),
        "lora_unet_lin.lora_up.weight": rng.standard_normal((o, r)),
        "lora_unet_lin.alpha": np.array(1.5),
        "lora_unet_conv.lora_down.weight": rng.standard_normal((r, c, 3, 3)),
        "lora_unet_conv.lora_up.weight": rng.standard_normal((o, r, 1, 1)),
        "lora_unet_hada.hada_w1_a": rng.standard_normal((o, 2)),
        "lora_unet_hada.hada_w1_b": rng.standard_normal((2, c * 9)),
        "lora_unet_hada.hada_w2_a": rng.standard_normal((o, 2)),
        "lora_unet_hada.hada_w2_b": rng.standard_normal((2, c * 9)),
    }
    f = Dict(t)
    lay = {k: Layer(k, {}) for k in ("lin", "conv", "hada")}
    for name in t:
        k, role = name.removeprefix("lora_unet_").split(".", 1)
        lay[k].roles[{"lora_down.weight": "down", "lora_up.weight": "up"}.get(role, role)] = name
    # linear: y [2, 7, O] += 0.7 * x @ dW^T
    x = rng.standard_normal((2, 7, c)).astype(np.float32)
    y0 = rng.standard_normal((2, 7, o)).astype(np.float32)
    got = _run(_branch(f, lay["lin"], (o, c), 0.7, {"x": 0, "y": 1}), x, y0)
    dw = delta(f, lay["lin"], (o, c))
    np.testing.assert_allclose(got, y0 + 0.7 * x @ dw.T, rtol=1e-5, atol=1e-5)
    assert np.allclose(dw, 1.5 / r * t["lora_unet_lin.lora_up.weight"] @ t["lora_unet_lin.lora_down.weight"])
    # conv 3x3, stride 2, the VAE's one-sided padding: NHWC in, the kernel's layout
    geo = {"kh": 3, "kw": 3, "stride": 2, "pads": [0, 0, 1, 1]}
    x = rng.standard_normal((1, 8, 8, c)).astype(np.float32)
    for k in ("conv", "hada"):
        d4 = delta(f, lay[k], (o, c, 3, 3))
        cols = im2col_np(x, {**geo, "pads": tuple(geo["pads"])})
        y0 = rng.standard_normal((*cols.shape[:3], o)).astype(np.float32)
        hook = {"x": 0, "y": 1, "x_shape": list(x.shape), **geo}
        got = _run(_branch(f, lay[k], (o, c, 3, 3), 0.5, hook), x, y0)
        want = y0 + 0.5 * cols @ _conv_rows(d4).T
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
