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
import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from grm_operator.handlers import autoscale, fleetmetrics, reconcile
from grm_operator.handlers.context import OperatorContext
from grm_operator.handlers.leadership import LeaderElector, LeaseTiming, unique_identity
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
    # kopf's own peering stays off: HA replicas elect a leader through a Lease instead
    # (handlers/leadership.py), and only the leader runs kopf at all.
    ks.peering.standalone = True
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
        "starting grm-operator: namespaces=%s leader_election=%s liveness=%s metrics_port=%s",
        ",".join(settings.namespaces) or "*",
        settings.leader_election_lease or "off",
        liveness,
        settings.metrics_port,
    )
    if settings.leader_election_lease:
        asyncio.run(_run_elected(settings, kopf_registry, ks, _ctx, liveness))
        return
    identity = unique_identity(settings.leader_election_identity)
    kopf.run(**_kopf_arguments(settings, kopf_registry, ks, liveness, identity))


def _kopf_arguments(
    settings: OperatorSettings,
    registry: kopf.OperatorRegistry,
    ks: kopf.OperatorSettings,
    liveness: str | None,
    identity: str,
) -> dict[str, Any]:
    """What kopf runs with, alone or once elected: the same registry, settings and scope.

    `identity` is given because kopf's own default (`peering.detect_own_id`) calls
    `getpass.getuser()`, which raises `KeyError: 'getpwuid(): uid not found: 65532'` in the
    operator image: the chart runs it as uid 65532, which has no /etc/passwd entry there (nor in
    any slim Python image). Seen on the local cluster's real kubelet: the operator crash-looped
    right after acquiring its Lease."""
    return {
        "registry": registry,
        "settings": ks,
        "standalone": True,
        "liveness_endpoint": liveness,
        "clusterwide": settings.clusterwide,
        "namespaces": list(settings.namespaces),
        "identity": identity,
    }


# Exit status of a replica that lost its leadership (client-go's managers exit too): the kubelet
# restarts it as a fresh candidate with an empty cache.
LEADERSHIP_LOST_EXIT = 3


def elector_for(settings: OperatorSettings, ctx: OperatorContext) -> LeaderElector:
    """The Lease elector of this process, on a client of its own (so it never shares a session
    with kopf's loop) that reports to the same API metrics."""
    client = KubeClient(
        to_connection(ctx.connection_info),
        field_manager=settings.field_manager,
        timeout_s=settings.request_timeout_s,
        observer=ctx.metrics.observe_request,
    )
    namespace = settings.leader_election_namespace or ctx.connection_info.default_namespace or "default"
    return LeaderElector(
        client,
        namespace,
        str(settings.leader_election_lease),
        unique_identity(settings.leader_election_identity),
        LeaseTiming(
            duration_s=settings.lease_duration_s,
            renew_deadline_s=settings.lease_renew_deadline_s,
            retry_period_s=settings.lease_retry_period_s,
        ),
    )


async def _standby_liveness(settings: OperatorSettings) -> web.AppRunner | None:
    """/healthz while waiting for the Lease (kopf's own endpoint starts with kopf, on the same
    port): a standby is alive, and its liveness probe must not restart it in a loop."""
    if not settings.health_port:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"leader": False})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.health_host, settings.health_port).start()
    return runner


async def _run_elected(
    settings: OperatorSettings,
    kopf_registry: kopf.OperatorRegistry,
    ks: kopf.OperatorSettings,
    ctx: OperatorContext,
    liveness: str | None,
) -> None:
    """Wait for the Lease, run kopf while holding it, exit at once when it is lost.

    A standby starts nothing of kopf (no watch, no cache, no handler, no autoscaler), so it cannot
    act. A leader that loses the Lease exits the process (status :data:`LEADERSHIP_LOST_EXIT`)
    rather than stopping kopf gracefully: a graceful stop lets handlers finish on a cache that is
    no longer the truth, and exiting drops every cache with certainty. It has stopped before
    the Lease can pass to another replica (renew deadline < lease duration)."""
    elector = elector_for(settings, ctx)
    log.info("waiting for Lease %s/%s as %s", elector.namespace, elector.name, elector.identity)
    ctx.metrics.leader.set(0)
    standby = await _standby_liveness(settings)
    try:
        await elector.acquire()
    finally:
        if standby is not None:
            await standby.cleanup()
    ctx.metrics.leader.set(1)
    operator = asyncio.create_task(
        kopf.operator(**_kopf_arguments(settings, kopf_registry, ks, liveness, elector.identity)),
        name="kopf",
    )
    holding = asyncio.create_task(elector.hold(), name="lease-renewal")
    await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
    if holding.done():
        log.error(
            "lost the leadership of Lease %s/%s: exiting so that nothing acts on this replica's cache",
            elector.namespace,
            elector.name,
        )
        logging.shutdown()
        os._exit(LEADERSHIP_LOST_EXIT)
    holding.cancel()
    await asyncio.gather(holding, return_exceptions=True)
    await elector.release()
    await elector.kube.close()
    ctx.metrics.leader.set(0)
    operator.result()  # re-raise what stopped kopf, if it failed


# --- the `grm-operator run` subcommand ---------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``grm-operator run``; each overrides its ``GRM_*`` environment variable."""
    parser.add_argument(
        "--namespace", action="append", dest="namespaces", help="watch this namespace (repeat)"
    )
    parser.add_argument(
        "--leader-election-lease",
        dest="leader_election_lease",
        help="name of the Lease HA replicas elect a leader with; unset: no election (one replica)",
    )
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
            "leader_election_lease",
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
