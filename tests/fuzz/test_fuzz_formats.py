"""Mutation fuzzing of the weight-file readers, at CI size: a few thousand mutants per format, every one loading or
failing with an SdcompileError that names the file, in workers whose memory is capped (see harness.py). The corpus of
past escapes and the hand-made regression cases are replayed the same way. scripts/fuzz_formats.py runs longer
campaigns with other seeds."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from sdcompile.errors import FormatError
from tests.fuzz import harness
from tests.fuzz.crafted import CRAFTED
from tests.fuzz.mutate import mutant
from tests.fuzz.seeds import EXT, FORMATS, build_seeds

CORPUS = Path(__file__).parent / "corpus"
CI_SEED = 2024
CI_COUNT = 2500  # per format: about 5 s each on two busy cores


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, list[bytes]]:
    return build_seeds(tmp_path_factory.mktemp("seeds"))


def _report(results: list[harness.Result], limit: int = 8) -> str:
    bad = [r for r in results if r.outcome not in ("loaded", "clean")]
    lines = [f"{len(bad)} of {len(results)} escaped; first ones:"]
    for r in bad[:limit]:
        lines.append(f"  {r.task} {r.outcome}: {r.detail[:300]}")
    lines.append("reproduce: scripts/fuzz_formats.py --format FMT --seed SEED --start INDEX --count 1")
    return "\n".join(lines)


def _normalized(msg: str) -> str:
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'X'", msg.split(": ", 1)[-1]))[:60]


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutants_load_or_fail_cleanly(fmt, seeds, tmp_path):
    results = harness.run_tasks(harness.mutant_tasks(fmt, CI_SEED, CI_COUNT), seeds, tmp_path, jobs=2)
    assert len(results) == CI_COUNT
    assert all(r.outcome in ("loaded", "clean") for r in results), _report(results)
    # The mutants must reach past the first check of each reader: some still load, and the refusals are many
    # different ones (a fuzzer whose every mutant fails at the magic number tests nothing).
    c = Counter(r.outcome for r in results)
    assert c["loaded"] >= CI_COUNT // 20, c
    kinds = {_normalized(r.detail) for r in results if r.outcome == "clean"}
    assert len(kinds) >= 50, sorted(kinds)


def test_corpus_and_crafted_cases_replay_cleanly(seeds, tmp_path):
    crafted = tmp_path / "crafted"
    tasks = []
    for name, (fmt, build) in CRAFTED.items():
        p = crafted / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(build())
        tasks.append(("file", fmt, str(p)))
    for fmt in FORMATS:
        tasks += [("file", fmt, str(p)) for p in sorted((CORPUS / fmt).glob("*" + EXT[fmt]))]
    # every crafted case is also kept in the corpus, as written by scripts/fuzz_formats.py --write-crafted
    kept = {p.name for p in CORPUS.glob("*/*")}
    assert set(CRAFTED) <= kept, sorted(set(CRAFTED) - kept)
    results = harness.run_tasks(tasks, seeds, tmp_path, jobs=2)
    assert len(results) == len(tasks) >= 2 * len(CRAFTED)
    assert all(r.outcome in ("loaded", "clean") for r in results), _report(results, limit=40)


def test_mutants_are_reproducible(seeds, tmp_path):
    again = build_seeds(tmp_path / "again")
    assert again == seeds  # the seed files are the same bytes on every build
    for fmt in FORMATS:
        a = [mutant(fmt, seeds[fmt], 5, i) for i in range(50)]
        assert a == [mutant(fmt, seeds[fmt], 5, i) for i in range(50)]
        b = [mutant(fmt, seeds[fmt], 6, i) for i in range(50)]
        assert sum(x.data != y.data for x, y in zip(a, b)) > 40
        assert sum(m.data not in seeds[fmt] for m in a) > 45  # a mutant differs from every seed file


def test_check_classifies_outcomes(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"anything")

    def opener(exc):
        def open_store(p):
            raise exc

        return open_store

    import sdcompile.formats as formats

    cases = [
        (FormatError(f"{path}: bad header"), "clean"),
        (FormatError("bad header"), "escape"),  # does not name the file
        (KeyError("w"), "escape"),
        (ValueError("numpy says no"), "escape"),
    ]
    for exc, outcome in cases:
        monkeypatch.setattr(formats, "open_store", opener(exc))
        assert harness.check(path)[0] == outcome, exc
    # a MemoryError a reader turned into a clean error: still a reader that asked for more than the file justifies
    hidden = FormatError(f"{path}: corrupt pickle (MemoryError)")
    hidden.__context__ = MemoryError()
    monkeypatch.setattr(formats, "open_store", opener(hidden))
    outcome, detail = harness.check(path)
    assert outcome == "escape" and "MemoryError" in detail


def test_harness_catches_hangs_crashes_and_allocations(seeds, tmp_path):
    tasks = [
        ("probe", "gguf", "ok"),
        ("probe", "gguf", "hang"),
        ("probe", "gguf", "ok"),
        ("probe", "gguf", "crash"),
        ("probe", "gguf", "alloc"),
        ("probe", "gguf", "ok"),
    ]
    results = harness.run_tasks(tasks, seeds, tmp_path, jobs=1, timeout=3.0, memory_mb=256)
    outcomes = [r.outcome for r in results]
    alloc = "escape" if Path("/proc/self/statm").exists() else "loaded"  # the cap needs /proc to size itself
    assert outcomes == ["loaded", "hang", "loaded", "crash", alloc, "loaded"], [(r.outcome, r.detail) for r in results]
