"""Write the artifact directory atomically: manifest, kernels, weights; every file hashed in the manifest.

Same inputs and options give the same bytes: nothing time- or machine-dependent goes into the manifest except the
tool versions and the CPU the LLVM code was built for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 2  # 2: a module of several functions ("functions"), not one "plan"
WEIGHTS_FILE = "weights.gguf"
LUTS_FILE = "luts.bin"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


WEIGHTS_ALIGN = 64


def write_weights_gguf(path: Path, tensors: list[tuple[str, str, tuple[int, ...], np.ndarray]]) -> None:
    """tensors: (name, storage type, numpy-order shape, raw bytes). Written with the gguf package's writer."""
    import gguf

    from sdcompile.quant.types import get

    w = gguf.GGUFWriter(str(path), arch="sdcompile", use_temp_file=False)
    # Tensor data 64-byte aligned (GGUF's default is 32): the CPU runtime hands the mapped file straight to its
    # kernels, which assume 64-byte aligned tensors, instead of copying every weight.
    w.add_custom_alignment(WEIGHTS_ALIGN)
    for name, dtype, shape, raw in tensors:
        qt = get(dtype)
        if dtype == "f32":
            w.add_tensor(name, raw.view(np.float32).reshape(shape))
        elif dtype == "f16":
            w.add_tensor(name, raw.view(np.float16).reshape(shape))
        else:
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            data = raw.reshape(rows, qt.row_bytes(shape[-1]))
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType(qt.ggml_id))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_artifact(out_dir: Path, manifest: dict, fill) -> Path:
    """Build the artifact in a temporary sibling directory via `fill(tmpdir)`, hash it, then swap it into place.

    A crash or error leaves any earlier artifact at `out_dir` untouched and no half-written one behind.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        fill(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest["files"] = {
            str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        old = None
        if out_dir.exists():
            if not (out_dir / "manifest.json").exists() and any(out_dir.iterdir()):
                from sdcompile.errors import OptionError

                raise OptionError(f"{out_dir} exists and is not an sdcompile artifact; choose another -o")
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_luts(path: Path, names: list[str]) -> dict:
    """Write the lookup tables ``names`` (``sdcompile/kernels/luts.py``) back to back as little-endian uint32 words,
    in sorted order; return the manifest's ``luts`` record: {"file", "tables": {name: {"offset": bytes, "words"}}}.

    A separate raw file, not tensors in the weights GGUF: the tables are not model weights (tools reading the
    weights file see only the model), they are tiny, and the runtime reads them with one numpy call.
    """
    from sdcompile.kernels.luts import table_words

    tables, chunks, offset = {}, [], 0
    for name in sorted(set(names)):
        words = np.ascontiguousarray(table_words(name), dtype="<u4")
        tables[name] = {"offset": offset, "words": int(words.size)}
        chunks.append(words.tobytes())
        offset += words.nbytes
    Path(path).write_bytes(b"".join(chunks))
    return {"file": Path(path).name, "tables": tables}
