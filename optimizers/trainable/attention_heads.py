"""Attention-head pruning of trainable torch modules converted from ONNX: whole heads removed
from the query, key and value projections and from the output projection, and the Reshape
shapes that split the projections into heads changed to match.

Worker side only (imports torch). Works on the `torch.fx.GraphModule`s made by
`optimizers.trainable.onnx_to_module.onnx_to_torch` after `structured.linearize`, where an
attention block is found from its Softmax: the MatMul before it (queries x keys), the MatMul
after it (weights x values), the Linear layers those three operands come from through movement ops
(Reshape, Transpose, Gather, ...) and the Linear layer the result goes to. A fused
query/key/value projection (one Linear of width 3 x model width, as torch's
MultiheadAttention exports) and separate projections are both handled.

Every change is checked before it is kept: the pruned block must give the same outputs as the
original model with the removed heads' contributions zeroed. A block that fails the check, or
whose layout is not recognised, keeps all its heads.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import fx, nn

#: onnx2torch module classes that only move, select or rescale values: the path from a
#: projection to the attention MatMuls passes through these and nothing else.
_MOVEMENT_PREFIXES = (
    "OnnxReshape",
    "OnnxTranspose",
    "OnnxSqueeze",
    "OnnxUnsqueeze",
    "OnnxGather",
    "OnnxSlice",
    "OnnxSplit",
    "OnnxCast",
    "OnnxFlatten",
    "Identity",
    "Dropout",
)
#: Batch size of the inputs the layout is worked out on: a prime, so that batch x heads
#: is unlikely to equal another dimension of the model.
_PROBE_BATCH = 7
_MAX_WALK = 24


@dataclass
class AttentionBlock:
    """One attention block of a GraphModule: submodule names and its head layout."""

    projections: list[str]  # query, key, value Linear layers; one name when fused
    output: str  # the output projection
    heads: int
    head_dim: int
    width: int  # heads x head_dim: the output projection's input features
    #: OnnxReshape node name -> (input shape, output shape) in the unpruned model on the
    #: probe inputs: the Reshapes to adapt.
    reshapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return [*self.projections, self.output]


def find_blocks(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> list[AttentionBlock]:
    """The attention blocks of `module` whose head layout is recognised, in graph order,
    found by running it on `example_inputs`."""
    if not isinstance(module, fx.GraphModule):
        return []
    values = _record_values(module, example_inputs)
    if values is None:
        return []
    blocks: list[AttentionBlock] = []
    claimed: set[str] = set()
    for node in module.graph.nodes:
        if _module_name(module, node) not in ("Softmax", "OnnxSoftmaxV1V11"):
            continue
        block = _block_of(module, node, values)
        if block is None or claimed & set(block.layers):
            continue
        claimed.update(block.layers)
        blocks.append(block)
    return blocks


def prune_heads(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    ratio: float,
    norm: int,
    keep: Iterable[nn.Module],
) -> list[tuple[AttentionBlock, int]]:
    """Remove round(`ratio` x heads) heads from every recognised attention block of `module`,
    in place, ranking heads by the `norm`-norm of their weights in the four projections.
    Blocks with a layer in `keep`, and blocks whose pruned form fails the check, are left as
    they are. Returns the blocks that were pruned, each with the number of heads it kept."""
    kept_ids = {id(layer) for layer in keep}
    pruned: list[tuple[AttentionBlock, int]] = []
    probe = _probe_inputs(module, example_inputs)
    for block in find_blocks(module, probe):
        if any(id(module.get_submodule(name)) in kept_ids for name in block.layers):
            continue
        removed = min(block.heads - 1, round(block.heads * ratio))
        if removed <= 0:
            continue
        survivors = _strongest_heads(module, block, block.heads - removed, norm)
        for later_first in (True, False):
            trial = copy.deepcopy(module)
            try:
                _apply(trial, block, survivors, probe, later_first=later_first)
                same = _matches_masked(module, trial, block, survivors, (probe, example_inputs))
            except Exception:  # any failure means: not this way
                same = False
            if same:  # deterministic: the same as on the trial
                _apply(module, block, survivors, probe, later_first=later_first)
                pruned.append((block, len(survivors)))
                break
    return pruned


# --- finding blocks ------------------------------------------------------------------------


def _block_of(
    module: fx.GraphModule, softmax: fx.Node, values: dict[str, Any]
) -> AttentionBlock | None:
    scores = _walk_back(module, softmax, values, _is_score_op, _is_matmul)
    context = _context_matmul(module, softmax)
    if scores is None or context is None or len(scores.args) != 2 or len(context.args) != 2:
        return None
    if not all(isinstance(arg, fx.Node) for arg in (*scores.args, *context.args)):
        return None
    query_node, key_node = scores.args
    value_node = context.args[1]
    found = [
        _walk_back(module, start, values, _is_projection_path_op, _is_linear)
        for start in (query_node, key_node, value_node)
    ]
    output_node = _walk_forward(module, context, _is_linear)
    if any(node is None for node in found) or output_node is None:
        return None
    projections = list(dict.fromkeys(str(node.target) for node in found if node is not None))
    output = str(output_node.target)
    output_layer = module.get_submodule(output)
    query_value = values.get(query_node.name)
    if not isinstance(output_layer, nn.Linear) or not isinstance(query_value, torch.Tensor):
        return None
    head_dim = int(query_value.shape[-1])
    width = int(output_layer.in_features)
    if head_dim <= 0 or width % head_dim or width // head_dim < 2:
        return None
    widths = [int(module.get_submodule(name).out_features) for name in projections]
    if widths != ([3 * width] if len(projections) == 1 else [width] * 3):
        return None
    reshapes = {
        name: (tuple(values[data].shape), tuple(values[name].shape))
        for name, data in _reshapes_between(
            module, [n for n in found if n is not None], output_node
        ).items()
    }
    return AttentionBlock(
        projections=projections,
        output=output,
        heads=width // head_dim,
        head_dim=head_dim,
        width=width,
        reshapes=reshapes,
    )


def _context_matmul(module: fx.GraphModule, softmax: fx.Node) -> fx.Node | None:
    node = softmax
    for _ in range(_MAX_WALK):
        users = list(node.users)
        if len(users) != 1:
            return None
        (user,) = users
        if _is_matmul(module, user):
            return user if user.args and user.args[0] is node else None
        if not _is_movement(module, user):
            return None
        node = user
    return None


def _walk_back(
    module: fx.GraphModule,
    start: fx.Node,
    values: dict[str, Any],
    passable: Any,
    is_target: Any,
) -> fx.Node | None:
    """From `start` (included), follow the data input (the floating input with the most
    elements) back through nodes `passable` accepts, to the first node `is_target` accepts."""
    node: fx.Node | None = start
    for step in range(_MAX_WALK):
        if node is None:
            return None
        if step > 0 and is_target(module, node):
            return node
        if step > 0 and not passable(module, node):
            return None
        node = _data_input(node, values)
    return None


def _walk_forward(module: fx.GraphModule, start: fx.Node, is_target: Any) -> fx.Node | None:
    node = start
    for _ in range(_MAX_WALK):
        users = [user for user in node.users if user.args and user.args[0] is node]
        if len(users) != 1:
            return None
        (node,) = users
        if is_target(module, node):
            return node
        if not _is_movement(module, node):
            return None
    return None


def _data_input(node: fx.Node, values: dict[str, Any]) -> fx.Node | None:
    best: fx.Node | None = None
    best_size = -1
    for arg in node.all_input_nodes:
        value = values.get(arg.name)
        if isinstance(value, tuple | list):  # a Split: its getitem picks the element
            value = next((item for item in value if isinstance(item, torch.Tensor)), None)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        if value.numel() > best_size:
            best, best_size = arg, value.numel()
    return best


def _reshapes_between(
    module: fx.GraphModule, projections: list[fx.Node], output: fx.Node
) -> dict[str, str]:
    """The OnnxReshape nodes on a path from a projection to the output projection, each
    with the name of the node whose values it reshapes."""
    ahead: set[fx.Node] = set()
    pending = list(projections)
    while pending:
        node = pending.pop()
        for user in node.users:
            if user not in ahead and user is not output:
                ahead.add(user)
                pending.append(user)
    behind: set[fx.Node] = set()
    pending = [output]
    while pending:
        node = pending.pop()
        for arg in node.all_input_nodes:
            if arg not in behind:
                behind.add(arg)
                pending.append(arg)
    found: dict[str, str] = {}
    for node in module.graph.nodes:
        if node not in ahead or node not in behind:
            continue
        if not _module_name(module, node).startswith("OnnxReshape"):
            continue
        data = node.args[0]
        if isinstance(data, fx.Node) and (data in ahead or data in projections):
            found[node.name] = data.name
    return found


def _module_name(module: fx.GraphModule, node: fx.Node) -> str:
    if node.op != "call_module":
        return ""
    return type(module.get_submodule(str(node.target))).__name__


def _is_linear(module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    return isinstance(module.get_submodule(str(node.target)), nn.Linear)


def _is_matmul(module: fx.GraphModule, node: fx.Node) -> bool:
    return _module_name(module, node) == "OnnxMatMul" or (
        node.op == "call_function" and node.target in (torch.matmul, operator.matmul)
    )


def _is_movement(module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target is operator.getitem
    name = _module_name(module, node)
    if name.startswith(_MOVEMENT_PREFIXES):
        return True
    # a scale: Mul or Div by a value (the 1/sqrt(head_dim) factor)
    layer = module.get_submodule(str(node.target)) if node.op == "call_module" else None
    return name == "OnnxBinaryMathOperation" and getattr(layer, "math_op_function", None) in (
        torch.mul,
        torch.div,
    )


def _is_projection_path_op(module: fx.GraphModule, node: fx.Node) -> bool:
    """Between a projection and the attention MatMuls: movement, scaling, and the sums of
    rotary position embeddings (q cos + rotate_half(q) sin, followed through q cos)."""
    name = _module_name(module, node)
    return _is_movement(module, node) or name == "OnnxBinaryMathOperation"


def _is_score_op(module: fx.GraphModule, node: fx.Node) -> bool:
    """Between the scores MatMul and the Softmax: scaling, masking, casts."""
    name = _module_name(module, node)
    return _is_movement(module, node) or name in ("OnnxBinaryMathOperation", "OnnxWhere")


# --- recording values ----------------------------------------------------------------------


def _probe_inputs(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """The examples repeated to batch `_PROBE_BATCH` when the model takes that batch, so that
    batch x heads stands out among the shape values; else the examples as they are."""
    probe = tuple(_to_batch(tensor, _PROBE_BATCH) for tensor in example_inputs)
    try:
        with torch.no_grad():
            module(*probe)
    except Exception:  # a fixed batch size: work with the examples
        return example_inputs
    return probe


def _to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    if tensor.dim() == 0 or tensor.shape[0] == 0:
        return tensor
    repeats = -(-batch // tensor.shape[0])
    return tensor.repeat(repeats, *([1] * (tensor.dim() - 1)))[:batch]


def _record_values(
    module: fx.GraphModule, inputs: tuple[torch.Tensor, ...]
) -> dict[str, Any] | None:
    """Node name -> the value it computed on `inputs`, or None if the model does not run."""
    values: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            values[n.name] = result
            return result

    try:
        with torch.no_grad():
            Recorder(module).run(*inputs)
    except Exception:  # a model that does not run has no blocks to prune
        return None
    return values


# --- pruning -------------------------------------------------------------------------------


def _strongest_heads(module: nn.Module, block: AttentionBlock, count: int, norm: int) -> list[int]:
    """The `count` heads with the largest weight norm over the four projections, in order."""
    scores = torch.zeros(block.heads)
    for rows in _projection_rows(module, block):
        for name, positions in rows:
            weight = module.get_submodule(name).weight.detach()
            for head in range(block.heads):
                part = weight[positions[head]]
                scores[head] += part.abs().pow(norm).sum()
    output = module.get_submodule(block.output).weight.detach()
    for head in range(block.heads):
        part = output[:, _head_columns(block, head)]
        scores[head] += part.abs().pow(norm).sum()
    order = sorted(range(block.heads), key=lambda head: (-float(scores[head]), head))
    return sorted(order[:count])


def _projection_rows(
    module: nn.Module, block: AttentionBlock
) -> list[list[tuple[str, list[list[int]]]]]:
    """Per projection (query, key, value): [(layer name, rows of each head)]."""
    if len(block.projections) == 1:
        (name,) = block.projections
        return [
            [
                (
                    name,
                    [
                        [part * block.width + col for col in _head_columns(block, head)]
                        for head in range(block.heads)
                    ],
                )
            ]
            for part in range(3)
        ]
    return [
        [(name, [_head_columns(block, head) for head in range(block.heads)])]
        for name in block.projections
    ]


def _head_columns(block: AttentionBlock, head: int) -> list[int]:
    return list(range(head * block.head_dim, (head + 1) * block.head_dim))


def _apply(
    module: fx.GraphModule,
    block: AttentionBlock,
    survivors: list[int],
    probe: tuple[torch.Tensor, ...],
    *,
    later_first: bool,
) -> None:
    """Remove the other heads from the projections and adapt the Reshape shapes, worked out
    on `probe` inputs (see `_wanted_shape` for `later_first`)."""
    removed = [head for head in range(block.heads) if head not in survivors]
    rows_by_layer: dict[str, list[int]] = {}
    for projection in _projection_rows(module, block):
        for name, positions in projection:
            rows_by_layer.setdefault(name, []).extend(
                row for head in removed for row in positions[head]
            )
    for name, rows in rows_by_layer.items():
        tp.prune_linear_out_channels(module.get_submodule(name), idxs=sorted(rows))
    columns = [col for head in removed for col in _head_columns(block, head)]
    tp.prune_linear_in_channels(module.get_submodule(block.output), idxs=columns)
    _adapt_reshapes(module, block, len(survivors), probe, later_first=later_first)


def _matches_masked(
    module: nn.Module,
    pruned: nn.Module,
    block: AttentionBlock,
    survivors: list[int],
    input_sets: tuple[tuple[torch.Tensor, ...], ...],
) -> bool:
    """Whether `pruned` gives the outputs of `module` with the other heads' share of the
    output projection zeroed: removing a head must change nothing else."""
    output = module.get_submodule(block.output)
    assert isinstance(output, nn.Linear)
    removed = [
        col
        for head in range(block.heads)
        if head not in survivors
        for col in _head_columns(block, head)
    ]
    with torch.no_grad():
        for inputs in input_sets:
            # The reference is `module` itself with those columns zeroed for the run: a copy
            # of a large model would cost its size again.
            saved = output.weight[:, removed].clone()
            output.weight[:, removed] = 0.0
            try:
                expected = flat_outputs(module(*inputs))
            finally:
                output.weight[:, removed] = saved
            actual = flat_outputs(pruned(*inputs))
            if len(expected) != len(actual):
                return False
            for want, got in zip(expected, actual, strict=True):
                if want.shape != got.shape:
                    return False
                want, got = want.float(), got.float()
                scale = float(want.abs().max()) if want.numel() else 0.0
                if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
                    return False
    return True


def flat_outputs(outputs: Any) -> list[torch.Tensor]:
    """The tensors of a module's outputs (a tensor, or lists, tuples and dicts of them), in
    order; dict entries by key."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, list | tuple):
        return [tensor for item in outputs for tensor in flat_outputs(item)]
    if isinstance(outputs, dict):
        return [tensor for key in sorted(outputs) for tensor in flat_outputs(outputs[key])]
    return []


