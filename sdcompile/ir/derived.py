"""Derived weights: a weight that is an expression of stored tensors, evaluated when the artifact is written.

A conv weight read as [O, C, KH, KW] and stored for the kernel as [O, KH*KW*C]; a slice of a fused qkv tensor; a
concatenation; a sum (LoRA: W + s * B @ A). Expressions are small frozen trees over `Tensor` leaves; nothing is read
until `evaluate` runs, and `describe` gives the report's one-line account of where a weight came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Tensor:
    store: Any  # sdcompile.formats.TensorStore
    key: str

    def evaluate(self) -> np.ndarray:
        return np.asarray(self.store.array(self.key), dtype=np.float32)

    def describe(self) -> str:
        return self.key


@dataclass(frozen=True, eq=False)
class Permute:
    x: Any
    perm: tuple[int, ...]

    def evaluate(self) -> np.ndarray:
        return np.ascontiguousarray(self.x.evaluate().transpose(self.perm))

    def describe(self) -> str:
        return f"permute({self.x.describe()}, {list(self.perm)})"


@dataclass(frozen=True, eq=False)
class Reshape:
    x: Any
    shape: tuple[int, ...]

    def evaluate(self) -> np.ndarray:
        return self.x.evaluate().reshape(self.shape)

    def describe(self) -> str:
        return f"reshape({self.x.describe()}, {list(self.shape)})"


@dataclass(frozen=True, eq=False)
class Slice:
    x: Any
    axis: int
    start: int
    stop: int

    def evaluate(self) -> np.ndarray:
        idx = [slice(None)] * (self.axis + 1)
        idx[self.axis] = slice(self.start, self.stop)
        return np.ascontiguousarray(self.x.evaluate()[tuple(idx)])

    def describe(self) -> str:
        return f"slice({self.x.describe()}, axis {self.axis}, {self.start}:{self.stop})"


@dataclass(frozen=True, eq=False)
class Concat:
    xs: tuple[Any, ...]
    axis: int

    def evaluate(self) -> np.ndarray:
        return np.concatenate([x.evaluate() for x in self.xs], axis=self.axis)

    def describe(self) -> str:
        return f"concat({', '.join(x.describe() for x in self.xs)}, axis {self.axis})"


@dataclass(frozen=True, eq=False)
class Add:
    xs: tuple[Any, ...]

    def evaluate(self) -> np.ndarray:
        out = self.xs[0].evaluate().astype(np.float32, copy=True)
        for x in self.xs[1:]:
            out += x.evaluate()
        return out

    def describe(self) -> str:
        return " + ".join(x.describe() for x in self.xs)


def conv_weight(store: Any, key: str, shape: tuple[int, ...]) -> Permute | Reshape:
    """A conv weight [O, C, KH, KW] as the conv2d kernel reads it: [O, KH*KW*C] (whole pixels of channels)."""
    o, c, kh, kw = shape
    return Reshape(Permute(Tensor(store, key), (0, 2, 3, 1)), (o, kh * kw * c))


def sources(expr: Any) -> list[Tensor]:
    """The stored tensors an expression reads."""
    if isinstance(expr, Tensor):
        return [expr]
    kids = getattr(expr, "xs", None) or (expr.x,)
    return [t for k in kids for t in sources(k)]
