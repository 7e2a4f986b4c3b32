"""Running several controllers on one setting, and showing the result: table, JSON, plot."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grm_operator.simulator.fleet import Fleet, SimConfig
from grm_operator.simulator.hindsight import hindsight_bounds
from grm_operator.simulator.policies import BOUNDS, make_controller
from grm_operator.simulator.results import RunResult


def progress_bar(label: str, stream: Any = None) -> Callable[[float], None]:
    """A one-line progress bar on stderr: ``label [#####.....]  42%``."""
    out = stream if stream is not None else sys.stderr
    finished = False

    def show(fraction: float) -> None:
        nonlocal finished
        if finished:
            return
        finished = fraction >= 1.0
        filled = round(fraction * 30)
        out.write(f"\r{label:<12} [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:3.0f}%")
        if fraction >= 1.0:
            out.write("\n")
        out.flush()

    return show


def run_policies(
    config: SimConfig,
    names: Sequence[str],
    *,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> dict[str, RunResult]:
    """Each named controller on the same trace, spec and seed; the bounds among ``names``
    (:data:`BOUNDS`) are computed together by :func:`hindsight_bounds`, and what they share (the
    attainment target, the requests no point can serve) goes to ``info["bounds"]``."""
    results: dict[str, RunResult] = {}
    wanted = [n for n in names if n in BOUNDS]
    bounds = None
    for name in names:
        started = time.perf_counter()
        if name in BOUNDS:
            if bounds is None:
                if progress:
                    sys.stderr.write(f"{'bounds':<12} (hindsight: {', '.join(wanted)})\n")
                bounds = hindsight_bounds(config, wanted)
                if info is not None:
                    info["bounds"] = bounds.info()
            results[name] = bounds.bounds[name].result
            continue
        controller = make_controller(name, config.spec)
        fleet = Fleet(config, controller)
        bar = progress_bar(name) if progress else None
        results[name] = fleet.run(bar)
        if bar is not None:
            bar(1.0)
            sys.stderr.write(f"{'':12} {time.perf_counter() - started:.1f}s\n")
    return results


def to_json(results: dict[str, RunResult], info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Issue 6's schema: ``{"policies": {NAME: {slo_attainment, gpu_hours, ...}}}``, plus what the
    bounds share (``"bounds"``: target, unservable requests, total) when they ran."""
    doc: dict[str, Any] = {"policies": {name: r.summary() for name, r in results.items()}}
    if info:
        doc.update(info)
    return doc


def table(results: dict[str, RunResult], markdown: bool = False) -> str:
    """The comparison table (plain text, or Markdown)."""
    head = [
        "policy",
        "SLO att.",
        "GPU-h",
        "vs oracle-cold",
        "quality",
        "p95 TTFT",
        "p95 e2e",
        "switches",
        "scales",
        "rejected",
    ]
    oracle = results.get("oracle-cold")
    rows = []
    for name, r in results.items():
        ratio = f"{r.gpu_hours / oracle.gpu_hours:.2f}×" if oracle and oracle.gpu_hours > 0 else "-"
        rows.append(
            [
                name,
                f"{r.slo_attainment * 100:.2f}%",
                f"{r.gpu_hours:.2f}",
                ratio,
                f"{r.mean_quality:.3f}",
                f"{r.p95_ttft_s:.2f}s",
                f"{r.p95_e2e_s:.2f}s",
                str(r.switches),
                str(r.scale_events),
                str(r.rejected),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), *(fmt.format(*row) for row in rows)])


def plot(
    results: dict[str, RunResult],
    path: str | Path,
    title: str,
    slo_e2e: float | None,
    arrivals: Sequence[float],
) -> None:
    """Load, replicas per variant, active variant and p95 e2e over time, one column per policy.
    ``arrivals`` are the trace's arrival times (s), binned per 30 s for the load row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    times = np.asarray(arrivals, dtype=np.float64)
    edges = np.arange(0.0, float(times.max(initial=0.0)) + 30.0, 30.0)
    counts, _ = np.histogram(times, bins=edges)
    fig, axes = plt.subplots(4, len(names), figsize=(2.6 * len(names), 7.0), sharex=True, squeeze=False)
    variants: list[str] = []
    for r in results.values():
        for p in r.series:
            for v in p.replicas:
                if v not in variants:
                    variants.append(v)
    for col, name in enumerate(names):
        series = results[name].series
        t = [p.time / 60.0 for p in series]
        ax = axes[0][col]
        ax.plot(edges[:-1] / 60.0, counts / 30.0, lw=0.6, color="tab:gray")
        ax.set_title(name, fontsize=9)
        ax = axes[1][col]
        for v in variants:
            ax.plot(t, [p.replicas.get(v, 0) for p in series], lw=0.8, label=v)
        ax.plot(t, [p.gpus for p in series], lw=0.6, ls=":", color="black", label="GPUs")
        ax = axes[2][col]
        ax.step(t, [variants.index(p.active) for p in series], lw=0.8, where="post", color="tab:purple")
        ax.set_yticks(range(len(variants)))
        ax.set_yticklabels(variants if col == 0 else [], fontsize=7)
        ax = axes[3][col]
        e2e = [p.e2e_p95 if p.e2e_p95 is not None else float("nan") for p in series]
        ax.plot(t, e2e, lw=0.6)
        if slo_e2e:
            ax.axhline(slo_e2e, color="tab:red", lw=0.6, ls="--")
            ax.set_ylim(0, 3 * slo_e2e)
        ax.set_xlabel("minutes", fontsize=8)
        for row in axes:
            row[col].tick_params(labelsize=7)
    axes[0][0].set_ylabel("requests/s", fontsize=8)
    axes[1][0].set_ylabel("replicas / GPUs", fontsize=8)
    axes[1][0].legend(fontsize=6, loc="upper left")
    axes[2][0].set_ylabel("variant", fontsize=8)
    axes[3][0].set_ylabel("p95 e2e (s)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