class HeadCount(nn.Module):
    """Rescales one entry of a Reshape target shape from the old head count to the new one:
    shape // divisor * multiplier, with divisor and multiplier 1 outside that entry."""

    def __init__(self, rank: int, axis: int, heads: int, kept: int) -> None:
        super().__init__()
        divisor = torch.ones(rank, dtype=torch.long)
        multiplier = torch.ones(rank, dtype=torch.long)
        divisor[axis], multiplier[axis] = heads, kept
        self.register_buffer("divisor", divisor, persistent=False)
        self.register_buffer("multiplier", multiplier, persistent=False)

    def forward(self, shape: torch.Tensor) -> torch.Tensor:
        # Truncation exports as a plain integer Div; the entry it divides is positive, so it
        # equals floor division here.
        return torch.div(shape, self.divisor, rounding_mode="trunc") * self.multiplier


def _adapt_reshapes(
    module: fx.GraphModule,
    block: AttentionBlock,
    kept: int,
    probe: tuple[torch.Tensor, ...],
    *,
    later_first: bool,
) -> None:
    """Give each Reshape of `block` the shape it needs with `kept` heads. A shape computed
    from the pruned tensors already has it; a shape from constants or from the model's
    input sizes gets one entry (heads, batch x heads or the projection width) rescaled.
    Worked out by running the model on the `probe` inputs, Reshape by Reshape."""
    batch = int(probe[0].shape[0]) if probe and probe[0].dim() else 1
    fixes: dict[str, HeadCount] = {}

    class Adapter(fx.Interpreter):
        current: fx.Node | None = None

        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            node = self.current
            if node is not None and node.name in block.reshapes:
                data, shape = args
                before_in, before_out = block.reshapes[node.name]
                wanted = _wanted_shape(
                    before_in, before_out, tuple(data.shape), block, kept, batch, later_first
                )
                axis = _axis_to_rescale(data, shape, wanted, block.heads, kept)
                if axis is not None:
                    fixes[node.name] = HeadCount(len(shape), axis, block.heads, kept)
                    args = (data, fixes[node.name](shape))
            return super().call_module(target, args, kwargs)

        def run_node(self, n: fx.Node) -> Any:
            self.current = n
            return super().run_node(n)

    with torch.no_grad():
        Adapter(module).run(*probe)
    graph = module.graph
    for node in list(graph.nodes):
        if node.name not in fixes:
            continue
        name = f"{node.name}_head_count"
        module.add_submodule(name, fixes[node.name])
        with graph.inserting_before(node):
            rescaled = graph.call_module(name, (node.args[1],))
        node.args = (node.args[0], rescaled)
    graph.lint()
    module.recompile()


