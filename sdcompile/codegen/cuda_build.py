"""Build CUDA C into one fatbin holding SASS for a list of architectures plus PTX for forward compatibility.

Compiling needs nvcc but no GPU. One fatbin per artifact carries a cubin (SASS) per listed architecture, so a device
of any of those architectures (or a later minor revision of the same major) runs precompiled code, and PTX for the
newest one, which the driver JIT-compiles on any later GPU. This replaces the failure "no device code compatible
with CUDA arch 520" with a choice made at compile time and a check at load time (``runtime.device``).

nvcc's output is byte-deterministic for a given source, option list and nvcc version: neither the source path nor the
output path is embedded (checked by ``tests/e2e/test_cuda_build.py``). The option list *is* embedded, so every option
here is fixed (nothing depends on the machine, such as its core count).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from sdcompile.errors import OptionError, ToolchainError

# SASS architectures sdcompile builds by default: Turing (oldest nvcc 13 supports), Ampere (A100, RTX 30),
# Ada (RTX 40), Hopper; PTX for the newest makes Blackwell and later run through the driver's JIT.
DEFAULT_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]
DEFAULT_PTX = "compute_90"

# Real architectures nvcc 13.0 accepts (`nvcc --list-gpu-code`); the same numbers are valid as compute_XX (PTX).
# Kept as data so option parsing works without nvcc installed.
NVCC13_ARCHS = (75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121)
OLDEST_ARCH = 75

CUDA_SOURCE_FILE = "kernels_cuda.cu"
CUDA_FATBIN_FILE = "kernels_cuda.fatbin"

_NVCC_OPTIONS = ["--fatbin", "-O3", "--threads", "0"]
_NVCC_TIMEOUT_S = 3600

_ARCH_RE = re.compile(r"^(?:(sm|compute)_?)?(\d+)(?:\.(\d+))?$")


def _arch_number(major: int, minor: int) -> int:
    return major * 10 + minor


def _cc_of(arch: str) -> tuple[int, int]:
    """'sm_86' / 'compute_90' -> (8, 6) / (9, 0)."""
    n = int(arch.split("_", 1)[1])
    return n // 10, n % 10


def _supported_text() -> str:
    sass = ", ".join(f"sm_{n}" for n in NVCC13_ARCHS)
    return (
        f"nvcc 13 builds SASS for {sass} (the oldest is sm_{OLDEST_ARCH}, compute capability "
        f"{OLDEST_ARCH // 10}.{OLDEST_ARCH % 10}, Turing) and PTX for the same numbers as compute_XX"
    )


def _parse_one(item: str) -> str:
    raw = item
    s = item.strip().lower()
    m = _ARCH_RE.match(s)
    if not m:
        if re.match(r"^(sm|compute)_?\d+[af]$", s):
            raise OptionError(
                f"--cuda-arch: {raw!r} is an architecture-specific variant; sdcompile builds only portable code "
                f"(sm_XX, compute_XX). Use {s.rstrip('af')!r} instead"
            )
        raise OptionError(
            f"--cuda-arch: cannot read {raw!r} as a CUDA architecture; write it as sm_86, 86, 8.6 (SASS) or "
            f"compute_90 (PTX). {_supported_text()}"
        )
    prefix, num, minor = m.group(1), m.group(2), m.group(3)
    if minor is not None:
        if prefix is not None or len(minor) != 1:
            raise OptionError(
                f"--cuda-arch: cannot read {raw!r}; a compute capability is written like 8.6 (or sm_86, compute_90)"
            )
        number = _arch_number(int(num), int(minor))
    else:
        number = int(num)
        if number < 10:  # "9" alone is ambiguous with "90"; a bare major is not an architecture
            raise OptionError(f"--cuda-arch: {raw!r} is not an architecture; write 9.0, 90 or sm_90")
    kind = "compute" if prefix == "compute" else "sm"
    if number not in NVCC13_ARCHS:
        cc = f"{number // 10}.{number % 10}"
        if number < OLDEST_ARCH:
            what = (
                f"GPUs of compute capability {cc} (older than Turing) are not supported by CUDA 13; "
                "run on the cpu or vulkan target instead, or drop this architecture from --cuda-arch"
            )
        else:
            what = "pick one of the architectures listed, or drop this one from --cuda-arch"
        raise OptionError(
            f"--cuda-arch: unsupported CUDA architecture {raw!r} ({kind}_{number}, compute capability {cc}). "
            f"{_supported_text()}. {what}"
        )
    return f"{kind}_{number}"


def parse_arch_list(s: str) -> list[str]:
    """Parse a ``--cuda-arch`` value into sorted, de-duplicated ``sm_XX`` (SASS) then ``compute_XX`` (PTX) names.

    Accepts comma- or space-separated items: "sm_75,sm_86", "75,86", "8.6", "compute_90". Order in the option does
    not matter (the build's bytes must not depend on it).
    """
    items = [p for p in re.split(r"[,\s]+", s.strip()) if p]
    if not items:
        raise OptionError(
            f"--cuda-arch is empty; give a list such as {','.join(DEFAULT_ARCHS)},{DEFAULT_PTX}. {_supported_text()}"
        )
    archs = {_parse_one(p) for p in items}
    sass = sorted((a for a in archs if a.startswith("sm_")), key=_cc_of)
    ptx = sorted((a for a in archs if a.startswith("compute_")), key=_cc_of)
    return sass + ptx


def split_archs(archs: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Split an arch list into (SASS archs, PTX archs). ``None`` means the defaults.

    A list with no compute_XX entry gets PTX for its newest SASS architecture, as nvcc's own ``-arch=sm_XX`` does:
    without PTX a GPU newer than every listed architecture could run nothing.
    """
    if archs is None:
        return list(DEFAULT_ARCHS), [DEFAULT_PTX]
    norm = parse_arch_list(",".join(archs)) if archs else []
    sass = [a for a in norm if a.startswith("sm_")]
    ptx = [a for a in norm if a.startswith("compute_")]
    if not sass and not ptx:
        raise OptionError(f"no CUDA architecture given; {_supported_text()}")
    if not ptx:
        ptx = ["compute_" + sass[-1][3:]]
    return sass, ptx


def min_compute_capability(sass: Sequence[str], ptx: Sequence[str]) -> str:
    """The lowest compute capability any code in the build runs on (lowest SASS, or lowest PTX through the JIT).

    Not every capability above it is covered: SASS runs only within its major version. ``runtime.device`` decides
    for a given device.
    """
    ccs = [_cc_of(a) for a in list(sass) + list(ptx)]
    major, minor = min(ccs)
    return f"{major}.{minor}"


# --------------------------------------------------------------------------------------------------- tool lookup


def find_nvcc() -> Path:
    """nvcc from PATH, then ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, ``/usr/local/cuda/bin``."""
    cands: list[Path] = []
    w = shutil.which("nvcc")
    if w:
        cands.append(Path(w))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]) / "bin" / "nvcc")
    cands.append(Path("/usr/local/cuda/bin/nvcc"))
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise ToolchainError(
        "nvcc (the CUDA compiler) was not found on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin; building the "
        "cuda target needs the CUDA 13 toolkit (no GPU is needed to compile). Install it and put its bin directory "
        "on PATH or set CUDA_HOME, or compile for the cpu or vulkan target instead"
    )


