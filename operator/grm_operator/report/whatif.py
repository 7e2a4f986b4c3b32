"""What-ifs: the fleet simulator replays the reconstructed arrivals under changed specs.

**Arrivals.** Bin i's score requests (a fractional count carries over to the next bin, so the
total is kept) arrive evenly spaced inside the bin, each with the bin's mean prompt and critique
tokens (:func:`arrival_trace`). The bins are the report's step; within a bin the simulator sees
a steady rate, which is what a step of a minute can tell.

**Runs.** Every scenario runs our policy (:class:`grm_operator.simulator.policies.grm.Grm`: the
operator's own ``decide()`` and actuation) on the same arrivals and seed, with the replicas' cold
start as measured or given (``cold_start_s``) and the metrics read once per control period, as
the operator's Direct source does. Attainment is computed as the report computes the observed
one (:mod:`.usage`): the fraction of score requests within ``slo.e2eP95`` and within
``slo.ttftP95``, the lower of the two, rejected requests counting as misses.

**Calibration** (:func:`calibrate`). The simulator's replicas run at the latency model's speed
(perf-model.md's priors, H100-measured); the observed replicas ran at their hardware's, which
may differ — a card of another kind, other kernels, or (on the local cluster) cores shared with
other work: a CI run's sim workers served 1.5–2.4 critiques/s per replica against the model's
2.4–3.4, the operator measured it and held two replicas where a replay at the model's speed held
one (−27 % to −38 % of the observed GPU-hours). So before any what-if, the replay's speed is
fitted to the window: the simulator's ``model_error`` (its replicas run that many times slower
than the profile the policy assumes, as the operator's own measurements then see) is searched on
a log scale between :data:`MODEL_ERROR_RANGE` until the replay's mean score latency matches the
observed one (Σ sum / Σ count of ``grm_score_latency_seconds``) within
:data:`CALIBRATION_TOLERANCE`, by bisection (slower replicas: longer latencies, then more of them:
the mean moves the same way unless the policy scales out fully), at most
:data:`CALIBRATION_RUNS` replays; the run nearest the observation is kept. Every scenario then
runs at that speed. Without an observed mean (no latency histogram in the window) the model's
speed is used (``model_error`` 1). The fitted factor is reported: far from 1 says the priors do
not describe the hardware.

**Scenarios** (:func:`scenarios`): ``replay`` (the spec as it is: its GPU-hours and attainment
are compared with the observed ones to say whether the other answers can be trusted), ``drop``
of each variant, ``add`` of each candidate variant, ``maxGPUs`` at half, one replica less and
one more of the largest variant, and the SLO relaxed ×1.5 and tightened ×0.75.

**Recommendations** (:func:`recommend`): a scenario is recommended when, against the replay
(like for like), it saves more than ``min_saving`` of the GPU-hours, its attainment is at least
the replay's less ``ATTAINMENT_TOLERANCE``, and its mean quality stays at or above the spec's
``precision.minQuality`` — the floor the GRMDeployment declares acceptable. SLO changes are
reported as what-ifs but never recommended: they change what is measured, not how it is served.
Recommendations are ranked by GPU-hours saved.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from grm_operator.api.durations import format_duration, parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.report.usage import Arrivals
from grm_operator.simulator.fleet import Fleet, SimConfig
from grm_operator.simulator.policies.grm import Grm
from grm_operator.simulator.trace import Trace

__all__ = [
    "ATTAINMENT_TOLERANCE",
    "CALIBRATION_RUNS",
    "CALIBRATION_TOLERANCE",
    "MODEL_ERROR_RANGE",
    "Calibration",
    "Candidate",
    "Outcome",
    "Recommendation",
    "Scenario",
    "arrival_trace",
    "calibrate",
    "parse_candidate",
    "recommend",
    "run_scenario",
    "scenarios",
]

#: A what-if may lose this much attainment (0.5 percentage point) against the replay and still
#: count as "equal": two replays with different seeds differ by about that on an hour of traffic.
ATTAINMENT_TOLERANCE = 0.005

#: The replay's mean score latency is taken as matching the observed one within 5 %: two replays
#: of an hour with different seeds differ by ~2 % in mean latency.
CALIBRATION_TOLERANCE = 0.05
#: Slowdowns searched: from twice as fast as the model to 4× slower (the priors are H100 numbers;
#: an A100 decodes ~1.6× slower, an L40S ~2.5×).
MODEL_ERROR_RANGE = (0.5, 4.0)
#: Replays the fit may run (the first at the model's speed): log-bisection over the 8× range to
#: ~4 % after 6 halvings.
CALIBRATION_RUNS = 8


@dataclass(frozen=True)
class Scenario:
    """One what-if: a spec and the merge patch that turns the GRMDeployment's spec into it."""

    key: str
    title: str
    kind: str
    spec: GRMDeploymentSpec
    patch: dict[str, Any] | None
    recommendable: bool


