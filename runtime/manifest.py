"""Check an artifact's manifest before anything it names is opened or run.

``verify_manifest`` refuses, with a `ManifestError` or `SignatureError` that says what is wrong and where:

1. digest: a SHA-256 over the manifest's canonical JSON (every key but "digest" and "signature"; keys sorted, no
   whitespace, ASCII), written with the artifact. Any edit to manifest.json shows here.
2. signature, when the caller names trusted public keys: an Ed25519 signature over that digest by one of them. A
   digest stops accidents but not an attacker, who can recompute it; a signature needs the private key.
3. structure: every record the runtime reads has the fields and types it reads, so nothing below meets a KeyError.
4. paths: every file the manifest names (weights, lookup tables, kernel libraries and shaders, the CUDA fatbin, the
   vocabulary) is a plain relative path that stays inside the artifact directory, symlinks resolved, and is listed
   under "files", so its hash is checked.
5. plan: each function's steps name kernels the manifest describes, pass one argument per kernel parameter, and refer
   to inputs, outputs, weights, slots and lookup tables that exist, with the dtype and at least the bytes the
   parameter reads; every slot or output a step reads was written by an earlier step of the same function, and
   every output is written whole, in the shape the signature gives.
6. files: each listed file's size and SHA-256.

Checks 3 to 5 do not lean on the digest: they hold for a manifest whose digest was recomputed after an edit, and they
keep a malformed plan from reaching a kernel even when the caller skips the digest and hashes (``digest=False``).
What they cannot see: whether a kernel's parameter record matches its compiled binary (on the CPU, TVM's argument
check stops a mismatch at the call), or which of two kernels with identical parameters a step should run. Only the
digest and a signature vouch for those.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from runtime.errors import ManifestError, SignatureError

UNHASHED_KEYS = ("digest", "signature")  # what the digest cannot cover: itself and what signs it
SIGNATURE_ALGORITHM = "ed25519"
# The signed message is a labelled digest, so an Ed25519 key that also signs other things never signs a manifest by
# accident (domain separation).
_SIGNED_PREFIX = b"sdcompile-artifact-manifest-sha256:"
# Activation and signature dtypes and their sizes: numpy knows bfloat16 only through ml_dtypes, so no np.dtype here.
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "uint32": 4}
PARAM_KINDS = ("act", "f32", "raw", "lut")
TARGETS = ("cpu", "vulkan", "cuda")
CUDA_FATBIN = "kernels_cuda.fatbin"  # the CUDA executor reads it by this name
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------- digest and signature


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes the digest covers: the manifest without its digest and signature, as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k not in UNHASHED_KEYS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def manifest_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(manifest)).hexdigest()


def signed_message(digest: str) -> bytes:
    return _SIGNED_PREFIX + digest.encode("ascii")


def key_id(public_key) -> str:
    """A short name for an Ed25519 public key (the start of its raw bytes' SHA-256), for messages and the record."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _cryptography():
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise SignatureError(
            "checking an artifact's signature needs the `cryptography` package; install it (pip install cryptography)"
        ) from None
    return InvalidSignature, UnsupportedAlgorithm, serialization, Ed25519PublicKey


def load_trusted_keys(keys: Iterable[Any]) -> list[tuple[str, Any]]:
    """[(key id, Ed25519 public key)] from PEM public key files (paths), PEM bytes or key objects."""
    _, unsupported, serialization, ed25519_public = _cryptography()
    out = []
    for k in keys:
        if isinstance(k, ed25519_public):
            out.append((key_id(k), k))
            continue
        if isinstance(k, (bytes, bytearray)):
            data, where = bytes(k), "(given as bytes)"
        else:
            where = str(k)
            try:
                data = Path(k).read_bytes()
            except OSError as e:
                raise SignatureError(f"trusted key {where}: cannot read it ({e.strerror or e})") from None
        if b"PRIVATE KEY" in data:
            raise SignatureError(
                f"trusted key {where} is a private key; give its public key (the .pub file `sdcompile keygen` wrote)"
            )
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, unsupported) as e:
            raise SignatureError(
                f"trusted key {where} is not a PEM public key ({e}); make a key pair with `sdcompile keygen`"
            ) from None
        if not isinstance(key, ed25519_public):
            raise SignatureError(
                f"trusted key {where} is a {type(key).__name__}; artifacts are signed with Ed25519 keys "
                "(`sdcompile keygen`)"
            )
        out.append((key_id(key), key))
    if not out:
        raise SignatureError("signed artifacts were required but no trusted key was given")
    return out