@lru_cache(maxsize=8)
def _nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    except OSError as e:
        raise ToolchainError(f"could not run {nvcc} --version: {e}; check the CUDA toolkit installation") from e
    m = re.search(r"release [\d.]+, V([\d.]+)", out)
    if not m:
        raise ToolchainError(f"could not read nvcc's version from `{nvcc} --version`:\n{out.strip()}")
    return m.group(1)


def nvcc_version() -> str:
    """Full version of the nvcc that builds fatbins, e.g. '13.0.88'."""
    return _nvcc_version(str(find_nvcc()))


def _pip_cuobjdump() -> list[Path]:
    """cuobjdump inside the ``nvidia-cuda-cuobjdump`` wheel (it installs ``nvidia/cu13/bin/cuobjdump``)."""
    found: list[Path] = []
    try:
        dist = importlib.metadata.distribution("nvidia-cuda-cuobjdump")
        for f in dist.files or ():
            if f.name in ("cuobjdump", "cuobjdump.exe") and f.parent.name == "bin":
                found.append(Path(str(dist.locate_file(f))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for entry in sys.path:  # a copy of the package not registered as a distribution (vendored, zipapp, ...)
        base = Path(entry or ".") / "nvidia"
        if base.is_dir():
            found.extend(sorted(base.glob("cu*/bin/cuobjdump")))
    return found


def find_cuobjdump() -> Path:
    """cuobjdump from PATH, ``$CUDA_HOME/bin``, the ``nvidia-cuda-cuobjdump`` pip package, or /usr/local/cuda/bin."""
    cands: list[Path] = []
    w = shutil.which("cuobjdump")
    if w:
        cands.append(Path(w))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]) / "bin" / "cuobjdump")
    cands.extend(_pip_cuobjdump())
    cands.append(Path("/usr/local/cuda/bin/cuobjdump"))
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise ToolchainError(
        "cuobjdump was not found on PATH, in $CUDA_HOME/bin, in the nvidia-cuda-cuobjdump pip package or in "
        "/usr/local/cuda/bin; install it with `pip install nvidia-cuda-cuobjdump`"
    )


