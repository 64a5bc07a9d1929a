"""The JSON schema of an experiment config (``transmodal config schema``), with every installed component's
parameters, so that an editor completes and checks them.

The pydantic model knows a component only as ``{name, ...any other keys}``; here each place that names a component
becomes a choice among the installed components of its kind, each with ``name`` fixed and its own parameters
(their types, bounds, defaults and descriptions), no other key allowed. Plugins are discovered as for
``transmodal components``: nothing heavy is imported.
"""

from __future__ import annotations

import json
from typing import Any

from transmodal.config import Experiment

# (the model holding the field in the schema's $defs, or None for the top level; the field; how the component
# spec sits in it; the kinds it may name)
COMPONENT_FIELDS: tuple[tuple[str | None, str, str, tuple[str, ...]], ...] = (
    ("DataConfig", "dataset", "value", ("dataset",)),
    ("DataConfig", "tokenizer", "value", ("tokenizer",)),
    ("ModelConfig", "encoders", "additionalProperties", ("encoder", "backbone")),
    ("ModelConfig", "fusion", "value", ("fusion",)),
    ("ModelConfig", "head", "value", ("head",)),
    (None, "adaptation", "items", ("strategy",)),
    (None, "validator", "value", ("validator",)),
)


def experiment_schema(plugins: Any) -> dict[str, Any]:
    schema = Experiment.model_json_schema()
    definitions = schema["$defs"]
    for owner, field, place, kinds in COMPONENT_FIELDS:
        name = "".join(kind.capitalize() for kind in kinds) + "Component"
        if name not in definitions:
            definitions[name] = _choices(plugins, kinds, definitions)
        properties = (schema if owner is None else definitions[owner])["properties"]
        reference = {"$ref": f"#/$defs/{name}"}
        if place == "value":
            properties[field] = {**{k: v for k, v in properties[field].items() if k != "$ref"}, **reference}
        else:
            properties[field][place] = reference
    definitions.pop("ComponentSpec", None)
    return schema


def _choices(plugins: Any, kinds: tuple[str, ...], definitions: dict[str, Any]) -> dict[str, Any]:
    options = []
    for kind in kinds:
        for component in plugins.registry(kind).components.values():
            params = _merge_definitions(component.params.model_json_schema(ref_template="#/$defs/{model}"),
                                        f"{kind}.{component.name}", definitions)
            options.append({
                "type": "object",
                "title": f"{kind} {component.name}",
                "description": component.description,
                "properties": {"name": {"const": component.name, "description": component.description},
                               **params.get("properties", {})},
                "required": ["name", *params.get("required", [])],
                "additionalProperties": False,
            })
    return {"description": f"One of the installed {' or '.join(kinds)} components, by name, with its parameters.",
            "anyOf": options}


def _merge_definitions(params: dict[str, Any], owner: str, definitions: dict[str, Any]) -> dict[str, Any]:
    """Move the parameter model's own definitions (nested models, enums) into the schema's; one whose name another
    component already uses differently is renamed after its owner, and the references to it follow."""
    own = params.pop("$defs", {})
    renamed = {key: f"{owner}.{key}" for key, definition in own.items()
               if key in definitions and _canonical(definitions[key]) != _canonical(definition)}
    if renamed:
        text = json.dumps({"params": params, "defs": own})
        for key, new in renamed.items():
            text = text.replace(json.dumps(f"#/$defs/{key}"), json.dumps(f"#/$defs/{new}"))
        moved = json.loads(text)
        params, own = moved["params"], moved["defs"]
    for key, definition in own.items():
        definitions[renamed.get(key, key)] = definition
    return params


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
