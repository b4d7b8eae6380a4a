"""The one registry of passes: each pass config class names, by module path, the function
that applies it (`PassConfig.apply`); the config classes register themselves by `kind` when
they are defined. The job spec's pass union is read from here, and a pass's module is imported
the first time a pass of its kind runs, so importing the registry (the API does) stays free of
torch and onnxruntime."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from optimizers.config import PassConfig
from optimizers.results import PassContext, PassResult, ReportContext

PassFn = Callable[[Path, PassConfig, PassContext], PassResult]
#: report(pass input, the pass's result, its config, context) -> entries for the pass's record
#: in the job result; it adds its files to the result's artifacts.
ReportFn = Callable[[Path, PassResult, PassConfig, ReportContext], dict[str, Any]]


def pass_config_types() -> list[type[PassConfig]]:
    """Every registered pass config class (one per kind, or one per method of a kind)."""
    return [
        config_type
        for by_method in PassConfig.registry.values()
        for config_type in by_method.values()
    ]


def implementation(config_type: type[PassConfig]) -> PassFn:
    """The function that applies `config_type`, its module imported on first use."""
    function = _load(config_type.apply)
    if function is None:
        raise NotImplementedError(f"no implementation registered for {config_type.__name__}")
    return cast(PassFn, function)


def report_step(config_type: type[PassConfig]) -> ReportFn | None:
    """The pass's report step (e.g. quantization's sensitivity report), if it has one."""
    return cast(ReportFn | None, _load(config_type.report))


def _load(target: str) -> Any:
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        return None
    return getattr(importlib.import_module(module_name), function_name)


def registered_passes() -> dict[type[PassConfig], PassFn]:
    """Every registered pass config class with the function that applies it (imports them)."""
    return {config_type: implementation(config_type) for config_type in pass_config_types()}


def run_pass(model_path: Path, config: PassConfig, ctx: PassContext) -> PassResult:
    """Apply one pass to a model file and return the new model file and its notes."""
    return implementation(type(config))(model_path, config, ctx)
