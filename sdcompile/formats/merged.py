"""A tensor store made of several stores under new names: separate component files (stable-diffusion.cpp's
``--diffusion-model``, ``--vae``, ``--clip-l``) or a diffusers directory, presented under one checkpoint's names
(LDM single-file names) so one lifter reads every layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.formats.base import TensorInfo, TensorStore


class MergedStore(TensorStore):
    format = "merged"

    def __init__(self, path: Path, parts: list[tuple[TensorStore, dict[str, str]]]) -> None:
        """``parts``: (store, {name here: name in that store}); a later part overrides an earlier one's names (a
        separate VAE overrides the checkpoint's)."""
        super().__init__(path)
        self.parts = [s for s, _ in parts]
        self._where: dict[str, tuple[TensorStore, str]] = {}
        for store, names in parts:
            for here, there in names.items():
                self._where[here] = (store, there)
                i = store.info(there)
                self._infos[here] = TensorInfo(here, i.shape, i.dtype, i.nbytes)
            self.metadata.update(store.metadata)
        self.format = "+".join(dict.fromkeys(s.format for s in self.parts))

    def origin(self, name: str) -> tuple[TensorStore, str]:
        return self._where[name]

    def raw(self, name: str) -> np.ndarray:
        s, k = self._where[name]
        return s.raw(k)

    def array(self, name: str) -> np.ndarray:
        s, k = self._where[name]
        return s.array(k)

    def close(self) -> None:
        for s in self.parts:
            s.close()


def prefixed(store: TensorStore, prefix: str, strip: str = "") -> dict[str, str]:
    """{prefix + name without ``strip``: name} for every tensor of ``store`` (starting with ``strip``)."""
    return {prefix + n[len(strip) :]: n for n in store.names() if n.startswith(strip)}


def metadata_of(parts: list[tuple[TensorStore, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s, _ in parts:
        out.update(s.metadata)
    return out
