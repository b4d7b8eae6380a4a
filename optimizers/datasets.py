"""Read `.npz` datasets safely: describe them from their headers, check them against a model,
and read rows in batches without loading whole arrays or ever unpickling."""

from __future__ import annotations

import math
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from optimizers.batching import BatchLayout, batch_layout, field_hint
from optimizers.errors import DatasetMismatchError, InvalidDatasetError
from optimizers.results import ArrayInfo, DatasetInfo, ModelInfo, TensorInfo

LABELS = "labels"
#: Element kinds a model can consume: bool, signed and unsigned ints, floats.
_NUMERIC_KINDS = "biuf"
#: What zipfile raises for corrupt, encrypted or oddly compressed members.
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
)
#: Most arrays an `.npz` dataset may hold.
MAX_ARRAYS = 1024
#: Largest uncompressed-to-compressed ratio of one array (zip bombs are far above this);
#: arrays under RATIO_CHECK_MIN_BYTES are not held to it.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def inspect_dataset(path: Path, *, max_total_bytes: int | None = None) -> DatasetInfo:
    """Describe an `.npz` dataset from its array headers; no array data is read.

    With `max_total_bytes` (the checks of an upload), an archive that would expand past it or
    looks like a zip bomb is refused, and so is an array whose header declares more or fewer
    bytes than the archive holds for it: readers size their buffers from the headers."""
    try:
        size_bytes = path.stat().st_size
    except OSError as exc:
        raise InvalidDatasetError(f"cannot read the dataset file: {exc.strerror or exc}") from exc
    if max_total_bytes is not None:
        with _open_archive(path) as archive:
            _check_expansion(archive, max_total_bytes)
    headers = _read_headers(path, check_sizes=max_total_bytes is not None)
    if not headers:
        raise InvalidDatasetError("the .npz archive holds no arrays")

    num_samples = _sample_count(headers)
    if num_samples == 0:
        raise InvalidDatasetError("the dataset has zero samples")

    labels = headers.get(LABELS)
    if labels is not None and (len(labels.shape) != 1 or labels.dtype.kind not in "iu"):
        raise InvalidDatasetError(
            f"'labels' must be a 1-D integer array of class indices, got shape "
            f"{list(labels.shape)} and dtype {labels.dtype.name}"
        )
    arrays = {
        name: ArrayInfo(dtype=header.dtype.name, shape=list(header.shape))
        for name, header in headers.items()
        if name != LABELS
    }
    if not arrays:
        raise InvalidDatasetError("the dataset holds only 'labels'; add one array per model input")
    return DatasetInfo(
        arrays=arrays,
        num_samples=num_samples,
        has_labels=labels is not None,
        label_dtype=labels.dtype.name if labels is not None else None,
        size_bytes=size_bytes,
    )


def _sample_count(headers: dict[str, _Header]) -> int:
    """The dataset's sample count: the length of `labels`, else the first-axis length most
    arrays share (the longest on a tie). Arrays for inputs without a batch axis are given
    once, with the input's own shape, and need not have it; check_fits, which knows the
    model, holds every per-sample array to it."""
    labels = headers.get(LABELS)
    if labels is not None and labels.shape:
        return labels.shape[0]
    counts = Counter(header.shape[0] for header in headers.values() if header.shape)
    if not counts:
        raise InvalidDatasetError(
            "every array is a scalar; the arrays that vary from sample to sample need a first "
            "axis of samples"
        )
    return max(counts, key=lambda count: (counts[count], count))


