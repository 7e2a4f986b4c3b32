"""``grm-operator simulate``: the fleet simulator from the command line.

``simulate --trace FILE --spec GRMDEPLOYMENT.yaml [--policy NAME[,NAME…]|all] [--rate-scale X]
[--samples K] [--model-error F] [--seed N] [--json OUT.json] [--plot OUT.png]`` prints the
comparison table. These flags are the interface the benchmark (``bench/autoscale_bench.py``,
docs/benchmark.md) runs it through; ``--limit N`` and ``--quiet`` are conveniences on top.
``--live-agreement VARIANT=SHARE`` (repeatable) gives a variant's true share of verdicts that
agree with the reference's, which the live-agreement watch may demote it for (docs/quality.md).
``--cluster-gpus N`` gives the cluster fewer GPUs than maxGPUs (Pending pods wait for ever), and
with ``--node-delay DURATION`` a node autoscaler that adds a node for each Pending pod after that
long, up to ``--node-max-gpus`` (:mod:`grm_operator.simulator.cluster`). ``--pending-grace
DURATION`` overrides the spec's ``scaling.pendingGrace``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import gate
from grm_operator.simulator.cluster import ClusterModel
from grm_operator.simulator.fleet import SimConfig
from grm_operator.simulator.policies import POLICIES
from grm_operator.simulator.report import plot, run_policies, table, to_json
from grm_operator.simulator.trace import load_trace


def load_spec(path: str | Path, samples: int | None = None) -> GRMDeploymentSpec:
    """The spec of a GRMDeployment manifest (or of a bare spec); ``samples`` sets samples.max.

    With precision.qualityPolicy Measured, the quality gate applies as the operator applies it:
    a manifest with a status (``kubectl get grmd X -o yaml``) is simulated on the ladder its
    measurements admit, at the measured qualities; without one every variant counts as measured
    at its declared quality (:func:`grm_operator.policy.gate.declared_as_measured`).
    """
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    raw: dict[str, Any] = doc.get("spec", doc) if isinstance(doc, dict) else {}
    spec = GRMDeploymentSpec.model_validate(raw)
    status = doc.get("status") if isinstance(doc, dict) and "spec" in doc else None
    measured = (status or {}).get("variants") if isinstance(status, dict) else None
    spec = gate.as_declared(spec, measured if measured else gate.declared_as_measured(spec))
    if samples is not None:
        if samples < 1:
            raise ValueError(f"--samples must be ≥ 1, got {samples}")
        data = spec.model_dump(by_alias=True, exclude_none=True)
        bounds = data.setdefault("scoring", {}).setdefault("samples", {})
        bounds["max"] = samples
        bounds["min"] = min(bounds.get("min", 1), samples)
        spec = GRMDeploymentSpec.model_validate(data)
    return spec


def with_pending_grace(spec: GRMDeploymentSpec, grace: str | None) -> GRMDeploymentSpec:
    """``spec`` with scaling.pendingGrace set to ``grace`` (unchanged when None)."""
    if grace is None:
        return spec
    parse_duration(grace)  # a clear error for a malformed duration
    data = spec.model_dump(by_alias=True, exclude_none=True)
    data.setdefault("scaling", {})["pendingGrace"] = grace
    return GRMDeploymentSpec.model_validate(data)


def cluster_model(gpus: int | None, node_delay: str | None, node_max_gpus: int | None) -> ClusterModel | None:
    """The ``--cluster-gpus`` / ``--node-delay`` / ``--node-max-gpus`` cluster (None: maxGPUs)."""
    if gpus is None:
        if node_delay is not None or node_max_gpus is not None:
            raise ValueError("--node-delay and --node-max-gpus need --cluster-gpus (the GPUs at the start)")
        return None
    if node_max_gpus is not None and node_delay is None:
        raise ValueError("--node-max-gpus needs --node-delay (a node autoscaler)")
    # Without --node-max-gpus the autoscaler has no limit of its own (the fleet stops at maxGPUs).
    delay = parse_duration(node_delay) if node_delay is not None else None
    return ClusterModel(gpus=gpus, node_delay_s=delay, max_gpus=node_max_gpus)


def parse_policies(text: str) -> list[str]:
    """``all`` or a comma-separated list of :data:`POLICIES`."""
    if text.strip() == "all":
        return list(POLICIES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise ValueError(f"unknown policy {', '.join(unknown) or text!r}; known: {', '.join(POLICIES)}, all")
    return names


def parse_live_agreement(items: list[str] | None) -> dict[str, float]:
    """``VARIANT=SHARE`` items (share within [0, 1]) as a mapping."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        try:
            share = float(raw)
        except ValueError:
            share = -1.0
        if not sep or not name or not 0.0 <= share <= 1.0:
            raise ValueError(f"--live-agreement expects VARIANT=SHARE with SHARE in [0, 1], got {item!r}")
        out[name] = share
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``simulate``'s arguments."""
    parser.add_argument(
        "--trace", required=True, help="Azure LLM-inference CSV (TIMESTAMP,ContextTokens,GeneratedTokens)"
    )
    parser.add_argument("--spec", required=True, help="GRMDeployment manifest (YAML)")
    parser.add_argument("--policy", default="all", help=f"comma-separated of {', '.join(POLICIES)}, or all")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate")
    parser.add_argument("--samples", type=int, default=None, help="GRM sample budget k of the best point")
    parser.add_argument("--model-error", type=float, default=1.0, help="truth is F× slower than the profile")
    parser.add_argument("--seed", type=int, default=0, help="seed of the step-time jitter")
    parser.add_argument("--json", default=None, help="write the results (JSON) here")
    parser.add_argument("--plot", default=None, help="write the time-series plot (PNG) here")
    parser.add_argument("--limit", type=int, default=None, help="only the trace's first N rows")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--live-agreement",
        action="append",
        metavar="VARIANT=SHARE",
        help="a variant's true share of verdicts agreeing with the reference's (default 1); repeatable",
    )
    parser.add_argument(
        "--cluster-gpus", type=int, default=None, help="GPUs the cluster has at the start (default: maxGPUs)"
    )
    parser.add_argument(
        "--node-delay", default=None, help="a node autoscaler: a Pending pod gets a node after this long"
    )
    parser.add_argument(
        "--node-max-gpus", type=int, default=None, help="the node autoscaler's ceiling (GPUs in all)"
    )
    parser.add_argument("--pending-grace", default=None, help="override spec.scaling.pendingGrace")


