"""Mixed precision: quantize everything, measure the drop, and keep the nodes that the
sensitivity report ranks worst at float precision until the drop is within tolerance."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from optimizers.batching import BatchLayout, batch_layout
from optimizers.config import EvaluateConfig, Int8Config, MixedConfig, NodeSelection
from optimizers.datasets import inspect_dataset
from optimizers.errors import QuantizationError
from optimizers.measure.evaluate import evaluate
from optimizers.measure.runtime import CPU, default_threads
from optimizers.model_info import inspect_model
from optimizers.quantization.fp16_nodes import nodes_to_fp16
from optimizers.quantization.integer import quantize_int8
from optimizers.quantization.sensitivity import ANALYSIS_SAMPLES, analysis_feeds, analyze
from optimizers.results import PassContext, PassResult

#: Float noise allowed when comparing a drop with its limit, as the pipeline allows.
_TOLERANCE_EPSILON = 1e-9
#: Share of the pass's progress span for the full quantization, then for the analysis; the
#: re-quantization rounds share the rest.
_FIRST_ROUND, _ANALYSIS = 0.3, 0.05
#: Models above this size keep weights in an external file (protobuf's 2 GB limit).


@dataclass
class _Candidate:
    """Nodes kept float together (one ranked entry of the sensitivity report)."""

    nodes: list[str]
    reason: str


@dataclass
class _Round:
    index: int
    excluded: list[str]
    result: PassResult
    model_path: Path
    drop: float
    met: bool
    workdir: Path
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        summary = {
            "round": self.index,
            "excluded": self.excluded,
            "drop": self.drop,
            "met": self.met,
        }
        if "calibration_reused" in self.result.details:  # static
            summary["calibration_reused"] = self.result.details["calibration_reused"]
        return summary


def quantize_int8_or_mixed(model_path: Path, config: Int8Config, ctx: PassContext) -> PassResult:
    """The `dynamic` and `static` passes: scope `mixed` here, the others as plain int8."""
    if config.scope == "mixed":
        return quantize_mixed(model_path, config, ctx)
    return quantize_int8(model_path, config, ctx)


def quantize_mixed(model_path: Path, config: Int8Config, ctx: PassContext) -> PassResult:
    """Quantize with per-node precision as `config.mixed` says; see the module docstring."""
    mixed = config.mixed or MixedConfig()
    if mixed.dataset_id is None:  # the config validator fills it from the calibration
        raise QuantizationError("scope 'mixed' needs `mixed.dataset_id`")
    try:
        dataset = ctx.datasets[mixed.dataset_id]
    except KeyError:
        raise QuantizationError(f"mixed dataset '{mixed.dataset_id}' was not provided") from None
    has_labels = inspect_dataset(dataset).has_labels
    metric = "accuracy" if has_labels and mixed.metric != "fidelity" else "fidelity"
    eval_config = EvaluateConfig(
        dataset_id=mixed.dataset_id, metric=metric, max_drop=mixed.max_drop, samples=mixed.samples
    )
    start, end = ctx.progress_span
    width = end - start
    threads = default_threads()
    user_excluded = list(config.exclude.nodes) if config.exclude else []
    layout = batch_layout(inspect_model(model_path), ctx.batch_axes)

    def attempt(index: int, excluded: list[str], span: tuple[float, float]) -> _Round:
        workdir = ctx.workdir / f"round{index}"
        split = span[0] + 0.7 * (span[1] - span[0])
        result = quantize_int8(
            model_path,
            _round_config(config, [*user_excluded, *excluded]),
            # The caller's context (datasets, batch axes, kept calibrations: rounds that
            # quantize the same prepared model share one calibration) with this round's folder.
            dataclasses.replace(ctx, workdir=workdir, progress_span=(span[0], split)),
        )
        model = result.model_path
        notes: list[str] = []
        if excluded and mixed.fallback == "fp16":
            model = nodes_to_fp16(model, set(excluded), workdir, notes)
        ctx.progress("measuring", split, f"round {index}: measuring the {metric} drop")
        measured = evaluate(
            model_path,
            model,
            dataset,
            eval_config,
            providers=[CPU],
            threads=threads,
            layout=layout,
        )
        drop = _drop(measured, metric)
        met = drop <= mixed.max_drop + _TOLERANCE_EPSILON
        ctx.progress(
            "measuring",
            span[1],
            f"round {index}: {len(excluded)} node(s) kept float, {metric} drop {drop:.4g}",
        )
        return _Round(index, excluded, result, model, drop, met, workdir, notes)

    rounds = [attempt(0, [], (start, start + _FIRST_ROUND * width))]
    notes: list[str] = []
    reasons: dict[str, str] = {}
    if not rounds[0].met:
        ctx.progress("analyzing", start + _FIRST_ROUND * width, "ranking nodes by sensitivity")
        candidates = _rank(
            model_path, rounds[0].model_path, dataset, mixed, config, notes, layout=layout
        )
        candidates = [c for c in candidates if not set(c.nodes) <= set(user_excluded)]
        for candidate in candidates:
            for name in candidate.nodes:
                reasons.setdefault(name, candidate.reason)
        rest = start + (_FIRST_ROUND + _ANALYSIS) * width
        step = (end - rest) / mixed.max_rounds
        for index, count in enumerate(_schedule(rounds, candidates, mixed.max_rounds), start=1):
            excluded = list(dict.fromkeys(n for c in candidates[:count] for n in c.nodes))
            span = (rest + (index - 1) * step, rest + index * step)
            rounds.append(attempt(index, excluded, span))

    best = _best(rounds)
    for other in rounds:
        if other is not best:
            shutil.rmtree(other.workdir, ignore_errors=True)
    ctx.progress("quantizing", end, f"mixed precision: kept round {best.index}")
    notes.extend(note for note in best.result.notes if note not in notes)
    notes.extend(best.notes)
    if best.met and best.excluded:
        notes.append(
            f"mixed precision kept {len(best.excluded)} node(s) at {mixed.fallback} to bring the "
            f"{metric} drop to {best.drop:.4g} (limit {mixed.max_drop:g})"
        )
    elif not best.met:
        notes.append(
            f"mixed precision could NOT bring the {metric} drop within {mixed.max_drop:g}: the "
            f"best of {len(rounds)} round(s) keeps {len(best.excluded)} node(s) at "
            f"{mixed.fallback} and its drop is {best.drop:.4g}; the pass returns that model"
        )
    float_ops = _op_types(model_path)
    details: dict[str, Any] = {
        **best.result.details,
        "scope": "mixed",
        "metric": metric,
        "max_drop": mixed.max_drop,
        "drop": best.drop,
        "met_max_drop": best.met,
        "fallback": mixed.fallback,
        "samples": mixed.samples,
        "kept_float": [
            {
                "node": name,
                "op_type": float_ops.get(name),
                "reason": reasons.get(name, "excluded in the spec"),
            }
            for name in best.excluded
        ],
        "rounds": [r.summary() for r in rounds],
        "best_round": best.index,
    }
    return PassResult(model_path=best.model_path, notes=notes, details=details)


def _round_config(config: Int8Config, excluded: list[str]) -> Int8Config:
    """The plain quantization of one round: full, or partial without `excluded`."""
    user = config.exclude or NodeSelection()
    nodes = list(dict.fromkeys(excluded))
    if not nodes and not user.op_types and config.include is None:
        return config.model_copy(update={"scope": "full", "exclude": None, "mixed": None})
    exclude = NodeSelection(op_types=user.op_types, nodes=nodes)
    return config.model_copy(update={"scope": "partial", "exclude": exclude, "mixed": None})


def _rank(
    model_path: Path,
    quantized: Path,
    dataset: Path,
    mixed: MixedConfig,
    config: Int8Config,
    notes: list[str],
    *,
    layout: BatchLayout,
) -> list[_Candidate]:
    """Quantized nodes, most sensitive first, from the sensitivity report."""
    report = analyze(
        model_path,
        quantized,
        analysis_feeds(
            inspect_model(model_path),
            dataset=dataset,
            samples=min(mixed.samples, ANALYSIS_SAMPLES),
            layout=layout,
        ),
        pass_config=config.model_dump(mode="json"),
        threads=default_threads(),
    )
    if report["status"] != "ok":
        notes.append(f"nodes could not be ranked by sensitivity: {report['error']}")
        return []
    candidates: list[_Candidate] = []
    seen: set[str] = set()
    position = 0
    for entry in report["nodes"]:
        names = [name for name in entry["exclude"] if name not in seen]
        if not entry["quantized"] or not names:
            continue
        seen.update(names)
        position += 1
        candidates.append(
            _Candidate(
                nodes=names,
                reason=(
                    f"local SQNR {entry['local_sqnr_db']:.1f} dB (output "
                    f"{entry['sqnr_db']:.1f} dB, inputs {entry['input_sqnr_db']:.1f} dB), "
                    f"sensitivity rank {position}"
                ),
            )
        )
    if not candidates:
        notes.append("the sensitivity report matched no quantized node to keep float")
    return candidates


def _schedule(rounds: list[_Round], candidates: list[_Candidate], max_rounds: int) -> Iterator[int]:
    """How many candidates each round keeps float: 1, 2, 4, ... until a round meets the
    tolerance, then bisection towards the fewest that meets it. Reads `rounds` as they grow."""
    failing, meeting = 0, None
    tried: set[int] = set()
    for _ in range(max_rounds):
        if not candidates:
            return
        if meeting is None:
            count = min(1 if failing == 0 else failing * 2, len(candidates))
        else:
            if meeting - failing <= 1:
                return
            count = (failing + meeting) // 2
        if count in tried:
            return
        tried.add(count)
        yield count
        if rounds[-1].met:
            meeting = count if meeting is None else min(meeting, count)
        else:
            failing = max(failing, count)


def _best(rounds: list[_Round]) -> _Round:
    """The round with the fewest float nodes among those that meet the tolerance, else the
    round with the smallest drop."""
    meeting = [r for r in rounds if r.met]
    if meeting:
        return min(meeting, key=lambda r: (len(r.excluded), r.drop, r.index))
    return min(rounds, key=lambda r: (r.drop, len(r.excluded), r.index))


def _drop(measured: dict[str, Any], metric: str) -> float:
    base, optimized = measured["baseline_accuracy"], measured["optimized_accuracy"]
    if metric == "accuracy" and base is not None and optimized is not None:
        return float(base - optimized)
    return max(0.0, 1.0 - float(measured["fidelity"]["cosine_mean"]))


def _op_types(model_path: Path) -> dict[str, str]:
    model = onnx.load(str(model_path), load_external_data=False)
    return {node.name: node.op_type for node in model.graph.node if node.name}
