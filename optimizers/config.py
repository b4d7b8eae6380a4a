"""Typed configs for every pass and for evaluation and benchmarking.

This module imports neither torch nor onnxruntime: the API validates job specs with these
classes. Dataset references are opaque ids that the caller resolves to files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal, Union, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    TypeAdapter,
    WrapValidator,
    model_validator,
)

from optimizers.spec_versions import SPEC_VERSION

DatasetId = Annotated[str, Field(min_length=1, max_length=64)]
#: Most elements one benchmark input may have (4 GiB of float32).
MAX_INPUT_ELEMENTS = 1 << 30
#: Most samples one benchmark may run through a model, over all batch sizes.
MAX_BENCHMARK_SAMPLES = 10_000_000


class StrictModel(BaseModel):
    """Unknown fields are an error: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class PassConfig(StrictModel):
    """Base of every pass config; `kind` names the pass in a job spec."""

    kind: str
    #: The function that applies this config, as "module:function"; imported on first use.
    apply: ClassVar[str] = ""
    #: Optional: a function, as "module:function", that measures the pass's output against
    #: its input after it ran and returns the pass's extra reports (optimizers.registry).
    report: ClassVar[str] = ""
    #: Concrete sub-classes (those with `apply`) register themselves here by kind, then by
    #: method for kinds with one class per method (`quantize`), else under None.
    registry: ClassVar[dict[str, dict[str | None, type[PassConfig]]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["kind"].default
        if not cls.apply or not isinstance(kind, str):
            return
        method_field = cls.model_fields.get("method")
        if method_field is not None and method_field.annotation is str:
            return  # a base of several methods (QuantizeConfig, Int8Config)
        method = method_field.default if method_field is not None else None
        by_method = method_field is not None and method_field.annotation == Literal[method]
        PassConfig.registry.setdefault(kind, {})[method if by_method else None] = cls

    def as_submitted(self) -> dict[str, Any]:
        """The pass as a user writes it: its tags (`kind`, and `method` where the method has
        a class of its own) and the fields that differ from their defaults."""
        tags = {
            name: getattr(self, name)
            for name in ("kind", "method")
            if name in type(self).model_fields
        }
        return tags | self.model_dump(mode="json", exclude_defaults=True)

    def dataset_ids(self) -> list[str]:
        """Datasets this pass reads, so the caller can resolve and check them up front."""
        return []

    def model_ids(self) -> list[str]:
        """Other uploaded models this pass reads (e.g. a distillation student)."""
        return []


class CalibrationConfig(StrictModel):
    dataset_id: DatasetId
    samples: int = Field(default=128, ge=1, le=100_000, description="Samples used to calibrate.")
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    sampling: Literal["first", "random"] = Field(
        default="first",
        description="`first`: the first N samples in file order; `random`: N samples drawn "
        "with `seed`. Both are deterministic and stream the dataset row by row.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


OpType = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_]+$")]
NodeName = Annotated[str, Field(min_length=1, max_length=1024)]


class NodeSelection(StrictModel):
    """Nodes picked by op type (e.g. `Conv`, `MatMul`) or by node name; either may be empty."""

    op_types: list[OpType] = Field(default_factory=list, max_length=256)
    nodes: list[NodeName] = Field(default_factory=list, max_length=100_000)

    def is_empty(self) -> bool:
        return not self.op_types and not self.nodes


class MixedConfig(StrictModel):
    """Per-node precision: the most sensitive nodes stay at `fallback` precision until the
    drop measured on `dataset_id` is within `max_drop`."""

    dataset_id: DatasetId | None = Field(
        default=None,
        description="Data to measure sensitivity and drop on; default: the calibration dataset.",
    )
    metric: Literal["accuracy", "fidelity"] | None = Field(
        default=None,
        description="`accuracy` needs `labels`; default: accuracy with labels, else fidelity.",
    )
    max_drop: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Largest acceptable drop: accuracy points (0..1), or 1 - mean cosine.",
    )
    fallback: Literal["fp32", "fp16"] = "fp32"
    samples: int = Field(default=64, ge=1, le=100_000, description="Samples measured per round.")
    max_rounds: int = Field(default=8, ge=1, le=64, description="Re-quantizations at most.")


class SmoothQuantConfig(StrictModel):
    """SmoothQuant: per-channel factors move activation outliers into the weights that read
    them before int8 quantization (the float result is unchanged)."""

    alpha: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Migration strength: 0 leaves activations as they are, 1 moves all of "
        "their range into the weights; 0.5 suits most transformers.",
    )
    dataset_id: DatasetId | None = Field(
        default=None,
        description="Data whose activation ranges set the factors; default: the calibration "
        "dataset (needed for method 'dynamic', which has none).",
    )
    samples: int = Field(default=128, ge=1, le=100_000, description="Samples measured.")


