"""The GRMDeployment pydantic models: defaults, wire names, durations and every cross-field rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from grm_operator.api import models as m
from grm_operator.api.durations import format_duration, parse_duration
from support.paths import EXAMPLES


def minimal_spec() -> dict[str, Any]:
    """The smallest valid spec (wire form): one variant and one SLO target."""
    return {
        "model": {"name": "tiny", "uri": "hf://org/tiny"},
        "variants": [{"name": "bf16", "precision": "bf16", "quality": 1.0}],
        "slo": {"ttftP95": "500ms"},
    }


def errors_of(spec: dict[str, Any]) -> list[str]:
    """pydantic's messages for ``spec`` ("Value error, " stripped), [] when it is valid."""
    try:
        m.GRMDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        return [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
    return []


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_of_a_minimal_spec() -> None:
    spec = m.GRMDeploymentSpec.model_validate(minimal_spec())
    assert spec.scaling.mode == "Auto"
    assert spec.scaling.replicas is None
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas) == (1, 8)
    assert spec.scaling.max_gpus is None
    assert spec.scaling.scale_up_stabilization == "0s"
    assert spec.scaling.scale_down_stabilization == "5m"
    assert spec.scaling.control_period == "15s"
    assert spec.precision.policy == "Auto"
    assert spec.precision.min_quality == 0.0
    assert spec.precision.switch_cooldown == "10m"
    assert (spec.scoring.samples.min, spec.scoring.samples.max) == (1, 8)
    assert spec.scoring.early_exit == "Exact"
    assert spec.scoring.sampling == "Shuffled"
    assert spec.scoring.critique_tokens == 300
    assert spec.metrics.source is None and spec.metrics.window == "1m"
    assert spec.rollout.switch_timeout == "10m"
    assert spec.rollout.drain_seconds == 60
    assert spec.rollout.unhealthy_backoff == "30m"
    assert spec.template.model_cache.size_limit == "200Gi"
    assert spec.template.model_cache.claim_name is None
    variant = spec.variants[0]
    assert variant.gpus_per_replica == 1 and variant.uri is None and variant.engine is None
    assert spec.model.credentials_secret_ref is None


def test_secret_key_defaults_to_token() -> None:
    spec = minimal_spec()
    spec["model"]["credentialsSecretRef"] = {"name": "hf"}
    parsed = m.GRMDeploymentSpec.model_validate(spec)
    assert parsed.model.credentials_secret_ref is not None
    assert parsed.model.credentials_secret_ref.key == "token"


def test_profile_attention_default() -> None:
    spec = minimal_spec()
    spec["variants"][0]["profile"] = {
        "stepOverheadMs": 8,
        "prefillMsPerToken": 0.05,
        "decodeMsPerSequence": 0.1,
        "kvCacheTokens": 200000,
    }
    profile = m.GRMDeploymentSpec.model_validate(spec).variants[0].profile
    assert profile is not None and profile.attention_us_per_context_token == 0.16


def test_max_gpus_defaults_to_max_replicas_times_largest_variant() -> None:
    spec = minimal_spec()
    spec["variants"].append({"name": "fp8", "precision": "fp8", "quality": 0.99, "gpusPerReplica": 2})
    spec["scaling"] = {"maxReplicas": 5}
    assert m.GRMDeploymentSpec.model_validate(spec).max_gpus() == 10
    spec["scaling"]["maxGPUs"] = 7
    assert m.GRMDeploymentSpec.model_validate(spec).max_gpus() == 7


def test_admissible_variants_keep_spec_order_above_the_floor() -> None:
    spec = minimal_spec()
    spec["variants"] += [
        {"name": "fp8", "precision": "fp8", "quality": 0.99},
        {"name": "int4", "precision": "awq-int4", "quality": 0.9, "uri": "hf://org/tiny-awq"},
    ]
    spec["precision"] = {"minQuality": 0.95}
    parsed = m.GRMDeploymentSpec.model_validate(spec)
    assert [v.name for v in parsed.admissible_variants()] == ["bf16", "fp8"]
    assert parsed.variant("int4").precision == "awq-int4"
    with pytest.raises(KeyError):
        parsed.variant("nope")


# --- wire format --------------------------------------------------------------------------------


def test_wire_names_round_trip() -> None:
    spec = minimal_spec()
    spec["slo"] = {"ttftP95": "500ms", "itlP95": "50ms", "e2eP95": "20s"}
    spec["scaling"] = {"maxGPUs": 4, "mode": "Manual", "replicas": 2}
    spec["metrics"] = {"prometheusURL": "http://prom:9090"}
    wire = m.GRMDeploymentSpec.model_validate(spec).to_wire()
    assert wire["slo"] == {"ttftP95": "500ms", "itlP95": "50ms", "e2eP95": "20s"}
    assert wire["scaling"]["maxGPUs"] == 4
    assert wire["metrics"]["prometheusURL"] == "http://prom:9090"
    assert "replicas" in wire["scaling"] and "ttft_p95" not in wire["slo"]
    # Parsing the wire form again gives the same object.
    assert m.GRMDeploymentSpec.model_validate(wire).to_wire() == wire


def test_unknown_fields_are_rejected() -> None:
    spec = minimal_spec()
    spec["scaling"] = {"maxReplica": 3}
    assert any("Extra inputs are not permitted" in e for e in errors_of(spec))


def test_decision_and_switch_use_from_and_to_on_the_wire() -> None:
    decision = m.Decision.model_validate(
        {
            "time": "2026-01-01T00:00:00Z",
            "action": "SwitchVariant",
            "from": "bf16",
            "to": "fp8",
            "reason": "r",
        }
    )
    assert (decision.from_variant, decision.to_variant) == ("bf16", "fp8")
    assert decision.to_wire()["from"] == "bf16"


