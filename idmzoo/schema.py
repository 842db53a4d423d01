"""JSON Schemas of the spec and of each block's parameters, built from the live registry.

:class:`~idmzoo.spec.Spec` validates a block field by looking its ``type`` up in the
registry at validation time, so its own JSON Schema can only say "an object".  Here every
block field becomes the union of the parameter schemas of every block registered for its
kind (built-ins and installed plugins alike), discriminated on ``type``: editors can
then complete block names and check each block's parameters while a spec is typed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter

from .registry import BLOCK_KINDS, REGISTRY, BlockInfo, BlockRegistry
from .spec import Spec

__all__ = ["JSON_SCHEMA_DIALECT", "ParameterDoc", "block_parameters", "block_schema", "spec_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class ParameterDoc:
    """One parameter of a block, as ``idmzoo describe`` shows it.

    Attributes:
        name: the key in the spec's block object.
        type: the JSON type, with its constraints (``integer > 0``, ``integer > 0 | null``).
        default: the default as JSON text, or ``None`` when the parameter is required.
        description: the ``Field(description=...)`` of the parameter.
    """

    name: str
    type: str
    default: str | None
    description: str


def _describe_type(schema: dict[str, Any]) -> str:
    """A JSON Schema fragment as a short type string: ``integer >= 1 | null``."""
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "anyOf" in schema or "oneOf" in schema:
        return " | ".join(_describe_type(option) for option in schema.get("anyOf", schema.get("oneOf")))
    if "$ref" in schema:
        return schema["$ref"].rpartition("/")[2]
    text = schema.get("type", "any")
    if text == "array" and isinstance(schema.get("items"), dict):
        text = f"array of {_describe_type(schema['items'])}"
    bounds = {"exclusiveMinimum": ">", "minimum": ">=", "exclusiveMaximum": "<", "maximum": "<="}
    for key, symbol in bounds.items():
        if key in schema:
            text += f" {symbol} {schema[key]}"
    return text


def block_parameters(info: BlockInfo) -> list[ParameterDoc]:
    """The parameters of a registered block (everything but ``type``), in declaration order.

    Args:
        info: the block, e.g. ``idmzoo.get_block("norm", "group_norm32")``.

    Returns:
        One :class:`ParameterDoc` per parameter.
    """
    properties = info.params.model_json_schema()["properties"]
    docs = []
    for name, field in info.params.model_fields.items():
        if name == "type":
            continue
        default = None if field.is_required() else json.dumps(properties[name].get("default"))
        docs.append(ParameterDoc(name, _describe_type(properties[name]), default, field.description or ""))
    return docs


def _kind_union(infos: list[BlockInfo]) -> Any:
    """``{"type": name, ...}`` of any of ``infos`` (discriminated on ``type``), or a bare name."""
    members = tuple(info.params for info in infos)
    union = Union[members]  # noqa: UP007 - the members are only known at run time
    objects = union if len(members) == 1 else Annotated[union, Field(discriminator="type")]
    return Union[objects, Literal[tuple(info.name for info in infos)]]  # noqa: UP007


def block_schema(kind: str, registry: BlockRegistry = REGISTRY) -> dict[str, Any]:
    """The JSON Schema of one block field of ``kind``: any registered block's parameters.

    The schema is an ``anyOf`` of the objects (a ``oneOf`` with a ``discriminator`` on
    ``type`` when there are several blocks) and the string shorthand ``"<name>"``.  Its
    ``$defs`` are keyed ``<kind>.<model>`` so the kinds can share one document.

    Args:
        kind: one of :data:`~idmzoo.registry.BLOCK_KINDS`.
        registry: where the blocks are registered.

    Returns:
        A JSON Schema dict, with its ``$defs``.

    Raises:
        UnknownBlockError: ``kind`` is not a block kind.
    """
    infos = registry.list(kind)
    if not infos:
        return {"type": "object", "properties": {"type": {"type": "string"}}, "required": ["type"]}
    schema = TypeAdapter(_kind_union(infos)).json_schema(ref_template=f"#/$defs/{kind}.{{model}}")
    defs = {f"{kind}.{name}": definition for name, definition in schema.pop("$defs", {}).items()}
    by_name = {info.name: info for info in infos}
    for definition in defs.values():
        info = by_name.get(definition.get("properties", {}).get("type", {}).get("default"))
        if info is not None:  # one block's parameter object: say which block, require its name
            definition["title"] = f"{kind} block {info.name}"
            definition["description"] = f"{info.description} (from {info.package})"
            definition["required"] = ["type", *definition.get("required", [])]
    objects = schema["anyOf"][0]
    if "$ref" in objects:  # one block: still a discriminated oneOf, so every kind reads alike
        mapping = {key: objects["$ref"] for key in (infos[0].name, infos[0].qualified_name)}
        schema["anyOf"][0] = {
            "oneOf": [objects],
            "discriminator": {"propertyName": "type", "mapping": mapping},
        }
    return {**schema, "$defs": defs}


def _partial(kind: str, name: str | None, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of a block object without ``type``: parameters of block ``name`` (any block if ``None``)."""
    if name is not None:
        for definition in defs.values():
            if definition.get("title") == f"{kind} block {name}":
                properties = {k: v for k, v in definition.get("properties", {}).items() if k != "type"}
                return {
                    "type": "object",
                    "properties": properties,
                    "additionalProperties": False,
                    "description": f"Parameters of the default {kind} block {name!r}, without type: "
                    "the others keep their defaults.",
                }
    return {
        "type": "object",
        "not": {"required": ["type"]},
        "minProperties": 1,
        "description": f"Parameters without type: the {kind} block chosen so far at each place keeps "
        "its type and other parameters, and is validated with these at each place.",
    }


