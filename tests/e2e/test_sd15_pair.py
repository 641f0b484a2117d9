"""benchmarks/sd15_pair.py: per-round ratios against the reference variant, from sd15.py result files (synthetic
records here: the combination, not the measurement, is under test), and its usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import load_benchmark


def _round(path: Path, medians: dict[str, float], peaks: tuple[float, float], stall: float = 1.0) -> Path:
    recs = [
        {"impl": "peak", "phase": ph, "work": "fma", "wtype": w, "gflops": g}
        for ph, g in zip(("start", "end"), peaks)
        for w, g in (("f32", g), ("bf16", g / 2))
    ]
    for v, s in medians.items():
        recs.append({"impl": v.split("-")[0], "variant": v, "work": "unet", "size": 256, "median_s": s, "min_s": s})
        recs[-1]["cpu_stall_pct"] = stall if v == "onnxruntime-f32" else 1.0
    doc = {
        "created": "2026-12-06T00:00:00Z",
        "config": {"commit": "abc"},
        "machine": {"cpu": {"model": "x", "usable_cores": 2, "flags": ["avx512f"]}},
        "records": recs,
    }
    path.write_text(json.dumps(doc))
    return path


def test_ratios_per_round_and_median(tmp_path):
    m = load_benchmark("sd15_pair")
    r1 = _round(tmp_path / "r1.json", {"sdcompile-f32": 2.0, "onnxruntime-f32": 2.2}, (400.0, 410.0))
    r2 = _round(tmp_path / "r2.json", {"onnxruntime-f32": 1.5, "sdcompile-f32": 1.0}, (450.0, 470.0), stall=6.0)
    r3 = _round(tmp_path / "r3.json", {"sdcompile-f32": 2.0, "onnxruntime-f32": 1.8}, (420.0, 415.0))
    out = tmp_path / "pair.json"
    assert m.main(["--combine", str(r1), str(r2), str(r3), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["order"] for r in res["rounds"]][1] == ["onnxruntime-f32", "sdcompile-f32"]
    assert res["rounds"][0]["fma_f32_peak"] == {"start": 400.0, "end": 410.0}  # f32's, not bf16's
    md = out.with_suffix(".md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| sdcompile-f32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["2.000", "1.000", "2.000"]
    assert cells[4] == "1.10×, 1.50×, 0.90×" and cells[5] == "1.10×"
    ort = next(line for line in md.splitlines() if line.startswith("| onnxruntime-f32"))
    assert "1.500 †" in ort and ort.count("†") == 1  # the disturbed round is marked


def test_usage_errors(tmp_path, capsys):
    m = load_benchmark("sd15_pair")
    with pytest.raises(SystemExit) as e:
        m.main(["--rounds", "0", "--json", str(tmp_path / "x.json")])
    assert e.value.code == 2 and "--rounds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        m.main(["--combine", str(tmp_path / "missing.json"), "--json", str(tmp_path / "x.json")])
    assert "no such round file" in str(e.value.code)