def simulate(
    *,
    trace: str | Path,
    spec_path: str | Path,
    policies: list[str],
    rate_scale: float = 1.0,
    samples: int | None = None,
    model_error: float = 1.0,
    seed: int = 0,
    json_out: str | None = None,
    plot_out: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    live_agreement: dict[str, float] | None = None,
    cluster: ClusterModel | None = None,
    pending_grace: str | None = None,
) -> dict[str, Any]:
    """Run the policies, print the table, write JSON/plot; returns the JSON document."""
    spec = with_pending_grace(load_spec(spec_path, samples), pending_grace)
    data = load_trace(trace, limit).scaled(rate_scale)
    unknown = sorted(set(live_agreement or {}) - {v.name for v in spec.variants})
    if unknown:
        raise ValueError(f"--live-agreement names no variant of the spec: {', '.join(unknown)}")
    config = SimConfig(
        spec=spec,
        trace=data,
        model_error=model_error,
        seed=seed,
        live_agreement=live_agreement or {},
        cluster=cluster,
    )
    info: dict[str, Any] = {}
    results = run_policies(config, policies, progress=progress, info=info)
    print(
        f"{data.name}: {len(data)} requests over {data.duration_s / 60:.1f} min (rate ×{rate_scale}), "
        f"k = {spec.scoring.samples.max}, model error ×{model_error}, seed {seed}"
        + (f"; cluster: {cluster.describe()}" if cluster is not None else "")
        + (f"; pendingGrace {spec.scaling.pending_grace}" if pending_grace is not None else "")
    )
    print(table(results))
    if "bounds" in info:
        b = info["bounds"]
        print(
            f"bounds: target {b['target']:.2%} (min(99 %, oracle-max − 0.5 pt)); {b['unservable']} of "
            f"{b['total']} requests no admissible point serves inside the SLO even alone"
        )
    doc = to_json(results, info)
    if json_out:
        Path(json_out).write_text(json.dumps(doc, indent=2) + "\n")
    if plot_out:
        title = f"{data.name} ×{rate_scale}, model error ×{model_error}"
        plot(results, plot_out, title, spec.slo.e2e_p95_s, data.times.tolist())
    return doc


def command(args: argparse.Namespace) -> int:
    """Run ``simulate``."""
    try:
        names = parse_policies(args.policy)
        simulate(
            trace=args.trace,
            spec_path=args.spec,
            policies=names,
            rate_scale=args.rate_scale,
            samples=args.samples,
            model_error=args.model_error,
            seed=args.seed,
            json_out=args.json,
            plot_out=args.plot,
            limit=args.limit,
            progress=not args.quiet,
            live_agreement=parse_live_agreement(args.live_agreement),
            cluster=cluster_model(args.cluster_gpus, args.node_delay, args.node_max_gpus),
            pending_grace=args.pending_grace,
        )
    except (OSError, ValueError) as exc:
        print(f"grm-operator simulate: {exc}", file=sys.stderr)
        return 2
    return 0
