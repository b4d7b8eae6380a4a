"""`.pt2` archives (`torch.export.save`): the program's inputs read from its JSON, every
operator checked against the allow-list and every guard and shape expression parsed, without
torch and without unpickling."""

from __future__ import annotations

import ast
import math
import re
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.formats.archive_safety import (
    UnsafeArchiveError,
    parse_json_member,
    printable,
    read_text_member,
)
from optimizers.formats.kinds import TORCH_EXPORT_OPSET, UploadFormat
from optimizers.formats.torch_operators import export_target_refusal
from optimizers.formats.zip_archive import member_sizes
from optimizers.results import Dim, ModelInfo, TensorInfo

_SCALAR_TYPES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    34: "uint32",
    35: "uint64",
}
_SYMBOL = re.compile(r"Symbol\('([A-Za-z_][A-Za-z0-9_]*)'.*\)")


def read_torch_export_program(archive: zipfile.ZipFile, root: str) -> dict[str, Any]:
    """The archive's `models/model.json`, after checking that loading the archive with
    torch.export.load runs no pickle and no code of the uploader's: no pickled weights or
    constants, no custom objects, no compiled AOTInductor code, and only plain expressions
    and operator names in the program."""
    files = member_sizes(archive)
    if read_text_member(archive, f"{root}/archive_format", limit=64).strip() != b"pt2":
        raise InvalidModelError("the archive is not a torch.export .pt2 archive")
    for name in files:
        relative = name[len(root) + 1 :]
        if relative.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
            raise UnsafeArchiveError(
                f"the .pt2 archive holds compiled code ('{relative}'); modelpress loads only "
                "programs saved with torch.export.save"
            )
        if relative.startswith("models/") and relative != "models/model.json":
            raise UnsupportedError(
                f"the .pt2 archive holds more than one program ('{relative}'); save one "
                "program with torch.export.save"
            )
    program_name = f"{root}/models/model.json"
    if program_name not in files:
        raise InvalidModelError("the .pt2 archive has no models/model.json")
    if f"{root}/data/sample_inputs/model.pt" not in files:
        raise InvalidModelError("the .pt2 archive has no data/sample_inputs/model.pt")
    for kind in ("weights", "constants"):
        config_name = f"{root}/data/{kind}/model_{kind}_config.json"
        if config_name not in files:
            continue
        config = _json(archive, config_name).get("config", {})
        for fqn, meta in config.items():
            if not isinstance(meta, dict) or meta.get("use_pickle"):
                raise UnsafeArchiveError(
                    f"the .pt2 archive stores {kind[:-1]} '{fqn}' as a pickle; modelpress does "
                    "not load pickles. Save plain tensors (torch.export.save does by default)"
                )
            path_name = str(meta.get("path_name", ""))
            if kind == "constants" and not path_name.startswith("tensor_"):
                raise UnsupportedError(
                    f"the .pt2 archive has a non-tensor constant '{fqn}' ({path_name}); only "
                    "tensor constants are supported"
                )
    program = _json(archive, program_name)
    for expr in _values_of(program, "expr_str"):
        check_sympy_expression(expr)
    for target in _node_targets(program):
        check_operator_target(target)
    for guard in program.get("guards_code") or []:
        check_guard_code(guard)
    return program


def describe_torch_export(archive: zipfile.ZipFile, root: str) -> ModelInfo:
    program = read_torch_export_program(archive, root)
    try:
        graph_module = program["graph_module"]
        values = graph_module["graph"]["tensor_values"]
        signature = graph_module["signature"]
    except (KeyError, TypeError) as exc:
        raise InvalidModelError(f"models/model.json lacks {exc}; is the archive complete?") from exc
    inputs: list[TensorInfo] = []
    parameter_count = 0
    for spec in signature.get("input_specs", []):
        (kind, body), *_ = spec.items()
        if kind == "user_input":
            arg = body.get("arg", {})
            if "as_tensor" not in arg:
                raise UnsupportedError(
                    f"the program has a non-tensor input ({next(iter(arg), '?')}); only tensor "
                    "inputs are supported"
                )
            inputs.append(_tensor(values, arg["as_tensor"]["name"]))
        elif kind in ("parameter", "buffer"):
            meta = values.get(body.get("arg", {}).get("name"), {})
            sizes = [_size(size) for size in meta.get("sizes", [])]
            parameter_count += math.prod(s for s in sizes if isinstance(s, int))
    outputs = []
    for spec in signature.get("output_specs", []):
        (kind, body), *_ = spec.items()
        arg = body.get("arg", {})
        if kind == "user_output" and "as_tensor" in arg:
            outputs.append(_tensor(values, arg["as_tensor"]["name"]))
    if not inputs:
        raise InvalidModelError("the program has no inputs to feed; it cannot be benchmarked")
    version = program.get("torch_version")
    return ModelInfo(
        format=UploadFormat.torch_export.value,
        opset=TORCH_EXPORT_OPSET,
        ir_version=None,
        producer=f"torch.export (torch {version})" if version else "torch.export",
        inputs=inputs,
        outputs=outputs,
        parameter_count=int(parameter_count),
        size_bytes=sum(member_sizes(archive).values()),
    )