def check_digest(root: Path, m: dict[str, Any]) -> str:
    rec = m.get("digest")
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or not _HEX64.fullmatch(rec["sha256"]):
        raise ManifestError(
            f"{root}: the manifest carries no digest of its contents, so edits to it cannot be detected; "
            "recompile the model"
        )
    if manifest_digest(m) != rec["sha256"]:
        raise ManifestError(
            f"{root}: manifest.json does not match its digest: it was edited or damaged after compiling; "
            "recompile the model"
        )
    return rec["sha256"]


def check_signature(root: Path, m: dict[str, Any], trusted: list[tuple[str, Any]]) -> str:
    """The id of the trusted key that signed ``m``'s digest (``check_digest`` must have passed)."""
    invalid, *_ = _cryptography()
    ids = ", ".join(k for k, _ in trusted)
    sig = m.get("signature")
    if sig is None:
        raise SignatureError(
            f"{root}: the artifact is not signed, and only artifacts signed by a trusted key ({ids}) may run; "
            "compile it with --sign-key KEY"
        )
    raw = None
    if isinstance(sig, dict) and sig.get("algorithm") == SIGNATURE_ALGORITHM and isinstance(sig.get("value"), str):
        try:
            raw = base64.b64decode(sig["value"], validate=True)
        except ValueError:
            raw = None
    if raw is None or len(raw) != 64:
        raise SignatureError(f"{root}: the manifest's signature record is malformed; sign the artifact again")
    msg = signed_message(m["digest"]["sha256"])
    for kid, key in trusted:
        try:
            key.verify(raw, msg)
            return kid
        except invalid:
            continue
    raise SignatureError(
        f"{root}: the signature (key {sig.get('key_id')!r}) verifies with none of the trusted keys ({ids}): the "
        "artifact was signed by another key or changed after signing; use the artifact as its publisher signed it, "
        "or trust the key that signed it"
    )


# --------------------------------------------------------------------------------------------------- structure


