"""The fault proxy in front of the real API server: it passes requests and watch streams through,
injects 500s, 409s and latency by rule (an injected error never reaches the API server), keeps
a bearer token's identity, and drops open watches on demand."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grm_testkit.cluster.controlplane import ControlPlane
from grm_testkit.cluster.faultplan import FaultRule
from grm_testkit.cluster.faultproxy import FaultProxy

pytestmark = pytest.mark.controlplane


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    with FaultProxy.for_control_plane(control_plane) as p:
        yield p


@pytest.fixture
def via_proxy(proxy: FaultProxy, tmp_path: Path) -> Iterator[Any]:
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(proxy.kubeconfig(tmp_path / "proxy.yaml")))
    try:
        yield api
    finally:
        api.close()


def _configmap(name: str) -> Any:
    from kubernetes import client

    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"k": "v"})


def test_passes_requests_through_and_records_them(proxy: FaultProxy, via_proxy: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(via_proxy)
    core.create_namespaced_config_map(namespace, _configmap("a"))
    assert core.read_namespaced_config_map("a", namespace).data == {"k": "v"}
    assert proxy.url.startswith("https://127.0.0.1:")
    seen = [(r.method, r.status, r.injected) for r in proxy.records if "/configmaps" in r.path]
    assert seen == [("POST", 201, False), ("GET", 200, False)]


def test_injected_500_and_409_never_reach_the_server(
    proxy: FaultProxy, via_proxy: Any, control_plane: ControlPlane, namespace: str
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(via_proxy)
    rule = proxy.add_rule(
        FaultRule(method="POST", path=f"/namespaces/{namespace}/configmaps$", status=500, times=1)
    )
    with pytest.raises(client.ApiException) as failed:
        core.create_namespaced_config_map(namespace, _configmap("b"))
    assert failed.value.status == 500
    assert json.loads(failed.value.body)["reason"] == "InternalError"
    status, _ = control_plane.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/b")
    assert status == 404  # the injected failure did not store the object
    core.create_namespaced_config_map(namespace, _configmap("b"))  # times=1: the retry passes
    assert rule.fired == 1

    proxy.add_rule(FaultRule(method="PATCH", path="/configmaps/b$", status=409, times=2))
    for _ in range(2):
        with pytest.raises(client.ApiException) as conflict:
            core.patch_namespaced_config_map("b", namespace, {"data": {"k": "w"}})
        assert conflict.value.status == 409
        assert json.loads(conflict.value.body)["reason"] == "Conflict"
    core.patch_namespaced_config_map("b", namespace, {"data": {"k": "w"}})
    assert core.read_namespaced_config_map("b", namespace).data == {"k": "w"}
    injected = [(r.method, r.status) for r in proxy.records if r.injected]
    assert injected == [("POST", 500), ("PATCH", 409), ("PATCH", 409)]


def test_added_latency(proxy: FaultProxy, via_proxy: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(via_proxy)
    core.list_namespaced_config_map(namespace)  # before the rule
    proxy.add_rule(FaultRule(method="GET", path="/configmaps$", latency_s=0.5, times=1))
    start = time.monotonic()
    core.list_namespaced_config_map(namespace)
    slow = time.monotonic() - start
    core.list_namespaced_config_map(namespace)  # times=1: the rule is spent
    # The delay is a lower bound on the wall clock; which requests were delayed comes from the
    # proxy's records, not from timing an undelayed request against 0.5 s (a loaded machine
    # can take that long for any request).
    assert slow >= 0.5
    lists = [r for r in proxy.records if r.method == "GET" and r.path.endswith("/configmaps")]
    assert [r.injected for r in lists[-3:]] == [False, True, False]


def test_bearer_token_keeps_the_callers_identity(
    proxy: FaultProxy, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client, config

    token = control_plane.service_account_token(namespace, "nobody")
    api = config.new_client_from_config(config_file=str(proxy.kubeconfig(tmp_path / "sa.yaml", token=token)))
    try:
        with pytest.raises(client.ApiException) as denied:
            client.CoreV1Api(api).list_namespaced_config_map(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in json.loads(denied.value.body)["message"]
    finally:
        api.close()


def _open_watch(proxy: FaultProxy, control_plane: ControlPlane, path: str) -> http.client.HTTPResponse:
    host, port = proxy.url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=control_plane.ca_pem.decode("ascii"))
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=20)
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    return response


def _wait_watches(proxy: FaultProxy, count: int) -> None:
    deadline = time.monotonic() + 10
    while proxy.open_watches != count:
        assert time.monotonic() < deadline, f"expected {count} open watches, have {proxy.open_watches}"
        time.sleep(0.02)


@pytest.mark.parametrize("graceful", [False, True], ids=["abort", "graceful"])
def test_streams_a_watch_then_drops_it(
    proxy: FaultProxy, control_plane: ControlPlane, namespace: str, graceful: bool
) -> None:
    status, listing = control_plane.request("GET", f"/api/v1/namespaces/{namespace}/configmaps")
    assert status == 200
    rv = listing["metadata"]["resourceVersion"]
    watch = _open_watch(
        proxy, control_plane, f"/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion={rv}"
    )
    _wait_watches(proxy, 1)
    control_plane.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"}},
    )
    event = json.loads(watch.readline())  # streamed through as it happens, not at the end
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "watched")

    assert proxy.drop_watches(graceful=graceful) == 1
    if graceful:
        assert watch.read() == b""  # a clean end of the chunked stream, as a server timeout
    else:
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            watch.read()
    _wait_watches(proxy, 0)
    assert [r.watch for r in proxy.records] == [True]
