"""`sdcompile compile` on a transformers CLIPTextModel whose config.json says gelu (and 2 heads of 32 channels,
where the width alone would say 1 head): the artifact computes what transformers computes. Before config.json was
read, it compiled quick_gelu with 1 head and exited 0, with outputs off by hundredths."""

from __future__ import annotations

import numpy as np
import pytest

from sdcompile import examples as ex
from tests.e2e.test_cli import sdc
from tests.models.test_clip_text_config import SHAPE, save_pretrained


@pytest.mark.parametrize("given", ["file", "folder"])
def test_gelu_config_compiles_gelu(tmp_path, given):
    import runtime

    model = save_pretrained(tmp_path / "te", act="gelu")
    src = tmp_path / "te" / "model.safetensors" if given == "file" else tmp_path / "te"
    r = sdc("compile", src, "-o", tmp_path / "art", "--no-progress")
    assert r.returncode == 0, r.stderr
    assumed = [ln for ln in r.stdout.splitlines() if ln.startswith("assumed")]
    assert not [ln for ln in assumed if "activation" in ln or "heads" in ln], assumed  # stated, so not assumed
    ids = ex.example_ids(1, SHAPE.positions, SHAPE.vocab)
    want = ex.transformers_hidden(model, ids)
    got = runtime.load(tmp_path / "art", num_threads=2).call("encode_text", {"input_ids": ids.astype(np.int32)})
    np.testing.assert_allclose(got["last_hidden_state"], want, rtol=0, atol=1e-4)