@dataclass
class Outcome:
    """A scenario's simulated run."""

    scenario: Scenario
    gpu_hours: float
    slo_attainment: float | None
    ttft_attainment: float | None
    e2e_attainment: float | None
    mean_quality: float
    switches: int
    rejected: int
    hours_by_variant: dict[str, float] = field(default_factory=dict)
    requests_by_variant: dict[str, int] = field(default_factory=dict)
    #: Mean latency of the served score requests, s (None: none served).
    mean_e2e_s: float | None = None
    #: The replicas' slowdown against the latency model this run used (:func:`calibrate`).
    model_error: float = 1.0


@dataclass(frozen=True)
class Calibration:
    """The replay's speed fitted to the window (module doc)."""

    model_error: float
    observed_mean_e2e_s: float | None
    simulated_mean_e2e_s: float | None
    runs: int

    @property
    def error(self) -> float | None:
        """Relative error of the fitted replay's mean latency against the observed one."""
        if self.observed_mean_e2e_s is None or self.simulated_mean_e2e_s is None:
            return None
        return (self.simulated_mean_e2e_s - self.observed_mean_e2e_s) / self.observed_mean_e2e_s


@dataclass(frozen=True)
class Recommendation:
    """A recommended change, with its numbers."""

    outcome: Outcome
    gpu_hours_saved: float
    saved_fraction: float


@dataclass(frozen=True)
class Candidate:
    """A variant to try adding (``--candidate name=int4,precision=awq-int4,quality=0.97,...``)."""

    fields: dict[str, Any]


def parse_candidate(text: str) -> Candidate:
    """``key=value`` pairs separated by commas, keys as in ``spec.variants[]``; numbers parsed."""
    fields: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"candidate {text!r}: {part!r} is not key=value")
        raw = value.strip()
        parsed: Any = raw
        for convert in (int, float):
            try:
                parsed = convert(raw)
                break
            except ValueError:
                continue
        fields[key.strip()] = parsed
    for needed in ("name", "precision", "quality"):
        if needed not in fields:
            raise ValueError(f"candidate {text!r} needs {needed}=")
    return Candidate(fields)


def arrival_trace(arrivals: Arrivals, name: str = "report") -> Trace:
    """Score requests evenly spaced inside each bin, with the bin's mean tokens (module doc)."""
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    carry = 0.0
    step = arrivals.step_s
    for i, count in enumerate(arrivals.requests):
        carry += max(0.0, count)
        n = math.floor(carry + 1e-9)
        carry -= n
        start = arrivals.times[i] - step
        for j in range(n):
            times.append(start + (j + 0.5) * step / n)
            prompt.append(max(1, round(arrivals.prompt_tokens[i])))
            output.append(max(1, round(arrivals.output_tokens[i])))
    if not times:
        raise ValueError("no score requests in the window: nothing to replay")
    t = np.asarray(times, dtype=np.float64)
    t -= t[0]
    return Trace(t, np.asarray(prompt, np.int64), np.asarray(output, np.int64), name)


def _spec_data(spec: GRMDeploymentSpec) -> dict[str, Any]:
    return spec.model_dump(by_alias=True, exclude_none=True)


def _variant_data(spec: GRMDeploymentSpec) -> list[dict[str, Any]]:
    return list(_spec_data(spec)["variants"])


