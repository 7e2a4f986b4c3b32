"""GRM serving end to end on the local cluster: the operator installed with its Helm chart (its own
ServiceAccount and the chart's RBAC, running `grm-operator run` from its image on the real node)
drives sim-engine workers of a GRMDeployment from examples/, and clients reach them through the
worker Service's ClusterIP, i.e. the real kube-proxy (nftables, balanced per connection, nothing retried).
The load scenarios send it with the clients users run (:class:`grm_testkit.traffic.ClientMix`):
a urllib client (a connection per request) and three keep-alive pools — the official ``openai``
client, an ``httpx.AsyncClient`` and a slime-shaped reward client (aiohttp, batches gathered) —
each a quarter of the rate; kube-proxy balances those pools per connection, so a request that
reaches a draining worker must still be answered there.

One cluster (8 GPUs: a variant switch surges the new variant next to the old, so the node needs
room beyond the example's maxGPUs=4) serves the module; each scenario applies its own GRMDeployment
(a copy of examples/grmd-live-demo.yaml under another name) and deletes it at the end, so the GPUs
are free for the next. That example runs the sim engine 2× faster than real time with a fixed
budget of 4 samples: a bf16 replica (2 GPUs) holds ~3 score req/s (12–14 sequences/s), so 9 req/s
cannot fit 2 of them (maxGPUs=4) and the only way out is fp8 (~12 seq/s on 1 GPU).
Every scenario counts its client requests and asserts on them.
"""

from __future__ import annotations

import base64
import copy
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.traffic import ClientMix, LoadGenerator, Outcome, post_json, snapshot

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
NS = "default"
GRMD_PATH = "/apis/grm.dev/v1alpha1/namespaces/default/grmdeployments"


# `lc` (conftest.py): one cluster per module with the operator installed by the Helm chart — a
# local cluster, or the cluster of $KUBECONFIG with --real-cluster.


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _operator_pod(lc: LocalCluster) -> dict[str, Any] | None:
    pods = lc.get("/api/v1/namespaces/grm-system/pods")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 and _ready(live[0]) else None


