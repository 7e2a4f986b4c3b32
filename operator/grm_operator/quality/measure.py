"""A variant's measured quality: its GRM verdicts against the reference's, item by item.

For each evaluation item both models score the same responses with the worker's GRM scoring
(k critiques, summed, the winner the highest sum). From the two lists of verdicts:

* **agreement**: share of items whose winner is the reference's. Only items where the reference
  reached a verdict count (``n``); an item where the variant reached none (every critique
  unparsable) is a disagreement: a variant that stops producing scores must fail, not vanish.
* **rank correlation**: Kendall's τ-b between the two models' mean scores, every response of
  every item where both have scores pooled, with its Fisher-z interval.
* **accuracy**: on items with a human ``label``, the share where the variant's winner is the
  label (no verdict = wrong), with the reference's accuracy beside it for scale.

Each proportion comes with its confidence interval (:mod:`grm_operator.quality.stats`); the gate
reads ``agreement_low``. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grm_operator.quality.evalset import EvalItem
from grm_operator.quality.stats import (
    DEFAULT_CONFIDENCE,
    IntervalMethod,
    binomial_interval,
    kendall_interval,
    kendall_tau_b,
)

__all__ = ["MeasureError", "Verdict", "measure"]


class MeasureError(ValueError):
    """The verdicts cannot measure anything (e.g. the reference never produced a verdict)."""


@dataclass(frozen=True)
class Verdict:
    """One model's result on one item: the winning index (None: no parsable critique) and the
    mean score per response (None likewise)."""

    winner: int | None
    mean_scores: tuple[float, ...] | None
    samples_used: int = 0
    parse_failures: int = 0


def _rate(count: int, n: int, confidence: float, method: IntervalMethod) -> dict[str, float | int | None]:
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    interval = binomial_interval(count, n, confidence, method)
    return {"value": interval.estimate, "low": interval.low, "high": interval.high, "n": n}


def _parse_failure_rate(verdicts: Sequence[Verdict]) -> float | None:
    used = sum(v.samples_used for v in verdicts)
    return sum(v.parse_failures for v in verdicts) / used if used else None


def measure(
    items: Sequence[EvalItem],
    reference: Sequence[Verdict],
    variant: Sequence[Verdict],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    method: IntervalMethod = "wilson",
) -> dict[str, Any]:
    """The measurement as the JSON fields ``grm-operator evaluate`` writes (see module docstring).

    Raises :class:`MeasureError` when the reference reached a verdict on no item.
    """
    if not len(items) == len(reference) == len(variant):
        raise ValueError(f"lengths differ: {len(items)} items, {len(reference)} and {len(variant)} verdicts")
    judged = [(r, v) for r, v in zip(reference, variant, strict=True) if r.winner is not None]
    if not judged:
        raise MeasureError(
            f"the reference reached a verdict on none of the {len(items)} items (every critique "
            "unparsable): raise max_tokens or check that the reference is a GRM"
        )
    agreeing = sum(1 for r, v in judged if v.winner == r.winner)
    agreement = _rate(agreeing, len(judged), confidence, method)

    pairs_ref: list[float] = []
    pairs_var: list[float] = []
    for r, v in zip(reference, variant, strict=True):
        if r.mean_scores is not None and v.mean_scores is not None:
            pairs_ref.extend(r.mean_scores)
            pairs_var.extend(v.mean_scores)
    tau: float | None = None
    tau_low: float | None = None
    tau_high: float | None = None
    try:
        tau = kendall_tau_b(pairs_ref, pairs_var)
        interval = kendall_interval(tau, len(pairs_ref), confidence)
        tau_low, tau_high = interval.low, interval.high
    except ValueError:
        # Fewer than 5 pairs, or a side that scored everything alike: no rank correlation to report.
        pass

    labelled = [
        (item, r, v) for item, r, v in zip(items, reference, variant, strict=True) if item.label is not None
    ]
    accuracy = _rate(
        sum(1 for item, _, v in labelled if v.winner == item.label), len(labelled), confidence, method
    )
    reference_accuracy = _rate(
        sum(1 for item, r, _ in labelled if r.winner == item.label), len(labelled), confidence, method
    )
    return {
        "agreement": agreement["value"],
        "agreement_low": agreement["low"],
        "agreement_high": agreement["high"],
        "n": agreement["n"],
        "items": len(items),
        "skipped_no_reference_verdict": len(items) - len(judged),
        "variant_no_verdict": sum(1 for _, v in judged if v.winner is None),
        "interval": method,
        "confidence": confidence,
        "rank_correlation": tau,
        "rank_correlation_low": tau_low,
        "rank_correlation_high": tau_high,
        "rank_correlation_method": "kendall-tau-b",
        "rank_pairs": len(pairs_ref),
        "accuracy": accuracy["value"],
        "accuracy_low": accuracy["low"],
        "accuracy_high": accuracy["high"],
        "accuracy_n": accuracy["n"],
        "reference_accuracy": reference_accuracy["value"],
        "variant_parse_failure_rate": _parse_failure_rate(variant),
        "reference_parse_failure_rate": _parse_failure_rate(reference),
    }