# --------------------------------------------------------------------------------------------------- build


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _validate_archs(sass: Iterable[str], ptx: Iterable[str]) -> tuple[list[str], list[str]]:
    sass_n = {_parse_one(a) for a in sass}
    ptx_n = {_parse_one(a) for a in ptx}
    for a in sass_n:
        if not a.startswith("sm_"):
            raise OptionError(f"{a!r} is PTX; pass it as ptx=, not in the SASS architecture list")
    for a in ptx_n:
        if not a.startswith("compute_"):
            raise OptionError(f"PTX architecture {a!r} must be written compute_XX")
    return sorted(sass_n, key=_cc_of), sorted(ptx_n, key=_cc_of)


def nvcc_command(
    nvcc: str | Path, archs: Sequence[str], ptx: Sequence[str], src: str | Path, out: str | Path
) -> list[str]:
    """The nvcc command line: one ``-gencode`` per SASS arch, one per PTX arch."""
    cmd: list[str] = [str(nvcc), *_NVCC_OPTIONS]
    for a in archs:
        n = a[3:]
        cmd += ["-gencode", f"arch=compute_{n},code=sm_{n}"]
    for p in ptx:
        n = p[8:]
        cmd += ["-gencode", f"arch=compute_{n},code=compute_{n}"]
    cmd += ["-o", str(out), str(src)]
    return cmd


