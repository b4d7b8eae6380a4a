"""The one registry of passes: each pass config class names, by module path, the function
that applies it (`PassConfig.apply`); the config classes register themselves by `kind` when
they are defined. The job spec's pass union is read from here, and a pass's module is imported
the first time a pass of its kind runs, so importing the registry (the API does) stays free of
torch and onnxruntime."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

from optimizers.config import PassConfig
from optimizers.results import PassContext, PassResult

PassFn = Callable[[Path, PassConfig, PassContext], PassResult]


def pass_config_types() -> list[type[PassConfig]]:
    """Every registered pass config class (one per kind, or one per method of a kind)."""
    return [
        config_type
        for by_method in PassConfig.registry.values()
        for config_type in by_method.values()
    ]


def implementation(config_type: type[PassConfig]) -> PassFn:
    """The function that applies `config_type`, its module imported on first use."""
    module_name, _, function_name = config_type.apply.partition(":")
    if not module_name or not function_name:
        raise NotImplementedError(f"no implementation registered for {config_type.__name__}")
    return cast(PassFn, getattr(importlib.import_module(module_name), function_name))


def registered_passes() -> dict[type[PassConfig], PassFn]:
    """Every registered pass config class with the function that applies it (imports them)."""
    return {config_type: implementation(config_type) for config_type in pass_config_types()}


def run_pass(model_path: Path, config: PassConfig, ctx: PassContext) -> PassResult:
    """Apply one pass to a model file and return the new model file and its notes."""
    return implementation(type(config))(model_path, config, ctx)
