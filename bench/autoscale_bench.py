"""Autoscaling benchmark: every policy of ``grm-operator simulate`` on both Azure traces.

For each setting (trace × rate scale × model error) it runs the simulator's command-line
contract (issue 6) once with ``--policy all`` and reads its ``--json``; then it judges our
policy (``grm``) against the targets:

* SLO attainment ≥ 99 %;
* GPU-hours ≤ 1.25 × the oracle's (the hindsight lower bound of the same run); a miss also
  gives ``oracle-cold``'s ratio (the same hindsight paying cold starts: what cold starts alone
  cost, which no policy that pays them can avoid);
* mean quality ≥ the spec's ``precision.minQuality``;
* better than every baseline: higher attainment at no more GPU-hours, or fewer GPU-hours at no
  lower attainment (the oracle is a bound, not a baseline).

Rate scales are chosen per trace from the measured peak need (:func:`peak_need`): the busiest
minute's arrival rate divided by what one replica of the best operating point (bf16×k4) serves
inside the SLO on the simulated truth (the oracle's measurement, model error 1.0: conv 1.24,
code 0.88 score requests/s). conv is smooth, its need scales with the rate: ×0.6 needs 4.3
replicas and ×2.4 15.3. code's busiest minute is one of its bursts, whose need barely follows
the rate (×0.1: 5.4, ×0.5: 9.9, ×1: 13.2, ×2: 17.7): ~4 is out of reach (×0.1 would simulate 10
hours), so code runs at ×0.5 and ×2. The 16-GPU budget holds 8 bf16 replicas: at the high
scales bf16×k4 alone cannot serve the peak, and the quality ladder (fewer samples, fp8) must.
Each runs with model error 1.0 and 1.4 (8 runs, about 2 minutes on 2 cores).

Run: ``.venv/bin/python bench/autoscale_bench.py [--write-results] [--jobs 2]`` (``make bench``).
With ``--write-results`` the "Autoscaling" section of bench/RESULTS.md is replaced by this run's
and the plots land in bench/plots/.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
PLOTS = ROOT / "bench" / "plots"
SPECS = ROOT / "bench" / "specs"
SECTION = "Autoscaling"
BASELINES = ("static-peak", "hpa-gpu", "kpa", "saturation")
ATTAINMENT_TARGET = 0.99
GPU_HOURS_FACTOR = 1.25
#: Plots larger than this are reported (the repository keeps them small).
PLOT_LIMIT_BYTES = 200_000


@dataclass(frozen=True)
class Setting:
    """One simulator run: a trace at a rate scale and sample budget, with a model error."""

    trace: str  # "conv" or "code"
    rate_scale: float
    samples: int
    model_error: float
    spec: str = "ladder.yaml"

    @property
    def slug(self) -> str:
        return f"{self.trace}-x{self.rate_scale:g}-k{self.samples}-err{self.model_error:g}"

    @property
    def title(self) -> str:
        return (
            f"{self.trace} trace, rate ×{self.rate_scale:g}, k = {self.samples}, "
            f"model error ×{self.model_error:g} (bench/specs/{self.spec})"
        )


#: Rate scales per trace: the busiest minute needs ≈ 4 (conv; code's bursts: ≈ 10) and ≈ 16
#: replicas of the best point (bf16×k4) at model error 1.0 — :func:`peak_need`, the module doc.
RATE_SCALES: dict[str, tuple[float, ...]] = {"conv": (0.6, 2.4), "code": (0.5, 2.0)}
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(trace, scale, 4, error)
    for trace, scales in RATE_SCALES.items()
    for scale in scales
    for error in (1.0, 1.4)
)


def traces_dir() -> Path:
    """The traces the benchmark replays, committed with their sources (bench/traces/SOURCES.md)."""
    return ROOT / "bench" / "traces"


def trace_path(name: str) -> Path:
    return traces_dir() / f"AzureLLMInferenceTrace_{name}.csv"


def peak_rate(times: Sequence[float] | np.ndarray, window_s: float = 60.0) -> float:
    """Arrivals per second of the busiest ``window_s`` (windows stepped by half of it)."""
    arr = np.asarray(times, dtype=float)
    if arr.size == 0:
        return 0.0
    starts = np.arange(float(arr[0]), float(arr[-1]) + window_s / 2, window_s / 2)
    counts = np.searchsorted(arr, starts + window_s) - np.searchsorted(arr, starts)
    return float(counts.max()) / window_s


@dataclass(frozen=True)
class PeakNeed:
    """What a setting's busiest minute asks of the best operating point."""

    peak_rps: float  # score requests per second in the busiest minute
    capacity_rps: float  # score requests per second one replica of ``point`` serves inside the SLO
    point: str

    @property
    def replicas(self) -> float:
        return self.peak_rps / self.capacity_rps if self.capacity_rps > 0 else float("inf")

    def sentence(self) -> str:
        return (
            f"Busiest minute: {self.peak_rps:.2f} score requests/s, {self.replicas:.1f} × {self.point} "
            f"replicas at the {self.capacity_rps:.3g} requests/s one serves inside the SLO (measured on "
            "the simulated truth, as the oracle measures it)."
        )


