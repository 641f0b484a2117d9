"""The LoRA command line: compile --lora / --lora-apply-mode, txt2img with <lora:NAME:STRENGTH> and
--lora-model-dir, and the one-line errors a user meets (a name not in the directory, with its listing; no
directory; a LoRA adapting nothing; --lora in runtime mode)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompile import examples_sd as E
from sdcompile.cli import main
from tests.e2e import sd_helpers as H

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tests.passes.test_lora import _kohya

    d = tmp_path_factory.mktemp("cli_lora")
    ckpt = E.write_sd(d / "sd.safetensors", H.SHAPE, H.SEED, "safetensors")
    loras = d / "loras"
    loras.mkdir()
    w = H.SHAPE.unet.block_out_channels[0]
    # a kohya LoRA on the first attention's query (LDM path), as a GGUF would be named anything: here .bin
    _kohya(loras / "style.bin", {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (w, w)}, seed=3)
    _kohya(d / "other.safetensors", {"lora_unet_no_such_layer": (4, 4)})
    art = d / "art"
    assert (
        main(["compile", str(ckpt), "--size", "64x64", "--lora-apply-mode", "runtime", "-o", str(art), "--no-progress"])
        == 0
    )
    return {"dir": d, "ckpt": ckpt, "loras": loras, "art": art}


def _gen(files, prompt, out, *extra):
    return main(
        ["txt2img", str(files["art"]), "-p", prompt, "--steps", "2", "-o", str(out), "--no-progress", "--json", *extra]
    )


def test_prompt_lora(files, capsys, tmp_path):
    from runtime.pipelines.image import read_png

    assert _gen(files, "a cat", tmp_path / "plain.png") == 0
    capsys.readouterr()
    assert _gen(files, "a cat <lora:style:3>", tmp_path / "lora.png", "--lora-model-dir", str(files["loras"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["file"], r["format"], r["strength"], r["weights"]) for r in out["loras"]] == [
        ("style.bin", "safetensors", 3.0, 1)
    ]
    assert "<lora:style:3>" in out["parameters"]  # the PNG's parameters keep the prompt as written
    a, b = read_png(tmp_path / "plain.png"), read_png(tmp_path / "lora.png")
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0  # the tag did act (and was not tokenized as text)


def test_errors(files, capsys, tmp_path):
    code = _gen(files, "a cat <lora:nope:0.8>", tmp_path / "x.png", "--lora-model-dir", str(files["loras"]))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no file called nope" in err and "it holds: style.bin" in err
    assert _gen(files, "a cat <lora:style>", tmp_path / "x.png") == 2
    assert "no --lora-model-dir" in capsys.readouterr().err
    base = ["compile", str(files["ckpt"]), "--size", "64x64", "-o", str(tmp_path / "a"), "--no-progress"]
    assert main([*base, "--lora", str(files["dir"] / "other.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapts none of this model's weights" in err
    assert main([*base, "--lora", str(files["loras"] / "style.bin:0.5"), "--lora-apply-mode", "runtime"]) == 2
    assert "chosen when the image is made" in capsys.readouterr().err
