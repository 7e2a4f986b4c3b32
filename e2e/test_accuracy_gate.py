"""The quality gate end to end on the local cluster, with the real Jobs: llm-compressor builds,
evaluations on the real vLLM CPU engine, the gate's verdicts, a switch under load.

One GRMDeployment, three variants of a tiny *trained* GRM (``tiny_grm.py`` of the test support,
from the quality CLI: a tiny Llama taught to answer a GRM prompt with ``\\boxed{a, b}``; a
mechanism check, not a reward model):

* ``bf16`` — the reference, served from the test's checkpoint;
* ``int8`` — ``build: {from: bf16, scheme: W8A8}``: a build Job runs ``grm-operator
  quantize`` into a directory of the test, an evaluation Job scores the default evaluation set
  with it and with bf16 on vLLM, and its verdicts agree with bf16's: **Admitted**;
* ``broken`` — ``build: {from: <a copy of bf16 whose decoder weights are noise>, scheme:
  W8A8}``: built and evaluated the same way, its verdicts do not agree: **Rejected**, with
  the numbers in the QualityGate condition and a VariantRejected Event.

Then, under score traffic through the Service, the pin moves from bf16 to int8: the operator
switches to int8 (admitted) surge-then-drain without a failed request, and never to ``broken``,
whose worker runs no pod at any time (the test watches every pod the cluster creates).

Sized for 2 cores: 2 "GPUs" (the node's budget): one Job at a time beside the serving bf16 worker;
2 samples of at most 16 tokens per item and per request, max_model_len 1024, eager mode. Each
vLLM start takes 40–100 s here; an evaluation starts two (reference, then variant), so the two
evaluations and the switch take most of the test's 10–15 minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit.cluster import hostmounts, pyimages, tools
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.traffic import LoadGenerator, Outcome, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = tools.vllm_python()
TINY_GRM = REPO / "tests" / "support" / "tiny_grm.py"
NS = "default"
NAME = "e2e-gate"
GRMD_PATH = f"/apis/grm.dev/v1alpha1/namespaces/{NS}/grmdeployments/{NAME}"
# A build (llm-compressor's import and a W8A8 GPTQ pass over a tiny model: ~30–60 s) and an
# evaluation (two vLLM starts of 40–100 s and the default set's items) each, with ~3× margin for
# 2 busy cores; the two variants' Jobs run one after the other (one GPU free beside bf16).
GATE_S = 900.0
READY_S = 300.0
SWITCH_S = 360.0
RATE = 0.3


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class Models:
    bf16: Path
    noise: Path
    out: Path  # where the builds write: one directory per variant below it


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The tiny trained GRM (bf16), a copy of it with noise for weights, and the build directory."""
    if request.config.getoption("--real-cluster", default=False):
        pytest.skip("the gate scenario runs its Jobs on this machine's venvs: local cluster only")
    missing = (
        tools.vllm_missing()
        or hostmounts.venv_unmountable(VLLM_PYTHON)
        or hostmounts.venv_unmountable(tools.compress_python())
    )
    if missing:
        _skip_or_fail(missing)
    if not TINY_GRM.exists():
        _skip_or_fail(f"{TINY_GRM} missing (the quality CLI's tiny trained GRM)")
    if not tools.compress_python().exists():
        _skip_or_fail(f"{tools.compress_python()} missing (run `make compress-venv`)")
    # The trained model is cached in .cache/ keyed on the scripts that make it (training takes
    # ~90 s of CPU on 2 idle cores): a warm run reads it from there.
    scripts = [TINY_GRM, TINY_GRM.with_name("tiny_llama.py")]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in scripts)).hexdigest()[:16]
    cache = REPO / ".cache" / "e2e" / f"tiny-grm-{key}"
    if not (cache / "noise" / "config.json").exists():
        staging = tmp_path_factory.mktemp("tiny-grm")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for argv in (
            ["build", str(staging / "bf16")],
            ["destroy", str(staging / "bf16"), str(staging / "noise")],
        ):
            subprocess.run(
                [str(VLLM_PYTHON), str(TINY_GRM), *argv],
                check=True,
                capture_output=True,
                timeout=900,
                env=env,
            )
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        staging.rename(cache) if staging.stat().st_dev == cache.parent.stat().st_dev else shutil.copytree(
            staging, cache
        )
    out = Models(cache / "bf16", cache / "noise", tmp_path_factory.mktemp("gate-built"))
    # The worker pods and the Jobs run as uid 1000: they read the models and the build Jobs write
    # their checkpoints below `out`.
    hostmounts.open_to_pods(cache)
    hostmounts.open_to_pods(out.out, writable=True)
    return out


