"""The prune pass: magnitude (unstructured), structured (channels removed) and 2:4 pruning of a
trainable torch copy of an ONNX model, optionally followed by recovery fine-tuning.

Worker side only. The model is converted with `torch_bridge.onnx_to_torch`, pruned in place,
fine-tuned with `training.fit` when the config asks, and exported back. torch is imported
inside the functions: the registry imports this module for every job, quantization included.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizers.config import PruneConfig
from optimizers.errors import UnsupportedError
from optimizers.model_info import inspect_model
from optimizers.quantization.node_selection import listing
from optimizers.results import ModelInfo, PassContext, PassResult
from optimizers.trainable.module_to_onnx import export_to_onnx
from optimizers.trainable.onnx_to_module import module_names_by_node, onnx_to_torch

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Share of the pass's progress span spent before fine-tuning starts (when it runs).
_PRUNE_SHARE = 0.15
#: Share at which exporting starts.
_EXPORT_SHARE = 0.95
#: Batch size of the example inputs that trace the model.
_EXAMPLE_BATCH = 2
_STAGE = "pruning"


def prune(model_path: Path, config: PruneConfig, ctx: PassContext) -> PassResult:
    """Prune `model_path` as `config` says; the result is ctx.workdir / "pruned.onnx"."""
    if config.method == "2:4" and ctx.device != "cuda":
        raise UnsupportedError(
            "2:4 sparsity only pays off on a GPU with sparse tensor cores; it needs the cuda "
            f"device, and this job runs on '{ctx.device}'"
        )
    from optimizers.trainable import structured

    start, end = ctx.progress_span
    span = end - start
    info = inspect_model(model_path)
    data = None
    if config.finetune is not None:
        # Read before any work, so that a dataset that does not fit fails fast.
        from optimizers.trainable.training import load_training_data

        data = load_training_data(ctx.datasets[config.finetune.dataset_id], info)

    ctx.progress(_STAGE, start, "converting the model to a trainable torch module")
    module = onnx_to_torch(model_path)
    # MatMul layers with constant weights become Linear layers, so they can be pruned and
    # trained; their bias Add nodes become names of the same layer.
    aliases = structured.linearize(module)
    names_by_node = {**module_names_by_node(model_path), **aliases}
    node_by_name = {sub: node for node, sub in names_by_node.items() if node not in aliases}
    excluded = structured.layers_for_nodes(module, names_by_node, config.exclude_layers)
    # The unpruned model teaches the pruned one: its soft outputs carry more than labels do,
    # and without labels they are all there is to learn from.
    teacher = (
        copy.deepcopy(module).eval()
        if config.finetune is not None
        and data is not None
        and (data.labels is None or config.finetune.alpha > 0.0)
        else None
    )
    module.eval()

    ctx.progress(_STAGE, start + 0.05 * span, f"pruning ({config.method})")
    masks: _Masks | None = None
    notes: list[str] = []
    details: dict[str, Any] = {"method": config.method}
    if config.method == "structured":
        notes, details = _structured(module, info, config, excluded, node_by_name)
    else:
        targets, kept = _targets(module, excluded, node_by_name)
        if config.method == "magnitude":
            masks = _magnitude_masks(targets, config)
        else:
            masks, skipped = _two_four_masks(targets)
            kept.update({node_by_name.get(name, name): why for name, why in skipped.items()})
        masks.apply()
        details.update(_sparsity_details(module, masks, kept, node_by_name))

    if config.finetune is not None:
        assert data is not None
        from optimizers.trainable.training import fit

        ctx.progress(_STAGE, start + _PRUNE_SHARE * span, "fine-tuning the pruned model")
        report = fit(
            module,
            data,
            config.finetune,
            ctx,
            input_names=[tensor.name for tensor in info.inputs],
            teacher=teacher,
            after_step=masks.after_step if masks is not None else None,
            stage="fine-tuning",
            progress_span=(start + _PRUNE_SHARE * span, start + _EXPORT_SHARE * span),
            checkpoint_name="finetune.pt",
        )
        details["finetune"] = report.as_details()
        notes.append(_finetune_note(report.metric, report.initial_score, report.best_score))
        if masks is not None:
            masks.apply()  # fit restores its best weights; they were masked, this makes sure

    ctx.progress(_STAGE, start + _EXPORT_SHARE * span, "exporting the pruned model to ONNX")
    output = ctx.workdir / "pruned.onnx"
    export_to_onnx(module, output, like=info)
    if config.method == "magnitude":
        details["size_bytes"] = {
            "input": model_path.stat().st_size,
            "input_compressed": compressed_size(model_path),
            "output": output.stat().st_size,
            "output_compressed": compressed_size(output),
        }
        notes.insert(0, _magnitude_note(details))
    elif config.method == "2:4":
        notes.insert(0, _two_four_note(details))
    ctx.progress(_STAGE, end, "pruning finished")
    return PassResult(model_path=output, notes=notes, details=details)


# --- structured ----------------------------------------------------------------------------


def _structured(
    module: nn.Module,
    info: ModelInfo,
    config: PruneConfig,
    excluded: list[nn.Module],
    node_by_name: dict[str, str],
) -> tuple[list[str], dict[str, Any]]:
    from optimizers.trainable import structured

    before = structured.layer_widths(module)
    counts = structured.shrink(
        module,
        example_inputs(info),
        ratio=config.ratio,
        importance=config.importance,
        keep=excluded,
    )
    after = structured.layer_widths(module)
    left_whole = [node_by_name.get(name, name) for name in counts.pop("left_whole")]
    heads = {
        node_by_name.get(name, name): change
        for name, change in counts.pop("attention_heads").items()
    }
    changed = {
        node_by_name.get(name, name): {"before": width, "after": after[name]}
        for name, width in before.items()
        if after.get(name) != width
    }
    details: dict[str, Any] = {
        "method": "structured",
        "ratio": config.ratio,
        "importance": config.importance,
        **counts,
        "layers": changed,
        "kept_layers": sorted(
            node_by_name.get(name, name) for name, width in before.items() if after[name] == width
        ),
    }
    notes = [
        f"Structured pruning removed channels from {len(changed)} layer(s): parameters "
        f"{counts['parameters_before']:,} -> {counts['parameters_after']:,}, MACs "
        f"{counts['macs_before']:,} -> {counts['macs_after']:,}; the output layer(s) and "
        "excluded layers keep their widths."
    ]
    if heads:
        details["attention_heads"] = heads
        changes = [f"{name} {c['before']} -> {c['after']}" for name, c in heads.items()]
        notes.append(
            f"{len(heads)} attention block(s) lost whole heads, their query, key, value and "
            f"output projections shrinking with them: {listing(changes)}"
        )
    if left_whole:
        details["left_whole"] = left_whole
        notes.append(
            f"{len(left_whole)} layer(s) kept their width because removing their channels "
            "breaks the model (their width is fixed by a constant Reshape shape, such as a "
            "flatten before a linear layer or attention split into heads, or shared with such "
            f"a layer): {listing(left_whole)}"
        )
    return notes, details


def example_inputs(info: ModelInfo, batch: int = _EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like the model's, batch `batch`, that trace it for structured pruning.
    Float inputs are seeded random values, others zeros."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors: list[torch.Tensor] = []
    for tensor in info.inputs:
        shape: list[int] = []
        for axis, dim in enumerate(tensor.shape):
            if axis == 0:
                shape.append(batch)
            elif isinstance(dim, int):
                shape.append(dim)
            else:
                raise UnsupportedError(
                    f"pruning needs fixed input sizes except the batch axis; axis {axis} of "
                    f"input '{tensor.name}' is '{dim}'"
                )
        dtype = getattr(torch, tensor.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        else:
            tensors.append(torch.zeros(shape, dtype=dtype))
    return tuple(tensors)


# --- magnitude and 2:4 ---------------------------------------------------------------------


class _Masks:
    """Per-layer 0/1 weight masks, applied after pruning and after every training step so that
    pruned weights stay zero."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def add(self, name: str, layer: nn.Module, mask: torch.Tensor) -> None:
        self.layers[name] = (layer, mask)

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for name, (layer, mask) in self.layers.items():
                weight = _weight(layer)
                if mask.device != weight.device:
                    mask = mask.to(weight.device)
                    self.layers[name] = (layer, mask)
                weight.mul_(mask)

    def after_step(self, module: nn.Module) -> None:
        self.apply()

    def __iter__(self) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
        for name, (layer, mask) in self.layers.items():
            yield name, layer, mask