def _demo_manifest(name: str, edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "grmd-live-demo.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = name
    if edit is not None:
        edit(doc)
    return doc


def _apply(lc: LocalCluster, doc: dict[str, Any]) -> None:
    lc.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def _grmd(lc: LocalCluster, name: str) -> dict[str, Any]:
    return lc.get(f"{GRMD_PATH}/{name}")


def _condition(resource: dict[str, Any], kind: str) -> str | None:
    return snapshot(resource).conditions.get(kind)


def _worker_pods(lc: LocalCluster, name: str, variant: str | None = None) -> list[dict[str, Any]]:
    selector = f"grm.dev/deployment={name}" + (f",grm.dev/variant={variant}" if variant else "")
    return list(lc.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")["items"])


def _delete(lc: LocalCluster, name: str) -> None:
    lc.kubectl("delete", "grmdeployment", name, "--wait=false", check=False)
    lc.wait_for(lambda: not _worker_pods(lc, name), 120, f"the pods of {name} gone")


@pytest.fixture
def grmd(lc: LocalCluster) -> Iterator[Callable[..., str]]:
    """Applies a demo GRMDeployment (name, optional edit of the manifest) and deletes every one it
    applied after the test, waiting for their pods to go so the next test has the GPUs."""
    applied: list[str] = []

    def apply(name: str, edit: Callable[[dict[str, Any]], None] | None = None) -> str:
        _apply(lc, _demo_manifest(name, edit))
        applied.append(name)
        return name

    yield apply
    for name in applied:
        _delete(lc, name)


def _wait_ready(lc: LocalCluster, name: str, timeout_s: float = 180) -> None:
    """The GRMDeployment Ready, and its Service answering `/ready` through kube-proxy.

    `service_url` waits until kube-proxy routes the Service to every ready worker pod (Ready
    reaches kube-proxy a moment later: a client's first connection before that finds no endpoint,
    on any cluster)."""
    lc.wait_for(lambda: _condition(_grmd(lc, name), "Ready") == "True", timeout_s, f"{name} Ready", 0.5)
    url = lc.service_url(NS, name, 8000)
    lc.wait_for(lambda: _answers(f"{url}/ready"), 60, f"{name}'s Service answering through kube-proxy", 0.5)


def _answers(url: str) -> bool:
    """Whether a GET through the Service gets a 200 (the forwarder into the namespace, then
    kube-proxy's DNAT, both in place): /ready, which is no score and no demand."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def _failed_by_client(mix: ClientMix) -> dict[str, list[Outcome]]:
    """Each client's failed requests (the clients that had none left out)."""
    return {name: failed[:3] for name, each in mix.by_client().items() if (failed := _failures(each))}


def _every_client_answered(mix: ClientMix) -> None:
    """Every client of the mix sent requests, and none of them failed."""
    by_client = mix.by_client()
    assert all(by_client.values()), {name: len(each) for name, each in by_client.items()}
    assert not _failed_by_client(mix), _failed_by_client(mix)


def test_apply_pods_ready_service_answers_score_and_chat(lc: LocalCluster, grmd: Callable[..., str]) -> None:
    name = grmd("e2e-apply")
    _wait_ready(lc, name)
    pods = _worker_pods(lc, name)
    assert pods and all(_ready(p) for p in pods)
    if isinstance(lc, LocalCluster):
        # A container of its own, as the Deployment's pod securityContext says: uid 1000.
        status = Path(f"/proc/{lc.container_pid(pods[0])}/status").read_text().splitlines()
        assert next(line for line in status if line.startswith("Uid:")).split()[1:] == ["1000"] * 4
    url = lc.service_url(NS, name, 8000)
    answers = [
        post_json(
            f"{url}/v1/grm/score",
            {"query": "2+2?", "responses": ["4", "5"], "seed": i},
        )
        for i in range(5)
    ]
    assert [status for status, _ in answers] == [200] * 5, answers
    for _, body in answers:
        assert len(body["scores"]) == 2 and body["samples_used"] >= 1
    status, chat = post_json(
        f"{url}/v1/chat/completions",
        {
            "model": "deepseek-ai/DeepSeek-GRM-27B",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
        },
    )
    assert status == 200, chat
    assert chat["choices"][0]["message"]["content"]
    _admin_api_needs_the_secrets_token(lc, name, pods)


# Inside the cluster's network: GET /admin/samples of a pod IP, print the status code.
_ADMIN_PROBE = """
import sys, urllib.error, urllib.request
url, token = sys.argv[1], sys.argv[2]
headers = {"Authorization": "Bearer " + token} if token else {}
request = urllib.request.Request(url, headers=headers)
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def _admin_api_needs_the_secrets_token(lc: Any, name: str, pods: list[dict[str, Any]]) -> None:
    """The operator created the GRMDeployment's admin token Secret, its pods read it, and their
    admin API (pod IP, port 8001: what any pod of the cluster can reach) answers 401 without it
    and 200 with it. The operator's own pushes were accepted: no worker refused one."""
    secret = lc.get(f"/api/v1/namespaces/{NS}/secrets/{name}-admin-token")
    assert secret["metadata"]["ownerReferences"][0]["name"] == name and secret["immutable"] is True
    if not isinstance(lc, LocalCluster):
        return  # a real cluster's pod network is not reachable from the test's host
    token = base64.b64decode(secret["data"]["token"]).decode()
    for pod in pods:
        assert "admin request" not in lc.pod_log(NS, pod["metadata"]["name"]), "a push was refused"
        url = f"http://{pod['status']['podIP']}:8001/admin/samples"
        codes = [
            lc.run([sys.executable, "-c", _ADMIN_PROBE, url, credential]).stdout.strip()
            for credential in ("", "not-" + token, token)
        ]
        assert codes == ["401", "401", "200"], (pod["metadata"]["name"], codes)


def _history(lc: LocalCluster, name: str) -> str:
    snap = snapshot(_grmd(lc, name))
    lines = [f"active={snap.active} {snap.replicas_text()} switch={snap.switch} {snap.conditions}"]
    lines += [f"  {d.get('time')} {d.get('action')}: {d.get('reason')}" for d in snap.decisions]
    return "\n".join(lines)


def test_switch_to_faster_variant_at_max_gpus_and_back_without_failed_requests(
    lc: LocalCluster, grmd: Callable[..., str]
) -> None:
    """Rising load fills maxGPUs with bf16 (2 GPUs a replica); the operator switches to fp8 while
    every client request gets a 200, and the bf16 pods drain away. Then the load falls to 0.5 req/s
    (2 sequences/s, a sixth of one bf16 replica): stepping up the ladder lowers capacity per GPU, so
    it waits like a scale-down — the busy past must leave the 30 s scale-down stabilisation window
    and bf16 must then fit with margin for another 30 s. Then it switches back to bf16 (1 bf16
    replica, 2 GPUs, surged next to the running fp8 one fits maxGPUs 4) and the fp8 pods drain,
    again without a failed request."""
    name = grmd("e2e-switch")
    _wait_ready(lc, name)
    phase = {"rps": 0.5}
    load = ClientMix(lc.service_url(NS, name, 8000), lambda t: phase["rps"], max_in_flight=96).start()

    def settled_on(active: str, other: str) -> Callable[[], bool]:
        def check() -> bool:
            snap = snapshot(_grmd(lc, name))
            return snap.active == active and snap.switch is None and not _worker_pods(lc, name, other)

        return check

    try:
        phase["rps"] = 9.0
        lc.wait_for(settled_on("fp8", "bf16"), 240, "switch to fp8 with bf16 drained", 1.0)
        assert snapshot(_grmd(lc, name)).ready.get("fp8", 0) >= 1
        up = load.outcomes()
        assert len(up) > 30, len(up)
        assert not _failures(up), (_failed_by_client(load), _history(lc, name))

        # Keep the load on the new variant a little longer: requests in flight across the switch and
        # right after the drain all count.
        settled = len(up)
        lc.wait_for(lambda: len(load.outcomes()) >= settled + 50, 60, "50 more answered requests", 0.5)

        phase["rps"] = 0.5
        fell = load.elapsed()
        lc.wait_for(settled_on("bf16", "fp8"), 300, "switch back to bf16 with fp8 drained", 1.0)
        # Not before 30 s of look-back + 30 s of fitting: the busy past still needed fp8.
        assert load.elapsed() - fell >= 60 - 2, load.elapsed() - fell
        down = len(load.outcomes())
        lc.wait_for(lambda: len(load.outcomes()) >= down + 10, 60, "10 more answered requests on bf16", 0.5)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_history(lc, name)}") from exc
    finally:
        outcomes = load.stop()
    assert len(outcomes) > len(up)
    assert not _failures(outcomes), (_failed_by_client(load), _history(lc, name))
    _every_client_answered(load)
    # status.decisions keeps the newest 20: the switch back is among them.
    switches = [d for d in snapshot(_grmd(lc, name)).decisions if d.get("action") == "SwitchVariant"]
    assert switches and "bf16" in str(switches[-1].get("reason")), _history(lc, name)


def test_invalid_grmdeployment_is_rejected_and_nothing_else_is_disturbed(
    lc: LocalCluster, grmd: Callable[..., str]
) -> None:
    """minReplicas above maxReplicas is refused by the CRD's CEL rule at the API server (kubectl
    apply fails with the rule's message); a running GRMDeployment keeps its pods and answers every
    request meanwhile."""
    from grm_operator.api import models

    # Manual scaling (1 replica) and a pinned variant: the running deployment's pods change only if
    # something disturbs it (the policy's cold prior would otherwise move even 0.5 req/s to fp8).
    def steady(doc: dict[str, Any]) -> None:
        doc["spec"]["scaling"].update(mode="Manual", replicas=1)
        doc["spec"]["precision"].update(policy="Pinned", pinnedVariant="bf16")

    name = grmd("e2e-steady", steady)
    _wait_ready(lc, name)
    before = sorted(p["metadata"]["name"] for p in _worker_pods(lc, name))
    url = lc.service_url(NS, name, 8000) + "/v1/grm/score"
    load = LoadGenerator(url, lambda t: 0.5).start()
    try:
        bad = _demo_manifest("e2e-invalid")
        bad["spec"]["scaling"]["minReplicas"] = 9
        result = lc.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
        assert result.returncode != 0
        assert models.MSG_MIN_MAX in result.stderr, result.stderr
        status, _ = lc.api("GET", f"{GRMD_PATH}/e2e-invalid")
        assert status == 404
        lc.wait_for(lambda: len(load.outcomes()) >= 10, 60, "10 answered requests")
    finally:
        outcomes = load.stop()
    assert len(outcomes) >= 10 and not _failures(outcomes), _failures(outcomes)[:5]
    assert sorted(p["metadata"]["name"] for p in _worker_pods(lc, name)) == before
    assert _condition(_grmd(lc, name), "Ready") == "True"


def _total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def test_scale_out_under_rising_load_and_in_after_stabilisation(
    lc: LocalCluster, grmd: Callable[..., str]
) -> None:
    """2.5 score req/s (10 sequences/s) is more than the policy lets one replica carry at first
    (its prior for bf16 is ~2–3 sequences/s until it has learnt the short prompts): the operator
    scales out (to 2 bf16 replicas, or to fp8 if its forecast asks for more than 2 bf16 fit);
    when the load falls to 0.3 req/s it scales back to 1 replica, not before the 30 s stabilisation
    window, and no request fails."""
    name = grmd("e2e-scale")
    _wait_ready(lc, name)
    phase = {"rps": 2.5}
    load = ClientMix(lc.service_url(NS, name, 8000), lambda t: phase["rps"]).start()
    try:
        lc.wait_for(lambda: _total(snapshot(_grmd(lc, name)).ready) >= 2, 180, "2 replicas Ready", 1.0)

        def settled() -> bool:
            snap = snapshot(_grmd(lc, name))
            return snap.switch is None and _total(snap.ready) == _total(snap.desired) >= 2

        lc.wait_for(settled, 180, "scaled out and settled", 1.0)
        phase["rps"] = 0.3
        fell = load.elapsed()
        lc.wait_for(lambda: _total(snapshot(_grmd(lc, name)).desired) == 1, 180, "scaled in to 1", 1.0)
        # The window holds the highest need of the last 30 s: no scale-in sooner after the drop.
        assert load.elapsed() - fell >= 30 - 2
        lc.wait_for(lambda: len(_worker_pods(lc, name)) == 1, 120, "1 worker pod left", 1.0)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_history(lc, name)}") from exc
    finally:
        outcomes = load.stop()
    # ≥ 8 s at 2.5 req/s before the drop (2 replicas Ready, settled) and ≥ 30 s at 0.3 req/s after it.
    assert len(outcomes) >= 30 and not _failures(outcomes), (_failed_by_client(load), _history(lc, name))
    _every_client_answered(load)
    actions = [d.get("action") for d in snapshot(_grmd(lc, name)).decisions]
    assert "ScaleDown" in actions, _history(lc, name)