@pytest.fixture(scope="module")
def cluster(
    models: Models, operator_cluster: Callable[..., AbstractContextManager[LocalCluster]]
) -> Iterator[LocalCluster]:
    """2 GPUs on the real node; the operator from its chart, its Jobs on the project's worker image
    (as the chart's qualityJobs.image), which runs this machine's venvs through hostPath volumes."""
    worker = pyimages.reference(pyimages.WORKER_SIM)
    repository, tag = worker.rsplit(":", 1)
    values = ("qualityJobs.image.repository=" + repository, "qualityJobs.image.tag=" + tag)
    values += ("qualityJobs.pullPolicy=Never",)
    with operator_cluster(
        gpus=2, prometheus=False, chart_values=tuple(a for v in values for a in ("--set", v))
    ) as lc:
        yield lc


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _operator_ready(lc: LocalCluster) -> bool:
    return len([p for p in lc.get("/api/v1/namespaces/grm-system/pods")["items"] if _ready(p)]) == 1


def manifest(models: Models) -> dict[str, Any]:
    overrides = {
        "device": "cpu",
        "vllm.python": str(VLLM_PYTHON),
        "vllm.enforce_eager": True,
        "vllm.cpu_kvcache_space_gib": 1,
        "vllm.startup_timeout_s": READY_S,
        "scoring.max_tokens": 16,
    }
    # W8A8 (int8 weights and activations): vLLM's CPU engine runs it (oneDNN); an fp8
    # compressed-tensors checkpoint needs a GPU. GPTQ calibrates on the default set's 32 prompts.
    build = {"scheme": "W8A8", "calibration": {"samples": 32, "maxSequenceLength": 512}}
    return {
        "apiVersion": "grm.dev/v1alpha1",
        "kind": "GRMDeployment",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "annotations": {
                "grm.dev/worker-engine": "vllm",
                "grm.dev/worker-overrides": json.dumps(overrides),
                # The evaluation on the engine's CPU: short critiques, the worker's eager vLLM.
                "grm.dev/evaluation-args": json.dumps(
                    [
                        "--max-tokens",
                        "16",
                        "--device",
                        "cpu",
                        "--engine-option",
                        "vllm.enforce_eager=true",
                        "--engine-option",
                        "vllm.cpu_kvcache_space_gib=1",
                        "--concurrency",
                        "4",
                    ]
                ),
            },
        },
        "spec": {
            "model": {"name": "tiny-grm", "uri": str(models.bf16), "servedModelName": "tiny"},
            "variants": [
                {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 1},
                {
                    "name": "int8",
                    "precision": "int8",
                    "quality": 0.99,
                    "gpusPerReplica": 1,
                    "uri": str(models.out / "int8"),
                    "build": {"from": "bf16", **build},
                },
                {
                    "name": "broken",
                    "precision": "int8",
                    "quality": 0.99,  # what someone typed: the measurement says otherwise
                    "gpusPerReplica": 1,
                    "uri": str(models.out / "broken"),
                    "build": {"from": str(models.noise), **build},
                },
            ],
            "engine": {"maxModelLen": 1024, "maxNumSeqs": 8},
            "slo": {"ttftP95": "2s", "e2eP95": "20s"},
            "scaling": {"minReplicas": 1, "maxReplicas": 1, "maxGPUs": 2, "controlPeriod": "2s"},
            "precision": {"policy": "Pinned", "pinnedVariant": "bf16", "minQuality": 0.6},
            "scoring": {"samples": {"min": 2, "max": 2}},
            "metrics": {"source": "Direct", "window": "10s"},
            "rollout": {"switchTimeout": "6m", "drainSeconds": 10},
            "template": {
                "env": [
                    {"name": "HF_HUB_OFFLINE", "value": "1"},
                    {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/inductor"},
                    {"name": "VLLM_HOST_IP", "value": "127.0.0.1"},
                    # The Jobs' interpreters: this machine's venvs, mounted below.
                    {"name": "GRM_COMPRESS_PYTHON", "value": str(tools.compress_python())},
                    {"name": "GRM_VLLM_PYTHON", "value": str(VLLM_PYTHON)},
                ],
                "modelCache": {"sizeLimit": "1Gi"},
                # Sized for this 2-CPU node (test_vllm_switch.py says why).
                "resources": {
                    "requests": {"cpu": "250m", "memory": "1Gi"},
                    "limits": {"memory": "6Gi"},
                },
                # The engines, the models and the builds' output from this machine, at their paths
                # (grm_testkit.cluster.hostmounts); the worker pods and the Jobs both mount them.
                **hostmounts.HostMounts()
                .add(hostmounts.venv_root(VLLM_PYTHON))
                .add(hostmounts.venv_root(tools.compress_python()))
                .add(models.bf16.parent)
                .add(models.out, writable=True)
                .template(),
            },
        },
    }


def _grmd(lc: LocalCluster) -> dict[str, Any]:
    return lc.get(GRMD_PATH)


def _entry(lc: LocalCluster, variant: str) -> dict[str, Any]:
    return next((e for e in _grmd(lc).get("status", {}).get("variants") or [] if e["name"] == variant), {})