def _with(spec: GRMDeploymentSpec, patch: Mapping[str, Any]) -> GRMDeploymentSpec:
    """The spec with a JSON merge patch (RFC 7386) of its ``spec`` applied."""

    def merge(target: Any, change: Any) -> Any:
        if not isinstance(change, Mapping):
            return copy.deepcopy(change)
        out = dict(target) if isinstance(target, Mapping) else {}
        for key, value in change.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out.get(key), value)
        return out

    return GRMDeploymentSpec.model_validate(merge(_spec_data(spec), patch["spec"]))


def scenarios(
    spec: GRMDeploymentSpec, candidates: Sequence[Candidate] = ()
) -> tuple[list[Scenario], list[str]]:
    """The what-ifs of ``spec`` (module doc), and why any was left out."""
    out = [Scenario("replay", "the spec as it is (replay)", "replay", spec, None, False)]
    skipped: list[str] = []

    def add(key: str, title: str, kind: str, patch: dict[str, Any], recommendable: bool = True) -> None:
        try:
            out.append(Scenario(key, title, kind, _with(spec, patch), patch, recommendable))
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()
            skipped.append(f"{title}: not a valid spec ({first[-1] if first else exc})")

    variants = _variant_data(spec)
    if len(variants) > 1:
        for v in variants:
            rest = [w for w in variants if w["name"] != v["name"]]
            patch: dict[str, Any] = {"spec": {"variants": rest}}
            if spec.precision.pinned_variant == v["name"]:
                skipped.append(f"without {v['name']}: it is the pinned variant")
                continue
            add(f"drop-{v['name']}", f"without {v['name']}", "drop", patch)
    for cand in candidates:
        name = str(cand.fields["name"])
        if any(v["name"] == name for v in variants):
            skipped.append(f"with {name}: a variant of that name exists")
            continue
        if float(cand.fields["quality"]) < spec.precision.min_quality:
            skipped.append(
                f"with {name}: its quality {float(cand.fields['quality']):g} is below precision.minQuality "
                f"{spec.precision.min_quality:g}, so the policy would never serve it "
                "(lower the floor to try it)"
            )
            continue
        new = dict(cand.fields)
        new.setdefault("gpusPerReplica", 1)
        ladder = sorted([*variants, new], key=lambda v: -float(v["quality"]))
        add(
            f"add-{name}",
            f"with {name} (quality {float(new['quality']):g})",
            "add",
            {"spec": {"variants": ladder}},
        )
    budget = spec.max_gpus()
    widest = max(v.gpus_per_replica for v in spec.variants)
    for gpus in sorted({math.ceil(budget / 2), budget - widest, budget + widest}):
        if gpus >= widest and gpus != budget:
            add(f"maxgpus-{gpus}", f"maxGPUs {gpus}", "maxGPUs", {"spec": {"scaling": {"maxGPUs": gpus}}})
    slo = _spec_data(spec)["slo"]
    for factor, word in ((1.5, "relaxed"), (0.75, "tightened")):
        changed = {
            key: format_duration(parse_duration(str(value)) * factor)
            for key, value in slo.items()
            if value is not None
        }
        add(f"slo-{word}", f"SLO {word} ×{factor:g}", "slo", {"spec": {"slo": changed}}, recommendable=False)
    return out, skipped


def _attained(values: Sequence[float], target: float | None, total: int) -> float | None:
    if target is None or total <= 0:
        return None
    return sum(1 for v in values if v <= target) / total


