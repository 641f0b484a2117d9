"""Quant types: the table (types.py) and numpy reference dequantize/quantize (reference.py)."""

from sdcompile.quant.reference import QUANTIZABLE, dequantize, quantize
from sdcompile.quant.types import BY_GGML_ID, QUANT_TYPES, QuantType, get

__all__ = ["BY_GGML_ID", "QUANTIZABLE", "QUANT_TYPES", "QuantType", "dequantize", "get", "quantize"]