#: Groups of ops a transformer keeps in float under int8: `attention` is every Softmax and
#: every MatMul whose two inputs are activations (scores Q·Kᵀ and probabilities·V);
#: `normalization` is every LayerNormalization (and its fused forms) with the Add feeding it.
KeepFloatGroup = Literal["attention", "normalization"]
#: Precision of one node in `per_node`.
NodePrecision = Literal["int8_static", "int8_dynamic", "fp16", "float"]
#: What the static `transformer` preset sets, where the spec does not set it itself.
#: Measured on all-MiniLM-L6-v2 (docs/performance.md): weight layers only (0.998 pooled
#: cosine against 0.89 with every op's output rounded), asymmetric activations (symmetric
#: lost more: GELU outputs are nearly one-sided), SmoothQuant alpha 0.8.
TRANSFORMER_PRESET: dict[str, Any] = {
    "per_channel": True,
    "weight_layers_only": True,
    "smooth_quant": {"alpha": 0.8},
    "keep_float": ["attention", "normalization"],
}


class QuantizeConfig(PassConfig):
    """Base of the quantization methods (onnxruntime's quantization tools): `kind` quantize,
    then `method` picks the class. Every method can be limited to some nodes."""

    kind: Literal["quantize"] = "quantize"
    report: ClassVar[str] = "optimizers.quantization.sensitivity_report:sensitivity_report"
    method: str
    scope: Literal["full", "partial"] = Field(
        default="full",
        description="`full`: every quantizable op. `partial`: only `include`, minus `exclude`.",
    )
    include: NodeSelection | None = None
    exclude: NodeSelection | None = None

    @model_validator(mode="after")
    def _selection(self) -> QuantizeConfig:
        if self.scope == "full" and (self.include or self.exclude):
            raise ValueError(
                "scope 'full' quantizes every node; use scope 'partial' with include or exclude"
            )
        if self.scope == "partial":
            nothing = (self.include is None or self.include.is_empty()) and (
                self.exclude is None or self.exclude.is_empty()
            )
            if nothing:
                raise ValueError("scope 'partial' needs `include` or `exclude`")
        return self


