"""The autoscaler in the real operator process (`grm-operator run`) on a real kube-apiserver.

No controller-manager runs, so the test plays the Deployment controller and the kubelet: it
creates the worker Pods a Deployment would have (labels, Ready status, a pod IP), and writes
Deployment status. The pods' metrics come from fixture metrics servers (tests/support/fakepod.py) whose
latency and load the test sets; the operator's Direct source reaches them through
``GRM_METRICS_ENDPOINTS`` (pod → URL), since the test cluster's pod IPs are not reachable, and
pushes sample budgets to their admin listeners through ``GRM_ADMIN_ENDPOINTS`` (the metrics port
answers 404 to ``/admin/samples``, as the worker's front does), with the bearer token of the
GRMDeployment's admin token Secret.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_operator.control.rollout import to_rfc3339
from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from support.fakepod import FakeWorker
from support.paths import EXAMPLES

pytestmark = pytest.mark.controlplane

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
GRMD = "/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments"
TIMEOUT_S = 30.0
# Pod names per namespace the test creates, known before the operator starts (its endpoints map).
PODS = {v: [f"reward-{v}-a", f"reward-{v}-b"] for v in ("bf16", "fp8", "int4")}


class Cluster:
    """The control plane, one operator process, fixture workers, and the test's helpers."""

    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane = plane
        self.workdir = workdir
        self.namespaces = {
            k: f"as-{k}-{uuid.uuid4().hex[:6]}"
            for k in ("scale", "restart", "rollback", "crashloop", "demote")
        }
        self.workers: dict[tuple[str, str], FakeWorker] = {}
        endpoints: dict[str, str] = {}
        admin_endpoints: dict[str, str] = {}
        for ns in self.namespaces.values():
            self.ok(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            )
            for pods in PODS.values():
                for pod in pods:
                    worker = FakeWorker()
                    self.workers[ns, pod] = worker
                    endpoints[f"{ns}/{pod}"] = worker.url.removesuffix("/metrics")
                    admin_endpoints[f"{ns}/{pod}"] = worker.admin_url
        self.kubeconfig = plane.kubeconfig_for_user("grm-autoscaler-test", ("system:masters",))
        self.env = {
            "GRM_METRICS_ENDPOINTS": json.dumps(endpoints),
            "GRM_ADMIN_ENDPOINTS": json.dumps(admin_endpoints),
            "GRM_AUTOSCALE_TICK_S": "0.2",
        }
        self.operator = self._operator()

    def _operator(self) -> operator_process.OperatorProcess:
        log = self.workdir / f"operator-{uuid.uuid4().hex[:6]}.log"
        return operator_process.OperatorProcess(self.kubeconfig, log, env=self.env)

    def restart_operator(self) -> None:
        self.operator.stop()
        self.operator = self._operator()
        self.operator.start()

    def close(self) -> None:
        self.operator.stop()
        for worker in self.workers.values():
            worker.close()

    # --- API ----------------------------------------------------------------------------------
    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.plane.request(method, path, body)
        assert status in (200, 201), f"{method} {path}: {status} {payload}"
        return payload

    def get(self, path: str) -> dict[str, Any] | None:
        status, payload = self.plane.request("GET", path)
        if status == 404:
            return None
        assert status == 200, payload
        result: dict[str, Any] = payload
        return result

    def grmd(self, ns: str) -> dict[str, Any]:
        got = self.get(f"{GRMD.format(ns=ns)}/reward")
        assert got is not None
        return got

    def status(self, ns: str) -> dict[str, Any]:
        return self.grmd(ns).get("status") or {}

    def create(self, ns: str, **spec: Any) -> None:
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"] = {"name": "reward", "namespace": ns}
        # The switching mechanics with the declared qualities; the quality gate has tests of its own.
        body["spec"]["precision"]["qualityPolicy"] = "Declared"
        for key, value in spec.items():
            body["spec"][key] = {**body["spec"].get(key, {}), **value}
        self.ok("POST", GRMD.format(ns=ns), body)

    def replicas(self, ns: str, variant: str) -> int | None:
        d = self.get(f"/apis/apps/v1/namespaces/{ns}/deployments/reward-{variant}")
        return None if d is None else int(d["spec"]["replicas"])

    def wait(self, predicate: Any, what: str, timeout_s: float = TIMEOUT_S) -> Any:
        try:
            return operator_process.wait_for(predicate, timeout_s, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.tail()}") from exc

    def put_status(self, path: str, status: dict[str, Any]) -> None:
        for _ in range(5):
            body = self.ok("GET", path)
            body["status"] = status(body) if callable(status) else status
            code, payload = self.plane.request("PUT", f"{path}/status", body)
            if code == 200:
                return
            assert code == 409, str(payload)
        raise AssertionError(f"status of {path} kept conflicting")

    def deployment_ready(self, ns: str, variant: str, ready: int, replicas: int | None = None) -> None:
        """Play the Deployment controller: ``replicas`` pods exist (default: spec), ``ready`` Ready."""
        path = f"/apis/apps/v1/namespaces/{ns}/deployments/reward-{variant}"

        def status(body: dict[str, Any]) -> dict[str, Any]:
            n = body["spec"]["replicas"] if replicas is None else replicas
            return {
                "observedGeneration": body["metadata"]["generation"],
                "replicas": n,
                "updatedReplicas": n,
                "readyReplicas": ready,
                "availableReplicas": ready,
            }

        self.put_status(path, status)  # type: ignore[arg-type]

    def pod(self, ns: str, variant: str, name: str, ip: str, ready: bool = True, restarts: int = 0) -> None:
        """Play the kubelet: a worker pod of ``variant``, Running and Ready on ``ip`` (its
        container restarted ``restarts`` times)."""
        # The labels of the operator's pod template (the operator watches managed-by pods only).
        labels = {
            "app.kubernetes.io/name": "grm-worker",
            "app.kubernetes.io/managed-by": "grm-operator",
            "grm.dev/deployment": "reward",
            "grm.dev/variant": variant,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "worker", "image": "grm-worker:test"}]},
        }
        self.ok("POST", f"/api/v1/namespaces/{ns}/pods", body)
        cond = "True" if ready else "False"
        self.put_status(
            f"/api/v1/namespaces/{ns}/pods/{name}",
            {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": cond},
                ],
                "containerStatuses": [
                    {
                        "name": "worker",
                        "image": "grm-worker:test",
                        "imageID": "",
                        "ready": ready,
                        "restartCount": restarts,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}}
                        if restarts and not ready
                        else {"running": {}},
                    }
                ],
            },
        )

    def delete_pod(self, ns: str, name: str) -> None:
        self.ok("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", {"gracePeriodSeconds": 0})

    def events(self, ns: str, *reasons: str) -> dict[str, list[str]]:
        """The namespace's Event messages by reason, once every one of ``reasons`` has one: kopf
        posts Events from a queue of its own, after the status patch that a test waits on."""

        def read() -> dict[str, list[str]] | None:
            out: dict[str, list[str]] = {}
            for e in self.ok("GET", f"/api/v1/namespaces/{ns}/events")["items"]:
                out.setdefault(e["reason"], []).append(e["message"])
            return out if all(r in out for r in reasons) else None

        found: dict[str, list[str]] = (
            self.wait(read, f"Events {', '.join(reasons)}") if reasons else read() or {}
        )
        return found


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    operator_process.install_crd(control_plane)
    c = Cluster(control_plane, tmp_path_factory.mktemp("autoscale"))
    try:
        c.operator.start()
        yield c
    finally:
        c.close()


