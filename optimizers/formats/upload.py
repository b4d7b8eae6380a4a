"""What an uploaded model file is, judged by its content, and a description of it.

Accepted: a plain ONNX model; a zip of one `.onnx` file and its external data files; a
`torch.export` program saved with `torch.export.save` (`.pt2`); a TorchScript archive saved
with `torch.jit.save`. A plain `torch.save` pickle is refused with advice on how to export.

Imports neither torch nor onnxruntime, and never unpickles anything: the API runs this on
every upload. Every zip is checked for unsafe member names, links, size and compression
ratio before anything is read from it.
"""

from __future__ import annotations

import ast
import json
import math
import os
import posixpath
import re
import stat
import tempfile
import zipfile
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import onnx

from optimizers.checks import SUPPORTED_INPUT_DTYPES
from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.external_data import (
    check_external_data,
    external_data_locations,
    unsafe_path_reason,
)
from optimizers.formats.archive_safety import (
    UnsafeArchiveError,
    check_code_size,
    parse_json_member,
    pickle_opcodes,
    printable,
    read_text_member,
)
from optimizers.formats.onnx_structure import Structure, slim_copy
from optimizers.formats.torch_operators import export_target_refusal
from optimizers.formats.torchscript_code import check_torchscript_code, code_members
from optimizers.model_info import inspect_model
from optimizers.results import Dim, ModelInfo, TensorInfo

#: Most members a zip upload may hold.
MAX_ZIP_MEMBERS = 10_000
#: Largest uncompressed-to-compressed ratio for one member (zip bombs are far above this).
MAX_COMPRESSION_RATIO = 100
#: Members smaller than this are not held to the ratio: they cannot do harm.
RATIO_CHECK_MIN_BYTES = 1 << 20
#: What zipfile raises while reading a corrupt member: a bad CRC or a member longer than its
#: header says (BadZipFile), a broken deflate stream, a cut-off file, an unknown method.
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)
#: Most elements an input of a TorchScript upload may have, named dimensions not counted.
MAX_INPUT_ELEMENTS = 1 << 30
#: Opsets of the ONNX models that PyTorch uploads are converted to (see torch_export).
TORCH_EXPORT_OPSET = 18
TORCHSCRIPT_OPSET = 17

EXPORT_ADVICE = (
    "export the model instead: `ep = torch.export.export(model, example_inputs)` and "
    '`torch.export.save(ep, "model.pt2")`, or `torch.jit.script(model).save("model.pt")` '
    "(TorchScript, upload with an 'input_shapes' field), or `torch.onnx.export(model, "
    'example_inputs, "model.onnx")`'
)


class UploadFormat(StrEnum):
    onnx = "onnx"
    onnx_zip = "onnx_zip"
    torch_export = "torch_export"
    torchscript = "torchscript"


#: The name each format is stored under.
STORAGE_NAMES = {
    UploadFormat.onnx: "model.onnx",
    UploadFormat.onnx_zip: "model.zip",
    UploadFormat.torch_export: "model.pt2",
    UploadFormat.torchscript: "model.pt",
}


@dataclass(frozen=True)
class Detected:
    format: UploadFormat
    #: The archive's top folder for PyTorch archives; the .onnx member for an ONNX zip.
    member: str | None = None


def storage_name(format: str) -> str:
    return STORAGE_NAMES[UploadFormat(format)]


def detect_format(path: Path, *, max_total_bytes: int) -> Detected:
    """Classify an upload by its content. Raises InvalidModelError (422 material) for a
    pickle, an unsafe or unknown zip, or an empty file."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise InvalidModelError("the uploaded file is empty")
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive:
            return _detect_zip(archive)
    if head[:1] == b"\x80":
        raise InvalidModelError(
            "the file is a Python pickle (a legacy torch.save file). modelpress does not load "
            "pickles: they can run arbitrary code and do not hold the model's program, only "
            f"its weights; {EXPORT_ADVICE}"
        )
    return Detected(UploadFormat.onnx)


def inspect_upload(
    path: Path, *, max_total_bytes: int, fields: Mapping[str, str], tmp_dir: Path
) -> ModelInfo:
    """Detect the format of an upload and describe the model, without torch and without
    loading weights. `fields` are the form fields sent with the file."""
    detected = detect_format(path, max_total_bytes=max_total_bytes)
    given = [name for name in ("input_shapes", "input_dtypes") if fields.get(name)]
    if given and detected.format != UploadFormat.torchscript:
        raise InvalidModelError(
            f"the form field(s) {given} only apply to TorchScript uploads; this file is "
            f"{_format_label(detected.format)}, which records its input shapes itself"
        )
    if detected.format == UploadFormat.onnx:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="inspect-", dir=tmp_dir) as tmp:
            try:
                structure = slim_copy(path, Path(tmp))
                _refuse_own_external_data(_load_proto(structure.path, path.name), structure)
                info = inspect_model(structure.path, check_domains=True)
            except (InvalidModelError, UnsupportedError) as exc:
                raise type(exc)(f"not a valid ONNX model: {exc.message}") from exc
        return info.model_copy(update={"size_bytes": path.stat().st_size})
    with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive, _reading_zip():
        assert detected.member is not None
        if detected.format == UploadFormat.onnx_zip:
            return _inspect_onnx_zip(archive, detected.member, tmp_dir=tmp_dir)
        if detected.format == UploadFormat.torch_export:
            return describe_torch_export(archive, detected.member)
        return describe_torchscript(archive, detected.member, fields)


@contextmanager
def _reading_zip() -> Iterator[None]:
    """Turn zipfile's errors for a corrupt member into an InvalidModelError."""
    try:
        yield
    except ZIP_READ_ERRORS as exc:
        raise InvalidModelError(
            f"the zip is corrupt: {type(exc).__name__}: {exc}; is the file complete?"
        ) from exc