def run_scenario(
    scenario: Scenario,
    trace: Trace,
    *,
    cold_start_s: float | None,
    model_error: float = 1.0,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> Outcome:
    """Replay ``trace`` under the scenario's spec with our policy (module doc)."""
    spec = scenario.spec
    period = parse_duration(spec.scaling.control_period)
    config = SimConfig(
        spec=spec,
        trace=trace,
        seed=seed,
        scrape_interval_s=max(1.0, period),
        cold_start_s=cold_start_s,
        model_error=model_error,
    )
    fleet = Fleet(config, Grm(spec))
    result = fleet.run(progress)
    total = len(trace)
    ttfts = [g.first_token - g.arrival for g in fleet.done if g.first_token is not None]
    e2es = [g.finished - g.arrival for g in fleet.done if g.finished is not None]
    ttft = _attained(ttfts, spec.slo.ttft_p95_s, total)
    e2e = _attained(e2es, spec.slo.e2e_p95_s, total)
    known = [v for v in (ttft, e2e) if v is not None]
    hours: dict[str, float] = {}
    for pod in fleet.pods:
        if pod.scheduled is None:
            continue
        stop = min(pod.released if pod.released is not None else trace.duration_s, trace.duration_s)
        hours[pod.variant] = hours.get(pod.variant, 0.0) + pod.gpus * max(0.0, stop - pod.scheduled) / 3600
    requests: dict[str, int] = {}
    for g in fleet.done:
        if g.variant is not None:
            requests[g.variant] = requests.get(g.variant, 0) + 1
    return Outcome(
        scenario=scenario,
        gpu_hours=result.gpu_hours,
        slo_attainment=min(known) if known else None,
        ttft_attainment=ttft,
        e2e_attainment=e2e,
        mean_quality=result.mean_quality,
        switches=result.switches,
        rejected=result.rejected,
        hours_by_variant=hours,
        requests_by_variant=requests,
        mean_e2e_s=sum(e2es) / len(e2es) if e2es else None,
        model_error=model_error,
    )


def calibrate(
    replay: Scenario, trace: Trace, *, cold_start_s: float | None, observed_mean_e2e_s: float | None
) -> tuple[Calibration, Outcome]:
    """The replay's ``model_error`` fitted to the observed mean score latency, and the replay run
    at it (module doc)."""
    first = run_scenario(replay, trace, cold_start_s=cold_start_s)
    if observed_mean_e2e_s is None or observed_mean_e2e_s <= 0 or first.mean_e2e_s is None:
        return Calibration(1.0, observed_mean_e2e_s, first.mean_e2e_s, 1), first

    def miss(o: Outcome) -> float:
        assert o.mean_e2e_s is not None and observed_mean_e2e_s is not None
        return (o.mean_e2e_s - observed_mean_e2e_s) / observed_mean_e2e_s

    best, runs = first, 1
    low, high = math.log(MODEL_ERROR_RANGE[0]), math.log(MODEL_ERROR_RANGE[1])
    # The model's own speed is the first guess: the bracket starts on its side of the answer.
    if miss(first) < 0:
        low = 0.0
    else:
        high = 0.0
    while abs(miss(best)) > CALIBRATION_TOLERANCE and runs < CALIBRATION_RUNS:
        middle = (low + high) / 2
        outcome = run_scenario(replay, trace, cold_start_s=cold_start_s, model_error=math.exp(middle))
        runs += 1
        if outcome.mean_e2e_s is None:
            break
        if abs(miss(outcome)) < abs(miss(best)):
            best = outcome
        if miss(outcome) < 0:
            low = middle
        else:
            high = middle
    return Calibration(best.model_error, observed_mean_e2e_s, best.mean_e2e_s, runs), best


def recommend(
    outcomes: Sequence[Outcome], spec: GRMDeploymentSpec, *, min_saving: float = 0.02
) -> list[Recommendation]:
    """The recommendable outcomes that save GPU-hours at equal attainment and admissible quality,
    most GPU-hours saved first (module doc)."""
    replay = next(o for o in outcomes if o.scenario.kind == "replay")
    floor = spec.precision.min_quality
    base_attainment = replay.slo_attainment if replay.slo_attainment is not None else 0.0
    out: list[Recommendation] = []
    for o in outcomes:
        if not o.scenario.recommendable or replay.gpu_hours <= 0:
            continue
        saved = replay.gpu_hours - o.gpu_hours
        attainment = o.slo_attainment if o.slo_attainment is not None else 0.0
        if (
            saved / replay.gpu_hours > min_saving
            and attainment >= base_attainment - ATTAINMENT_TOLERANCE
            and o.mean_quality >= floor - 1e-9
        ):
            out.append(Recommendation(o, saved, saved / replay.gpu_hours))
    return sorted(out, key=lambda r: -r.gpu_hours_saved)