def _tensor(values: Mapping[str, Any], name: str) -> TensorInfo:
    meta = values.get(name)
    if not isinstance(meta, dict):
        raise InvalidModelError(f"models/model.json has no metadata for tensor '{name}'")
    code = meta.get("dtype")
    if code not in _SCALAR_TYPES:
        raise UnsupportedError(f"tensor '{name}' has a dtype (code {code}) that is not supported")
    return TensorInfo(
        name=name, dtype=_SCALAR_TYPES[code], shape=[_size(s) for s in meta.get("sizes", [])]
    )


def _size(size: Mapping[str, Any]) -> Dim:
    if "as_int" in size:
        return int(size["as_int"])
    expr = size.get("as_expr", {}).get("expr_str")
    if not isinstance(expr, str):
        return None
    match = _SYMBOL.fullmatch(expr)
    return match.group(1) if match else expr


def _json(archive: zipfile.ZipFile, name: str) -> dict[str, Any]:
    value = parse_json_member(archive, name)
    if not isinstance(value, dict):
        raise InvalidModelError(f"'{name}' is not a JSON object")
    return value


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _values_of(program: Any, key: str) -> Iterator[str]:
    for item in _walk(program):
        value = item.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidModelError(f"models/model.json has a non-string '{key}'")
            yield value


def _node_targets(program: Any) -> Iterator[str]:
    for item in _walk(program):
        if "target" in item and "inputs" in item and "outputs" in item:
            target = item["target"]
            if not isinstance(target, str):
                raise InvalidModelError("models/model.json has a non-string node target")
            yield target


def check_operator_target(target: str) -> None:
    """Graph nodes may only call the allowed operators and pure functions of
    optimizers.formats.torch_operators: the loader resolves other names with getattr on torch, and
    running them could do anything."""
    reason = export_target_refusal(target)
    if reason is not None:
        raise UnsafeArchiveError(
            f"the program calls {printable(reason)}, which is not on modelpress's allow-list "
            "of pure tensor operators; modelpress does not load it"
        )


#: Names the symbolic-shape expressions of torch.export may call (sympy and torch's
#: torch.utils._sympy.functions).
_SYMPY_CALLS = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Max", "Min", "Mod", "Abs", "Add", "Mul",
        "Pow", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "floor",
        "ceiling", "sqrt", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv",
        "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
        "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
        "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and",
        "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
    }
)  # fmt: skip
_PLAIN_NODES = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.keyword,
    ast.Tuple,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.BoolOp,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.boolop,
)


def check_sympy_expression(expr: str) -> None:
    """torch.export.load passes each shape expression to sympy.sympify, which evaluates it
    as Python; allow only names, numbers, strings, arithmetic and calls of known functions."""
    tree = _parse(expr, "shape expression")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if not (
                isinstance(func, ast.Name)
                and (func.id in _SYMPY_CALLS or func.id.startswith("OpaqueUnaryFn_"))
            ):
                _refuse(expr, "shape expression")
        elif isinstance(node, ast.Name | ast.keyword):
            name = node.id if isinstance(node, ast.Name) else (node.arg or "_")
            if name.startswith("_"):
                _refuse(expr, "shape expression")
        elif not isinstance(node, _PLAIN_NODES):
            _refuse(expr, "shape expression")


_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_CALLS = frozenset({"Eq", "Ne", "Mod", "Max", "Min", "FloorDiv", "CeilDiv", "abs", "int"})


def check_guard_code(guard: str) -> None:
    """Guards become Python source run by torch (`L['x'].size()[0] >= 2`); allow only
    comparisons of input sizes, strides and numbers."""
    tree = _parse(guard, "guard")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                _refuse(guard, "guard")
        elif isinstance(node, ast.Attribute):
            allowed = node.attr in _GUARD_METHODS or (
                isinstance(node.value, ast.Name)
                and node.value.id == "math"
                and node.attr in ("floor", "ceil", "trunc", "sqrt")
            )
            if not allowed:
                _refuse(guard, "guard")
        elif isinstance(node, ast.Call):
            func = node.func
            if node.keywords or not (
                isinstance(func, ast.Attribute)
                or (isinstance(func, ast.Name) and func.id in _GUARD_CALLS)
            ):
                _refuse(guard, "guard")
        elif isinstance(node, ast.Subscript):
            if not isinstance(node.slice, ast.Constant | ast.UnaryOp):
                _refuse(guard, "guard")
        elif not isinstance(node, _PLAIN_NODES):
            _refuse(guard, "guard")


def _parse(text: str, what: str) -> ast.AST:
    if len(text) > 10_000:
        _refuse(text, what)
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        _refuse(text, what)


def _refuse(text: str, what: str) -> NoReturn:
    raise UnsafeArchiveError(
        f"the program has a {what} that modelpress does not evaluate: '{printable(text)}'"
    )
