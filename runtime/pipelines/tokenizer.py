"""CLIP's byte-level BPE tokenizer and A1111-style prompt emphasis, as Stable Diffusion pipelines use them.

The tables are OpenAI CLIP's (``bpe_simple_vocab_16e6.txt.gz``, MIT licence), built the way OpenAI's
``SimpleTokenizer`` builds them, so token ids are the ones every SD 1.x/2.x/SDXL text encoder was trained with.
The text cleanup is the one transformers' ``CLIPTokenizer`` applies (what diffusers feeds SD models): NFC, runs of
whitespace to one space, lowercase character by character; no ftfy, no HTML unescaping, no accent stripping.
The runtime may not depend on the ``regex`` package, so CLIP's pre-tokenizer pattern

    <\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+

is run as a hand-written scanner over ``unicodedata`` categories (see ``_pre_tokenize``).

Prompt emphasis follows stable-diffusion.cpp (a port of AUTOMATIC1111's ``parse_prompt_attention``): the prompt is
cut into chunks of equal weight, each chunk is tokenized on its own, and every token carries its chunk's weight.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import unicodedata
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime.errors import ArtifactError

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# OpenAI keeps the first 49152 - 256 - 2 merges of the file (line 0 is a version header): with 256 byte tokens, their
# 256 end-of-word forms and the 2 special tokens the vocabulary has 49408 entries.
_N_MERGES = 49152 - 256 - 2
START_TOKEN_ID = 49406
END_TOKEN_ID = 49407
VOCAB_SIZE = 49408
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIALS = {START_TOKEN: START_TOKEN_ID, END_TOKEN: END_TOKEN_ID}
# transformers matches its special tokens in the raw text, before any normalization; do the same.
_SPECIAL_SPLIT = re.compile(f"({re.escape(START_TOKEN)}|{re.escape(END_TOKEN)})")


class VocabError(ArtifactError):
    """The CLIP vocabulary file is missing or unreadable."""


def find_vocab() -> Path | None:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside an installed ``clip`` package (``clip-anytorch``), or None.

    Only the package's location is looked up: importing ``clip`` would import torch.
    """
    try:
        spec = importlib.util.find_spec("clip")
    except (ImportError, ValueError):  # ValueError: a 'clip' in sys.modules without a __spec__
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    return None


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable character map: BPE works on characters, and no byte may map to whitespace or a
    control character. Printable Latin-1 bytes map to themselves, the rest to U+0100 onwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    # OpenAI's order (printable bytes first, then the others) is the order of the first 256 vocabulary entries.
    return {b: table[b] for b in [*printable, *(b for b in range(256) if b not in printable)]}


# Character classes of the pre-tokenizer pattern. \s is Unicode White_Space as the Oniguruma engine behind
# transformers' tokenizer reads it (tab..CR, NEL, Zs, Zl, Zp); Python's str.isspace() would also take U+001C..U+001F.
_SPACE, _LETTER, _NUMBER, _OTHER = range(4)
_ASCII_SPACE = frozenset("\t\n\v\f\r\x85")


@lru_cache(maxsize=8192)
def _char_class(c: str) -> int:
    if c in _ASCII_SPACE:
        return _SPACE
    cat = unicodedata.category(c)
    if cat in ("Zs", "Zl", "Zp"):
        return _SPACE
    if cat[0] == "L":
        return _LETTER
    if cat[0] == "N":
        return _NUMBER
    return _OTHER


def _normalize(text: str) -> str:
    """transformers' CLIP normalizer: NFC, whitespace runs -> one space, lowercase per character. Lowercasing
    character by character (as the tokenizers library does) keeps a word-final capital sigma a plain sigma, where
    str.lower() would pick the final form."""
    text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    in_space = False
    for c in text:
        if _char_class(c) == _SPACE:
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(c.lower())
            in_space = False
    return "".join(out)


def _pre_tokenize(text: str) -> Iterator[str]:
    """The words ``re.findall`` with CLIP's pattern yields: the alternatives are tried in order at each position, so
    special tokens and contractions win over the punctuation run they would otherwise start; whitespace separates."""
    i, n = 0, len(text)
    while i < n:
        cls = _char_class(text[i])
        if cls == _SPACE:
            i += 1
            continue
        if cls == _LETTER:
            j = i + 1
            while j < n and _char_class(text[j]) == _LETTER:
                j += 1
        elif cls == _NUMBER:  # digits are single tokens: "1920" is four words
            j = i + 1
        else:
            j = 0
            for special in _SPECIALS:
                if text.startswith(special, i):
                    # Only a special name that was not one before lowercasing ("<|EndOfText|>") gets here.
                    # OpenAI would emit the special id; transformers' byte-level step splits the match GPT-2 style
                    # into "<|", the name, "|>" and BPEs them as text. Follow transformers (what diffusers feeds SD).
                    yield special[:2]
                    yield special[2:-2]
                    i += len(special) - 2
                    j = i + 2  # "|>", yielded below
                    break
            if not j and text[i] == "'":
                for contraction in _CONTRACTIONS:
                    if text.startswith(contraction, i):
                        j = i + len(contraction)
                        break
            if not j:
                j = i + 1
                while j < n and _char_class(text[j]) == _OTHER:
                    j += 1
        yield text[i:j]
        i = j


