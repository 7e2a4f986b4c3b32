"""The fault proxy's pure decision logic: which requests a rule hits, how often, with what
probability, and the Status body an injected error carries."""

from __future__ import annotations

import pytest

from grm_testkit.cluster.faultplan import FaultPlan, FaultRule, status_body
from grm_testkit.cluster.faultproxy import is_watch


def test_rule_matches_method_path_and_query() -> None:
    rule = FaultRule(method="patch", path=r"/deployments/", query=r"fieldManager=kopf")
    assert rule.matches("PATCH", "/apis/apps/v1/namespaces/a/deployments/x", "fieldManager=kopf")
    assert not rule.matches("GET", "/apis/apps/v1/namespaces/a/deployments/x", "fieldManager=kopf")
    assert not rule.matches("PATCH", "/api/v1/namespaces/a/pods/x", "fieldManager=kopf")
    assert not rule.matches("PATCH", "/apis/apps/v1/namespaces/a/deployments/x", "")


def test_times_limits_a_rule_then_requests_pass() -> None:
    plan = FaultPlan([FaultRule(method="POST", status=500, times=2)])
    decisions = [plan.decide("POST", "/api/v1/namespaces/a/configmaps", "") for _ in range(4)]
    assert [d.status for d in decisions] == [500, 500, None, None]
    assert plan.rules[0].fired == 2
    assert plan.decide("GET", "/x", "").status is None  # another method never fires it


def test_first_status_rule_wins_and_latencies_add() -> None:
    plan = FaultPlan(
        [
            FaultRule(latency_s=0.2),
            FaultRule(path="/configmaps", status=409, latency_s=0.1),
            FaultRule(path="/configmaps", status=500),
        ]
    )
    decision = plan.decide("PUT", "/api/v1/namespaces/a/configmaps/c", "")
    assert decision.status == 409
    assert decision.latency_s == pytest.approx(0.3)
    assert plan.rules[2].fired == 0
    slow = plan.decide("GET", "/api/v1/pods", "")
    assert slow.status is None and slow.latency_s == pytest.approx(0.2) and slow.injected


def test_probability_is_seeded_and_roughly_right() -> None:
    def run(seed: int) -> list[int | None]:
        plan = FaultPlan([FaultRule(status=500, probability=0.25)], seed=seed)
        return [plan.decide("GET", "/api", "").status for _ in range(2000)]

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    # Binomial(2000, 0.25): mean 500, sd ~19; 400..600 is over 5 sd either side.
    assert 400 < first.count(500) < 600


def test_invalid_rules_are_rejected() -> None:
    with pytest.raises(ValueError):
        FaultRule(probability=1.5)
    with pytest.raises(ValueError):
        FaultRule(status=200)
    with pytest.raises(ValueError):
        FaultRule(times=-1)


def test_watch_detection() -> None:
    assert is_watch("/api/v1/pods", "watch=true&resourceVersion=5")
    assert is_watch("/api/v1/pods", "labelSelector=a&watch=1")
    assert is_watch("/api/v1/watch/pods", "")
    assert not is_watch("/api/v1/pods", "watchCache=true")
    assert not is_watch("/api/v1/pods", "")


def test_status_body_is_a_kubernetes_status() -> None:
    conflict = status_body(409, "injected", "PUT", "/apis/apps/v1/namespaces/a/deployments/x")
    assert conflict["kind"] == "Status" and conflict["reason"] == "Conflict" and conflict["code"] == 409
    assert "the object has been modified" in str(conflict["message"])
    assert status_body(500, "boom", "GET", "/api")["reason"] == "InternalError"
    assert status_body(429, "slow down", "GET", "/api")["reason"] == "TooManyRequests"