def test_timer_ticks_scale_up_then_switch_variant_under_load(cluster: Cluster) -> None:
    """The real policy on metrics the test controls: an SLO breach scales bf16 up (panic); load
    that bf16 cannot serve within maxGPUs switches to the cheaper fp8, end to end."""
    ns = cluster.namespaces["scale"]
    slow = cluster.workers[ns, PODS["bf16"][0]]
    # One score request per second, 2 s to the first token against a 500 ms SLO.
    slow.set(rps=1.0, ttft=(2.0,), e2e=(8.0,), itl=(0.03,), running=1)
    # The worker exists before the GRMDeployment: the first tick already sees it Ready.
    cluster.pod(ns, "bf16", PODS["bf16"][0], "10.244.2.1")
    cluster.create(
        ns,
        scaling={"controlPeriod": "1s", "maxReplicas": 4, "maxGPUs": 4},
        metrics={"window": "5s"},
        # One sample per request: the ladder has only precision rungs (bf16 → fp8 → int4).
        scoring={"samples": {"min": 1, "max": 1}},
    )
    cluster.wait(lambda: cluster.replicas(ns, "bf16") is not None, "bf16 Deployment")
    cluster.deployment_ready(ns, "bf16", ready=1)
    # The sample budget the policy runs at is pushed to the Ready workers.
    cluster.wait(lambda: slow.samples == [1], "sample budget pushed to the worker")
    # Authenticated with the token of the Secret the operator created (owned by the GRMDeployment).
    secret = cluster.get(f"/api/v1/namespaces/{ns}/secrets/reward-admin-token")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["name"] == "reward"
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 43 and slow.admin_authorization == [f"Bearer {token}"]
    assert token not in cluster.operator.log_path.read_text(errors="replace")  # never logged
    cluster.wait(
        lambda: cluster.operator.metric("grm_operator_sample_pushes_total", result="ok") >= 1, "push counted"
    )
    assert cluster.operator.metric("grm_operator_sample_pushes_total", result="unauthorized") == 0
    # Panic on the breach: at least ready × min(2, p95 ÷ SLO) = 2 replicas, within 4 GPUs / 2 each.
    cluster.wait(lambda: cluster.replicas(ns, "bf16") == 2, "bf16 scaled up to 2")
    scaled = cluster.events(ns, "ScaledUp")["ScaledUp"]
    assert scaled[0].startswith("bf16: 1 → 2 replicas: ") and "TTFT" in scaled[0], scaled
    decision = cluster.status(ns)["lastDecision"]
    assert decision["action"] == "ScaleUp" and decision["replicas"] == 2
    conds = {c["type"]: c for c in cluster.status(ns)["conditions"]}
    # 2 s observations interpolate in vLLM's bucket (1, 2.5] to a p95 of 1 + 1.5·0.95 = 2.42 s.
    assert conds["SLOMet"]["status"] == "False" and "p95 TTFT 2.42s > 0.5s" in conds["SLOMet"]["message"]
    assert conds["MetricsAvailable"]["status"] == "True"

    # 200 requests/s at 0.2 s per token: bf16 (2 GPUs a replica, 2 replicas in 4 GPUs) serves a
    # fraction of it; fp8 (1 GPU a replica) serves the most within the budget: switch.
    cluster.deployment_ready(ns, "bf16", ready=2)
    cluster.pod(ns, "bf16", PODS["bf16"][1], "10.244.2.2")
    # A new worker starts from its config's budget; the operator pushes the current one to it.
    cluster.wait(lambda: cluster.workers[ns, PODS["bf16"][1]].samples == [1], "budget pushed to the new pod")
    assert slow.samples == [1]  # the first pod got it once
    for pod in PODS["bf16"]:
        cluster.workers[ns, pod].set(rps=100.0, ttft=(3.0,), e2e=(60.0,), itl=(0.2,), running=64, waiting=40)
    switch = cluster.wait(lambda: cluster.status(ns).get("switch"), "a variant switch to start")
    assert (switch["from"], switch["to"], switch["phase"]) == ("bf16", "fp8", "Surging")
    # fp8 is wanted at 4 (4 GPUs) next to bf16's 4 GPUs: more than maxGPUs 4, so the switch rolls
    # (rollout.py): 1 fp8 starts, then bf16 hands over one replica (batch = max(¼ × 4, 2) = 2 GPUs)
    # while the other keeps serving, and fp8 grows into the 2 GPUs freed.
    assert switch["targetReplicas"] == 4
    decision = cluster.status(ns)["lastDecision"]
    assert (decision["action"], decision["from"], decision["to"]) == ("SwitchVariant", "bf16", "fp8")
    assert "switching bf16 → fp8" in decision["reason"]
    cluster.wait(lambda: cluster.replicas(ns, "fp8") == 2, "fp8 rolled to 2")
    assert cluster.replicas(ns, "bf16") == 1  # one bf16 replica keeps serving meanwhile
    cluster.deployment_ready(ns, "bf16", ready=1, replicas=1)
    cluster.deployment_ready(ns, "fp8", ready=2)
    # 2 fp8 Ready: the last bf16 replica hands over its GPUs, fp8 takes the whole budget. bf16's
    # Deployment stays at 0 although bf16 is still the active variant (the reconciler leaves the
    # counts of a switch in progress to it, no minReplicas clamp) ...
    cluster.wait(lambda: cluster.replicas(ns, "fp8") == 4, "fp8 rolled to 4")
    assert cluster.replicas(ns, "bf16") == 0
    cluster.deployment_ready(ns, "fp8", ready=4)
    # ... and fp8, Ready at its target, takes over.
    cluster.wait(lambda: cluster.status(ns)["activeVariant"] == "fp8", "fp8 active")
    assert cluster.replicas(ns, "bf16") == 0 and cluster.replicas(ns, "fp8") == 4
    for pod in PODS["bf16"]:
        cluster.delete_pod(ns, pod)
    cluster.deployment_ready(ns, "bf16", ready=0, replicas=0)
    cluster.wait(lambda: not cluster.status(ns).get("switch"), "the switch to complete")
    # Every step of the switch left its Event (waits until each has one).
    cluster.events(ns, "ScaledUp", "SwitchStarted", "SwitchRolling", "SwitchDraining", "SwitchCompleted")
    history = [d["action"] for d in cluster.status(ns)["decisions"]]
    assert history[:2] == ["ScaleUp", "SwitchVariant"], history


