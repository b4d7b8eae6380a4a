"""The composer's form, generated from the JSON schema of the API's `JobSpec`: every field
the API accepts gets a control (a new pass option appears in the form with no change here).

The form travels as flat text values named by their dotted path in the spec
(`passes.0.calibration.samples`), the same path a validation error's `loc` names, so an
error finds its field. `to_spec` turns the values into the spec the API validates;
`from_spec` turns a spec (pasted JSON, a prefill link) back into values."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from core.jobspec import JobSpec

Json = dict[str, Any]
Values = dict[str, str]
Path = tuple[str | int, ...]

#: A pass's choice of kind (and method, for kinds with one config class per method).
VARIANT = "variant"
#: The pass a new job starts with, and a pass added to the chain.
DEFAULT_VARIANT = "quantize/dynamic"
#: Fields whose value is an id of one of the project's models or datasets: a picker.
MODEL_FIELDS = {"model_id"}
DATASET_FIELDS = {"dataset_id"}
_NULL = {"type": "null"}
#: The job's own fields in the order a person fills them in; the others follow in the
#: schema's order.
_TOP_ORDER = ("model_id", "passes", "evaluate", "benchmark")
_CODE = re.compile(r"`([^`]+)`")
#: A pass that measures its own trials: the job's `evaluate` and `benchmark` are refused with
#: it (its own `dataset_id`, `metric`, `max_drop` and `batch_size` say what to measure).
SELF_MEASURING = {"auto"}
MEASURING_SECTIONS = ("evaluate", "benchmark")


def rich(text: str) -> Markup:
    """A schema description as HTML: escaped, with its `code` spans marked up."""
    return Markup(_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", str(escape(text))))


@functools.cache
def job_schema() -> Json:
    """The schema the API publishes for a job's body (`/openapi.json`)."""
    return JobSpec.model_json_schema()


def _defs() -> Json:
    return dict(job_schema().get("$defs", {}))


def _resolve(node: Json) -> Json:
    while "$ref" in node:
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**_defs()[node["$ref"].rsplit("/", 1)[-1]], **extra}
    return node


def _unwrap(node: Json) -> tuple[Json, bool]:
    """(the schema of the value, whether null is allowed): `X | None` is X, optional."""
    node = _resolve(node)
    options = node.get("anyOf")
    if options and _NULL in options and len(options) == 2:
        inner = _resolve(next(o for o in options if o != _NULL))
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        # The field's own description and default win over its type's.
        return {**inner, **{k: v for k, v in outer.items() if k != "title"}}, True
    return node, False


def _widget(node: Json, path: Path) -> str:
    if path == ("passes",):
        return "passes"
    if "const" in node:
        return "const"
    if "enum" in node:
        return "select"
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        return "group"
    if kind in ("boolean", "integer", "number", "string"):
        return {"boolean": "bool", "integer": "int", "number": "number", "string": "text"}[kind]
    if kind == "array":
        items = _resolve(node.get("items", {}))
        if items.get("type") in ("integer", "number"):
            return "numbers"
        if items.get("type") == "string":
            return "lines"
    return "json"  # a mapping (labels, inputs, input_shapes) or anything else: JSON text


@functools.cache
def pass_variants() -> dict[str, Json]:
    """Each pass config's schema by its variant key: `kind`, or `kind/method` where the
    method is fixed by the config class."""
    passes = job_schema()["properties"]["passes"]["items"]
    found: dict[str, Json] = {}
    for option in passes.get("anyOf", [passes]):
        schema = _resolve(option)
        props = schema["properties"]
        key = props["kind"]["const"]
        if "const" in props.get("method", {}):
            key += "/" + props["method"]["const"]
        found[key] = schema
    return found


def variant_label(key: str) -> str:
    kind, _, method = key.partition("/")
    return f"{kind}: {method.replace('_', ' ')}" if method else kind


def name_of(path: Path) -> str:
    return ".".join(str(p) for p in path)


def dom_id(name: str) -> str:
    return "f-" + name.replace(".", "-").replace(":", "-")