class Int8Config(QuantizeConfig):
    """int8 weights and activations (dynamic or static); scope `mixed` keeps the most
    sensitive nodes in float until the measured drop is within `mixed.max_drop`."""

    apply: ClassVar[str] = "optimizers.quantization.mixed:quantize_int8_or_mixed"
    scope: Literal["full", "partial", "mixed"] = Field(  # type: ignore[assignment]
        default="full",
        description="`full`: every quantizable op. `partial`: only `include`, minus `exclude`. "
        "`mixed`: per-node precision chosen by `mixed`.",
    )
    mixed: MixedConfig | None = None
    per_channel: bool = False
    weight_type: Literal["int8", "uint8"] = "int8"
    smooth_quant: SmoothQuantConfig | None = Field(
        default=None, description="Apply SmoothQuant before quantizing (see SmoothQuantConfig)."
    )
    keep_float: list[KeepFloatGroup] = Field(
        default_factory=list,
        max_length=2,
        description="Groups of ops left in float: `attention` (softmax and the MatMuls whose "
        "two inputs are activations) and `normalization` (LayerNormalization and the Add "
        "that feeds it).",
    )
    per_node: dict[NodeName, NodePrecision] = Field(
        default_factory=dict,
        max_length=100_000,
        description="Precision of single nodes, by name: `int8_static` (method 'static' "
        "only), `int8_dynamic`, `fp16` or `float`; every other node gets the method's int8.",
    )

    @model_validator(mode="after")
    def _mixed(self) -> Int8Config:
        if self.scope != "mixed" and self.mixed is not None:
            raise ValueError("`mixed` settings need scope 'mixed'")
        if self.per_node and self.scope == "mixed":
            raise ValueError(
                "`per_node` sets each node's precision itself; it cannot be combined with "
                "scope 'mixed' (use scope 'full' or 'partial')"
            )
        if len(set(self.keep_float)) != len(self.keep_float):
            raise ValueError("`keep_float` lists a group twice")
        if self.method == "dynamic":
            static_nodes = [name for name, p in self.per_node.items() if p == "int8_static"]
            if static_nodes:
                raise ValueError(
                    f"per_node: {static_nodes[:3]} ask for 'int8_static', which needs method "
                    "'static' with a calibration dataset"
                )
            if self.smooth_quant is not None and self.smooth_quant.dataset_id is None:
                raise ValueError(
                    "`smooth_quant` with method 'dynamic' needs `smooth_quant.dataset_id` (the "
                    "activation ranges it smooths are measured on that data)"
                )
        if self.smooth_quant is not None and self.smooth_quant.dataset_id is None:
            self.smooth_quant.dataset_id = self.calibration_dataset()
        if self.scope == "mixed":
            if self.mixed is None:
                self.mixed = MixedConfig()
            if self.mixed.dataset_id is None:
                if self.calibration_dataset() is None:
                    raise ValueError(
                        "scope 'mixed' needs `mixed.dataset_id` (or a calibration dataset)"
                    )
                self.mixed.dataset_id = self.calibration_dataset()
        return self

    def calibration_dataset(self) -> str | None:
        return None

    def dataset_ids(self) -> list[str]:
        ids = [self.calibration_dataset()]
        if self.mixed is not None:
            ids.append(self.mixed.dataset_id)
        if self.smooth_quant is not None:
            ids.append(self.smooth_quant.dataset_id)
        return list(dict.fromkeys(i for i in ids if i))


class DynamicQuantizeConfig(Int8Config):
    """`dynamic`: int8 weights, activations quantized at run time."""

    method: Literal["dynamic"] = "dynamic"


class StaticQuantizeConfig(Int8Config):
    """`static`: int8 weights and activations, activation ranges calibrated on a dataset."""

    method: Literal["static"] = "static"
    format: Literal["qdq", "qoperator"] = Field(
        default="qdq", description="QDQ (default) or QOperator graph."
    )
    activation_type: Literal["int8", "uint8"] = Field(
        default="uint8",
        description="Type of quantized activations. uint8 runs onnxruntime's fast u8s8 CPU "
        "kernels; int8 activations with int8 weights are slower on CPUs.",
    )
    activation_symmetric: bool = Field(
        default=False,
        description="Activation ranges symmetric around zero (zero point 0, or 128 for uint8).",
    )
    weight_layers_only: bool = Field(
        default=False,
        description="Quantize only the inputs of MatMul, Gemm, Conv and Gather (embedding "
        "tables) nodes, keeping their outputs float; every other op "
        "(bias Add, GELU, residual sums, reshapes) keeps float inputs and outputs. Not with "
        "`include.op_types`.",
    )
    preset: Literal["transformer"] | None = Field(
        default=None,
        description="`transformer`: per-channel weights, weight layers only, SmoothQuant "
        "(alpha 0.8) and attention and normalization kept in float, for each of these fields "
        "the spec does not set itself.",
    )
    calibration: CalibrationConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _calibrated(cls, data: Any) -> Any:
        # Before the `mixed` check, which may take the calibration dataset.
        if isinstance(data, dict) and data.get("calibration") is None:
            raise ValueError("static quantization needs `calibration` with a `dataset_id`")
        if isinstance(data, dict) and data.get("preset") == "transformer":
            data = {**TRANSFORMER_PRESET, **data}
        return data

    def calibration_dataset(self) -> str | None:
        return self.calibration.dataset_id if self.calibration else None

    @model_validator(mode="after")
    def _weight_layers(self) -> StaticQuantizeConfig:
        if self.weight_layers_only and self.include is not None and self.include.op_types:
            raise ValueError(
                "`weight_layers_only` picks the op types itself; drop `include.op_types` "
                "(or select nodes by name)"
            )
        return self


