"""Run kernels on the CPU with every input placed against an inaccessible page (before it, then after it), so a
read outside a buffer faults instead of passing unseen. Run as a child process: ``python -m
tests.kernels.guarded SPEC_JSON``; exit 0 means every kernel ran both ways and agreed with an unguarded run."""

from __future__ import annotations

import ctypes
import json
import mmap
import sys
import tempfile
from pathlib import Path

import numpy as np

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_keep: list = []


def run_guarded(specs: list, env: dict[str, str] | None = None) -> None:
    """Run ``specs`` ((op, attrs) pairs) guarded in a child process (this module), with ``env`` added to its
    environment; assert that it exited 0, the end of its stderr in the message."""
    import os
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "tests.kernels.guarded", json.dumps(specs)],
        cwd=Path(__file__).resolve().parents[2],
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"


def guarded(nbytes: int, at_end: bool) -> np.ndarray:
    """A uint8 array of ``nbytes`` that ends at (``at_end``) or starts at an inaccessible page."""
    size = -(-nbytes // PAGE) * PAGE
    m = mmap.mmap(-1, size + 2 * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    _keep.append(m)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for page in (base, base + PAGE + size):
        if _libc.mprotect(page, PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
    start = PAGE + (size - nbytes if at_end else 0)
    return np.frombuffer(m, np.uint8, count=nbytes, offset=start)


def main(specs_json: str) -> int:
    from runtime.executors.cpu import Buffer, Executor
    from sdcompile.codegen.build import build_kernels
    from sdcompile.kernels.spec import KernelSpec

    specs = [KernelSpec.make(op, **attrs) for op, attrs in json.loads(specs_json)]
    out = Path(tempfile.mkdtemp())
    ex = Executor(out, build_kernels(specs, "cpu", out), num_threads=2)
    rng = np.random.default_rng(0)
    for spec in specs:
        data = []
        for p in spec.params:
            if p.kind in ("raw", "lut"):
                a = (rng.integers(0, 2**16, p.words(), dtype=np.uint32) * 0x10001 & 0x3BFF3BFF).astype(np.uint32)
            else:
                a = rng.standard_normal(p.shape).astype(p.dtype)
            data.append(a)
        results = []
        for mode in (None, False, True):
            args = []
            for p, a in zip(spec.params, data):
                raw = a.reshape(-1).view(np.uint8)
                if mode is None:
                    buf = ex.alloc(raw.size)
                else:
                    buf = Buffer.__new__(Buffer)
                    buf.nbytes, buf.array, buf._tensors = raw.size, guarded(raw.size, mode), {}
                ex.upload(buf, raw)
                shape = (p.words(),) if p.kind in ("raw", "lut") else p.shape
                args.append((buf, shape, "uint32" if p.kind in ("raw", "lut") else p.dtype))
            ex.launch(spec.name, args)
            results.append(ex.download(args[-1][0], spec.params[-1].shape, spec.params[-1].dtype))
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0], err_msg=spec.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
