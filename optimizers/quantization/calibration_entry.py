"""What a kept calibration is: the inputs that decide activation ranges (its key) and the
ranges themselves, as plain JSON; likewise SmoothQuant's measured activation maxima. Entries
cross the job sandbox in both directions, so this module is the one schema both sides check
them against; it imports neither onnxruntime nor numpy (the worker's pool process validates
entries with it too)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

#: The file name of an entry: its key, so a reader finds it without listing.
ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.json$")
#: An entry larger than this is refused (ranges take ~100 bytes per calibrated tensor).
MAX_ENTRY_BYTES = 32 * 1024 * 1024
#: Bumped whenever what goes into a key changes meaning: older entries then simply miss.
KEY_VERSION: Final = 1
ENTRY_FORMAT: Final = "modelpress.calibration/1"
SMOOTHING_FORMAT: Final = "modelpress.smoothquant-absmax/1"

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
TensorName = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
#: A range bound: one value per tensor (per-tensor calibration) or one per channel.
Bound = float | Annotated[list[float], Field(min_length=1, max_length=1_000_000)]


class _Strict(BaseModel):
    # NaN and infinity are not ranges; JSON does not have them, Python's parser accepts them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class _Key(_Strict):
    def digest(self) -> str:
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def file_name(self) -> str:
        return f"{self.digest()}.json"


class CalibrationKey(_Key):
    """Everything that changes the ranges a calibration measures. Settings that only change
    what is done with the ranges afterwards (per-channel weights, QDQ or QOperator, the nodes
    excluded) are left out, so variants of one recipe share a calibration."""

    version: Literal[1] = KEY_VERSION
    #: sha256 of the exact model the calibrator runs on (after pre-processing and
    #: SmoothQuant), its external data included.
    model_sha256: Sha256
    dataset_sha256: Sha256
    method: Literal["minmax", "entropy", "percentile"]
    samples: int = Field(ge=1)
    sampling: Literal["first", "random"]
    seed: int | None
    #: Op types whose tensors are calibrated; None: onnxruntime's default for static.
    op_types: list[str] | None
    activation_type: Literal["int8", "uint8"]
    weight_type: Literal["int8", "uint8"]
    #: onnxruntime's extra options of the static quantization (symmetric activations, ...).
    options: dict[str, bool | int | float | str | list[str]]
    #: The spec's declared batch axes: they decide how samples are batched.
    batch_axes: dict[str, int | None]
    onnxruntime: str = Field(max_length=64)
    numpy: str = Field(max_length=64)


class TensorRange(_Strict):
    dtype: Literal["float32", "float16"]
    lowest: Bound
    highest: Bound

    @model_validator(mode="after")
    def _ordered(self) -> TensorRange:
        low = self.lowest if isinstance(self.lowest, list) else [self.lowest]
        high = self.highest if isinstance(self.highest, list) else [self.highest]
        if len(low) != len(high) or isinstance(self.lowest, list) != isinstance(self.highest, list):
            raise ValueError("lowest and highest differ in shape")
        if any(a > b for a, b in zip(low, high, strict=True)):
            raise ValueError("a range whose lowest value is above its highest")
        return self


class CalibrationEntry(_Strict):
    format: Literal["modelpress.calibration/1"] = ENTRY_FORMAT
    key: Sha256
    inputs: CalibrationKey
    #: Samples the ranges were measured on (fewer than asked when the dataset is smaller).
    calibrated_samples: int = Field(ge=1)
    ranges: dict[TensorName, TensorRange] = Field(min_length=1)

    @model_validator(mode="after")
    def _key_matches(self) -> CalibrationEntry:
        if self.key != self.inputs.digest():
            raise ValueError("the entry's key is not the digest of its inputs")
        return self


class SmoothingKey(_Key):
    """What SmoothQuant's per-channel activation maxima depend on. Not `alpha`: it only
    changes what is done with the maxima, so every alpha tried shares one measurement."""

    kind: Literal["smoothquant_absmax"] = "smoothquant_absmax"
    version: Literal[1] = KEY_VERSION
    #: sha256 of the model SmoothQuant measures (the pre-processed one), external data included.
    model_sha256: Sha256
    dataset_sha256: Sha256
    #: The first `samples` rows are measured.
    samples: int = Field(ge=1)
    batch_axes: dict[str, int | None]
    onnxruntime: str = Field(max_length=64)
    numpy: str = Field(max_length=64)


class SmoothingEntry(_Strict):
    """SmoothQuant's measured per-channel absmax of each activation it may smooth."""

    format: Literal["modelpress.smoothquant-absmax/1"] = SMOOTHING_FORMAT
    key: Sha256
    inputs: SmoothingKey
    calibrated_samples: int = Field(ge=1)
    absmax: dict[
        TensorName, Annotated[list[Annotated[float, Field(ge=0.0)]], Field(max_length=1_000_000)]
    ]

    @model_validator(mode="after")
    def _key_matches(self) -> SmoothingEntry:
        if self.key != self.inputs.digest():
            raise ValueError("the entry's key is not the digest of its inputs")
        return self


#: Any kept entry, told apart by its `format`.
Entry = CalibrationEntry | SmoothingEntry
_ENTRY: TypeAdapter[Entry] = TypeAdapter(
    Annotated[CalibrationEntry | SmoothingEntry, Field(discriminator="format")]
)


def read_entry(data: bytes) -> Entry:
    """The entry in `data`; ValueError (pydantic's ValidationError is one) when it is not one."""
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"a calibration entry larger than {MAX_ENTRY_BYTES} bytes")
    return _ENTRY.validate_json(data)
