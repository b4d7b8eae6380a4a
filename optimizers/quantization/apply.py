"""The quantize pass: one config (`QuantizeConfig`), the method's module applies it."""

from __future__ import annotations

from pathlib import Path

from optimizers.config import QuantizeConfig
from optimizers.results import PassContext, PassResult


def quantize(model_path: Path, config: QuantizeConfig, ctx: PassContext) -> PassResult:
    """Quantize `model_path` as `config` says; the result lands in ctx.workdir. Each method's
    module is imported here, so that a problem in one fails only that method's jobs."""
    if config.scope == "mixed":
        from optimizers.quantization.mixed import quantize_mixed

        return quantize_mixed(model_path, config, ctx)
    if config.method == "fp16":
        from optimizers.quantization.fp16 import quantize_fp16

        return quantize_fp16(model_path, config, ctx)
    if config.method == "int4_weight_only":
        from optimizers.quantization.int4_weight_only import quantize_int4

        return quantize_int4(model_path, config, ctx)
    from optimizers.quantization.integer import quantize_int8, quantize_int8_weight_only

    if config.method == "int8_weight_only":
        return quantize_int8_weight_only(model_path, config, ctx)
    return quantize_int8(model_path, config, ctx)
