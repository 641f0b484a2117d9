"""sdcompile: an ahead-of-time compiler for diffusion models and GGUF-quantized transformers."""

__version__ = "0.1.0"