def build_fatbin(
    source: str, archs: list[str], out_path: Path, *, ptx: str | Sequence[str] | None = DEFAULT_PTX
) -> dict:
    """Compile CUDA C ``source`` into one fatbin at ``out_path`` with SASS for each of ``archs`` plus PTX.

    The file is written atomically (a temporary file in the same directory, then ``os.replace``). Returns a JSON-able
    record: file name, SASS and PTX architectures, nvcc version, SHA-256 of the fatbin and the minimum compute
    capability it runs on. Raises ``ToolchainError`` (with nvcc's messages) when nvcc is missing or fails.
    """
    out_path = Path(out_path)
    ptx_list = [] if ptx is None else [ptx] if isinstance(ptx, str) else list(ptx)
    sass, ptx_list = _validate_archs(archs, ptx_list)
    if not sass and not ptx_list:
        raise OptionError(f"build_fatbin needs at least one architecture; {_supported_text()}")
    nvcc = find_nvcc()
    version = _nvcc_version(str(nvcc))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdcompile-nvcc-") as td:
        # Fixed file names in a private directory: nothing about the caller's paths reaches nvcc.
        src = Path(td) / "kernels.cu"
        src.write_text(source, encoding="utf-8")
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
        os.close(fd)
        cmd = nvcc_command(nvcc, sass, ptx_list, src.name, tmp)
        try:
            try:
                proc = subprocess.run(cmd, cwd=td, capture_output=True, text=True, timeout=_NVCC_TIMEOUT_S)
            except subprocess.TimeoutExpired as e:
                raise ToolchainError(
                    f"nvcc did not finish within {_NVCC_TIMEOUT_S} s building {out_path.name} for "
                    f"{', '.join(sass + ptx_list)}; build for fewer architectures with --cuda-arch"
                ) from e
            except OSError as e:
                raise ToolchainError(f"could not run {nvcc}: {e}; check the CUDA toolkit installation") from e
            if proc.returncode != 0 or os.path.getsize(tmp) == 0:
                text = (proc.stderr + proc.stdout).strip()
                if len(text) > 8000:
                    text = text[:4000] + "\n...\n" + text[-4000:]
                raise ToolchainError(
                    f"nvcc {version} failed (exit code {proc.returncode}) building {out_path.name} for "
                    f"{', '.join(sass + ptx_list)}:\n{text}\n"
                    f"command: {' '.join(cmd)}\n"
                    "If nvcc rejects an architecture, drop it from --cuda-arch or install a newer CUDA toolkit; "
                    "an error in the generated CUDA source is a bug in sdcompile: please report it with this output"
                )
            os.replace(tmp, out_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    data = out_path.read_bytes()
    return {
        "file": out_path.name,
        "archs": sass,
        "ptx": ptx_list,
        "nvcc_version": version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "min_cc": min_compute_capability(sass, ptx_list),
    }


def list_fatbin(path: Path) -> dict:
    """What a fatbin holds, read back with cuobjdump: {"elf": ["sm_75", ...], "ptx": ["compute_90", ...]}."""
    tool = find_cuobjdump()
    res: dict[str, list[str]] = {}
    for flag, key, pat in (
        ("--list-elf", "elf", r"\.(sm_\d+[af]?)\.cubin\s*$"),
        ("--list-ptx", "ptx", r"\.sm_(\d+[af]?)\.ptx\s*$"),
    ):
        proc = subprocess.run([str(tool), flag, str(path)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ToolchainError(f"cuobjdump {flag} {path} failed:\n{(proc.stderr + proc.stdout).strip()}")
        found = []
        for line in proc.stdout.splitlines():
            m = re.search(pat, line)
            if m:
                found.append(m.group(1) if key == "elf" else "compute_" + m.group(1))
        res[key] = sorted(set(found), key=lambda a: _cc_of(a.rstrip("af")))
    return res


def build_cuda(
    specs: Sequence,
    archs: Sequence[str] | None,
    out_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Lower ``specs`` (``KernelSpec``s) to CUDA C, build the fatbin, and return the manifest's cuda section.

    ``archs``: output of ``parse_arch_list`` or ``None`` for the defaults (SASS sm_75..sm_90 plus PTX compute_90);
    a list without compute_XX gets PTX for its newest SASS architecture. Writes ``kernels_cuda.cu`` and
    ``kernels_cuda.fatbin`` into ``out_dir``.
    """
    from sdcompile.codegen.build import lower_gpu  # the lowering layer imports TVM; keep it out of import time

    sass, ptx = split_archs(archs)
    out_dir = Path(out_dir)
    uniq: dict[str, object] = {}
    for s in specs:
        uniq.setdefault(s.name, s)
    if progress:
        progress(f"cuda: lowering {len(uniq)} kernels to CUDA C")
    source, launch = lower_gpu(list(uniq.values()), "cuda")
    _atomic_write(out_dir / CUDA_SOURCE_FILE, source.encode("utf-8"))
    if progress:
        progress(f"cuda: nvcc {', '.join(sass + ptx)}")
    record = build_fatbin(source, sass, out_dir / CUDA_FATBIN_FILE, ptx=ptx)
    kernels = {}
    for name, spec in uniq.items():
        if name not in launch:
            raise RuntimeError(f"lower_gpu returned no launch information for kernel {name}")  # internal bug
        kernels[name] = {"params": [_param_record(p) for p in spec.params], "launch": launch[name]}
    return {
        "target": "cuda",
        "files": [CUDA_SOURCE_FILE, CUDA_FATBIN_FILE],
        "build": record,
        "kernels": kernels,
    }


def _param_record(p) -> dict:
    rec = {"name": p.name, "kind": p.kind, "shape": list(p.shape), "dtype": p.dtype, "is_output": p.is_output}
    # np_dtype: what the buffer holds (raw weights travel as uint32 words, see kernels/spec.py)
    rec["np_dtype"] = "uint32" if p.kind in ("raw", "lut") else p.dtype
    if p.kind in ("raw", "lut"):
        rec["words"] = p.words()
    return rec