def _inject_switch(cluster: Cluster, ns: str, to: str = "fp8") -> None:
    """What status.switch holds right after the policy decided to switch bf16 → ``to``."""
    surging = {
        "from": "bf16",
        "to": to,
        "started": to_rfc3339(time.time()),
        "targetReplicas": 1,
        "phase": "Surging",
    }
    path = f"{GRMD.format(ns=ns)}/reward"
    cluster.put_status(path, lambda body: {**(body.get("status") or {}), "switch": surging})  # type: ignore[arg-type]


def _idle_grmd(cluster: Cluster, ns: str, **spec: Any) -> None:
    """A GRMDeployment serving bf16 on one Ready pod with no traffic (the policy holds)."""
    cluster.create(ns, scaling={"controlPeriod": "1s"}, metrics={"window": "5s"}, **spec)
    cluster.wait(lambda: cluster.replicas(ns, "bf16") == 1, "bf16 Deployment at minReplicas")
    cluster.deployment_ready(ns, "bf16", ready=1)
    cluster.pod(ns, "bf16", PODS["bf16"][0], "10.244.1.1")


def test_a_switch_survives_an_operator_restart_halfway(cluster: Cluster) -> None:
    """The operator surges the new variant, dies; the new variant becomes Ready meanwhile; the
    restarted operator reads status.switch, drains the old variant and completes the switch."""
    ns = cluster.namespaces["restart"]
    _idle_grmd(cluster, ns)
    _inject_switch(cluster, ns)
    cluster.wait(lambda: cluster.replicas(ns, "fp8") == 1, "fp8 surged to 1 replica")
    assert cluster.replicas(ns, "bf16") == 1  # the old variant keeps serving while surging
    cluster.operator.stop()  # halfway: Surging, nothing Ready yet
    cluster.deployment_ready(ns, "fp8", ready=1)
    cluster.pod(ns, "fp8", PODS["fp8"][0], "10.244.1.2")
    cluster.operator.start()
    cluster.wait(lambda: cluster.replicas(ns, "bf16") == 0, "bf16 scaled to 0 (draining)")
    st = cluster.status(ns)
    assert st["activeVariant"] == "fp8" and st["switch"]["phase"] == "Draining"
    # Play the controller: the bf16 pod has drained and is gone.
    cluster.delete_pod(ns, PODS["bf16"][0])
    cluster.deployment_ready(ns, "bf16", ready=0, replicas=0)
    cluster.wait(lambda: not cluster.status(ns).get("switch"), "the switch to complete")
    assert cluster.status(ns)["activeVariant"] == "fp8"
    assert cluster.replicas(ns, "fp8") == 1 and cluster.replicas(ns, "bf16") == 0
    events = cluster.events(ns, "SwitchDraining", "SwitchCompleted")
    assert any("1/1 fp8 replicas are Ready" in m for m in events["SwitchDraining"]), events
    assert events["SwitchCompleted"] == ["Switched bf16 → fp8: bf16 drained"]


