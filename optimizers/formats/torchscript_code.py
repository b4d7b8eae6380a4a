"""Check the serialized source of a TorchScript archive (`<root>/code/**/*.py`) against the
operator allow-list before anything loads it.

torch.jit.save writes each module's compiled graph back as Python-like source that
torch.jit.load compiles again. In that source every operator call is spelled
`torch.<aten op>(...)` or `ops.<namespace>.<op>(...)`, calls of the archive's own functions
and classes `__torch__.<path>(...)` (often through a local alias `_0 = __torch__....`), and
method calls only go to submodules (`(fc1).forward(x)`); tensor methods are written as
operator calls (`torch.relu(x)`). So the check parses each file with `ast` (no torch) and
accepts a file only when every reference to `torch.*` / `ops.*` names an allowed operator,
every method call goes to a value statically typed as one of the archive's own classes, and
every plain-name call is a TorchScript builtin or a name the file binds itself.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from optimizers.errors import InvalidModelError
from optimizers.formats.archive_safety import UnsafeArchiveError, check_code_size, printable
from optimizers.formats.torch_operators import TORCHSCRIPT_BUILTINS, operator_allowed

#: Roots of attribute chains that name code of the archive itself (functions, classes,
#: constants), never an operator.
_ARCHIVE_ROOTS = frozenset({"__torch__", "CONSTANTS"})
#: Roots that name operators.
_OPERATOR_ROOTS = frozenset({"torch", "ops"})
_ARCHIVE_TYPE = "__torch__."
#: How serialized code names TorchBind classes: native code from a custom library, not the
#: archive's own code, despite the prefix.
_TORCHBIND = "__torch__.torch.classes"

#: Reads one code member as text (bounded by the caller).
ReadSource = Callable[[str], str]


@dataclass
class _Classes:
    """The attribute annotations of every class in the archive's code, by qualified name:
    what tells a submodule (`__torch__.…`) from a tensor attribute."""

    attributes: dict[str, dict[str, str]] = field(default_factory=dict)

    def attribute_type(self, class_name: str, attribute: str) -> str | None:
        return self.attributes.get(class_name, {}).get(attribute)


def code_members(names: list[str], root: str) -> list[str]:
    prefix = f"{root}/code/"
    return sorted(name for name in names if name.startswith(prefix) and name.endswith(".py"))


def check_torchscript_code(members: list[str], *, root: str, read: ReadSource) -> None:
    """Raise UnsafeArchiveError naming the first operator, call or name outside the
    allow-list in the archive's code members. Each member is read twice (once to learn the
    classes, once to check), one at a time, so memory stays bounded by the largest."""
    classes = _Classes()
    try:
        for name in members:
            _collect_classes(_parse(read(name), name), _module_path(name, root), classes)
        for name in members:
            _FileChecker(name=name, classes=classes).check(_parse(read(name), name))
    except RecursionError as exc:
        raise InvalidModelError(
            "the TorchScript code nests expressions too deeply to be checked"
        ) from exc


def _parse(source: str, name: str) -> ast.Module:
    check_code_size(source, name)
    try:
        return ast.parse(source, filename=name)
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise InvalidModelError(
            f"'{printable(name)}' is not valid TorchScript code: {exc}"
        ) from exc


def _module_path(member: str, root: str) -> str:
    """`<root>/code/__torch__/torch/nn/modules/linear.py` -> `__torch__.torch.nn.modules.linear`."""
    relative = member[len(f"{root}/code/") : -len(".py")]
    return relative.replace("/", ".")


def _collect_classes(tree: ast.Module, module: str, classes: _Classes) -> None:
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        attributes = classes.attributes.setdefault(f"{module}.{node.name}", {})
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                attributes[item.target.id] = ast.unparse(item.annotation)
            elif (
                # `__annotations__["0"] = __torch__....`: attributes that are not identifiers
                isinstance(item, ast.Assign)
                and len(item.targets) == 1
                and isinstance(target := item.targets[0], ast.Subscript)
                and isinstance(target.value, ast.Name)
                and target.value.id == "__annotations__"
                and isinstance(target.slice, ast.Constant)
                and isinstance(target.slice.value, str)
            ):
                attributes[target.slice.value] = ast.unparse(item.value)


def _chain(node: ast.Attribute) -> tuple[ast.expr, list[str]]:
    """`a.b.c` -> (Name a, ['b', 'c'])."""
    parts: list[str] = []
    value: ast.expr = node
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    return value, parts[::-1]


class _FileChecker:
    def __init__(self, *, name: str, classes: _Classes) -> None:
        self.name = name
        self.classes = classes

    def refuse(self, node: ast.AST, what: str) -> None:
        line = getattr(node, "lineno", "?")
        raise UnsafeArchiveError(
            f"the TorchScript code calls {what} ({printable(self.name)}, line {line}), which "
            "is not on modelpress's allow-list of pure tensor operators; modelpress does not "
            "load it"
        )

    def check(self, tree: ast.Module) -> None:
        bound = _bound_names(tree)
        inner_attributes = {
            id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                self.refuse(node, "an import")
            elif isinstance(node, ast.Name) and node.id in _OPERATOR_ROOTS:
                if id(node) not in inner_attributes:
                    self.refuse(node, f"'{node.id}' as a value")
            elif isinstance(node, ast.Attribute) and id(node) not in inner_attributes:
                self.check_reference(node, bound)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id not in TORCHSCRIPT_BUILTINS
                and node.func.id not in bound
            ):
                self.refuse(node, f"'{printable(node.func.id)}'")
        for function, owner in _functions(tree):
            self.check_method_calls(function, owner)

    def check_reference(self, node: ast.Attribute, bound: set[str]) -> None:
        root, parts = _chain(node)
        if not isinstance(root, ast.Name):
            return  # an attribute of a call's result or a subscript; calls are checked below
        dotted = ".".join([root.id, *parts])
        if root.id in _OPERATOR_ROOTS:
            namespaced = parts[1:] if root.id == "torch" and parts[0] == "ops" else None
            if root.id == "ops":
                namespaced = parts
            if namespaced is not None:
                if len(namespaced) < 2:
                    self.refuse(node, f"'{printable(dotted)}'")
                namespace, operator = namespaced[0], namespaced[1]
            elif len(parts) == 1:
                namespace, operator = "aten", parts[0]
            else:
                self.refuse(node, f"'{printable(dotted)}'")
            if not operator_allowed(namespace, operator):
                self.refuse(node, f"the operator '{printable(namespace)}::{printable(operator)}'")
        elif dotted == _TORCHBIND or dotted.startswith(f"{_TORCHBIND}."):
            self.refuse(node, f"the custom class '{printable(dotted)}'")
        elif root.id not in _ARCHIVE_ROOTS and root.id not in bound:
            self.refuse(node, f"'{printable(dotted)}'")

    def check_method_calls(self, function: ast.FunctionDef, owner: str | None) -> None:
        """Method calls must go to the archive's own modules: `self`, or a local bound to a
        submodule attribute (`fc1 = self.fc1`, `_0 = getattr(layers, "0")`)."""
        types = _argument_types(function, owner)
        arguments = {node.arg for node in ast.walk(function) if isinstance(node, ast.arg)}
        assignments: dict[str, list[ast.expr]] = {}
        stores: dict[str, int] = {}
        for node in ast.walk(function):
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                assignments.setdefault(node.targets[0].id, []).append(node.value)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                stores[node.id] = stores.get(node.id, 0) + 1
        # A local is a module only when every binding of it is a plain assignment of a module
        # of one class (not a loop target, an unpacking or an argument). Locals are typed once
        # and never retyped, so this fixed point ends.
        candidates = {
            name: values
            for name, values in assignments.items()
            if name not in arguments and stores.get(name) == len(values)
        }
        changed = True
        while changed:
            changed = False
            for target, values in candidates.items():
                if target in types:
                    continue
                found = {self.expression_type(value, types) for value in values}
                if len(found) == 1 and (value_type := found.pop()) is not None:
                    types[target] = value_type
                    changed = True
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver, _ = _chain(node.func)
                if isinstance(receiver, ast.Name) and (
                    receiver.id in _OPERATOR_ROOTS or receiver.id in _ARCHIVE_ROOTS
                ):
                    continue  # an operator or a function of the archive, checked above
                if self.expression_type(node.func.value, types) is None:
                    self.refuse(node, f"the method '{printable(node.func.attr)}'")

    def expression_type(self, node: ast.expr, types: dict[str, str]) -> str | None:
        """The archive class that `node` is statically, or None when it is anything else."""
        if isinstance(node, ast.Name):
            return types.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.expression_type(node.value, types)
            return self.member_type(owner, node.attr) if owner else None
        if (
            # `__torch__.m.C.__new__(__torch__.m.C)`: how serialized code makes an object of
            # one of the archive's classes (then calls its `__init__`).
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__new__"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Attribute)
            and ast.unparse(node.args[0]) == ast.unparse(node.func.value)
            and _is_archive_type(ast.unparse(node.args[0]))
        ):
            return ast.unparse(node.args[0])
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            owner = self.expression_type(node.args[0], types)
            return self.member_type(owner, node.args[1].value) if owner else None
        return None

    def member_type(self, owner: str, attribute: str) -> str | None:
        annotation = self.classes.attribute_type(owner, attribute)
        if _is_archive_type(annotation):
            return annotation
        return None


def _is_archive_type(annotation: str | None) -> bool:
    return bool(
        annotation
        and annotation.startswith(_ARCHIVE_TYPE)
        and not annotation.startswith(_TORCHBIND)
    )


def _functions(tree: ast.Module) -> Iterator[tuple[ast.FunctionDef, str | None]]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node, None
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield item, node.name


def _argument_types(function: ast.FunctionDef, owner: str | None) -> dict[str, str]:
    types = {}
    for arg in [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]:
        annotation = ast.unparse(arg.annotation) if arg.annotation else ""
        if _is_archive_type(annotation):
            types[arg.arg] = annotation
    return types


def _bound_names(tree: ast.Module) -> set[str]:
    """Names the file itself binds: locals, arguments, functions and classes."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
    return bound - _OPERATOR_ROOTS