def _history(lc: LocalCluster) -> str:
    status = _grmd(lc).get("status", {})
    lines = [f"gate={status.get('gate')} active={status.get('activeVariant')} switch={status.get('switch')}"]
    lines += [f"  {e['name']}: {e.get('gate')} {e.get('gateMessage')}" for e in status.get("variants") or []]
    lines += [
        f"  {c['type']}={c['status']} {c['reason']}: {c.get('message', '')[:300]}"
        for c in status.get("conditions") or []
    ]
    for pod in lc.get(f"/api/v1/namespaces/{NS}/pods")["items"]:
        name = pod["metadata"]["name"]
        log = lc.pod_log(NS, name)
        # A failed engine's cause is far above its traceback's tail: its error lines first.
        errors = [line for line in log.splitlines() if "Error" in line or "error" in line][-20:]
        phase = pod.get("status", {}).get("phase")
        lines.append(f"--- {name} ({phase}):\n" + "\n".join(errors) + f"\n...\n{log[-2500:]}")
    return "\n".join(lines)


class PodWatch:
    """Every pod name the cluster shows in the namespace while the test runs (polled)."""

    def __init__(self, lc: LocalCluster) -> None:
        self.lc = lc
        self.seen: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                pods = self.lc.get(f"/api/v1/namespaces/{NS}/pods")["items"]
            except Exception:  # a transient API error: the next poll sees the pods again
                continue
            for pod in pods:
                self.seen[pod["metadata"]["name"]] = dict(pod["metadata"].get("labels") or {})

    def stop(self) -> dict[str, dict[str, str]]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


def test_build_evaluate_admit_and_switch_reject_and_never_switch(
    cluster: LocalCluster, models: Models
) -> None:
    lc = cluster
    watch = PodWatch(lc)
    load: LoadGenerator | None = None
    outcomes: list[Outcome] = []
    try:
        lc.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest(models)))

        def judged() -> bool:
            return {_entry(lc, v).get("gate") for v in ("int8", "broken")} <= {"Admitted", "Rejected"}

        lc.wait_for(judged, GATE_S, "both variants built, evaluated and judged", 2.0)
        int8, broken = _entry(lc, "int8"), _entry(lc, "broken")
        assert int8["gate"] == "Admitted", _history(lc)
        assert broken["gate"] == "Rejected", _history(lc)
        # Built: the checkpoint is where the variant's uri says, with the digest status records.
        manifest_file = json.loads((models.out / "int8" / "grm-build.json").read_text())
        assert int8["build"]["digest"] == manifest_file["digest"] and int8["build"]["uri"] == str(
            models.out / "int8"
        )
        # Measured: the numbers, and the gate's reading of them.
        assert int8["quality"]["low"] >= 0.6 > broken["quality"]["low"], _history(lc)
        conditions = {c["type"]: c for c in _grmd(lc)["status"]["conditions"]}
        gate = conditions["QualityGate"]
        assert (gate["status"], gate["reason"]) == ("False", "VariantRejected")
        assert "broken: agreement" in gate["message"] and "< minQuality 0.6" in gate["message"]
        events = lc.get(f"/api/v1/namespaces/{NS}/events")["items"]
        reasons = {e["reason"] for e in events if e["involvedObject"].get("name") == NAME}
        assert {"BuildSucceeded", "VariantAdmitted", "VariantRejected"} <= reasons, reasons
        printed = lc.kubectl("get", "grmd", NAME).stdout
        assert "int8=Admitted(" in printed and "broken=Rejected(" in printed, printed

        # The switch under load, surge-then-drain, to the admitted variant.
        lc.wait_for(lambda: snapshot(_grmd(lc)).conditions.get("Ready") == "True", READY_S, "bf16 Ready", 1.0)
        load = LoadGenerator(lc.service_url(NS, NAME, 8000) + "/v1/grm/score", lambda t: RATE).start()
        lc.wait_for(lambda: len(load.outcomes()) >= 3, 60, "3 answers from bf16", 0.5)
        patch = {"spec": {"precision": {"policy": "Pinned", "pinnedVariant": "int8"}}}
        lc.kubectl("patch", "grmdeployment", NAME, "--type", "merge", "-p", json.dumps(patch))

        def switched() -> bool:
            snap = snapshot(_grmd(lc))
            return snap.active == "int8" and snap.switch is None

        lc.wait_for(switched, SWITCH_S, "switch to int8", 1.0)
        answered = len(load.outcomes())
        lc.wait_for(lambda: len(load.outcomes()) >= answered + 3, 60, "3 more answers from int8", 0.5)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_history(lc)}") from exc
    finally:
        outcomes = load.stop() if load is not None else []
        seen = watch.stop()
    assert outcomes and not [o for o in outcomes if not o.ok], outcomes
    status = _grmd(lc)["status"]
    assert status["activeVariant"] != "broken" and (status.get("switch") or {}).get("to") != "broken"
    switches = [d for d in status.get("decisions") or [] if d.get("action") == "SwitchVariant"]
    assert all(d.get("to") != "broken" for d in switches), switches
    # No worker pod of the rejected variant ever existed; its Jobs' pods did (they built and measured it).
    workers = {n: labels for n, labels in seen.items() if labels.get("grm.dev/variant")}
    assert workers and not [n for n, labels in workers.items() if labels["grm.dev/variant"] == "broken"], seen
    assert any(labels.get("grm.dev/quality-job") == "evaluation" for labels in seen.values()), seen
