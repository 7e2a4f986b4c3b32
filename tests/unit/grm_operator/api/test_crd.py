"""The generated GRMDeployment CRD: committed copy up to date, structural, self-consistent
(printer columns and scale paths point at fields that exist with the right types, defaults pass
their own schema and CEL rules), accepted by kubernetes-validate --strict, and its CEL rules
agreeing with the pydantic validators on a table of invalid specs (evaluated with cel-python)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from grm_operator.api import crd as crdgen
from grm_operator.api import models
from grm_operator.api.durations import DURATION_PATTERN
from grm_operator.api.models import GRMDeployment
from support import crdcheck
from support.invalid_specs import BASE, CEL_CASES, SCHEMA_CASES, spec_with
from support.paths import REPO

ROOT = REPO
COMMITTED = ROOT / "crds" / crdgen.CRD_FILE
K8S_VERSION = "1.35.0"  # the control plane the tests build
CRD = crdgen.build_crd()
SCHEMA = crdcheck.crd_schema(CRD)

# Where free-form objects are genuinely needed: Kubernetes' own types (their schemas are the API
# server's, applied when the operator writes the Deployment) and the policy's opaque memory.
FREE_FORM = {
    ".spec.template.resources",
    ".spec.template.tolerations[*]",
    ".spec.template.topologySpreadConstraints[*]",
    ".spec.template.volumes[*]",
    ".spec.template.volumeMounts[*]",
    ".spec.template.affinity",
    ".spec.template.env[*].valueFrom",
    ".status.policyState",
}


def nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from nodes(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), Mapping):
        yield from nodes(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from nodes(schema["additionalProperties"], f"{path}[*]")


def at(path: str) -> Mapping[str, Any]:
    """The schema node of a JSON path such as ``.status.observed.ttftP95``."""
    node: Mapping[str, Any] = SCHEMA
    for part in path.strip(".").split("."):
        node = node["properties"][part]
    return node


# --- the committed file ----------------------------------------------------------------------


def test_committed_crd_matches_the_models() -> None:
    expected = crdgen.render_yaml()
    actual = COMMITTED.read_text() if COMMITTED.exists() else "(missing)"
    assert actual == expected, (
        f"{COMMITTED.relative_to(ROOT)} is stale: the API models changed. "
        "Run `make crd` and commit the result."
    )


def test_yaml_has_no_anchors() -> None:
    # Anchors (&id001) appear when two places share one Python object; valid YAML, but unreadable
    # in a CRD and a trap for tools that edit one place.
    assert not re.search(r"[&*]id\d{3}", crdgen.render_yaml())


def test_cli_prints_the_same_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    from grm_operator import cli

    assert cli.main(["crd"]) == 0
    assert capsys.readouterr().out == crdgen.render_yaml()
    assert list(yaml.safe_load_all(crdgen.render_yaml())) == [CRD]


# --- structural --------------------------------------------------------------------------------


def test_schema_is_structural() -> None:
    forbidden = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const", "examples"}
    for path, node in nodes(SCHEMA):
        assert not forbidden & set(node), f"{path}: {sorted(forbidden & set(node))}"
        assert "type" in node, f"{path}: no type"
        assert node.get("additionalProperties") not in (True, False), f"{path}: boolean additionalProperties"
        assert not any(k.startswith("x-grm") for k in node), f"{path}: private marker left in"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if node["type"] == "object" and path not in ("", ".metadata"):
            assert (
                node.get("properties")
                or node.get("additionalProperties")
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), f"{path}: an object that says nothing about its fields"


def test_preserve_unknown_fields_only_where_free_form_is_needed() -> None:
    free = {p for p, n in nodes(SCHEMA) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert free == FREE_FORM


def test_string_maps_keep_their_value_type() -> None:
    for path in (".spec.template.nodeSelector", ".spec.template.podLabels", ".spec.metrics.queries"):
        assert at(path)["additionalProperties"] == {"type": "string"}, path


def test_optional_fields_are_nullable_except_the_scale_replicas() -> None:
    assert at(".spec.model.revision")["nullable"] is True
    assert at(".spec.scaling.maxGPUs")["nullable"] is True
    assert at(".status.activeVariant")["nullable"] is True
    # A stored null there breaks the scale subresource (the API server reads it as int64).
    assert "nullable" not in at(".spec.scaling.replicas")
    assert "nullable" not in at(".spec.scaling.minReplicas")


def test_enums_bounds_and_patterns_come_from_the_models() -> None:
    assert at(".spec.scaling.mode")["enum"] == ["Auto", "Manual", "External"]
    assert at(".spec.scaling.mode")["default"] == "Auto"
    precision = SCHEMA["properties"]["spec"]["properties"]["variants"]["items"]["properties"]["precision"]
    assert precision["enum"] == ["bf16", "fp16", "fp8", "int8", "awq-int4", "gptq-int4"]
    quality = SCHEMA["properties"]["spec"]["properties"]["variants"]["items"]["properties"]["quality"]
    assert quality == {**quality, "minimum": 0.0, "exclusiveMinimum": True, "maximum": 1.0}
    assert at(".spec.slo.ttftP95")["pattern"] == DURATION_PATTERN
    assert at(".spec.variants")["maxItems"] == 8


def test_lists_and_strings_read_by_cel_are_bounded() -> None:
    # The API server estimates each rule's worst-case cost from maxItems/maxLength; unbounded
    # lists under spec make list macros (all/exists) too expensive to admit.
    for path, node in nodes(SCHEMA):
        if path.startswith(".spec") and node["type"] == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
    variant_name = SCHEMA["properties"]["spec"]["properties"]["variants"]["items"]["properties"]["name"]
    assert variant_name["maxLength"] == at(".spec.precision.pinnedVariant")["maxLength"] == 20


def test_nested_sections_default_to_their_defaulted_models() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert spec["scaling"]["default"] == models.Scaling().to_wire()
    assert spec["scaling"]["default"]["minReplicas"] == 1
    assert spec["template"]["default"] == {
        "modelCache": {"sizeLimit": "200Gi"},
        "automountServiceAccountToken": False,
    }
    for path, node in nodes(SCHEMA):
        if "default" in node:
            # The API server rejects a CRD whose default fails the schema or a CEL rule there.
            assert crdcheck.schema_errors(node, node["default"]) == [], path
            assert crdcheck.cel_errors(node, node["default"]) == [], path


def test_conditions_are_a_map_keyed_by_type() -> None:
    conditions = at(".status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


# --- names, subresources, printer columns --------------------------------------------------------


def test_names_and_scope() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == "grmdeployments.grm.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["grmd"]
    assert "categories" not in spec["names"], "kept out of `kubectl get all`"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]


def test_scale_subresource_paths_exist_with_the_right_types() -> None:
    scale = CRD["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.scaling.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert at(scale["specReplicasPath"])["type"] == "integer"
    assert at(scale["statusReplicasPath"])["type"] == "integer"
    assert at(scale["labelSelectorPath"])["type"] == "string"
    assert CRD["spec"]["versions"][0]["subresources"]["status"] == {}


def test_printer_columns_point_at_fields_of_their_type() -> None:
    columns = CRD["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"] for c in columns if not c.get("priority")]
    assert names == ["Variant", "Replicas", "Ready", "Desired", "TTFT-P95", "SLO", "Gate", "Age"]
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        assert at(column["jsonPath"])["type"] == column["type"], column["name"]


# --- kubernetes-validate -------------------------------------------------------------------------


def test_crd_passes_kubernetes_validate_strict() -> None:
    assert kubernetes_validate.validate(CRD, K8S_VERSION, strict=True) == "1.35"


def test_kubernetes_validate_strict_would_catch_a_misspelt_keyword() -> None:
    broken = copy.deepcopy(CRD)
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["maxItem"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- CEL rules and pydantic validators agree ---------------------------------------------------


def _pydantic_messages(body: Mapping[str, Any]) -> list[str]:
    try:
        GRMDeployment.model_validate(body)
    except ValidationError as exc:
        return [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
    return []


@pytest.mark.parametrize(("case", "mutate", "message", "field"), CEL_CASES, ids=[c[0] for c in CEL_CASES])
def test_cel_and_pydantic_reject_with_the_same_message(
    case: str, mutate: Any, message: str, field: str
) -> None:
    body = spec_with(mutate)
    assert _pydantic_messages(body) == [message]
    schema_errors, cel_failures = crdcheck.validate(SCHEMA, body)
    assert schema_errors == []
    assert cel_failures == [(field, message)]


def test_every_cel_rule_is_exercised_and_has_a_pydantic_twin() -> None:
    rule_messages = {rule["message"] for _, rule in crdcheck.rules(SCHEMA)}
    assert rule_messages == {c[2] for c in CEL_CASES}
    model_messages = {v for k, v in vars(models).items() if k.startswith("MSG_")}
    assert rule_messages == model_messages


def test_the_unmodified_example_passes_both() -> None:
    assert _pydantic_messages(BASE) == []
    assert crdcheck.validate(SCHEMA, BASE) == ([], [])


@pytest.mark.parametrize(("case", "mutate", "where"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_schema_and_pydantic_reject_out_of_bounds_values(case: str, mutate: Any, where: str) -> None:
    body = spec_with(mutate)
    assert _pydantic_messages(body), "pydantic accepted it"
    schema_errors, _ = crdcheck.validate(SCHEMA, body)
    assert schema_errors, "the CRD schema accepted it"
    assert any(e.startswith(where) for e in schema_errors), schema_errors


@settings(max_examples=200, deadline=None)
@given(
    low=st.integers(0, 12),
    high=st.integers(1, 12),
    replicas=st.one_of(st.none(), st.integers(0, 14)),
    smin=st.integers(1, 10),
    smax=st.integers(1, 10),
)
def test_scaling_and_samples_rules_agree_everywhere(
    low: int, high: int, replicas: int | None, smin: int, smax: int
) -> None:
    body = spec_with(
        lambda s: (
            s.update(scaling={"minReplicas": low, "maxReplicas": high, "replicas": replicas}),
            s.update(scoring={"samples": {"min": smin, "max": smax}}),
        )
    )
    schema_errors, cel_failures = crdcheck.validate(SCHEMA, body)
    assert schema_errors == []
    cel_messages = {m for _, m in cel_failures}
    pydantic_messages = set(_pydantic_messages(body))
    # Same verdict; pydantic stops at a model's first failed rule where the API server reports
    # every failed rule (min > max with replicas outside both bounds fails two), so ⊆, not ==.
    assert bool(cel_messages) == bool(pydantic_messages)
    assert pydantic_messages <= cel_messages


def test_messages_name_their_fields_as_the_api_server_reports_them() -> None:
    with_field = [(path, rule) for path, rule in crdcheck.rules(SCHEMA) if "fieldPath" in rule]
    assert with_field
    for path, rule in with_field:
        assert re.fullmatch(r"(\.[A-Za-z0-9]+)+", rule["fieldPath"]), (path, rule)


# Go's YAML 1.1 (sigs.k8s.io/yaml, what helm and kubectl parse the chart's CRD with) reads these
# bare words as booleans; PyYAML writes them unquoted. A property named `n` once made
# `helm install` fail: "cannot unmarshal bool into ... JSONSchemaProps.properties.required".
_YAML11_BOOLS = {
    "y",
    "Y",
    "n",
    "N",
    "yes",
    "Yes",
    "YES",
    "no",
    "No",
    "NO",
    "on",
    "On",
    "ON",
    "off",
    "Off",
    "OFF",
}


def test_no_property_name_is_a_yaml_1_1_boolean() -> None:
    def names(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            yield from (node.get("properties") or {}).keys()
            yield from node.get("required") or []
            for value in node.values():
                yield from names(value)
        elif isinstance(node, list):
            for value in node:
                yield from names(value)

    assert not set(names(crdgen.build_crd())) & _YAML11_BOOLS
