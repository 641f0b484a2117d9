"""Tests of the runtime's host-side pipelines (tokenizer, samplers, image I/O)."""