def _wanted_shape(
    before_in: tuple[int, ...],
    before_out: tuple[int, ...],
    now_in: tuple[int, ...],
    block: AttentionBlock,
    kept: int,
    batch: int,
    later_first: bool,
) -> tuple[int, ...]:
    """The output shape a Reshape must give now that its input went from `before_in` to
    `now_in` (one axis shrunk by kept / heads): `before_out` with the entry that carries
    the heads rescaled. That entry lies over the shrunk input axis and equals batch x heads
    (first), the head count or the projection width; among equals, the later entry first
    if `later_first` ([.., 3, width] of a fused projection with 3 heads), else the earlier
    one ([.., heads, dim] with dim == heads). Raises ValueError when no entry qualifies."""
    if now_in == before_in:
        return before_out
    shrunk = [axis for axis, (a, b) in enumerate(zip(before_in, now_in, strict=True)) if a != b]
    if len(shrunk) != 1:
        raise ValueError(f"the Reshape input went from {before_in} to {now_in}")
    over = _axes_over(before_in, shrunk[0], before_out)
    candidates: list[tuple[int, int, int]] = []  # (preference, order, axis)
    for axis in over:
        value = before_out[axis]
        order = -axis if later_first else axis
        if batch > 1 and value == batch * block.heads:
            candidates.append((0, order, axis))
        elif value in (block.heads, block.width, 3 * block.width):
            candidates.append((1, order, axis))
    if not candidates:
        raise ValueError(f"no entry of the Reshape output {before_out} carries the heads")
    _, _, axis = min(candidates)
    wanted = list(before_out)
    wanted[axis] = wanted[axis] // block.heads * kept
    return tuple(wanted)


