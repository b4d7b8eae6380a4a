"""Typed configs for every pass and for evaluation and benchmarking.

This module imports neither torch nor onnxruntime: the API validates job specs with these
classes. Dataset references are opaque ids that the caller resolves to files.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DatasetId = Annotated[str, Field(min_length=1, max_length=64)]


class StrictModel(BaseModel):
    """Unknown fields are an error: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class PassConfig(StrictModel):
    """Base of every pass config; `kind` names the pass in a job spec."""

    kind: str
    #: Sub-classes register themselves here by kind, so one entry point can run any of them.
    registry: ClassVar[dict[str, type[PassConfig]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind_field = cls.model_fields.get("kind")
        if kind_field is not None and kind_field.default is not None:
            PassConfig.registry[str(kind_field.default)] = cls

    def dataset_ids(self) -> list[str]:
        """Datasets this pass reads, so the caller can resolve and check them up front."""
        return []


class CalibrationConfig(StrictModel):
    dataset_id: DatasetId
    samples: int = Field(default=128, ge=1, le=100_000, description="Samples used to calibrate.")
    method: Literal["minmax", "entropy", "percentile"] = "minmax"


class QuantizeConfig(PassConfig):
    """Integer quantization with onnxruntime's quantization tools."""

    kind: Literal["quantize"] = "quantize"
    method: Literal["dynamic", "static"]
    scope: Literal["full"] = Field(
        default="full",
        description="`full`: every quantizable op's weights (and, for static, activations).",
    )
    per_channel: bool = False
    format: Literal["qdq", "qoperator"] = Field(
        default="qdq", description="Static only: QDQ (default) or QOperator graph."
    )
    weight_type: Literal["int8", "uint8"] = "int8"
    activation_type: Literal["int8", "uint8"] = Field(
        default="uint8", description="Static only: type of quantized activations."
    )
    calibration: CalibrationConfig | None = None

    @model_validator(mode="after")
    def _static_needs_calibration(self) -> QuantizeConfig:
        if self.method == "static" and self.calibration is None:
            raise ValueError("static quantization needs `calibration` with a `dataset_id`")
        if self.method == "dynamic" and self.calibration is not None:
            raise ValueError("dynamic quantization takes no `calibration`; remove it")
        return self

    def dataset_ids(self) -> list[str]:
        return [self.calibration.dataset_id] if self.calibration else []


AnyPass = Annotated[QuantizeConfig, Field(discriminator="kind")]


class EvaluateConfig(StrictModel):
    dataset_id: DatasetId
    metric: Literal["accuracy", "fidelity"] | None = Field(
        default=None,
        description="`accuracy` needs `labels` in the dataset; default: accuracy when the "
        "dataset has labels, else fidelity.",
    )
    max_drop: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Largest acceptable drop: accuracy points (0..1) for `accuracy`, "
        "1 - mean cosine similarity for `fidelity`.",
    )
    samples: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Default: all samples."
    )
    batch_size: int = Field(default=32, ge=1, le=4096)


class BenchmarkConfig(StrictModel):
    device: Literal["cpu", "cuda"] = "cpu"
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 8], min_length=1, max_length=8
    )
    warmup: int = Field(default=10, ge=0, le=10_000)
    iterations: int = Field(default=100, ge=1, le=100_000)
    threads: int = Field(
        default=0, ge=0, le=1024, description="Intra-op threads; 0: physical cores."
    )
    input_shapes: dict[str, list[Annotated[int, Field(ge=1, le=1_000_000)]]] | None = Field(
        default=None,
        description="Shape per input (batch axis included, replaced by each batch size) for "
        "models with symbolic dims when no dataset gives them.",
    )

    @model_validator(mode="after")
    def _unique_batch_sizes(self) -> BenchmarkConfig:
        self.batch_sizes = sorted(set(self.batch_sizes))
        return self


class PipelineSpec(StrictModel):
    """What to do to one model: passes in order, then evaluation and benchmark."""

    passes: list[AnyPass] = Field(min_length=1, max_length=16)
    evaluate: EvaluateConfig | None = None
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    def dataset_ids(self) -> list[str]:
        ids = [d for p in self.passes for d in p.dataset_ids()]
        if self.evaluate:
            ids.append(self.evaluate.dataset_id)
        return list(dict.fromkeys(ids))