def test_killed_worker_pod_is_replaced_and_failures_stay_within_its_in_flight(
    lc: LocalCluster, grmd: Callable[..., str]
) -> None:
    """A worker pod force-deleted (no drain) under 1 req/s from the client mix (well within 2
    replicas, so the policy has no reason to act): the ReplicaSet replaces it, the new pod gets
    Ready, and the only failed requests are ones that were in flight together when it died."""
    name = grmd("e2e-kill", lambda d: d["spec"]["scaling"].update(minReplicas=2))
    lc.wait_for(lambda: snapshot(_grmd(lc, name)).ready.get("bf16", 0) == 2, 180, "2 bf16 replicas", 1.0)
    load = ClientMix(lc.service_url(NS, name, 8000), lambda t: 1.0).start()
    try:
        lc.wait_for(lambda: len(load.outcomes()) >= 10, 60, "10 answered requests")
        victim = _worker_pods(lc, name)[0]["metadata"]["name"]
        in_flight = load.in_flight()
        lc.kubectl("delete", "pod", victim, "--grace-period=0", "--force")

        def replaced() -> bool:
            pods = [p for p in _worker_pods(lc, name) if not p["metadata"].get("deletionTimestamp")]
            names = {p["metadata"]["name"] for p in pods}
            return len(pods) == 2 and victim not in names and all(_ready(p) for p in pods)

        lc.wait_for(replaced, 120, "the killed pod replaced and Ready", 1.0)
        answered = len(load.outcomes())
        lc.wait_for(lambda: len(load.outcomes()) >= answered + 10, 60, "10 more answered requests")
    finally:
        outcomes = load.stop()
    failed = _failures(outcomes)
    assert len(outcomes) >= 20
    if failed:
        # The failures are requests that were in flight together on the pod when it died: every one
        # was sent before the last of them was sent and ended after it (the death lies between).
        # On a per-connection path the pod keeps getting requests on its keep-alive connections
        # after the delete call until its process dies, so the count in flight at the call
        # (`in_flight`) bounds them only on a per-request proxy; the common instant bounds both.
        instant = max(o.sent for o in failed)
        assert all(o.sent <= instant <= o.sent + o.latency for o in failed), _failed_by_client(load)
        alive_then = [o for o in outcomes if o.sent <= instant <= o.sent + o.latency]
        assert len(failed) <= len(alive_then), (len(failed), in_flight, _failed_by_client(load))