def humanize(key: str) -> str:
    return key.replace("_", " ").capitalize()


# ---------------------------------------------------------------------------------------
# Values -> spec


@dataclass
class Converted:
    spec: Json
    #: Values that are not even the right kind of text (JSON that does not parse), by name.
    errors: dict[str, str] = field(default_factory=dict)


def measures_itself(values: Values) -> bool:
    """Whether the chain has a pass (an auto search) with which the job's own measuring
    sections are refused."""
    return any(
        values.get(f"passes.{index}.{VARIANT}", DEFAULT_VARIANT) in SELF_MEASURING
        for index in range(pass_count(values))
    )


def to_spec(values: Values) -> Converted:
    out = Converted(spec={})
    out.spec = _collect_object(job_schema(), (), values, out) or {}
    if measures_itself(values):
        # Kept in the form (switching the pass back brings them back), never sent.
        for key in MEASURING_SECTIONS:
            out.spec.pop(key, None)
    return out


def _collect_object(node: Json, path: Path, values: Values, out: Converted) -> Json | None:
    result: Json = {}
    for key, prop in node.get("properties", {}).items():
        value = _collect(prop, (*path, key), values, out)
        if value is not None:
            result[key] = value
    return result or None


def _collect(prop: Json, path: Path, values: Values, out: Converted) -> Any:
    node, _ = _unwrap(prop)
    widget = _widget(node, path)
    if widget == "passes":
        return [_collect_pass(index, values, out) for index in range(pass_count(values))] or None
    if widget == "group":
        return _collect_object(node, path, values, out)
    if widget == "const":
        return None  # fixed by the schema (the spec version): the API fills it in
    name = name_of(path)
    raw = values.get(name, "").strip()
    if not raw:
        return None
    if widget == "bool":
        return {"true": True, "false": False}.get(raw, raw)
    if widget == "int":
        return _number(raw, int)
    if widget == "number":
        return _number(raw, float)
    if widget == "select":
        return next((v for v in node["enum"] if str(v) == raw), raw)
    if widget == "numbers":
        kind = int if _resolve(node["items"]).get("type") == "integer" else float
        return [_number(p.strip(), kind) for p in raw.replace("\n", ",").split(",") if p.strip()]
    if widget == "lines":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    if widget == "json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            out.errors[name] = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            return None
    return raw


def _number(raw: str, kind: type[int] | type[float]) -> Any:
    # Text that is not a number goes to the API's validation as it is: its message says so.
    try:
        return kind(raw)
    except ValueError:
        return raw


def _collect_pass(index: int, values: Values, out: Converted) -> Json:
    variant = values.get(f"passes.{index}.{VARIANT}", DEFAULT_VARIANT)
    schema = pass_variants().get(variant)
    kind, _, method = variant.partition("/")
    if schema is None:
        return {"kind": kind, **({"method": method} if method else {})}
    tags = {
        key: prop["const"]
        for key, prop in schema["properties"].items()
        if key in ("kind", "method") and "const" in prop
    }
    return tags | (_collect_object(schema, ("passes", index), values, out) or {})


def pass_count(values: Values) -> int:
    count = 0
    while f"passes.{count}.{VARIANT}" in values:
        count += 1
    return count


# ---------------------------------------------------------------------------------------
# Spec -> values


@dataclass
class Loaded:
    values: Values
    #: Parts of the spec that have no place in the form (a typo, an unknown key), by path.
    left_out: list[str] = field(default_factory=list)


def from_spec(spec: Any) -> Loaded:
    out = Loaded(values={})
    if isinstance(spec, dict):
        _spread_object(job_schema(), (), spec, out)
    else:
        out.left_out.append("(the spec is not a JSON object)")
    return out


def _spread_object(node: Json, path: Path, data: Json, out: Loaded) -> None:
    props = node.get("properties", {})
    for key, value in data.items():
        if key not in props:
            out.left_out.append(name_of((*path, key)))
            continue
        _spread(props[key], (*path, key), value, out)


