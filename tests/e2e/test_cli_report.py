"""What the text report says beyond --json: tensor-type rules that match nothing or cannot apply, a --type that
cannot apply (rows short of a block, weights already quantized), the SDXL tensors a VAE-only compile leaves out;
and `inspect --tensors` pairing each tensor with the canonical name rules match."""

from __future__ import annotations

import json

import pytest

from sdcompile import examples as ex
from sdcompile import examples_sd as E
from sdcompile.compiler import compile_model
from sdcompile.passes.context import CompileOptions
from sdcompile.passes.quantize import parse_rules
from sdcompile.report import render_compile_report
from tests.e2e.test_cli import sdc


def _compile(src, out, **opts):
    m = compile_model(src, out, CompileOptions(target="cpu", **opts))
    return m, render_compile_report(m, out)


def test_rules_and_type_that_do_not_apply_are_in_the_text_report(tiny_ldm_safetensors, tmp_path):
    # TINY: width 128, MLP 512. q4_k's block is 256: fc2 (rows of 512) takes it; the token embedding and the
    # attention projections (rows of 128) cannot.
    rules = "nomatch=q8_0,layer_norm=q8_0,fc1=q8_0,fc2=q4_k,layers\\.0\\.mlp\\.fc1=q4_0"
    m, text = _compile(tiny_ldm_safetensors, tmp_path / "a", type="q4_k", tensor_type_rules=parse_rules(rules))
    lines = [ln for ln in text.splitlines() if "nomatch" in ln]
    assert len(lines) == 1 and "matched no tensor" in lines[0] and "inspect --tensors" in lines[0], text
    ln = next(ln for ln in text.splitlines() if "'layer_norm=q8_0'" in ln)
    assert "kept f32" in ln and "skip list" in ln and "10 tensors" in ln, ln
    ln = next(ln for ln in text.splitlines() if "'fc1=q8_0'" in ln)
    assert ln.endswith("q8_0 for 2 tensors"), ln  # its biases stay f32 as always: not worth a word
    ln = next(ln for ln in text.splitlines() if "'layers\\.0\\.mlp\\.fc1=q4_0'" in ln)
    assert "earlier rule" in ln, ln  # fc1=q8_0 comes first and wins
    ln = next(ln for ln in text.splitlines() if "--type q4_k " in ln)
    assert "9 tensors" in ln and "not a multiple of q4_k's block 256" in ln and "kept f32" in ln, ln
    assert "q4_k×2" in text  # the fc2 weights, by their rule


def test_type_on_weights_already_quantized_is_in_the_text_report(tiny_state, tmp_path):
    src = ex.write_gguf(tmp_path / "q8.gguf", ex.rename(tiny_state, "ldm"), "q8_0", {"num_attention_heads": 2})
    _, text = _compile(src, tmp_path / "a", type="q4_0")
    ln = next(ln for ln in text.splitlines() if "--type q4_0 " in ln)
    assert "13 tensors already q8_0" in ln and "rule" in ln, ln


def test_sdxl_vae_only_compile_lists_every_left_out_tensor(tmp_path):
    src = E.write_safetensors(tmp_path / "sdxl.safetensors", E.sd_state(E.TINY_SDXL, 0))
    m, text = _compile(src, tmp_path / "a", sizes=[(64, 64)], components=("vae_decoder",))
    ign = json.loads(json.dumps(m["source"]["ignored"]))  # as --json prints it
    used = set(m["weights"]["tensors"])
    from sdcompile.formats import open_store

    names = set(open_store(src).names())
    assert {n for n in names if not n.startswith("first_stage_model.")} <= set(ign)
    assert len(ign) + len([n for n in names if n not in ign]) == len(names) and used
    assert "SDXL's second text encoder (OpenCLIP ViT-bigG): not read (--components leaves it out" in text
    assert "SDXL UNet: not compiled (--components leaves it out)" in text


def test_inspect_tensors_shows_canonical_names(tmp_path):
    p = ex.write_safetensors(
        tmp_path / "t.safetensors", ex.rename(ex.clip_text_state(ex.TINY), "transformers"), "f32", {"x": "1"}
    )
    r = sdc("inspect", p, "--tensors")
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if "text_model.encoder.layers.0.mlp.fc1.weight" in ln)
    assert row.split()[0] == "text_model.encoder.layers.0.mlp.fc1.weight"
    assert row.split()[-1] == "text_encoder.encoder.layers.0.mlp.fc1.weight"
    info = json.loads(sdc("inspect", p, "--json").stdout)
    t = next(t for t in info["tensor_list"] if t["name"] == "text_model.final_layer_norm.bias")
    assert t["canonical"] == "text_encoder.final_layer_norm.bias"


@pytest.mark.parametrize("arch", ["llama"])
def test_inspect_names_what_it_cannot_compile(tmp_path, arch):
    from tests.models.test_identify import LLAMA_NAMES, _gguf

    r = sdc("inspect", _gguf(tmp_path / "m.gguf", arch, LLAMA_NAMES))
    assert r.returncode == 0 and "LLaMA-family decoder LLM" in r.stdout, r.stdout + r.stderr
    r = sdc("compile", tmp_path / "m.gguf", "-o", tmp_path / "out")
    assert r.returncode == 2 and "LLaMA-family decoder LLM" in r.stderr and "Traceback" not in r.stderr


def test_inspect_tensors_of_a_diffusers_folder_shows_each_files_names(tmp_path):
    from sdcompile.inspect import inspect_file, render_inspect

    root = E.write_sd(tmp_path / "pipe", E.TINY_SD, 0, "diffusers")
    text = render_inspect(inspect_file(root), tensors=True)
    row = next(ln for ln in text.splitlines() if ln.split()[:1] == ["conv_in.weight"])
    assert row.split()[-1] == "unet.input_blocks.0.0.weight", row


def test_fusion_line_says_when_no_rule_fired():
    """The UNet's lifter emits its linears with bias and residual already fused, so the fuse pass fires nothing: the
    report says so (with why, when a rule declined) instead of ending the line at 'kernels launched; '."""
    from sdcompile.report import _fusion_summary

    assert _fusion_summary({"fired": {"bias_into_linear": 3, "matmul_to_linear": 4}, "declined": {}}) == (
        "bias_into_linear ×3, matmul_to_linear ×4"
    )
    assert _fusion_summary({"fired": {}, "declined": {}}) == "no rule fired (nothing left to fold)"
    declined = {"residual_into_linear@u.add.9": "u.add.9 has 2 users", "bias_into_linear@u.add.3": "not linear"}
    assert _fusion_summary({"fired": {}, "declined": declined}) == (
        "no rule fired (2 declined, e.g. bias_into_linear at u.add.3: not linear)"
    )
