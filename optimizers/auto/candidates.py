"""The recipes an auto search screens, chosen by the model's structure, and the job spec a
trial of one recipe runs at each rung."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optimizers.config import AutoConfig, PipelineSpec

#: Rung 0 screens: a short benchmark and evaluation on at most this many samples.
SCREEN_SAMPLES = 256
SCREEN_BENCHMARK = {"warmup": 3, "iterations": 20}
#: Rung 1 measures in full: the job's default benchmark and every evaluation sample.
FULL_BENCHMARK = {"warmup": 10, "iterations": 100}
#: Calibration samples (the same at both rungs, so a screened model is the promoted model).
CALIBRATION_SAMPLES = 128
#: Structured pruning ratios screened: a quarter, then half of every layer's width.
PRUNE_RATIOS = (0.25, 0.5)
DISTILL_RATIO = 0.5


@dataclass(frozen=True)
class Candidate:
    """One recipe: `stem` names it in trial keys (`<stem>-r0`, `<stem>-r1`)."""

    stem: str
    family: str
    passes: tuple[Mapping[str, Any], ...]
    why: str

    def pass_list(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(dict(config)) for config in self.passes]


def trial_key(stem: str, rung: int) -> str:
    return f"{stem}-r{rung}"


def trial_spec(
    spec: PipelineSpec,
    config: AutoConfig,
    passes: list[dict[str, Any]],
    *,
    rung: int,
    batch_size: int,
    samples: int,
    metric: str,
) -> dict[str, Any]:
    """A pipeline spec (JSON, without `model_id`) that runs `passes` and measures them at
    `rung`: screening (short benchmark, evaluation on a subset) or the full measurement."""
    evaluate: dict[str, Any] = {
        "dataset_id": config.eval_dataset_id or config.dataset_id,
        "metric": metric,
        "max_drop": config.max_drop,
    }
    if rung == 0 and samples > SCREEN_SAMPLES:
        evaluate["samples"] = SCREEN_SAMPLES
    timing = SCREEN_BENCHMARK if rung == 0 else FULL_BENCHMARK
    trial: dict[str, Any] = {
        "passes": passes,
        "evaluate": evaluate,
        "benchmark": {"device": config.device, "batch_sizes": [batch_size], **timing},
    }
    if spec.inputs is not None:
        trial["inputs"] = {
            name: entry.model_dump(mode="json") for name, entry in spec.inputs.items()
        }
    return trial


def graph_fallback() -> Candidate:
    return Candidate(
        stem="graph",
        family="graph",
        passes=({"kind": "graph_optimize", "level": "basic"},),
        why="The original with constant folding and redundant nodes removed: the answer when "
        "no other trial is both faster and within the tolerance.",
    )


def candidates_for(config: AutoConfig, *, structure: str, samples: int) -> list[Candidate]:
    """Every recipe worth screening on a model of `structure`, most promising first (the
    order decides which are screened when the budget is short). Whether each family applies
    here (allow, labels, device, trainable layers) is the preflight's decision."""
    recipes = _Recipes(config, samples=samples)
    if structure == "transformer":
        quantize = [
            recipes.static_transformer("int8-static-tp", "minmax"),
            recipes.dynamic("int8-dynamic-pc", per_channel=True),
            recipes.dynamic_smooth(),
            recipes.fused_dynamic(),
            recipes.dynamic("int8-dynamic-pt", per_channel=False),
            recipes.static_transformer("int8-static-tp-pct", "percentile"),
            recipes.static("int8-static-pc", per_channel=True, method="minmax"),
        ]
    elif structure == "cnn":
        quantize = [
            recipes.static("int8-static-pc", per_channel=True, method="minmax"),
            recipes.static("int8-static-pc-ent", per_channel=True, method="entropy"),
            recipes.static("int8-static-pc-pct", per_channel=True, method="percentile"),
            recipes.static("int8-static-pt", per_channel=False, method="minmax"),
            recipes.dynamic("int8-dynamic-pc", per_channel=True),
        ]
    elif structure == "mlp":
        quantize = [
            recipes.dynamic("int8-dynamic-pt", per_channel=False),
            recipes.dynamic("int8-dynamic-pc", per_channel=True),
            recipes.static("int8-static-pc", per_channel=True, method="minmax"),
            recipes.static("int8-static-pt", per_channel=False, method="minmax"),
            recipes.static("int8-static-pc-pct", per_channel=True, method="percentile"),
        ]
    else:
        quantize = [
            recipes.dynamic("int8-dynamic-pc", per_channel=True),
            recipes.static("int8-static-pc", per_channel=True, method="minmax"),
            recipes.dynamic("int8-dynamic-pt", per_channel=False),
            recipes.static("int8-static-pt", per_channel=False, method="minmax"),
        ]
    weight_only = [recipes.int4(), recipes.int8_weight_only(), recipes.fp16()]
    if config.objective != "latency":
        # Weight-only formats mostly save bytes: screened before the int8 variants that only
        # an unlimited budget reaches.
        quantize = quantize[:2] + weight_only + quantize[2:]
    else:
        quantize = quantize + weight_only
    ratios = PRUNE_RATIOS if structure != "unknown" else PRUNE_RATIOS[1:]
    shrink = [recipes.prune(ratio) for ratio in ratios] + [recipes.distill()]
    return quantize + shrink


