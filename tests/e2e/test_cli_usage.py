"""The command line's own words: every sub-command's --help describes the command and each argument; a wrong flag
prints that sub-command's usage (not the top-level one); Vulkan runs print no XDG_RUNTIME_DIR noise."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys

import pytest

from tests.e2e.test_cli import ROOT, sdc


def _commands() -> dict[str, argparse.ArgumentParser]:
    from sdcompile.cli import _parser

    p = _parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("cmd", sorted(_commands()))
def test_sub_command_help_describes_the_command_and_every_argument(cmd):
    sp = _commands()[cmd]
    assert sp.description, f"`sdcompile {cmd} --help` says nothing about what {cmd} does"
    for a in sp._actions:
        assert a.help and a.help != argparse.SUPPRESS, f"{cmd} {a.option_strings or a.dest}: no description"
    r = sdc(cmd, "--help")
    assert r.returncode == 0 and sp.description.split(".")[0][:40] in " ".join(r.stdout.split())


def test_wrong_flag_prints_the_sub_command_usage():
    r = sdc("compile", "model.safetensors", "-o", "out", "--tensor-rules", "x=q8_0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("usage: sdcompile compile ") and "--tensor-type-rules" in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("sdcompile: error: unrecognized arguments: --tensor-rules x=q8_0"), last
    assert "did you mean --tensor-type-rules?" in last and "`sdcompile compile --help`" in last
    r = sdc("inspect", "m.safetensors", "--tensros")
    assert r.stderr.startswith("usage: sdcompile inspect ") and "did you mean --tensors?" in r.stderr, r.stderr
    assert "COMMAND" not in r.stderr  # not the top-level usage


def test_other_argument_errors_stay_one_line():
    r = sdc("bench", "art", "--repeat", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sdcompile bench --help" in r.stderr


def _xdg_probe(value: str | None) -> subprocess.CompletedProcess:
    """A fresh interpreter that enumerates Vulkan adapters with XDG_RUNTIME_DIR unset (None) or set to ``value``,
    then prints the variable as the process ends up with it."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    if value is not None:
        env["XDG_RUNTIME_DIR"] = value
    code = (
        "import os; from runtime.executors.vulkan import vulkan_adapters; vulkan_adapters(); "
        "print(os.environ.get('XDG_RUNTIME_DIR', ''))"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value", [None, "", "relative/dir", "/no/such/dir"])
def test_no_xdg_runtime_dir_noise_and_a_private_valid_one(value):
    r = _xdg_probe(value)
    assert r.returncode == 0, r.stderr
    assert "XDG_RUNTIME_DIR" not in r.stderr, r.stderr
    d = r.stdout.strip().splitlines()[-1]
    assert os.path.isabs(d) and d != value  # replaced; the folder is gone once the process has ended


def test_a_valid_xdg_runtime_dir_is_kept(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    r = _xdg_probe(str(d))
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == str(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.is_dir()


def test_no_flag_abbreviations():
    """A prefix of a flag is not that flag: `--tensor-type-rule` is refused with the real name suggested."""
    r = sdc("compile", "model.safetensors", "--tensor-type-rule", "x=q8_0", "-o", "out")
    assert r.returncode == 2
    assert "unrecognized arguments: --tensor-type-rule" in r.stderr and "--tensor-type-rules" in r.stderr