class Fp16Config(QuantizeConfig):
    """`fp16`: float16 weights and compute, float32 inputs and outputs."""

    apply: ClassVar[str] = "optimizers.quantization.fp16:quantize_fp16"
    method: Literal["fp16"] = "fp16"


class Int8WeightOnlyConfig(QuantizeConfig):
    """`int8_weight_only`: Conv/MatMul/Gemm weights stored as int8 with a DequantizeLinear in
    front; activations and compute stay float. Needs no data."""

    apply: ClassVar[str] = "optimizers.quantization.int8_weight_only:quantize_int8_weight_only"
    method: Literal["int8_weight_only"] = "int8_weight_only"
    per_channel: bool = False
    weight_type: Literal["int8", "uint8"] = "int8"


class Int4WeightOnlyConfig(QuantizeConfig):
    """`int4_weight_only`: 4-bit blocked MatMul weights (MatMulNBits)."""

    apply: ClassVar[str] = "optimizers.quantization.int4_weight_only:quantize_int4"
    method: Literal["int4_weight_only"] = "int4_weight_only"
    block_size: int = Field(
        default=32, ge=16, le=256, description="Weights per scale (a power of 2)."
    )
    symmetric: bool = Field(default=True, description="Symmetric int4 blocks.")

    @model_validator(mode="after")
    def _power_of_two(self) -> Int4WeightOnlyConfig:
        if self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of 2 (16, 32, 64, 128 or 256)")
        return self


class TrainingSettings(StrictModel):
    """How a model is trained in the worker: fine-tuning after pruning, or distillation."""

    dataset_id: DatasetId
    epochs: int = Field(default=5, ge=1, le=1000)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0)
    lr_schedule: Literal["cosine", "constant"] = Field(
        default="cosine",
        description="`cosine`: the learning rate falls from `learning_rate` to zero along a "
        "half cosine over the `epochs`, step by step; `constant`: it stays at `learning_rate`.",
    )
    batch_size: int = Field(default=32, ge=1, le=4096)
    validation_split: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Share of the dataset held out (deterministically, with `seed`) to "
        "validate each epoch; 0 validates on the training data.",
    )
    patience: int | None = Field(
        default=3,
        ge=1,
        le=1000,
        description="Stop after this many epochs without a better validation score; "
        "null trains every epoch.",
    )
    temperature: float = Field(
        default=4.0, gt=0.0, le=100.0, description="Softening of teacher and student logits."
    )
    alpha: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Weight of the distillation (KL) loss; 1 - alpha weighs cross-entropy on "
        "labels. Without labels the distillation loss alone is used.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class FinetuneConfig(TrainingSettings):
    """Recovery training after pruning, with the unpruned model as teacher: with `labels`,
    alpha * distillation + (1 - alpha) * cross-entropy (alpha 0: cross-entropy alone);
    without labels, distillation alone."""


class PruneConfig(PassConfig):
    """Pruning of a trainable copy of the model (converted from ONNX in the worker)."""

    kind: Literal["prune"] = "prune"
    apply: ClassVar[str] = "optimizers.trainable.prune:prune"
    method: Literal["magnitude", "structured", "2:4"] = Field(
        description="`magnitude`: zero the smallest weights (unstructured; the model keeps its "
        "shape). `structured`: remove whole channels, hidden units and heads, so the model "
        "gets smaller and faster. `2:4`: two of every four weights zero, for GPUs with sparse "
        "tensor cores."
    )
    sparsity: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="magnitude: share of weights set to zero."
    )
    granularity: Literal["global", "layer"] = Field(
        default="global",
        description="magnitude: rank weights across all layers (`global`) or within each "
        "layer (`layer`, every layer at `sparsity`).",
    )
    ratio: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="structured: share of channels / hidden units removed from each layer, "
        "and of heads (rounded) from each attention block.",
    )
    importance: Literal["l1", "l2"] = Field(
        default="l2",
        description="structured: norm that ranks channels and heads (smallest go first).",
    )
    exclude_layers: list[NodeName] = Field(
        default_factory=list,
        max_length=10_000,
        description="ONNX node names of layers to leave alone; the output layer is always kept.",
    )
    finetune: FinetuneConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        # Compared with the defaults, not with the fields given: a stored spec is dumped with
        # every field and must validate again in the worker.
        changed = {
            name
            for name in ("sparsity", "granularity", "ratio", "importance")
            if getattr(self, name) != type(self).model_fields[name].default
        }
        if self.method != "magnitude" and changed & {"sparsity", "granularity"}:
            raise ValueError("`sparsity` and `granularity` apply to method 'magnitude'")
        if self.method != "structured" and changed & {"ratio", "importance"}:
            raise ValueError("`ratio` and `importance` apply to method 'structured'")
        return self

    def dataset_ids(self) -> list[str]:
        return [self.finetune.dataset_id] if self.finetune else []


