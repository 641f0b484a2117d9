"""The typed graph IR, its op table and verifier."""

from sdcompile.ir.graph import Graph, Module, Node, Value, WeightData
from sdcompile.ir.verify import IRError, verify

__all__ = ["Graph", "IRError", "Module", "Node", "Value", "WeightData", "verify"]
