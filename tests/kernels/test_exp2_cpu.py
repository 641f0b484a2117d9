"""The attention kernels' exp2 (``schedules/cpu_attention_amx._exp2``): 2^y for y <= 0 from ``vreduceps`` (or a
floor), a polynomial on [0, 1) and ``vscalefps`` (AVX2: a floor and exponent bits), built for both ISAs, against
float64 numpy, within each degree's relative bound
(degree 5: the f32 kernel's, 2e-7; degree 4: the bf16 kernel's, whose probabilities are rounded to bf16 (2^-9)
afterwards, 4e-6), exactly 1 at y = 0 and exactly 0 for a masked score."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels import fixtures as fx

N = 16 * 4096
BOUND = {5: 2e-7, 4: 4e-6}


def _kernel(degree: int, isa: str):
    import tvm
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from schedules.cpu_attention_amx import _exp2
    from schedules.tir_build import vload, vstore
    from sdcompile.codegen import tvm_layer

    fx.skip_unless_host_runs(isa)
    target = tvm.target.Target(tvm_layer.cpu_target("haswell" if isa == "avx2" else None))
    with target, IRBuilder() as ib:
        with T.prim_func():
            T.func_name("exp2")
            a = T.arg("a", T.buffer((N,), "float32"))
            b = T.arg("b", T.buffer((N,), "float32"))
            with T.serial(0, N // 16) as i:
                vstore(b, 16 * i, _exp2(vload(a, 16 * i, 16), degree), 16)
    mod = tvm.IRModule({"exp2": ib.get()})
    return tvm.compile(mod, target=target)["exp2"]


@pytest.mark.parametrize("isa", list(fx.ISA_BUILDS))
@pytest.mark.parametrize("degree", [5, 4])
def test_exp2_within_its_bound(degree, isa):
    import tvm

    from schedules.cpu_attention_amx import MASKED

    rng = np.random.default_rng(degree)
    y = np.concatenate([-rng.uniform(0, 30, N - 64), -np.arange(32, dtype=np.float64) / 4, [0.0] * 16])
    y = np.concatenate([y[: N - 16], [MASKED] * 8, [-200.0, -149.5, -126.25, -1e-7, -0.5, -1.0, -0.999, -1.001]])
    y = y.astype(np.float32)
    out = tvm.runtime.tensor(np.zeros(N, np.float32))
    _kernel(degree, isa)(tvm.runtime.tensor(y), out)
    got = out.numpy().astype(np.float64)
    want = np.exp2(y.astype(np.float64))
    normal = want >= 2.0**-126  # below: denormal or flushed results, absolute error under 2^-126
    rel = np.abs(got[normal] - want[normal]) / want[normal]
    assert rel.max() <= BOUND[degree], rel.max()
    assert np.all(np.abs(got[~normal] - want[~normal]) <= 2.0**-126)
    assert np.all(got[y == 0] == 1.0) and np.all(got[y == MASKED] == 0.0)
    assert rel.max() > BOUND[degree] / 100  # the polynomial's own error shows: this is the kernel's exp2, not exp2f
