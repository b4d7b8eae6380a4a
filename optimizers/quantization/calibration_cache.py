"""Static int8 calibration kept between runs: the activation ranges onnxruntime's calibrator
measured (and SmoothQuant's activation maxima), in a folder of JSON entries named by their
key (optimizers.quantization.calibration_entry). A run whose key is found reads the ranges
and no data; any other run calibrates and adds its entry.

onnxruntime's `quantize_static(calibration_cache_path=...)` does the reading and writing of
its own JSON ranges file; this module decides which file it may trust. Entries are checked
before use (schema, key, tensors the model has) and rewritten through onnxruntime's own
writer, so what it reads is what was checked; a bad entry is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationMethod, quantize_static
from onnxruntime.quantization.calibrate import (
    TensorData,
    TensorsData,
    load_tensors_data,
    save_tensors_data,
)

from optimizers.config import StaticQuantizeConfig
from optimizers.external_data import check_relative_location, external_data_locations
from optimizers.quantization.calibration_entry import (
    MAX_ENTRY_BYTES,
    CalibrationEntry,
    CalibrationKey,
    SmoothingEntry,
    SmoothingKey,
    TensorRange,
    read_entry,
)

logger = logging.getLogger(__name__)

EntryT = TypeVar("EntryT", CalibrationEntry, SmoothingEntry)

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


def supported() -> bool:
    """Whether this onnxruntime reads and writes calibration ranges files."""
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(path: Path) -> str:
    """sha256 over the model file and, in name order, the external data files it uses."""
    digest = hashlib.sha256(file_sha256(path).encode())
    locations = external_data_locations(onnx.load(str(path), load_external_data=False))
    for location in sorted(locations):
        data = path.parent / check_relative_location(location, what="external data")
        digest.update(location.encode() + b"\0" + file_sha256(data).encode())
    return digest.hexdigest()


def key_for(
    *,
    model_path: Path,
    dataset_sha256: str,
    config: StaticQuantizeConfig,
    op_types: list[str] | None,
    options: dict[str, Any],
    batch_axes: dict[str, int | None],
) -> CalibrationKey:
    calibration = config.calibration
    assert calibration is not None  # the config validator's
    return CalibrationKey(
        model_sha256=model_sha256(model_path),
        dataset_sha256=dataset_sha256,
        method=calibration.method,
        samples=calibration.samples,
        sampling=calibration.sampling,
        seed=calibration.seed if calibration.sampling == "random" else None,
        op_types=sorted(op_types) if op_types else None,
        activation_type=config.activation_type,
        weight_type=config.weight_type,
        options=options,
        batch_axes=batch_axes,
        onnxruntime=onnxruntime.__version__,
        numpy=np.__version__,
    )


@dataclass(frozen=True)
class Reused:
    """A kept calibration found for a key: onnxruntime's ranges file, ready to read."""

    ranges_file: Path
    calibrated_samples: int


def lookup(folder: Path, key: CalibrationKey, *, model_path: Path, workdir: Path) -> Reused | None:
    """The entry for `key` in `folder` as a ranges file in `workdir`, or None when there is
    none or it cannot be trusted (then the caller calibrates and replaces it)."""
    entry = _find(folder, key, CalibrationEntry, model_path=model_path)
    if entry is None:
        return None
    ranges_file = workdir / "calibration-ranges.json"
    save_tensors_data(_tensors_data(entry), ranges_file)
    return Reused(ranges_file=ranges_file, calibrated_samples=entry.calibrated_samples)