def _describe_overrides(schema: dict[str, Any], options: dict[str, list[dict[str, Any]]]) -> None:
    """Fill in the override entry's block fields and ``at`` selector (pydantic can only say "any")."""
    override = schema["$defs"].get("Override")
    if override is not None:
        for kind, field in override["properties"].items():
            if kind in options:
                partial = _partial(kind, None, schema["$defs"])
                kept = {key: field[key] for key in ("default", "description") if key in field}
                override["properties"][kind] = {"anyOf": [*options[kind], partial, {"type": "null"}], **kept}
        override["minProperties"] = 2
    at = schema["$defs"].get("At")
    if at is not None:
        level = at["properties"]["level"]
        level["anyOf"] = [{"type": "integer", "minimum": 0}, *level["anyOf"]]
        at["minProperties"] = 1


def spec_schema(registry: BlockRegistry = REGISTRY) -> dict[str, Any]:
    """The JSON Schema of a spec file, including the parameters of every registered block.

    Every block field, and every block of an ``overrides`` entry, is any registered
    block of its kind, its name alone, or an object of parameters without ``type``.

    Args:
        registry: where the blocks are registered (the global registry, plugins included).

    Returns:
        A JSON Schema (draft 2020-12) dict; ``idmzoo schema`` prints it.

    Examples:
        >>> json.dump(idmzoo.spec_schema(), open("idmzoo-spec.schema.json", "w"))
    """
    schema = Spec.model_json_schema()
    defs: dict[str, Any] = {}
    options_of: dict[str, list[dict[str, Any]]] = {}
    for kind in BLOCK_KINDS:
        field = schema["properties"].get(kind)
        if field is None:
            continue
        kind_schema = block_schema(kind, registry)
        defs.update(kind_schema.pop("$defs", {}))
        options = options_of[kind] = kind_schema.get("anyOf", [kind_schema])
        default = field.get("default")
        partial = [_partial(kind, default["type"], defs)] if isinstance(default, dict) else []
        if {"type": "null"} in field.get("anyOf", []):
            partial.append({"type": "null"})
        kept = {key: field[key] for key in ("default", "description") if key in field}
        schema["properties"][kind] = {"anyOf": [*options, *partial], **kept}
    schema["$defs"] = {**{k: v for k, v in schema.get("$defs", {}).items() if k != "BlockParams"}, **defs}
    _describe_overrides(schema, options_of)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}
