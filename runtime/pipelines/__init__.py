"""Stable Diffusion pipelines the runtime runs on top of compiled models: noise schedules, samplers, image I/O.

Like the rest of the runtime, nothing here imports compiler code (`sdcompile`): only the standard library and numpy.
"""