class _Checker:
    """Walks the manifest, refusing the first thing the runtime could not use as written."""

    def __init__(self, root: Path, m: dict[str, Any]) -> None:
        self.root, self.m = root, m
        self.named: list[tuple[str, str]] = []  # (where, relative path) of every file the manifest names

    def fail(self, what: str) -> None:
        raise ManifestError(f"{self.root}: the manifest is damaged or was edited: {what}; recompile the model")

    def obj(self, x: Any, where: str) -> dict:
        if not isinstance(x, dict):
            self.fail(f"{where} is {_kind(x)}, not an object")
        return x

    def seq(self, x: Any, where: str, nonempty: bool = False) -> list:
        if not isinstance(x, list):
            self.fail(f"{where} is {_kind(x)}, not a list")
        if nonempty and not x:
            self.fail(f"{where} is empty")
        return x

    def integer(self, x: Any, where: str, lo: int = 0) -> int:
        if not isinstance(x, int) or isinstance(x, bool) or x < lo:
            self.fail(f"{where} is {x!r}, not an integer of at least {lo}")
        return x

    def name(self, x: Any, where: str) -> str:
        if not isinstance(x, str) or not x:
            self.fail(f"{where} is {x!r}, not a name")
        return x

    def shape(self, x: Any, where: str, lo: int = 0) -> list[int]:
        return [self.integer(d, f"{where}[{i}]", lo) for i, d in enumerate(self.seq(x, where))]

    def dtype(self, x: Any, where: str) -> str:
        if not isinstance(x, str) or x not in ITEMSIZE:
            self.fail(f"{where} is {x!r}, not one of {', '.join(ITEMSIZE)}")
        return x

    def file(self, x: Any, where: str) -> str:
        rel = self.name(x, where)
        self.named.append((where, rel))
        return rel

    # --- the sections ---------------------------------------------------------------------------------------

    def structure(self) -> None:
        m = self.m
        if m.get("target") not in TARGETS:
            self.fail(f"target is {m.get('target')!r}, not one of {', '.join(TARGETS)}")
        files = self.obj(m.get("files"), "files")
        for rel, rec in files.items():
            rec = self.obj(rec, f"files[{rel!r}]")
            self.integer(rec.get("bytes"), f"files[{rel!r}].bytes")
            if not isinstance(rec.get("sha256"), str) or not _HEX64.fullmatch(rec["sha256"]):
                self.fail(f"files[{rel!r}].sha256 is not a SHA-256 in hex")
        self.weights()
        self.luts()
        self.kernels()
        self.memory()
        self.pipeline()
        functions = self.obj(m.get("functions"), "functions")
        if not functions:
            self.fail("functions is empty")
        for fn, f in functions.items():
            self.signature(fn, self.obj(f, f"function {fn!r}"))

    def weights(self) -> None:
        w = self.obj(self.m.get("weights"), "weights")
        self.file(w.get("file"), "weights.file")
        for name, t in self.obj(w.get("tensors"), "weights.tensors").items():
            t = self.obj(t, f"weight {name!r}")
            self.name(t.get("dtype"), f"weight {name!r} dtype")
            self.shape(t.get("shape"), f"weight {name!r} shape")
            if t.get("component") is not None:
                self.name(t["component"], f"weight {name!r} component")

    def luts(self) -> None:
        rec = self.m.get("luts")
        if rec is None:
            return
        rec = self.obj(rec, "luts")
        tables = self.obj(rec.get("tables"), "luts.tables")
        for name, t in tables.items():
            t = self.obj(t, f"lookup table {name!r}")
            self.integer(t.get("offset"), f"lookup table {name!r} offset")
            self.integer(t.get("words"), f"lookup table {name!r} words")
        if tables:
            self.file(rec.get("file"), "luts.file")

    def kernels(self) -> None:
        target = self.m["target"]
        k = self.obj(self.m.get("kernels"), "kernels")
        for i, rel in enumerate(self.seq(k.get("files", []), "kernels.files")):
            self.file(rel, f"kernels.files[{i}]")
        if target == "cuda":
            build = self.obj(k.get("build"), "kernels.build (the CUDA build record)")
            if build.get("file") != CUDA_FATBIN:
                self.fail(f"kernels.build.file is {build.get('file')!r}; the CUDA runtime reads {CUDA_FATBIN!r}")
            self.file(CUDA_FATBIN, "the CUDA fatbin")
        for name, info in self.obj(k.get("kernels"), "kernels.kernels").items():
            where = f"kernel {name!r}"
            info = self.obj(info, where)
            names = []
            for i, p in enumerate(self.seq(info.get("params"), f"{where} params")):
                pw = f"{where} parameter {i}"
                p = self.obj(p, pw)
                names.append(self.name(p.get("name"), f"{pw} name"))
                if p.get("kind") not in PARAM_KINDS:
                    self.fail(f"{pw} kind is {p.get('kind')!r}, not one of {', '.join(PARAM_KINDS)}")
                self.shape(p.get("shape"), f"{pw} shape")
                self.name(p.get("dtype"), f"{pw} dtype")
                if not isinstance(p.get("is_output"), bool):
                    self.fail(f"{pw} is_output is {p.get('is_output')!r}, not true or false")
                if p["kind"] in ("raw", "lut"):
                    self.integer(p.get("words"), f"{pw} words")
                else:
                    self.dtype(p["dtype"], f"{pw} dtype")
                # what the executors hand these kinds: small weights as float32, tables as uint32 words
                fixed = {"f32": "float32", "lut": "uint32"}.get(p["kind"])
                if fixed is not None and p["dtype"] != fixed:
                    self.fail(f"{pw} of kind {p['kind']!r} has dtype {p['dtype']!r}, not {fixed}")
            if len(set(names)) != len(names):
                self.fail(f"{where} has two parameters of one name")
            launch = self.seq(info.get("launch"), f"{where} launch", nonempty=True)
            if target == "cpu" and len(launch) != 1:
                self.fail(f"{where} has {len(launch)} launch entries; a CPU kernel is one library call")
            for j, e in enumerate(launch):
                ew = f"{where} launch {j}"
                e = self.obj(e, ew)
                self.name(e.get("entry", e.get("func")), f"{ew} entry")
                if target != "cuda":
                    self.file(e.get("file"), f"{ew} file")
                for b in self.seq(e.get("buffers", e.get("args", names)), f"{ew} buffers"):
                    if b not in names and not (
                        target == "cuda" and isinstance(b, int) and not isinstance(b, bool) and 0 <= b < len(names)
                    ):
                        self.fail(f"{ew} binds {b!r}, which is not a parameter of the kernel")
                if target != "cpu":
                    for key in ("grid", "block") if target == "cuda" else ("grid",):
                        dims = self.shape(e.get(key), f"{ew} {key}", lo=1)
                        if not 1 <= len(dims) <= 3:
                            self.fail(f"{ew} {key} has {len(dims)} dimensions")
                    for q, pod in enumerate(self.seq(e.get("pods", []), f"{ew} pods")):
                        pod = self.obj(pod, f"{ew} pod {q}")
                        if pod.get("dtype") not in ("int32", "uint32", "float32"):
                            self.fail(f"{ew} pod {q} dtype is {pod.get('dtype')!r}")
                        v = pod.get("value")
                        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                            self.fail(f"{ew} pod {q} value is {v!r}, not a number")

    def memory(self) -> None:
        mem = self.obj(self.m.get("memory"), "memory")
        self.integer(mem.get("peak_bytes"), "memory.peak_bytes")
        if not isinstance(mem.get("offload", False), bool):
            self.fail(f"memory.offload is {mem.get('offload')!r}, not true or false")
        if mem.get("offload"):
            per = self.obj(mem.get("functions"), "memory.functions")
            for fn in self.obj(self.m.get("functions"), "functions"):
                rec = self.obj(per.get(fn), f"memory.functions[{fn!r}]")
                for c in self.seq(rec.get("components"), f"memory.functions[{fn!r}].components"):
                    self.name(c, f"memory.functions[{fn!r}] component")

    def pipeline(self) -> None:
        pipe = self.m.get("pipeline")
        if pipe is None:
            return
        pipe = self.obj(pipe, "pipeline")
        vocab = self.obj(pipe.get("vocab"), "pipeline.vocab")
        self.file(vocab.get("file"), "pipeline.vocab.file")
        self.integer(vocab.get("pad_token_id"), "pipeline.vocab.pad_token_id")
        self.name(pipe.get("kind"), "pipeline.kind")
        s = pipe.get("vae_scaling_factor")  # none where the artifact holds no VAE
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0):
            self.fail(f"pipeline.vae_scaling_factor is {s!r}, not a positive number")
        if pipe.get("batch") is not None:
            self.integer(pipe["batch"], "pipeline.batch", lo=1)
        for i, size in enumerate(self.seq(pipe.get("sizes") or [], "pipeline.sizes")):
            if len(self.shape(size, f"pipeline.sizes[{i}]", lo=1)) != 2:
                self.fail(f"pipeline.sizes[{i}] is {size!r}, not [width, height]")
        if pipe.get("scheduler") is not None:
            self.obj(pipe["scheduler"], "pipeline.scheduler")
        tiling = pipe.get("vae_tiling")
        if tiling:
            tiling = self.obj(tiling, "pipeline.vae_tiling")
            self.integer(tiling.get("tile"), "pipeline.vae_tiling.tile", lo=1)
            self.integer(tiling.get("overlap"), "pipeline.vae_tiling.overlap")
            functions = self.obj(self.m.get("functions"), "functions")
            for key in ("functions", "encode_functions"):
                for size, fn in self.obj(tiling.get(key) or {}, f"pipeline.vae_tiling.{key}").items():
                    if not isinstance(fn, str) or fn not in functions:
                        self.fail(f"pipeline.vae_tiling.{key}[{size!r}] names {fn!r}, which is not a function")

    def signature(self, fn: str, f: dict) -> None:
        for part in ("inputs", "outputs"):
            for name, spec in self.obj(f.get(part), f"function {fn!r} {part}").items():
                where = f"function {fn!r} {part[:-1]} {name!r}"
                spec = self.obj(spec, where)
                self.shape(spec.get("shape"), f"{where} shape", lo=1)
                self.dtype(spec.get("dtype"), f"{where} dtype")
                for a in self.seq(spec.get("accept", []), f"{where} accept"):
                    self.dtype(a, f"{where} accept")
                if spec.get("max_value") is not None:
                    self.integer(spec["max_value"], f"{where} max_value")
        for i, n in enumerate(self.seq(f.get("slots"), f"function {fn!r} slots")):
            self.integer(n, f"function {fn!r} slot {i}")
        for i, step in enumerate(self.seq(f.get("steps"), f"function {fn!r} steps", nonempty=True)):
            step = self.obj(step, f"function {fn!r} step {i}")
            self.name(step.get("kernel"), f"function {fn!r} step {i} kernel")
            self.seq(step.get("args"), f"function {fn!r} step {i} args")

    # --- paths ------------------------------------------------------------------------------------------------

    def paths(self) -> None:
        for rel in self.m["files"]:
            self.confined(rel, f"files entry {rel!r}")
        for where, rel in self.named:
            self.confined(rel, where)
            if rel not in self.m["files"]:
                self.fail(f"{where} names {rel!r}, which is not listed under files (its hash would go unchecked)")

    def confined(self, rel: str, where: str) -> Path:
        """``rel`` as a path inside the artifact: relative, without '..', and not leading out through a symlink."""
        parts = rel.split("/")
        if (
            "\0" in rel
            or "\\" in rel
            or PurePosixPath(rel).is_absolute()
            or PureWindowsPath(rel).drive
            or any(p in ("", ".", "..") for p in parts)
        ):
            self.fail(f"{where} is {rel!r}: a file of the artifact must be a relative path inside it, without '..'")
        full = self.root / rel
        try:
            real, base = full.resolve(), self.root.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            self.fail(f"{where} ({rel!r}) cannot be resolved ({e})")
        if not real.is_relative_to(base):
            self.fail(f"{where} ({rel!r}) leads outside the artifact directory (to {real})")
        return full

    # --- the plan ---------------------------------------------------------------------------------------------

    def plan(self) -> None:
        m = self.m
        kernels = m["kernels"]["kernels"]
        tensors = m["weights"]["tensors"]
        tables = (m.get("luts") or {}).get("tables") or {}
        # The runtime allocates the slots (shared by the functions, each as large as its largest use) and every
        # function's input and output buffers; the memory plan's peak includes them all, and the peak is what is
        # checked against the device's memory, so buffers past it are refused here rather than allocated.
        slots: list[int] = []
        for f in m["functions"].values():
            for i, n in enumerate(f["slots"]):
                if i == len(slots):
                    slots.append(0)
                slots[i] = max(slots[i], n)
        buffers = sum(slots) + sum(
            _nbytes(v) for f in m["functions"].values() for v in (*f["inputs"].values(), *f["outputs"].values())
        )
        if buffers > m["memory"]["peak_bytes"]:
            self.fail(
                f"its buffers take {buffers} bytes, more than the {m['memory']['peak_bytes']} bytes of its memory peak"
            )
        for fn, f in m["functions"].items():
            sizes = {("input", k): _nbytes(v) for k, v in f["inputs"].items()}
            sizes.update({("output", k): _nbytes(v) for k, v in f["outputs"].items()})
            sizes.update({("slot", i): n for i, n in enumerate(f["slots"])})
            written: dict[tuple, list[tuple[int, int]]] = {}
            for i, step in enumerate(f["steps"]):
                where = f"function {fn!r} step {i} ({step['kernel']})"
                info = kernels.get(step["kernel"])
                if info is None:
                    self.fail(f"{where} runs a kernel the manifest does not describe")
                params, args = info["params"], step["args"]
                if len(args) != len(params):
                    self.fail(f"{where} passes {len(args)} arguments to a kernel of {len(params)} parameters")
                reads, writes = [], []
                for a, (ref, p) in enumerate(zip(args, params)):
                    span = self.argument(f, f"{where} argument {a} ({p['name']})", ref, p, tensors, tables, sizes)
                    if span is None:
                        continue
                    key, lo, hi = span
                    if p["is_output"]:
                        writes.append(span)
                        continue
                    reads.append(span)
                    if key[0] != "input" and not _covered(written.get(key, []), lo, hi):
                        self.fail(f"{where} reads {key[0]} {key[1]!r} before any step of the function writes it")
                # Kernels are not in place: what a step writes must not overlap what it reads or writes elsewhere.
                for j, (key, lo, hi) in enumerate(writes):
                    for k2, lo2, hi2 in reads + writes[:j]:
                        if k2 == key and lo < hi2 and lo2 < hi:
                            self.fail(f"{where} writes {key[0]} {key[1]!r} where it also reads or writes")
                for key, lo, hi in writes:
                    written[key] = _add(written.get(key, []), lo, hi)
            for o, spec in f["outputs"].items():
                if not _covered(written.get(("output", o), []), 0, _count(spec["shape"]) * ITEMSIZE[spec["dtype"]]):
                    self.fail(f"function {fn!r} output {o!r} is not written (whole) by any step")

    def argument(self, f, where, ref, p, tensors, tables, sizes) -> tuple[tuple, int, int] | None:
        """Check one argument against its parameter; the bytes it covers ((kind, name), start, end) for a buffer."""
        ref = self.obj(ref, where)
        kinds = [k for k in ("input", "output", "weight", "slot", "lut") if k in ref]
        if len(kinds) != 1:
            self.fail(f"{where} refers to {kinds or 'nothing'}; an argument is one input, output, weight, slot or lut")
        kind = kinds[0]
        if (kind == "lut") != (p["kind"] == "lut"):
            self.fail(f"{where} passes a {kind} for a parameter of kind {p['kind']!r}")
        if kind == "lut":
            have = tables.get(ref["lut"]) if isinstance(ref["lut"], str) else None
            if have is None or have["words"] != p["words"]:
                self.fail(
                    f"{where} reads lookup table {ref['lut']!r} ({p['words']} words) but the artifact "
                    + ("does not hold it" if have is None else f"holds {have['words']} words")
                )
            return None
        if (kind == "weight") != (p["kind"] == "raw") and not (kind == "weight" and p["kind"] == "f32"):
            self.fail(f"{where} passes a {kind} for a parameter of kind {p['kind']!r}")
        if kind == "weight":
            t = tensors.get(ref["weight"]) if isinstance(ref["weight"], str) else None
            if t is None:
                self.fail(f"{where} names weight {ref['weight']!r}, which the weights table does not hold")
            if p["is_output"]:
                self.fail(f"{where} would write into weight {ref['weight']!r}")
            want = p["dtype"] if p["kind"] == "raw" else "f32"
            if t["dtype"] != want or _count(t["shape"]) != _count(p["shape"]):
                self.fail(
                    f"{where} reads weight {ref['weight']!r} as {want}{p['shape']}, but it is {t['dtype']}{t['shape']}"
                )
            return None
        self.dtype(p["dtype"], f"{where} dtype")
        off = self.integer(ref.get("offset", 0), f"{where} offset")
        n = _count(p["shape"]) * ITEMSIZE[p["dtype"]]
        name = ref[kind]
        if kind == "slot":
            if not isinstance(name, int) or isinstance(name, bool) or not 0 <= name < len(f["slots"]):
                self.fail(f"{where} uses slot {name!r}; the function has {len(f['slots'])} slots")
        else:
            spec = f[kind + "s"].get(name) if isinstance(name, str) else None
            if spec is None:
                self.fail(f"{where} names {kind} {name!r}, which the function's signature does not have")
            if spec["dtype"] != p["dtype"]:
                self.fail(f"{where} is {p['dtype']} but {kind} {name!r} is {spec['dtype']}")
            if kind == "input" and p["is_output"]:
                self.fail(f"{where} would write into input {name!r}")
            if kind == "output" and p["is_output"] and (off or not _same_layout(p["shape"], spec["shape"])):
                self.fail(
                    f"{where} writes {p['shape']} at byte {off} of output {name!r}, whose shape is {spec['shape']}"
                )
        if off + n > sizes[(kind, name)]:
            self.fail(f"{where} covers bytes {off}..{off + n} of {kind} {name!r}, which has {sizes[(kind, name)]}")
        return (kind, name), off, off + n


