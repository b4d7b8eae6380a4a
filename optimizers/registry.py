"""One registry of pass implementations, keyed by config class, and one entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from optimizers.config import PassConfig
from optimizers.results import PassContext, PassResult

C = TypeVar("C", bound=PassConfig)
PassFn = Callable[[Path, C, PassContext], PassResult]
AnyPassFn = Callable[[Path, PassConfig, PassContext], PassResult]

_IMPLEMENTATIONS: dict[type[PassConfig], AnyPassFn] = {}


def register_pass(config_type: type[C]) -> Callable[[PassFn[C]], PassFn[C]]:
    def decorate(fn: PassFn[C]) -> PassFn[C]:
        _IMPLEMENTATIONS[config_type] = fn  # type: ignore[assignment]
        return fn

    return decorate


def registered_passes() -> dict[type[PassConfig], AnyPassFn]:
    _load_builtin_passes()
    return dict(_IMPLEMENTATIONS)


def run_pass(model_path: Path, config: PassConfig, ctx: PassContext) -> PassResult:
    """Apply one pass to a model file and return the new model file and its notes."""
    _load_builtin_passes()
    try:
        fn = _IMPLEMENTATIONS[type(config)]
    except KeyError:
        raise NotImplementedError(
            f"no implementation registered for {type(config).__name__}"
        ) from None
    return fn(model_path, config, ctx)


def _load_builtin_passes() -> None:
    # Imported here, not at module level, so importing the registry stays cheap.
    import optimizers.quantization.integer
    import optimizers.trainable.distill
    import optimizers.trainable.prune  # noqa: F401
