"""Static calibrations kept for a project's model between its jobs (see
optimizers.quantization.calibration_cache): before a job that calibrates runs, the entries
kept for its model and datasets are copied into its scratch folder; after it ended, the
entries it added are checked and stored. The cache only saves time: nothing here ever fails
a job, and an entry that is not a valid one is never stored."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from core.storage import Storage, StorageError
from core.storage_keys import calibration_prefix
from optimizers.config import PipelineSpec, StaticQuantizeConfig
from optimizers.quantization.calibration_entry import ENTRY_NAME, MAX_ENTRY_BYTES, read_entry
from worker.protocol import ProtocolError
from worker.scratch import ScratchFolder

log = logging.getLogger(__name__)

#: The folder in the scratch folder the job process reads and adds entries to.
SCRATCH_FOLDER = "calibration"
#: Entries copied in per dataset, newest first: a job uses one or a few, a model may have
#: many (every calibration method, sample count and pass order tried on it).
MAX_ENTRIES_IN = 32
#: Bytes copied in for one job, all datasets together (an entry is ~100 bytes a tensor).
MAX_BYTES_IN = 64 * 1024 * 1024
#: Entries one job may add: each static pass adds one, a mixed-precision pass a few.
MAX_ENTRIES_OUT = 16


def calibrates(spec: PipelineSpec) -> bool:
    """Whether a pass measures activations on data: static int8, or SmoothQuant (which a
    dynamic pass may use too)."""
    return any(
        isinstance(config, StaticQuantizeConfig) or getattr(config, "smooth_quant", None)
        for config in spec.passes
    )


@dataclass
class KeptCalibrations:
    """One job's view of its model's kept calibrations: the datasets are the job's own, by
    the sha256 of the bytes fetched for it."""

    storage: Storage
    scratch: ScratchFolder
    project_id: str
    model_id: str
    #: Dataset id -> sha256 of the dataset file the job got.
    dataset_sha256: dict[str, str]
    #: A fresh path outside the scratch folder for each file passed through.
    staging_path: Callable[[], Path]
    #: Names copied in, with the sha256 of their content.
    copied: dict[str, str] = field(default_factory=dict)
    copied_bytes: int = 0

    def stage(self) -> dict[str, Any]:
        """Copies the entries in; returns what the job's request says about them."""
        try:
            for sha256 in sorted(set(self.dataset_sha256.values())):
                self._stage_dataset(sha256)
        except (StorageError, OSError, ProtocolError) as exc:
            log.warning("kept calibrations not copied to the job (it calibrates): %s", exc)
        return {"calibration_cache": SCRATCH_FOLDER, "dataset_sha256": self.dataset_sha256}

    def _stage_dataset(self, dataset_sha256: str) -> None:
        prefix = calibration_prefix(self.project_id, self.model_id, dataset_sha256)
        listed = sorted(self.storage.list_objects(prefix), key=lambda o: o.stored_at, reverse=True)
        for stored in listed[:MAX_ENTRIES_IN]:
            name = PurePosixPath(stored.key).name
            if not ENTRY_NAME.match(name) or name in self.copied:
                continue
            local = self.storage.fetch_to(stored.key, self.staging_path())
            try:
                data = local.read_bytes()
                if len(data) > MAX_ENTRY_BYTES or self.copied_bytes + len(data) > MAX_BYTES_IN:
                    continue
                self.scratch.write_bytes(f"{SCRATCH_FOLDER}/{name}", data)
                self.copied[name] = hashlib.sha256(data).hexdigest()
                self.copied_bytes += len(data)
            finally:
                local.unlink(missing_ok=True)

    def keep(self) -> list[str]:
        """Stores the valid entries the job added or replaced; returns their names."""
        kept: list[str] = []
        try:
            names = [n for n in self.scratch.list_files(SCRATCH_FOLDER) if ENTRY_NAME.match(n)]
            for name in names:
                if len(kept) >= MAX_ENTRIES_OUT:
                    break
                if self._keep_one(name):
                    kept.append(name)
        except (StorageError, OSError) as exc:
            log.warning("calibrations the job made were not kept: %s", exc)
        return kept

    def _keep_one(self, name: str) -> bool:
        local = self.staging_path()
        try:
            sha256 = self.scratch.copy_out(
                f"{SCRATCH_FOLDER}/{name}", local, max_bytes=MAX_ENTRY_BYTES
            )
            if self.copied.get(name) == sha256:
                return False  # what was copied in, unchanged
            entry = read_entry(local.read_bytes())
            if f"{entry.key}.json" != name:
                raise ValueError("the entry's key is not its file name")
            if entry.inputs.dataset_sha256 not in set(self.dataset_sha256.values()):
                raise ValueError("the entry is for a dataset the job did not get")
        except (ProtocolError, ValueError) as exc:
            log.warning("calibration entry %s from the job refused: %s", name[:80], exc)
            local.unlink(missing_ok=True)
            return False
        prefix = calibration_prefix(self.project_id, self.model_id, entry.inputs.dataset_sha256)
        self.storage.put_file(f"{prefix}/{name}", local)
        return True