def _kind(x: Any) -> str:
    return "missing" if x is None else f"a {type(x).__name__} ({json.dumps(x)[:40]})"


def _count(shape: list[int]) -> int:
    return math.prod(int(d) for d in shape)


def _nbytes(spec: dict) -> int:
    return _count(spec["shape"]) * ITEMSIZE[spec["dtype"]]


def _same_layout(param: list[int], sig: list[int]) -> bool:
    """A kernel writes a function output in the output's own layout: as many elements, the same innermost axis
    (kernels fold the leading axes into rows, so [77, 128] writes a [1, 77, 128] output but not a [1, 128, 77] one)."""
    return _count(param) == _count(sig) and (not param or not sig or param[-1] == sig[-1])


def _add(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The union of sorted disjoint spans and [lo, hi), sorted and disjoint."""
    out = []
    for a, b in sorted([*spans, (lo, hi)]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _covered(spans: list[tuple[int, int]], lo: int, hi: int) -> bool:
    return lo >= hi or any(a <= lo and hi <= b for a, b in spans)


# ----------------------------------------------------------------------------------------------------- files


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Each listed file's size and SHA-256 (paths were confined by ``verify_manifest`` before this runs)."""
    for rel, rec in sorted(manifest.get("files", {}).items()):
        p = Path(root) / rel
        if not p.is_file():
            raise ManifestError(f"{root}: artifact file {rel} is missing; copy the whole artifact directory")
        if p.stat().st_size != rec["bytes"] or _sha256(p) != rec["sha256"]:
            raise ManifestError(f"{p}: contents do not match the manifest's hash (damaged or modified); recompile")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_manifest(
    root: str | Path,
    manifest: dict[str, Any],
    *,
    digest: bool = True,
    files: bool = True,
    trusted_keys: Iterable[Any] | None = None,
) -> str | None:
    """Refuse an artifact whose manifest was altered, names files outside it or describes a plan that cannot run
    (see the module's docstring). ``digest=False`` skips the digest (a test or a debugging session editing a
    manifest by hand) and ``files=False`` the file hashes, never the structure, paths and plan. With
    ``trusted_keys`` the manifest must carry a valid signature by one of them, whatever ``digest`` says. Returns the
    id of the key that signed it."""
    root = Path(root)
    signer = None
    if digest or trusted_keys is not None:
        check_digest(root, manifest)
    if trusted_keys is not None:
        signer = check_signature(root, manifest, load_trusted_keys(trusted_keys))
    c = _Checker(root, manifest)
    c.structure()
    c.paths()
    c.plan()
    if files:
        verify_files(root, manifest)
    return signer