def store(folder: Path, key: CalibrationKey, *, ranges_file: Path, calibrated_samples: int) -> bool:
    """Keep the ranges onnxruntime wrote to `ranges_file` as the entry for `key`; False when
    they do not make a valid entry (the quantized model is not affected)."""
    try:
        tensors = load_tensors_data(ranges_file)
        entry = CalibrationEntry(
            key=key.digest(),
            inputs=key,
            calibrated_samples=calibrated_samples,
            ranges={name: _tensor_range(data) for name, data in tensors.items()},
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:
        logger.warning("calibration ranges not kept: %s", exc)
        return False
    return _write(folder, entry)


def smoothing_key(
    *, model_path: Path, dataset_sha256: str, samples: int, batch_axes: dict[str, int | None]
) -> SmoothingKey:
    return SmoothingKey(
        model_sha256=model_sha256(model_path),
        dataset_sha256=dataset_sha256,
        samples=samples,
        batch_axes=batch_axes,
        onnxruntime=onnxruntime.__version__,
        numpy=np.__version__,
    )


@dataclass(frozen=True)
class ReusedAbsmax:
    """SmoothQuant's activation maxima kept from an earlier measurement."""

    absmax: dict[str, np.ndarray]
    calibrated_samples: int


def lookup_absmax(folder: Path, key: SmoothingKey, *, model_path: Path) -> ReusedAbsmax | None:
    entry = _find(folder, key, SmoothingEntry, model_path=model_path)
    if entry is None:
        return None
    return ReusedAbsmax(
        absmax={name: np.asarray(v, dtype=np.float32) for name, v in entry.absmax.items()},
        calibrated_samples=entry.calibrated_samples,
    )


def store_absmax(
    folder: Path, key: SmoothingKey, *, absmax: dict[str, np.ndarray], calibrated_samples: int
) -> bool:
    try:
        entry = SmoothingEntry(
            key=key.digest(),
            inputs=key,
            calibrated_samples=calibrated_samples,
            absmax={name: np.asarray(v, dtype=np.float32).tolist() for name, v in absmax.items()},
        )
    except ValueError as exc:
        logger.warning("SmoothQuant maxima not kept: %s", exc)
        return False
    return _write(folder, entry)


def _find(
    folder: Path,
    key: CalibrationKey | SmoothingKey,
    kind: type[EntryT],
    *,
    model_path: Path,
) -> EntryT | None:
    """The valid entry of type `kind` kept for `key`, naming only tensors of the model."""
    path = folder / key.file_name()
    try:
        data = _read_regular_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("calibration entry %s unreadable, measuring again: %s", path.name, exc)
        return None
    try:
        entry = read_entry(data)
        if not isinstance(entry, kind) or entry.inputs != key:
            raise ValueError("the entry was made for other inputs")
        names = entry.ranges if isinstance(entry, CalibrationEntry) else entry.absmax
        unknown = set(names) - _tensor_names(model_path)
        if unknown:
            raise ValueError(f"{len(unknown)} tensor(s) the model does not have")
    except ValueError as exc:
        logger.warning("calibration entry %s ignored, measuring again: %s", path.name, exc)
        return None
    return entry


def _write(folder: Path, entry: CalibrationEntry | SmoothingEntry) -> bool:
    text = entry.model_dump_json()
    if len(text) > MAX_ENTRY_BYTES:
        logger.warning("calibration entry not kept: %d bytes is over the limit", len(text))
        return False
    folder.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed: a reader never sees half an entry. The dot keeps the
    # partial file out of the entry-name pattern.
    fd, partial = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(partial, folder / entry.inputs.file_name())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return True


def _read_regular_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError("not a regular file")
        return handle.read(MAX_ENTRY_BYTES + 1)


def _tensor_names(model_path: Path) -> set[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = {value.name for value in graph.input} | {value.name for value in graph.output}
    names.update(output for node in graph.node for output in node.output)
    return names


def _tensor_range(data: TensorData) -> TensorRange:
    lowest, highest = data.range_value
    lowest, highest = np.asarray(lowest), np.asarray(highest)
    return TensorRange(
        dtype=str(lowest.dtype),  # validated: float32 or float16
        lowest=lowest.tolist(),
        highest=highest.tolist(),
    )


def _tensors_data(entry: CalibrationEntry) -> TensorsData:
    """The entry's ranges as the calibrator gives them: only the bounds, which is all that
    int8 quantization reads of them."""
    method = _METHODS[entry.inputs.method]
    return TensorsData(
        method,
        {
            name: TensorData(
                lowest=np.asarray(value.lowest, dtype=value.dtype),
                highest=np.asarray(value.highest, dtype=value.dtype),
            )
            for name, value in entry.ranges.items()
        },
    )