def test_every_example_parses() -> None:
    paths = sorted(EXAMPLES.glob("grmd-*.yaml"))
    assert paths
    for path in paths:
        docs = [
            d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") == m.KIND
        ]
        assert docs, f"{path.name} holds no GRMDeployment"
        for doc in docs:
            m.GRMDeployment.model_validate(doc)


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("20s", 20.0), ("1m30s", 90.0), ("2h", 7200.0), ("1.5s", 1.5), ("0s", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 s", "-1s", "1d", "1us", "s", "1m30"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.0, 0.5, 1.0, 20.0, 90.0, 3600.0, 5400.0, 1.5])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_duration_is_short() -> None:
    assert format_duration(0.5) == "500ms"
    assert format_duration(90) == "1m30s"
    assert format_duration(7200) == "2h"
    assert format_duration(0) == "0s"


def test_duration_fields_validate_and_convert() -> None:
    spec = minimal_spec()
    spec["slo"] = {"ttftP95": "1m30s", "e2eP95": "20s"}
    slo = m.GRMDeploymentSpec.model_validate(spec).slo
    assert slo.ttft_p95_s == 90.0 and slo.e2e_p95_s == 20.0 and slo.itl_p95_s is None
    spec["slo"] = {"ttftP95": "half a second"}
    assert any("is not a duration" in e for e in errors_of(spec))
    spec["slo"] = {"ttftP95": "500ms"}
    spec["scaling"] = {"controlPeriod": "15"}
    assert any("is not a duration" in e for e in errors_of(spec))


# --- bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("variants", 0, "quality"), 0.0),
        (("variants", 0, "quality"), 1.01),
        (("variants", 0, "gpusPerReplica"), 0),
        (("variants", 0, "name"), "Bad_Name"),
        (("variants", 0, "precision"), "fp4"),
        (("model", "uri"), "ftp://x"),
        (("scaling", "maxReplicas"), 0),
        (("scaling", "mode"), "Sometimes"),
        (("precision", "minQuality"), 1.5),
        (("scoring", "samples", "max"), 65),
        (("engine", "gpuMemoryUtilization"), 1.0),
        (("metrics", "prometheusURL"), "prom:9090"),
    ],
)
def test_field_bounds(path: tuple[str | int, ...], value: Any) -> None:
    spec = minimal_spec()
    node: Any = spec
    for key in path[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    assert errors_of(spec), f"{path}={value!r} was accepted"


def test_variant_count_bounds() -> None:
    spec = minimal_spec()
    spec["variants"] = []
    assert errors_of(spec)
    spec["variants"] = [
        {"name": f"v{i}", "precision": "bf16", "quality": 1.0} for i in range(9)
    ]  # at most 8 rungs
    assert errors_of(spec)


# --- cross-field rules (each also a CEL rule: tests/unit/grm_operator/api/test_crd.py) ----------------------


def _with(**changes: Any) -> dict[str, Any]:
    spec = minimal_spec()
    for key, value in changes.items():
        spec[key] = copy.deepcopy(value)
    return spec


QUANTIZED = {"name": "int4", "precision": "awq-int4", "quality": 0.97}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_with(variants=[QUANTIZED]), m.MSG_QUANTIZED_URI),
        (_with(variants=[{**QUANTIZED, "precision": "int8"}]), m.MSG_QUANTIZED_URI),
        (_with(variants=[{**QUANTIZED, "precision": "gptq-int4"}]), m.MSG_QUANTIZED_URI),
        (_with(slo={}), m.MSG_SLO_EMPTY),
        (_with(scaling={"minReplicas": 5, "maxReplicas": 4}), m.MSG_MIN_MAX),
        (_with(scaling={"replicas": 9, "maxReplicas": 8}), m.MSG_REPLICAS_BOUNDS),
        (_with(scaling={"replicas": 1, "minReplicas": 2}), m.MSG_REPLICAS_BOUNDS),
        (_with(precision={"policy": "Pinned"}), m.MSG_PINNED_NEEDS_VARIANT),
        (_with(scoring={"samples": {"min": 4, "max": 2}}), m.MSG_SAMPLES_ORDER),
        (
            _with(variants=[{"name": "a", "precision": "bf16", "quality": 1}] * 2),
            m.MSG_UNIQUE_VARIANTS,
        ),
        (_with(precision={"policy": "Pinned", "pinnedVariant": "fp8"}), m.MSG_PINNED_EXISTS),
        (_with(precision={"pinnedVariant": "fp8"}), m.MSG_PINNED_EXISTS),
        (
            _with(
                variants=[{"name": "fp8", "precision": "fp8", "quality": 0.9}], precision={"minQuality": 0.95}
            ),
            m.MSG_QUALITY_FLOOR,
        ),
    ],
)
def test_cross_field_rule_rejects(spec: dict[str, Any], message: str) -> None:
    assert errors_of(spec) == [message]


@pytest.mark.parametrize(
    "spec",
    [
        _with(variants=[{**QUANTIZED, "uri": "pvc://models/grm-awq"}]),
        _with(slo={"itlP95": "50ms"}),
        _with(slo={"e2eP95": "20s"}),
        _with(scaling={"minReplicas": 3, "maxReplicas": 3}),
        _with(scaling={"minReplicas": 0, "maxReplicas": 3, "replicas": 0}),
        _with(scaling={"mode": "Manual", "replicas": 8}),
        _with(precision={"policy": "Pinned", "pinnedVariant": "bf16"}),
        _with(scoring={"samples": {"min": 3, "max": 3}}),
        _with(precision={"minQuality": 1.0}),
    ],
)
def test_cross_field_rule_accepts_the_boundary(spec: dict[str, Any]) -> None:
    assert errors_of(spec) == []