def _spread(prop: Json, path: Path, value: Any, out: Loaded) -> None:
    node, _ = _unwrap(prop)
    widget = _widget(node, path)
    name = name_of(path)
    if value is None:
        return
    if widget == "passes":
        if not isinstance(value, list):
            out.left_out.append(name)
            return
        for index, item in enumerate(value):
            _spread_pass(index, item, out)
        return
    if widget == "group":
        if isinstance(value, dict):
            _spread_object(node, path, value, out)
        else:
            out.left_out.append(name)
        return
    if widget == "const":
        return
    if widget == "bool" and isinstance(value, bool):
        out.values[name] = "true" if value else "false"
    elif widget in ("numbers", "lines") and isinstance(value, list):
        separator = ", " if widget == "numbers" else "\n"
        out.values[name] = separator.join(_text(v) for v in value)
    elif widget == "json":
        out.values[name] = json.dumps(value, indent=2)
    else:
        out.values[name] = _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _spread_pass(index: int, item: Any, out: Loaded) -> None:
    path: Path = ("passes", index)
    if not isinstance(item, dict):
        out.values[f"passes.{index}.{VARIANT}"] = DEFAULT_VARIANT
        out.left_out.append(name_of(path))
        return
    kind, method = str(item.get("kind", "")), item.get("method")
    variant = f"{kind}/{method}" if f"{kind}/{method}" in pass_variants() else kind
    out.values[f"passes.{index}.{VARIANT}"] = variant
    schema = pass_variants().get(variant)
    if schema is None:
        out.left_out.append(name_of(path))
        return
    rest = {
        k: v
        for k, v in item.items()
        if not (k in ("kind", "method") and "const" in schema["properties"].get(k, {}))
    }
    _spread_object(schema, path, rest, out)


# ---------------------------------------------------------------------------------------
# Changing the chain of passes


def _pass_values(values: Values, index: int) -> Values:
    prefix = f"passes.{index}."
    return {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}


def reorder_passes(values: Values, order: list[int | None]) -> Values:
    """Values with the passes in `order` (old indexes; None is a new pass)."""
    kept = {k: v for k, v in values.items() if not k.startswith("passes.")}
    for new, old in enumerate(order):
        moved = {VARIANT: DEFAULT_VARIANT} if old is None else _pass_values(values, old)
        kept.update({f"passes.{new}.{k}": v for k, v in moved.items()})
    return kept


def change_chain(values: Values, action: str) -> tuple[Values, str | None]:
    """Applies `add`, `remove:N`, `up:N` or `down:N`; returns the values and the name of
    the control to focus afterwards."""
    count = pass_count(values)
    order: list[int | None] = list(range(count))
    verb, _, arg = action.partition(":")
    index = int(arg) if arg.isdigit() else -1
    focus: int | None = None
    if verb == "add":
        order.append(None)
        focus = count
    elif verb == "remove" and 0 <= index < count:
        order.pop(index)
        focus = min(index, count - 2) if count > 1 else None
    elif verb == "up" and 0 < index < count:
        order[index - 1], order[index] = order[index], order[index - 1]
        focus = index - 1
    elif verb == "down" and 0 <= index < count - 1:
        order[index + 1], order[index] = order[index], order[index + 1]
        focus = index + 1
    elif verb == "retype" and 0 <= index < count:
        focus = index
    return reorder_passes(values, order), (None if focus is None else f"passes.{focus}.{VARIANT}")


# ---------------------------------------------------------------------------------------
# The form's controls


@dataclass
class Control:
    name: str
    label: str
    widget: str
    value: str
    hint: str = ""
    required: bool = False
    options: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def id(self) -> str:
        return dom_id(self.name)

    @property
    def hint_html(self) -> Markup:
        return rich(self.hint)


