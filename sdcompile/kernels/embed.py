"""Token + position embedding: y[m] = decode(tok)[ids[m]] + pos[m % S]."""

from __future__ import annotations

from tvm import te, tirx

from sdcompile.kernels.act import stored
from sdcompile.kernels.dequant import decode, lut_inputs
from sdcompile.kernels.spec import KernelSpec


def compute(spec: KernelSpec) -> list[te.Tensor]:
    M, S, V, D = (int(spec.attr(k)) for k in "MSVD")
    ps = {p.name: p for p in spec.params}
    ids = te.placeholder((M,), "int32", name="ids")
    tok = te.placeholder((ps["tok"].words(),), "uint32", name="tok")
    pos = te.placeholder((S, D), "float32", name="pos")
    wtype = str(spec.attr("wtype"))
    luts = lut_inputs(wtype)

    def body(m, d):
        # A bad id must not read outside the table (on a GPU that is a fault or garbage from another buffer).
        row = tirx.max(tirx.min(ids[m], V - 1), 0)
        return decode(wtype, tok, row, d, D, luts) + pos[m % S, d]

    y = te.compute((M, D), stored(spec, "y", body), name="y")
    return [ids, tok, pos, *luts, y]
