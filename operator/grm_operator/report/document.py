"""The report as documents: the JSON for machines, the Markdown for people, and the PNG plots.

The JSON's fields (docs/report.md lists them all): ``period_s`` (null without a period),
``period_strength``, ``gpu_hours``, ``slo_attainment``, ``variants`` (per variant
``hours_active``, ``gpu_hours``, ``request_share``, ``slo_attainment`` and more), ``simulated``
(the replay's ``gpu_hours`` and ``slo_attainment``, its relative errors and whether they are within
the stated tolerance), ``whatifs`` and ``recommendations`` (each ``change`` as a merge patch of the
GRMDeployment, ``gpu_hours_saved``, ``slo_attainment``, ``mean_quality``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.report.usage import Usage
from grm_operator.report.whatif import ATTAINMENT_TOLERANCE, Outcome, Recommendation

__all__ = ["REPLAY_ATTAINMENT_TOLERANCE", "REPLAY_GPU_TOLERANCE", "Report", "plots", "to_json", "to_markdown"]

#: The replay is trusted when its GPU-hours are within 25 % of the observed ones ...
REPLAY_GPU_TOLERANCE = 0.25
#: ... and its attainment within 5 percentage points.
REPLAY_ATTAINMENT_TOLERANCE = 0.05


@dataclass
class Report:
    """Everything the documents are made of."""

    namespace: str
    name: str
    spec: GRMDeploymentSpec
    usage: Usage
    outcomes: list[Outcome]
    recommendations: list[Recommendation]
    queries: dict[str, str]
    prometheus: str
    cold_start_s: float | None
    #: The operator's learnt speed per variant (status.policyState.speed) the runs were made at.
    speeds: dict[str, float] = field(default_factory=dict)
    #: The replay and its reruns with other placements of the requests in their bins (whatif's
    #: replay_ensemble); empty: the replay alone.
    ensemble: list[Outcome] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def replay(self) -> Outcome:
        return next(o for o in self.outcomes if o.scenario.kind == "replay")

    @property
    def replay_runs(self) -> list[Outcome]:
        """The replay's ensemble, or the replay alone without one."""
        return self.ensemble or [self.replay]

    def replay_range(self) -> tuple[tuple[float, float], tuple[float, float] | None]:
        """(GPU-hours, attainment) (min, max) over :attr:`replay_runs`."""
        runs = self.replay_runs
        hours = [o.gpu_hours for o in runs]
        attained = [o.slo_attainment for o in runs if o.slo_attainment is not None]
        return (min(hours), max(hours)), ((min(attained), max(attained)) if attained else None)

    def replay_errors(self) -> tuple[float | None, float | None]:
        """(relative GPU-hours error, attainment difference) of the replay against the observation:
        how far the observation lies outside the range the ensemble spans (0 inside it)."""
        observed = self.usage
        hours, attained = self.replay_range()

        def outside(value: float, span: tuple[float, float]) -> float:
            return span[0] - value if value < span[0] else span[1] - value if value > span[1] else 0.0

        gpu = outside(observed.gpu_hours, hours) / observed.gpu_hours if observed.gpu_hours > 0 else None
        att = (
            outside(observed.slo_attainment, attained)
            if attained is not None and observed.slo_attainment is not None
            else None
        )
        return gpu, att

    def replay_trusted(self) -> bool:
        gpu, att = self.replay_errors()
        return (
            gpu is not None
            and abs(gpu) <= REPLAY_GPU_TOLERANCE
            and (att is None or abs(att) <= REPLAY_ATTAINMENT_TOLERANCE)
        )


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, digits)


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kubectl_patch(report: Report, patch: Mapping[str, Any]) -> str:
    """The command that applies a recommendation's merge patch."""
    return (
        f"kubectl -n {report.namespace} patch grmdeployment {report.name} --type merge "
        f"-p '{json.dumps(patch, separators=(',', ':'))}'"
    )


