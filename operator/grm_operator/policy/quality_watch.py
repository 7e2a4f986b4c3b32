"""Quality watched while serving: when a variant's live agreement with the reference falls below
the floor, the variant is demoted and the quality ladder skips it until it is re-evaluated.

The evidence: workers of every variant but the reference shadow ``precision.shadow.fraction`` of
their score requests to the reference variant and count compared and agreeing verdicts
(``grm_shadow_verdicts_total``, ``grm_shadow_agreements_total``); the metrics source reads their
increase over ``precision.shadow.window`` per variant (:class:`LiveAgreement`).

The rule, per variant other than the reference (the first, best one), each control period:

* **demote** when at least ``needed`` verdicts were compared and the agreement's Wilson lower
  bound (95 %, :func:`grm_operator.quality.stats.wilson_interval`) is below
  ``precision.minQuality`` — the same test the evaluation gate admits by, applied to live
  traffic. ``needed`` is the larger of ``precision.shadow.minComparisons`` and the comparisons
  a perfect record needs to clear the floor (125 for 0.97): with fewer, every lower bound is
  under the floor and would demote a variant on no evidence. Example: floor 0.97, 200
  comparisons, 186 agreeing (0.93): bound 0.886 < 0.97, demoted; 199 agreeing: bound 0.972,
  kept.
* a demotion **stays** (status is the memory, so an operator restart keeps it) until there is
  fresh evidence for the variant — never the same window's numbers again, and never the old
  measurement that admitted it in the first place:

  - **redefined**: its definition in the spec changes (another checkpoint, precision, recipe or
    engine option: its digest differs from the one recorded at demotion). Under ``Measured`` the
    gate evaluates the new definition before it serves;
  - **re-evaluated** (``Measured``): an evaluation that *finished after the demotion* admits it
    (lower bound ≥ the floor). The gate runs one when the evaluation set or either checkpoint
    changes, or when the user sets a new value of the annotation ``grm.dev/re-evaluate`` on the
    GRMDeployment (a timestamp, say) while the variant is demoted;
  - **re-admitted by request** (``Declared``, where nothing is evaluated and the declared quality
    is the user's word): a value of ``grm.dev/re-evaluate`` other than the one recorded at demotion.

  Fresh live agreement alone never lifts it — a demoted variant serves no traffic, so there is
  none — and neither does an edit of its declared ``quality``.
* after a lift the variant's live evidence is ignored for one ``precision.shadow.window``
  (``status.variants[].reinstated``): the window still holds the comparisons that demoted it, and
  judging them again would demote it on the tick after the lift. A variant that disagrees again is
  demoted again on the next full window of its own, and lifting that takes another new evaluation
  or another new annotation value: a demotion cannot flap on its own.
* the ladder skips demoted variants (:func:`grm_operator.policy.capacity.operating_points`'s
  ``excluded``); a Pinned policy still runs its pin (the user's explicit choice) and the status
  condition says it is demoted.

Pure: time and evidence are parameters; the autoscaler writes the status, the condition
``LiveQualityMet`` and the Events.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec, Variant
from grm_operator.quality.stats import perfect_record_needed, wilson_interval

__all__ = [
    "CONFIDENCE",
    "Demotion",
    "LiveAgreement",
    "Measurement",
    "QualityWatch",
    "Reinstatement",
    "comparisons_needed",
    "variant_digest",
    "watch_quality",
]

#: Two-sided confidence of the agreement interval (the evaluation gate's too).
CONFIDENCE = 0.95


@dataclass(frozen=True)
class LiveAgreement:
    """Verdicts of one variant compared with the reference's over the window, and how many agreed."""

    compared: float
    agreed: float


@dataclass(frozen=True)
class Demotion:
    """Why and when a variant was demoted (status.variants[].demoted)."""

    since: float
    compared: int
    agreed: int
    low: float
    high: float
    floor: float
    digest: str
    #: The ``grm.dev/re-evaluate`` annotation's value at demotion: only another one is a new request.
    request: str | None = None

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0

    @property
    def message(self) -> str:
        return (
            f"live agreement with the reference {self.agreement:.3f} ({self.agreed}/{self.compared} "
            f"verdicts), 95% interval [{self.low:.3f}, {self.high:.3f}]: lower bound below "
            f"precision.minQuality {self.floor:g}"
        )


@dataclass(frozen=True)
class Measurement:
    """A variant's current evaluation as the gate recorded it (status.variants[].quality)."""

    #: When the evaluation finished (epoch seconds).
    at: float
    value: float
    low: float
    high: float
    items: int
    #: The gate's verdict on it (status.variants[].gate is Admitted).
    admitted: bool