@dataclass
class Group:
    name: str
    legend: str
    hint: str = ""
    children: list[Control | Group] = field(default_factory=list)
    error: str | None = None
    #: A pass of the chain: its position and how many there are (for its buttons).
    pass_index: int | None = None
    pass_total: int = 0
    is_chain: bool = False
    #: An object the spec may leave out: shown folded until something in it is filled in.
    optional: bool = False
    #: Why this section does not apply to the job as composed (it is not sent): its values
    #: are carried along unseen, so changing the passes back restores them.
    omitted: str | None = None

    @property
    def id(self) -> str:
        return dom_id(self.name or "spec")

    @property
    def hint_html(self) -> Markup:
        return rich(self.hint)

    @property
    def carried(self) -> list[Control]:
        """Its controls that have a value (what an omitted section carries along unseen)."""
        return [
            node
            for node in walk(self)
            if isinstance(node, Control) and node.value and node.widget != "const"
        ]

    @property
    def filled(self) -> bool:
        """Whether anything in it has a value or an error (then it is shown unfolded)."""
        return any(
            node.error is not None or (isinstance(node, Control) and bool(node.value))
            for node in walk(self)
            if not (isinstance(node, Control) and node.widget == "const")
        )


@dataclass
class Choices:
    """What the pickers offer: the project's own models and datasets, as (id, label)."""

    models: list[tuple[str, str]]
    datasets: list[tuple[str, str]]


def build_form(values: Values, choices: Choices) -> Group:
    root = Group(name="", legend="Job")
    _build_object(job_schema(), (), values, choices, root)
    if measures_itself(values):
        for child in root.children:
            if isinstance(child, Group) and child.name in MEASURING_SECTIONS:
                child.omitted = (
                    f"{humanize(child.name)}: not sent with an auto pass. The search measures "
                    "every trial itself; its dataset, metric, max drop and batch size say what "
                    "to measure."
                )
    return root


def _build_object(node: Json, path: Path, values: Values, choices: Choices, group: Group) -> None:
    required = set(node.get("required", []))
    properties: Json = node.get("properties", {})
    if not path:
        first = {k: properties[k] for k in _TOP_ORDER if k in properties}
        properties = first | properties
    for key, prop in properties.items():
        is_tag = len(path) == 2 and path[0] == "passes" and key in ("kind", "method")
        if is_tag and "const" in _resolve(prop):
            continue  # chosen by the pass's variant picker
        group.children.append(_build(prop, (*path, key), values, choices, required=key in required))


def _hint(node: Json, widget: str) -> str:
    parts = [node.get("description", "")]
    default = node.get("default")
    if widget == "numbers" or widget == "lines":
        parts.append("Comma-separated." if widget == "numbers" else "One per line.")
        choices = _resolve(node.get("items", {})).get("enum")
        if choices:
            parts.append("Any of: " + ", ".join(f"`{c}`" for c in choices) + ".")
    if widget == "json":
        parts.append("JSON.")
    if default is not None and widget not in ("select", "bool", "group"):
        parts.append(f"Default: {_text(default) if not isinstance(default, list) else default}.")
    return " ".join(p for p in parts if p)


def _build(
    prop: Json, path: Path, values: Values, choices: Choices, *, required: bool
) -> Control | Group:
    node, nullable = _unwrap(prop)
    widget = _widget(node, path)
    name = name_of(path)
    key = str(path[-1])
    if widget == "passes":
        return _build_chain(node, values, choices)
    if widget == "group":
        group = Group(
            name=name,
            legend=humanize(key) + ("" if required else " (optional)"),
            hint=node.get("description", ""),
            optional=nullable,
        )
        _build_object(node, path, values, choices, group)
        return group
    picker = widget == "text" and key in MODEL_FIELDS | DATASET_FIELDS
    control = Control(
        name=name,
        label=humanize(key.removesuffix("_id") if picker else key),
        widget=widget,
        value=values.get(name, ""),
        hint=_hint(node, widget),
        required=required and "default" not in node,
    )
    if widget == "const":
        control.value = _text(node["const"])
    elif key in MODEL_FIELDS and widget == "text":
        control.widget = "select"
        control.options = _pick(choices.models, control.value, "a model", required)
    elif key in DATASET_FIELDS and widget == "text":
        control.widget = "select"
        control.options = _pick(choices.datasets, control.value, "a dataset", required)
    elif widget == "select":
        default = node.get("default")
        blank = f"default ({default})" if default is not None else "not set"
        if "default" not in node and not nullable:
            blank = "choose…"
        control.options = [("", blank)] + [(str(v), str(v)) for v in node["enum"]]
        control.options += _unknown(control.value, control.options)
    elif widget == "bool":
        default = node.get("default")
        blank = f"default ({_text(default)})" if default is not None else "not set"
        control.widget = "select"
        control.options = [("", blank), ("true", "yes"), ("false", "no")]
        control.options += _unknown(control.value, control.options)
    return control