def _format_label(format: UploadFormat) -> str:
    return {
        UploadFormat.onnx: "an ONNX model",
        UploadFormat.onnx_zip: "a zip of an ONNX model with external data",
        UploadFormat.torch_export: "a torch.export program (.pt2)",
        UploadFormat.torchscript: "a TorchScript archive",
    }[format]


# --- zip safety ---------------------------------------------------------------------------


def open_checked_zip(path: Path, *, max_total_bytes: int) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidModelError(f"the file looks like a zip but cannot be read: {exc}") from exc
    try:
        check_zip(archive, max_total_bytes=max_total_bytes)
    except BaseException:
        archive.close()
        raise
    return archive


def check_zip(archive: zipfile.ZipFile, *, max_total_bytes: int) -> None:
    """Refuse zips that could escape a folder, hide links or special files, or expand far
    beyond their size. Checks the central directory only; reading is bounded separately."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise UnsafeArchiveError(
            f"the zip holds {len(infos)} entries; at most {MAX_ZIP_MEMBERS} are allowed"
        )
    total = 0
    seen: set[str] = set()
    for info in infos:
        # zipfile cuts names at a NUL byte; the original name still has it.
        for name in {info.orig_filename, info.filename}:
            reason = unsafe_path_reason(name)
            if reason:
                raise UnsafeArchiveError(
                    f"the zip entry '{printable(name)}' is not allowed: {reason}"
                )
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise UnsafeArchiveError(
                f"the zip entry '{info.filename}' is a symbolic link; links are not allowed"
            )
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(
                f"the zip entry '{info.filename}' is not a regular file or folder"
            )
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"the zip entry '{info.filename}' is encrypted")
        key = info.filename.rstrip("/")
        if key in seen:
            raise UnsafeArchiveError(f"the zip holds '{info.filename}' more than once")
        seen.add(key)
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeArchiveError(
                f"the zip expands to more than {max_total_bytes} bytes, the limit for "
                "uncompressed uploads (4x MODELPRESS_MAX_UPLOAD_BYTES)"
            )
        if info.file_size >= RATIO_CHECK_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(
            info.compress_size, 1
        ):
            raise UnsafeArchiveError(
                f"the zip entry '{info.filename}' expands {info.file_size} bytes from "
                f"{info.compress_size} (more than {MAX_COMPRESSION_RATIO}x); refused as a "
                "possible zip bomb"
            )


def _files(archive: zipfile.ZipFile) -> dict[str, int]:
    return {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}


def _read_small(archive: zipfile.ZipFile, name: str) -> bytes:
    return read_text_member(archive, name)


def _detect_zip(archive: zipfile.ZipFile) -> Detected:
    files = _files(archive)
    roots = {name.split("/", 1)[0] for name in files if "/" in name}
    for root in sorted(roots):
        if f"{root}/archive_format" in files:
            return Detected(UploadFormat.torch_export, _check_single_root(files, root))
        has_code = any(name.startswith(f"{root}/code/") for name in files)
        if has_code and (f"{root}/constants.pkl" in files or f"{root}/data.pkl" in files):
            return Detected(UploadFormat.torchscript, _check_single_root(files, root))
        if f"{root}/data.pkl" in files:
            raise InvalidModelError(
                "the file was written by torch.save (a pickled object such as a state dict or "
                "a whole nn.Module). modelpress does not load pickles: they can run arbitrary "
                f"code and a state dict does not hold the model's program; {EXPORT_ADVICE}"
            )
    onnx_members = sorted(name for name in files if name.lower().endswith(".onnx"))
    if len(onnx_members) == 1:
        return Detected(UploadFormat.onnx_zip, onnx_members[0])
    if len(onnx_members) > 1:
        raise InvalidModelError(
            f"the zip holds {len(onnx_members)} .onnx files ({', '.join(onnx_members[:5])}); "
            "put exactly one ONNX model in the zip, with its external data files"
        )
    raise InvalidModelError(
        "the zip is neither an ONNX model with its external data (no .onnx file inside), nor "
        "a torch.export (.pt2) or TorchScript archive"
    )


def _check_single_root(files: Mapping[str, int], root: str) -> str:
    stray = [name for name in files if not name.startswith(f"{root}/")]
    if stray:
        raise UnsafeArchiveError(
            f"the PyTorch archive has entries outside its folder '{root}/' (e.g. '{stray[0]}')"
        )
    return root


# --- ONNX zip -----------------------------------------------------------------------------


def _inspect_onnx_zip(archive: zipfile.ZipFile, member: str, *, tmp_dir: Path) -> ModelInfo:
    files = _files(archive)
    model_dir = posixpath.dirname(member)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inspect-", dir=tmp_dir) as tmp:
        root = Path(tmp)
        model_path = _extract_member(archive, member, root)
        structure = slim_copy(model_path, model_path.parent)
        proto = _load_proto(structure.path, member)
        # The structure's own references point into the extracted model itself.
        relocated = posixpath.join(model_dir, structure.data_location)
        sizes = {**files, relocated: model_path.stat().st_size}
        locations = check_external_data(proto, model_dir=model_dir, file_sizes=sizes)
        for location in locations:
            if location == structure.data_location:
                continue
            data_member = posixpath.join(model_dir, location) if model_dir else location
            if data_member == member:
                raise InvalidModelError(f"external data location '{location}' is the model itself")
            # The checker wants each data file to exist; an empty sparse file of the right
            # size stands in, so no weight is read or written to describe the graph.
            placeholder = _inside(root, data_member)
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            with placeholder.open("wb") as handle:
                handle.truncate(files[data_member])
        try:
            info = inspect_model(structure.path, check_domains=True)
        except (InvalidModelError, UnsupportedError) as exc:
            raise type(exc)(f"not a valid ONNX model: {exc.message}") from exc
    total = sum(files.values())
    return info.model_copy(update={"format": UploadFormat.onnx_zip.value, "size_bytes": total})


def extract_onnx_zip(path: Path, dest: Path, *, max_total_bytes: int) -> Path:
    """Extract the ONNX model of a zip upload and the data files it refers to into `dest`
    (checked again here: names, links, sizes); return the .onnx path. Nothing else in the
    zip is written."""
    with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive, _reading_zip():
        detected = _detect_zip(archive)
        if detected.format != UploadFormat.onnx_zip or detected.member is None:
            raise InvalidModelError("the zip does not hold an ONNX model")
        member = detected.member
        files = _files(archive)
        dest.mkdir(parents=True, exist_ok=True)
        model_path = _extract_member(archive, member, dest)
        proto = _load_proto(model_path, member)
        model_dir = posixpath.dirname(member)
        for location in check_external_data(proto, model_dir=model_dir, file_sizes=files):
            data_member = posixpath.join(model_dir, location) if model_dir else location
            if data_member != member:
                _extract_member(archive, data_member, dest)
    return model_path


def _inside(root: Path, name: str) -> Path:
    reason = unsafe_path_reason(name)
    if reason:
        raise UnsafeArchiveError(f"'{printable(name)}' is not allowed: {reason}")
    target = root / name
    resolved_root = root.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise UnsafeArchiveError(f"'{printable(name)}' points outside the extraction folder")
    return target


def _extract_member(archive: zipfile.ZipFile, name: str, root: Path) -> Path:
    """Write one member under `root` as a new regular file; never through a link."""
    info = archive.getinfo(name)
    target = _inside(root, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise UnsafeArchiveError(f"'{printable(name)}' points outside the extraction folder")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as sink, archive.open(info) as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            written += len(block)
            if written > info.file_size:
                raise UnsafeArchiveError(f"'{name}' is larger than the zip says")
            sink.write(block)
    return target


def _refuse_own_external_data(proto: onnx.ModelProto, structure: Structure) -> None:
    """A lone .onnx upload has no files beside it that its tensors may refer to."""
    for location, tensors in external_data_locations(proto).items():
        if location != structure.data_location:
            raise InvalidModelError(
                f"tensor '{tensors[0].tensor}' keeps its data in a separate file "
                f"('{printable(location)}'), which a single .onnx upload cannot bring; upload "
                "a zip of the .onnx file and its external data files"
            )


def _load_proto(path: Path, member: str) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidModelError(
            f"'{member}' in the zip is not an ONNX model (protobuf parsing failed: {exc})"
        ) from exc


# --- torch.export (.pt2) ------------------------------------------------------------------

#: torch's serialized ScalarType codes (torch/_export/serde/schema.py) as numpy dtype names.
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
    files = _files(archive)
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
        size_bytes=sum(_files(archive).values()),
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


# --- TorchScript --------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def torchscript_input_names(archive: zipfile.ZipFile, root: str) -> list[str]:
    """The parameter names of the root module's `forward`, read from the archive's code
    folder. The root class is the first global of data.pkl, found by listing the pickle's
    opcodes (nothing is unpickled)."""
    class_path = _root_class(archive, root)
    module, _, class_name = class_path.rpartition(".")
    source_name = f"{root}/code/{module.replace('.', '/')}.py"
    try:
        source = _read_small(archive, source_name).decode("utf-8")
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
        size_bytes=sum(_files(archive).values()),
    )


def _read_code(archive: zipfile.ZipFile, name: str) -> str:
    try:
        return _read_small(archive, name).decode("utf-8")
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
