"""transformers' CLIPTokenizer built offline from the OpenAI CLIP vocabulary that clip-anytorch ships: vocab.json and
merges.txt derived exactly as OpenAI's SimpleTokenizer builds its tables (the tokenizer tests and the diffusers
pipeline reference both need it)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def openai_tables(vocab_gz: Path) -> tuple[dict[str, int], list[str]]:
    """vocab and merges as OpenAI's SimpleTokenizer builds them (clip/simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    merges = gzip.open(vocab_gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return dict(zip(vocab, range(len(vocab)))), merges


def reference_tokenizer(vocab_gz: Path, folder: Path):
    """transformers' CLIPTokenizer configured as SD 1.5's (pads with <|endoftext|>), from files written to folder."""
    import transformers

    vocab, merges = openai_tables(vocab_gz)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return transformers.CLIPTokenizer.from_pretrained(str(folder), pad_token="<|endoftext|>", model_max_length=77)