def _outcome_json(o: Outcome) -> dict[str, Any]:
    return {
        "key": o.scenario.key,
        "title": o.scenario.title,
        "kind": o.scenario.kind,
        "change": o.scenario.patch,
        "gpu_hours": _r(o.gpu_hours),
        "slo_attainment": _r(o.slo_attainment),
        "ttft_attainment": _r(o.ttft_attainment),
        "e2e_attainment": _r(o.e2e_attainment),
        "mean_quality": _r(o.mean_quality),
        "switches": o.switches,
        "rejected": o.rejected,
        "gpu_hours_by_variant": {k: _r(v) for k, v in sorted(o.hours_by_variant.items())},
        "mean_e2e_s": _r(o.mean_e2e_s),
        "model_error": _r(o.model_error),
    }


def to_json(report: Report) -> dict[str, Any]:
    """The machine-readable report (module docstring)."""
    u = report.usage
    period = u.arrivals.periodicity
    gpu_error, att_error = report.replay_errors()
    hours, attained = report.replay_range()
    return {
        "grmdeployment": f"{report.namespace}/{report.name}",
        "prometheus": report.prometheus,
        "window": {"start": _stamp(u.start), "end": _stamp(u.end), "step_s": u.arrivals.step_s},
        "period_s": _r(period.period_s, 2) if period else None,
        "period_strength": _r(period.strength, 3) if period else None,
        "gpu_hours": _r(u.gpu_hours),
        "replica_hours": _r(u.replica_hours),
        "peak_gpus": _r(u.peak_gpus, 2),
        "slo_attainment": _r(u.slo_attainment),
        "ttft_attainment": _r(u.ttft_attainment),
        "e2e_attainment": _r(u.e2e_attainment),
        "requests": _r(u.requests, 1),
        "outcomes": {k: _r(v, 1) for k, v in sorted(u.outcomes.items())},
        "shed_samples": _r(u.shed_samples, 1),
        "mean_quality": _r(u.mean_quality),
        "arrivals": {
            "mean_rps": _r(u.arrivals.mean_rps),
            "peak_rps": _r(u.arrivals.peak_rps),
            "peaks": [{"t_s": _r(t, 1), "rps": _r(r)} for t, r in u.arrivals.peaks],
            "requests_per_bin": [_r(r, 2) for r in u.arrivals.requests],
        },
        "variants": {
            name: {
                "hours_active": _r(v.hours_active),
                "replica_hours": _r(v.replica_hours),
                "gpu_hours": _r(v.gpu_hours),
                "gpus_per_replica": v.gpus_per_replica,
                "request_share": _r(v.request_share),
                "requests": _r(v.requests, 1),
                "samples_per_request": _r(v.samples_per_request, 3),
                "slo_attainment": _r(v.slo_attainment),
                "ttft_attainment": _r(v.ttft_attainment),
                "e2e_attainment": _r(v.e2e_attainment),
                "shed_samples": _r(v.shed_samples, 1),
                "quality": _r(v.quality),
                "quality_source": v.quality_source,
                "budgets": [
                    {
                        "samples": b.samples,
                        "hours_active": _r(b.hours_active),
                        "replica_hours": _r(b.replica_hours),
                        "gpu_hours": _r(b.gpu_hours),
                        "request_share": _r(b.request_share),
                        "requests": _r(b.requests, 1),
                        "slo_attainment": _r(b.slo_attainment),
                        "ttft_attainment": _r(b.ttft_attainment),
                        "e2e_attainment": _r(b.e2e_attainment),
                    }
                    for b in v.budgets
                ],
            }
            for name, v in u.variants.items()
        },
        "simulated": {
            "gpu_hours": _r(report.replay.gpu_hours),
            "slo_attainment": _r(report.replay.slo_attainment),
            "gpu_hours_error": _r(gpu_error),
            "slo_attainment_error": _r(att_error),
            "tolerance": {"gpu_hours": REPLAY_GPU_TOLERANCE, "slo_attainment": REPLAY_ATTAINMENT_TOLERANCE},
            "trusted": report.replay_trusted(),
            "cold_start_s": report.cold_start_s,
            "model_error": _r(report.replay.model_error),
            "ensemble": {
                "runs": len(report.replay_runs),
                "gpu_hours": [_r(v) for v in hours],
                "slo_attainment": None if attained is None else [_r(v) for v in attained],
            },
            "speeds": {k: _r(v) for k, v in sorted(report.speeds.items())},
        },
        "whatifs": [_outcome_json(o) for o in report.outcomes],
        "recommendations": [
            {
                "title": r.outcome.scenario.title,
                "change": r.outcome.scenario.patch,
                "kubectl": kubectl_patch(report, r.outcome.scenario.patch or {}),
                "gpu_hours": _r(r.outcome.gpu_hours),
                "gpu_hours_saved": _r(r.gpu_hours_saved),
                "saved_fraction": _r(r.saved_fraction),
                "slo_attainment": _r(r.outcome.slo_attainment),
                "mean_quality": _r(r.outcome.mean_quality),
            }
            for r in report.recommendations
        ],
        "events": report.events,
        "notes": report.notes,
        "queries": report.queries,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _speed_line(report: Report) -> str:
    factor = report.replay.model_error
    if not report.speeds:
        return (
            "The status has no measured replica speed (status.policyState.speed): the simulator's "
            "replicas run at the latency model's speed."
        )
    learnt = ", ".join(f"{k} {v:.2f}×" for k, v in sorted(report.speeds.items()))
    return (
        f"The simulator's replicas run {factor:.2f}× the latency model's time per step: the operator's "
        f"measured speeds ({learnt}) weighted by requests."
        + ("" if 0.67 <= factor <= 1.5 else " Far from 1: the profiles do not describe this hardware.")
    )


def to_markdown(report: Report) -> str:
    """The report for people: numbers, what-ifs, recommendations with their patches, the queries."""
    u = report.usage
    spec = report.spec
    a = u.arrivals
    lines = [
        f"# GRMDeployment {report.namespace}/{report.name}: {_stamp(u.start)} – {_stamp(u.end)}",
        "",
        f"Prometheus `{report.prometheus}`, bins of {a.step_s:g} s. SLO: "
        + ", ".join(f"{k} {v}" for k, v in spec.slo.model_dump(by_alias=True, exclude_none=True).items())
        + f"; quality floor {spec.precision.min_quality:g}; maxGPUs {spec.max_gpus()}.",
        "",
        "## Summary",
        "",
        "| | observed | simulator replay |",
        "|---|---|---|",
        f"| GPU-hours | {u.gpu_hours:.4f} | {report.replay.gpu_hours:.4f} |",
        f"| SLO attainment | {_pct(u.slo_attainment)} | {_pct(report.replay.slo_attainment)} |",
        f"| TTFT attainment | {_pct(u.ttft_attainment)} | {_pct(report.replay.ttft_attainment)} |",
        f"| e2e attainment | {_pct(u.e2e_attainment)} | {_pct(report.replay.e2e_attainment)} |",
        f"| mean quality | {_num(u.mean_quality)} | {_num(report.replay.mean_quality)} |",
        f"| mean score latency, s | {_num(u.mean_e2e_s, '.2f')} | {_num(report.replay.mean_e2e_s, '.2f')} |",
        "",
        f"Score requests: {u.requests:.0f} ("
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(u.outcomes.items()))
        + f"); samples shed: {u.shed_samples:.0f}; peak GPUs held: {u.peak_gpus:.1f}.",
        "",
    ]
    gpu_error, att_error = report.replay_errors()
    hours, _ = report.replay_range()
    verdict = "within" if report.replay_trusted() else "**outside**"
    lines += [
        f"Replayed {len(report.replay_runs)} times with the requests placed differently "
        f"inside their bins, the simulator held {hours[0]:.4f}–{hours[1]:.4f} GPU-hours. "
        f"The replay is {verdict} the stated tolerance (GPU-hours ±{REPLAY_GPU_TOLERANCE:.0%}, attainment "
        f"±{REPLAY_ATTAINMENT_TOLERANCE * 100:.0f} pp) of that range: GPU-hours "
        f"{'–' if gpu_error is None else f'{gpu_error:+.1%}'}, attainment "
        f"{'–' if att_error is None else f'{att_error * 100:+.1f} pp'}."
        + ("" if report.replay_trusted() else " Treat the what-ifs below as indications only."),
        "",
        _speed_line(report),
        "",
        "## Variants",
        "",
        "| variant | GPUs/replica | hours active | replica-hours | GPU-hours | request share | samples/score "
        "| TTFT att. | e2e att. | SLO att. | shed samples | quality |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in u.variants.values():
        lines.append(
            f"| {v.name} | {v.gpus_per_replica} | {v.hours_active:.4f} | {v.replica_hours:.4f} | "
            f"{v.gpu_hours:.4f} | {_pct(v.request_share)} | {_num(v.samples_per_request, '.2f')} | "
            f"{_pct(v.ttft_attainment)} | {_pct(v.e2e_attainment)} | {_pct(v.slo_attainment)} | "
            f"{v.shed_samples:.0f} | {_num(v.quality)} ({v.quality_source}) |"
        )
    lines += [
        "",
        "Per sample budget (the budget each bin ended with; `?`: no pod reported one):",
        "",
        "| variant | samples | hours active | GPU-hours | request share | TTFT att. | e2e att. | SLO att. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in u.variants.values():
        for b in v.budgets:
            lines.append(
                f"| {v.name} | {'?' if b.samples is None else b.samples} | {b.hours_active:.4f} | "
                f"{b.gpu_hours:.4f} | {_pct(b.request_share)} | {_pct(b.ttft_attainment)} | "
                f"{_pct(b.e2e_attainment)} | {_pct(b.slo_attainment)} |"
            )
    period = a.periodicity
    lines += [
        "",
        "## Load",
        "",
        f"Mean {a.mean_rps:.2f} score requests/s, peak {a.peak_rps:.2f}/s (bin of {a.step_s:g} s). Peaks: "
        + (", ".join(f"{r:.2f}/s at +{t:.0f} s" for t, r in a.peaks) or "none")
        + ".",
        "",
        (
            f"**Periodic**: period {period.period_s:.1f} s, strength {period.strength:.2f} (autocorrelation; "
            f"significance threshold {period.threshold:.2f}). Load that repeats like this is typically an RL "
            "training loop scoring its rollouts once per step."
            if period
            else "No significant period in the load."
        ),
        "",
    ]
    for key, caption in (
        ("load", "load"),
        ("replicas", "replicas per variant"),
        ("latency", "latency vs SLO"),
    ):
        if key in report.plots:
            lines += [f"![{caption}]({report.plots[key]})", ""]
    lines += [
        "## What-ifs (fleet simulator on the reconstructed arrivals)",
        "",
        "| scenario | GPU-hours | vs replay | SLO att. | TTFT att. | e2e att. | mean quality | switches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in report.outcomes:
        delta = o.gpu_hours - report.replay.gpu_hours
        lines.append(
            f"| {o.scenario.title} | {o.gpu_hours:.4f} | {delta:+.4f} | {_pct(o.slo_attainment)} | "
            f"{_pct(o.ttft_attainment)} | {_pct(o.e2e_attainment)} | {o.mean_quality:.4f} | {o.switches} |"
        )
    if "frontier" in report.plots:
        lines += ["", f"![what-if frontier]({report.plots['frontier']})"]
    lines += ["", "## Recommendations", ""]
    if not report.recommendations:
        lines.append(
            "None: no change saves GPU-hours at equal attainment (within "
            f"{ATTAINMENT_TOLERANCE * 100:.1f} pp of the replay) and quality ≥ "
            f"{spec.precision.min_quality:g}."
        )
    for i, r in enumerate(report.recommendations, 1):
        o = r.outcome
        lines += [
            f"{i}. **{o.scenario.title}**: saves {r.gpu_hours_saved:.4f} GPU-hours "
            f"({r.saved_fraction:.0%} of "
            f"the replay's {report.replay.gpu_hours:.4f}) at SLO attainment {_pct(o.slo_attainment)} "
            f"(replay {_pct(report.replay.slo_attainment)}) and mean quality {o.mean_quality:.4f}.",
            "",
            "   ```bash",
            f"   {kubectl_patch(report, o.scenario.patch or {})}",
            "   ```",
            "",
        ]
    if report.notes:
        lines += ["## Notes", "", *[f"* {n}" for n in report.notes], ""]
    if report.events:
        lines += ["## Events in the window", "", "| time | reason | message |", "|---|---|---|"]
        for e in report.events[-20:]:
            message = str(e.get("message", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {e.get('time', '')} | {e.get('reason', '')} | {message} |")
        lines.append("")
    lines += [
        "## Queries",
        "",
        "Every PromQL query this report ran (range queries, step = bin):",
        "",
        "```promql",
    ]
    lines += [f"# {k}\n{v}" for k, v in report.queries.items()]
    lines += ["```", ""]
    return "\n".join(lines)


def plots(report: Report, out_dir: Path, prefix: str = "") -> dict[str, str]:
    """Write the four PNGs into ``out_dir``; their file names by key (load, replicas, latency, frontier)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    u = report.usage
    a = u.arrivals
    minutes = [t / 60 for t in a.times]
    written: dict[str, str] = {}

    def save(fig: Any, key: str) -> None:
        name = f"{prefix}{key}.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written[key] = name

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(minutes, [r / a.step_s for r in a.requests], color="tab:blue", label="score requests/s")
    if a.periodicity:
        ax.set_title(f"load: period {a.periodicity.period_s:.0f} s (strength {a.periodicity.strength:.2f})")
    else:
        ax.set_title("load: no significant period")
    ax.set_xlabel("minutes")
    ax.set_ylabel("requests/s")
    ax.legend(loc="upper right")
    save(fig, "load")

    fig, ax = plt.subplots(figsize=(9, 3.2))
    names = [n for n in u.replicas if any(v > 0 for v in u.replicas[n])]
    if names:
        ax.stackplot(minutes, [u.replicas[n] for n in names], labels=names, step="pre", alpha=0.8)
        ax.legend(loc="upper right")
    ax.set_title("replicas per variant (mean per bin)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("replicas")
    save(fig, "replicas")

    fig, ax = plt.subplots(figsize=(9, 3.2))

    def line(values: Sequence[float | None], label: str, color: str) -> None:
        ax.plot(minutes, [math.nan if v is None else v for v in values], color=color, label=label)

    line(u.e2e_p95, "e2e p95 (score)", "tab:red")
    line(u.ttft_p95, "TTFT p95 (engine)", "tab:green")
    if report.spec.slo.e2e_p95_s is not None:
        ax.axhline(report.spec.slo.e2e_p95_s, color="tab:red", linestyle="--", label="e2e SLO")
    if report.spec.slo.ttft_p95_s is not None:
        ax.axhline(report.spec.slo.ttft_p95_s, color="tab:green", linestyle="--", label="TTFT SLO")
    ax.set_title("latency vs SLO (p95 per bin)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("seconds")
    ax.legend(loc="upper right", fontsize="small")
    save(fig, "latency")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [o.gpu_hours for o in report.outcomes]
    ys = [(o.slo_attainment or 0.0) * 100 for o in report.outcomes]
    qs = [o.mean_quality for o in report.outcomes]
    points = ax.scatter(xs, ys, c=qs, cmap="viridis", s=60, edgecolors="black")
    for o, x, y in zip(report.outcomes, xs, ys, strict=True):
        ax.annotate(o.scenario.title, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.scatter(
        [u.gpu_hours], [(u.slo_attainment or 0.0) * 100], marker="*", s=180, color="tab:red", label="observed"
    )
    fig.colorbar(points, ax=ax, label="mean quality")
    ax.set_xlabel("GPU-hours")
    ax.set_ylabel("SLO attainment, %")
    ax.set_title("what-if frontier")
    ax.legend(loc="best")
    ax.margins(x=0.15, y=0.1)
    save(fig, "frontier")
    return written
