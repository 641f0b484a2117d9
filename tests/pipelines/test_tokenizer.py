"""The runtime's CLIP tokenizer against transformers' CLIPTokenizer, and prompt emphasis against A1111's examples.

The reference tokenizer is built offline from a vocab.json and merges.txt that the fixture derives from the same
``bpe_simple_vocab_16e6.txt.gz``, rebuilding the tables here the way OpenAI's SimpleTokenizer does (not through the
code under test), so a mistake in the runtime's tables cannot hide in both sides.
"""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import RuntimeFailure
from runtime.pipelines.tokenizer import (
    END_TOKEN_ID,
    START_TOKEN_ID,
    ClipTokenizer,
    VocabError,
    find_vocab,
    parse_prompt_attention,
)
from tests.clip_vocab import openai_tables, reference_tokenizer

VOCAB = find_vocab()
needs_vocab = pytest.mark.skipif(
    VOCAB is None, reason="CLIP vocabulary not installed (pip install --no-deps clip-anytorch)"
)


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    if VOCAB is None:
        pytest.skip("CLIP vocabulary not installed (pip install --no-deps clip-anytorch)")
    return ClipTokenizer(VOCAB)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' CLIPTokenizer configured as SD 1.5's (pad with <|endoftext|>), from files written here."""
    if VOCAB is None:
        pytest.skip("CLIP vocabulary not installed (pip install --no-deps clip-anytorch)")
    pytest.importorskip("transformers")
    return reference_tokenizer(VOCAB, tmp_path_factory.mktemp("clip_tokenizer"))


# --- generated prompts -----------------------------------------------------------------------------------------------

_WORDS = (
    "a photo of an astronaut riding horse on mars portrait woman man cat dog castle forest mountain lake sunset city "
    "night street rain neon cyberpunk painting oil watercolor sketch highly detailed intricate sharp focus digital art "
    "concept trending artstation octane render unreal engine cinematic lighting volumetric fog bokeh masterpiece best "
    "quality ugly blurry lowres bad anatomy extra fingers deformed jpeg artifacts by greg rutkowski alphonse mucha "
    "Photorealistic HDR UHD DSLR Canon EOS Nikon Kodak Portra Fujifilm ArtStation DeviantArt Pixiv Studio Ghibli "
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic"
).split()
_CONTRACTIONS = (
    "don't it's we're they've I'm you'll he'd DON'T IT'S We'Re can't won't y'all o'clock rock'n'roll".split()
)
_UNICODE = (
    "café naïve résumé Ångström ÉCOLE Straße Ærøskøbing Łódź Zürich piñata façade "  # Latin with accents
    "東京 猫の写真 富士山 龍 中文提示词 한국어 서울의 밤 ひらがな カタカナ "  # CJK
    "Привет мир МОСКВА ёлка Ελληνικά ΟΔΟΣ σοφία עברית العربية हिन्दी ไทย ქართული Հայերեն "  # other scripts
    "🐱 🚀🌕 👨‍👩‍👧 👍🏽 ❤️ 🎨🖌️ ✨ 🌸 "  # emoji: ZWJ sequences, skin tones, variation selectors
    "e\u0301 A\u030a ＡＢＣ１２３ ﬁ ǅ İstanbul ß ⅫⅣ ²³ ½ ٣٤ ४२ ① "  # combining marks, compatibility forms, Nl/No
    "\u200b \ufeff \x00 \x1c \x7f \u00ad"  # zero-width and control characters
).split(" ")
_PUNCT = list(",.!?;:'\"#@&*<>/\\|~`^%$+=_-()[]{}") + ["...", "--", "!!", "?!", "''", "'''", "<|", "|>", "::", "(("]
_SPACES = [" ", " ", " ", " ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2003", "\u2028", " \t \n "]


def _piece(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.45:
        word = rng.choice(_WORDS)
        return word.upper() if rng.random() < 0.05 else word
    if kind < 0.55:
        return rng.choice(_CONTRACTIONS)
    if kind < 0.70:
        return rng.choice(_UNICODE)
    if kind < 0.85:
        return rng.choice(_PUNCT)
    number = str(rng.randrange(10 ** rng.randint(1, 6)))
    return rng.choice([number, number + "px", number + "x" + str(rng.randrange(4096)), "3.14", "v" + number, "1e-5"])


def _prompt(rng: random.Random) -> str:
    n = rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 30, 40, 60, 90, 150])
    parts: list[str] = []
    for _ in range(n):
        parts.append(_piece(rng))
        # glue pieces together now and then: "word," "word(" "東京cat" exercise the class boundaries
        parts.append("" if rng.random() < 0.2 else rng.choice(_SPACES))
    text = "".join(parts)
    if rng.random() < 0.1:
        text = rng.choice(_SPACES) + text
    return text


def _prompts(count: int = 1200) -> list[str]:
    rng = random.Random(20261122)
    fixed = ["", " ", "\n\t ", "a", "A", "'s", "1234567890", "a photo of an astronaut riding a horse on mars"]
    fixed += [
        "word " * 80,
        "東京" * 50,
        "🐱" * 100,
        "a" * 300,
        "x <|endoftext|> y",
        "<|startoftext|>",
        "<|EndOfText|>!",
    ]
    return fixed + [_prompt(rng) for _ in range(count - len(fixed))]


def test_prompts_cover_long_and_short():
    prompts = _prompts()
    assert len(prompts) >= 1000
    assert sum(len(p.split()) > 80 for p in prompts) >= 50
    assert "" in prompts


@needs_vocab
def test_tables_match_openai(tokenizer):
    vocab, merges = openai_tables(VOCAB)
    assert tokenizer.encoder == vocab
    assert tokenizer.vocab_size == 49408
    assert tokenizer.encoder["<|startoftext|>"] == START_TOKEN_ID
    assert tokenizer.encoder["<|endoftext|>"] == END_TOKEN_ID
    assert len(merges) == 48894


def _first_mismatches(prompts, ours, theirs, limit=5):
    bad = [(p, list(a), list(b)) for p, a, b in zip(prompts, ours, theirs) if list(a) != list(b)]
    return len(bad), bad[:limit]


def test_input_ids_match_transformers(tokenizer, reference):
    prompts = _prompts()
    theirs = reference(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    ours = [tokenizer.tokenize(p, emphasis=False).ids for p in prompts]
    assert all(a.dtype == np.int32 and a.shape == (77,) for a in ours)
    count, examples = _first_mismatches(prompts, ours, theirs)
    assert count == 0, f"{count} of {len(prompts)} prompts differ, e.g. {examples}"


def test_encode_matches_transformers_untruncated(tokenizer, reference):
    prompts = _prompts()[::4]
    theirs = reference(prompts, add_special_tokens=False)["input_ids"]
    ours = [tokenizer.encode(p) for p in prompts]
    count, examples = _first_mismatches(prompts, ours, theirs)
    assert count == 0, f"{count} of {len(prompts)} prompts differ, e.g. {examples}"
    assert max(len(ids) for ids in ours) > 200  # the long prompts really are long


def test_decode_round_trip(tokenizer):
    text = "a photo of an astronaut, 東京 café 🐱 don't 1920"
    assert tokenizer.decode(tokenizer.encode(text)) == "a photo of an astronaut , 東京 café 🐱 don 't 1 9 2 0"


# --- padding, truncation, weights ------------------------------------------------------------------------------------


def test_padding_sd1_and_sd2(tokenizer, tmp_path):
    ids = tokenizer.tokenize("a cat").ids
    body = tokenizer.encode("a cat")
    assert list(ids[: len(body) + 2]) == [START_TOKEN_ID, *body, END_TOKEN_ID]
    assert (ids[len(body) + 2 :] == END_TOKEN_ID).all()
    sd2 = ClipTokenizer(VOCAB, pad_token_id=0)
    ids2 = sd2.tokenize("a cat").ids
    assert list(ids2[: len(body) + 2]) == list(ids[: len(body) + 2])
    assert (ids2[len(body) + 2 :] == 0).all()
    empty = tokenizer.tokenize("")
    assert list(empty.ids[:2]) == [START_TOKEN_ID, END_TOKEN_ID] and not empty.truncated
    with pytest.raises(ValueError):
        ClipTokenizer(VOCAB, pad_token_id=49408)


def test_truncation_report(tokenizer):
    exact = tokenizer.tokenize("cat " * 75)
    assert exact.dropped == 0 and exact.warnings == [] and exact.ids[76] == END_TOKEN_ID
    long = tokenizer.tokenize("cat " * 75 + "red blue green")
    assert long.truncated and long.dropped == 3
    assert long.dropped_text == "red blue green"
    assert len(long.warnings) == 1 and "3 token(s) dropped" in long.warnings[0]
    assert long.ids[0] == START_TOKEN_ID and long.ids[76] == END_TOKEN_ID
    assert (long.ids[1:76] == tokenizer.encode("cat")[0]).all()
    short = tokenizer.tokenize("cat " * 20, max_length=10)
    assert short.ids.shape == (10,) and short.dropped == 12


def test_weights_follow_chunks(tokenizer):
    result = tokenizer.tokenize("a (red cat:1.5) on [a mat], \\(not weighted\\)")
    chunks = parse_prompt_attention("a (red cat:1.5) on [a mat], \\(not weighted\\)")
    expected_ids = [START_TOKEN_ID]
    expected_weights = [1.0]
    for text, weight in chunks:
        ids = tokenizer.encode(text)
        expected_ids += ids
        expected_weights += [weight] * len(ids)
    n = len(expected_ids)
    assert list(result.ids[:n]) == expected_ids and result.ids[n] == END_TOKEN_ID
    assert result.weights.dtype == np.float32
    np.testing.assert_array_equal(result.weights[:n], np.float32(expected_weights))
    assert (result.weights[n:] == 1.0).all()
    # The brackets are syntax, not text: the weighted prompt has the plain prompt's tokens.
    assert list(result.ids[:n]) == [START_TOKEN_ID, *tokenizer.encode("a red cat on a mat, (not weighted)")]
    np.testing.assert_allclose(result.weights[1:6], [1.0, 1.5, 1.5, 1.0, 1 / 1.1], rtol=1e-6)
    plain = tokenizer.tokenize("a (red cat:1.5)", emphasis=False)
    assert (plain.weights == 1.0).all() and tokenizer.encode("(")[0] in plain.ids


def test_chunks_are_tokenized_separately(tokenizer):
    # "photo(graph)" is two chunks, so two words, as in stable-diffusion.cpp: no merge across the bracket.
    weighted = tokenizer.tokenize("photo(graph)")
    n = len(tokenizer.encode("photo")) + len(tokenizer.encode("graph"))
    assert list(weighted.ids[1 : n + 1]) == tokenizer.encode("photo") + tokenizer.encode("graph")


# --- emphasis parsing (the examples of A1111's parse_prompt_attention docstring) -------------------------------------


def _approx(chunks):
    return [(text, pytest.approx(weight, rel=1e-6)) for text, weight in chunks]


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("", [("", 1.0)]),
        ("[[low]] (x:1.2)", [("low", 1 / 1.21), (" ", 1.0), ("x", 1.2)]),
        ("[unbalanced square", [("unbalanced square", 1 / 1.1)]),
        ("stray ) and ] and :", [("stray ) and ] and :", 1.0)]),
        ("(a:-1)", [("a", -1.0)]),
        ("(a:1.2.3)", [("a", 1.2)]),
        ("(a:.)", [("a:.", 1.1)]),
        ("x:2)", [("x", 1.0)]),  # a weight with no open bracket is dropped, as in A1111
        ("a\\\\b \\ c", [("a\\b \\ c", 1.0)]),
        ("\\[x\\] \\(y\\)", [("[x] (y)", 1.0)]),
        ("(a) BREAK (b)", [("a", 1.1), (" BREAK ", 1.0), ("b", 1.1)]),
    ],
)
def test_parse_prompt_attention(prompt, expected):
    assert parse_prompt_attention(prompt) == _approx(expected)


def test_equal_weights_merge_in_float32():
    # 1.1 * (1 / 1.1) rounds to exactly 1.0 in float32 (as stable-diffusion.cpp computes), so the chunks merge.
    assert parse_prompt_attention("a ([b])") == [("a b", 1.0)]


# --- errors ----------------------------------------------------------------------------------------------------------


def test_missing_vocab_is_a_clear_runtime_failure(tmp_path):
    missing = tmp_path / "artifact" / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(VocabError, match="not found") as info:
        ClipTokenizer(missing)
    assert isinstance(info.value, RuntimeFailure)
    assert str(missing) in str(info.value) and "clip-anytorch" in str(info.value)


def test_corrupt_vocab_is_a_clear_runtime_failure(tmp_path):
    not_gzip = tmp_path / "vocab.txt.gz"
    not_gzip.write_bytes(b"not a gzip file")
    with pytest.raises(VocabError, match="not a readable gzip"):
        ClipTokenizer(not_gzip)
    too_short = tmp_path / "short.txt.gz"
    too_short.write_bytes(gzip.compress(b"#version: 0.2\na b\nc d\n"))
    with pytest.raises(VocabError, match="expected 48894 merge lines"):
        ClipTokenizer(too_short)


def test_find_vocab_without_clip(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert find_vocab() is None


@needs_vocab
def test_find_vocab_does_not_import_clip():
    # In a fresh interpreter: importing clip would import torch (seconds, and not a runtime dependency).
    code = (
        "import sys; from runtime.pipelines.tokenizer import find_vocab; path = find_vocab(); "
        "print(path.name, 'clip' in sys.modules, 'torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["bpe_simple_vocab_16e6.txt.gz", "False", "False"]
