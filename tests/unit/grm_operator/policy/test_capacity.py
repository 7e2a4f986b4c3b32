"""Operating points, voting quality and per-replica capacity."""

from __future__ import annotations

import pytest

from grm_operator.policy.capacity import (
    Workload,
    operating_points,
    replica_capacity,
    sample_budgets,
    voting_accuracy,
)
from support.policy import make_spec


def test_voting_accuracy_follows_the_paper_points() -> None:
    assert voting_accuracy(1) == pytest.approx(67.9)
    assert voting_accuracy(8) == pytest.approx(70.6)
    assert voting_accuracy(32) == pytest.approx(71.0)
    # +0.9 points per doubling between 1 and 8
    assert voting_accuracy(4) == pytest.approx(69.7)


def test_sample_budgets_halve_down_to_the_minimum() -> None:
    assert sample_budgets(1, 8) == [8, 4, 2, 1]
    assert sample_budgets(3, 8) == [8, 4, 3]
    assert sample_budgets(8, 8) == [8]


def test_points_are_ordered_by_quality_and_respect_the_floor() -> None:
    spec = make_spec(scoring={"samples": {"min": 1, "max": 8}}, precision={"minQuality": 0.98})
    labels = [p.label for p in operating_points(spec)]
    assert labels[:3] == ["bf16×k8", "fp8×k8", "bf16×k4"]
    assert all(p.quality >= 0.98 for p in operating_points(spec))
    assert "int4×k8" not in labels  # 0.97 < 0.98


def test_pinned_variant_limits_points_to_it() -> None:
    spec = make_spec(precision={"policy": "Pinned", "pinnedVariant": "fp8", "minQuality": 0.9})
    assert {p.variant.name for p in operating_points(spec, "fp8")} == {"fp8"}


def test_a_slower_replica_serves_less_and_fp8_serves_more_than_bf16() -> None:
    spec = make_spec()
    work = Workload(1000, 300)
    bf16 = replica_capacity(spec, spec.variant("bf16"), work, 1.0, {})
    fp8 = replica_capacity(spec, spec.variant("fp8"), work, 1.0, {})
    slow_fp8 = replica_capacity(spec, spec.variant("fp8"), work, 1.4, {})
    assert fp8 > bf16 > 0
    assert slow_fp8 < fp8 / 1.3


def test_tighter_tail_factor_means_less_capacity_under_a_tight_slo() -> None:
    spec = make_spec(slo={"ttftP95": "150ms"})
    work = Workload(1000, 300)
    loose = replica_capacity(spec, spec.variant("fp8"), work, 1.0, {"ttft": 1.2})
    tight = replica_capacity(spec, spec.variant("fp8"), work, 1.0, {"ttft": 1.9})
    assert tight < loose
