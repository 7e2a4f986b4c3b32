"""grm_operator.telemetry.deployment_metrics: per-GRMDeployment series from the spec and status."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from grm_operator.telemetry import deployment_metrics as telemetry


def body(status: dict[str, Any] | None = None, name: str = "reward") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "rl", "name": name},
        "spec": {
            "variants": [
                {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
                {"name": "fp8", "precision": "fp8", "quality": 0.99},
            ],
            "slo": {"ttftP95": "500ms", "e2eP95": "20s"},
        },
        "status": status or {},
    }


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"namespace": "rl", "grmdeployment": "reward", **labels}.items()))


STATUS = {
    "activeVariant": "bf16",
    "samples": 4,
    "variants": [
        {"name": "bf16", "replicas": 3, "readyReplicas": 2, "desiredReplicas": 3},
        {"name": "fp8", "replicas": 1, "readyReplicas": 0, "desiredReplicas": 2},
    ],
    "observed": {"rps": 11.5, "ttftP95": 0.62, "e2eP95": 9.8},
    "switch": {"from": "bf16", "to": "fp8", "phase": "Surging"},
    "conditions": [
        {"type": "SLOMet", "status": "False", "reason": "TTFTAboveSLO"},
        {"type": "Ready", "status": "True", "reason": "ReplicasReady"},
        {"type": "MetricsAvailable", "status": "Unknown", "reason": "Starting"},
    ],
}


def test_snapshot_reads_spec_and_status() -> None:
    snap = telemetry.snapshot(body(STATUS))
    assert snap.conditions == {"SLOMet": False, "Ready": True}  # Unknown is left out
    assert snap.switching and snap.active_variant == "bf16" and snap.samples == 4
    assert snap.gpus == {"bf16": 6, "fp8": 1}
    assert snap.slo_seconds == {"ttftP95": 0.5, "e2eP95": 20.0}
    assert snap.observed_seconds == {"ttftP95": 0.62, "e2eP95": 9.8}
    assert snap.observed_rps == 11.5


def test_snapshot_tolerates_odd_bodies() -> None:
    snap = telemetry.snapshot(
        {
            "metadata": {"namespace": "rl", "name": "x"},
            "spec": {"slo": {"ttftP95": "soon"}, "variants": [{"name": "a", "gpusPerReplica": "two"}]},
            "status": {"observed": {"rps": True, "ttftP95": "fast"}, "conditions": [{"status": "True"}]},
        }
    )
    assert snap.slo_seconds == {} and snap.observed_rps is None and snap.observed_seconds == {}
    assert snap.conditions == {} and snap.gpus == {"a": 0}
    assert telemetry.snapshot({}).name == ""
    assert telemetry.snapshot({"spec": {"scaling": {"maxGPUs": "many"}}}).max_gpus is None


def test_max_gpus_is_the_specs_gpu_budget() -> None:
    with_budget = body()
    with_budget["spec"]["scaling"] = {"maxReplicas": 4, "maxGPUs": 6}
    assert telemetry.snapshot(with_budget).max_gpus == 6
    with_budget["spec"]["scaling"] = {"maxReplicas": 4}
    assert telemetry.snapshot(with_budget).max_gpus == 8


def test_exposition_series_and_values() -> None:
    registry = CollectorRegistry()
    fleet = telemetry.FleetMetrics(registry, clock=lambda: 50.0)
    fleet.observe(body(STATUS))
    got = samples(registry)
    assert got[key("grm_operator_condition", condition="SLOMet")] == 0
    assert got[key("grm_operator_condition", condition="Ready")] == 1
    assert key("grm_operator_condition", condition="MetricsAvailable") not in got
    assert got[key("grm_operator_switch_in_progress")] == 1
    assert got[key("grm_operator_active_variant", variant="bf16")] == 1
    assert got[key("grm_operator_variant_replicas", variant="fp8")] == 1
    assert got[key("grm_operator_variant_ready_replicas", variant="bf16")] == 2
    assert got[key("grm_operator_variant_desired_replicas", variant="fp8")] == 2
    assert got[key("grm_operator_variant_gpus", variant="bf16")] == 6
    # No scaling block: maxReplicas' default 8 × the largest gpusPerReplica (2).
    assert got[key("grm_operator_max_gpus")] == 16
    assert got[key("grm_operator_slo_seconds", objective="ttftP95")] == 0.5
    assert got[key("grm_operator_observed_seconds", signal="e2eP95")] == 9.8
    assert got[key("grm_operator_observed_rps")] == 11.5
    assert got[key("grm_operator_sample_budget")] == 4
    assert {name for name, _ in got} == set(telemetry.METRIC_NAMES)


def test_gpu_seconds_integrate_between_updates() -> None:
    now = [100.0]
    registry = CollectorRegistry()
    fleet = telemetry.FleetMetrics(registry, clock=lambda: now[0])
    fleet.observe(body(STATUS))  # bf16 3 pods × 2 GPUs, fp8 1 × 1 from t=100
    now[0] = 160.0
    got = samples(registry)
    assert got[key("grm_operator_gpu_seconds_total", variant="bf16")] == 6 * 60
    assert got[key("grm_operator_gpu_seconds_total", variant="fp8")] == 1 * 60
    # At t=160 the switch finished: fp8 runs 2 pods, bf16 none. 30 s later:
    fleet.observe(body({"variants": [{"name": "bf16", "replicas": 0}, {"name": "fp8", "replicas": 2}]}))
    now[0] = 190.0
    got = samples(registry)
    assert got[key("grm_operator_gpu_seconds_total", variant="bf16")] == 360
    assert got[key("grm_operator_gpu_seconds_total", variant="fp8")] == 60 + 2 * 30
    # The counter never decreases, even if the clock steps back.
    now[0] = 180.0
    assert samples(registry)[key("grm_operator_gpu_seconds_total", variant="fp8")] >= 120


def test_forget_removes_every_series_of_the_object() -> None:
    registry = CollectorRegistry()
    fleet = telemetry.FleetMetrics(registry, clock=lambda: 0.0)
    fleet.observe(body(STATUS))
    fleet.observe(body(STATUS, name="other"))
    fleet.forget("rl", "reward")
    assert {dict(labels)["grmdeployment"] for _, labels in samples(registry)} == {"other"}


async def test_event_handler_observes_and_forgets() -> None:
    from grm_operator.handlers import fleetmetrics, runtime

    assert fleetmetrics.register in runtime.HANDLER_MODULES
    registry = CollectorRegistry()
    fleet = telemetry.FleetMetrics(registry, clock=lambda: 0.0)
    handler = fleetmetrics.event_handler(fleet)
    await handler(event={"type": "ADDED", "object": body(STATUS)})
    assert samples(registry)[key("grm_operator_condition", condition="SLOMet")] == 0
    await handler(event={"type": None, "object": body({**STATUS, "conditions": []})})  # kopf's listing
    assert not [n for n, _ in samples(registry) if n == "grm_operator_condition"]
    await handler(event={"type": "DELETED", "object": body(STATUS)})
    assert samples(registry) == {}
