"""``grm-operator report``: a GRMDeployment's history turned into what to build, keep or drop.

``report --prometheus URL --namespace NS [--name NAME] --since 2h [--until TIME] [--step 60s]
[--candidate name=int4,precision=awq-int4,quality=0.97,...] [--json OUT] [--out DIR]`` reads the
GRMDeployment (spec, status) and its Events from the API server (``$KUBECONFIG`` or the pod's
service account, as ``grm-operator run``; ``--spec FILE`` reads the spec from a manifest instead and
needs no cluster), its history from Prometheus (:mod:`.history`), reduces it (:mod:`.usage`), runs
the what-ifs on the fleet simulator (:mod:`.whatif`) and writes the Markdown report with its plots
into ``--out`` and the JSON to ``--json`` (``-`` for stdout). Without ``--name``, every
GRMDeployment of the namespace gets its own report (``DIR/NAME/``; the JSON maps names to reports).

In the cluster (the chart's CronJob): ``--configmap NAME`` stores the latest report (``report.md``,
``report.json``) in a ConfigMap of the namespace, and ``--notify-threshold H`` sets the
``Recommendations`` condition on the GRMDeployment (``True`` when the best recommendation saves
more than H GPU-hours over the window) and posts an Event when it becomes True.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from grm_operator import kubeapi
from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.report.document import Report, plots, to_json, to_markdown
from grm_operator.report.history import HistoryError, RangeQuerier, fetch_history, selector
from grm_operator.report.usage import summarise
from grm_operator.report.whatif import (
    Candidate,
    arrival_trace,
    parse_candidate,
    recommend,
    replay_ensemble,
    replica_speed,
    run_scenario,
    scenarios,
)

CONDITION = "Recommendations"
CONFIGMAP_LIMIT = 900_000  # bytes; a ConfigMap holds at most 1 MiB


class ReportError(Exception):
    """The report cannot be made (bad arguments, nothing to read)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``report``'s arguments."""
    parser.add_argument(
        "--prometheus", required=True, help="Prometheus base URL, e.g. http://prometheus:9090"
    )
    parser.add_argument("--namespace", "-n", required=True, help="namespace of the GRMDeployment(s)")
    parser.add_argument(
        "--name", default=None, help="the GRMDeployment (default: every one in the namespace)"
    )
    parser.add_argument(
        "--since", default="24h", help="start: a duration before --until (2h) or RFC 3339 time"
    )
    parser.add_argument(
        "--until", default=None, help="end: RFC 3339 time or a duration before now (default now)"
    )
    parser.add_argument(
        "--step", default="60s", help="bin of the arrival process and the series (default 60s)"
    )
    parser.add_argument(
        "--resolution", default=None, help="how often pods are counted inside a bin (default min(step, 15s))"
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        type=parse_candidate,
        help="a variant to try, added to the ladder and in place of each variant: "
        "name=int4,precision=awq-int4,quality=0.97,gpusPerReplica=1[,uri=...] (repeatable)",
    )
    parser.add_argument(
        "--cold-start",
        default=None,
        help="the replicas' actual cold start for the simulator (default: sim-engine workers' startup "
        "delay from the grm.dev/worker-overrides annotation, else the variants' profiles)",
    )
    parser.add_argument(
        "--min-saving", type=float, default=0.02, help="least GPU-hour fraction a change must save"
    )
    parser.add_argument(
        "--spec", default=None, help="read the GRMDeployment from this manifest, not the cluster"
    )
    parser.add_argument("--json", default=None, help="write the JSON report here (- for stdout)")
    parser.add_argument("--out", default=None, help="write report.md and its PNG plots into this directory")
    parser.add_argument("--configmap", default=None, help="store the latest report in this ConfigMap")
    parser.add_argument(
        "--notify-threshold",
        type=float,
        default=None,
        help="set the Recommendations condition (and an Event) when a change saves more GPU-hours than this",
    )
    parser.add_argument("--insecure", action="store_true", help="do not verify Prometheus' TLS certificate")


