"""Running the operator: credentials, kopf settings, the handler registry, ``grm-operator run``.

Handler modules plug in through :data:`HANDLER_MODULES`: each has a ``register(registry, ctx)``
function adding its kopf handlers to the operator's registry, with the shared
:class:`OperatorContext` (settings, API client, metrics, the reconciler and its store). The
reconcile module is the first; the autoscaler's timer module is added beside it.

Credentials: ``KUBECONFIG`` when set, else the pod's service account, else ``~/.kube/config``,
read by kopf's own login functions. The same :class:`kopf.ConnectionInfo` feeds kopf (through a
login handler, so kopf never guesses) and the operator's :class:`~grm_operator.kubeapi.KubeClient`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import kopf
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from grm_operator.handlers import autoscale, fleetmetrics, reconcile
from grm_operator.handlers.context import OperatorContext
from grm_operator.handlers.reconcile import Reconciler
from grm_operator.kubeapi import Connection, KubeClient
from grm_operator.settings import OperatorSettings, SettingsError
from grm_operator.telemetry.operator_metrics import OperatorMetrics

log = logging.getLogger(__name__)

_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


RegisterFn = Callable[[kopf.OperatorRegistry, OperatorContext], None]
# The handler modules of the operator, each a `register(registry, ctx)`; order is registration order.
HANDLER_MODULES: list[RegisterFn] = [reconcile.register, autoscale.register, fleetmetrics.register]


def connection_info(kopf_settings: kopf.OperatorSettings) -> Any:
    """The API server and credentials: KUBECONFIG, else the in-cluster service account, else
    ~/.kube/config. Raises :class:`kopf.LoginError` when none is available."""
    info = None
    if os.environ.get("KUBECONFIG") or not os.path.exists(_SERVICE_ACCOUNT_TOKEN):
        info = kopf.login_with_kubeconfig(settings=kopf_settings)
    if info is None:
        info = kopf.login_with_service_account(settings=kopf_settings)
        if info is not None:
            # In a pod the API server's address comes from the environment (kopf's default,
            # kubernetes.default.svc, needs cluster DNS).
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
            if host and port:
                info = kopf.ConnectionInfo(
                    server=f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}",
                    ca_path=info.ca_path,
                    token=info.token,
                    default_namespace=info.default_namespace,
                )
    if info is None:
        raise kopf.LoginError("no credentials: set KUBECONFIG or run in a pod with a service account")
    return info


def to_connection(info: Any) -> Connection:
    """Our client's view of a kopf ConnectionInfo (TLS context and auth header)."""
    headers = {"Authorization": f"Bearer {info.token}"} if info.token else {}
    ssl_context: Any = False if info.insecure else info.as_ssl_context()
    return Connection(
        server=str(info.server),
        ssl_context=ssl_context,
        headers=headers,
        default_namespace=info.default_namespace,
    )


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings for our operator."""
    ks = kopf.OperatorSettings()
    ks.peering.standalone = settings.standalone
    if settings.peering_name:
        ks.peering.name = settings.peering_name
        ks.peering.priority = settings.priority
    # We post our own Events (one per condition transition); kopf's per-log-line Events would be
    # extra writes on every handler run.
    ks.posting.enabled = False
    ks.watching.server_timeout = settings.watch_timeout_s
    ks.watching.client_timeout = settings.watch_timeout_s + 60
    ks.watching.connect_timeout = settings.request_timeout_s
    ks.networking.request_timeout = settings.request_timeout_s
    # Only the children we manage are listed and watched (server-side label selector).
    for kind in reconcile.CHILD_KINDS:
        ks.watching.label_selectors[kind.group, kind.version, kind.plural] = reconcile.MANAGED_SELECTOR
    # The autoscaler's pod cache: only worker pods (their template carries the managed-by label).
    ks.watching.label_selectors[autoscale.PODS.group, autoscale.PODS.version, autoscale.PODS.plural] = (
        reconcile.MANAGED_SELECTOR
    )
    return ks


def build(
    settings: OperatorSettings, *, registry: CollectorRegistry | None = None
) -> tuple[kopf.OperatorRegistry, kopf.OperatorSettings, OperatorContext]:
    """The kopf registry and settings with every handler module registered, and the context."""
    ks = kopf_settings(settings)
    info = connection_info(ks)
    metrics = OperatorMetrics(registry if registry is not None else REGISTRY)
    client = KubeClient(
        to_connection(info),
        field_manager=settings.field_manager,
        timeout_s=settings.request_timeout_s,
        observer=metrics.observe_request,
    )
    ctx = OperatorContext(
        settings=settings,
        connection_info=info,
        kube=client,
        metrics=metrics,
        reconciler=Reconciler(client, settings, metrics),
    )
    kopf_registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=kopf_registry)
    def _login(**_: Any) -> Any:
        return ctx.connection_info

    for register in HANDLER_MODULES:
        register(kopf_registry, ctx)
    return kopf_registry, ks, ctx


def run(settings: OperatorSettings) -> None:
    """Run the operator in this process until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # kopf logs every handler run at INFO and aiohttp every probe request; ours are the
    # transitions (applies, deletions, condition changes), so the others go to WARNING.
    for noisy in ("kopf.objects", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    kopf_registry, ks, _ctx = build(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    liveness = (
        f"http://{settings.health_host}:{settings.health_port}/healthz" if settings.health_port else None
    )
    log.info(
        "starting grm-operator: namespaces=%s peering=%s liveness=%s metrics_port=%s",
        ",".join(settings.namespaces) or "*",
        settings.peering_name or "standalone",
        liveness,
        settings.metrics_port,
    )
    kopf.run(
        registry=kopf_registry,
        settings=ks,
        standalone=settings.standalone,
        peering_name=settings.peering_name,
        priority=settings.priority,
        liveness_endpoint=liveness,
        clusterwide=settings.clusterwide,
        namespaces=list(settings.namespaces),
    )


# --- the `grm-operator run` subcommand ---------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``grm-operator run``; each overrides its ``GRM_*`` environment variable."""
    parser.add_argument(
        "--namespace", action="append", dest="namespaces", help="watch this namespace (repeat)"
    )
    parser.add_argument("--peering", dest="peering_name", help="kopf peering name (HA); unset: standalone")
    parser.add_argument("--priority", type=int, help="peering priority of this replica")
    parser.add_argument("--worker-image", help="default worker image")
    parser.add_argument("--prometheus-url", help="default Prometheus URL")
    parser.add_argument("--health-port", type=int, help="liveness endpoint port (0: off)")
    parser.add_argument("--metrics-port", type=int, help="operator /metrics port (0: off)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> OperatorSettings:
    """Settings from the environment with the command line's flags on top."""
    overrides = {
        name: getattr(args, name, None)
        for name in (
            "peering_name",
            "priority",
            "worker_image",
            "prometheus_url",
            "health_port",
            "metrics_port",
            "log_level",
        )
    }
    if getattr(args, "namespaces", None):
        overrides["namespaces"] = tuple(args.namespaces)
    return OperatorSettings.from_env(os.environ if environ is None else environ, **overrides)


def command(args: argparse.Namespace) -> int:
    """Entry point of ``grm-operator run``."""
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    run(settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grm_operator.handlers.runtime``: the run command without the CLI registry."""
    parser = argparse.ArgumentParser(prog="grm-operator run", description="Run the GRMDeployment operator.")
    add_arguments(parser)
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
