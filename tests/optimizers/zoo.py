"""Tiny ONNX models with real-world shapes (control flow, RNNs, dynamic dims, large values,
external data) for the quantization tests."""

from __future__ import annotations
