"""The prompt syntax of stable-diffusion.cpp and the webui: ``<lora:NAME:STRENGTH>`` (strength 1 when left out)
chooses a LoRA for this image; the tag is removed from the text before it is tokenized. ``NAME`` is a file in the
LoRA directory found by its stem whatever its extension (.safetensors, .gguf, .ckpt, .pt, .bin, none...): the
content, not the name, says what format it is. The same name twice adds its strengths (as stable-diffusion.cpp)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from runtime.lora.errors import LoraError

TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")


def extract(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(the prompt without its LoRA tags, [(name, strength)] in order of first appearance)."""
    found: dict[str, float] = {}
    for m in TAG.finditer(prompt):
        name, raw = m.group(1).strip(), m.group(2)
        try:
            s = 1.0 if raw is None or not raw.strip() else float(raw)
        except ValueError:
            raise LoraError(f"prompt tag {m.group(0)}: the strength {raw!r} is not a number") from None
        if not math.isfinite(s):
            raise LoraError(f"prompt tag {m.group(0)}: the strength must be finite")
        found[name] = found.get(name, 0.0) + s
    return TAG.sub("", prompt), list(found.items())


def _listing(folder: Path) -> str:
    files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return ", ".join(files[:30]) + (" ..." if len(files) > 30 else "") if files else "no files"


def find(name: str, folder: str | Path) -> Path:
    """The file of LoRA ``name`` in ``folder``: by stem, any extension; a name with a path inside the folder works."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoraError(f"--lora-model-dir {folder}: no such directory")
    target = (folder / name).resolve()
    if folder.resolve() not in target.parents:
        raise LoraError(f"<lora:{name}>: the name leaves the LoRA directory {folder}")
    if target.is_file():
        return target
    candidates = sorted(p for p in target.parent.glob("*") if p.is_file() and p.stem == target.name)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise LoraError(
            f"<lora:{name}>: {len(candidates)} files in {folder} are called {name} "
            f"({', '.join(p.name for p in candidates)}); remove or rename all but one"
        )
    raise LoraError(f"<lora:{name}>: no file called {name} (any extension) in {folder}; it holds: {_listing(folder)}")


def resolve(
    prompt: str, negative: str, folder: str | Path | None
) -> tuple[str, str, list[tuple[Path, float]], list[tuple[str, float]]]:
    """The one call a pipeline makes: (prompt and negative prompt without tags, [(file, strength)], [(name,
    strength)]). Tags in either prompt choose LoRAs for the whole image, as the webui's extra networks do."""
    text, pos = extract(prompt)
    neg_text, neg = extract(negative or "")
    named: dict[str, float] = {}
    for n, s in pos + neg:
        named[n] = named.get(n, 0.0) + s
    if named and folder is None:
        tags = ", ".join(f"<lora:{n}:{s:g}>" for n, s in named.items())
        raise LoraError(f"the prompt chooses LoRAs ({tags}) but no --lora-model-dir says where they are")
    files = [(find(n, folder), s) for n, s in named.items()]
    return text, neg_text, files, list(named.items())
