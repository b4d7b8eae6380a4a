"""The preflight: refusals with their reasons, and which families are tried and why not."""

from __future__ import annotations

import pytest

from optimizers.auto.preflight import Preflight, preflight, structure_of
from optimizers.auto.search import next_trials
from optimizers.checks import check_spec
from optimizers.config import PipelineSpec
from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.results import ArrayInfo
from tests.optimizers.auto.builders import OP_TYPES, auto_spec, dataset_info, model_info, plan_for


def test_a_dataset_that_does_not_fit_the_model_is_refused_with_the_reason() -> None:
    data = dataset_info("transformer")
    data.arrays = {"x": ArrayInfo(dtype="float32", shape=[512, 128, 256])}
    with pytest.raises(DatasetMismatchError, match=r"nothing can be searched.*axis"):
        preflight(model_info("transformer"), {"d": data}, auto_spec(), live_queues=["cpu"])


def test_a_missing_dataset_is_refused() -> None:
    with pytest.raises(DatasetMismatchError, match="'d' was not found"):
        preflight(model_info(), {}, auto_spec(), live_queues=["cpu"])


def test_accuracy_without_labels_is_refused_and_fidelity_is_the_default() -> None:
    unlabeled = {"d": dataset_info(labels=False)}
    with pytest.raises(DatasetMismatchError, match=r"'accuracy' needs labels.*'fidelity'"):
        preflight(model_info(), unlabeled, auto_spec(metric="accuracy"), live_queues=["cpu"])
    pre = preflight(model_info(), unlabeled, auto_spec(), live_queues=["cpu"])
    assert pre.facts["metric"] == "fidelity"
    labeled = preflight(model_info(), {"d": dataset_info()}, auto_spec(), live_queues=["cpu"])
    assert labeled.facts["metric"] == "accuracy"


def test_an_opset_too_old_for_quantization_with_only_quantize_allowed_is_refused() -> None:
    with pytest.raises(UnsupportedError, match=r"no technique applies.*opset 10 or newer.*opset 9"):
        preflight(
            model_info("cnn", opset=9),
            {"d": dataset_info("cnn")},
            auto_spec(allow=["quantize"]),
            live_queues=["cpu"],
        )
    # Pruning still applies to the same model when it is allowed.
    pre = preflight(
        model_info("cnn", opset=9), {"d": dataset_info("cnn")}, auto_spec(), live_queues=["cpu"]
    )
    assert set(pre.applicable) == {"graph", "prune_structured", "distill"}
    assert "opset 9" in pre.skipped["int8_static"]


def test_opset_11_is_quantized_after_an_upgrade() -> None:
    pre = preflight(
        model_info("cnn", opset=11),
        {"d": dataset_info("cnn")},
        auto_spec(allow=["quantize"]),
        live_queues=["cpu"],
    )
    assert "int8_static" in pre.applicable


def test_families_that_do_not_apply_are_skipped_with_their_reasons() -> None:
    _, pre = plan_for("cnn", labels=False)
    assert "fp16 runs slower than float32 on CPUs" in pre.skipped["fp16"]
    assert "no MatMul" in pre.skipped["int4_weight_only"]
    assert "needs labels" in pre.skipped["prune_structured"]
    assert "needs labels" in pre.skipped["distill"]
    assert "not faster" in pre.skipped["int8_weight_only"]
    _, pre = plan_for("transformer", allow=["quantize"], objective="size", device="cuda")
    assert pre.skipped["prune_structured"] == "`allow` does not include 'prune'"
    assert {"fp16", "int8_weight_only", "int4_weight_only"} <= set(pre.applicable)


def test_pruning_needs_trainable_layers_and_a_batch_on_axis_0() -> None:
    no_layers = model_info("other", op_types={"Add": 3, "Relu": 1})
    pre = preflight(no_layers, {"d": dataset_info("other")}, auto_spec(), live_queues=["cpu"])
    assert "has none" in pre.skipped["prune_structured"]
    assert pre.structure == "unknown"
    # A model fixed at batch 1: timed at 1 (said so in the facts), and trainable.
    fixed = model_info("mlp", batch=1)
    pre = preflight(fixed, {"d": dataset_info("mlp")}, auto_spec(), live_queues=["cpu"])
    assert pre.facts["batch_size"] == 1
    assert "fixes its batch size at 1" in pre.facts["batch_size_note"]
    assert "prune_structured" in pre.applicable
    for plan in next_trials(auto_spec(), pre, [], budget_left=24):
        assert plan.spec["benchmark"]["batch_sizes"] == [1]
        check_spec(fixed, PipelineSpec.model_validate(plan.spec), {"d": dataset_info("mlp")})


def test_a_cuda_search_without_a_live_gpu_worker_is_reported_not_refused() -> None:
    _, pre = plan_for("transformer", device="cuda", live_queues=("cpu",))
    assert "no live worker serves the gpu queue" in pre.facts["worker_note"]
    assert "fp16" in pre.applicable
    _, pre = plan_for("transformer", device="cuda", live_queues=("cpu", "gpu"))
    assert pre.facts["worker_note"] is None


@pytest.mark.parametrize(
    ("op_types", "structure"),
    [
        (OP_TYPES["transformer"], "transformer"),
        ({"Attention": 4, "MatMul": 8}, "transformer"),
        ({"Conv": 4, "MatMul": 2, "Softmax": 1, "LayerNormalization": 2}, "transformer"),
        (OP_TYPES["cnn"], "cnn"),
        (OP_TYPES["mlp"], "mlp"),
        ({"MatMul": 3, "Softmax": 1}, "mlp"),
        ({"Add": 1}, "unknown"),
        (None, "unknown"),
    ],
)
def test_structure_is_read_from_op_counts(op_types: dict[str, int] | None, structure: str) -> None:
    assert structure_of(op_types) == structure


def test_unknown_op_types_get_a_generic_candidate_set() -> None:
    model = model_info("mlp", op_types=None)
    pre = preflight(model, {"d": dataset_info("mlp")}, auto_spec(), live_queues=["cpu"])
    assert pre.structure == "unknown"
    assert {"graph", "int8_dynamic", "int8_static", "prune_structured"} <= set(pre.applicable)
    assert "not known" in pre.skipped["int4_weight_only"]


def test_preflight_round_trips_through_json() -> None:
    _, pre = plan_for("transformer")
    assert Preflight.from_json(pre.to_json()) == pre


def test_held_out_data_measures_the_drop_and_training_data_trains() -> None:
    datasets = {"d": dataset_info(), "held": dataset_info(labels=False)}
    with pytest.raises(DatasetMismatchError, match="'held' has none"):
        preflight(
            model_info(),
            datasets,
            auto_spec(eval_dataset_id="held", metric="accuracy"),
            live_queues=["cpu"],
        )
    datasets["held"] = dataset_info()
    spec = auto_spec(eval_dataset_id="held")
    pre = preflight(model_info(), datasets, spec, live_queues=["cpu"])
    assert pre.facts["held_out"] is True and pre.facts["eval_note"] is None
    plans = next_trials(spec, pre, [], budget_left=24)
    assert {plan.spec["evaluate"]["dataset_id"] for plan in plans} == {"held"}
    trained = [p for p in plans if p.spec["passes"][0]["kind"] in ("prune", "distill")]
    assert trained and all("'d'" in str(p.spec["passes"]) for p in trained)
    # Without it the drop of a fine-tuned model is measured on its own training data: said.
    same = preflight(model_info(), {"d": dataset_info()}, auto_spec(), live_queues=["cpu"])
    assert "optimistic" in same.facts["eval_note"]
