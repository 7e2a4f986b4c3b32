"""The quality gate: which variants the quality ladder may use, and at which quality.

With ``precision.qualityPolicy: Measured`` (the default) a variant's quality is what an evaluation
Job measured: the agreement of its GRM verdicts (which response wins) with the reference's (the
first variant, the best). A variant joins the ladder only when the *lower* bound of that
agreement's 95 % interval is ≥ ``precision.minQuality``; until then (building, evaluating) and when
it falls short (rejected) the policy never sees it. The measured value then replaces the declared
``quality`` everywhere the ladder is read: operating points, switching, the simulator.
``Declared`` keeps the typed numbers and admits every variant, as before the gate existed.

Why the lower bound: 200 items at 0.985 agreement give the interval [0.957, 0.995] (Wilson); the
point estimate would pass a 0.97 floor that the data cannot promise. The floor holds with 95 %
confidence only when the lower bound clears it (docs/quality.md has the sample sizes).

Everything here is pure and reads the GRMDeployment's status in its wire form (camelCase), which
the gate controller (:mod:`grm_operator.control.gate`) writes from the build and evaluation Jobs:

* :func:`admitted_qualities` — the admitted variants and the quality each is worth;
* :func:`ladder_spec` — the spec the policy decides on: admitted variants only, measured quality,
  a pin on a variant the gate has not admitted moved to the reference. The autoscaler's adapter
  (and so the simulator, which drives the same adapter) hands only this spec to ``decide()``;
* :func:`summary` — ``status.gate``, the ``kubectl get`` column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from grm_operator.api.models import GRMDeploymentSpec, PrecisionControl, Variant

ADMITTED = "Admitted"
REJECTED = "Rejected"


def reference(spec: GRMDeploymentSpec) -> Variant:
    """The variant every other is measured against: the first, best quality (never gated)."""
    return spec.variants[0]


def _entries(status_variants: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    return {str(e.get("name")): e for e in status_variants or [] if isinstance(e, Mapping)}


def measured_low(entry: Mapping[str, Any] | None) -> float | None:
    """The lower confidence bound in a status.variants[] entry, None when not measured."""
    quality = (entry or {}).get("quality")
    if not isinstance(quality, Mapping):
        return None
    low = quality.get("low")
    return float(low) if isinstance(low, int | float) else None


def admitted_qualities(
    spec: GRMDeploymentSpec, status_variants: Sequence[Mapping[str, Any]] | None
) -> dict[str, float]:
    """Variant name → the quality it joins the ladder with, for the admitted variants only.

    Declared: every variant (a built one once built), at its declared quality. Measured: the
    reference at its declared quality, and each other variant whose status says ``gate: Admitted``
    *and* whose measured lower bound is ≥ minQuality (checked again here, so a floor raised after
    the admission takes the variant off the ladder at once), at its measured agreement.
    """
    entries = _entries(status_variants)
    if spec.precision.quality_policy == "Declared":
        # Declared trusts the numbers, not a checkpoint still being built: a variant with a build
        # recipe is a rung once its build finished (the gate then says Admitted).
        return {
            v.name: v.quality
            for v in spec.variants
            if v.build is None or (entries.get(v.name) or {}).get("gate") == ADMITTED
        }
    ref = reference(spec)
    out = {ref.name: ref.quality}
    for v in spec.variants[1:]:
        entry = entries.get(v.name) or {}
        low = measured_low(entry)
        if entry.get("gate") != ADMITTED or low is None or low < spec.precision.min_quality:
            continue
        value = (entry.get("quality") or {}).get("value")
        # The agreement with the reference, relative to the reference's own quality (1.0 as a rule).
        out[v.name] = min(1.0, float(value) * ref.quality) if isinstance(value, int | float) else v.quality
    return out


def ladder_spec(
    spec: GRMDeploymentSpec, status_variants: Sequence[Mapping[str, Any]] | None
) -> GRMDeploymentSpec:
    """The spec the policy may decide on: only admitted variants, each at the quality it was
    admitted with; a Pinned policy whose pin the gate has not admitted pins the reference until
    it does (the pin is the user's wish, the gate a safety rule: the safety rule wins).

    Built with ``model_copy`` (no validation): the CRD's rule that some variant meets minQuality
    speaks of declared qualities, and a ladder of the reference alone is a valid ladder.
    """
    qualities = admitted_qualities(spec, status_variants)
    if len(qualities) == len(spec.variants) and spec.precision.quality_policy == "Declared":
        return spec  # Declared with every checkpoint there: the spec as written
    variants = [
        v.model_copy(update={"quality": qualities[v.name]}) for v in spec.variants if v.name in qualities
    ]
    precision = spec.precision
    if precision.policy == "Pinned" and precision.pinned_variant not in qualities:
        precision = PrecisionControl.model_copy(precision, update={"pinned_variant": reference(spec).name})
    return spec.model_copy(update={"variants": variants, "precision": precision})


def declared_as_measured(spec: GRMDeploymentSpec) -> list[dict[str, Any]]:
    """status.variants[] entries as if every variant had been evaluated at exactly its declared
    quality (an interval of zero width): the gate then admits what the declared floor admits.
    The simulator's assumption when a manifest carries no measurement of its own."""
    floor = spec.precision.min_quality
    out: list[dict[str, Any]] = []
    for v in spec.variants[1:]:
        gate = ADMITTED if v.quality >= floor else REJECTED
        quality = {"value": v.quality, "low": v.quality, "high": v.quality}
        out.append({"name": v.name, "gate": gate, "quality": quality})
    return out


def as_declared(
    spec: GRMDeploymentSpec, status_variants: Sequence[Mapping[str, Any]] | None
) -> GRMDeploymentSpec:
    """:func:`ladder_spec` frozen into a Declared spec: the admitted variants at their measured
    quality, gated once and for all (a simulation has no Jobs that could change the verdict)."""
    ladder = ladder_spec(spec, status_variants)
    precision = ladder.precision.model_copy(update={"quality_policy": "Declared"})
    return ladder.model_copy(update={"precision": precision})


def summary(spec: GRMDeploymentSpec, status_variants: Sequence[Mapping[str, Any]] | None) -> str | None:
    """``status.gate``: each non-reference variant's gate state, with the measured lower bound
    where there is one (``fp8=Admitted(0.981) int4=Rejected(0.912)``); None with Declared or a
    single variant (nothing is gated)."""
    if spec.precision.quality_policy == "Declared" or len(spec.variants) < 2:
        return None
    entries = _entries(status_variants)
    parts = []
    for v in spec.variants[1:]:
        entry = entries.get(v.name) or {}
        state = str(entry.get("gate") or "Pending")
        low = measured_low(entry)
        parts.append(f"{v.name}={state}" + (f"({low:.3f})" if low is not None else ""))
    return " ".join(parts)
