"""Offline stand-in for what the API server does with a custom resource under our CRD's schema.

Used by the unit tests of the CRD and of the examples, so that schema and CEL mistakes show up
without a control plane (the integration tests then check the real API server agrees):

* :func:`prune_nulls_and_default` — nulls in fields that are not ``nullable`` are dropped, then
  ``default`` values are filled in, top-down (the API server's order: prune, default, validate);
* :func:`schema_errors` — JSON Schema validation (OpenAPI 3.0 is draft 4 plus ``nullable``),
  strict: a field the schema does not know is an error, as with ``kubectl --validate=strict``;
* :func:`cel_errors` — every ``x-kubernetes-validations`` rule evaluated with PyPI
  ``cel-python`` at its place in the object, ``self`` typed from the schema as Kubernetes types it
  (``number`` is a double even when written as ``1``; a null field is absent).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

Schema = Mapping[str, Any]


def crd_schema(crd: Mapping[str, Any]) -> Schema:
    """The ``openAPIV3Schema`` of the CRD's storage version."""
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def prune_nulls_and_default(schema: Schema, value: Any) -> Any:
    """A copy of ``value`` with non-nullable nulls removed and defaults applied."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: Schema, value: Any) -> None:
    if isinstance(value, dict) and "properties" in schema:
        props: Mapping[str, Schema] = schema["properties"]
        for key in list(value):
            if value[key] is None and key in props and not props[key].get("nullable"):
                del value[key]
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(sub, value[key])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), Mapping):
        for item in value.values():
            _default(schema["additionalProperties"], item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


def to_json_schema(schema: Schema) -> dict[str, Any]:
    """Draft-4 JSON Schema of a structural schema, closed where the API server would prune."""
    out: dict[str, Any] = {}
    for key, val in schema.items():
        if key in ("properties",):
            out[key] = {k: to_json_schema(v) for k, v in val.items()}
        elif key in ("items",) or (key == "additionalProperties" and isinstance(val, Mapping)):
            out[key] = to_json_schema(val)
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = val
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def schema_errors(schema: Schema, value: Any) -> list[str]:
    """Every JSON Schema violation, as ``path: message`` (empty when valid)."""
    validator = jsonschema.Draft4Validator(to_json_schema(schema))
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text or "."


def to_cel(schema: Schema, value: Any) -> Any:
    """``value`` as a CEL value typed by ``schema`` (what the API server's CEL sees)."""
    kind = schema.get("type")
    if kind == "integer":
        return celtypes.IntType(value)
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "string":
        return celtypes.StringType(value)
    if kind == "boolean":
        return celtypes.BoolType(value)
    if kind == "array":
        return celtypes.ListType([to_cel(schema["items"], item) for item in value])
    if kind == "object" and "properties" in schema:
        props: Mapping[str, Schema] = schema["properties"]
        return celtypes.MapType(
            {
                celtypes.StringType(k): to_cel(props[k], v) if k in props else celpy.json_to_cel(v)
                for k, v in value.items()
                if v is not None
            }
        )
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(schema["additionalProperties"], v) for k, v in value.items()}
        )
    return celpy.json_to_cel(value)


def rules(schema: Schema, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every CEL rule of the schema with the path of the node it sits on."""
    for rule in schema.get("x-kubernetes-validations", ()):
        yield path, rule
    for key, sub in (schema.get("properties") or {}).items():
        yield from rules(sub, f"{path}.{key}")
    if "items" in schema:
        yield from rules(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from rules(schema["additionalProperties"], f"{path}[*]")


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def evaluate(rule: str, self_value: Any) -> bool:
    """One rule on one (CEL-typed) value; an evaluation error counts as a failed rule, as it
    does in the API server (which reports the error instead of the message)."""
    program = _PROGRAMS.get(rule)
    if program is None:
        program = _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    try:
        result = program.evaluate({"self": self_value})
    except celpy.CELEvalError:
        return False
    return bool(result) if isinstance(result, celtypes.BoolType) else False


def cel_errors(schema: Schema, value: Any, path: str = "") -> list[tuple[str, str]]:
    """``(path of the field, message)`` of every failed rule, depth first (the value must already
    be defaulted: the API server evaluates rules on the defaulted object)."""
    if value is None:
        return []
    failed: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", ()):
        if not evaluate(rule["rule"], to_cel(schema, value)):
            failed.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                failed += cel_errors(sub, value[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, item in value.items():
                failed += cel_errors(extra, item, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            failed += cel_errors(schema["items"], item, f"{path}[{i}]")
    return failed


def validate(schema: Schema, obj: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(schema errors, CEL failures)`` of a whole custom resource, after pruning and defaulting.
    CEL runs only on a schema-valid object (the API server skips rules of invalid fields)."""
    defaulted = prune_nulls_and_default(schema, obj)
    errors = schema_errors(schema, defaulted)
    return errors, ([] if errors else cel_errors(schema, defaulted))