def test_operator_killed_mid_switch_completes_or_rolls_back_without_orphans(
    lc: LocalCluster, grmd: Callable[..., str]
) -> None:
    """The operator pod is force-deleted while a bf16 → fp8 switch is Surging; its Deployment
    brings a new one up, which reads status.switch and finishes the switch (or rolls it back):
    afterwards no switch is in progress, only the active variant has pods, every child Deployment
    is owned by the GRMDeployment, and no client request failed."""
    name = grmd("e2e-opkill")
    _wait_ready(lc, name)
    load = ClientMix(lc.service_url(NS, name, 8000), lambda t: 9.0, max_in_flight=96).start()
    try:
        lc.wait_for(lambda: snapshot(_grmd(lc, name)).switch, 180, "a switch in progress", 0.5)
        old = _operator_pod(lc)
        assert old is not None
        lc.kubectl(
            "-n", "grm-system", "delete", "pod", old["metadata"]["name"], "--grace-period=0", "--force"
        )

        def new_operator() -> bool:
            pod = _operator_pod(lc)
            return pod is not None and pod["metadata"]["uid"] != old["metadata"]["uid"]

        lc.wait_for(new_operator, 120, "a new operator pod Ready", 0.5)
        lc.wait_for(lambda: snapshot(_grmd(lc, name)).switch is None, 240, "the switch finished", 1.0)
        active = snapshot(_grmd(lc, name)).active
        assert active in ("bf16", "fp8")
        other = "fp8" if active == "bf16" else "bf16"
        lc.wait_for(lambda: not _worker_pods(lc, name, other), 120, f"no {other} pods left", 1.0)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_history(lc, name)}") from exc
    finally:
        outcomes = load.stop()
    resource = _grmd(lc, name)
    deployments = lc.get(f"/apis/apps/v1/namespaces/{NS}/deployments?labelSelector=grm.dev/deployment={name}")
    for deployment in deployments["items"]:
        owners = deployment["metadata"].get("ownerReferences") or []
        assert [o["uid"] for o in owners] == [resource["metadata"]["uid"]], deployment["metadata"]["name"]
    variants = {d["metadata"]["labels"].get("grm.dev/variant") for d in deployments["items"]}
    assert variants <= {"bf16", "fp8"} and len(variants) == len(deployments["items"])
    assert all(p["metadata"]["labels"]["grm.dev/variant"] == active for p in _worker_pods(lc, name))
    assert len(outcomes) > 50 and not _failures(outcomes), (_failed_by_client(load), _history(lc, name))
    _every_client_answered(load)