def _axes_over(shape_in: tuple[int, ...], axis: int, shape_out: tuple[int, ...]) -> list[int]:
    """The axes of `shape_out` whose elements overlap input `axis` of `shape_in` in the
    row-major order a Reshape keeps: their stride ranges intersect."""

    def ranges(shape: tuple[int, ...]) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        stride = 1
        for size in reversed(shape):
            spans.append((stride, stride * size))
            stride *= size
        return spans[::-1]

    low, high = ranges(shape_in)[axis]
    return [
        index
        for index, (start, stop) in enumerate(ranges(shape_out))
        if stop > start and max(start, low) < min(stop, high)
    ]


def _axis_to_rescale(
    data: torch.Tensor, shape: torch.Tensor, wanted: tuple[int, ...], heads: int, kept: int
) -> int | None:
    """None if reshaping `data` to the target `shape` gives `wanted`; else the entry of
    `shape` that, rescaled from `heads` to `kept`, does. Raises ValueError if none does."""
    target = [int(value) for value in shape.tolist()]
    if _result(data, target) == wanted:
        return None
    for axis, value in enumerate(target):
        if value <= 0 or value % heads:
            continue
        trial = list(target)
        trial[axis] = value // heads * kept
        if _result(data, trial) == wanted:
            return axis
    raise ValueError(f"no entry of the Reshape shape {target} gives {wanted}")


def _result(data: torch.Tensor, shape: list[int]) -> tuple[int, ...] | None:
    """The shape ONNX Reshape gives `data` for target `shape` (0 copies the input's size),
    or None if it cannot."""
    resolved = [data.shape[i] if value == 0 else value for i, value in enumerate(shape)]
    try:
        return tuple(data.reshape(resolved).shape)
    except RuntimeError:
        return None