def peak_need(setting: Setting) -> PeakNeed:
    """The busiest minute of the setting's trace and the replicas of the best point it needs."""
    from grm_operator.simulator.cli import load_spec
    from grm_operator.simulator.fleet import Fleet, SimConfig
    from grm_operator.simulator.policies.oracle import Oracle, measured_capacity
    from grm_operator.simulator.policies.sizing import best_point
    from grm_operator.simulator.trace import load_trace

    spec = load_spec(SPECS / setting.spec, setting.samples)
    trace = load_trace(trace_path(setting.trace)).scaled(setting.rate_scale)
    fleet = Fleet(SimConfig(spec=spec, trace=trace, model_error=setting.model_error, seed=0), Oracle(spec))
    point = best_point(spec)
    return PeakNeed(peak_rate(trace.times), measured_capacity(fleet, point), point.label)


def min_quality(spec_file: Path) -> float:
    """``spec.precision.minQuality`` of a GRMDeployment manifest (the CRD's default 1.0 if unset)."""
    doc = yaml.safe_load(spec_file.read_text())
    spec = doc.get("spec", doc) if isinstance(doc, dict) else {}
    return float((spec.get("precision") or {}).get("minQuality", 1.0))


def command_for(setting: Setting, json_out: Path, plot_out: Path | None) -> list[str]:
    """The issue-6 command line of one run (run with this interpreter)."""
    cmd = [
        sys.executable,
        "-m",
        "grm_operator.cli",
        "simulate",
        "--trace",
        str(trace_path(setting.trace)),
        "--spec",
        str(SPECS / setting.spec),
        "--policy",
        "all",
        "--rate-scale",
        f"{setting.rate_scale:g}",
        "--samples",
        str(setting.samples),
        "--model-error",
        f"{setting.model_error:g}",
        "--seed",
        "0",
        "--json",
        str(json_out),
        "--quiet",
    ]
    if plot_out is not None:
        cmd += ["--plot", str(plot_out)]
    return cmd


# --- judging ---------------------------------------------------------------------------------------


