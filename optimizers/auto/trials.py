"""What an auto pass is to the pipeline: nothing it can run itself."""

from __future__ import annotations

from pathlib import Path

from optimizers.config import AutoConfig
from optimizers.errors import UnsupportedError
from optimizers.results import PassContext, PassResult


def not_in_a_pipeline(model_path: Path, config: AutoConfig, ctx: PassContext) -> PassResult:
    raise UnsupportedError(
        "an `auto` pass is a search that the service runs as trials (child jobs); it cannot "
        "run inside a pipeline"
    )
