"""Mutated manifests (digest recomputed, so every mutant reaches the structure, path and plan checks) load and run
correctly or are refused with the runtime's error type; none escapes as another exception (a traceback).

Mutations are seeded: a key deleted, a list shortened or an element repeated, a value replaced by one of the wrong
type, a number nudged, a name swapped for another name from the same manifest. The long run is
``python -m tests.artifact.test_manifest_fuzz ARTIFACT N``.

One kind of edit is beyond what a manifest check can see: a kernel's parameter shapes (and word counts) describe the compiled library,
and nothing in the manifest says what the library really takes. On the CPU, TVM's own argument check stops such a
kernel at its call (a ValueError naming the argument); that is counted apart, and only the digest and a signature
refuse those edits before then.
"""

from __future__ import annotations

import copy
import json
import random
import re
import sys
from pathlib import Path

import numpy as np

from runtime.errors import RuntimeFailure
from runtime.manifest import manifest_digest

SEED = 9
MUTANTS = 400  # about 5 ms each on the tiny CLIP artifact

_REPLACEMENTS = [None, -1, 0, 1, 2**40, 1.5, float("nan"), True, "", "x", "../x", "/etc/passwd", [], [1], {}, {"a": 1}]


def _paths(x, prefix=()):
    """Every (path, value) below ``x``, the digest and signature excepted."""
    if isinstance(x, dict):
        items = [(k, v) for k, v in x.items() if prefix or k not in ("digest", "signature")]
    elif isinstance(x, list):
        items = list(enumerate(x))
    else:
        return
    for k, v in items:
        yield (*prefix, k), v
        yield from _paths(v, (*prefix, k))


def _strings(m):
    return sorted(
        {v for _, v in _paths(m) if isinstance(v, str)}
        | {k for p, _ in _paths(m) for k in p[-1:] if isinstance(k, str)}
    )


def mutate(m: dict, rng: random.Random, strings: list[str]) -> tuple[dict, str]:
    m = copy.deepcopy(m)
    # Parts the runtime reads are mutated more often than the compile report, which it never reads.
    paths = [p for p, _ in _paths(m) if p[0] not in ("report", "source", "options") or rng.random() < 0.05]
    path = rng.choice(paths)
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    key, value = path[-1], parent[path[-1]]
    op = rng.randrange(6)
    if op == 0:
        del parent[key]
        what = "delete"
    elif op == 1 and isinstance(value, list) and value:
        parent[key] = value[: rng.randrange(len(value))] if rng.random() < 0.5 else [*value, value[-1]]
        what = "resize list"
    elif op == 2 and isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = value + rng.choice([-1, 1, -value, value, 3])
        what = "nudge"
    elif op == 3 and isinstance(value, str):
        parent[key] = rng.choice(strings)
        what = "swap name"
    elif op == 4 and isinstance(parent, dict):
        parent[rng.choice(strings)] = parent.pop(key)
        what = "rename key"
    else:
        parent[key] = copy.deepcopy(rng.choice(_REPLACEMENTS))
        what = "replace"
    m["digest"] = {"sha256": manifest_digest(m)}
    return m, f"{what} {'.'.join(map(str, path))}"


_KERNEL_PARAM_SHAPE = re.compile(r" kernels\.kernels\.[^.]+\.params\.\d+\.(shape|words)")


def run_fuzz(artifact: Path, work: Path, n: int, seed: int = SEED) -> tuple[dict[str, int], list[str]]:
    """Copy ``artifact`` to ``work``, try ``n`` mutants there; (outcome counts, escapes as 'mutation: error')."""
    import shutil

    import runtime

    if not work.exists():
        shutil.copytree(artifact, work)
    mf = work / "manifest.json"
    base = json.loads((artifact / "manifest.json").read_text())
    strings = _strings(base)
    spec = base["functions"]["encode_text"]["inputs"]["input_ids"]
    ids = np.zeros(spec["shape"], np.int64)
    rng = random.Random(seed)
    counts = {"ran": 0, "refused": 0, "kernel argument check": 0, "escaped": 0}
    escapes = []
    for _ in range(n):
        m, what = mutate(base, rng, strings)
        mf.write_text(json.dumps(m))
        try:
            model = runtime.load(work)
            model.call(next(iter(model.functions)), {"input_ids": ids}) if len(model.functions) == 1 else None
            counts["ran"] += 1
        except RuntimeFailure:
            counts["refused"] += 1
        except ValueError as e:
            if not (_KERNEL_PARAM_SHAPE.search(what) and " on argument #" in str(e)):
                counts["escaped"] += 1
                escapes.append(f"{what}: {type(e).__name__}: {e}"[:300])
            else:
                counts["kernel argument check"] += 1
        except Exception as e:  # what this test exists to catch
            counts["escaped"] += 1
            escapes.append(f"{what}: {type(e).__name__}: {e}"[:300])
    mf.write_text((artifact / "manifest.json").read_text())
    return counts, escapes


def test_mutated_manifests_are_refused_cleanly(clip_artifact, tmp_path):
    counts, escapes = run_fuzz(clip_artifact, tmp_path / "work", MUTANTS)
    assert not escapes, "\n".join(escapes[:20])
    assert counts["refused"] > MUTANTS // 2, counts  # the mutations reach the checks


if __name__ == "__main__":
    import tempfile

    counts, escapes = run_fuzz(Path(sys.argv[1]), Path(tempfile.mkdtemp()) / "work", int(sys.argv[2]))
    print(counts)
    print("\n".join(escapes))
