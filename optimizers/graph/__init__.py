"""Whole-graph rewrites that keep the models numbers: onnxruntimes graph optimizations."""
