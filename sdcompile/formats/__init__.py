"""Weight-file readers behind one interface: `open_store(path)` detects the format from the file's content and
returns a lazy, memory-mapped `TensorStore` (safetensors, GGUF, PyTorch .ckpt/.pt, ONNX)."""

from sdcompile.formats.base import TensorInfo, TensorStore
from sdcompile.formats.detect import FORMATS, detect_format, open_store

__all__ = ["FORMATS", "TensorInfo", "TensorStore", "detect_format", "open_store"]