@dataclass(frozen=True)
class Reinstatement:
    """Why and when a demotion was lifted (status.variants[].reinstated)."""

    since: float
    reason: str  # Redefined | ReEvaluated | ReEvaluationRequested
    message: str


@dataclass(frozen=True)
class QualityWatch:
    """The demotions and reinstatements after this tick, and what changed."""

    demoted: Mapping[str, Demotion]
    new: tuple[str, ...] = ()
    lifted: tuple[str, ...] = ()
    reinstated: Mapping[str, Reinstatement] = field(default_factory=dict)


def variant_digest(variant: Variant) -> str:
    """A digest of the variant's definition; a demotion lasts while it is unchanged. Its
    ``quality`` is left out: a declared number edited, or replaced by a measurement, is not a new
    variant (another checkpoint, precision, recipe or engine option is)."""
    data: Any = variant.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"quality"})
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def comparisons_needed(spec: GRMDeploymentSpec) -> int:
    """Compared verdicts before a variant can be demoted: minComparisons, at least what a
    perfect record needs to clear the floor."""
    floor = min(spec.precision.min_quality, 0.999)
    return max(spec.precision.shadow.min_comparisons, perfect_record_needed(floor, CONFIDENCE))


def _lift(
    spec: GRMDeploymentSpec,
    variant: Variant,
    current: Demotion,
    measurement: Measurement | None,
    request: str | None,
    now: float,
) -> Reinstatement | None:
    """The reinstatement of a demoted variant when there is fresh evidence for it, else None."""
    if current.digest != variant_digest(variant):
        return Reinstatement(now, "Redefined", f"{variant.name} was redefined: back on the quality ladder")
    floor = spec.precision.min_quality
    if spec.precision.quality_policy == "Measured":
        if (
            measurement is not None
            and measurement.at > current.since
            and measurement.admitted
            and measurement.low >= floor
        ):
            return Reinstatement(
                now,
                "ReEvaluated",
                f"{variant.name} re-evaluated after its demotion: agreement {measurement.value:.3f} "
                f"(95% interval {measurement.low:.3f}–{measurement.high:.3f}, n={measurement.items}), "
                f"lower bound ≥ minQuality {floor:g}: back on the quality ladder",
            )
        return None
    if request and request != current.request:
        return Reinstatement(
            now,
            "ReEvaluationRequested",
            f"{variant.name} re-admitted by grm.dev/re-evaluate={request} (precision.qualityPolicy "
            "Declared: the declared quality stands): back on the quality ladder",
        )
    return None


def watch_quality(
    spec: GRMDeploymentSpec,
    evidence: Mapping[str, LiveAgreement | None],
    demoted: Mapping[str, Demotion],
    now: float,
    *,
    measured: Mapping[str, Measurement] | None = None,
    reinstated: Mapping[str, Reinstatement] | None = None,
    request: str | None = None,
) -> QualityWatch:
    """The demotions after this tick from the current ones, the window's evidence, the variants'
    current measurements (``measured``), the lifts so far (``reinstated``) and the value of the
    ``grm.dev/re-evaluate`` annotation (``request``)."""
    reference = spec.variants[0].name
    floor = spec.precision.min_quality
    needed = comparisons_needed(spec)
    window = parse_duration(spec.precision.shadow.window)
    measured = measured or {}
    names = {v.name for v in spec.variants}
    lifts: dict[str, Reinstatement] = {
        name: r for name, r in (reinstated or {}).items() if name in names and name not in demoted
    }
    kept: dict[str, Demotion] = {}
    new: list[str] = []
    lifted: list[str] = []
    for variant in spec.variants:
        name, digest = variant.name, variant_digest(variant)
        current = demoted.get(name)
        if current is not None:
            lift = None
            if name != reference:
                lift = _lift(spec, variant, current, measured.get(name), request, now)
            if lift is None and name != reference:
                kept[name] = current
                continue
            lifted.append(name)
            if lift is not None:
                lifts[name] = lift
        seen = evidence.get(name)
        if name == reference or seen is None or floor <= 0.0:
            continue
        since_lift = lifts.get(name)
        if since_lift is not None and now - since_lift.since < window:
            continue  # the window still holds the comparisons that demoted it (see the module doc)
        compared = max(0.0, seen.compared)
        agreed = min(max(0.0, seen.agreed), compared)
        if compared < needed:
            continue
        interval = wilson_interval(agreed, compared, CONFIDENCE)
        low, high = interval.low, interval.high
        if low < floor:
            kept[name] = Demotion(now, round(compared), round(agreed), low, high, floor, digest, request)
            lifts.pop(name, None)
            new.append(name)
    # A demotion of a variant no longer in the spec is dropped silently (nothing to reinstate).
    return QualityWatch(kept, tuple(new), tuple(lifted), lifts)