def test_a_switch_that_never_gets_ready_rolls_back_and_marks_the_variant(cluster: Cluster) -> None:
    ns = cluster.namespaces["rollback"]
    _idle_grmd(cluster, ns, rollout={"switchTimeout": "2s", "unhealthyBackoff": "30m"})
    _inject_switch(cluster, ns)
    cluster.wait(lambda: cluster.replicas(ns, "fp8") == 1, "fp8 surged to 1 replica")
    cluster.deployment_ready(ns, "fp8", ready=0)  # its pod never gets Ready
    cluster.wait(lambda: cluster.replicas(ns, "fp8") == 0, "fp8 scaled back to 0 after the timeout")
    st = cluster.status(ns)
    assert st["activeVariant"] == "bf16" and st["switch"]["phase"] == "RollingBack"
    fp8 = next(v for v in st["variants"] if v["name"] == "fp8")
    assert "unhealthyUntil" in fp8
    cluster.deployment_ready(ns, "fp8", ready=0, replicas=0)
    cluster.wait(lambda: not cluster.status(ns).get("switch"), "the rollback to complete")
    assert cluster.replicas(ns, "bf16") == 1
    events = cluster.events(ns, "SwitchRollingBack", "SwitchRolledBack")
    assert any("only 0/1 fp8 replicas became Ready" in m for m in events["SwitchRollingBack"]), events
    assert events["SwitchRolledBack"] == [
        "Switch bf16 → fp8 rolled back: fp8 has no pods left, bf16 keeps serving"
    ]