def _unknown(value: str, options: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A value typed elsewhere (JSON, a link) that the list does not offer stays selected,
    so the API's message about it has something to point at."""
    if value and value not in {v for v, _ in options}:
        return [(value, f"{value} (not one of the choices)")]
    return []


def _pick(
    found: list[tuple[str, str]], value: str, noun: str, required: bool
) -> list[tuple[str, str]]:
    options = [("", f"choose {noun}…" if required else "none"), *found]
    if value and value not in {v for v, _ in found}:
        options.append((value, f"{value} (not in this project)"))
    return options


def _build_chain(node: Json, values: Values, choices: Choices) -> Group:
    chain = Group(
        name="passes",
        legend="Passes, in order",
        hint="Each pass works on the model the pass before it made.",
        is_chain=True,
    )
    total = pass_count(values)
    for index in range(total):
        variant = values.get(f"passes.{index}.{VARIANT}", DEFAULT_VARIANT)
        schema = pass_variants().get(variant)
        group = Group(
            name=f"passes.{index}",
            legend=f"Pass {index + 1}",
            hint=(schema or {}).get("description", ""),
            pass_index=index,
            pass_total=total,
        )
        options = [(key, variant_label(key)) for key in pass_variants()]
        group.children.append(
            Control(
                name=f"passes.{index}.{VARIANT}",
                label="Pass",
                widget="select",
                value=variant,
                hint="Choosing another kind shows its options: the form comes back with "
                "everything typed so far kept. With the keyboard, choose with the arrow "
                "keys, then press Enter.",
                options=options + _unknown(variant, options),
                required=True,
            )
        )
        if schema is not None:
            _build_object(schema, ("passes", index), values, choices, group)
        chain.children.append(group)
    return chain


def walk(group: Group) -> list[Control | Group]:
    """Every group and control of the form, depth first."""
    found: list[Control | Group] = [group]
    for child in group.children:
        found.extend(walk(child) if isinstance(child, Group) else [child])
    return found


# ---------------------------------------------------------------------------------------
# Errors next to their fields


@dataclass
class FieldError:
    message: str
    #: The control or group it belongs to (a DOM id), or None for the form as a whole.
    target: str | None = None
    label: str = ""


def place_errors(
    form: Group, errors: list[tuple[list[str | int], str]], *, prefix: str = ""
) -> list[FieldError]:
    """Puts each (loc, message) on the deepest control or group its loc names. A loc's
    parts the form has no element for (the pass union's tags `quantize`, `static`) are
    skipped; `body` (the API's request part) is dropped."""
    by_name = {node.name: node for node in walk(form)}
    placed: list[FieldError] = []
    for loc, message in errors:
        parts = [p for p in loc if p != "body"]
        found: Control | Group | None = None
        current: list[str | int] = []
        for part in parts:
            candidate = name_of((*current, part))
            if candidate in by_name:
                current.append(part)
                found = by_name[candidate]
        text = prefix + message
        if found is None or found is form:
            placed.append(FieldError(text))
            continue
        found.error = text if found.error is None else f"{found.error}; {text}"
        label = found.label if isinstance(found, Control) else found.legend
        placed.append(FieldError(text, target=found.id, label=label))
    return placed
