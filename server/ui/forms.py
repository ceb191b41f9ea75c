"""An endpoint's inputs as form fields, read from the JSON schema of its request body.

One description serves the playground's form (drawn by `static/kiln.js`), the compare page and
`kiln compare`, which reads `NAME=VALUE` text into each field's type. Only the OpenAPI document is
read, never the pipeline class, so a client holding nothing but the endpoint's published document
(the CLI) sees exactly the fields the server's pages show.

Kinds, from the schema alone:
- `boolean`, `integer`, `number` (with the schema's bounds), `enum` (a closed list of values);
- `image`: a string field named `*_url` (a URL, a data URI, or a file uploaded first);
- `images`: a list of strings named `*_urls`;
- `text` (a multi-line string: prompts), `string`, `strings` (any other list of strings);
- `json`: anything else (objects, unions of shapes), edited as JSON; a bare word is a string, and
  the named values of a union's enum are offered as `options`.
A field that also accepts null (`anyOf [..., null]`) is `nullable`: left empty, it is not sent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

SCHEMA_REF = "#/components/schemas/"
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
NULL_WORDS = frozenset({"null", "none", ""})
# strings longer than this are edited in a text area
LONG_STRING = 200


class SchemaError(LookupError):
    """The document has no submit route, or no JSON body, for the endpoint."""


class InputError(ValueError):
    """Text that cannot be read as a field's type."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class InputField:
    name: str
    kind: str
    title: str
    description: str = ""
    required: bool = False
    nullable: bool = False
    has_default: bool = False
    default: Any = None
    options: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    pattern: str | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The description the pages' JavaScript reads (unset limits left out)."""
        body = asdict(self)
        body["options"] = list(self.options)
        return {name: value for name, value in body.items() if value is not None or name == "default"}


def resolve(node: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """`node` with a `$ref` to a component schema replaced by that schema."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
        name = node["$ref"].removeprefix(SCHEMA_REF)
        node = document.get("components", {}).get("schemas", {}).get(name, {})
        seen += 1
    return node


def request_schema(document: dict[str, Any], endpoint_id: str) -> dict[str, Any]:
    """The JSON schema of the endpoint's submit body, in the server's OpenAPI document (`/queue/{id}`)
    or in the endpoint's own (`/{id}` under the queue base, as fal publishes it)."""
    endpoint_id = endpoint_id.strip("/")
    paths = document.get("paths", {})
    operation = (paths.get(f"/queue/{endpoint_id}") or paths.get(f"/{endpoint_id}") or {}).get("post")
    if operation is None:
        raise SchemaError(f"the OpenAPI document has no submit route for {endpoint_id}")
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        raise SchemaError(f"the submit route of {endpoint_id} takes no JSON body")
    return resolve(content.get("schema", {}), document)


def input_fields(document: dict[str, Any], endpoint_id: str) -> list[InputField]:
    """The endpoint's inputs, required ones first, otherwise in the schema's order."""
    schema = request_schema(document, endpoint_id)
    required = set(schema.get("required", ()))
    fields = [
        describe(name, prop, document, required=name in required) for name, prop in schema.get("properties", {}).items()
    ]
    return sorted(fields, key=lambda field: not field.required)


def describe(name: str, prop: dict[str, Any], document: dict[str, Any], *, required: bool) -> InputField:
    """One property of the request schema as a form field."""
    members = [resolve(member, document) for member in prop.get("anyOf", [prop])]
    nullable = any(member.get("type") == "null" for member in members)
    shapes = [member for member in members if member.get("type") != "null"]
    common = {
        "name": name,
        "title": prop.get("title") or name.replace("_", " ").capitalize(),
        "description": prop.get("description", ""),
        "required": required,
        "nullable": nullable,
        "has_default": "default" in prop,
        "default": prop.get("default"),
    }
    if len(shapes) != 1:
        # a union such as `enum | {width, height}`: edited as JSON (or a bare string), its named values suggested
        suggested = tuple(option for shape in shapes for option in shape.get("enum", ()))
        return InputField(kind="json", options=suggested, **common)
    shape = shapes[0]
    kind = shape.get("type")
    if "enum" in shape:
        return InputField(kind="enum", options=tuple(shape["enum"]), **common)
    if kind == "boolean":
        return InputField(kind="boolean", **common)
    if kind in ("integer", "number"):
        return InputField(
            kind=kind,
            minimum=shape.get("minimum"),
            maximum=shape.get("maximum"),
            exclusive_minimum=shape.get("exclusiveMinimum"),
            exclusive_maximum=shape.get("exclusiveMaximum"),
            **common,
        )
    if kind == "string":
        max_length = shape.get("maxLength")
        if name.endswith("_url"):
            string_kind = "image"
        elif "prompt" in name or (max_length or 0) > LONG_STRING:
            string_kind = "text"
        else:
            string_kind = "string"
        return InputField(kind=string_kind, pattern=shape.get("pattern"), max_length=max_length, **common)
    if kind == "array" and resolve(shape.get("items", {}), document).get("type") == "string":
        items = resolve(shape.get("items", {}), document)
        if "enum" not in items:
            return InputField(
                kind="images" if name.endswith("_urls") else "strings",
                min_items=shape.get("minItems"),
                max_items=shape.get("maxItems"),
                pattern=items.get("pattern"),
                **common,
            )
    return InputField(kind="json", **common)


def parse_value(field: InputField, text: str) -> Any:
    """`text` (a command-line or form value) as the JSON value `field` takes.

    Only the type is read here; bounds, patterns and enum membership are left to the server, whose
    422 names the field, so the CLI and the pages report one set of rules.
    """
    stripped = text.strip()
    if field.nullable and stripped.lower() in NULL_WORDS:
        return None
    if field.kind == "boolean":
        word = stripped.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise InputError(field.name, f"`{field.name}` takes true or false, not {text!r}")
    if field.kind in ("integer", "number"):
        try:
            return int(stripped)
        except ValueError:
            pass
        if field.kind == "number":
            try:
                return float(stripped)
            except ValueError:
                pass
        raise InputError(
            field.name, f"`{field.name}` takes {'an integer' if field.kind == 'integer' else 'a number'}, not {text!r}"
        )
    if field.kind == "enum":
        for option in field.options:
            if str(option) == stripped or json.dumps(option) == stripped:
                return option
        return text
    if field.kind in ("images", "strings"):
        if stripped.startswith("["):
            value = _json(field, stripped)
            if not isinstance(value, list):
                raise InputError(field.name, f"`{field.name}` takes a list, not {text!r}")
            return value
        return [text]
    if field.kind == "json":
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def _json(field: InputField, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise InputError(field.name, f"`{field.name}` takes JSON here: {error}") from None


def format_value(value: Any) -> str:
    """A value as a label shows it: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