def test_a_switch_whose_pods_crash_loop_rolls_back_long_before_the_timeout(cluster: Cluster) -> None:
    """fp8's pod restarts again and again (vLLM refusing its dtype): with a 10-minute switch
    timeout the switch still rolls back within seconds of the second restart."""
    ns = cluster.namespaces["crashloop"]
    _idle_grmd(cluster, ns, rollout={"switchTimeout": "10m", "unhealthyBackoff": "30m"})
    _inject_switch(cluster, ns)
    cluster.wait(lambda: cluster.replicas(ns, "fp8") == 1, "fp8 surged to 1 replica")
    cluster.deployment_ready(ns, "fp8", ready=0)
    cluster.pod(ns, "fp8", PODS["fp8"][0], "10.244.1.3", ready=False, restarts=2)
    cluster.wait(lambda: cluster.replicas(ns, "fp8") == 0, "fp8 scaled back to 0 (crash loop)")
    st = cluster.status(ns)
    assert st["activeVariant"] == "bf16" and st["switch"]["phase"] == "RollingBack"
    assert "unhealthyUntil" in next(v for v in st["variants"] if v["name"] == "fp8")
    events = cluster.events(ns, "SwitchRollingBack")
    assert any("1 fp8 pod(s) crash-loop" in m for m in events["SwitchRollingBack"]), events


def test_a_variant_whose_live_agreement_falls_below_the_floor_is_demoted(cluster: Cluster) -> None:
    """bf16 serves; an fp8 pod's front reports 40 shadow verdicts a second compared with bf16's,
    half agreeing. Within seconds of 125 comparisons (what a 0.97 floor needs) the operator
    records the demotion in status with its numbers, sets LiveQualityMet False and posts a
    VariantDemoted Event; the demotion stays while fp8's definition does not change."""
    ns = cluster.namespaces["demote"]
    _idle_grmd(cluster, ns)
    fp8 = cluster.workers[ns, PODS["fp8"][0]]
    fp8.set(shadow_rate=40.0, shadow_agreement=0.5)
    cluster.pod(ns, "fp8", PODS["fp8"][0], "10.244.1.2")

    def demoted() -> dict[str, Any] | None:
        entry = next((v for v in cluster.status(ns).get("variants") or [] if v["name"] == "fp8"), {})
        mark: dict[str, Any] | None = entry.get("demoted")
        return mark

    mark = cluster.wait(demoted, "fp8 demoted")
    assert mark["compared"] >= 125 and mark["agreementLow"] < 0.97 and mark["floor"] == 0.97
    assert 0.4 <= mark["agreement"] <= 0.6 and mark["reason"] == "LiveAgreementBelowFloor"
    conditions = {c["type"]: c for c in cluster.status(ns)["conditions"]}
    assert conditions["LiveQualityMet"]["status"] == "False"
    assert conditions["LiveQualityMet"]["reason"] == "AgreementBelowFloor"
    events = cluster.wait(lambda: cluster.events(ns).get("VariantDemoted"), "the VariantDemoted Event")
    assert len(events) == 1 and "fp8 leaves the quality ladder" in events[0], events
    # Good numbers from now on do not lift it (a demoted variant serves nothing in earnest).
    fp8.set(shadow_agreement=1.0)
    since = mark["since"]
    cluster.wait(lambda: (demoted() or {}).get("since") == since, "the demotion kept")
    assert cluster.status(ns)["activeVariant"] == "bf16"