def beats(ours: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Higher attainment at no more GPU-hours, or fewer GPU-hours at no lower attainment
    (compared at the JSON's precision: attainment to 4 decimals, GPU-hours to 0.01)."""
    att_o, att_b = round(float(ours["slo_attainment"]), 4), round(float(other["slo_attainment"]), 4)
    gpu_o, gpu_b = round(float(ours["gpu_hours"]), 2), round(float(other["gpu_hours"]), 2)
    return (att_o > att_b and gpu_o <= gpu_b) or (gpu_o < gpu_b and att_o >= att_b)


def judge(policies: Mapping[str, Mapping[str, Any]], floor: float) -> list[str]:
    """The targets ``grm`` misses in one run, each as a sentence with the numbers (empty: all met)."""
    grm = policies["grm"]
    misses: list[str] = []
    att = float(grm["slo_attainment"])
    if att < ATTAINMENT_TARGET:
        misses.append(f"SLO attainment {att:.2%} < {ATTAINMENT_TARGET:.0%}")
    oracle = policies.get("oracle")
    if oracle is not None and float(oracle["gpu_hours"]) > 0:
        ratio = float(grm["gpu_hours"]) / float(oracle["gpu_hours"])
        if ratio > GPU_HOURS_FACTOR:
            cold = policies.get("oracle-cold")
            bound = (
                f"; hindsight paying cold starts (oracle-cold) needs "
                f"{float(cold['gpu_hours']) / float(oracle['gpu_hours']):.2f}×"
                if cold is not None
                else ""
            )
            misses.append(
                f"GPU-hours {float(grm['gpu_hours']):.2f} = {ratio:.2f}× the oracle's "
                f"{float(oracle['gpu_hours']):.2f} (target ≤ {GPU_HOURS_FACTOR}×{bound})"
            )
    quality = float(grm["mean_quality"])
    if quality < floor - 1e-9:
        misses.append(f"mean quality {quality:.4f} < minQuality {floor:g}")
    for name in BASELINES:
        other = policies.get(name)
        if other is not None and not beats(grm, other):
            misses.append(
                f"not better than {name} ({att:.2%} at {float(grm['gpu_hours']):.2f} GPU-h vs "
                f"{float(other['slo_attainment']):.2%} at {float(other['gpu_hours']):.2f} GPU-h)"
            )
    return misses


def render_table(policies: Mapping[str, Mapping[str, Any]]) -> str:
    """One Markdown table of a run, policies in the JSON's order."""
    oracle_gpu = float(policies.get("oracle", {}).get("gpu_hours", 0.0) or 0.0)
    lines = [
        "| policy | SLO attainment | GPU-hours | × oracle | mean quality | p95 TTFT s | p95 e2e s "
        "| switches | scale events | rejected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in policies.items():
        gpu = float(r["gpu_hours"])
        ratio = f"{gpu / oracle_gpu:.2f}" if oracle_gpu > 0 else "–"
        bold = "**" if name == "grm" else ""
        lines.append(
            f"| {bold}{name}{bold} | {float(r['slo_attainment']):.2%} | {gpu:.2f} | {ratio} | "
            f"{float(r['mean_quality']):.4f} | {float(r['p95_ttft_s']):.3g} | {float(r['p95_e2e_s']):.3g} | "
            f"{r['switches']} | {r['scale_events']} | {r['rejected']} |"
        )
    return "\n".join(lines)


Run = tuple[Setting, Mapping[str, Any], float, str | None, PeakNeed | None]


def render_section(runs: Sequence[Run]) -> str:
    """The whole "Autoscaling" section: per setting a table, the verdict and the plot."""
    out = [
        f"## {SECTION}",
        "",
        "`bench/autoscale_bench.py` (`make bench`): `grm-operator simulate --policy all --seed 0` on the "
        "Azure LLM-inference traces (Patel et al., Splitwise, ISCA 2024; CC-BY-4.0), each row a GRM score "
        "request of k critiques. Targets for `grm`: SLO attainment ≥ 99 %, GPU-hours ≤ 1.25 × oracle, "
        "mean quality ≥ minQuality, better than every baseline (higher attainment at no more GPU-hours, "
        "or fewer GPU-hours at no lower attainment). Method and baselines: docs/benchmark.md. "
        f"Machine: {platform.machine()}, Python {platform.python_version()}.",
        "",
    ]
    verdicts: list[str] = []
    for setting, doc, seconds, plot, need in runs:
        policies = doc["policies"]
        floor = min_quality(SPECS / setting.spec)
        misses = judge(policies, floor) if "grm" in policies else ["grm did not run"]
        out += [f"### {setting.title}", ""]
        if need is not None:
            out += [need.sentence(), ""]
        out += [render_table(policies), ""]
        if misses:
            out.append("`grm` misses: " + "; ".join(misses) + ".")
            verdicts.append(f"* {setting.slug}: " + "; ".join(misses))
        else:
            out.append("`grm` meets every target.")
        out.append(f"Simulated in {seconds:.1f} s (all policies).")
        if plot:
            out += ["", f"![{setting.slug}](plots/{Path(plot).name})"]
        out.append("")
    out += ["### Verdict", ""]
    if verdicts:
        out += ["`grm` falls short of a target in these settings:", "", *verdicts]
    else:
        out.append("`grm` meets every target in every setting.")
    return "\n".join(out).rstrip() + "\n"


def replace_section(text: str, section: str, body: str) -> str:
    """``text`` with the ``## {section}`` section (up to the next ``## `` heading) replaced by
    ``body``, or ``body`` appended when there is no such section."""
    lines = text.splitlines(keepends=True)
    heading = f"## {section}"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + body
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + body + ("\n" + tail if tail else "")


# --- running ---------------------------------------------------------------------------------------


def run_one(
    setting: Setting, workdir: Path, plots: Path | None
) -> tuple[dict[str, Any], float, str | None, PeakNeed]:
    json_out = workdir / f"{setting.slug}.json"
    plot_out = plots / f"{setting.slug}.png" if plots is not None else None
    started = time.monotonic()
    proc = subprocess.run(
        command_for(setting, json_out, plot_out), cwd=ROOT, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{setting.slug}: simulate exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    sys.stdout.write(f"== {setting.title} ({seconds:.1f} s)\n{proc.stdout}\n")
    sys.stdout.flush()
    doc: dict[str, Any] = json.loads(json_out.read_text())
    return doc, seconds, str(plot_out) if plot_out is not None else None, peak_need(setting)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-results", action="store_true", help="replace the section in RESULTS.md")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    parser.add_argument("--only", default=None, help="only settings whose slug contains this")
    parser.add_argument("--out", default=str(ROOT / ".cache" / "bench-autoscale"), help="JSON directory")
    args = parser.parse_args(argv)
    settings = [s for s in SETTINGS if args.only is None or args.only in s.slug]
    workdir = Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    plots = PLOTS if args.write_results else workdir
    plots.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda s: run_one(s, workdir, plots), settings))
    runs: list[Run] = [(s, *result) for s, result in zip(settings, results, strict=True)]
    section = render_section(runs)
    print(section)
    for _, _, _, plot, _ in runs:
        if plot and Path(plot).stat().st_size > PLOT_LIMIT_BYTES:
            print(
                f"warning: {plot} is {Path(plot).stat().st_size} bytes (> {PLOT_LIMIT_BYTES})",
                file=sys.stderr,
            )
    if args.write_results:
        RESULTS.write_text(replace_section(RESULTS.read_text(), SECTION, section))
        print(f"wrote the {SECTION!r} section of {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
