"""``grm-operator render``: the objects the operator would create or update for a GRMDeployment,
printed as YAML without a cluster.

The objects come from the operator's own code: the GRMDeployment is parsed by the API models
(:class:`~grm_operator.api.models.GRMDeployment`, the defaults and checks the reconciler applies),
replica counts by :func:`~grm_operator.control.builders.replicas.replicas_from_status` (what the
reconciler applies after reading the status), and every child by
:func:`~grm_operator.control.builders.build_children`. Installation settings are read from the
same ``GRM_*`` variables as ``grm-operator run`` (:class:`~grm_operator.settings.OperatorSettings`),
so ``GRM_WORKER_IMAGE=… grm-operator render -f x.yaml`` shows what an operator installed with that
worker image would apply. Nothing is read from or written to a cluster.

What a file cannot say is filled in the way the API server would: a namespace-less object goes
to ``--namespace`` (``default``, as kubectl), and an object not yet stored has no uid, so the
owner references carry :data:`UNASSIGNED_UID` (the nil UUID) instead of the uid the API server
will assign. ``kubectl get grmd NAME -o yaml`` output keeps its namespace, uid and status.

Bad input (a missing file, YAML that does not parse, a GRMDeployment the models reject, a file
without one) is one line on stderr naming the file and the document, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from grm_operator.api.models import API_VERSION, KIND, GRMDeployment, GRMDeploymentStatus
from grm_operator.control.builders import build_children
from grm_operator.control.builders.metadata import Manifest
from grm_operator.control.builders.replicas import replicas_from_status
from grm_operator.settings import OperatorSettings, SettingsError

# The nil UUID (RFC 9562 §5.9): the owner references of a GRMDeployment the API server has not
# stored yet, which therefore has no uid.
UNASSIGNED_UID = "00000000-0000-0000-0000-000000000000"
DEFAULT_NAMESPACE = "default"
# Exit status of bad input, as argparse uses for bad arguments.
EXIT_BAD_INPUT = 2


class RenderError(ValueError):
    """Input ``render`` cannot use; the message names the file and the document."""


@dataclass(frozen=True)
class Source:
    """One GRMDeployment document of an input file and where it came from."""

    where: str  # "FILE: document N (GRMDeployment NAME)"
    body: Mapping[str, Any]


def _error_text(exc: ValidationError) -> str:
    """Pydantic's errors as ``path: message`` pairs (the first five)."""
    parts = []
    for err in exc.errors()[:5]:
        path = ".".join(str(p) for p in err["loc"])
        parts.append(f"{path}: {err['msg']}" if path else str(err["msg"]))
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _documents(path: Path) -> list[Any]:
    """The YAML documents of ``path`` (``-``: stdin), empty ones dropped."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not YAML: {exc}".replace("\n", " ")) from None


def grmdeployment_sources(path: Path) -> list[Source]:
    """The GRMDeployment documents of ``path``; other kinds (a Secret, a PVC, a KEDA
    ScaledObject beside it in the same file) are the user's own objects, not the operator's, and
    are skipped. A file without a GRMDeployment is an error."""
    sources = []
    for index, doc in enumerate(_documents(path), start=1):
        if not isinstance(doc, Mapping):
            raise RenderError(f"{path}: document {index} is not a mapping")
        if doc.get("kind") != KIND:
            continue
        metadata = doc.get("metadata")
        name = metadata.get("name", "?") if isinstance(metadata, Mapping) else "?"
        if doc.get("apiVersion") != API_VERSION:
            raise RenderError(
                f"{path}: document {index} (GRMDeployment {name}): apiVersion "
                f"{doc.get('apiVersion')!r} is not {API_VERSION}"
            )
        sources.append(Source(f"{path}: document {index} (GRMDeployment {name})", doc))
    if not sources:
        raise RenderError(f"{path}: no {API_VERSION} {KIND} in the file")
    return sources


def read_status(path: Path) -> Mapping[str, Any]:
    """A GRMDeployment status from ``path``: a status object, or a whole GRMDeployment (as
    ``kubectl get grmd NAME -o yaml`` prints it) whose ``.status`` is taken. Checked by the
    status model; returned in its wire form (camelCase), as the reconciler reads it."""
    docs = _documents(path)
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise RenderError(f"{path}: expected one status document, found {len(docs)}")
    doc = docs[0]
    raw = doc.get("status") if doc.get("kind") == KIND else doc
    if not isinstance(raw, Mapping):
        raise RenderError(f"{path}: the GRMDeployment has no status")
    try:
        GRMDeploymentStatus.model_validate(raw)
    except ValidationError as exc:
        raise RenderError(f"{path}: invalid status: {_error_text(exc)}") from None
    return raw


def _live_replicas(status: Mapping[str, Any]) -> dict[str, int]:
    """spec.replicas of each variant Deployment that exists, as status.variants records them
    (``desiredReplicas``: what the operator last asked each Deployment for)."""
    live: dict[str, int] = {}
    for entry in status.get("variants") or []:
        live[str(entry["name"])] = int(entry.get("desiredReplicas", 0))
    return live


def render_source(
    source: Source,
    status: Mapping[str, Any] | None,
    settings: OperatorSettings,
    *,
    namespace: str,
    pod_monitor: bool,
) -> list[Manifest]:
    """Every object the operator would create or update for one GRMDeployment document, in the
    order it applies them (ConfigMaps first: a Deployment's pods mount them). ``status``
    overrides the document's own; without either, replica counts are those of a new object."""
    body = dict(source.body)
    metadata = dict(body.get("metadata") or {})
    metadata.setdefault("namespace", namespace)
    metadata.setdefault("uid", UNASSIGNED_UID)
    body["metadata"] = metadata
    try:
        grmd = GRMDeployment.model_validate(body)
    except ValidationError as exc:
        raise RenderError(f"{source.where}: {_error_text(exc)}") from None
    if status is None:
        status = body.get("status") or {}
    replicas = replicas_from_status(grmd.spec, status, _live_replicas(status))
    children = build_children(
        grmd, replicas, settings, pod_monitor=pod_monitor and settings.podmonitor_enabled
    )
    return children.all()


class _ReadableDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing multi-line strings (a ConfigMap's worker.json) as literal
    blocks, so that they read and diff line by line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _represent_str)


def to_yaml(manifests: Sequence[Manifest]) -> str:
    """A YAML stream, one document per object, each opened by ``---``."""
    return "".join(
        "---\n" + yaml.dump(m, Dumper=_ReadableDumper, sort_keys=False, width=100) for m in manifests
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``grm-operator render -f FILE [--status FILE] [--namespace NS] [--no-pod-monitor]``."""
    parser.add_argument(
        "-f",
        "--filename",
        required=True,
        type=Path,
        help="YAML file with one or more GRMDeployments ('-': stdin); other kinds in it are skipped",
    )
    parser.add_argument(
        "--status",
        type=Path,
        help="a GRMDeployment status (or 'kubectl get grmd NAME -o yaml' output): render the replica "
        "counts the operator would apply in that state (serving variant, switch in progress); "
        "only with a file holding one GRMDeployment",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help=f"namespace of GRMDeployments that name none (default: {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--no-pod-monitor",
        dest="pod_monitor",
        action="store_false",
        help="leave out the PodMonitor, as on a cluster without the Prometheus Operator's CRD "
        "(it is also left out when GRM_PODMONITOR_ENABLED is false)",
    )


def run(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, warnings: list[str]) -> None:
    """Render ``args`` onto ``out``, appending to ``warnings`` what the user should know (a
    namespace the configured operator does not watch); raises :class:`RenderError` or
    :class:`SettingsError`."""
    settings = OperatorSettings.from_env(environ)
    sources = grmdeployment_sources(args.filename)
    status = read_status(args.status) if args.status is not None else None
    if status is not None and len(sources) != 1:
        raise RenderError(
            f"{args.filename}: --status needs a file with one GRMDeployment, it has {len(sources)}"
        )
    manifests: list[Manifest] = []
    for source in sources:
        rendered = render_source(
            source, status, settings, namespace=args.namespace, pod_monitor=args.pod_monitor
        )
        namespace = rendered[0]["metadata"]["namespace"]
        if not settings.clusterwide and namespace not in settings.namespaces:
            warnings.append(
                f"{source.where}: namespace {namespace} is not watched (GRM_NAMESPACES="
                f"{','.join(settings.namespaces)}): an operator so installed ignores it"
            )
        manifests.extend(rendered)
    out.write(to_yaml(manifests))


def command(args: argparse.Namespace) -> int:
    """Print every object as YAML; exit 2 with one line on stderr on bad input."""
    warnings: list[str] = []
    try:
        run(args, os.environ, sys.stdout, warnings)
    except (RenderError, SettingsError) as exc:
        print(f"grm-operator render: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in warnings:
        print(f"grm-operator render: warning: {warning}", file=sys.stderr)
    return 0
