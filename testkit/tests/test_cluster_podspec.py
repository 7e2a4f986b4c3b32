"""The local cluster's pure pod logic: image rules, command lines, path mapping, env resolution,
pod IPs, restart policy and backoff, and the Pod status the node agent writes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from grm_testkit.cluster import podspec
from grm_testkit.cluster.podspec import ContainerView, ImageRule, Lookups, PathMap, PodIPs, PodSpecError

POD: dict[str, Any] = {
    "metadata": {
        "name": "web-1",
        "namespace": "rl",
        "uid": "u-1",
        "labels": {"app": "web"},
        "annotations": {"a.b/c": "d"},
    },
    "spec": {
        "nodeName": "local-node-0",
        "serviceAccountName": "sa",
        "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}],
    },
    "status": {"podIP": "10.244.0.7", "hostIP": "10.244.0.1"},
}


def test_image_repository_strips_tag_and_digest_but_not_a_registry_port() -> None:
    assert podspec.image_repository("ghcr.io/grm-elastic/grm-worker:0.1.0") == podspec.WORKER_IMAGE
    assert podspec.image_repository("reg:5000/x/y@sha256:abc") == "reg:5000/x/y"
    assert podspec.image_repository("reg:5000/x/y:1") == "reg:5000/x/y"
    assert podspec.image_repository("busybox") == "busybox"


def test_rule_for_prefers_the_exact_tag_and_refuses_unknown_images() -> None:
    tagged = ImageRule(("a",))
    images = {"img": ImageRule(("b",)), "img:2": tagged}
    assert podspec.rule_for("img:2", images) is tagged
    assert podspec.rule_for("img:3", images).entrypoint == ("b",)
    with pytest.raises(PodSpecError) as refused:
        podspec.rule_for("busybox", images)
    assert refused.value.reason == "ErrImagePull"


def test_worker_command_keeps_the_pods_command_and_binds_to_the_pod_ip() -> None:
    container = {"name": "worker", "command": ["grm-worker", "serve", "--config", "/etc/grm/worker.json"]}
    rule = podspec.DEFAULT_IMAGES[podspec.WORKER_IMAGE]
    argv = podspec.command_line(container, rule, {}, "10.244.0.9", 41000)
    assert argv == [
        "grm-worker",
        "serve",
        "--config",
        "/etc/grm/worker.json",
        "--host",
        "10.244.0.9",
        "--engine-transport",
        "unix",
    ]


def test_entrypoint_args_and_var_expansion() -> None:
    rule = ImageRule(("server",))
    env = {"PORT": "80"}
    container = {"name": "c", "args": ["--port=$(PORT)", "$(MISSING)", "$$(PORT)"]}
    assert podspec.command_line(container, rule, env, "ip", 1) == [
        "server",
        "--port=80",
        "$(MISSING)",
        "$(PORT)",
    ]
    with pytest.raises(PodSpecError):
        podspec.command_line({"name": "c"}, ImageRule(None), env, "ip", 1)


def test_path_map_rewrites_known_mount_paths_longest_first() -> None:
    paths = PathMap.of({"/etc/grm": "/pod/volumes/config", "/etc": "/pod/volumes/etc", "/tmp": "/pod/tmp"})
    assert paths.path("/etc/grm/worker.json") == "/pod/volumes/config/worker.json"
    assert paths.path("/etc/pod-only/hosts") == "/pod/volumes/etc/pod-only/hosts"
    assert paths.path("/etc/grmx") == "/pod/volumes/etc/grmx"  # a path boundary, not a prefix
    assert paths.path("/tmp") == "/pod/tmp"
    assert paths.path("/var/x") == "/var/x"
    assert paths.arg("--config=/etc/grm/w.json") == "--config=/pod/volumes/config/w.json"
    assert paths.arg("x=/etc/grm") == "x=/etc/grm"  # only --flag=value arguments
    assert paths.arg("relative/etc/grm") == "relative/etc/grm"


def test_container_env_resolves_every_reference_in_order() -> None:
    lookups = Lookups(config_maps={"cm": {"greeting": "hi", "A": "1"}}, secrets={"s": {"token": "t0k"}})
    container = {
        "name": "c",
        "resources": {"limits": {"nvidia.com/gpu": "2"}},
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "nope", "optional": True}},
        ],
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "ANN", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a.b/c']"}}},
            {"name": "GPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.nvidia.com/gpu"}}},
            {"name": "G", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "O", "valueFrom": {"secretKeyRef": {"name": "s", "key": "absent", "optional": True}}},
            {"name": "URL", "value": "http://$(IP):8000/$(G)"},
            {"name": "BASE", "value": "overridden"},
        ],
    }
    env = podspec.container_env(POD, container, lookups, {"BASE": "b", "PATH": "/bin"})
    assert env == {
        "BASE": "overridden",
        "PATH": "/bin",
        "CM_greeting": "hi",
        "CM_A": "1",
        "NAME": "web-1",
        "IP": "10.244.0.7",
        "APP": "web",
        "ANN": "d",
        "GPUS": "2",
        "G": "hi",
        "T": "t0k",
        "URL": "http://10.244.0.7:8000/hi",
    }


@pytest.mark.parametrize(
    "ref",
    [
        {"configMapKeyRef": {"name": "cm", "key": "absent"}},
        {"secretKeyRef": {"name": "missing", "key": "k"}},
        {"fieldRef": {"fieldPath": "spec.unknown"}},
    ],
)
def test_unresolvable_env_is_a_config_error(ref: dict[str, Any]) -> None:
    lookups = Lookups(config_maps={"cm": {"k": "v"}})
    with pytest.raises(PodSpecError) as failed:
        podspec.container_env(POD, {"name": "c", "env": [{"name": "X", "valueFrom": ref}]}, lookups, {})
    assert failed.value.reason == "CreateContainerConfigError"


def test_referenced_config_maps_and_secrets() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "env": [{"name": "a", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}],
                    "envFrom": [{"configMapRef": {"name": "cm1"}}],
                }
            ],
            "volumes": [
                {"name": "v", "configMap": {"name": "cm2"}},
                {"name": "w", "secret": {"secretName": "s2"}},
                {"name": "p", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
            ],
        }
    }
    assert podspec.referenced(pod) == ({"cm1", "cm2", "kube-root-ca.crt"}, {"s1", "s2"})


def test_named_ports() -> None:
    assert podspec.named_port(POD, "http") == 8000
    assert podspec.named_port(POD, 9000) == 9000
    assert podspec.named_port(POD, "9100") == 9100
    with pytest.raises(PodSpecError):
        podspec.named_port(POD, "grpc")


def test_resolve_executable(tmp_path: Path) -> None:
    (tmp_path / "grm-worker").write_text("#!/bin/sh\n")
    assert podspec.resolve_executable("grm-worker", [tmp_path]) == str(tmp_path / "grm-worker")
    assert podspec.resolve_executable("python", [tmp_path]) == sys.executable
    assert podspec.resolve_executable("/bin/true", [tmp_path]) == "/bin/true"
    assert podspec.resolve_executable("sh", [tmp_path]).endswith("/sh")
    with pytest.raises(PodSpecError):
        podspec.resolve_executable("no-such-program-here", [tmp_path])


def test_restart_policy_and_backoff() -> None:
    assert podspec.restart_wanted("Always", 0) and podspec.restart_wanted("Always", 1)
    assert podspec.restart_wanted("OnFailure", 3) and not podspec.restart_wanted("OnFailure", 0)
    assert not podspec.restart_wanted("Never", 1)
    assert [podspec.crash_backoff(n, 1.0, 30.0) for n in (1, 2, 3, 5, 6, 9)] == [1, 2, 4, 16, 30, 30]


def test_pod_ips_are_distinct_and_reused_last() -> None:
    ips = PodIPs("10.244.3.0/29")  # hosts .1-.6; .1 is the node
    assert ips.node_ip == "10.244.3.1"
    got = [ips.allocate(f"u{i}") for i in range(5)]
    assert got == [f"10.244.3.{i}" for i in range(2, 7)]
    assert ips.allocate("u0") == "10.244.3.2"  # idempotent per pod
    with pytest.raises(PodSpecError):
        ips.allocate("u5")
    ips.release("u1")
    ips.release("u0")
    assert ips.allocate("new") == "10.244.3.3"  # the first released, not the lowest
    # The node's address never moves with the allocations (the kubelet API listens on it).
    assert ips.node_ip == "10.244.3.1"


def _view(state: dict[str, Any], ready: bool = False, last: dict[str, Any] | None = None) -> ContainerView:
    return ContainerView(
        name="c", image="img", state=state, ready=ready, started=ready, last_state=last or {}
    )


RUNNING = {"running": {"startedAt": "t0"}}


def test_pod_phase() -> None:
    waiting = {"waiting": {"reason": "ContainerCreating"}}
    crash = {"waiting": {"reason": "CrashLoopBackOff"}}
    done = {"terminated": {"exitCode": 0}}
    failed = {"terminated": {"exitCode": 2}}
    assert podspec.pod_phase("Always", [_view(waiting)]) == "Pending"
    assert podspec.pod_phase("Always", [_view(RUNNING), _view(waiting)]) == "Pending"
    assert podspec.pod_phase("Always", [_view(crash, last=failed)]) == "Running"
    assert podspec.pod_phase("Always", [_view(done)]) == "Running"  # about to restart
    assert podspec.pod_phase("Never", [_view(done)]) == "Succeeded"
    assert podspec.pod_phase("Never", [_view(failed)]) == "Failed"
    assert podspec.pod_phase("OnFailure", [_view(done), _view(done)]) == "Succeeded"
    assert podspec.pod_phase("OnFailure", [_view(failed)]) == "Running"  # restarts


def test_pod_status_conditions_keep_their_transition_times() -> None:
    transitions: dict[str, str] = {}
    common = {"pod_ip": "10.244.0.7", "host_ip": "10.244.0.1", "start_time": "t0", "restart_policy": "Always"}
    first = podspec.pod_status(containers=[_view(RUNNING)], transitions=transitions, now="t1", **common)
    cond = {c["type"]: c for c in first["conditions"]}
    assert cond["Ready"]["status"] == "False" and cond["Ready"]["reason"] == "ContainersNotReady"
    assert first["podIP"] == "10.244.0.7" and first["podIPs"] == [{"ip": "10.244.0.7"}]
    assert first["containerStatuses"][0]["state"] == RUNNING
    second = podspec.pod_status(
        containers=[_view(RUNNING, ready=True)], transitions=transitions, now="t2", **common
    )
    cond = {c["type"]: c for c in second["conditions"]}
    assert cond["Ready"] == {"type": "Ready", "status": "True", "lastTransitionTime": "t2"}
    assert cond["Initialized"]["lastTransitionTime"] == "t1"  # unchanged since the first write
    third = podspec.pod_status(
        containers=[_view(RUNNING, ready=True)], transitions=transitions, now="t3", **common
    )
    assert third == second  # nothing changed: the agent writes nothing


def test_env_paths_from_the_spec_are_mapped_but_the_agents_are_not() -> None:
    # The pod directory itself may lie under a mount path (/tmp): the agent's own values are host
    # paths already and must stay as they are.
    paths = PathMap.of(
        {"/tmp": "/tmp/cluster/pod-1/volumes/tmp", "/etc/grm": "/tmp/cluster/pod-1/volumes/config"}
    )
    lookups = Lookups(config_maps={"cm": {"DIR": "/etc/grm"}})
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}}],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "CFG", "value": "$(DIR)/worker.json"}],
    }
    base = {"KUBECONFIG": "/tmp/cluster/pod-1/kubeconfig.yaml"}
    env = podspec.container_env(POD, container, lookups, base, paths)
    assert env == {
        "KUBECONFIG": "/tmp/cluster/pod-1/kubeconfig.yaml",
        "DIR": "/tmp/cluster/pod-1/volumes/config",
        "HOME": "/tmp/cluster/pod-1/volumes/tmp",
        "CFG": "/tmp/cluster/pod-1/volumes/config/worker.json",
    }


def test_kubelet_api_log_slices() -> None:
    from grm_testkit.cluster.kubeletapi import run_output, tail

    first = b"--- t0 start: python a\nboom\n"
    second = b"--- t1 start: python a\nline 1\nline 2\nline 3\n"
    data = first + second
    starts = [0, len(first)]
    assert run_output(data, starts) == b"line 1\nline 2\nline 3\n"
    assert run_output(data, starts, previous=True) == b"boom\n"
    assert run_output(data, starts[:1], previous=True) == b""  # no previous run
    assert run_output(b"", []) == b""
    assert tail(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert tail(b"a\nb\nc\n", 0) == b""
    assert tail(b"a\nb\nc\n", None, limit_bytes=3) == b"\nc\n"


def test_init_containers_gate_the_phase_and_the_initialized_condition() -> None:
    init_running = _view(RUNNING)
    init_ok = _view({"terminated": {"exitCode": 0, "reason": "Completed"}})
    init_bad = _view({"terminated": {"exitCode": 1, "reason": "Error"}})
    main_waiting = _view({"waiting": {"reason": "PodInitializing"}})
    assert podspec.pod_phase("Always", [main_waiting], [init_running]) == "Pending"
    assert podspec.pod_phase("Always", [main_waiting], [init_bad]) == "Pending"  # retried
    assert podspec.pod_phase("Never", [main_waiting], [init_bad]) == "Failed"
    assert podspec.pod_phase("Always", [_view(RUNNING)], [init_ok]) == "Running"
    common = {"pod_ip": "ip", "host_ip": "h", "start_time": "t0", "restart_policy": "Always", "now": "t1"}
    status = podspec.pod_status(
        containers=[main_waiting], init_containers=[init_running], transitions={}, **common
    )
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert initialized["status"] == "False" and initialized["reason"] == "ContainersNotInitialized"
    assert status["initContainerStatuses"][0]["state"] == RUNNING
    assert "initContainerStatuses" not in podspec.pod_status(
        containers=[main_waiting], transitions={}, **common
    )


def test_a_host_executable_under_a_mount_path_is_not_hidden_by_the_mount(tmp_path: Path) -> None:
    # A checkout under /tmp (a fresh clone in mktemp -d): its interpreter, named in a Job's env,
    # stays the host's, as the agent's PATH does; a path the pod has, or a non-executable, maps.
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    data = tmp_path / "venv" / "data.txt"
    data.write_text("x")
    pod_tmp = tmp_path / "pod" / "volumes" / "tmp"
    paths = PathMap.of({str(tmp_path): str(pod_tmp)})
    assert paths.path(str(python)) == str(python)
    assert paths.path(str(data)) == str(pod_tmp / "venv" / "data.txt")
    (pod_tmp / "venv" / "bin").mkdir(parents=True)
    (pod_tmp / "venv" / "bin" / "python").write_text("")
    assert paths.path(str(python)) == str(pod_tmp / "venv" / "bin" / "python")
