"""i-quant kernels (linear at M = 1 and M > 1, embed) built for the CPU and run by the CPU executor, against gguf's
dequantize and a float64 matmul; plus the lookup-table plumbing they need (spec parameters, table words)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.errors import LaunchError
from sdcompile.kernels import spec as S
from sdcompile.kernels import supported_types
from sdcompile.kernels.luts import TABLE_WORDS, TABLES, TYPE_TABLES, table_words, tables_for
from sdcompile.quant import grids
from tests.kernels import fixtures as fx
from tests.kernels import iquant_cases as ic
from tests.kernels import kernel_cases as kc

LINEAR = ic.linear_specs()
EMBED = ic.embed_specs()


# One build for the whole module: LLVM compile time dominates.
built = fx.built_fixture("cpu", lambda: LINEAR + EMBED, "iquant_cpu")
ex = fx.executor_fixture("cpu")


@pytest.mark.parametrize("spec", LINEAR, ids=lambda s: s.name)
def test_linear_matches_numpy(ex, spec):
    case = ic.make_case(spec)
    kc.check(case, kc.run_case(ex, case))


@pytest.mark.parametrize("spec", EMBED, ids=lambda s: s.name)
def test_embed_is_bit_exact(ex, spec):
    case = ic.make_case(spec)
    kc.check_exact(case, kc.run_case(ex, case))


def test_every_iquant_has_a_decoder():
    assert set(ic.IQ_TYPES) <= set(supported_types())


def test_lut_parameters_in_spec_and_description(built):
    _, result = built
    assert json.loads(json.dumps(result)) == result
    spec = S.linear(7, ic.N, ic.K, "iq2_xs", bias=True, residual=True, act="gelu")
    # Tables come after the other inputs and before the output; the parameter is named after its table.
    assert [(p.name, p.kind) for p in spec.params] == [
        ("x", "act"),
        ("w", "raw"),
        ("bias", "f32"),
        ("res", "act"),
        ("iq2xs_grid", "lut"),
        ("y", "act"),
    ]
    info = result["kernels"][spec.name]
    assert info["params"][4] == {
        "name": "iq2xs_grid",
        "kind": "lut",
        "shape": [1024],
        "dtype": "uint32",
        "is_output": False,
        "words": 1024,
    }
    assert info["launch"][0]["buffers"] == ["x", "w", "bias", "res", "iq2xs_grid", "y"]
    emb = S.embed(7, 5, 50, 512, "iq1_m")
    assert [p.name for p in emb.params] == ["ids", "tok", "pos", "iq1s_grid", "y"]


def test_types_without_tables_are_unchanged():
    # Existing types keep their parameter lists; iq4_nl/iq4_xs hold their 16 values in constants, not a table.
    assert [p.name for p in S.linear(1, 64, 256, "q4_0").params] == ["x", "w", "y"]
    assert [p.name for p in S.embed(7, 5, 50, 64, "f16").params] == ["ids", "tok", "pos", "y"]
    for t in ("iq4_nl", "iq4_xs", "q4_k", "tq2_0"):
        assert tables_for(t) == ()
    assert {t for t in ic.IQ_TYPES if tables_for(t)} == set(TYPE_TABLES)


def test_table_words_are_ggml_grids():
    # ggml's entries (ggml-common.h, as spot-checked in tests/quant/test_reference.py) as little-endian words.
    def u64(name, i):
        w = table_words(name)
        return int(w[2 * i]) | int(w[2 * i + 1]) << 32

    assert [u64("iq2xxs_grid", i) for i in range(4)] == [
        0x0808080808080808,
        0x080808080808082B,
        0x0808080808081919,
        0x0808080808082B08,
    ]
    assert [u64("iq1s_grid", i) for i in range(2)] == [0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFF01]
    assert [int(v) for v in table_words("iq3s_grid")[:6]] == [
        0x01010101,
        0x01010103,
        0x01010105,
        0x0101010B,
        0x0101010F,
        0x01010301,
    ]
    # Every table: one byte per codebook value, entry after entry (signed bytes for iq1s's -1).
    for name, (source, entries, width) in TABLES.items():
        w = table_words(name)
        assert w.dtype == np.dtype("<u4") and w.size == TABLE_WORDS[name] == entries * width // 4
        assert not w.flags.writeable
        values = w.view(np.int8 if source == "iq1s" else np.uint8).reshape(entries, width)
        np.testing.assert_array_equal(values, grids.grid(source))
    with pytest.raises(KeyError, match="unknown lookup table"):
        table_words("ksigns")


def test_short_table_buffer_is_refused(ex):
    spec = S.linear(1, ic.N, ic.K, "iq3_s")
    case = ic.make_case(spec)
    bufs = []
    for a in case.inputs:
        b = ex.alloc(a.nbytes)
        ex.upload(b, a)
        bufs.append(b)
    bufs[-1] = ex.alloc(case.inputs[-1].nbytes - 4)  # one word short of the table
    args = [
        (b, p.shape if p.kind == "raw" else a.shape, str(a.dtype)) for b, p, a in zip(bufs, spec.params, case.inputs)
    ]
    args.append((ex.alloc(ic.N * 4), (1, ic.N), "float32"))
    with pytest.raises(LaunchError, match="'iq3s_grid' has 2044 bytes, needs 2048"):
        ex.launch(spec.name, args)