class TokenizedPrompt(NamedTuple):
    """One prompt as the text encoder takes it.

    ``ids`` int32 [max_length]: start token, prompt tokens, end token, padding. ``weights`` float32 [max_length]: each
    token's emphasis (1.0 for start, end and padding). ``dropped`` counts the prompt tokens cut off to fit."""

    ids: np.ndarray
    weights: np.ndarray
    dropped: int = 0
    dropped_text: str = ""

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    @property
    def warnings(self) -> list[str]:
        if not self.dropped:
            return []
        return [
            f"prompt truncated to {len(self.ids) - 2} tokens: {self.dropped} token(s) dropped ({self.dropped_text!r})"
        ]


class ClipTokenizer:
    """CLIP BPE tokenizer built from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

    ``pad_token_id`` fills the tail of a tokenized prompt: SD 1.x (OpenAI CLIP) pads with the end token 49407,
    SD 2.x (OpenCLIP) with 0.
    """

    def __init__(
        self, vocab_path: str | os.PathLike[str], *, pad_token_id: int = END_TOKEN_ID, cache_size: int = 65536
    ) -> None:
        path = Path(vocab_path)
        merges = _read_merges(path)
        if not 0 <= pad_token_id < VOCAB_SIZE:
            raise ValueError(f"pad_token_id {pad_token_id} is outside the vocabulary (0..{VOCAB_SIZE - 1})")
        self.vocab_path = path
        self.pad_token_id = pad_token_id
        self.start_token_id = START_TOKEN_ID
        self.end_token_id = END_TOKEN_ID
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        byte_chars = list(self._byte_encoder.values())
        vocab = [*byte_chars, *(c + "</w>" for c in byte_chars), *(a + b for a, b in merges), START_TOKEN, END_TOKEN]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self._ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        # Prompts repeat words (style tags, negative prompts): BPE each distinct word once. A bound keeps a long-lived
        # server's memory flat.
        self._word_ids = lru_cache(maxsize=cache_size)(self._bpe_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def encode(self, text: str) -> list[int]:
        """BPE token ids of ``text``, without start and end tokens."""
        ids: list[int] = []
        for segment in _SPECIAL_SPLIT.split(text):
            if segment in _SPECIALS:
                ids.append(_SPECIALS[segment])
                continue
            for word in _pre_tokenize(_normalize(segment)):
                ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Text of ``ids`` (lowercased and whitespace-normalized, as the tokenizer saw it); special ids are kept as
        their names."""
        # End of word is a space, written as the space's byte character so that every character of the text, the
        # special names' included, maps back to one byte; a word cut inside a UTF-8 sequence decodes to U+FFFD.
        text = "".join(self.decoder[int(i)] for i in ids).replace("</w>", self._byte_encoder[0x20])
        data = bytes(self._byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").strip()

    def tokenize(self, prompt: str, max_length: int = 77, *, emphasis: bool = True) -> TokenizedPrompt:
        """Ids and per-token weights of ``prompt`` for a text encoder with ``max_length`` positions.

        With ``emphasis``, A1111 syntax sets weights (``(word)``, ``(word:1.3)``, ``[word]``, ``\\(`` for a literal
        parenthesis) and the brackets themselves are not tokenized; without it the prompt is plain text. A prompt
        longer than ``max_length - 2`` tokens is cut there (as diffusers does); the result says how much was dropped.
        """
        if max_length < 2:
            raise ValueError(f"max_length must leave room for the start and end tokens, got {max_length}")
        chunks = parse_prompt_attention(prompt) if emphasis else [(prompt, 1.0)]
        tokens: list[int] = []
        token_weights: list[float] = []
        for text, weight in chunks:
            chunk_ids = self.encode(text)
            tokens.extend(chunk_ids)
            token_weights.extend([weight] * len(chunk_ids))
        room = max_length - 2
        dropped_ids = tokens[room:]
        tokens, token_weights = tokens[:room], token_weights[:room]
        n = len(tokens)
        ids = np.full(max_length, self.pad_token_id, dtype=np.int32)
        ids[0] = self.start_token_id
        ids[1 : n + 1] = tokens
        ids[n + 1] = self.end_token_id
        weights = np.ones(max_length, dtype=np.float32)
        weights[1 : n + 1] = token_weights
        return TokenizedPrompt(ids, weights, len(dropped_ids), self.decode(dropped_ids) if dropped_ids else "")

    def _bpe_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized word: its UTF-8 bytes as byte characters, the last one marked end-of-word, then
        OpenAI's merge loop (always the lowest-ranked adjacent pair, every occurrence left to right)."""
        chars = [self._byte_encoder[b] for b in word.encode("utf-8")]
        parts = [*chars[:-1], chars[-1] + "</w>"]
        ranks = self._ranks
        while len(parts) > 1:
            best_rank = _N_MERGES
            best: tuple[str, str] | None = None
            for pair in zip(parts, parts[1:]):
                rank = ranks.get(pair)
                if rank is not None and rank < best_rank:
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self.encoder[p] for p in parts)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The merge list exactly as OpenAI slices it, with errors that say which file and what to do."""
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except FileNotFoundError:
        raise VocabError(
            f"CLIP vocabulary file not found: {path}. The artifact should hold {VOCAB_FILENAME} (the compiler copies "
            f"it in); recompile the artifact, or pass the file's path (it ships in the 'clip-anytorch' package)."
        ) from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise VocabError(f"CLIP vocabulary file {path} is not a readable gzip of UTF-8 text: {exc}") from exc
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise VocabError(
            f"CLIP vocabulary file {path} is not {VOCAB_FILENAME}: expected {_N_MERGES} merge lines of two symbols "
            f"after the header, got {len(merges)}"
        )
    return merges  # type: ignore[return-value]  # every tuple was checked to hold two symbols


# --- prompt emphasis -------------------------------------------------------------------------------------------------

# stable-diffusion.cpp's pattern (A1111's before it allowed spaces around the weight): escapes, brackets, a closing
# weight ":1.2)", plain text runs, a stray colon. Every character matches one alternative, so nothing is skipped.
_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:([+-]?[.0-9]+)\)|\)|\]|[^\\()\[\]:]+|:")
_FLOAT_PREFIX = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_ROUND = np.float32(1.1)
_SQUARE = np.float32(1) / np.float32(1.1)


def _scale(res: list[list], start: int, multiplier: np.float32) -> None:
    # Float32 products, as stable-diffusion.cpp computes them: the merge of equal weights below compares them exactly.
    for item in res[start:]:
        item[1] = np.float32(item[1]) * multiplier


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) chunks, A1111 emphasis syntax:

    ``(abc)`` weight x1.1, ``(abc:3.12)`` x3.12, ``[abc]`` /1.1, nesting multiplies; ``\\(`` ``\\)`` ``\\[`` ``\\]``
    ``\\\\`` are the literal characters; unbalanced brackets close at the end of the prompt. Neighbouring chunks of
    equal weight merge, so ``(a)(b)`` is one chunk ``ab``. An empty prompt gives ``[("", 1.0)]``.

    Where stable-diffusion.cpp's code departs from its own documentation (it strips the backslash of ``\\(`` only),
    this follows the documentation, which is A1111's behaviour; a lone backslash stays a backslash, as in
    stable-diffusion.cpp. A weight that is no number (``(a:.)``) is kept as text instead of aborting.
    """
    res: list[list] = []  # [text, np.float32 weight]
    round_brackets: list[int] = []
    square_brackets: list[int] = []
    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None:
            number = _FLOAT_PREFIX.match(weight)
            if number is None:  # std::stof would throw here; keep the characters instead
                res.append([token[:-1], np.float32(1.0)])
                if round_brackets:
                    _scale(res, round_brackets.pop(), _ROUND)
            elif round_brackets:
                _scale(res, round_brackets.pop(), np.float32(float(number.group(0))))
        elif token == ")" and round_brackets:
            _scale(res, round_brackets.pop(), _ROUND)
        elif token == "]" and square_brackets:
            _scale(res, square_brackets.pop(), _SQUARE)
        elif len(token) == 2 and token[0] == "\\":
            res.append([token[1], np.float32(1.0)])
        else:
            res.append([token, np.float32(1.0)])
    for start in round_brackets:
        _scale(res, start, _ROUND)
    for start in square_brackets:
        _scale(res, start, _SQUARE)
    if not res:
        res.append(["", np.float32(1.0)])
    merged: list[list] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(chunk, float(weight)) for chunk, weight in merged]
