"""TorchScript archives (`torch.jit.save`): input names from the code, pickles checked for
allowed globals only, and the input shapes and dtypes the upload's form fields give."""

from __future__ import annotations

import ast
import json
import math
import re
import zipfile
from collections import deque
from collections.abc import Mapping

from optimizers.checks import SUPPORTED_INPUT_DTYPES
from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.formats.archive_safety import (
    UnsafeArchiveError,
    check_code_size,
    pickle_opcodes,
    printable,
)
from optimizers.formats.kinds import TORCHSCRIPT_OPSET, UploadFormat
from optimizers.formats.torchscript_code import check_torchscript_code, code_members
from optimizers.formats.zip_archive import member_sizes, read_small
from optimizers.results import Dim, ModelInfo, TensorInfo

#: Most elements an input of a TorchScript upload may have, named dimensions not counted.
MAX_INPUT_ELEMENTS = 1 << 30
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def torchscript_input_names(archive: zipfile.ZipFile, root: str) -> list[str]:
    """The parameter names of the root module's `forward`, read from the archive's code
    folder. The root class is the first global of data.pkl, found by listing the pickle's
    opcodes (nothing is unpickled)."""
    class_path = _root_class(archive, root)
    module, _, class_name = class_path.rpartition(".")
    source_name = f"{root}/code/{module.replace('.', '/')}.py"
    try:
        source = read_small(archive, source_name).decode("utf-8")
        check_code_size(source, source_name)
        tree = ast.parse(source)
    except (KeyError, UnicodeDecodeError, SyntaxError) as exc:
        raise InvalidModelError(
            f"cannot read the TorchScript code of '{class_path}' ({source_name}): {exc}"
        ) from exc
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "forward":
                    return _forward_inputs(item)
    raise InvalidModelError(f"the TorchScript module '{class_path}' has no forward method")


def _forward_inputs(forward: ast.FunctionDef) -> list[str]:
    args = forward.args
    if args.vararg or args.kwarg or args.kwonlyargs:
        raise UnsupportedError("forward takes *args, **kwargs or keyword-only arguments")
    names = []
    for arg in [*args.posonlyargs, *args.args][1:]:
        annotation = ast.unparse(arg.annotation) if arg.annotation else "Tensor"
        if annotation != "Tensor":
            raise UnsupportedError(
                f"forward input '{arg.arg}' is a {annotation}; only Tensor inputs are supported"
            )
        names.append(arg.arg)
    if not names:
        raise InvalidModelError("the TorchScript forward has no inputs to feed")
    return names


def _root_class(archive: zipfile.ZipFile, root: str) -> str:
    strings: deque[str] = deque(maxlen=2)
    name = f"{root}/data.pkl"
    try:
        with archive.open(name) as handle:
            for opcode, arg, _ in pickle_opcodes(handle, name=name):
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    return arg.replace(" ", ".")
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
    except (KeyError, ValueError) as exc:
        raise InvalidModelError(f"cannot read the TorchScript archive's data.pkl: {exc}") from exc
    raise InvalidModelError("the TorchScript archive's data.pkl names no module class")


def _allowed_torchscript_global(module: str, name: str) -> bool:
    """What torch.jit.save writes into a TorchScript archive's pickles: the module's own
    TorchScript classes, tensor and storage rebuilders, and OrderedDict."""
    if module == "__torch__" or module.startswith("__torch__."):
        return True
    if module in ("torch._utils", "torch.jit._pickle"):
        return name.startswith(("_rebuild_", "build_", "restore_"))
    if module == "torch":
        return name.endswith("Storage") or name in ("device", "Size")
    return (module, name) == ("collections", "OrderedDict")


def check_torchscript_pickles(archive: zipfile.ZipFile) -> None:
    """Refuse a TorchScript archive whose pickles name any callable besides those
    torch.jit.save writes (a `__reduce__` payload names e.g. `os.system`). The pickles are
    listed opcode by opcode; nothing is unpickled."""
    for info in archive.infolist():
        if not info.filename.endswith((".pkl", ".debug_pkl")):
            continue
        # STACK_GLOBAL takes its module and name from the two strings pushed before it.
        strings: deque[str] = deque(maxlen=2)
        try:
            with archive.open(info) as handle:
                for opcode, arg, _ in pickle_opcodes(handle, name=info.filename):
                    if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        module, _, name = arg.partition(" ")
                    elif opcode.name == "STACK_GLOBAL":
                        module, name = (strings[-2], strings[-1]) if len(strings) >= 2 else ("", "")
                    else:
                        if isinstance(arg, str):
                            strings.append(arg)
                        continue
                    if not _allowed_torchscript_global(module, name):
                        raise UnsafeArchiveError(
                            f"the TorchScript archive's '{info.filename}' calls "
                            f"'{printable(module)}.{printable(name)}', which torch.jit.save "
                            "never writes; modelpress does not load it"
                        )
        except ValueError as exc:
            raise InvalidModelError(f"'{info.filename}' is not a valid pickle: {exc}") from exc