class GraphOptimizeConfig(PassConfig):
    """onnxruntime's graph optimizations written to a new ONNX file: constant folding and
    redundant-node removal (`basic`), plus operator fusions (`extended`); with
    `transformer_fusions`, onnxruntime's transformer optimizer fuses attention, layer
    normalization and GELU subgraphs into single operators first."""

    kind: Literal["graph_optimize"] = "graph_optimize"
    apply: ClassVar[str] = "optimizers.graph.optimize:graph_optimize"
    level: Literal["basic", "extended"] = Field(
        default="basic",
        description="`basic`: rewrites that keep standard ONNX operators (constant folding, "
        "redundant nodes, a few semantics-preserving fusions); `extended`: also fusions into "
        "onnxruntime's own CPU operators, which only onnxruntime runs. onnxruntime ties an "
        "extended-level offline model to the execution provider and hardware it was made on "
        "(here the CPU provider): run it there, and quantize before it, not after.",
    )
    transformer_fusions: bool = Field(
        default=False,
        description="Fuse attention, layer normalization, GELU and embedding subgraphs with "
        "onnxruntime's transformer optimizer (for BERT-style encoders), before the `level` "
        "optimizations; a graph with nothing to fuse is only optimized at `level`.",
    )


class StudentConfig(StrictModel):
    """The model to train: an uploaded trainable program, or one derived from the teacher."""

    model_id: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="An uploaded model of the same project (ONNX or PyTorch)."
    )
    derive: Literal["width"] | None = Field(
        default=None,
        description="`width`: the teacher with `ratio` of its channels / hidden units removed "
        "by structured pruning.",
    )
    ratio: float = Field(default=0.5, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        if (self.model_id is None) == (self.derive is None):
            raise ValueError("student needs exactly one of `model_id` or `derive`")
        if self.model_id is not None and self.ratio != type(self).model_fields["ratio"].default:
            raise ValueError("`ratio` applies to a derived student, not to `model_id`")
        return self


class DistillConfig(PassConfig, TrainingSettings):
    """Knowledge distillation: the pass's input model teaches `student`."""

    kind: Literal["distill"] = "distill"
    apply: ClassVar[str] = "optimizers.trainable.distill:distill"
    student: StudentConfig

    def dataset_ids(self) -> list[str]:
        return [self.dataset_id]

    def model_ids(self) -> list[str]:
        return [self.student.model_id] if self.student.model_id else []


class AutoBudget(StrictModel):
    trials: int = Field(
        default=24, ge=1, le=200, description="Trials (child jobs) the search may run at most."
    )
    minutes: float = Field(
        default=30.0,
        gt=0.0,
        le=24 * 60,
        description="Wall-clock minutes the search may take; then the best so far is the answer.",
    )


#: The technique families an auto search may use.
AutoTechnique = Literal["quantize", "prune", "distill"]
_ALL_TECHNIQUES: tuple[AutoTechnique, ...] = ("quantize", "prune", "distill")


class AutoConfig(PassConfig):
    """A search for the best recipe on this hardware: trials of the other passes run as child
    jobs, measured against the original like any job, and the answer is the best model within
    `max_drop` that is faster than the original by the paired interval (docs/auto.md)."""

    kind: Literal["auto"] = "auto"
    apply: ClassVar[str] = "optimizers.auto.trials:not_in_a_pipeline"
    objective: Literal["latency", "size", "balanced"] = Field(
        default="latency",
        description="What the answer is best at: `latency` (speed-up at `batch_size`), "
        "`size` (smallest file), `balanced` (speed-up times size reduction).",
    )
    dataset_id: DatasetId = Field(
        description="Data for calibration, fine-tuning and for measuring the drop."
    )
    eval_dataset_id: DatasetId | None = Field(
        default=None,
        description="Held-out data the drop is measured on; default: `dataset_id`. Pruning "
        "and distillation fine-tune on `dataset_id`, so a drop measured there is optimistic.",
    )
    metric: Literal["accuracy", "fidelity"] | None = Field(
        default=None,
        description="`accuracy` needs `labels`; default: accuracy with labels, else fidelity.",
    )
    max_drop: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Largest acceptable drop: accuracy points (0..1), or 1 - mean cosine.",
    )
    budget: AutoBudget = Field(default_factory=AutoBudget)
    allow: list[AutoTechnique] = Field(
        default_factory=lambda: list(_ALL_TECHNIQUES),
        min_length=1,
        max_length=3,
        description="Technique families the search may use.",
    )
    batch_size: int = Field(
        default=8, ge=1, le=4096, description="Batch size the latency is judged at."
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="Where the trials run and are timed."
    )

    @model_validator(mode="after")
    def _unique_allow(self) -> AutoConfig:
        self.allow = list(dict.fromkeys(self.allow))
        return self

    def dataset_ids(self) -> list[str]:
        return list(dict.fromkeys([self.dataset_id, self.eval_dataset_id or self.dataset_id]))


