#!/usr/bin/env python3
"""Mutation-fuzz sdcompile's weight-file readers (safetensors, GGUF, .ckpt, ONNX).

Every mutant of a small valid file must either load (every tensor readable, consistent with its info) or fail with
one SdcompileError naming the file. Anything else - another exception, a MemoryError under the workers' memory cap,
a crash or a hang - is an escape; escaping mutants are saved into tests/fuzz/corpus/<format>/, which the test suite
replays.

  scripts/fuzz_formats.py --count 12500                  # 12,500 mutants of each format, seed 1
  scripts/fuzz_formats.py --format ckpt --seed 7 --count 100000 --json out.json
  scripts/fuzz_formats.py --replay                       # replay the corpus
  scripts/fuzz_formats.py --replay --sdcompile-from DIR  # ... against another copy of sdcompile (an older one)
  scripts/fuzz_formats.py --write-crafted                # (re)write the hand-made regression cases into the corpus
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--format", default="all", choices=["all", "safetensors", "gguf", "ckpt", "onnx"],
                    help="which reader to fuzz (default: all four)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=1, help="campaign seed: mutant i of a format depends only on it")
    ap.add_argument("--count", type=int, default=2000, help="mutants per format (default 2000)")
    ap.add_argument("--start", type=int, default=0, help="index of the first mutant (resume or shard a campaign)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds one file may take before it counts as a hang")
    ap.add_argument("--memory-mb", type=int, default=512,
                    help="memory a worker may allocate beyond its start-up size (default 512)")  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="write counts and escapes as JSON ('-' for stdout)")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="corpus folder (default tests/fuzz/corpus)")
    ap.add_argument("--no-save", action="store_true", help="do not save escaping mutants into the corpus")
    ap.add_argument("--max-per-signature", type=int, default=2,
                    help="escaping mutants saved per distinct failure (exception type and place; default 2)")  # fmt: skip
    ap.add_argument("--replay", action="store_true", help="replay the corpus instead of mutating")
    ap.add_argument("--write-crafted", action="store_true",
                    help="write the hand-made regression cases (tests/fuzz/crafted.py) into the corpus and stop")  # fmt: skip
    ap.add_argument("--label", default="this checkout", help="what was fuzzed, for the JSON report")
    ap.add_argument("--sdcompile-from", type=Path, metavar="DIR",
                    help="import sdcompile from DIR (a folder holding an sdcompile/ package), e.g. an unfixed copy")  # fmt: skip
    return ap


def signature(detail: str) -> str:
    """What kind of escape: the exception type and where it came from, without the names and numbers that vary."""
    for fixed in (
        "inconsistent: a tensor name",
        "inconsistent",
        r"MemoryError behind \w+",
        r"\w+ without the file name",
    ):
        m = re.match(fixed, detail)
        if m:
            return m.group(0)
    head = re.match(r"(\w+)", detail)
    where = re.search(r"\(([\w.<> ]+:\d+)\)$", detail)
    return f"{head.group(1) if head else detail[:30]} at {where.group(1) if where else '?'}"


def _save(corpus: Path, fmt: str, data: bytes, meta: dict) -> Path:
    from tests.fuzz.seeds import EXT

    d = corpus / fmt
    d.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = d / f"s{meta['seed']}-i{meta['index']}-{digest}{EXT[fmt]}"
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def write_crafted(corpus: Path) -> list[Path]:
    from tests.fuzz.crafted import CRAFTED

    out = []
    for name, (fmt, build) in CRAFTED.items():
        p = corpus / fmt / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(build())
        out.append(p)
    return out


def corpus_files(corpus: Path, formats: list[str]) -> list[tuple[str, Path]]:
    from tests.fuzz.seeds import EXT

    return [(f, p) for f in formats for p in sorted((corpus / f).glob("*" + EXT[f]))]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sdcompile_from:
        sys.path.insert(0, str(args.sdcompile_from.resolve()))
    sys.path.insert(1 if args.sdcompile_from else 0, str(ROOT))
    import sdcompile
    from tests.fuzz.harness import OUTCOMES, run_tasks
    from tests.fuzz.mutate import mutant
    from tests.fuzz.seeds import FORMATS, build_seeds

    formats = list(FORMATS) if args.format == "all" else [args.format]
    if args.write_crafted:
        for p in write_crafted(args.corpus):
            print(p.relative_to(args.corpus))
        return 0
    print(f"sdcompile from {Path(sdcompile.__file__).parent}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="fuzz-formats-") as tmp:
        work = Path(tmp)
        seeds = build_seeds(work / "seeds", tuple(formats))
        if args.replay:
            files = corpus_files(args.corpus, formats)
            tasks = [("file", f, str(p)) for f, p in files]
        else:
            tasks = [("mutant", f, args.seed, i) for f in formats for i in range(args.start, args.start + args.count)]
        done = [0]
        t0 = time.monotonic()

        def progress(_r) -> None:
            done[0] += 1
            if done[0] % 2000 == 0:
                print(f"  {done[0]}/{len(tasks)} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)

        results = run_tasks(
            tasks, seeds, work, jobs=args.jobs, timeout=args.timeout, memory_mb=args.memory_mb, on_result=progress
        )
        seconds = time.monotonic() - t0

        per_format = {f: {"files" if args.replay else "mutants": 0, **{o: 0 for o in OUTCOMES}} for f in formats}
        escapes = []
        saved: Counter = Counter()
        for r in results:
            c = per_format[r.fmt]
            c["files" if args.replay else "mutants"] += 1
            c[r.outcome] += 1
            if r.outcome in ("loaded", "clean"):
                continue
            sig = f"{r.fmt}: {r.outcome}: {signature(r.detail)}"
            detail = r.detail.replace(str(work), "<work>")  # the temporary folder means nothing elsewhere
            entry = {"format": r.fmt, "outcome": r.outcome, "detail": detail, "signature": sig}
            if r.task[0] == "mutant":
                m = mutant(r.fmt, seeds[r.fmt], r.task[2], r.task[3])
                entry.update(seed=r.task[2], index=r.task[3], how=m.how)
                if not args.no_save and saved[sig] < args.max_per_signature:
                    saved[sig] += 1
                    meta = {k: entry[k] for k in ("format", "seed", "index", "how", "outcome", "detail")}
                    entry["saved"] = str(_save(args.corpus, r.fmt, m.data, meta).relative_to(args.corpus))
            else:
                entry["file"] = str(Path(r.task[2]).name)
            escapes.append(entry)

    by_signature = Counter(e["signature"] for e in escapes)
    examples: dict[str, list] = {}
    for e in escapes:
        ex = examples.setdefault(e["signature"], [])
        if len(ex) < 3:
            ex.append({k: v for k, v in e.items() if k != "signature"})
    report = {
        "mode": "replay" if args.replay else "mutate",
        "seed": None if args.replay else args.seed,
        "count_per_format": None if args.replay else args.count,
        "jobs": args.jobs,
        "seconds": round(seconds, 1),
        "label": args.label,
        "python": platform.python_version(),
        # the files mutated, so two campaigns (before and after a fix) can be shown to start from the same bytes
        "seed_files_sha256": {f: [hashlib.sha256(b).hexdigest()[:16] for b in seeds[f]] for f in formats},
        "per_format": per_format,
        "escapes": len(escapes),
        "escape_kinds": dict(by_signature.most_common()),
        "escape_examples": examples,
    }
    for f, c in per_format.items():
        print(f"{f:12s} " + "  ".join(f"{k} {v}" for k, v in c.items()), file=sys.stderr)
    for sig, n in by_signature.most_common(30):
        print(f"  {n:6d}  {sig}", file=sys.stderr)
    print(f"{len(escapes)} escapes in {seconds:.0f} s", file=sys.stderr)
    if args.json == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
