"""The local cluster's Service front (endpoint choice), Prometheus discovery, node layout and
namespace commands: pure parts, no processes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from grm_testkit.cluster import netns, promsd
from grm_testkit.cluster.clusteroptions import ClusterOptions
from grm_testkit.cluster.serviceproxy import Balancer, frontends, ready_backends, speaks_http
from support.paths import REPO


def _slice(port_name: str | None, *endpoints: tuple[str, bool | None], port: int = 8000) -> dict[str, Any]:
    eps = []
    for address, ready in endpoints:
        conditions = {} if ready is None else {"ready": ready}
        eps.append({"addresses": [address], "conditions": conditions})
    return {"addressType": "IPv4", "ports": [{"name": port_name, "port": port}], "endpoints": eps}


def test_ready_backends_follow_readiness_and_port_names() -> None:
    slices = [
        _slice("http", ("10.244.0.2", True), ("10.244.0.3", False), ("10.244.0.4", None)),
        _slice("http", ("10.244.0.5", True)),
        _slice("metrics", ("10.244.0.2", True), port=9000),
        {
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8000}],
            "endpoints": [{"addresses": ["fd00::1"]}],
        },
    ]
    # Not-ready 10.244.0.3 gets nothing new; nil readiness means ready.
    assert ready_backends(slices, "http") == [
        ("10.244.0.2", 8000),
        ("10.244.0.4", 8000),
        ("10.244.0.5", 8000),
    ]
    assert ready_backends(slices, "metrics") == [("10.244.0.2", 9000)]
    # An unnamed Service port is "" in the Service and null in the slice.
    assert ready_backends([_slice(None, ("10.244.0.9", True))], "") == [("10.244.0.9", 8000)]
    assert ready_backends(slices, "grpc") == []


def test_balancer_least_outstanding_then_round_robin() -> None:
    a, b, c = ("10.244.0.2", 80), ("10.244.0.3", 80), ("10.244.0.4", 80)
    lb = Balancer()
    picks = Counter(lb.pick([a, b, c]) for _ in range(30))
    assert picks == {a: 10, b: 10, c: 10}  # idle backends: round-robin
    lb.opened(a)
    lb.opened(a)
    lb.opened(b)
    assert lb.pick([a, b, c]) == c  # fewest open connections
    lb.opened(c)
    assert lb.pick([a, b, c]) in (b, c)
    assert lb.pick([a, b, c], exclude={b, c}) == a  # a refused connect moves on
    assert lb.pick([a], exclude={a}) is None
    lb.closed(a)
    lb.closed(a)
    lb.closed(a)  # never below zero
    assert lb.outstanding == {b: 1, c: 1}


def test_frontends_skip_headless_ipv6_and_udp() -> None:
    services = [
        {
            "metadata": {"namespace": "rl", "name": "reward"},
            "spec": {
                "clusterIP": "10.96.4.5",
                "clusterIPs": ["10.96.4.5"],
                "ports": [{"name": "http", "port": 8000}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            },
        },
        {
            "metadata": {"namespace": "rl", "name": "headless"},
            "spec": {"clusterIP": "None", "ports": [{"port": 1}]},
        },
        {
            "metadata": {"namespace": "rl", "name": "v6"},
            "spec": {"clusterIPs": ["fd00::5"], "ports": [{"port": 2}]},
        },
    ]
    fronts = frontends(services)
    assert list(fronts) == [("10.96.4.5", 8000)]
    fe = fronts[("10.96.4.5", 8000)]
    assert (fe.namespace, fe.service, fe.port_name) == ("rl", "reward", "http")


def _pod(
    name: str, phase: str, ip: str | None, labels: dict[str, str], deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "rl", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ports = [{"name": "http", "containerPort": 8000}, {"name": "engine", "containerPort": 8100}]
    return {
        "metadata": meta,
        "spec": {"nodeName": "local-node-0", "containers": [{"name": "worker", "ports": ports}]},
        "status": {"phase": phase, "podIP": ip},
    }


def test_prometheus_targets_carry_kubernetes_sd_labels() -> None:
    labels = {"grm.dev/deployment": "reward", "grm.dev/variant": "fp8"}
    pods = [
        _pod("w1", "Running", "10.244.0.3", labels),
        _pod("w0", "Running", "10.244.0.2", labels),
        _pod("pending", "Pending", None, labels),
        _pod("leaving", "Running", "10.244.0.4", labels, deleting=True),
    ]
    groups = promsd.targets(pods)
    assert [g["targets"] for g in groups] == [
        ["10.244.0.2:8000"],
        ["10.244.0.2:8100"],
        ["10.244.0.3:8000"],
        ["10.244.0.3:8100"],
    ]
    first = groups[0]["labels"]
    assert first["__meta_kubernetes_pod_label_grm_dev_deployment"] == "reward"
    assert first["__meta_kubernetes_pod_label_grm_dev_variant"] == "fp8"
    assert first["__meta_kubernetes_pod_container_port_name"] == "http"
    assert first["__meta_kubernetes_namespace"] == "rl"
    assert first["__meta_kubernetes_pod_name"] == "w0"


def test_prometheus_relabelling_is_the_examples() -> None:
    example = yaml.safe_load((REPO / "examples" / "prometheus" / "grm-workers-scrape.yaml").read_text())
    assert example["scrape_configs"][0]["relabel_configs"] == promsd.RELABEL_CONFIGS
    config = promsd.config(Path("/sd/targets.json"), 0.5)
    job = config["scrape_configs"][0]
    assert job["relabel_configs"] == promsd.RELABEL_CONFIGS
    assert job["file_sd_configs"] == [{"files": ["/sd/targets.json"], "refresh_interval": "5s"}]
    assert job["scrape_interval"] == job["scrape_timeout"] == "0.5s"  # the timeout never exceeds it


def test_targets_file_is_rewritten_only_on_change(tmp_path: Path) -> None:
    sd = tmp_path / "targets.json"
    groups = [{"targets": ["10.244.0.2:8000"], "labels": {"a": "b"}}]
    assert promsd.write_targets(sd, groups)
    assert not promsd.write_targets(sd, groups)
    assert json.loads(sd.read_text()) == groups
    assert promsd.write_targets(sd, [])


def test_gpus_are_spread_over_nodes_with_a_pod_range_each() -> None:
    nodes = ClusterOptions(gpus=7, nodes=3).node_configs()
    assert [(n.name, n.gpus, n.pod_cidr) for n in nodes] == [
        ("local-node-0", 3, "10.244.0.0/24"),
        ("local-node-1", 2, "10.244.1.0/24"),
        ("local-node-2", 2, "10.244.2.0/24"),
    ]
    rules = ClusterOptions(
        images={"my/img": {"entrypoint": ["srv"], "bind_args": ["--ip={pod_ip}"]}}
    ).image_rules()
    assert rules["my/img"].entrypoint == ("srv",) and rules["my/img"].bind_args == ("--ip={pod_ip}",)


def test_namespace_commands_and_ranges() -> None:
    assert netns.unshare_argv(["py"], root=True) == ["unshare", "--net", "py"]
    assert netns.unshare_argv(["py"], root=False) == ["unshare", "--map-root-user", "--net", "py"]
    assert netns.nsenter_argv(42, ["sh"], root=True) == ["nsenter", "--target=42", "--net", "--", "sh"]
    assert netns.nsenter_argv(42, ["sh"], root=False)[2:5] == ["--user", "--preserve-credentials", "--net"]
    assert netns.in_local_ranges("10.244.3.4") and netns.in_local_ranges("10.111.0.9")
    assert netns.in_local_ranges("127.0.0.1")
    assert not netns.in_local_ranges("10.0.0.1") and not netns.in_local_ranges("192.0.2.1")


def test_http_ports_are_balanced_per_request_others_spliced() -> None:
    assert speaks_http({"name": "http"}) and speaks_http({"name": "http-metrics"})
    assert speaks_http({"name": "api", "appProtocol": "http"})
    assert speaks_http({"appProtocol": "kubernetes.io/http"})
    assert not speaks_http({"name": "https"}) and not speaks_http({"name": "grpc"}) and not speaks_http({})
    services = [
        {
            "metadata": {"namespace": "rl", "name": "reward"},
            "spec": {
                "clusterIP": "10.96.4.5",
                "ports": [{"name": "http", "port": 8000}, {"name": "raw", "port": 9}],
            },
        },
    ]
    fronts = frontends(services)
    assert fronts[("10.96.4.5", 8000)].http and not fronts[("10.96.4.5", 9)].http
