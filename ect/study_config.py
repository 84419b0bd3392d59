"""The workflow config as a user gives it, made ready for the schema: what the Snakefile runs before validating.

Snakemake reads ``--config KEY=VALUE`` values below the top level as strings (``budgets=[150,300]`` gives
``['150', '300']``), a ``--configfile`` replaces the embedded default here (so a partial one misses keys), and
jsonschema reports an error with the whole schema. These functions coerce such strings to the schema's types where
that is unambiguous, and turn every problem into one line naming the key. Plain Python, testable without Snakemake.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ect.study import StudyError

# JSON-schema type name -> the Python values that satisfy it (bool is not a number here, as in jsonschema).
_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _resolve(schema: dict, root: dict) -> dict:
    """Follow a local ``$ref`` (``#/$defs/name``), merging the referring schema's own keys over it."""
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _types(schema: dict) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _coerce(value: Any, schema: dict, root: dict) -> Any:
    schema = _resolve(schema, root)
    types = _types(schema)
    if isinstance(value, str) and types and "string" not in types and "enum" not in schema:
        parsed = yaml.safe_load(value) if value.strip() else None
        if any(_TYPES[t](parsed) for t in types):  # '150' -> 150 for an integer; 'abc' stays and fails validation
            return _coerce(parsed, schema, root)
        return value
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _coerce(v, properties[k], root) if k in properties
                else _coerce(v, extra, root) if isinstance(extra, dict) else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(v, schema["items"], root) for v in value]
    return value


def coerce(config: dict, schema: dict) -> dict:
    """``config`` with every string the schema wants as a number, boolean, null or list parsed as YAML, where the
    parsed value has that type (``--config 'budgets=[150,300]'`` -> [150, 300]). Strings the schema allows stay."""
    return _coerce(config, schema, schema)


def check_required(config: dict, schema: dict, configfiles: Sequence[str]) -> None:
    """A ``--configfile`` replaces the embedded default: a file without a required key is meant to layer over it."""
    missing = [key for key in schema.get("required", []) if key not in config]
    if missing and configfiles:
        given = " ".join(map(str, configfiles))
        raise StudyError(f"config: {missing[0]!r} is missing from --configfile {given}, which replaces config.yaml; "
                         f"to change only some keys, layer yours over it: --configfile config.yaml {given}")


def error_line(error: Any) -> str:
    """One line for a jsonschema ValidationError: the key's dotted path and what is wrong, never the schema."""
    path = ".".join(str(p) for p in error.absolute_path)
    detail = " ".join(error.message.replace("Additional properties are not allowed", "unknown key").split())
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return f"config {path}: {detail}" if path else f"config: {detail}"


def check_ablation_values(axes: dict) -> None:
    """An ablation value names a run directory (ablations/<axis>=<value>): it must stay a single path component."""
    for axis, spec in axes.items():
        for value in spec["values"]:
            text = str(value)
            if "/" in text or "\\" in text or ".." in text or "=" in text or not text.strip():
                raise StudyError(f"config ablations.axes.{axis}.values: {text!r} cannot name a run directory "
                                 f"(ablations/{axis}=<value>): no '/', '\\', '..' or '=' and not empty")
