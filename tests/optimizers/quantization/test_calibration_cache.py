"""Static calibrations kept between runs: a second run of the same model, dataset and
calibration settings reads the kept ranges (and no data) and makes the same model; anything
that changes the ranges, or an entry that cannot be trusted, calibrates again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from optimizers.quantization.calibration_entry import read_entry
from optimizers.registry import run_pass
from optimizers.results import PassContext, PassResult
from tests.models.onnx_basic import make_cnn, make_dataset, make_mlp
from tests.models.sensitive import make_inputs, make_outlier_mlp
from tests.optimizers.helpers import quantize_config


def _static(calibration: dict[str, Any] | None = None, **fields: Any) -> Any:
    return quantize_config(
        method="static",
        calibration={"dataset_id": "c", "samples": 32, **(calibration or {})},
        **fields,
    )


def _run(
    model: Path,
    config: Any,
    workdir: Path,
    *,
    data: Path,
    cache: Path | None,
    digest: str | None = None,
) -> PassResult:
    ctx = PassContext(
        workdir=workdir,
        datasets={"c": data},
        calibration_cache=cache,
        dataset_sha256={"c": digest} if digest else {},
    )
    return run_pass(model, config, ctx)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_a_kept_calibration_is_reused_without_reading_the_dataset(
    tmp_path: Path, mlp: Path, mlp_data: Path, method: str
) -> None:
    cache = tmp_path / "cache"
    config = _static({"method": method})
    first = _run(mlp, config, tmp_path / "first", data=mlp_data, cache=cache)
    assert first.details["calibration_reused"] is False
    assert first.details["calibrated_samples"] == 32
    assert "calibrated on 32 samples; the ranges are kept for later runs" in " ".join(first.notes)
    (entry,) = _entries(cache)
    kept = json.loads(entry.read_text())  # plain JSON, nothing else
    assert kept["calibrated_samples"] == 32 and kept["inputs"]["method"] == method

    # The dataset is gone: only the kept ranges can make this run succeed.
    gone = tmp_path / "deleted.npz"
    second = _run(
        mlp, config, tmp_path / "second", data=gone, cache=cache, digest=_sha256(mlp_data)
    )
    assert second.details["calibration_reused"] is True
    assert second.details["calibrated_samples"] == 32
    assert any(note.startswith("calibration reused") for note in second.notes)

    without_cache = _run(mlp, config, tmp_path / "plain", data=mlp_data, cache=None)
    assert "calibration_reused" in without_cache.details
    assert without_cache.details["calibration_reused"] is False
    assert second.model_path.read_bytes() == first.model_path.read_bytes()
    assert second.model_path.read_bytes() == without_cache.model_path.read_bytes()


def test_reuse_makes_the_same_per_channel_qoperator_cnn(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx")
    data = make_dataset(tmp_path / "cnn.npz", model, samples=24)
    cache = tmp_path / "cache"
    config = _static({"samples": 16}, per_channel=True, format="qoperator")
    first = _run(model, config, tmp_path / "first", data=data, cache=cache)
    second = _run(model, config, tmp_path / "second", data=data, cache=cache)
    assert (first.details["calibration_reused"], second.details["calibration_reused"]) == (
        False,
        True,
    )
    assert second.model_path.read_bytes() == first.model_path.read_bytes()


def test_what_changes_the_ranges_calibrates_again_and_what_does_not_reuses(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    cache = tmp_path / "cache"
    _run(mlp, _static(), tmp_path / "base", data=mlp_data, cache=cache)
    same_shape = make_mlp(tmp_path / "other.onnx", hidden=256, seed=7)
    other_data = make_dataset(tmp_path / "other.npz", mlp, samples=48, seed=9)
    misses = {
        "another model of the same shape": (same_shape, _static(), mlp_data),
        "another dataset": (mlp, _static(), other_data),
        "another method": (mlp, _static({"method": "entropy"}), mlp_data),
        "other samples": (mlp, _static({"samples": 16}), mlp_data),
        "random sampling": (mlp, _static({"sampling": "random"}), mlp_data),
        "symmetric activations": (mlp, _static(activation_symmetric=True), mlp_data),
    }
    for index, (what, (model, config, data)) in enumerate(misses.items()):
        result = _run(model, config, tmp_path / f"miss{index}", data=data, cache=cache)
        assert result.details["calibration_reused"] is False, what
    assert len(_entries(cache)) == 1 + len(misses)

    # Per-channel weights and the QOperator format only use the ranges differently.
    for index, config in enumerate([_static(per_channel=True), _static(format="qoperator")]):
        result = _run(mlp, config, tmp_path / f"hit{index}", data=mlp_data, cache=cache)
        assert result.details["calibration_reused"] is True
    assert len(_entries(cache)) == 1 + len(misses)


def _corruptions(entry: dict[str, Any], other: dict[str, Any]) -> dict[str, bytes]:
    def edited(**changes: Any) -> bytes:
        return json.dumps({**entry, **changes}).encode()

    first_tensor = next(iter(entry["ranges"]))
    bad_range = {**entry["ranges"][first_tensor], "lowest": 5.0, "highest": -5.0}
    return {
        "not JSON": b"\x80\x04K\x01.",  # a pickle, say
        "cut short": json.dumps(entry).encode()[:100],
        "NaN range": edited(
            ranges={first_tensor: {"dtype": "float32", "lowest": float("nan"), "highest": 1.0}}
        ),
        "inverted range": edited(ranges={**entry["ranges"], first_tensor: bad_range}),
        "unknown tensor": edited(
            ranges={"not-a-tensor": entry["ranges"][first_tensor], **entry["ranges"]}
        ),
        "another calibration's entry under this name": json.dumps(other).encode(),
        "key not its inputs' digest": edited(inputs={**entry["inputs"], "samples": 31}),
    }


def test_a_corrupt_or_mismatching_entry_is_ignored_and_replaced(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    cache = tmp_path / "cache"
    first = _run(mlp, _static(), tmp_path / "first", data=mlp_data, cache=cache)
    (path,) = _entries(cache)
    entry = json.loads(path.read_text())
    other_cache = tmp_path / "other-cache"
    _run(mlp, _static({"samples": 16}), tmp_path / "other", data=mlp_data, cache=other_cache)
    (other_path,) = _entries(other_cache)
    other = json.loads(other_path.read_text())

    for index, (what, content) in enumerate(_corruptions(entry, other).items()):
        path.write_bytes(content)
        result = _run(mlp, _static(), tmp_path / f"run{index}", data=mlp_data, cache=cache)
        assert result.details["calibration_reused"] is False, what
        assert result.model_path.read_bytes() == first.model_path.read_bytes(), what
        assert read_entry(path.read_bytes()).key == entry["key"], what  # replaced by a good one


def test_the_rounds_of_a_mixed_pass_share_one_calibration(tmp_path: Path) -> None:
    model = make_outlier_mlp(tmp_path / "outlier.onnx")
    data = make_inputs(tmp_path / "outlier.npz")
    config = quantize_config(
        {
            "method": "static",
            "scope": "mixed",
            "calibration": {"dataset_id": "c", "samples": 32},
            "mixed": {"max_drop": 0.0, "max_rounds": 3, "metric": "fidelity"},
        }
    )
    cache = tmp_path / "cache"
    result = _run(model, config, tmp_path / "mixed", data=data, cache=cache)
    # Round 0 quantizes the optimized graph; the others the same graph with names kept.
    reused = [r["calibration_reused"] for r in result.details["rounds"]]
    assert reused == [False, False, True, True]
    assert len(_entries(cache)) == 2
    plain = _run(model, config, tmp_path / "plain", data=data, cache=None)
    assert [r["calibration_reused"] for r in plain.details["rounds"]] == [False] * 4
    drops = [(r["excluded"], r["drop"]) for r in result.details["rounds"]]
    assert drops == [(r["excluded"], r["drop"]) for r in plain.details["rounds"]]
    assert result.model_path.read_bytes() == plain.model_path.read_bytes()


def test_smoothquant_maxima_are_kept_and_shared_by_every_alpha_and_method(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    cache = tmp_path / "cache"
    config = _static(smooth_quant={"alpha": 0.5})
    first = _run(mlp, config, tmp_path / "first", data=mlp_data, cache=cache)
    assert first.details["smooth_quant"]["layers"] > 0
    assert first.details["smooth_quant"]["reused"] is False
    assert len(_entries(cache)) == 2  # the maxima, and the ranges of the smoothed model

    gone, digest = tmp_path / "deleted.npz", _sha256(mlp_data)
    second = _run(mlp, config, tmp_path / "second", data=gone, cache=cache, digest=digest)
    assert second.details["smooth_quant"]["reused"] is True
    assert second.details["smooth_quant"]["samples"] == 48  # the dataset's rows
    assert second.details["calibration_reused"] is True
    assert any(note.startswith("SmoothQuant reused") for note in second.notes)
    plain = _run(mlp, config, tmp_path / "plain", data=mlp_data, cache=None)
    assert second.model_path.read_bytes() == first.model_path.read_bytes()
    assert plain.model_path.read_bytes() == first.model_path.read_bytes()

    # Another alpha smooths differently (so the ranges are measured again) from the same maxima.
    other_alpha = _run(
        mlp, _static(smooth_quant={"alpha": 0.8}), tmp_path / "alpha", data=mlp_data, cache=cache
    )
    assert other_alpha.details["smooth_quant"]["reused"] is True
    assert other_alpha.details["calibration_reused"] is False
    dynamic = quantize_config(
        method="dynamic", per_channel=True, smooth_quant={"alpha": 0.8, "dataset_id": "c"}
    )
    smoothed_dynamic = _run(mlp, dynamic, tmp_path / "dyn", data=gone, cache=cache, digest=digest)
    assert smoothed_dynamic.details["smooth_quant"]["reused"] is True
