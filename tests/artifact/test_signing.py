"""Signed artifacts: `compile --sign-key` signs the manifest's digest with Ed25519; a runtime given trusted public
keys runs only artifacts one of them signed, and refuses unsigned, otherwise-signed and edited ones."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.errors import SignatureError
from runtime.manifest import manifest_digest
from sdcompile.codegen.artifact import generate_signing_key, load_signing_key
from sdcompile.compiler import compile_model
from sdcompile.errors import OptionError
from sdcompile.passes.context import CompileOptions
from tests.artifact.conftest import edit_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("keys")
    return {name: generate_signing_key(d / name) for name in ("publisher", "stranger")}


@pytest.fixture(scope="module")
def signed(tiny_ldm_safetensors, keys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signed") / "clip"
    compile_model(tiny_ldm_safetensors, out, CompileOptions(target="cpu"), sign_key=keys["publisher"][0])
    return out


def test_keygen_writes_a_private_and_a_public_key(keys, tmp_path):
    priv, pub = keys["publisher"]
    assert pub.name == priv.name + ".pub"
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes() and b"BEGIN PUBLIC KEY" in pub.read_bytes()
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600  # a signing key is a secret
    with pytest.raises(OptionError, match="never overwrites"):
        generate_signing_key(priv)


def test_signed_artifact_runs_for_its_key_only(signed, keys, tiny_ids):
    m = json.loads((signed / "manifest.json").read_text())
    assert m["signature"]["algorithm"] == "ed25519" and m["digest"]["sha256"] == manifest_digest(m)
    model = runtime.load(signed, trusted_keys=[keys["publisher"][1]])
    assert model.signer == m["signature"]["key_id"]
    assert model.run({"input_ids": tiny_ids})["last_hidden_state"].shape == (2, 77, 128)
    runtime.load(signed, trusted_keys=[keys["stranger"][1], keys["publisher"][1]])  # any trusted key will do
    runtime.load(signed)  # without trusted keys a signature is not required (and the digest still checked)
    with pytest.raises(SignatureError, match="verifies with none of the trusted keys"):
        runtime.load(signed, trusted_keys=[keys["stranger"][1]])


def test_unsigned_artifact_refused_when_keys_are_trusted(clip_artifact, keys):
    with pytest.raises(SignatureError, match="is not signed.*--sign-key"):
        runtime.load(clip_artifact, trusted_keys=[keys["publisher"][1]])
    # verify=False skips the digest for a hand-edited manifest, never the signature a caller asked for
    with pytest.raises(SignatureError, match="is not signed"):
        runtime.load(clip_artifact, verify=False, trusted_keys=[keys["publisher"][1]])


def test_edited_signed_artifact_refused(signed, keys, tmp_path):
    """An attacker can recompute the digest after an edit, but not the signature."""
    pub = keys["publisher"][1]

    def widen(m):
        m["functions"]["encode_text"]["inputs"]["input_ids"]["max_value"] = 10**6

    bad = edit_manifest(signed, tmp_path / "a", widen, reseal=True)
    runtime.load(bad)  # consistent, so only the signature can tell
    with pytest.raises(SignatureError, match="changed after signing"):
        runtime.load(bad, trusted_keys=[pub])
    stripped = edit_manifest(signed, tmp_path / "b", lambda m: m.pop("signature"), reseal=False)
    with pytest.raises(SignatureError, match="is not signed"):
        runtime.load(stripped, trusted_keys=[pub])
    junk = edit_manifest(signed, tmp_path / "c", lambda m: m["signature"].update(value="not base64!"), reseal=False)
    with pytest.raises(SignatureError, match="signature record is malformed"):
        runtime.load(junk, trusted_keys=[pub])


def test_signing_is_deterministic(tiny_ldm_safetensors, signed, keys, tmp_path):
    again = tmp_path / "again"
    compile_model(tiny_ldm_safetensors, again, CompileOptions(target="cpu"), sign_key=keys["publisher"][0])
    assert (again / "manifest.json").read_bytes() == (signed / "manifest.json").read_bytes()


def test_bad_keys_are_clear_errors(keys, tmp_path, clip_artifact):
    priv, pub = keys["publisher"]
    with pytest.raises(OptionError, match="not a PEM private key"):
        load_signing_key(pub)
    with pytest.raises(OptionError, match="cannot read it"):
        load_signing_key(tmp_path / "missing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    enc = tmp_path / "enc.pem"
    enc.write_bytes(
        load_signing_key(priv).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(OptionError, match="is encrypted"):
        load_signing_key(enc)
    ecdsa = tmp_path / "ec.pem"
    ecdsa.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(OptionError, match="Ed25519"):
        load_signing_key(ecdsa)
    with pytest.raises(SignatureError, match="is a private key"):
        runtime.load(clip_artifact, trusted_keys=[priv])
    with pytest.raises(SignatureError, match="not a PEM public key"):
        runtime.load(clip_artifact, trusted_keys=[clip_artifact / "manifest.json"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from sdcompile.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_signs_and_checks(tiny_ldm_safetensors, tmp_path):
    key = tmp_path / "k"
    r = _cli("keygen", "-o", str(key))
    assert r.returncode == 0 and key.exists() and Path(f"{key}.pub").exists(), r.stderr
    out = tmp_path / "art"
    r = _cli("compile", str(tiny_ldm_safetensors), "-o", str(out), "--no-progress", "--sign-key", str(key))
    assert r.returncode == 0, r.stderr
    np.save(tmp_path / "ids.npy", np.zeros((1, 77), np.int64))
    run = ["run", str(out), "--input", f"input_ids={tmp_path / 'ids.npy'}", "--output", str(tmp_path / "o.npz")]
    r = _cli(*run, "--trusted-key", f"{key}.pub")
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other"
    assert _cli("keygen", "-o", str(other)).returncode == 0
    r = _cli(*run, "--trusted-key", f"{other}.pub")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("sdcompile: error:") and "none of the trusted keys" in r.stderr
    r = _cli("compile", str(tiny_ldm_safetensors), "-o", str(tmp_path / "x"), "--sign-key", f"{key}.pub")
    assert r.returncode == 2 and "not a PEM private key" in r.stderr and not (tmp_path / "x").exists()


def test_runtime_checks_signatures_without_compiler(signed, keys, tmp_path):
    code = f"""
import builtins, sys
real_import = builtins.__import__
def guard(name, *a, **k):
    if name == "sdcompile" or name.startswith("sdcompile."):
        raise ImportError("compiler import blocked: " + name)
    return real_import(name, *a, **k)
builtins.__import__ = guard
import runtime
from runtime.errors import SignatureError
m = runtime.load({str(signed)!r}, trusted_keys=[{str(keys["publisher"][1])!r}])
try:
    runtime.load({str(signed)!r}, trusted_keys=[{str(keys["stranger"][1])!r}])
    sys.exit("accepted")
except SignatureError:
    pass
print("ok", m.signer)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ")
