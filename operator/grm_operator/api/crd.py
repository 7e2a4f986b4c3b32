"""The GRMDeployment CustomResourceDefinition, generated from the API models.

pydantic writes JSON Schema (draft 2020-12); the API server wants a *structural* OpenAPI v3.0
schema. :func:`structural_schema` bridges the two, node by node:

* every ``$ref`` is inlined (structural schemas have no references) and ``title`` dropped;
* ``anyOf: [X, {type: null}]`` (an ``Optional`` field) becomes ``X`` with ``nullable: true``;
* ``additionalProperties: false`` (``extra="forbid"``) is dropped: the API server prunes unknown
  fields instead, and ``kubectl --validate=strict`` reports them; ``additionalProperties: true``
  on a free-form ``dict[str, Any]`` becomes ``x-kubernetes-preserve-unknown-fields: true``;
  ``dict[str, str]`` keeps ``additionalProperties: {type: string}``;
* draft-2020 ``exclusiveMinimum: n`` becomes OpenAPI 3.0's ``minimum: n, exclusiveMinimum: true``;
* a field whose default is a model built by a factory (``scaling``, ``precision``, …) gets that
  model's defaulted wire form as ``default`` so that an omitted section is materialised by the
  API server: CEL rules such as ``self.minReplicas <= self.maxReplicas`` read defaulted values
  (the API server checks a default against the CEL rules as written, so ``{}`` would not do);
* our own ``x-grm-*`` markers are removed (the API server rejects unknown schema keywords).

``x-kubernetes-validations`` (the CEL rules) pass through unchanged from the models'
``json_schema_extra``. The result is what ``grm-operator crd`` prints and what is committed
under ``crds/`` (a unit test regenerates and diffs it; ``make crd`` rewrites it).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .models import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    GRMDeploymentSpec,
    GRMDeploymentStatus,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = f"{GROUP}_{PLURAL}.yaml"
"""File name under ``crds/`` (kubebuilder's ``<group>_<plural>.yaml``)."""

SPEC_REPLICAS_PATH = ".spec.scaling.replicas"
STATUS_REPLICAS_PATH = ".status.replicas"
LABEL_SELECTOR_PATH = ".status.selector"

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {
        "name": "Variant",
        "type": "string",
        "jsonPath": ".status.activeVariant",
        "description": "Variant serving traffic.",
    },
    {
        "name": "Replicas",
        "type": "integer",
        "jsonPath": ".status.replicas",
        "description": "Pods of the active variant.",
    },
    {
        "name": "Ready",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Ready pods of the active variant.",
    },
    {
        "name": "Desired",
        "type": "integer",
        "jsonPath": ".status.desiredReplicas",
        "description": "Replicas the operator wants.",
    },
    {
        "name": "TTFT-P95",
        "type": "number",
        "jsonPath": ".status.observed.ttftP95",
        "description": "Observed 95th-percentile time to first token, seconds.",
    },
    {
        "name": "SLO",
        "type": "string",
        "jsonPath": ".status.slo",
        "description": "The latency targets in short form.",
    },
    {
        "name": "Gate",
        "type": "string",
        "jsonPath": ".status.gate",
        "description": "The quality gate per variant: Admitted, Rejected (measured agreement's lower "
        "bound below minQuality), Building, Evaluating or Pending.",
    },
    {
        "name": "Mode",
        "type": "string",
        "jsonPath": ".spec.scaling.mode",
        "description": "Scaling mode: Auto, Manual or External.",
        "priority": 1,
    },
    {
        "name": "Samples",
        "type": "integer",
        "jsonPath": ".status.samples",
        "description": "GRM sample budget pushed to the workers.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)
"""``kubectl get grmd`` columns; priority 1 ones only with ``-o wide``."""

# Keywords a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps that we use).
_PASS_THROUGH = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
)


class CRDSchemaGenerator(GenerateJsonSchema):
    """pydantic's JSON Schema generator, with the defaulted object for model-valued default factories."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                json_schema = self.generate_inner(schema["schema"])
                # The whole defaulted object, not {}: the API server checks a default against the
                # CEL rules as written, before the defaults of its own fields would fill it in.
                default = value.model_dump(by_alias=True, exclude_none=True, mode="json")
                return {**json_schema, "default": default}
        return super().default_schema(schema)


class SchemaError(ValueError):
    """The models' JSON Schema uses a construct that has no structural equivalent."""


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with a ``$ref`` (or a one-element ``allOf``) merged in; siblings win."""
    merged = dict(node)
    ref = merged.pop("$ref", None)
    if ref is None and isinstance(merged.get("allOf"), list) and len(merged["allOf"]) == 1:
        ref_node = merged.pop("allOf")[0]
        return {**_resolve(ref_node, defs), **merged}
    if ref is None:
        return merged
    name = str(ref).rsplit("/", 1)[-1]
    if name not in defs:
        raise SchemaError(f"unresolvable $ref {ref}")
    return {**_resolve(defs[name], defs), **merged}


NEVER_NULL = frozenset({SPEC_REPLICAS_PATH})
"""Optional fields that must not be ``nullable``: the API server reads the scale subresource's
spec replicas as an int64 and rejects an object holding ``replicas: null`` there ("accessor
error: <nil> is of the type <nil>"). Not nullable, a null is pruned before validation instead,
which is what pydantic's ``None`` means anyway: unset."""


def structural_schema(node: Mapping[str, Any], defs: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """The structural OpenAPI v3.0 form of one pydantic JSON Schema node (see the module doc);
    ``path`` is the node's place in the object (``.spec.scaling.replicas``)."""
    src = _resolve(node, defs)
    nullable = False
    if "anyOf" in src:
        options = [o for o in src.pop("anyOf") if o != {"type": "null"}]
        if len(options) != 1:
            raise SchemaError(f"{path or '/'}: a union other than Optional[X] is not structural")
        nullable = path not in NEVER_NULL
        src = {**_resolve(options[0], defs), **src}
    if "const" in src:
        src["enum"] = [src.pop("const")]
    if "enum" in src and "type" not in src:
        kinds = {type(v) for v in src["enum"]}
        if kinds != {str}:
            raise SchemaError(f"{path}: only string enums are supported")
        src["type"] = "string"

    out: dict[str, Any] = {}
    for key in _PASS_THROUGH:
        if key in src:
            # Copies: a model used twice (lastDecision, decisions[]) must not share lists, or
            # YAML would print anchors and a caller editing one place would edit both.
            out[key] = copy.deepcopy(src[key])
    if out.get("default", 0) is None:
        del out["default"]  # null defaults are the absence of a value
    for bound in ("Minimum", "Maximum"):
        exclusive = src.get(f"exclusive{bound}")
        if exclusive is not None:
            out[bound.lower()] = exclusive
            out[f"exclusive{bound}"] = True
    if nullable:
        out["nullable"] = True

    kind = out.get("type")
    if kind == "object":
        props = src.get("properties")
        if props:
            out["properties"] = {k: structural_schema(v, defs, f"{path}.{k}") for k, v in props.items()}
        extra = src.get("additionalProperties")
        if isinstance(extra, Mapping):
            out["additionalProperties"] = structural_schema(extra, defs, f"{path}[*]")
        elif extra is True and not props:
            out["x-kubernetes-preserve-unknown-fields"] = True
        if "properties" not in out and "additionalProperties" not in out:
            # A structural object must say what it holds; an open dict keeps everything.
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        if "items" not in src:
            raise SchemaError(f"{path}: an array needs items")
        out["items"] = structural_schema(src["items"], defs, f"{path}[*]")
    elif kind is None:
        raise SchemaError(f"{path or '/'}: no type ({sorted(src)})")
    return _ordered(out)


_KEY_ORDER = {
    key: i
    for i, key in enumerate(
        (
            *("description", "type", "default", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"),
            *_PASS_THROUGH,
            *("additionalProperties", "properties", "items"),
        )
    )
}


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Keys in a stable reading order: description and type first, then constraints, then children."""
    return dict(sorted(node.items(), key=lambda kv: (_KEY_ORDER.get(kv[0], len(_KEY_ORDER)), kv[0])))


def model_schema(model: type[BaseModel], path: str) -> dict[str, Any]:
    """The structural schema of one model (its ``$defs`` inlined) found at ``path`` (``.spec``)."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=CRDSchemaGenerator)
    defs = raw.pop("$defs", {})
    return structural_schema(raw, defs, path)


def openapi_schema() -> dict[str, Any]:
    """The whole ``openAPIV3Schema`` of the GRMDeployment resource."""
    spec = model_schema(GRMDeploymentSpec, ".spec")
    status = model_schema(GRMDeploymentStatus, ".status")
    return {
        "description": "GRMDeployment serves a generative reward model elastically: precision "
        "variants along a quality ladder, latency SLOs, and replica and GPU bounds.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object.",
                "type": "string",
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource of this object.",
                "type": "string",
            },
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def build_crd() -> dict[str, Any]:
    """The GRMDeployment CustomResourceDefinition (apiextensions.k8s.io/v1) as a plain dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "grm-operator", "app.kubernetes.io/part-of": "grm-elastic"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": SPEC_REPLICAS_PATH,
                            "statusReplicasPath": STATUS_REPLICAS_PATH,
                            "labelSelectorPath": LABEL_SELECTOR_PATH,
                        },
                    },
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                }
            ],
        },
    }


HEADER = (
    "# Generated by `grm-operator crd` (make crd) from grm_operator/api/models.py. Do not edit by hand.\n"
)


def render_yaml(crd: Mapping[str, Any] | None = None) -> str:
    """The CRD as the YAML document committed under ``crds/`` (header comment included)."""
    body = yaml.safe_dump(
        dict(build_crd() if crd is None else crd), sort_keys=False, allow_unicode=True, width=100
    )
    return HEADER + "---\n" + body


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``grm-operator crd`` takes no arguments; it prints to stdout."""
    parser.add_argument(
        "-o", "--output", default="-", help="file to write instead of stdout ('-', the default, is stdout)"
    )


def command(args: argparse.Namespace) -> int:
    """Print (or write) the CRD as YAML."""
    text = render_yaml()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 0
