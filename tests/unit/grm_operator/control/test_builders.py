"""The pure child builders: shapes Kubernetes accepts (kubernetes-validate --strict), owner
references and labels the operator relies on, the worker config contract, and replica planning."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from grm_operator.api import models
from grm_operator.api.models import GRMDeployment
from grm_operator.control.admintoken import admin_token_secret, new_token, token_of
from grm_operator.control.builders import Children, build_children
from grm_operator.control.builders.metadata import (
    ANNOTATION_APPLIED_HASH,
    ANNOTATION_CONFIG_HASH,
    Owner,
    applied_hash,
    selector_labels,
)
from grm_operator.control.builders.replicas import active_variant, initial_replicas, plan_replicas
from grm_operator.control.builders.workerconfig import ANNOTATION_WORKER_ENGINE, ANNOTATION_WORKER_OVERRIDES
from grm_operator.settings import OperatorSettings
from grm_worker.contract.admin import ADMIN_TOKEN_ENV
from grm_worker.contract.config import WorkerConfig
from grm_worker.engines.vllm_args import vllm_command
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
# The control plane the tests build is v1.35; validate against that API version's schemas.
K8S_VERSION = "1.35.0"
SETTINGS = OperatorSettings(worker_image="registry.example/grm-worker:1.2.3")


def grmd(mutate: Any = None, **meta: Any) -> GRMDeployment:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"].update({"uid": "0b5c1f36-1111-2222-3333-444455556666", **meta})
    if mutate is not None:
        mutate(body)
    return GRMDeployment.model_validate(body)


def children(g: GRMDeployment | None = None, replicas: dict[str, int] | None = None, **kw: Any) -> Children:
    g = g or grmd()
    return build_children(g, replicas or initial_replicas(g.spec), SETTINGS, **kw)


def test_every_built_manifest_validates_strictly() -> None:
    def rich(body: dict[str, Any]) -> None:
        body["spec"]["model"]["credentialsSecretRef"] = {"name": "hf", "key": "token"}
        body["spec"]["variants"][1]["uri"] = "hf://org/grm-fp8"
        body["spec"]["template"] = {
            "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "96Gi"}},
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]
                    }
                }
            },
            "priorityClassName": "inference",
            "serviceAccountName": "grm-worker",
            "env": [
                {"name": "EXTRA", "value": "1"},
                {"name": "FROM", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            "modelCache": {"claimName": "model-cache"},
            "podAnnotations": {"team": "rl"},
            "podLabels": {"team": "rl"},
            "imagePullSecrets": [{"name": "registry"}],
            "runtimeClassName": "nvidia",
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"grm.dev/deployment": "reward"}},
                }
            ],
            "volumes": [{"name": "certs", "configMap": {"name": "ca-bundle"}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/custom", "readOnly": True}],
        }
        body["spec"]["variants"][2]["acceleratorResource"] = "nvidia.com/mig-3g.40gb"
        body["spec"]["variants"][2]["resources"] = {"cpu": "6", "memory": "40Gi", "sharedMemory": "2Gi"}

    built = children(grmd(rich), pod_monitor=True)
    manifests = built.all()
    assert (
        len(manifests) == 3 + 3 + 4
    )  # ConfigMaps, Deployments, Service + reference Service + PDB + PodMonitor
    for manifest in manifests:
        if manifest["kind"] == "PodMonitor":
            continue  # a CRD kind: no built-in schema
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_bad_field() -> None:
    # The check above can fail: a typo in a Deployment is rejected.
    deployment = copy.deepcopy(children().deployments["bf16"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_owner_references_and_labels_on_every_child() -> None:
    built = children(pod_monitor=True)
    for manifest in built.all():
        meta = manifest["metadata"]
        assert meta["namespace"] == "rl"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "grm.dev/v1alpha1",
                "kind": "GRMDeployment",
                "name": "reward",
                "uid": "0b5c1f36-1111-2222-3333-444455556666",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "grm-worker"
        assert labels["app.kubernetes.io/instance"] == "reward"
        assert labels["app.kubernetes.io/managed-by"] == "grm-operator"
        assert labels["grm.dev/deployment"] == "reward"
        assert labels["app.kubernetes.io/component"]
        assert meta["annotations"][ANNOTATION_APPLIED_HASH] == applied_hash(manifest)
    for variant, deployment in built.deployments.items():
        assert deployment["metadata"]["name"] == f"reward-{variant}"
        assert deployment["metadata"]["labels"]["grm.dev/variant"] == variant
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        # The Service's selector picks every variant's pods; the Deployment's only its own.
        assert selector_labels("reward").items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert built.service["spec"]["selector"] == {
        "app.kubernetes.io/name": "grm-worker",
        "grm.dev/deployment": "reward",
    }
    assert built.pdb["spec"]["selector"]["matchLabels"] == built.service["spec"]["selector"]
    assert built.pod_monitor is not None
    assert built.pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_owner_needs_a_stored_object() -> None:
    g = grmd()
    g.metadata.uid = None
    with pytest.raises(ValueError, match="no uid"):
        build_children(g, {}, SETTINGS)


def test_worker_pod_shape() -> None:
    d = children(replicas={"bf16": 3}).deployments["bf16"]
    assert d["spec"]["replicas"] == 3
    pod = d["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/grm-worker:1.2.3"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["grm-worker", "serve", "--config", "/etc/grm/worker.json"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"  # bf16: gpusPerReplica 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    # Startup budget from the weights: DeepSeek-GRM-27B bf16 is 54 GB, 1.5 × (60 s + 54 / 0.25 GB/s)
    # = 414 s → 83 probes 5 s apart.
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 415
    # exec, not the sleep action (beta only from Kubernetes 1.30; the chart admits 1.28).
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["/bin/sleep", "5"]}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 60 + 15  # preStop + drainSeconds + engine stop
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # Writable places on a read-only root: /tmp, /dev/shm and the model cache.
    assert {"/tmp", "/dev/shm", "/models", "/etc/grm", "/mnt/weights"} == set(mounts)
    assert mounts["/etc/grm"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "reward-bf16-config"
    assert volumes["model-cache"]["emptyDir"] == {"sizeLimit": "200Gi"}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"


def test_admin_port_is_a_container_port_the_service_and_pod_monitor_never_reach() -> None:
    """The worker's admin API (sample budget, fault injection) listens on the config's admin_port,
    declared as the container port ``admin``; the Service forwards only ``http``, and the
    PodMonitor scrapes only ``http``, so no client of the Service can reach /admin/*."""
    built = children(pod_monitor=True)
    for variant, deployment in built.deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        config = WorkerConfig.model_validate_json(built.config_maps[variant]["data"]["worker.json"])
        assert ports == {"http": config.port, "admin": config.admin_port}
        assert config.admin_port != config.port
    service_ports = built.service["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service_ports] == [(8000, "http")]
    assert built.pod_monitor is not None
    assert [e["port"] for e in built.pod_monitor["spec"]["podMetricsEndpoints"]] == ["http"]


def test_worker_gets_the_admin_token_from_the_secret_only() -> None:
    """Every worker container reads GRM_ADMIN_TOKEN from the GRMDeployment's admin token Secret
    (a secretKeyRef); no token (nor the variable) is in the ConfigMap, the arguments or a plain
    env value, and the Secret the operator creates is owned by the GRMDeployment, immutable and
    valid for the API server."""
    built = children()
    for variant, deployment in built.deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        (entry,) = [e for e in container["env"] if e["name"] == ADMIN_TOKEN_ENV]
        assert entry == {
            "name": "GRM_ADMIN_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "reward-admin-token", "key": "token"}},
        }
        assert "GRM_ADMIN_TOKEN" not in json.dumps(container.get("args", []) + container.get("command", []))
        assert "admin_token" not in built.config_maps[variant]["data"]["worker.json"].lower()
    owner = Owner(name="reward", namespace="rl", uid="1234")
    token = new_token()
    secret = admin_token_secret(owner, token)
    assert len(token) >= 43 and token != new_token()
    assert secret["metadata"]["name"] == "reward-admin-token" and secret["immutable"] is True
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "1234"
    assert token_of(secret) == token and token not in json.dumps(secret)  # base64 in data
    assert token_of({"data": {}}) is None and token_of({"data": {"token": "!!"}}) is None
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    for manifest in built.all():
        assert token not in json.dumps(manifest)


def test_startup_probe_follows_the_profile_cold_start() -> None:
    def slow_fp8(body: dict[str, Any]) -> None:
        body["spec"]["variants"][1]["profile"] = {
            "stepOverheadMs": 12.5,
            "prefillMsPerToken": 0.05,
            "decodeMsPerSequence": 0.035,
            "kvCacheTokens": 100000,
            "coldStart": "5m",
        }

    fp8 = children(grmd(slow_fp8)).deployments["fp8"]["spec"]["template"]["spec"]["containers"][0]
    assert fp8["startupProbe"]["failureThreshold"] == 180  # 3 × 300 s / 5 s
    int4 = children().deployments["int4"]["spec"]["template"]["spec"]["containers"][0]
    # The AWQ checkpoint is 0.3 of 54 GB: 1.5 × (60 + 16.2 / 0.25) = 187 s → 38 probes.
    assert int4["startupProbe"]["failureThreshold"] == 38


def _startup_probes(mutate: Any, variant: str) -> int:
    pod = children(grmd(mutate)).deployments[variant]["spec"]["template"]["spec"]
    return int(pod["containers"][0]["startupProbe"]["failureThreshold"])


def test_startup_probe_is_sized_from_the_weights() -> None:
    def big(body: dict[str, Any]) -> None:
        body["spec"]["model"]["weightsGB"] = 140.0

    def nameless(body: dict[str, Any]) -> None:
        body["spec"]["model"]["name"] = "acme/reward-model"

    # 140 GB bf16: 1.5 × (60 + 560) = 930 s; fp8 quantizes the same bf16 weights on load.
    assert _startup_probes(big, "bf16") == 186
    assert _startup_probes(big, "fp8") == 186
    # 0.3 × 140 GB = 42 GB of AWQ weights: 1.5 × (60 + 168) = 342 s.
    assert _startup_probes(big, "int4") == 69
    # No size and no "<N>B" in the name: the precision's prior, 3 × 90 s, as before.
    assert _startup_probes(nameless, "bf16") == 54
    # A 0.5B model loads fast: 1.5 × (60 + 4) = 96 s, raised to the 120 s floor.
    assert (
        _startup_probes(lambda b: b["spec"]["model"].update(name="Qwen/Qwen2.5-0.5B-Instruct"), "bf16") == 24
    )


def test_template_fields_pass_through_and_ours_win() -> None:
    def template(body: dict[str, Any]) -> None:
        body["spec"]["template"] = {
            "image": "mine:1",
            "imagePullPolicy": "Always",
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "priorityClassName": "high",
            "serviceAccountName": "worker",
            "env": [{"name": "HF_HOME", "value": "/elsewhere"}, {"name": "MINE", "value": "x"}],
            "podAnnotations": {"a": "b", "prometheus.io/port": "1"},
            "podLabels": {"team": "rl", "grm.dev/deployment": "hijack"},
        }

    d = children(grmd(template)).deployments["fp8"]
    pod = d["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == ("mine:1", "Always")
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert (spec["priorityClassName"], spec["serviceAccountName"]) == ("high", "worker")
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_HOME"]["value"] == "/models/hf"  # the cache layout is the operator's
    assert env["MINE"] == {"name": "MINE", "value": "x"}
    assert pod["metadata"]["annotations"]["a"] == "b"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert pod["metadata"]["labels"]["team"] == "rl"
    assert pod["metadata"]["labels"]["grm.dev/deployment"] == "reward"


def _pod_of(mutate: Any, variant: str = "bf16") -> dict[str, Any]:
    pod: dict[str, Any] = children(grmd(mutate)).deployments[variant]["spec"]["template"]["spec"]
    return pod


def _config(mutate: Any, variant: str = "bf16") -> WorkerConfig:
    return WorkerConfig.model_validate_json(
        children(grmd(mutate)).config_maps[variant]["data"]["worker.json"]
    )


def test_hf_weights_are_fetched_at_the_revision_by_an_init_container() -> None:
    def hf(body: dict[str, Any]) -> None:
        body["spec"]["model"].update(
            uri="hf://deepseek-ai/DeepSeek-GRM-27B", revision="8f3a2c1", credentialsSecretRef={"name": "hf"}
        )
        body["spec"]["template"] = {"env": [{"name": "HF_XET_HIGH_PERFORMANCE", "value": "1"}]}

    pod = _pod_of(hf)
    (init,) = pod["initContainers"]
    assert init["name"] == "fetch-model"
    assert init["command"] == ["grm-worker", "fetch-model", "--config", "/etc/grm/worker.json"]
    assert init["image"] == pod["containers"][0]["image"]
    env = {e["name"]: e for e in init["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["HF_XET_HIGH_PERFORMANCE"]["value"] == "1"
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/etc/grm", "/tmp", "/models"}
    # The serving container never sees the token.
    assert "HF_TOKEN" not in {e["name"] for e in pod["containers"][0]["env"]}
    model = _config(hf).model
    assert (model.uri, model.revision) == ("hf://deepseek-ai/DeepSeek-GRM-27B", "8f3a2c1")
    assert model.path == "/models/weights/hf/deepseek-ai/DeepSeek-GRM-27B/8f3a2c1"
    # The int4 variant's own repository: its own revision, here none (the default branch).
    int4 = _config(hf, "int4").model
    assert (int4.uri, int4.revision) == ("pvc://models/grm-27b-awq", None)


def test_variant_revision_goes_with_the_variants_own_uri() -> None:
    def hf(body: dict[str, Any]) -> None:
        body["spec"]["model"].update(uri="hf://org/grm", revision="v2")
        body["spec"]["variants"][2].update(uri="hf://org/grm-awq", revision="v7")

    assert _config(hf, "int4").model.path == "/models/weights/hf/org/grm-awq/v7"
    assert _config(hf, "fp8").model.path == "/models/weights/hf/org/grm/v2"  # no uri: the model's


def test_s3_weights_are_fetched_with_aws_keys_from_the_secret_and_the_endpoint() -> None:
    def s3(body: dict[str, Any]) -> None:
        body["spec"]["model"].update(
            uri="s3://bucket/grm-27b",
            credentialsSecretRef={"name": "minio"},
            endpointURL="http://minio.storage:9000",
        )

    pod = _pod_of(s3)
    (init,) = pod["initContainers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"] if "valueFrom" in e}
    assert env == {
        "AWS_ACCESS_KEY_ID": {"name": "minio", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "minio", "key": "AWS_SECRET_ACCESS_KEY"},
        "AWS_SESSION_TOKEN": {"name": "minio", "key": "AWS_SESSION_TOKEN", "optional": True},
    }
    assert not any(e["name"].startswith("AWS_") for e in pod["containers"][0]["env"])
    model = _config(s3).model
    assert (model.path, model.endpoint_url) == (
        "/models/weights/s3/bucket/grm-27b",
        "http://minio.storage:9000",
    )
    # A first download of 54 GB at 100 MB/s (540 s) extends the rollout's progress deadline.
    deployment = children(grmd(s3)).deployments["bf16"]
    assert deployment["spec"]["progressDeadlineSeconds"] == 2 * 415 + 540


def test_no_fetch_step_for_claims_or_the_sim_engine() -> None:
    assert "initContainers" not in _pod_of(None)  # pvc://: mounted, nothing to download

    def sim(body: dict[str, Any]) -> None:
        body["spec"]["model"]["uri"] = "hf://org/grm"
        body["metadata"]["annotations"] = {ANNOTATION_WORKER_ENGINE: "sim"}

    assert "initContainers" not in _pod_of(sim)  # the simulated engine reads no weights


def test_uris_cannot_name_a_directory_outside_the_cache() -> None:
    def escape(body: dict[str, Any]) -> None:
        body["spec"]["model"]["uri"] = "s3://bucket/../../etc"

    assert _config(escape).model.path == "/models/weights/s3/bucket/etc"


def test_worker_config_is_the_workers_own_contract() -> None:
    def engine(body: dict[str, Any]) -> None:
        body["spec"]["engine"] = {"maxNumSeqs": 128, "maxModelLen": 8192}
        body["spec"]["variants"][1]["engine"] = {"maxNumSeqs": 256, "kvCacheDtype": "fp8"}

    built = children(grmd(engine))
    configs = {
        v: WorkerConfig.model_validate_json(cm["data"]["worker.json"]) for v, cm in built.config_maps.items()
    }
    bf16, fp8, int4 = configs["bf16"], configs["fp8"], configs["int4"]
    assert (bf16.precision, bf16.vllm.tensor_parallel_size, bf16.vllm.max_num_seqs) == ("bf16", 2, 128)
    assert (fp8.vllm.max_num_seqs, fp8.vllm.kv_cache_dtype, fp8.vllm.max_model_len) == (256, "fp8", 8192)
    assert fp8.model.checkpoint_quantization == "none"  # dynamic fp8 from the bf16 weights
    assert int4.model.checkpoint_quantization == "awq"
    assert int4.model.path == "/mnt/weights/grm-27b-awq"
    assert bf16.drain_timeout_s == 60.0
    assert (bf16.scoring.samples_min, bf16.scoring.samples_max, bf16.scoring.early_exit) == (1, 8, "exact")
    # Shed floors: the fewest samples meeting minQuality 0.97 per variant (bf16×k2, fp8×k4); int4
    # admits only k = 8, so its workers never shed.
    assert [c.scoring.shed_floor for c in (bf16, fp8, int4)] == [2, 4, None]
    off = children(grmd(lambda b: b["spec"]["scoring"].update(shedSamples="Off")))
    assert {
        WorkerConfig.model_validate_json(cm["data"]["worker.json"]).scoring.shed_floor
        for cm in off.config_maps.values()
    } == {None}
    command = vllm_command(bf16, device="cuda", python="python")
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[command.index("--model") + 1] == "/mnt/weights/grm-27b"


def test_connection_max_age_reaches_every_workers_config() -> None:
    def ages(edit: Any = None) -> set[float]:
        built = children(grmd(edit))
        return {
            WorkerConfig.model_validate_json(cm["data"]["worker.json"]).connection_max_age_s
            for cm in built.config_maps.values()
        }

    assert ages() == {30.0}  # the default (docs/worker.md, "Connections, drain and scale-up")
    assert ages(lambda b: b["spec"].setdefault("rollout", {}).update(connectionMaxAge="2m")) == {120.0}
    assert ages(lambda b: b["spec"].setdefault("rollout", {}).update(connectionMaxAge="0s")) == {0.0}


def test_config_change_rolls_pods_but_a_scale_does_not_change_the_hash() -> None:
    base = children(replicas={"bf16": 1})
    scaled = children(replicas={"bf16": 4})
    changed = children(grmd(lambda b: b["spec"].update(engine={"maxNumSeqs": 64})), replicas={"bf16": 1})

    def template_hash(c: Children) -> str:
        return str(
            c.deployments["bf16"]["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]
        )

    assert template_hash(base) == template_hash(scaled)
    assert applied_hash(base.deployments["bf16"]) == applied_hash(scaled.deployments["bf16"])
    assert template_hash(base) != template_hash(changed)
    assert applied_hash(base.deployments["bf16"]) != applied_hash(changed.deployments["bf16"])
    # Same input, same bytes: what lets the reconciler compare hashes instead of writing.
    assert children(replicas={"bf16": 1}).all() == base.all()


def test_worker_overrides_annotation() -> None:
    g = grmd(
        lambda b: b["metadata"].update(
            annotations={
                ANNOTATION_WORKER_ENGINE: "sim",
                ANNOTATION_WORKER_OVERRIDES: json.dumps({"sim.time_scale": 20, "vllm.enforce_eager": True}),
            }
        )
    )
    config = WorkerConfig.model_validate_json(children(g).config_maps["fp8"]["data"]["worker.json"])
    assert (config.engine, config.sim.time_scale, config.vllm.enforce_eager) == ("sim", 20.0, True)
    bad = grmd(lambda b: b["metadata"].update(annotations={ANNOTATION_WORKER_OVERRIDES: '{"port": 0}'}))
    with pytest.raises(ValidationError):
        children(bad)
    with pytest.raises(ValueError, match="JSON object"):
        children(grmd(lambda b: b["metadata"].update(annotations={ANNOTATION_WORKER_OVERRIDES: "[1]"})))


def test_initial_replicas() -> None:
    assert initial_replicas(grmd().spec) == {"bf16": 1, "fp8": 0, "int4": 0}

    def floor(body: dict[str, Any]) -> None:
        body["spec"]["variants"][0]["quality"] = 0.96  # below minQuality 0.97: fp8 is the best admissible
        body["spec"]["scaling"]["minReplicas"] = 2

    assert initial_replicas(grmd(floor).spec) == {"bf16": 0, "fp8": 2, "int4": 0}

    def pinned(body: dict[str, Any]) -> None:
        body["spec"]["precision"] = {"policy": "Pinned", "pinnedVariant": "int4", "minQuality": 0.9}

    assert initial_replicas(grmd(pinned).spec) == {"bf16": 0, "fp8": 0, "int4": 1}

    def manual(body: dict[str, Any]) -> None:
        body["spec"]["scaling"].update(mode="Manual", replicas=3)

    assert initial_replicas(grmd(manual).spec) == {"bf16": 3, "fp8": 0, "int4": 0}


def test_plan_replicas_keeps_the_policys_counts_within_bounds() -> None:
    spec = grmd().spec  # minReplicas 1, maxReplicas 8
    assert plan_replicas(spec, "bf16", {}) == {"bf16": 1, "fp8": 0, "int4": 0}
    assert plan_replicas(spec, "bf16", {"bf16": 5, "fp8": 2}) == {"bf16": 5, "fp8": 0, "int4": 0}
    assert plan_replicas(spec, "bf16", {"bf16": 12}) == {"bf16": 8, "fp8": 0, "int4": 0}
    # A switch in progress owns both of its variants' counts.
    switching = frozenset({"bf16", "fp8"})
    assert plan_replicas(spec, "bf16", {"bf16": 3, "fp8": 2}, switching=switching) == {
        "bf16": 3,
        "fp8": 2,
        "int4": 0,
    }
    # ... even at 0 for the active one: a rolling switch handed all its GPUs to the new variant
    # (the clamp to minReplicas 1 took 2 of fp8's 4 GPUs back,
    # tests/integration/grm_operator/test_autoscale.py).
    assert plan_replicas(spec, "bf16", {"bf16": 0, "fp8": 4}, switching=switching) == {
        "bf16": 0,
        "fp8": 4,
        "int4": 0,
    }
    manual = grmd(lambda b: b["spec"]["scaling"].update(mode="Manual", replicas=4)).spec
    assert plan_replicas(manual, "fp8", {"bf16": 2, "fp8": 1}) == {"bf16": 0, "fp8": 4, "int4": 0}
    assert plan_replicas(manual, "bf16", {"bf16": 1, "fp8": 2}, switching=switching) == {
        "bf16": 1,
        "fp8": 2,
        "int4": 0,
    }


def test_active_variant() -> None:
    spec = grmd().spec
    assert active_variant(spec, None) == "bf16"
    assert active_variant(spec, "fp8") == "fp8"
    assert active_variant(spec, "gone") == "bf16"
    pinned = grmd(lambda b: b["spec"].update(precision={"policy": "Pinned", "pinnedVariant": "fp8"})).spec
    assert active_variant(pinned, None) == "fp8"
    # A new pin is reached through a switch: the serving variant stays active until it completes.
    assert active_variant(pinned, "bf16") == "bf16"
    assert active_variant(pinned, "gone") == "fp8"


# --- scheduling: requests derived from the model, the accelerator resource, the pod template ---


def _pod(g: GRMDeployment, variant: str) -> dict[str, Any]:
    pod: dict[str, Any] = children(g).deployments[variant]["spec"]["template"]["spec"]
    return pod


def test_worker_pods_request_cpu_and_memory_derived_from_the_model() -> None:
    # DeepSeek-GRM-27B (27e9 parameters, read from the name) on the ladder:
    # bf16 ×2 GPUs: 27e9 × 2 B = 50.3 GiB + 2 × 4 GiB ranks + 3 GiB front + 2 GiB shm = 63.3 → 64Gi;
    # fp8 ×1 reads the bf16 weights (quantized on the GPU): 50.3 + 4 + 3 + 1 = 58.3 → 59Gi;
    # awq-int4 ×1 reads 0.6 B/parameter: 15.1 + 4 + 3 + 1 = 23.1 → 24Gi. Limits are 1.25 ×.
    expected = {
        "bf16": ("4", "64Gi", "80Gi", "2Gi"),
        "fp8": ("3", "59Gi", "74Gi", "1Gi"),
        "int4": ("3", "24Gi", "30Gi", "1Gi"),
    }
    for variant, (cpu, memory, limit, shm) in expected.items():
        pod = _pod(grmd(), variant)
        resources = pod["containers"][0]["resources"]
        assert resources["requests"]["cpu"] == cpu, variant
        assert resources["requests"]["memory"] == memory, variant
        assert resources["limits"]["memory"] == limit, variant
        # No CPU limit: throttling a decode loop is latency.
        assert "cpu" not in resources["limits"], variant
        shm_volume = next(v for v in pod["volumes"] if v["name"] == "shm")
        assert shm_volume["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}, variant


def test_declared_parameter_count_beats_the_name_and_an_unknown_size_still_requests_overhead() -> None:
    def small(body: dict[str, Any]) -> None:
        body["spec"]["model"].update(name="org/reward-model", parametersBillions=7)

    # 7e9 × 2 B = 13.0 GiB + 8 + 3 + 2 = 26.0 → 27Gi (ceil of 26.04).
    assert _pod(grmd(small), "bf16")["containers"][0]["resources"]["requests"]["memory"] == "27Gi"

    def nameless(body: dict[str, Any]) -> None:
        body["spec"]["model"]["name"] = "org/reward-model"

    # No count anywhere: still not BestEffort (ranks + front + shm: 8 + 3 + 2 = 13Gi).
    assert _pod(grmd(nameless), "bf16")["containers"][0]["resources"]["requests"]["memory"] == "13Gi"


def test_simulated_workers_request_only_the_fronts_share() -> None:
    # The sim engine loads no weights and runs no GPU process: 8 simulated fp8 replicas of a 27B
    # model must fit one small node (the real node here: 2 CPUs, 24 GiB), not ask for 8 × 59Gi.
    g = grmd(lambda body: body["metadata"].update(annotations={ANNOTATION_WORKER_ENGINE: "sim"}))
    fp8 = _pod(g, "fp8")["containers"][0]["resources"]
    assert fp8["requests"]["memory"] == "512Mi" and fp8["limits"]["memory"] == "640Mi"
    assert fp8["requests"]["cpu"] == "100m"
    assert fp8["limits"]["nvidia.com/gpu"] == "1"


def test_variant_resources_override_the_template_which_overrides_the_derived_values() -> None:
    def override(body: dict[str, Any]) -> None:
        body["spec"]["template"] = {"resources": {"requests": {"cpu": "16", "ephemeral-storage": "10Gi"}}}
        body["spec"]["variants"][0]["resources"] = {"cpu": "12", "memory": "100Gi", "sharedMemory": "8Gi"}
        body["spec"]["variants"][2]["resources"] = {"memoryLimit": "16Gi"}

    g = grmd(override)
    bf16 = _pod(g, "bf16")
    assert bf16["containers"][0]["resources"]["requests"] == {
        "cpu": "12",
        "memory": "100Gi",
        "ephemeral-storage": "10Gi",
        "nvidia.com/gpu": "2",
    }
    # An overridden memory gets the same 1.25 × headroom as a derived one: 125 GiB in MiB.
    assert bf16["containers"][0]["resources"]["limits"]["memory"] == "128000Mi"
    assert next(v for v in bf16["volumes"] if v["name"] == "shm")["emptyDir"]["sizeLimit"] == "8Gi"
    assert _pod(g, "fp8")["containers"][0]["resources"]["requests"]["cpu"] == "16"  # the template's
    # A limit below the derived request (24Gi) lowers the request with it: requests ≤ limits.
    int4 = _pod(g, "int4")["containers"][0]["resources"]
    assert int4["requests"]["memory"] == int4["limits"]["memory"] == "16Gi"
    for deployment in children(g).deployments.values():
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_a_memory_limit_below_the_given_memory_wins() -> None:
    def low(body: dict[str, Any]) -> None:
        body["spec"]["variants"][0]["resources"] = {"memory": "64Gi", "memoryLimit": "60000Mi"}

    resources = _pod(grmd(low), "bf16")["containers"][0]["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "60000Mi"


def test_accelerator_resource_is_per_variant() -> None:
    def mig(body: dict[str, Any]) -> None:
        body["spec"]["variants"][2]["acceleratorResource"] = "nvidia.com/mig-3g.40gb"
        body["spec"]["variants"][1]["acceleratorResource"] = "amd.com/gpu"

    g = grmd(mig)
    bf16, fp8, int4 = (_pod(g, v)["containers"][0]["resources"] for v in ("bf16", "fp8", "int4"))
    assert bf16["limits"]["nvidia.com/gpu"] == bf16["requests"]["nvidia.com/gpu"] == "2"  # the default
    assert fp8["limits"]["amd.com/gpu"] == "1" and "nvidia.com/gpu" not in fp8["limits"]
    assert int4["requests"]["nvidia.com/mig-3g.40gb"] == int4["limits"]["nvidia.com/mig-3g.40gb"] == "1"
    assert "nvidia.com/gpu" not in int4["requests"]


@pytest.mark.parametrize("name", ["gpu", "nvidia.com/", "NVIDIA.com/gpu", "nvidia.com/gpu count"])
def test_accelerator_resource_must_be_an_extended_resource_name(name: str) -> None:
    def bad(body: dict[str, Any]) -> None:
        body["spec"]["variants"][0]["acceleratorResource"] = name

    with pytest.raises(ValidationError, match="acceleratorResource"):
        grmd(bad)


def test_gpu_cluster_pod_template_fields() -> None:
    def template(body: dict[str, Any]) -> None:
        body["spec"]["template"] = {
            "imagePullSecrets": [{"name": "registry"}],
            "runtimeClassName": "nvidia",
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
            ],
            "volumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/custom"}],
        }

    pod = _pod(grmd(template), "bf16")
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "zone"
    assert {"name": "certs", "secret": {"secretName": "ca"}} in pod["volumes"]
    assert {"name": "certs", "mountPath": "/etc/ssl/custom"} in pod["containers"][0]["volumeMounts"]
    # The worker never calls the API server, and fsGroup must not chown a 100 GB cache per start.
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"

    def token(body: dict[str, Any]) -> None:
        body["spec"]["template"] = {"automountServiceAccountToken": True}

    assert _pod(grmd(token), "bf16")["automountServiceAccountToken"] is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("volumes", [{"name": "model-cache", "emptyDir": {}}], "worker's own volume names"),
        ("volumeMounts", [{"name": "x", "mountPath": "/models"}], "worker's own mount paths"),
    ],
)
def test_extra_volumes_cannot_take_the_workers_own(field: str, value: Any, message: str) -> None:
    def bad(body: dict[str, Any]) -> None:
        body["spec"]["template"] = {field: value}

    with pytest.raises(ValidationError, match=message):
        grmd(bad)


def test_reserved_names_are_exactly_what_the_builder_uses() -> None:
    def everything(body: dict[str, Any]) -> None:
        body["spec"]["model"].update(uri="s3://bucket/grm", credentialsSecretRef={"name": "aws"})
        body["spec"]["variants"][0]["uri"] = "pvc://models/grm-27b"

    # bf16 mounts its claim, fp8 downloads from s3: together every volume the builder makes.
    g = grmd(everything)
    pods = [_pod(g, "bf16"), _pod(g, "fp8")]
    assert {v["name"] for pod in pods for v in pod["volumes"]} == set(models.RESERVED_VOLUME_NAMES)
    mounts = {m["mountPath"] for pod in pods for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == set(models.RESERVED_MOUNT_PATHS)


def test_compile_caches_live_on_the_model_cache_volume() -> None:
    def claim(body: dict[str, Any]) -> None:
        body["spec"]["template"] = {"modelCache": {"claimName": "grm-cache"}}

    pod = _pod(grmd(claim), "bf16")
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models"] == "model-cache"
    # vLLM's torch.compile cache and Triton's kernels survive a restart on the claim.
    assert env["VLLM_CACHE_ROOT"] == "/models/vllm"
    assert env["TRITON_CACHE_DIR"] == "/models/triton"
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "grm-cache"}} in pod["volumes"]


def test_declared_architecture_reaches_the_worker_and_picks_its_dtype() -> None:
    def gemma(body: dict[str, Any]) -> None:
        body["spec"]["model"]["architecture"] = "gemma2"

    config = WorkerConfig.model_validate_json(
        children(grmd(gemma)).config_maps["int4"]["data"]["worker.json"]
    )
    assert config.model.architecture == "gemma2"
    cmd = vllm_command(config, device="cuda")
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"


def test_pod_monitor_carries_the_installation_labels_a_prometheus_selects_by() -> None:
    # kube-prometheus-stack's Prometheus selects PodMonitors by release=<its release>.
    settings = OperatorSettings(podmonitor_labels={"release": "kube-prometheus-stack", "team": "rl"})
    built = build_children(grmd(), initial_replicas(grmd().spec), settings, pod_monitor=True)
    assert built.pod_monitor is not None
    labels = built.pod_monitor["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels["team"] == "rl"
    # The operator's own labels stay: it finds its children by them.
    assert labels["app.kubernetes.io/managed-by"] == "grm-operator"
    assert labels["grm.dev/deployment"] == "reward"
    # Only the PodMonitor gets them: they are a scrape selector, not a workload label.
    assert "release" not in built.service["metadata"]["labels"]
    assert "release" not in built.deployments["bf16"]["metadata"]["labels"]
    # A changed label changes the applied hash, so the reconciler re-applies the PodMonitor.
    plain = children(pod_monitor=True).pod_monitor
    assert plain is not None and "release" not in plain["metadata"]["labels"]
    assert applied_hash(plain) != applied_hash(built.pod_monitor)


def test_variants_other_than_the_reference_shadow_to_the_reference_service() -> None:
    built = children()
    ref = built.reference_service
    name = ref["metadata"]["name"]
    assert name == "reward-reference"
    assert ref["spec"]["selector"] == {**selector_labels("reward"), "grm.dev/variant": "bf16"}
    assert "grm.dev/variant" not in ref["metadata"]["labels"]  # never pruned as a variant's child
    configs = {
        v: WorkerConfig.model_validate_json(cm["data"]["worker.json"]) for v, cm in built.config_maps.items()
    }
    assert configs["bf16"].shadow.reference_url is None  # the reference shadows to nobody
    for variant in ("fp8", "int4"):
        assert configs[variant].shadow.reference_url == "http://reward-reference.rl.svc:8000"
        assert configs[variant].shadow.fraction == 0.01
    off = children(grmd(lambda b: b["spec"]["precision"].update(shadow={"fraction": 0})))
    assert all(
        WorkerConfig.model_validate_json(cm["data"]["worker.json"]).shadow.reference_url is None
        for cm in off.config_maps.values()
    )