def parse_time(text: str, now: float) -> float:
    """A duration before ``now`` ("2h") or an RFC 3339 / ISO time, as Unix seconds."""
    text = text.strip()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{text!r} is neither a duration (2h, 30m) nor an RFC 3339 time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _overrides(resource: dict[str, Any]) -> dict[str, Any]:
    annotations = (resource.get("metadata") or {}).get("annotations") or {}
    try:
        value = json.loads(annotations.get("grm.dev/worker-overrides", "{}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def cold_start_of(resource: dict[str, Any], given: str | None) -> tuple[float | None, list[str]]:
    """The replicas' actual cold start for the replay, and notes on how it was chosen."""
    if given is not None:
        return parse_duration(given), []
    annotations = (resource.get("metadata") or {}).get("annotations") or {}
    if annotations.get("grm.dev/worker-engine") != "sim":
        return None, []
    overrides = _overrides(resource)
    scale = float(overrides.get("sim.time_scale", 1.0) or 1.0)
    notes = []
    if scale != 1.0:
        notes.append(
            f"the workers' simulated engines run {scale:g}× faster than their latency model "
            "(sim.time_scale) while the operator sizes by the model: the replay cannot reproduce that "
            "mismatch, so its what-ifs are indications only"
        )
    delay = float(overrides.get("sim.startup_delay_s", 0.0) or 0.0) / scale
    return delay, notes


def _events(items: Sequence[dict[str, Any]], name: str, start: float, end: float) -> list[dict[str, Any]]:
    out = []
    for e in items:
        involved = e.get("involvedObject") or {}
        if involved.get("kind") != "GRMDeployment" or involved.get("name") != name:
            continue
        stamp = e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or ""
        try:
            t = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        if start <= t <= end:
            out.append(
                {"time": stamp, "reason": e.get("reason"), "type": e.get("type"), "message": e.get("message")}
            )
    return sorted(out, key=lambda e: str(e["time"]))


def make_report(
    prometheus: RangeQuerier,
    *,
    prometheus_url: str,
    resource: dict[str, Any],
    start: float,
    end: float,
    step_s: float,
    resolution_s: float,
    candidates: Sequence[Candidate] = (),
    cold_start_s: float | None = None,
    events: Sequence[dict[str, Any]] = (),
    min_saving: float = 0.02,
    notes: Sequence[str] = (),
) -> Report:
    """The whole report of one GRMDeployment (a manifest with metadata, spec and maybe status)."""
    meta = resource.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    spec = GRMDeploymentSpec.model_validate(resource.get("spec") or {})
    history = fetch_history(
        prometheus,
        sel=selector(namespace, name),
        start=start,
        end=end,
        step_s=step_s,
        resolution_s=resolution_s,
    )
    usage = summarise(history, spec, resource.get("status"))
    if usage.requests <= 0:
        raise ReportError(
            f"{namespace}/{name}: Prometheus has no score requests of it between "
            f"{datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M:%S} and "
            f"{datetime.fromtimestamp(end, UTC):%Y-%m-%d %H:%M:%S} UTC (is it scraped with the labels of "
            "docs/metrics.md?)"
        )
    trace = arrival_trace(usage.arrivals, name)
    whatifs, skipped = scenarios(spec, candidates)
    # Every run at the replicas' speed the operator measured (whatif module doc).
    speed, speeds = replica_speed(
        resource.get("status"), {name: v.requests for name, v in usage.variants.items()}
    )
    replay = run_scenario(whatifs[0], trace, cold_start_s=cold_start_s, model_error=speed)
    ensemble = replay_ensemble(replay, usage.arrivals, cold_start_s=cold_start_s)
    outcomes = [replay] + [
        run_scenario(s, trace, cold_start_s=cold_start_s, model_error=speed) for s in whatifs[1:]
    ]
    return Report(
        namespace=namespace,
        name=name,
        spec=spec,
        usage=usage,
        outcomes=outcomes,
        recommendations=recommend(outcomes, spec, min_saving=min_saving),
        queries=history.queries,
        prometheus=prometheus_url,
        cold_start_s=cold_start_s,
        speeds=speeds,
        ensemble=ensemble,
        events=list(_events(events, name, start, end)),
        notes=[*notes, *skipped],
    )


# --- the cluster -------------------------------------------------------------------------------------
async def _connect() -> kubeapi.KubeClient:
    import kopf

    from grm_operator.handlers.runtime import connection_info, to_connection

    try:
        info = connection_info(kopf.OperatorSettings())
    except kopf.LoginError as exc:
        raise ReportError(f"cannot reach the API server: {exc} (or give --spec FILE)") from exc
    return kubeapi.KubeClient(to_connection(info), field_manager="grm-report")


async def _read(namespace: str, name: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    client = await _connect()
    try:
        if name:
            one = await client.get(kubeapi.GRMDEPLOYMENTS, namespace, name)
            if one is None:
                raise ReportError(f"GRMDeployment {namespace}/{name} not found")
            resources = [one]
        else:
            resources = await client.list(kubeapi.GRMDEPLOYMENTS, namespace)
        events = await client.list(kubeapi.EVENTS, namespace)
        return resources, events
    finally:
        await client.close()


async def _publish(
    namespace: str,
    configmap: str | None,
    threshold: float | None,
    reports: Sequence[tuple[Report, dict[str, Any]]],
) -> None:
    client = await _connect()
    try:
        if configmap:
            data: dict[str, str] = {}
            for report, doc in reports:
                prefix = "" if len(reports) == 1 else f"{report.name}."
                data[f"{prefix}report.md"] = to_markdown(report)
                data[f"{prefix}report.json"] = json.dumps(doc, indent=1)
            if sum(len(v) for v in data.values()) > CONFIGMAP_LIMIT:
                for key in [k for k in data if k.endswith(".json")]:
                    data[key] = json.dumps(
                        {k: v for k, v in json.loads(data[key]).items() if k != "arrivals"}
                    )
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": configmap,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "grm-report"},
                },
                "data": data,
            }
            try:
                await client.create(kubeapi.CONFIGMAPS, namespace, body)
            except kubeapi.Conflict:
                await client.merge_patch(kubeapi.CONFIGMAPS, namespace, configmap, {"data": data})
        if threshold is not None:
            for report, _ in reports:
                await _set_condition(client, report, threshold, configmap)
    finally:
        await client.close()


async def _set_condition(
    client: kubeapi.KubeClient, report: Report, threshold: float, configmap: str | None
) -> None:
    best = report.recommendations[0] if report.recommendations else None
    over = best is not None and best.gpu_hours_saved > threshold
    if best is not None and over:
        message = (
            f"{best.outcome.scenario.title} would have saved {best.gpu_hours_saved:.3f} GPU-hours "
            f"({best.saved_fraction:.0%}) at SLO attainment {(best.outcome.slo_attainment or 0) * 100:.1f} %"
            + (f"; report in ConfigMap {configmap}" if configmap else "")
        )
        reason = "ChangeWouldSave"
    else:
        message = f"no change saves more than {threshold:g} GPU-hours over the report's window"
        reason = "NothingToChange"
    for _ in range(5):  # optimistic concurrency against the operator's own status writes
        resource = await client.get(kubeapi.GRMDEPLOYMENTS, report.namespace, report.name)
        if resource is None:
            return
        conditions = list((resource.get("status") or {}).get("conditions") or [])
        old = next((c for c in conditions if c.get("type") == CONDITION), None)
        status = "True" if over else "False"
        if old is not None and old.get("status") == status and old.get("message") == message:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = {
            "type": CONDITION,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now
            if old is None or old.get("status") != status
            else old.get("lastTransitionTime"),
            "observedGeneration": (resource.get("metadata") or {}).get("generation"),
        }
        conditions = [c for c in conditions if c.get("type") != CONDITION] + [new]
        patch = {
            "metadata": {"resourceVersion": resource["metadata"]["resourceVersion"]},
            "status": {"conditions": conditions},
        }
        try:
            await client.merge_patch(
                kubeapi.GRMDEPLOYMENTS, report.namespace, report.name, patch, subresource="status"
            )
        except kubeapi.Conflict:
            continue
        if over and (old is None or old.get("status") != "True"):
            await client.post_event(resource, reason=CONDITION, message=message, component="grm-report")
        return


# --- the command -------------------------------------------------------------------------------------
def _prometheus(url: str, insecure: bool) -> RangeQuerier:
    from prometheus_api_client import PrometheusConnect

    client: RangeQuerier = PrometheusConnect(url=url, disable_ssl=insecure, timeout=60)
    return client


def run(args: argparse.Namespace, prometheus: RangeQuerier | None = None) -> list[dict[str, Any]]:
    """The command's work; returns the JSON documents (one per GRMDeployment)."""
    now = time.time()
    end = parse_time(args.until, now) if args.until else now
    start = parse_time(args.since, end if args.until else now)
    if start >= end:
        raise ReportError(f"--since ({args.since}) is not before --until ({args.until or 'now'})")
    step_s = parse_duration(args.step)
    resolution_s = parse_duration(args.resolution) if args.resolution else min(step_s, 15.0)
    if args.spec:
        doc = yaml.safe_load(Path(args.spec).read_text())
        if not isinstance(doc, dict) or "spec" not in doc:
            raise ReportError(f"{args.spec}: not a GRMDeployment manifest")
        # The flags say where the series are; the manifest's own namespace may be another.
        doc.setdefault("metadata", {})["namespace"] = args.namespace
        if args.name:
            doc["metadata"]["name"] = args.name
        resources, events = [doc], list[dict[str, Any]]()
    else:
        resources, events = asyncio.run(_read(args.namespace, args.name))
    if not resources:
        raise ReportError(f"no GRMDeployment in namespace {args.namespace}")
    querier = prometheus if prometheus is not None else _prometheus(args.prometheus, args.insecure)
    out = Path(args.out) if args.out else None
    reports: list[tuple[Report, dict[str, Any]]] = []
    for resource in resources:
        cold, notes = cold_start_of(resource, args.cold_start)
        report = make_report(
            querier,
            prometheus_url=args.prometheus,
            resource=resource,
            start=start,
            end=end,
            step_s=step_s,
            resolution_s=resolution_s,
            candidates=args.candidate,
            cold_start_s=cold,
            events=events,
            min_saving=args.min_saving,
            notes=notes,
        )
        if out is not None:
            target = out if len(resources) == 1 else out / report.name
            report.plots = plots(report, target)
            target.mkdir(parents=True, exist_ok=True)
            (target / "report.md").write_text(to_markdown(report))
        reports.append((report, to_json(report)))
    if args.configmap or args.notify_threshold is not None:
        asyncio.run(_publish(args.namespace, args.configmap, args.notify_threshold, reports))
    docs = [doc for _, doc in reports]
    if args.json:
        payload: Any = docs[0] if len(docs) == 1 else {r.name: d for r, d in reports}
        text = json.dumps(payload, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    for report, _ in reports:
        best = report.recommendations[0] if report.recommendations else None
        print(
            f"{report.namespace}/{report.name}: {report.usage.gpu_hours:.3f} GPU-hours, SLO attainment "
            f"{(report.usage.slo_attainment or 0) * 100:.1f} %; "
            f"replay {report.replay.gpu_hours:.3f} GPU-hours; "
            + (
                f"best change: {best.outcome.scenario.title} saves {best.gpu_hours_saved:.3f}"
                if best
                else "no change"
            ),
            file=sys.stderr,
        )
    return docs


def command(args: argparse.Namespace) -> int:
    """Run ``report``."""
    try:
        run(args)
    except (ReportError, HistoryError, kubeapi.KubeError, OSError, ValueError) as exc:
        print(f"grm-operator report: {exc}", file=sys.stderr)
        return 2
    return 0