def _weight(layer: nn.Module) -> torch.Tensor:
    import torch

    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _targets(
    module: nn.Module, excluded: list[nn.Module], node_by_name: dict[str, str]
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """(layers to sparsify by submodule name, {ONNX node name: why a layer is left alone})."""
    from optimizers.trainable import structured

    outputs = structured.output_layers(module)
    targets: dict[str, nn.Module] = {}
    kept: dict[str, str] = {}
    for name, layer in structured.prunable_layers(module).items():
        if any(layer is other for other in outputs):
            kept[node_by_name.get(name, name)] = "output layer"
        elif any(layer is other for other in excluded):
            kept[node_by_name.get(name, name)] = "in exclude_layers"
        else:
            targets[name] = layer
    if not targets:
        raise UnsupportedError(
            "the model has no Linear or Conv layer to prune besides its output layer(s) and "
            f"excluded layers ({', '.join(sorted(kept)) or 'none'})"
        )
    return targets, kept


def _magnitude_masks(targets: dict[str, nn.Module], config: PruneConfig) -> _Masks:
    """Masks zeroing the `sparsity` share of smallest |w|, ranked across all target layers
    (global) or within each. Stable sorting keeps ties deterministic."""
    import torch

    masks = _Masks()
    magnitudes = {name: _weight(layer).detach().abs().flatten() for name, layer in targets.items()}
    if config.granularity == "global":
        flat = torch.cat(list(magnitudes.values()))
        keep = _keep_largest(flat, round(config.sparsity * flat.numel()))
        offset = 0
        for name, layer in targets.items():
            size = magnitudes[name].numel()
            mask = keep[offset : offset + size].reshape(_weight(layer).shape)
            masks.add(name, layer, mask)
            offset += size
    else:
        for name, layer in targets.items():
            values = magnitudes[name]
            keep = _keep_largest(values, round(config.sparsity * values.numel()))
            masks.add(name, layer, keep.reshape(_weight(layer).shape))
    return masks


def _keep_largest(values: torch.Tensor, zeroed: int) -> torch.Tensor:
    import torch

    mask = torch.ones_like(values)
    order = torch.argsort(values, stable=True)
    mask[order[:zeroed]] = 0.0
    return mask


def _two_four_masks(targets: dict[str, nn.Module]) -> tuple[_Masks, dict[str, str]]:
    """2 of every 4 consecutive weights along the input (reduction) dimension kept, the 2
    largest |w|. Conv weights are grouped along input channels at each kernel position, the
    layout sparse tensor cores use (NHWC implicit GEMM), so they need input channels per group
    in multiples of 4. Returns the masks and {layer: why it was skipped}."""
    import torch
    from torch import nn

    masks = _Masks()
    skipped: dict[str, str] = {}
    for name, layer in targets.items():
        weight = _weight(layer).detach()
        if isinstance(layer, nn.Linear):
            rows = weight
            inputs = weight.shape[1]
        elif isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
            # [out, in, *kernel] -> [out, *kernel, in]: input channels innermost
            rows = weight.movedim(1, -1)
            inputs = weight.shape[1]
        else:
            skipped[name] = f"{type(layer).__name__} is not supported by 2:4 kernels"
            continue
        if inputs % 4:
            skipped[name] = f"{inputs} input channels/features is not a multiple of 4"
            continue
        groups = rows.abs().reshape(-1, 4)
        order = torch.argsort(groups, dim=1, descending=True, stable=True)
        group_mask = torch.zeros_like(groups).scatter_(1, order[:, :2], 1.0)
        mask = group_mask.reshape(rows.shape)
        if rows is not weight:
            mask = mask.movedim(-1, 1)
        masks.add(name, layer, mask.contiguous())
    if not masks.layers:
        raise UnsupportedError(
            "no layer can take the 2:4 pattern: "
            + "; ".join(f"'{name}': {why}" for name, why in skipped.items())
        )
    return masks, skipped


def _sparsity_details(
    module: nn.Module, masks: _Masks, kept: dict[str, str], node_by_name: dict[str, str]
) -> dict[str, Any]:
    from optimizers.trainable import structured

    layers: dict[str, Any] = {}
    zeros = total = 0
    for name, layer, _mask in masks:
        weight = _weight(layer).detach()
        layer_zeros, count = int((weight == 0).sum()), weight.numel()
        layers[node_by_name.get(name, name)] = {
            "weights": count,
            "sparsity": layer_zeros / count,
        }
        zeros, total = zeros + layer_zeros, total + count
    all_zeros = all_total = 0
    for layer in structured.prunable_layers(module).values():
        weight = _weight(layer).detach()
        all_zeros, all_total = all_zeros + int((weight == 0).sum()), all_total + weight.numel()
    return {
        "sparsity": zeros / total,  # over the pruned layers
        "overall_sparsity": all_zeros / all_total,  # over every Linear/Conv weight
        "layers": layers,
        "kept_layers": kept,
    }


def compressed_size(path: Path, chunk: int = 1 << 20) -> int:
    """Bytes of the file at `path` after DEFLATE (zlib level 6), read in chunks."""
    compressor = zlib.compressobj(6)
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            size += len(compressor.compress(block))
    return size + len(compressor.flush())


# --- notes ---------------------------------------------------------------------------------


def _magnitude_note(details: dict[str, Any]) -> str:
    sizes = details["size_bytes"]
    return (
        f"Magnitude pruning set {details['sparsity']:.1%} of the weights of "
        f"{len(details['layers'])} layer(s) to zero ({details['overall_sparsity']:.1%} of all "
        "Linear/Conv weights). The model keeps its shape and dense runtimes such as "
        "onnxruntime compute the zeros like any weight, so this does not make it faster; it "
        f"makes it compress better: {sizes['input_compressed']:,} -> "
        f"{sizes['output_compressed']:,} bytes compressed ({sizes['output']:,} bytes raw)."
    )


def _two_four_note(details: dict[str, Any]) -> str:
    skipped = {k: v for k, v in details["kept_layers"].items() if v != "output layer"}
    skipped_text = (
        f" Left dense: {', '.join(f'{name} ({why})' for name, why in skipped.items())}."
        if skipped
        else ""
    )
    return (
        f"2:4 sparsity applied to {len(details['layers'])} layer(s).{skipped_text} onnxruntime "
        "runs the model dense, so it is no faster there; a speedup needs a runtime that uses "
        "sparse tensor cores (e.g. TensorRT with sparse weights enabled) on an Ampere or newer "
        "GPU, and is not certain there: on an H200 torch's `to_sparse_semi_structured` "
        "(cuSPARSELt) ran a pruned 4096x1024 layer 3x to 20x slower than dense float16 "
        "(docs/performance.md), so time the model on its target before relying on it."
    )


def _finetune_note(metric: str, before: float, after: float) -> str:
    if math.isnan(before):  # resumed from a checkpoint: the first score is in the earlier run
        return f"Fine-tuning after pruning: validation {metric} {after:.4f} after fine-tuning."
    return (
        f"Fine-tuning after pruning: validation {metric} {before:.4f} right after pruning, "
        f"{after:.4f} after fine-tuning."
    )
