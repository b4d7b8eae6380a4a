"""Structured pruning of trainable torch modules: whole channels and hidden units removed with
torch-pruning, so the model itself gets narrower. Shared by the prune pass and by the distill
pass, which derives a narrower student from its teacher.

Worker side only (imports torch). Modules are usually `torch.fx.GraphModule`s made by
`optimizers.trainable.onnx_to_module.onnx_to_torch`, whose submodules are named after the
ONNX nodes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import fx, nn

from optimizers.errors import OptimizerError, UnsupportedError
from optimizers.quantization.node_selection import listing
from optimizers.trainable.attention_heads import flat_outputs, prune_heads

#: Layers whose output channels / hidden units structured pruning removes.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
_EXAMPLES = 10


def shrink(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    ratio: float,
    importance: str = "l2",
    keep: list[nn.Module],
) -> dict[str, Any]:
    """Remove `ratio` of the output channels / hidden units of every Linear and Conv layer of
    `module`, in place, ranking them by the `importance` norm ("l1" or "l2") of their weights;
    layers that depend on each other (e.g. a conv and the next layer's inputs) shrink together.
    The layers in `keep` and the output layers (see `output_layers`) keep their widths, so the
    outputs keep their shapes. Call `linearize` first when `module` came from ONNX MatMul
    layers, so they are Linear layers this can prune.

    Attention blocks lose round(`ratio` x heads) whole heads (see `attention_heads`).
    Layers whose channels cannot be removed without breaking the model (a width fixed by a
    constant Reshape shape: a flatten, attention whose heads could not be pruned; or shared
    with such a layer) keep their width, and the others are pruned.

    Deterministic. Returns parameters and MACs before and after, `attention_heads`: {output
    projection name: {"before": heads, "after": heads}}, and `left_whole`: the names of the
    layers kept at their width for that reason. Raises UnsupportedError,
    naming the layer at fault where it can, when the pruned module no longer runs or its
    outputs change shape; `module` is then left half pruned and must be discarded.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    norms = {"l1": 1, "l2": 2}
    if importance not in norms:
        raise ValueError(f"importance must be 'l1' or 'l2', got {importance!r}")
    prunable = prunable_layers(module)
    if not prunable:
        raise UnsupportedError(
            "the model has no Linear or Conv layer, so there are no channels to remove"
        )
    outputs = output_layers(module)
    ignored = _unique([*outputs, *keep])
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            shapes_before = _output_shapes(module(*example_inputs))
        macs_before, params_before = tp.utils.count_ops_and_params(module, example_inputs)
        widths_before = layer_widths(module)
        # Attention heads first: torch-pruning cannot follow a width into the Reshape that
        # splits it into heads, so whole heads are removed here and those layers left alone.
        heads = prune_heads(
            module, example_inputs, ratio=ratio, norm=norms[importance], keep=ignored
        )
        attention = [module.get_submodule(name) for block, _ in heads for name in block.layers]
        ignored = _unique([*ignored, *attention])
        scorer = tp.importance.MagnitudeImportance(p=norms[importance])
        left_whole: list[nn.Module] = []
        if not _prunes_cleanly(module, example_inputs, scorer, ratio, ignored, shapes_before):
            # Some layers cannot lose channels without breaking the model (attention split
            # into heads, a constant Reshape): those keep their width, the others are pruned.
            left_whole = _unsafe_roots(module, example_inputs, ignored, shapes_before)
            ignored = _unique([*ignored, *left_whole])
        try:
            pruner = tp.pruner.MetaPruner(
                module,
                example_inputs,
                importance=scorer,
                pruning_ratio=ratio,
                ignored_layers=ignored,
            )
            pruner.step()
        except Exception as exc:
            raise UnsupportedError(
                "structured pruning could not trace the model's channel dependencies: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _check_runs(module, example_inputs, shapes_before)
        macs_after, params_after = tp.utils.count_ops_and_params(module, example_inputs)
    finally:
        module.train(was_training)
    if layer_widths(module) == widths_before:
        kept = [name for name, layer in prunable.items() if any(layer is k for k in ignored)]
        raise UnsupportedError(
            "structured pruning found no channel it could remove: every prunable layer is an "
            f"output layer or excluded ({listing(kept, _EXAMPLES)}), or too narrow at ratio {ratio}"
        )
    return {
        "parameters_before": int(params_before),
        "parameters_after": int(params_after),
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "left_whole": [
            name for name, layer in prunable.items() if any(layer is k for k in left_whole)
        ],
        "attention_heads": {
            block.output: {"before": block.heads, "after": kept} for block, kept in heads
        },
    }


def _prunes_cleanly(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    scorer: Any,
    ratio: float,
    ignored: list[nn.Module],
    shapes: list[Any],
) -> bool:
    """Whether pruning a copy of `module` as asked leaves a model that runs and gives outputs
    of the same shapes."""
    names = {id(layer): name for name, layer in module.named_modules()}
    trial = copy.deepcopy(module)
    try:
        pruner = tp.pruner.MetaPruner(
            trial,
            example_inputs,
            importance=scorer,
            pruning_ratio=ratio,
            ignored_layers=[trial.get_submodule(names[id(layer)]) for layer in ignored],
        )
        pruner.step()
        with torch.no_grad():
            return bool(_output_shapes(trial(*example_inputs)) == shapes)
    except Exception:  # any failure means: find the layers at fault
        return False


def _unsafe_roots(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    ignored: list[nn.Module],
    shapes: list[Any],
) -> list[nn.Module]:
    """The layers of `module` whose output channels cannot be halved on their own, the
    channels that depend on them included, with the model still running and giving outputs
    of the same `shapes`. Each is tried on a copy."""
    skipped = {id(layer) for layer in ignored}
    unsafe: list[nn.Module] = []
    for name, layer in prunable_layers(module).items():
        if id(layer) in skipped:
            continue
        trial = copy.deepcopy(module)
        target = trial.get_submodule(name)
        try:
            graph = tp.DependencyGraph().build_dependency(trial, example_inputs=example_inputs)
            width = layer_widths(trial)[name]
            group = graph.get_pruning_group(
                target,
                graph.get_pruner_of_module(target).prune_out_channels,
                idxs=list(range(width // 2)),
            )
            group.prune()
            with torch.no_grad():
                ok = _output_shapes(trial(*example_inputs)) == shapes
        except Exception:  # any failure means: leave this layer alone
            ok = False
        if not ok:
            unsafe.append(layer)
    return unsafe


def prunable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Submodule name -> Linear or Conv layer, in registration order."""
    return {name: sub for name, sub in module.named_modules() if isinstance(sub, PRUNABLE_TYPES)}


def layer_widths(module: nn.Module) -> dict[str, int]:
    """Submodule name -> output channels (Conv) or output features (Linear)."""
    widths: dict[str, int] = {}
    for name, layer in prunable_layers(module).items():
        if isinstance(layer, nn.Linear):
            widths[name] = int(layer.out_features)
        elif isinstance(layer, nn.modules.conv._ConvNd):
            widths[name] = int(layer.out_channels)
    return widths


def output_layers(module: nn.Module) -> list[nn.Module]:
    """The last Linear or Conv layer on each path back from every model output: the layers
    whose widths are the output shapes. Found on the fx graph (traced if `module` is not a
    GraphModule); a module that cannot be traced falls back to its last registered layer."""
    graph_module = _graph_module(module)
    if graph_module is None:
        layers = list(prunable_layers(module).values())
        return layers[-1:]
    found: list[nn.Module] = []
    seen: set[fx.Node] = set()
    pending = [node for node in graph_module.graph.nodes if node.op == "output"]
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            layer = module.get_submodule(str(node.target))
            if isinstance(layer, PRUNABLE_TYPES):
                found.append(layer)
                continue
        pending.extend(node.all_input_nodes)
    return _unique(found)


def layers_for_nodes(
    module: nn.Module,
    names_by_node: Mapping[str, str],
    node_names: Iterable[str],
    *,
    field: str = "exclude_layers",
) -> list[nn.Module]:
    """The submodules of `module` that the ONNX nodes `node_names` became. `names_by_node` maps
    ONNX node names to submodule names (`torch_bridge.module_names_by_node`, updated with the
    aliases `linearize` returns). Unknown names raise OptimizerError naming `field` and listing
    valid names."""
    requested = list(dict.fromkeys(node_names))
    missing = [name for name in requested if name not in names_by_node]
    if missing:
        layers = set(prunable_layers(module))
        valid = [node for node, sub in names_by_node.items() if sub in layers]
        raise OptimizerError(
            f"{field}: the model has no node called {listing(missing, _EXAMPLES)}; its Linear/Conv "
            f"layers are: {listing(valid, _EXAMPLES) if valid else 'none'}"
        )
    found: list[nn.Module] = []
    for name in requested:
        try:
            found.append(module.get_submodule(names_by_node[name]))
        except AttributeError:
            raise OptimizerError(
                f"{field}: layer '{name}' has no counterpart in the trainable model"
            ) from None
    return _unique(found)


def linearize(module: nn.Module) -> dict[str, str]:
    """Turn ONNX `MatMul(x, W)` nodes with a constant 2-D weight (and a following
    `Add(·, b)` with a constant bias) into `nn.Linear` layers, in place, so that they can be
    pruned and trained (onnx2torch keeps such weights as buffers). The Linear takes the
    MatMul's submodule name. Returns {folded Add node name: Linear name} for name lookups.
    A module that is not a GraphModule is left as it is."""
    if not isinstance(module, fx.GraphModule):
        return {}
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.matmul import OnnxMatMul

    graph = module.graph
    targets = [node.target for node in graph.nodes if node.op == "get_attr"]
    aliases: dict[str, str] = {}
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 2 or node.kwargs:
            continue
        if not isinstance(module.get_submodule(str(node.target)), OnnxMatMul):
            continue
        weight = _constant(module, node.args[1], targets, ndim=2)
        if weight is None or not isinstance(node.args[0], fx.Node):
            continue
        in_features, out_features = weight.shape
        bias_node, bias = _bias_of(module, node, out_features, targets, OnnxBinaryMathOperation)
        linear = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.t())
            if bias is not None:
                linear.bias.copy_(bias.reshape(-1))
        module.add_submodule(str(node.target), linear)
        node.args = (node.args[0],)
        if bias_node is not None:
            bias_node.replace_all_uses_with(node)
            graph.erase_node(bias_node)
            aliases[str(bias_node.target)] = str(node.target)
        changed = True
    if changed:
        graph.eliminate_dead_code()
        used = {node.target for node in graph.nodes if node.op == "get_attr"}
        for target in set(targets) - used:  # weights now held by the Linear layers
            owner, _, name = str(target).rpartition(".")
            delattr(module.get_submodule(owner), name)
        module.delete_all_unused_submodules()
        graph.lint()
        module.recompile()
    return aliases


def _constant(module: nn.Module, arg: Any, targets: list[Any], *, ndim: int) -> torch.Tensor | None:
    """The float tensor behind `arg` when it is a get_attr node used once, else None."""
    if not isinstance(arg, fx.Node) or arg.op != "get_attr" or len(arg.users) != 1:
        return None
    if targets.count(arg.target) != 1:  # shared (tied) weights stay as they are
        return None
    value = _attr(module, str(arg.target))
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None
    return value.detach() if value.dim() == ndim else None


def _bias_of(
    module: nn.Module, node: fx.Node, out_features: int, targets: list[Any], add_type: type
) -> tuple[fx.Node | None, torch.Tensor | None]:
    if len(node.users) != 1:
        return None, None
    (user,) = node.users
    if user.op != "call_module" or len(user.args) != 2 or user.kwargs:
        return None, None
    add = module.get_submodule(str(user.target))
    if not isinstance(add, add_type) or getattr(add, "math_op_function", None) is not torch.add:
        return None, None
    if getattr(add, "broadcast", None) == 1:
        return None, None
    other = user.args[1] if user.args[0] is node else user.args[0]
    if not isinstance(other, fx.Node) or other.op != "get_attr":
        return None, None
    value = _attr(module, str(other.target))
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None, None
    if value.numel() != out_features or value.shape[-1] != out_features or value.dim() > 1:
        return None, None
    if len(other.users) != 1 or targets.count(other.target) != 1:
        return None, None
    return user, value.detach()


def _attr(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _graph_module(module: nn.Module) -> fx.GraphModule | None:
    if isinstance(module, fx.GraphModule):
        return module
    try:
        return fx.symbolic_trace(module)
    except Exception:  # untraceable Python control flow: the caller falls back
        return None


def _check_runs(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...], shapes_before: list[Any]
) -> None:
    try:
        with torch.no_grad():
            shapes_after = _output_shapes(module(*example_inputs))
    except Exception as exc:
        where = _failing_node(module, example_inputs)
        raise UnsupportedError(
            f"after removing channels the model no longer runs{where}: "
            f"{type(exc).__name__}: {exc}. Layers whose channel count is fixed elsewhere "
            "(e.g. by a constant Reshape shape) cannot be pruned; exclude the layers feeding "
            "them with exclude_layers"
        ) from exc
    if shapes_after != shapes_before:
        raise UnsupportedError(
            f"structured pruning changed the output shapes from {shapes_before} to "
            f"{shapes_after}; exclude the layers that produce the outputs with exclude_layers"
        )


def _failing_node(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> str:
    """' at node NAME (op)' for the first fx node that fails, or '' if none is found."""
    if not isinstance(module, fx.GraphModule):
        return ""

    class Tracker(fx.Interpreter):
        current: fx.Node | None = None

        def run_node(self, n: fx.Node) -> Any:
            self.current = n
            return super().run_node(n)

    tracker = Tracker(module)
    try:
        with torch.no_grad():
            tracker.run(*example_inputs)
    except Exception:
        node = tracker.current
        if node is not None and node.op == "call_module":
            kind = type(module.get_submodule(str(node.target))).__name__
            return f" at layer '{node.target}' ({kind})"
        if node is not None:
            return f" at node '{node.name}'"
    return ""


def _output_shapes(outputs: Any) -> list[Any]:
    return [tuple(tensor.shape) for tensor in flat_outputs(outputs)]


def _unique(layers: Iterable[nn.Module]) -> list[nn.Module]:
    seen: set[int] = set()
    unique: list[nn.Module] = []
    for layer in layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            unique.append(layer)
    return unique