def _pass_union() -> TypeAdapter[Any]:
    """Every pass config registered so far, as one union tagged by `kind`, then by `method`."""
    kinds = tuple(
        (kind, tuple(by_method.items())) for kind, by_method in PassConfig.registry.items()
    )
    if _UNION_CACHE.get("kinds") != kinds:
        _UNION_CACHE["kinds"] = kinds
        _UNION_CACHE["adapter"] = TypeAdapter(_tagged(_kind_union(dict(m)) for _, m in kinds))
    return cast(TypeAdapter[Any], _UNION_CACHE["adapter"])


def _kind_union(by_method: dict[str | None, type[PassConfig]]) -> Any:
    if None in by_method or len(by_method) == 1:
        return next(iter(by_method.values()))
    return _tagged(by_method.values(), discriminator="method")


def _tagged(types: Iterable[Any], discriminator: str = "kind") -> Any:
    members = tuple(types)
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator=discriminator)]  # noqa: UP007


_UNION_CACHE: dict[str, Any] = {}


def parse_pass(data: Mapping[str, Any]) -> PassConfig:
    """One pass of a job spec (a JSON object) as its registered config class."""
    return cast(PassConfig, _pass_union().validate_python(dict(data)))


def _validate_pass(value: Any, handler: Any) -> PassConfig:
    # The registry, not a list written here, says which kinds exist: a pass defined after
    # this module (in its own room) validates like the built-in ones.
    if isinstance(value, PassConfig):
        value = value.model_dump()
    return parse_pass(value)