def describe_torchscript(
    archive: zipfile.ZipFile, root: str, fields: Mapping[str, str]
) -> ModelInfo:
    check_torchscript_pickles(archive)
    check_torchscript_code(
        code_members(archive.namelist(), root),
        root=root,
        read=lambda name: _read_code(archive, name),
    )
    names = torchscript_input_names(archive, root)
    shapes = parse_input_shapes(fields.get("input_shapes"), names)
    dtypes = parse_input_dtypes(fields.get("input_dtypes"), names)
    return ModelInfo(
        format=UploadFormat.torchscript.value,
        opset=TORCHSCRIPT_OPSET,
        ir_version=None,
        producer="TorchScript",
        inputs=[TensorInfo(name=n, dtype=dtypes[n], shape=shapes[n]) for n in names],
        outputs=[],
        parameter_count=0,
        size_bytes=sum(member_sizes(archive).values()),
    )


def _read_code(archive: zipfile.ZipFile, name: str) -> str:
    try:
        return read_small(archive, name).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidModelError(f"'{printable(name)}' is not UTF-8 TorchScript code") from exc


def _shapes_example(names: list[str]) -> str:
    return json.dumps({name: ["batch", 16] for name in names})


def parse_input_shapes(raw: str | None, names: list[str]) -> dict[str, list[Dim]]:
    example = _shapes_example(names)
    if not raw:
        raise InvalidModelError(
            f"a TorchScript archive does not record input shapes; send the form field "
            f"'input_shapes' with a JSON object giving the shape of each forward input "
            f"({', '.join(names)}), symbolic dimensions by name, e.g. input_shapes={example}; "
            "optionally 'input_dtypes', e.g. "
            f"{json.dumps(dict.fromkeys(names, 'float32'))} (default float32)"
        )
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidModelError(f"input_shapes is not valid JSON ({exc}); e.g. {example}") from exc
    if not isinstance(value, dict):
        raise InvalidModelError(f"input_shapes must be a JSON object, e.g. {example}")
    missing = [n for n in names if n not in value]
    extra = sorted(set(value) - set(names))
    if missing or extra:
        raise InvalidModelError(
            f"input_shapes must name exactly the forward inputs {names}"
            + (f"; missing {missing}" if missing else "")
            + (f"; not inputs: {extra}" if extra else "")
        )
    shapes: dict[str, list[Dim]] = {}
    for name in names:
        shape = value[name]
        valid = isinstance(shape, list) and 0 < len(shape) <= 16
        if valid:
            for dim in shape:
                if isinstance(dim, bool) or not (
                    (isinstance(dim, int) and 0 < dim <= 1 << 20)
                    or (isinstance(dim, str) and _NAME.fullmatch(dim))
                ):
                    valid = False
        if not valid:
            raise InvalidModelError(
                f"input_shapes['{name}'] must be a list of positive sizes and dimension names, "
                f'e.g. ["batch", 16]; got {json.dumps(shape)}'
            )
        elements = math.prod(dim for dim in shape if isinstance(dim, int))
        if elements > MAX_INPUT_ELEMENTS:
            raise InvalidModelError(
                f"input_shapes['{name}'] has {elements} elements without its named dimensions; "
                f"at most {MAX_INPUT_ELEMENTS} are allowed"
            )
        shapes[name] = list(shape)
    return shapes


def parse_input_dtypes(raw: str | None, names: list[str]) -> dict[str, str]:
    dtypes = dict.fromkeys(names, "float32")
    if not raw:
        return dtypes
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidModelError(f"input_dtypes is not valid JSON ({exc})") from exc
    if not isinstance(value, dict) or set(value) - set(names):
        raise InvalidModelError(
            f"input_dtypes must be a JSON object keyed by forward inputs {names}, e.g. "
            f'{{"{names[0]}": "int64"}}'
        )
    for name, dtype in value.items():
        if dtype not in SUPPORTED_INPUT_DTYPES:
            raise InvalidModelError(
                f"input_dtypes['{name}'] is {json.dumps(dtype)}; use one of "
                f"{sorted(SUPPORTED_INPUT_DTYPES)}"
            )
        dtypes[name] = dtype
    return dtypes
