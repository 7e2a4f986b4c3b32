"""``grm-live-demo`` (``make demo``): the whole system live on the local cluster.

It starts the local cluster (control plane, a real node — kubelet and containerd —, kube-proxy,
Prometheus when installed), builds (or takes from ``.cache/images``) the operator's and the sim
worker's images and loads them into the node, installs the operator with its Helm chart naming
them (the operator container runs the real ``grm-operator run`` under the chart's ServiceAccount
and securityContext), applies ``examples/grmd-live-demo.yaml`` (sim-engine workers),
replays a slice of an Azure LLM-inference trace, rescaled in time and rate, through the worker
Service (kube-proxy) to ``/v1/grm/score``, and prints every couple of seconds the offered load,
the replicas per variant, the client and observed p95 latencies, the SLO and metrics conditions
and each new decision of the operator with its reason. At the end: a summary (requests, failures,
SLO attainment, GPU-seconds, decisions) and a PNG timeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from grm_testkit.cluster import pyimages
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.traffic import (
    LoadGenerator,
    Outcome,
    Snapshot,
    decision_key,
    find_traces_dir,
    p95,
    recent,
    rescaled,
    snapshot,
    trace_rates,
)

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "examples" / "grmd-live-demo.yaml"


@dataclass
class Sample:
    """One row of the timeline."""

    t: float
    offered_rps: float
    done_rps: float
    client_p95_s: float | None
    ready: dict[str, int]
    gpus: int
    slo_met: str | None
    metrics: str | None


@dataclass
class Recorder:
    """The timeline and the decisions seen, kept for the summary and the plot."""

    samples: list[Sample] = field(default_factory=list)
    decisions: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    seen: set[tuple[str, str, str]] = field(default_factory=set)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="GRMDeployment to apply")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of trace replay")
    parser.add_argument("--peak-rps", type=float, default=9.0, help="score requests/s at the trace's peak")
    parser.add_argument("--floor-rps", type=float, default=1.0, help="least score requests/s")
    parser.add_argument("--trace", type=Path, default=None, help="Azure trace CSV (default: conv trace)")
    parser.add_argument("--trace-start", type=float, default=1200.0, help="slice start, trace seconds")
    parser.add_argument("--trace-span", type=float, default=1200.0, help="slice length, trace seconds")
    parser.add_argument(
        "--gpus", type=int, default=8, help="GPUs of the local cluster's node (room for a switch's surge)"
    )
    parser.add_argument("--png", type=Path, default=Path("demo-timeline.png"), help="timeline PNG")
    # 80 s: the stabilised scale-in, then the switch back to bf16 (30 s without a busy point in
    # the look-back + 30 s of fit, measured at ~55 s into the tail) and its drain.
    parser.add_argument("--tail", type=float, default=80.0, help="seconds at the floor rate after the replay")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between status lines")


def _trace(args: argparse.Namespace) -> Path:
    if args.trace is not None:
        return Path(args.trace)
    traces = find_traces_dir(REPO)
    if traces is None:
        raise SystemExit(f"no Azure traces in {REPO / 'bench' / 'traces'} (use --trace)")
    return traces / "AzureLLMInferenceTrace_conv.csv"


def _ready_operator(lc: LocalCluster) -> bool:
    pods = lc.get("/api/v1/namespaces/grm-system/pods")["items"]
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for p in pods
        for c in (p.get("status") or {}).get("conditions") or []
    )


def _fmt(seconds: float | None) -> str:
    return "   -  " if seconds is None else f"{seconds:5.2f}s"


def _line(sample: Sample, snap: Snapshot) -> str:
    observed = snap.observed
    sim_p95 = observed.get("e2eP95")
    return (
        f"t={sample.t:5.0f}s load {sample.offered_rps:4.1f} rps (done {sample.done_rps:4.1f}) | "
        f"{snap.replicas_text():<18} GPUs {sample.gpus} | client p95 {_fmt(sample.client_p95_s)} "
        f"worker e2e p95 {_fmt(sim_p95)} | SLOMet={sample.slo_met} Metrics={sample.metrics}"
        + (f" | switch {snap.switch}" if snap.switch else "")
    )


def _record(
    rec: Recorder, t: float, load: LoadGenerator, rate: float, snap: Snapshot, gpus_of: dict[str, int]
) -> Sample:
    outcomes = load.outcomes()
    window = recent(outcomes, t, 10.0)
    sample = Sample(
        t=t,
        offered_rps=rate,
        done_rps=len(window) / 10.0,
        client_p95_s=p95([o.latency for o in window]),
        ready=dict(snap.ready),
        gpus=snap.gpus(gpus_of),
        slo_met=snap.conditions.get("SLOMet"),
        metrics=snap.conditions.get("MetricsAvailable"),
    )
    rec.samples.append(sample)
    return sample


def _new_decisions(rec: Recorder, t: float, snap: Snapshot) -> list[dict[str, Any]]:
    fresh = []
    for decision in snap.decisions:
        key = decision_key(decision)
        if key not in rec.seen:
            rec.seen.add(key)
            if decision.get("action") not in (None, "None", "Hold"):
                rec.decisions.append((t, decision))
                fresh.append(decision)
    return fresh


def summary(
    outcomes: list[Outcome], rec: Recorder, e2e_slo_s: float, time_scale: float, interval_s: float
) -> str:
    """The end-of-demo summary: client requests and failures, the share answered within the e2e SLO
    (client latency × the sim's time scale, i.e. in simulated seconds), GPU-seconds held by ready
    pods, and the decisions by kind."""
    ok = [o for o in outcomes if o.ok]
    within = sum(1 for o in ok if o.latency * time_scale <= e2e_slo_s)
    gpu_s = sum(s.gpus for s in rec.samples) * interval_s
    met = [s for s in rec.samples if s.slo_met is not None]
    kinds: dict[str, int] = {}
    for _, d in rec.decisions:
        kinds[str(d.get("action"))] = kinds.get(str(d.get("action")), 0) + 1
    lines = [
        "── summary " + "─" * 60,
        f"requests       {len(outcomes)} sent, {len(ok)} answered 200, {len(outcomes) - len(ok)} failed",
        f"SLO attainment {100.0 * within / max(1, len(outcomes)):.1f}% of requests within e2e p95 target "
        f"{e2e_slo_s:g}s (simulated); SLOMet=True in "
        f"{100.0 * sum(s.slo_met == 'True' for s in met) / max(1, len(met)):.0f}% of samples",
        f"GPU-seconds    {gpu_s:.0f} (wall clock, ready pods)",
        "decisions      " + (", ".join(f"{k}×{v}" for k, v in sorted(kinds.items())) or "none"),
    ]
    return "\n".join(lines)


def plot(rec: Recorder, outcomes: list[Outcome], path: Path) -> None:
    """The timeline PNG: offered/answered load, replicas per variant, client p95 latency, and a
    vertical line at each decision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s.t for s in rec.samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 6.5), sharex=True)
    axes[0].plot(ts, [s.offered_rps for s in rec.samples], label="offered")
    axes[0].plot(ts, [s.done_rps for s in rec.samples], label="answered (10 s)")
    axes[0].set_ylabel("score req/s")
    variants = sorted({v for s in rec.samples for v in s.ready})
    for v in variants:
        axes[1].step(ts, [s.ready.get(v, 0) for s in rec.samples], where="post", label=v)
    axes[1].set_ylabel("ready replicas")
    axes[2].plot(ts, [s.client_p95_s or 0.0 for s in rec.samples], label="client p95")
    failed = [o.sent for o in outcomes if not o.ok]
    if failed:
        axes[2].plot(failed, [0.0] * len(failed), "rx", label="failed")
    axes[2].set_ylabel("latency s")
    axes[2].set_xlabel("seconds since the load began")
    for t, d in rec.decisions:
        for ax in axes:
            ax.axvline(t, color="grey", alpha=0.3, linewidth=0.8)
        axes[1].annotate(str(d.get("action")), (t, 0), fontsize=7, rotation=90, va="bottom")
    for ax in axes:
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("grm-elastic live demo: load, replicas per variant, latency, decisions")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    why = LocalCluster.unavailable()
    if why is not None:
        _say(out, f"the local cluster cannot start here: {why}")
        return 2
    manifest: dict[str, Any] = yaml.safe_load(Path(args.manifest).read_text())
    name, ns = manifest["metadata"]["name"], manifest["metadata"].get("namespace", "default")
    spec = manifest["spec"]
    gpus_of = {v["name"]: int(v.get("gpusPerReplica", 1)) for v in spec["variants"]}
    overrides = yaml.safe_load(
        manifest["metadata"].get("annotations", {}).get("grm.dev/worker-overrides", "{}")
    )
    time_scale = float(overrides.get("sim.time_scale", 1.0))
    e2e_slo_s = _seconds(str(spec.get("slo", {}).get("e2eP95", "20s")))
    curve = trace_rates(_trace(args), start_s=args.trace_start, span_s=args.trace_span, buckets=24)
    replay = rescaled(curve, args.duration, args.peak_rps, args.floor_rps)

    def rate(t: float) -> float:
        # After the replay a quiet tail at the floor rate, so the stabilised scale-in and the
        # switch back up the ladder can show.
        return replay(t) if t < args.duration else args.floor_rps

    why = LocalCluster.unavailable() or pyimages.missing()
    if why is not None:
        raise SystemExit(f"grm-live-demo: the local cluster cannot run here: {why}")
    started = time.monotonic()
    _say(out, f"starting the local cluster ({args.gpus} GPUs, the real kubelet with containerd) …")
    with LocalCluster(gpus=args.gpus, scrape_interval_s=1.0) as lc:
        _say(out, f"  up in {time.monotonic() - started:.0f}s; building and loading the images …")
        values = pyimages.load_project_images(lc)
        _say(
            out,
            f"  up in {time.monotonic() - started:.0f}s; helm install grm helm/grm-operator -n grm-system",
        )
        lc.helm(
            "install",
            "grm",
            str(REPO / "helm" / "grm-operator"),
            "-n",
            "grm-system",
            "--create-namespace",
            *values,
        )
        lc.wait_for(lambda: _ready_operator(lc), 180, "the operator pod Ready", 0.5)
        _say(out, f"  operator Ready; kubectl apply -f {args.manifest}")
        lc.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        path = f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments/{name}"
        lc.wait_for(
            lambda: snapshot(lc.get(path)).conditions.get("Ready") == "True", 240, f"{name} Ready", 0.5
        )
        url = lc.service_url(ns, name, 8000) + "/v1/grm/score"
        _say(
            out,
            f"  {name} Ready after {time.monotonic() - started:.0f}s; replaying {_trace(args).name} "
            f"({args.trace_span:g}s of trace in {args.duration:g}s, peak {args.peak_rps:g} req/s) → {url}",
        )
        rec = Recorder()
        load = LoadGenerator(url, rate, max_in_flight=96).start()
        try:
            end = args.duration + args.tail
            next_at = 0.0
            while load.elapsed() < end:
                wait = next_at - load.elapsed()
                if wait > 0:
                    time.sleep(wait)
                next_at += args.interval
                t = load.elapsed()
                snap = snapshot(lc.get(path))
                sample = _record(rec, t, load, rate(t), snap, gpus_of)
                _say(out, _line(sample, snap))
                for d in _new_decisions(rec, t, snap):
                    _say(out, f"    ▶ {d.get('action')}: {d.get('reason')}")
        finally:
            outcomes = load.stop()
        _say(out, summary(outcomes, rec, e2e_slo_s, time_scale, args.interval))
        plot(rec, outcomes, Path(args.png))
        _say(out, f"timeline: {args.png}  (total {time.monotonic() - started:.0f}s)")
    return 0 if all(o.ok for o in outcomes) else 1


def _seconds(text: str) -> float:
    """'500ms', '20s', '2m' → seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def command(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grm-live-demo` console script (``make demo``)."""
    parser = argparse.ArgumentParser(
        prog="grm-live-demo",
        description="the local cluster, the Helm-installed operator and a trace replayed live (PNG timeline)",
    )
    add_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
