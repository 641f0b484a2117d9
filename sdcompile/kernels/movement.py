"""Data movement that cannot be a view: transpose, concat, nearest upsampling, and the slices/splits that are not one
contiguous run of their input. One stage per output, scheduled by the ``injective`` rules. (Reshape, and slices
that are contiguous runs, are views: the memory plan aliases them and no kernel runs.)"""

from __future__ import annotations

from tvm import te, tirx

from sdcompile.kernels.act import reads, stored
from sdcompile.kernels.dequant import let
from sdcompile.kernels.spec import KernelSpec


def compute(spec: KernelSpec) -> list[te.Tensor]:
    a = dict(spec.attrs)
    if spec.op == "transpose":
        shape, perm = tuple(a["shape"]), tuple(a["perm"])
        (xt,), (x,) = reads(spec, "x")
        out = tuple(shape[p] for p in perm)
        inv = [perm.index(d) for d in range(len(perm))]
        return [
            xt,
            te.compute(out, stored(spec, "y", lambda *i: x[tuple(i[inv[d]] for d in range(len(perm)))]), name="y"),
        ]
    if spec.op == "concat":
        outer, widths = a["outer"], tuple(a["widths"])
        xts, xs = reads(spec, *(f"x{i}" for i in range(len(widths))))

        # Select evaluates both sides, loads included: every input's column is clamped into its row. The loads are
        # bound before the selects, as TVM simplifies a select's branch under its condition and would drop the clamp
        # (x1[o, c - 1280] then read 5 KB before x1's start for c = 0, and faulted when that was unmapped).
        def safe(o, c):
            starts = [sum(widths[:i]) for i in range(len(widths))]

            def pick(vals):
                v = vals[-1]
                for i in range(len(widths) - 2, -1, -1):
                    v = tirx.Select(c < starts[i] + widths[i], vals[i], v)
                return v

            def load(i, vals):
                if i == len(widths):
                    return pick(vals)
                col = tirx.min(tirx.max(c - starts[i], 0), widths[i] - 1)
                return let(xs[i](o, col), lambda v: load(i + 1, [*vals, v]), f"x{i}v")

            return load(0, [])

        return [*xts, te.compute((outer, sum(widths)), stored(spec, "y", safe), name="y")]
    if spec.op == "slices":  # slice (one part) and split (several): parts along the middle axis of [outer, full, inner]
        (xt,), (x,) = reads(spec, "x")

        def part(k: int, st: int, w: int) -> te.Tensor:  # TE takes no default arguments in a compute's lambda
            return te.compute(
                (a["outer"], w, a["inner"]), stored(spec, f"y{k}", lambda o, j, i: x[o, st + j, i]), name=f"y{k}"
            )

        return [xt, *(part(k, st, w) for k, (st, w) in enumerate(zip(a["starts"], a["widths"])))]
    if spec.op == "upsample_nearest":
        B, H, W, C, f = (a[k] for k in ("B", "H", "W", "C", "f"))
        (xt,), (x,) = reads(spec, "x")
        return [
            xt,
            te.compute((B, H * f, W * f, C), stored(spec, "y", lambda b, i, j, c: x[b, i // f, j // f, c]), name="y"),
        ]
    raise ValueError(spec.op)
