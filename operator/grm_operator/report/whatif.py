"""What-ifs: the fleet simulator replays the reconstructed arrivals under changed specs.

**Arrivals.** Bin i's score requests (a fractional count carries over to the next bin, so the
total is kept) arrive evenly spaced inside the bin, each with the bin's mean prompt and critique
tokens (:func:`arrival_trace`). The bins are the report's step; within a bin the simulator sees
a steady rate, which is what a step of a minute can tell.

**The replay's spread** (:func:`replay_ensemble`). Where exactly inside its bin a request came is
not in the counters, and a load near a replica boundary turns on it: a load shaped like the e2e
run's (4-s bins, bursts of 4.8 critiques/s against 2.4–3.4 a bf16 replica, 150-token prompts and
120-token critiques) replayed at 0.30 GPU-hours with its requests evenly spaced and at 0.17–0.19
with them placed at random in four draws. One replay is one draw; so the replay is run
:data:`ENSEMBLE_RUNS` times (the evenly spaced placement, then uniform random ones, seeded), and
the observation is compared with the range the runs span
(:class:`grm_operator.report.document.Report`). The what-ifs, like for like, are compared with
the evenly spaced run.

**Runs.** Every scenario runs our policy (:class:`grm_operator.simulator.policies.grm.Grm`: the
operator's own ``decide()`` and actuation) on the same arrivals and seed, with the replicas' cold
start as measured or given (``cold_start_s``) and the metrics read once per control period, as
the operator's Direct source does. Attainment is computed as the report computes the observed
one (:mod:`.usage`): the fraction of score requests within ``slo.e2eP95`` and within
``slo.ttftP95``, the lower of the two, rejected requests counting as misses.

**Speed** (:func:`replica_speed`). The simulator's replicas follow the latency model (the
variants' profiles, perf-model.md's H100 priors); the observed replicas ran at their hardware's
speed, which may differ — another card, other kernels, or (on the local cluster) cores shared with
other work. The operator measures that itself: ``status.policyState.speed[variant]`` is its
observed median inter-token latency ÷ the model's step time *at the load it observed* (the
policy's corrections, 1.4 = 40 % slower than the profile), learnt while the variant serves and
pulled back toward 1 with a 15-min half-life without fresh evidence. The replay and every
what-if run with the simulator's ``model_error`` set to those speeds' mean weighted by each
variant's score requests in the window (1 where the status has none). The status holds the
latest speeds, not their history: a speed is a property of hardware and kernels that changes with
a rollout, so a window that spans one is replayed at the newer speed. Fitting the speed to the
window's mean score latency instead (tried: a log-bisection of ``model_error``) is confounded by
the replica count — the e2e run's operator held a second replica in the lulls, its latencies were
the lower for it, and the fit made the replay's replicas 8 % faster than the model: 0.18 GPU-hours
against the observed 0.28, where replays at the model's speed of like runs held 0.22–0.23.

**Scenarios** (:func:`scenarios`): ``replay`` (the spec as it is: its GPU-hours and attainment
are compared with the observed ones to say whether the other answers can be trusted), ``drop``
of each variant, ``add`` of each candidate variant, ``replace`` of each variant by each candidate
(the policy keeps the best variant that holds the SLO, so a cheaper rung *added* below one that
holds is never used; in its place it shows what the floor allows), ``maxGPUs`` at half, one
replica less and one more of the largest variant, and the SLO relaxed ×1.5 and tightened ×0.75.

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
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from grm_operator.api.durations import format_duration, parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy.types import PolicyState
from grm_operator.report.usage import Arrivals
from grm_operator.simulator.fleet import Fleet, SimConfig
from grm_operator.simulator.policies.grm import Grm
from grm_operator.simulator.trace import Trace

__all__ = [
    "ATTAINMENT_TOLERANCE",
    "ENSEMBLE_RUNS",
    "Candidate",
    "Outcome",
    "Recommendation",
    "Scenario",
    "arrival_trace",
    "parse_candidate",
    "recommend",
    "replay_ensemble",
    "replica_speed",
    "run_scenario",
    "scenarios",
]

#: A what-if may lose this much attainment (0.5 percentage point) against the replay and still
#: count as "equal": two replays with different seeds differ by about that on an hour of traffic.
ATTAINMENT_TOLERANCE = 0.005

#: Replays of the window for its spread: the evenly spaced placement and four random ones.
ENSEMBLE_RUNS = 5


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
    #: The replicas' slowdown against the latency model this run used (:func:`replica_speed`).
    model_error: float = 1.0


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


def arrival_trace(arrivals: Arrivals, name: str = "report", placement: random.Random | None = None) -> Trace:
    """Score requests evenly spaced inside each bin, or at uniform random times in it drawn from
    ``placement``, with the bin's mean tokens (module doc)."""
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
        offsets = (
            sorted(placement.random() * step for _ in range(n))
            if placement is not None
            else [(j + 0.5) * step / n for j in range(n)]
        )
        for offset in offsets:
            times.append(start + offset)
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

    def without(name: str) -> list[dict[str, Any]]:
        return [w for w in variants if w["name"] != name]

    def by_quality(ladder: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(ladder, key=lambda w: -float(w["quality"]))

    if len(variants) > 1:
        for v in variants:
            patch: dict[str, Any] = {"spec": {"variants": without(v["name"])}}
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
        add(
            f"add-{name}",
            f"with {name} (quality {float(new['quality']):g})",
            "add",
            {"spec": {"variants": by_quality([*variants, new])}},
        )
        for v in variants:
            if spec.precision.pinned_variant == v["name"]:
                skipped.append(f"with {name} instead of {v['name']}: {v['name']} is the pinned variant")
                continue
            add(
                f"replace-{v['name']}-{name}",
                f"with {name} instead of {v['name']} (quality {float(new['quality']):g})",
                "replace",
                {"spec": {"variants": by_quality([*without(v["name"]), new])}},
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


def replay_ensemble(
    replay: Outcome,
    arrivals: Arrivals,
    *,
    cold_start_s: float | None,
    runs: int = ENSEMBLE_RUNS,
) -> list[Outcome]:
    """``replay`` (the evenly spaced run) and ``runs - 1`` more of its scenario at its speed, the
    requests placed at random inside their bins (seeds 1, 2, …) (module doc)."""
    out = [replay]
    for seed in range(1, runs):
        trace = arrival_trace(arrivals, "replay", placement=random.Random(seed))
        out.append(
            run_scenario(
                replay.scenario, trace, cold_start_s=cold_start_s, model_error=replay.model_error, seed=seed
            )
        )
    return out


def replica_speed(
    status: Mapping[str, Any] | None, requests_by_variant: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """The replay's ``model_error``: the operator's learnt speeds (``status.policyState.speed``)
    weighted by each variant's score requests in the window, 1 for a variant without one; and the
    speeds it used (module doc)."""
    raw = (status or {}).get("policyState")
    # The operator's own parser of its status; a speed of 0 or NaN is no measurement.
    learnt = PolicyState.from_dict(raw if isinstance(raw, Mapping) else None).speed
    speeds = {name: v for name, v in learnt.items() if math.isfinite(v) and v > 0}
    total = sum(n for n in requests_by_variant.values() if n > 0)
    if total <= 0:
        return 1.0, speeds
    weighted = sum(speeds.get(v, 1.0) * n for v, n in requests_by_variant.items() if n > 0)
    return weighted / total, speeds


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