def check_fits(
    model: ModelInfo,
    dataset: DatasetInfo,
    *,
    purpose: str,
    need_labels: bool = False,
    layout: BatchLayout | None = None,
) -> None:
    """Raise DatasetMismatchError unless `dataset` can feed every input of `model`. An input
    with a batch axis takes one row per sample: an array of the input's rank whose first axis
    is the sample axis and whose other axes are the input's other axes, in order. An input
    without one (`layout`) is given once, at the input's own shape."""
    layout = layout or batch_layout(model)
    for tensor in model.inputs:
        array = dataset.arrays.get(tensor.name)
        if array is None:
            have = ", ".join(f"'{n}'" for n in dataset.arrays) or "none"
            raise DatasetMismatchError(
                f"{purpose} dataset has no array for model input '{tensor.name}' (it has: "
                f"{have}); name each array after the model input it feeds"
            )
        if array.dtype != tensor.dtype:
            raise DatasetMismatchError(
                f"{purpose} dataset array '{tensor.name}' is {array.dtype} but the model input "
                f"expects {tensor.dtype}; convert it, e.g. arr.astype(np.{tensor.dtype})"
            )
        axis = layout.axis(tensor.name)
        if axis is None:
            _check_given_once(tensor, array, purpose)
            continue
        if len(array.shape) != len(tensor.shape):
            raise DatasetMismatchError(
                f"{purpose} dataset array '{tensor.name}' has rank {len(array.shape)} (shape "
                f"{array.shape}) but the model input has rank {len(tensor.shape)} (shape "
                f"{tensor.shape}); the first axis of the array is the sample axis"
            )
        if array.shape[0] != dataset.num_samples:
            raise DatasetMismatchError(
                f"{purpose} dataset arrays have different numbers of samples (first axis): "
                f"'{tensor.name}' has {array.shape[0]}, the dataset {dataset.num_samples}; "
                "every array of a batched input must hold one row per sample"
            )
        wanted = [dim for index, dim in enumerate(tensor.shape) if index != axis]
        for offset, (want, got) in enumerate(zip(wanted, array.shape[1:], strict=True)):
            model_axis = offset if offset < axis else offset + 1
            if isinstance(want, int) and want != got:
                raise DatasetMismatchError(
                    f"{purpose} dataset array '{tensor.name}' has size {got} on axis "
                    f"{offset + 1} but the model input needs {want} there (its axis "
                    f"{model_axis}; model shape {tensor.shape}, batch axis {axis}, dataset "
                    f"shape {array.shape})"
                )
    if need_labels and not dataset.has_labels:
        raise DatasetMismatchError(
            f"{purpose} dataset has no 'labels' array, which the accuracy metric needs; add "
            "labels or use metric 'fidelity'"
        )


def _check_given_once(tensor: TensorInfo, array: ArrayInfo, purpose: str) -> None:
    fits = len(array.shape) == len(tensor.shape) and all(
        not isinstance(want, int) or want == got
        for want, got in zip(tensor.shape, array.shape, strict=True)
    )
    if not fits:
        settle = (
            ""
            if not tensor.shape
            else f"; if it does vary per sample, set {field_hint(tensor.name)} in the job spec"
        )
        raise DatasetMismatchError(
            f"{purpose} dataset array '{tensor.name}' has shape {array.shape}, but model input "
            f"'{tensor.name}' (shape {tensor.shape}) has no batch axis: it is given once, an "
            f"array of the input's own shape, and fed as it is at every batch size{settle}"
        )


