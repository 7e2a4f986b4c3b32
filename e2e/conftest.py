"""The e2e suite's cluster: a local cluster by default, or — with `--real-cluster` — the cluster of
`$KUBECONFIG`; either way with the operator installed by its Helm chart.

`lc` (one per test module) is a `LocalCluster` or a `RealCluster`: both offer the methods the
scenarios use (kubectl, helm, get, api, wait_for, service_url). Tests that need powers only the
local cluster has (stopping its Prometheus, a node's GPU budget) take `local_lc` instead, which
skips with the reason in real-cluster mode.

The local cluster runs its pods on the real kubelet with containerd: the operator and sim worker
images are built here (`grm_testkit.cluster.pyimages`, cached in `.cache/images`), loaded into the
node and named by `helm install` with `pullPolicy: Never`. Modules that run vLLM
(test_vllm_switch, test_accuracy_gate) start a cluster of their own (`local_operator_cluster`):
their pods run this machine's `.venv-vllm` and `.venv-compress` through hostPath volumes
(`grm_testkit.cluster.hostmounts`), since an image with vLLM and torch (~2 GB) would not fit CI's
time.

Real-cluster mode installs the chart as release `grm` in `grm-system` (with each `--helm-set
KEY=VALUE` as a `--set`, e.g. the images' repositories) and uninstalls it at the end, unless that
release exists already (then it is used as it is and left alone). Without
`KUBECONFIG` the real-cluster tests skip with the reason; local-cluster mode never looks at it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from grm_testkit.cluster import pyimages, realcluster, tools
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.cluster.realcluster import ClusterHandle, RealCluster

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "grm-operator"
RELEASE = "grm"
OPERATOR_NAMESPACE = "grm-system"
# One node of 8 GPUs: a variant switch surges the new variant next to the old, so the node needs
# room beyond the examples' maxGPUs=4. Scrapes every second: rate() needs two samples in the
# examples' 10 s metrics window, and a new sample is queryable ~5 s after it was scraped.
LOCAL_GPUS = 8
SCRAPE_INTERVAL_S = 1.0
# The local cluster's operator pod was Ready within the 120 s the scenarios used to allow; a real
# cluster may first pull the image.
OPERATOR_READY_S = 180.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-cluster",
        action="store_true",
        default=False,
        help="run the e2e tests against the cluster of $KUBECONFIG instead of a local cluster "
        "(skipped without KUBECONFIG)",
    )
    parser.addoption(
        "--helm-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --real-cluster: a `helm install --set` of the chart (repeatable), e.g. "
        "image.repository=registry.example/grm-operator for images pushed to your own registry",
    )


def real_cluster_mode(config: pytest.Config) -> bool:
    return bool(config.getoption("--real-cluster"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --real-cluster, a module with an `lc` fixture of its own (e.g. test_localcluster.py,
    which tests the local cluster itself) would start a local cluster anyway: skip it instead."""
    if not real_cluster_mode(config):
        return
    for item in items:
        module = getattr(item, "module", None)
        if module is None or Path(str(module.__file__)).parent != Path(__file__).parent:
            continue
        if "lc" in vars(module):
            reason = f"{module.__name__} starts a local cluster of its own; not run with --real-cluster"
            item.add_marker(pytest.mark.skip(reason=reason))


def _skip_or_fail(reason: str) -> None:
    # CI builds everything the local cluster needs: a missing piece there is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def operator_pod(cluster: ClusterHandle) -> dict[str, Any] | None:
    """The one live operator pod of the release when it is Ready, else None."""
    pods = cluster.get(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 and _ready(live[0]) else None


def local_operator_cluster(
    *,
    gpus: int = LOCAL_GPUS,
    prometheus: bool | None = None,
    scrape_interval_s: float = SCRAPE_INTERVAL_S,
    chart_values: tuple[str, ...] = (),
    before_install: Callable[[LocalCluster], None] | None = None,
) -> Iterator[LocalCluster]:
    """A local cluster with the operator installed by its chart and Ready, the project's images
    built, loaded into the real node and named in the chart. `before_install` runs on the started
    cluster before `helm install` (e.g. applying the Prometheus Operator's CRDs, which the chart's
    templates and the operator's start look for).
    Skips (fails under CI) with the reason when something it needs is missing here."""
    why = LocalCluster.unavailable() or pyimages.missing()
    if why is not None:
        _skip_or_fail(why)
    if tools.kubectl() is None or tools.helm() is None:
        _skip_or_fail(f"kubectl/helm not installed in {tools.tools_bin_dir()} (run `make tools`)")
    with LocalCluster(
        gpus=gpus,
        scrape_interval_s=scrape_interval_s,
        prometheus=prometheus,
        start_timeout_s=300,
    ) as cluster:
        values: list[str] = pyimages.load_project_images(cluster)
        if cluster.prometheus_url:
            # As on a real cluster: the chart's prometheus.url becomes the operator's
            # GRM_PROMETHEUS_URL, used by GRMDeployments with metrics.source Prometheus and no
            # prometheusURL of their own (those with source Direct are unaffected).
            values += ["--set", f"prometheus.url={cluster.prometheus_url}"]
        values += chart_values
        if before_install is not None:
            before_install(cluster)
        cluster.helm("install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace", *values)
        cluster.wait_for(lambda: operator_pod(cluster), OPERATOR_READY_S, "the operator pod Ready")
        yield cluster


def _real(helm_set: list[str]) -> Iterator[RealCluster]:
    why = realcluster.unavailable()
    if why is not None:
        pytest.skip(why)
    with RealCluster() as cluster:
        installed_here = (
            cluster.helm("status", RELEASE, "-n", OPERATOR_NAMESPACE, check=False).returncode != 0
        )
        if installed_here:
            values = [arg for each in helm_set for arg in ("--set", each)]
            install = ("install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace")
            cluster.helm(*install, *values)
        try:
            cluster.wait_for(lambda: operator_pod(cluster), OPERATOR_READY_S, "the operator pod Ready", 1.0)
            yield cluster
        finally:
            if installed_here:
                cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)


@pytest.fixture(scope="session")
def operator_cluster() -> Callable[..., AbstractContextManager[LocalCluster]]:
    """`local_operator_cluster` as a context manager, for modules that need a cluster of their own
    (other GPUs, no Prometheus, extra chart values)."""
    return contextmanager(local_operator_cluster)


@pytest.fixture(scope="module")
def lc(request: pytest.FixtureRequest) -> Iterator[ClusterHandle]:
    """The cluster of this module's tests, the operator installed and Ready: a `LocalCluster`, or
    a `RealCluster` with --real-cluster; tests should use only what `ClusterHandle` offers."""
    if real_cluster_mode(request.config):
        handle: Iterator[ClusterHandle] = _real(list(request.config.getoption("--helm-set")))
    else:
        handle = local_operator_cluster()
    yield from handle


@pytest.fixture(scope="module")
def local_lc(request: pytest.FixtureRequest) -> LocalCluster:
    """`lc` for tests that need the local cluster's own powers; skips with --real-cluster (before
    touching the real cluster at all)."""
    if real_cluster_mode(request.config):
        pytest.skip(
            f"{request.module.__name__} needs the local cluster's own powers (e.g. stopping its "
            "Prometheus); not run with --real-cluster"
        )
    cluster = request.getfixturevalue("lc")
    assert isinstance(cluster, LocalCluster)
    return cluster
