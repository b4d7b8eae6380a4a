"""Typed failures a user can act on. Each carries a short machine-readable `type`."""


class OptimizerError(Exception):
    """Base class: an expected failure caused by the model, the data or the spec."""

    type = "optimizer_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidModelError(OptimizerError):
    type = "invalid_model"


class InvalidDatasetError(OptimizerError):
    type = "invalid_dataset"


class DatasetMismatchError(OptimizerError):
    type = "dataset_mismatch"


class UnsupportedError(OptimizerError):
    type = "unsupported"


class QuantizationError(OptimizerError):
    type = "quantization_failed"


class EvaluationError(OptimizerError):
    type = "evaluation_failed"


class BenchmarkError(OptimizerError):
    type = "benchmark_failed"


class PassOutputError(OptimizerError):
    """A pass produced a model that onnxruntime cannot load: a limitation of the pass."""

    type = "invalid_pass_output"


class GraphOptimizationError(OptimizerError):
    type = "graph_optimization_failed"