def to_feeds(
    rows: dict[str, np.ndarray],
    once: dict[str, np.ndarray],
    layout: BatchLayout,
    *,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """Model feeds from a batch of dataset rows (sample axis first) and the arrays given once:
    rows are padded cyclically to `pad_to` rows when fewer, and their sample axis moved to
    the input's batch axis."""
    feeds: dict[str, np.ndarray] = {}
    for name, array in rows.items():
        axis = layout.axis(name)
        if axis is None:
            continue
        if pad_to is not None and len(array) < pad_to:
            array = pad_rows(array, pad_to)
        feeds[name] = np.moveaxis(array, 0, axis) if axis else array
    return feeds | once


@dataclass(frozen=True)
class FeedBatch:
    """One run's feeds built from dataset rows: `rows` real samples (the feeds may hold more,
    padded up to a fixed batch size), and their labels when the dataset has them."""

    feeds: dict[str, np.ndarray]
    rows: int
    labels: np.ndarray | None


def iter_feeds(
    path: Path,
    model: ModelInfo,
    layout: BatchLayout,
    batch_size: int,
    *,
    limit: int | None = None,
    picked: np.ndarray | None = None,
) -> Iterator[FeedBatch]:
    """Feeds for consecutive batches of the first `limit` samples (or of the sorted row
    indices `picked`), in file order, as the model takes them: batched inputs with their
    sample axis at their batch axis and padded to a fixed batch size, the others given once."""
    names = layout.batched(model)
    once = read_once(path, layout.unbatched(model))
    if not names:
        # Nothing varies per sample: one run on the arrays given once.
        yield FeedBatch(feeds=once, rows=1, labels=None)
        return
    batches = (
        iter_batches(path, names, batch_size, limit=limit)
        if picked is None
        else iter_picked_batches(path, names, batch_size, picked)
    )
    for batch in batches:
        rows = len(batch[names[0]])
        yield FeedBatch(
            feeds=to_feeds(batch, once, layout, pad_to=layout.fixed),
            rows=rows,
            labels=batch.get(LABELS),
        )


def read_once(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Whole arrays (inputs without a batch axis, given once and small)."""
    if not names:
        return {}
    with _open_archive(path) as archive:
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            with _open_array(archive, name) as reader:
                arrays[name] = reader.read_all()
        return arrays


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with its rows repeated cyclically up to `size` rows."""
    return np.resize(array, (size, *array.shape[1:]))


def load_batch(path: Path, names: list[str], indices: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `indices` of each named array. Reads only the rows between the smallest and the
    largest index, so a few rows of a large dataset stay cheap."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError("indices must be a non-empty 1-D array")
    start, stop = int(indices.min()), int(indices.max()) + 1
    with _open_archive(path) as archive:
        batch: dict[str, np.ndarray] = {}
        for name in names:
            with _open_array(archive, name) as reader:
                if start < 0 or stop > reader.header.shape[0]:
                    raise InvalidDatasetError(
                        f"array '{name}' has {reader.header.shape[0]} samples; rows "
                        f"{start}..{stop - 1} were requested"
                    )
                reader.skip(start)
                rows = reader.read(stop - start)
            batch[name] = rows[indices - start]
    return batch


def iter_batches(
    path: Path, names: list[str], batch_size: int, limit: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches of the first `limit` samples (all when None), in file order.
    Each dict holds the named arrays and, when the dataset has them, "labels"."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with _open_archive(path) as archive, ExitStack() as stack:
        wanted = list(dict.fromkeys([*names, LABELS] if LABELS in _members(archive) else names))
        readers = {name: stack.enter_context(_open_array(archive, name)) for name in wanted}
        total = min(reader.header.shape[0] for reader in readers.values())
        if limit is not None:
            total = min(total, limit)
        for start in range(0, total, batch_size):
            count = min(batch_size, total - start)
            yield {name: reader.read(count) for name, reader in readers.items()}


class _ArrayReader:
    """Sequential row reader over one `.npy` member of an open archive."""

    def __init__(self, name: str, stream: IO[bytes], header: _Header) -> None:
        self.name = name
        self.stream = stream
        self.header = header
        self._row_shape = header.shape[1:]
        self._row_bytes = math.prod(self._row_shape) * header.dtype.itemsize
        # Fortran-ordered rows are not contiguous on disk; such arrays are read whole once.
        self._whole: np.ndarray | None = None
        self._position = 0

    def skip(self, rows: int) -> None:
        if self.header.fortran_order:
            self._position += rows
            return
        remaining = rows * self._row_bytes
        while remaining > 0:
            chunk = self._read_bytes(min(remaining, 1 << 24))
            if not chunk:
                raise self._truncated()
            remaining -= len(chunk)
        self._position += rows

    def read(self, rows: int) -> np.ndarray:
        if self.header.fortran_order:
            if self._whole is None:
                size = math.prod(self.header.shape) * self.header.dtype.itemsize
                data = self._read_bytes(size)
                if len(data) != size:
                    raise self._truncated()
                flat = np.frombuffer(data, dtype=self.header.dtype)
                self._whole = flat.reshape(self.header.shape, order="F")
            rows_view = self._whole[self._position : self._position + rows]
            self._position += rows
            return np.array(rows_view, dtype=self.header.dtype.newbyteorder("="), order="C")
        wanted = rows * self._row_bytes
        data = self._read_bytes(wanted)
        if len(data) != wanted:
            raise self._truncated()
        self._position += rows
        array = np.frombuffer(data, dtype=self.header.dtype).reshape((rows, *self._row_shape))
        # Native byte order and a writable copy, which every consumer can use as is.
        return array.astype(self.header.dtype.newbyteorder("="), copy=True)

    def read_all(self) -> np.ndarray:
        """The whole array, scalars included."""
        if not self.header.shape:
            data = self._read_bytes(self.header.dtype.itemsize)
            if len(data) != self.header.dtype.itemsize:
                raise self._truncated()
            value = np.frombuffer(data, dtype=self.header.dtype).reshape(())
            return value.astype(self.header.dtype.newbyteorder("="), copy=True)
        return self.read(self.header.shape[0] - self._position)

    def _read_bytes(self, size: int) -> bytes:
        try:
            return self.stream.read(size)
        except _READ_ERRORS as exc:
            raise InvalidDatasetError(f"array '{self.name}' cannot be read: {exc}") from exc

    def _truncated(self) -> InvalidDatasetError:
        return InvalidDatasetError(
            f"array '{self.name}' ends before its header's shape {list(self.header.shape)}; "
            "the file is truncated or corrupt"
        )


@contextmanager
def _open_array(archive: zipfile.ZipFile, name: str) -> Iterator[_ArrayReader]:
    member = _members(archive).get(name)
    if member is None:
        raise DatasetMismatchError(f"the dataset has no array named '{name}'")
    with archive.open(member) as stream:
        yield _ArrayReader(name, stream, _read_header(stream, name))


def _members(archive: zipfile.ZipFile) -> dict[str, str]:
    """Array name -> archive member name, as numpy.savez writes them ("x" -> "x.npy")."""
    return {
        info.filename.removesuffix(".npy"): info.filename
        for info in archive.infolist()
        if info.filename.endswith(".npy") and not info.is_dir()
    }


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDatasetError(
            f"the dataset is not an .npz archive ({exc}); save it with numpy.savez"
        ) from exc


def _check_expansion(archive: zipfile.ZipFile, max_total_bytes: int) -> None:
    infos = archive.infolist()
    if len(infos) > MAX_ARRAYS:
        raise InvalidDatasetError(
            f"the archive holds {len(infos)} entries; at most {MAX_ARRAYS} arrays are allowed"
        )
    total = 0
    for info in infos:
        total += info.file_size
        if total > max_total_bytes:
            raise InvalidDatasetError(
                f"the arrays expand to more than {max_total_bytes} bytes, the limit for "
                "uncompressed uploads (4x MODELPRESS_MAX_UPLOAD_BYTES)"
            )
        if info.file_size >= RATIO_CHECK_MIN_BYTES and info.file_size > (
            MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        ):
            raise InvalidDatasetError(
                f"'{info.filename}' expands {info.file_size} bytes from {info.compress_size} "
                f"(more than {MAX_COMPRESSION_RATIO}x); refused as a possible zip bomb"
            )


def _read_headers(path: Path, *, check_sizes: bool) -> dict[str, _Header]:
    with _open_archive(path) as archive:
        others = [
            info.filename
            for info in archive.infolist()
            if not info.is_dir() and not info.filename.endswith(".npy")
        ]
        if others:
            raise InvalidDatasetError(
                f"the archive holds files that are not .npy arrays: {others[:5]}; save the "
                "dataset with numpy.savez"
            )
        headers: dict[str, _Header] = {}
        for name, member in _members(archive).items():
            try:
                with archive.open(member) as stream:
                    header = _read_header(stream, name)
                    header_bytes = stream.tell()
            except _READ_ERRORS as exc:
                raise InvalidDatasetError(f"array '{name}' cannot be read: {exc}") from exc
            headers[name] = header
            if not check_sizes:
                continue
            data_bytes = math.prod(header.shape) * header.dtype.itemsize
            stored = archive.getinfo(member).file_size - header_bytes
            if stored != data_bytes:
                raise InvalidDatasetError(
                    f"array '{name}' declares shape {list(header.shape)} of {header.dtype.name} "
                    f"({data_bytes} bytes) but holds {stored} bytes of data; the file is "
                    "truncated or corrupt"
                )
        return headers


def _read_header(stream: IO[bytes], name: str) -> _Header:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InvalidDatasetError(
                f"array '{name}' uses .npy format version {version[0]}.{version[1]}, which is "
                "not supported; save it with numpy.savez and plain field names"
            )
    except InvalidDatasetError:
        raise
    except Exception as exc:
        raise InvalidDatasetError(f"array '{name}' is not a valid .npy array: {exc}") from exc
    if dtype.hasobject:
        raise InvalidDatasetError(
            f"array '{name}' holds Python objects (dtype {dtype}), which would need unpickling; "
            "only numeric arrays are accepted"
        )
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidDatasetError(
            f"array '{name}' has dtype {dtype}; only bool, integer and float arrays are accepted"
        )
    return _Header(shape=tuple(int(d) for d in shape), dtype=dtype, fortran_order=fortran_order)


def pick_rows(num_samples: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct row indices out of `num_samples`, drawn with `seed`, in file order."""
    rng = np.random.default_rng(seed)
    count = min(count, num_samples)
    return np.sort(rng.choice(num_samples, size=count, replace=False))


def iter_picked_batches(
    path: Path, names: list[str], batch_size: int, rows: np.ndarray, *, chunk: int = 256
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the rows `rows` (sorted indices), streamed through the file `chunk` rows at
    a time: only the picked rows are kept, so memory stays at a chunk plus a batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    wanted_rows = np.asarray(rows, dtype=np.int64)
    if wanted_rows.size == 0:
        return
    pending: dict[str, list[np.ndarray]] = {}
    held = 0
    with _open_archive(path) as archive, ExitStack() as stack:
        wanted = list(dict.fromkeys([*names, LABELS] if LABELS in _members(archive) else names))
        readers = {name: stack.enter_context(_open_array(archive, name)) for name in wanted}
        stop = int(wanted_rows[-1]) + 1
        for start in range(0, stop, chunk):
            count = min(chunk, stop - start)
            local = wanted_rows[(wanted_rows >= start) & (wanted_rows < start + count)] - start
            for name, reader in readers.items():
                block = reader.read(count)
                pending.setdefault(name, []).append(block[local])
            held += len(local)
            while held >= batch_size:
                merged = {name: np.concatenate(parts) for name, parts in pending.items()}
                yield {name: array[:batch_size] for name, array in merged.items()}
                pending = {name: [array[batch_size:]] for name, array in merged.items()}
                held -= batch_size
        if held:
            yield {name: np.concatenate(parts) for name, parts in pending.items()}
