"""The quality gate: only admitted variants are rungs of the ladder, at their measured quality,
in the operator's adapter, its actuation and the simulator alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from grm_operator.control.actuation import Intent, VariantDeployment, plan
from grm_operator.handlers.policy_adapter import PodCounts, decide_intent
from grm_operator.metrics import Reading
from grm_operator.policy import gate
from grm_operator.simulator.cli import load_spec
from grm_operator.simulator.fleet import SimConfig
from grm_operator.simulator.report import run_policies
from grm_operator.simulator.trace import Trace
from support.policy import BASE, make_signals, make_spec

NOW = 10_000.0
MEASURED = {"qualityPolicy": "Measured", "minQuality": 0.97}


def entry(name: str, state: str, value: float | None = None, low: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "gate": state}
    if value is not None:
        out["quality"] = {"value": value, "low": low if low is not None else value, "high": 1.0, "items": 400}
    return out


def test_declared_admits_every_variant_at_its_declared_quality() -> None:
    spec = make_spec()
    assert gate.admitted_qualities(spec, None) == {"bf16": 1.0, "fp8": 0.995, "int4": 0.97}
    assert gate.ladder_spec(spec, None) is spec
    assert gate.summary(spec, None) is None


def test_measured_admits_the_reference_and_variants_whose_lower_bound_clears_the_floor() -> None:
    spec = make_spec(precision=MEASURED)
    status = [
        entry("fp8", "Admitted", 0.985, 0.972),
        entry("int4", "Rejected", 0.975, 0.941),  # the point estimate passes, the bound does not
    ]
    ladder = gate.ladder_spec(spec, status)
    assert [(v.name, v.quality) for v in ladder.variants] == [("bf16", 1.0), ("fp8", 0.985)]
    assert gate.summary(spec, status) == "fp8=Admitted(0.972) int4=Rejected(0.941)"
    # Nothing measured yet: the reference alone.
    assert [v.name for v in gate.ladder_spec(spec, None).variants] == ["bf16"]
    assert gate.summary(spec, None) == "fp8=Pending int4=Pending"


def test_a_floor_raised_after_admission_takes_the_variant_off_at_once() -> None:
    spec = make_spec(precision={**MEASURED, "minQuality": 0.98})
    assert "fp8" not in gate.admitted_qualities(spec, [entry("fp8", "Admitted", 0.985, 0.972)])


def test_a_pin_on_a_variant_the_gate_has_not_admitted_stays_on_the_reference() -> None:
    spec = make_spec(precision={**MEASURED, "policy": "Pinned", "pinnedVariant": "fp8"})
    assert gate.ladder_spec(spec, [entry("fp8", "Evaluating")]).precision.pinned_variant == "bf16"
    admitted = gate.ladder_spec(spec, [entry("fp8", "Admitted", 0.99, 0.98)])
    assert admitted.precision.pinned_variant == "fp8"


def _overloaded_intent(precision: dict[str, Any], variants: list[dict[str, Any]] | None) -> Intent:
    # bf16 cannot hold the load within maxGPUs (2 of its 4 replicas unscheduled for 10 minutes):
    # with Declared qualities the policy switches to fp8 (test_policy_adapter.py).
    total = make_signals(4.0, pods=2, e2e_p95=30.0, ttft_p95=2.0, waiting=20.0, sample_age_s=1.0)
    status: dict[str, Any] = {"activeVariant": "bf16", "samples": 8}
    if variants is not None:
        status["variants"] = variants
    return decide_intent(
        spec=make_spec(precision=precision),
        status=status,
        reading=Reading(total=total, variants={"bf16": total}),
        pods={"bf16": PodCounts(ready=2, pending=2, pending_since=(NOW - 600.0,) * 2)},
        deployments={"bf16": VariantDeployment(desired=4, replicas=4, ready=2, pending=2)},
        now=NOW,
    )


def test_the_policy_never_switches_to_a_variant_the_gate_did_not_admit() -> None:
    assert _overloaded_intent({**MEASURED, "qualityPolicy": "Declared"}, None).variant == "fp8"
    assert _overloaded_intent(MEASURED, [entry("fp8", "Admitted", 0.99, 0.98)]).variant == "fp8"
    for state in ("Pending", "Building", "Evaluating", "Rejected"):
        intent = _overloaded_intent(MEASURED, [entry("fp8", state, 0.96, 0.93), entry("int4", state)])
        assert intent.variant == "bf16", (state, intent.reason)


def test_a_serving_variant_that_leaves_the_ladder_is_switched_away_from_by_surge() -> None:
    spec = make_spec(precision=MEASURED)
    status = {"activeVariant": "fp8", "samples": 8, "variants": [entry("fp8", "Rejected", 0.9, 0.88)]}
    deployments = {"bf16": VariantDeployment(), "fp8": VariantDeployment(3, 3, 3)}
    intent = decide_intent(
        spec=spec,
        status=status,
        reading=None,
        pods={"fp8": PodCounts(ready=3, pending=0)},
        deployments=deployments,
        now=NOW,
    )
    assert (intent.action, intent.variant) == ("SwitchVariant", "bf16")
    step = plan(
        spec=spec,
        generation=1,
        status=status,
        deployments=deployments,
        observed=None,
        metrics_error=None,
        intent=intent,
        now=NOW,
    )
    assert step.status["switch"]["to"] == "bf16" and step.scale.get("bf16", 0) >= 1
    assert "fp8" not in step.scale  # fp8 serves until bf16 is Ready: no request dropped


def test_actuation_starts_no_switch_towards_a_variant_off_the_ladder() -> None:
    spec = make_spec(precision=MEASURED)
    wish = Intent(action="SwitchVariant", reason="test", replicas=2, variant="fp8", samples=8)
    for variants in ([entry("fp8", "Rejected", 0.9, 0.88)], [entry("fp8", "Admitted", 0.99, 0.98)]):
        step = plan(
            spec=spec,
            generation=1,
            status={"activeVariant": "bf16", "variants": variants},
            deployments={"bf16": VariantDeployment(2, 2, 2), "fp8": VariantDeployment()},
            observed=None,
            metrics_error=None,
            intent=wish,
            now=NOW,
        )
        started = step.status["switch"] is not None
        assert started is (variants[0]["gate"] == "Admitted")


def test_the_simulator_never_runs_a_rejected_variant(tmp_path: Path) -> None:
    # 6 GPUs cannot hold 2 score requests/s on bf16 at k = 8 (test_simulator.py's tight budget):
    # the ladder moves to fp8 when fp8 is admitted, and never when its measurement rejected it.
    n = 1800
    trace = Trace(
        np.arange(n, dtype=np.float64) / 2.0,
        np.full(n, 1000, np.int64),
        np.full(n, 200, np.int64),
        "constant",
    )

    def fp8_replicas(status: dict[str, Any] | None) -> int:
        doc: dict[str, Any] = {
            "apiVersion": "grm.dev/v1alpha1",
            "kind": "GRMDeployment",
            "metadata": {"name": "sim"},
            "spec": {
                **BASE,
                "variants": BASE["variants"][:2],
                "scaling": {"minReplicas": 1, "maxReplicas": 6, "maxGPUs": 6},
                "precision": MEASURED,
                "slo": {"ttftP95": "10s", "e2eP95": "60s"},
            },
        }
        if status is not None:
            doc["status"] = status
        path = tmp_path / "grmd.yaml"
        path.write_text(yaml.safe_dump(doc))
        result = run_policies(SimConfig(spec=load_spec(path), trace=trace), ["grm"], progress=False)["grm"]
        return max(p.replicas.get("fp8", 0) for p in result.series)

    assert fp8_replicas(None) > 0  # no measurement in the manifest: declared as measured
    assert fp8_replicas({"variants": [entry("fp8", "Admitted", 0.99, 0.98)]}) > 0
    assert fp8_replicas({"variants": [entry("fp8", "Rejected", 0.95, 0.93)]}) == 0