#: One pass of a job spec: any registered pass config, chosen by `kind`, then `method`. The
#: JSON schema lists the built-in passes (a flat `anyOf`: OpenAPI's discriminator mapping
#: cannot say "by kind, then by method").
AnyPass = Annotated[
    SerializeAsAny[PassConfig],
    WrapValidator(
        _validate_pass,
        json_schema_input_type=DynamicQuantizeConfig
        | StaticQuantizeConfig
        | Fp16Config
        | Int8WeightOnlyConfig
        | Int4WeightOnlyConfig
        | PruneConfig
        | DistillConfig
        | GraphOptimizeConfig
        | AutoConfig,
    ),
]


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
    input_shapes: (
        dict[
            Annotated[str, Field(min_length=1, max_length=1024)],
            list[Annotated[int, Field(ge=1, le=1_000_000)]],
        ]
        | None
    ) = Field(
        default=None,
        max_length=1024,
        description="Shape per input for models with symbolic dims when no dataset gives "
        "them, used as given: the input's batch axis (see `inputs`), when it has one, is "
        "replaced by each batch size; an input without a batch axis is fed at exactly this "
        f"shape ([] for a scalar). At most {MAX_INPUT_ELEMENTS} elements per input at the "
        "largest batch size.",
    )

    @model_validator(mode="after")
    def _unique_batch_sizes(self) -> BenchmarkConfig:
        self.batch_sizes = sorted(set(self.batch_sizes))
        largest = self.batch_sizes[-1]
        for name, shape in (self.input_shapes or {}).items():
            if len(shape) > 16:
                raise ValueError(f"input_shapes['{name[:100]}'] must have at most 16 dimensions")
            # Which axis is the batch is known only with the model: bound the worst case.
            elements = largest * math.prod(shape)
            if elements > MAX_INPUT_ELEMENTS:
                raise ValueError(
                    f"input_shapes['{name[:100]}'] at batch size {largest} is {elements} "
                    f"elements; at most {MAX_INPUT_ELEMENTS} are allowed"
                )
        work = (self.warmup + self.iterations) * sum(self.batch_sizes)
        if work > MAX_BENCHMARK_SAMPLES:
            raise ValueError(
                f"(warmup + iterations) x sum(batch_sizes) is {work} samples; at most "
                f"{MAX_BENCHMARK_SAMPLES} are allowed (lower iterations or batch_sizes)"
            )
        return self


class InputConfig(StrictModel):
    """How one model input is fed."""

    batch_axis: int | None = Field(
        ge=0,
        le=15,
        description="The axis that carries the batch (e.g. 1 for a recurrent state "
        "[layers, batch, hidden]), or null for an input without one (a scalar, a fixed-size "
        "state), which is fed as it is at every batch size.",
    )


class PipelineSpec(StrictModel):
    """What to do to one model: passes in order, then evaluation and benchmark."""

    spec_version: Literal[2] = Field(
        default=SPEC_VERSION,
        description="Version of the spec's shape; older stored specs are upgraded on load.",
    )
    passes: list[AnyPass] = Field(min_length=1, max_length=16)
    inputs: dict[Annotated[str, Field(min_length=1, max_length=1024)], InputConfig] | None = Field(
        default=None,
        max_length=1024,
        description="Per model input: its batch axis, where the model does not make it "
        "clear (inputs whose batch is not on axis 0, inputs without a batch). Used by "
        "evaluation, calibration and the benchmark alike; inputs not named here follow the "
        "model (a dynamic axis 0 is the batch).",
    )
    evaluate: EvaluateConfig | None = None
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    @model_validator(mode="after")
    def _runnable_here(self) -> PipelineSpec:
        # Stored with exclude_unset, a spec must still say which version it is.
        self.model_fields_set.add("spec_version")
        if any(isinstance(config, AutoConfig) for config in self.passes):
            if len(self.passes) != 1:
                raise ValueError("an `auto` pass searches the recipe itself; it must be alone")
            given = sorted({"evaluate", "benchmark"} & self.model_fields_set)
            if given:
                raise ValueError(
                    f"an `auto` job measures every trial itself; drop {given} (the auto pass's "
                    "`dataset_id`, `metric`, `max_drop` and `batch_size` say what to measure)"
                )
        for index, config in enumerate(self.passes):
            if (
                isinstance(config, PruneConfig)
                and config.method == "2:4"
                and self.benchmark.device != "cuda"
            ):
                raise ValueError(
                    f"passes[{index}]: 2:4 sparsity only speeds up GPUs with sparse tensor cores "
                    "and cannot be measured on a CPU benchmark; set benchmark.device to 'cuda' "
                    "or use method 'structured'"
                )
        return self

    def batch_axes(self) -> dict[str, int | None]:
        """The batch axes the spec declares (input name -> axis or None)."""
        return {name: config.batch_axis for name, config in (self.inputs or {}).items()}

    def dataset_ids(self) -> list[str]:
        ids = [d for p in self.passes for d in p.dataset_ids()]
        if self.evaluate:
            ids.append(self.evaluate.dataset_id)
        return list(dict.fromkeys(ids))

    def model_ids(self) -> list[str]:
        """Other uploaded models the passes read (distillation students)."""
        ids = [m for p in self.passes if isinstance(p, DistillConfig) for m in p.model_ids()]
        return list(dict.fromkeys(ids))
