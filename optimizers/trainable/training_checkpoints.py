"""Training checkpoints: the loop's state after every epoch, saved to the job's checkpoint
store and resumed by a retried attempt when the settings and data agree."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optimizers.config import TrainingSettings
from optimizers.results import PassContext

#: Version of the checkpoint layout; a checkpoint of another version is ignored.
CHECKPOINT_FORMAT = 2


@dataclass
class TrainingState:
    best_state: dict[str, torch.Tensor]
    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf
    best_loss: float = math.inf
    initial_score: float = math.nan
    stale: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fingerprint(
    settings: TrainingSettings, num_samples: int, input_names: list[str], has_teacher: bool
) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: the data split and the loss."""
    return {
        "num_samples": num_samples,
        "inputs": list(input_names),
        "teacher": has_teacher,
        "seed": settings.seed,
        "validation_split": settings.validation_split,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        # The cosine schedule spans the epochs: with another count, saved epochs ran at rates
        # the new schedule would not have used.
        "lr_schedule": settings.lr_schedule,
        "epochs": settings.epochs if settings.lr_schedule == "cosine" else None,
        "temperature": settings.temperature,
        "alpha": settings.alpha,
    }


def save_checkpoint(
    ctx: PassContext,
    name: str,
    scratch: Path,
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    agreed: dict[str, Any],
) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / name
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": agreed,
            "student": cpu_state(student),
            "optimizer": optimizer.state_dict(),
            "epoch": state.epoch,
            "best_state": state.best_state,
            "best_epoch": state.best_epoch,
            "best_score": state.best_score,
            "best_loss": state.best_loss,
            "initial_score": state.initial_score,
            "stale": state.stale,
            "stopped_early": state.stopped_early,
            "history": state.history,
        },
        path,
    )
    ctx.checkpoints.save(name, path)


def resume(
    path: Path,
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    agreed: dict[str, Any],
) -> str | None:
    """Load the checkpoint at `path` into `student`, `optimizer` and `state`; returns why it
    was not used instead, leaving them untouched."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: start over rather than fail
        return f"the checkpoint could not be read ({type(exc).__name__}: {exc})"
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        return "the checkpoint has an unknown layout"
    if saved.get("fingerprint") != agreed:
        return "the checkpoint was written with other training settings or data"
    expected = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    for key in ("student", "best_state"):
        found = {k: tuple(v.shape) for k, v in saved[key].items()}
        if found != expected:
            differing = sorted(set(found.items()) ^ set(expected.items()))[:3]
            return (
                "the checkpoint does not match the model being trained (parameters differ: "
                f"{', '.join(name for name, _ in differing)})"
            )
    backup = copy.deepcopy(optimizer.state_dict())
    try:
        optimizer.load_state_dict(saved["optimizer"])
    except (ValueError, KeyError) as exc:
        optimizer.load_state_dict(backup)
        return f"the checkpoint's optimizer state does not match ({exc})"
    student.load_state_dict(saved["student"])
    state.epoch = int(saved["epoch"])
    state.best_state = saved["best_state"]
    state.best_epoch = int(saved["best_epoch"])
    state.best_score = float(saved["best_score"])
    state.best_loss = float(saved["best_loss"])
    state.initial_score = float(saved["initial_score"])
    state.stale = int(saved["stale"])
    state.stopped_early = bool(saved["stopped_early"])
    state.history = [dict(entry) for entry in saved["history"]]
    return None
