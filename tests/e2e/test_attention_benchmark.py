"""benchmarks/attention.py's parts that measure nothing: the UNet's attention shapes and calls, and the UNet row's
weighing (sum of FLOPs over sum of times, per call)."""

from __future__ import annotations

import pytest

from tests.e2e.helpers import load_benchmark


def test_shapes_are_sd15_unets():
    m = load_benchmark("attention")
    # SD1.5: 16 transformer blocks (down 2+2+2, middle 1, up 3+3+3), each a self- and a cross-attention
    for size in (256, 512):
        sh = m.shapes(size)
        assert sum(c for *_, c in sh) == 32
        assert {(S, Dh) for S, _, Dh, _ in sh} == {
            ((size // 8) ** 2, 40),
            ((size // 16) ** 2, 80),
            ((size // 32) ** 2, 160),
            ((size // 64) ** 2, 160),
        }
        assert {T for S, T, *_ in sh} == {S for S, *_ in sh} | {77}


def test_unet_row_weighs_by_calls_and_flops():
    m = load_benchmark("attention")
    recs = [
        {"size": 256, "variant": "bf16", "S": 1024, "calls": 5, "unit": "bf16", "min_ms": 2.0, "gflops": 100.0},
        {"size": 256, "variant": "bf16", "S": 64, "calls": 1, "unit": "bf16", "min_ms": 1.0, "gflops": 400.0},
        {"size": 256, "variant": "bf16", "S": 16, "calls": 1, "unit": "f32", "min_ms": 1.0, "gflops": 10.0},
    ]
    (row,) = m.unet_rows(recs, {"bf16": {"gflops": 500.0}, "f32": {"gflops": 250.0}})
    # FLOPs: 5 x 0.2 + 0.4 + 0.01 GFLOP over 10 + 1 + 1 ms
    assert row["ms"] == pytest.approx(12.0)
    assert row["gflops"] == pytest.approx(1.41 / 0.012)
    assert row["unit"] == "bf16" and row["pct_peak"] == pytest.approx(100 * 1.41 / 0.012 / 500)
