"""Backend capabilities as data (capabilities.json): which ops and weight types have native kernels per backend."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sdcompile.errors import OptionError

TABLE = Path(__file__).with_name("capabilities.json")
TARGETS = ("cpu", "vulkan", "cuda")


@dataclass(frozen=True)
class Backend:
    name: str
    ops: frozenset[str]
    native: dict[str, frozenset[str]]  # op -> weight types with a native kernel
    why_not: dict[str, str]  # weight type (or "*") -> why there is no native kernel
    max_buffer_bytes: int | None = None  # the largest single buffer a kernel may bind (None: no limit)
    # storage types of float activations whose kernel cases all passed (f32 always), and why the others failed
    act_dtypes: tuple[str, ...] = ("float32",)
    act_why_not: dict[str, str] | None = None

    def has_kernel(self, op: str, wtype: str | None = None) -> bool:
        if op not in self.ops:
            return False
        return wtype is None or op not in self.native or wtype in self.native[op]

    def reason(self, wtype: str) -> str:
        return self.why_not.get(wtype, self.why_not.get("*", "no native kernel"))


@cache
def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def backend(name: str, table: Path = TABLE) -> Backend:
    data = _load(str(table))
    if name not in data or name.startswith("_"):
        raise OptionError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    d = data[name]
    native = {op: frozenset(d[op]) for op in d["ops"] if op in d}
    return Backend(
        name,
        frozenset(d["ops"]),
        native,
        dict(d.get("why_not", {})),
        d.get("max_buffer_bytes"),
        tuple(d.get("act_dtypes", ["float32"])),
        dict(d.get("act_why_not", {})),
    )
