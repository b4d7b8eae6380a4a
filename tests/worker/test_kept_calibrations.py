"""The pool process's side of kept calibrations: a job gets only its own project's entries for
its model and datasets, and only valid entries for its own datasets come back out of its
scratch folder (which a hostile job fills as it likes)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from core.storage import LocalStorage
from core.storage_keys import calibration_prefix
from optimizers.config import PipelineSpec
from optimizers.quantization.calibration_entry import (
    MAX_ENTRY_BYTES,
    CalibrationEntry,
    CalibrationKey,
    SmoothingEntry,
    SmoothingKey,
    TensorRange,
)
from worker.calibration import SCRATCH_FOLDER, KeptCalibrations, calibrates
from worker.scratch import ScratchFolder

PROJECT, MODEL = "prj_a", "mdl_a"
DATASET, OTHER_DATASET = "1" * 64, "2" * 64


def _entry(*, dataset: str = DATASET, samples: int = 8) -> CalibrationEntry:
    key = CalibrationKey(
        model_sha256="f" * 64,
        dataset_sha256=dataset,
        method="minmax",
        samples=samples,
        sampling="first",
        seed=None,
        op_types=None,
        activation_type="uint8",
        weight_type="int8",
        options={"ActivationSymmetric": False},
        batch_axes={},
        onnxruntime="1.32.0",
        numpy="2.4.6",
    )
    return CalibrationEntry(
        key=key.digest(),
        inputs=key,
        calibrated_samples=samples,
        ranges={"x": TensorRange(dtype="float32", lowest=-1.0, highest=1.0)},
    )


def _maxima() -> SmoothingEntry:
    key = SmoothingKey(
        model_sha256="f" * 64,
        dataset_sha256=DATASET,
        samples=8,
        batch_axes={},
        onnxruntime="1.32.0",
        numpy="2.4.6",
    )
    return SmoothingEntry(key=key.digest(), inputs=key, calibrated_samples=8, absmax={"x": [1.0]})


def _name(entry: CalibrationEntry | SmoothingEntry) -> str:
    return f"{entry.key}.json"


def _kept(tmp_path: Path) -> tuple[KeptCalibrations, LocalStorage]:
    storage = LocalStorage(tmp_path / "store")
    counter = itertools.count()
    staging = tmp_path / "staging"
    staging.mkdir()
    kept = KeptCalibrations(
        storage=storage,
        scratch=ScratchFolder(tmp_path / "scratch"),
        project_id=PROJECT,
        model_id=MODEL,
        dataset_sha256={"dst_1": DATASET},
        staging_path=lambda: staging / f"file-{next(counter)}",
    )
    return kept, storage


def _put(storage: LocalStorage, key: str, content: bytes, tmp_path: Path) -> None:
    source = tmp_path / "put"
    source.write_bytes(content)
    storage.put_file(key, source)


def test_a_job_gets_its_own_models_entries_for_its_datasets_only(tmp_path: Path) -> None:
    kept, storage = _kept(tmp_path)
    mine = [_entry(samples=8), _entry(samples=16)]
    for entry in mine:
        _put(
            storage,
            f"{calibration_prefix(PROJECT, MODEL, DATASET)}/{_name(entry)}",
            entry.model_dump_json().encode(),
            tmp_path,
        )
    others = {
        "another project": calibration_prefix("prj_b", MODEL, DATASET),
        "another model": calibration_prefix(PROJECT, "mdl_b", DATASET),
        "another dataset": calibration_prefix(PROJECT, MODEL, OTHER_DATASET),
    }
    for index, prefix in enumerate(others.values()):
        entry = _entry(samples=100 + index)
        _put(storage, f"{prefix}/{_name(entry)}", entry.model_dump_json().encode(), tmp_path)
    _put(storage, f"{calibration_prefix(PROJECT, MODEL, DATASET)}/notes.txt", b"x", tmp_path)

    request = kept.stage()

    assert request == {"calibration_cache": SCRATCH_FOLDER, "dataset_sha256": {"dst_1": DATASET}}
    copied = sorted(os.listdir(kept.scratch.root / SCRATCH_FOLDER))
    assert copied == sorted(_name(entry) for entry in mine)


def test_only_valid_new_entries_for_the_jobs_datasets_are_stored(tmp_path: Path) -> None:
    kept, storage = _kept(tmp_path)
    before = _entry(samples=8)
    prefix = calibration_prefix(PROJECT, MODEL, DATASET)
    _put(storage, f"{prefix}/{_name(before)}", before.model_dump_json().encode(), tmp_path)
    kept.stage()
    folder = kept.scratch.root / SCRATCH_FOLDER
    secret = tmp_path / "secret"
    secret.write_text(_entry(samples=77).model_dump_json())

    new = _entry(samples=32)
    (folder / _name(new)).write_text(new.model_dump_json())
    maxima = _maxima()
    (folder / _name(maxima)).write_text(maxima.model_dump_json())
    refused = {
        "another dataset": _entry(dataset=OTHER_DATASET, samples=9),
        "named after another key": _entry(samples=10),
    }
    (folder / _name(refused["another dataset"])).write_text(
        refused["another dataset"].model_dump_json()
    )
    (folder / ("c" * 64 + ".json")).write_text(refused["named after another key"].model_dump_json())
    (folder / ("d" * 64 + ".json")).write_bytes(b"\x80\x04K\x01.")  # not JSON
    (folder / ("e" * 64 + ".json")).write_bytes(b" " * (MAX_ENTRY_BYTES + 1))
    os.symlink(secret, folder / (_entry(samples=77).key + ".json"))
    (folder / ".partial-1.tmp").write_text(_entry(samples=11).model_dump_json())

    stored = kept.keep()

    assert sorted(stored) == sorted([_name(new), _name(maxima)])
    keys = sorted(o.key for o in storage.list_objects(""))
    assert keys == sorted(f"{prefix}/{_name(entry)}" for entry in (before, new, maxima))
    assert storage.path(f"{prefix}/{_name(new)}").read_text() == new.model_dump_json()


def test_jobs_that_measure_activations_get_the_kept_calibrations() -> None:
    def spec(**quantize: object) -> PipelineSpec:
        return PipelineSpec.model_validate({"passes": [{"kind": "quantize", **quantize}]})

    assert calibrates(spec(method="static", calibration={"dataset_id": "dst_1"}))
    assert calibrates(spec(method="dynamic", smooth_quant={"dataset_id": "dst_1"}))
    assert not calibrates(spec(method="dynamic"))
    assert not calibrates(spec(method="fp16"))
