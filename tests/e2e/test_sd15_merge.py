"""benchmarks/sd15.py --merge: rows this run did not repeat are kept with their run's peaks, so a row from another
phase of the machine keeps the peak it ran with, and the table warns when the merged runs' peaks differ."""

from __future__ import annotations

from tests.e2e.helpers import load_benchmark


def _peak(g: float, run: str | None = None) -> dict:
    r = {"impl": "peak", "work": "fma", "wtype": "f32", "phase": "start", "gflops": g}
    return r | ({"run": run} if run else {})


def _row(variant: str, work: str, s: float, run: str | None = None) -> dict:
    r = {"impl": variant.split("-")[0], "variant": variant, "work": work, "size": 256, "median_s": s}
    return r | ({"run": run} if run else {})


def test_merge_keeps_old_peaks_and_unrepeated_rows():
    m = load_benchmark("sd15")
    old = {
        "created": "T1",
        "config": {"commit": "aaa"},
        "records": [_peak(475.0), _row("pytorch-f32", "unet", 1.6), _row("sdcompile-f16", "unet", 1.4)],
        "notes": ["old note"],
    }
    new = [_peak(380.0, "T2"), _row("sdcompile-f16", "unet", 1.8, "T2")]
    recs, runs, notes = m.merge_records(old, new)
    assert runs == [{"run": "T1", "commit": "aaa"}] and notes == ["old note"]
    # the old f16 row is replaced by this run's; the PyTorch row and the old peak stay, tagged with their run
    assert [(r.get("variant", "peak"), r["run"]) for r in recs] == [
        ("peak", "T1"),
        ("pytorch-f32", "T1"),
        ("peak", "T2"),
        ("sdcompile-f16", "T2"),
    ]
    assert m.peak_of(recs, "fma", "f32") == 475.0
    machine = {"cpu": {"usable_cores": 2}}
    warns = m.collect_warnings(machine, recs)
    assert any("merged runs ran at different speeds" in w and "T1 475" in w and "T2 380" in w for w in warns)
    # runs of the same speed: no warning
    assert not any(
        "different speeds" in w for w in m.collect_warnings(machine, m.merge_records(old, [_peak(470.0, "T2")])[0])
    )


def test_rounds_keep_each_measurements_fastest_round():
    """--rounds: each measurement keeps the round with its lowest median, every round's median listed; a failed
    round loses to a finished one, and a measurement that failed in every round stays failed."""
    m = load_benchmark("sd15")
    failed = {"impl": "sd.cpp", "variant": "sdcpp-f16", "work": "unet", "size": 256, "error": "crashed"}
    rounds = [
        [_row("sdcompile-f16", "unet", 1.8), _row("onnxruntime-f32", "unet", 1.5), failed],
        [failed, _row("onnxruntime-f32", "unet", 1.9), _row("sdcompile-f16", "unet", 1.6)],
    ]
    out = m.best_of_rounds(rounds)
    by = {r["variant"]: r for r in out}
    assert [r["variant"] for r in out] == ["sdcompile-f16", "onnxruntime-f32", "sdcpp-f16"]
    assert by["sdcompile-f16"]["median_s"] == 1.6 and by["sdcompile-f16"]["round_medians_s"] == [1.8, 1.6]
    assert by["onnxruntime-f32"]["median_s"] == 1.5
    assert by["sdcpp-f16"]["error"] == "crashed"
    ok = {**_row("sdcpp-f16", "unet", 7.0)}
    assert m.best_of_rounds([[failed], [ok]])[0]["median_s"] == 7.0
    assert m.best_of_rounds([rounds[0]]) == rounds[0]  # one round: as measured


def test_merged_table_names_each_rows_run():
    """A table of merged runs says which run each row is from: rows from older code must not pass for this run's."""
    m = load_benchmark("sd15")
    recs = [
        _peak(475.0, "2026-12-06T22:33:16Z"),
        _row("sdcompile-q8_0", "unet", 2.1, "2026-12-06T22:33:16Z"),
        _row("sdcompile-f16", "unet", 1.4, "2026-12-07T09:33:24Z"),
    ]
    runs = [{"run": "2026-12-06T22:33:16Z", "commit": "aaa"}, {"run": "2026-12-07T09:33:24Z", "commit": "bbb"}]
    result = {
        "created": "2026-12-07T09:33:24Z",
        "machine": {"cpu": {"model": "CPU", "usable_cores": 2, "flags": []}, "packages": {}},
        "config": {"threads": 2, "runs": runs},
        "records": recs,
    }
    table = [ln for ln in m.render_markdown(result).splitlines() if ln.startswith("| ")]
    assert table[0].rstrip(" |").endswith("run")
    assert any("sdcompile-q8_0" in ln and "12-06 22:33Z" in ln for ln in table)
    assert any("sdcompile-f16 " in ln and "12-07 09:33Z" in ln for ln in table)
    result["config"]["runs"] = runs[1:]  # one run: no column
    assert not any("12-07 09:33Z" in ln for ln in m.render_markdown(result).splitlines() if ln.startswith("| "))