class _Recipes:
    """Pass configs (JSON) of the candidates, sharing the search's dataset."""

    def __init__(self, config: AutoConfig, *, samples: int) -> None:
        self.dataset_id = config.dataset_id
        self.calibration_samples = min(CALIBRATION_SAMPLES, samples)

    def _calibration(self, method: str) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "samples": self.calibration_samples,
            "method": method,
        }

    def dynamic(self, stem: str, *, per_channel: bool) -> Candidate:
        scales = "one scale per output channel" if per_channel else "one scale per tensor"
        return Candidate(
            stem=stem,
            family="int8_dynamic",
            passes=({"kind": "quantize", "method": "dynamic", "per_channel": per_channel},),
            why=f"int8 weights ({scales}), activations quantized at run time: no calibration, "
            "fast integer MatMul and Gemm kernels on CPUs.",
        )

    def dynamic_smooth(self) -> Candidate:
        return Candidate(
            stem="int8-dynamic-sq",
            family="int8_dynamic_smooth",
            passes=(
                {
                    "kind": "quantize",
                    "method": "dynamic",
                    "per_channel": True,
                    "smooth_quant": {
                        "alpha": 0.8,
                        "dataset_id": self.dataset_id,
                        "samples": self.calibration_samples,
                    },
                },
            ),
            why="Dynamic per-channel int8 after SmoothQuant (alpha 0.8) moves activation "
            "outliers into the weights: as fast as plain dynamic int8 and more faithful on "
            "transformers (docs/performance.md).",
        )

    def static(self, stem: str, *, per_channel: bool, method: str) -> Candidate:
        scales = "per-channel" if per_channel else "per-tensor"
        return Candidate(
            stem=stem,
            family="int8_static",
            passes=(
                {
                    "kind": "quantize",
                    "method": "static",
                    "per_channel": per_channel,
                    "calibration": self._calibration(method),
                },
            ),
            why=f"Static int8 (QDQ, {scales} weights), activation ranges calibrated with "
            f"{method} on {self.calibration_samples} samples: every op runs integer kernels, "
            "convolutions included.",
        )

    def static_transformer(self, stem: str, method: str) -> Candidate:
        return Candidate(
            stem=stem,
            family="int8_static_transformer",
            passes=(
                {
                    "kind": "quantize",
                    "method": "static",
                    "preset": "transformer",
                    "calibration": self._calibration(method),
                },
            ),
            why="Static int8 with the transformer preset (weight layers only, SmoothQuant 0.8, "
            f"attention and normalization in float), {method} calibration: 1.91x at cosine "
            "0.9978 on MiniLM, 2.18x at 0.99995 on the bench encoder (docs/performance.md).",
        )

    def fused_dynamic(self) -> Candidate:
        return Candidate(
            stem="fused-int8-dynamic-pc",
            family="fused+int8_dynamic",
            passes=(
                {"kind": "graph_optimize", "level": "basic", "transformer_fusions": True},
                {"kind": "quantize", "method": "dynamic", "per_channel": True},
            ),
            why="onnxruntime's transformer fusions (attention, layer normalization, GELU) "
            "first, then dynamic per-channel int8, which has integer kernels for a fused "
            "attention.",
        )

    def int4(self) -> Candidate:
        return Candidate(
            stem="int4-wo",
            family="int4_weight_only",
            passes=({"kind": "quantize", "method": "int4_weight_only"},),
            why="4-bit blocked MatMul weights (MatMulNBits): the smallest file, compute stays "
            "float.",
        )

    def int8_weight_only(self) -> Candidate:
        return Candidate(
            stem="int8-wo",
            family="int8_weight_only",
            passes=({"kind": "quantize", "method": "int8_weight_only", "per_channel": True},),
            why="int8 weights dequantized at load, float compute: a quarter of the size "
            "with almost no drop.",
        )

    def fp16(self) -> Candidate:
        return Candidate(
            stem="fp16",
            family="fp16",
            passes=({"kind": "quantize", "method": "fp16"},),
            why="float16 weights and compute: half the size, faster on GPUs with half-precision "
            "units.",
        )

    def prune(self, ratio: float) -> Candidate:
        percent = round(ratio * 100)
        return Candidate(
            stem=f"prune-s{percent}",
            family="prune_structured",
            passes=(
                {
                    "kind": "prune",
                    "method": "structured",
                    "ratio": ratio,
                    "finetune": {"dataset_id": self.dataset_id},
                },
            ),
            why=f"Structured pruning removes {percent}% of every layer's channels, hidden "
            "units and heads, then fine-tunes on the labelled data: smaller and faster on any "
            "hardware.",
        )

    def distill(self) -> Candidate:
        percent = round(DISTILL_RATIO * 100)
        return Candidate(
            stem=f"distill-w{percent}",
            family="distill",
            passes=(
                {
                    "kind": "distill",
                    "dataset_id": self.dataset_id,
                    "student": {"derive": "width", "ratio": DISTILL_RATIO},
                },
            ),
            why=f"A student {percent}% narrower than the model, trained on its outputs and the "
            "labels.",
        )
