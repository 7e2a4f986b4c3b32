"""The worker Deployment of one variant: ``<name>-<variant>`` running ``grm-worker serve`` on the
variant's GPUs, with its probes, resources, environment, volumes and security context (model
loading, the fetch-model init container and the startup budget: :mod:`.modelload`).
"""

from __future__ import annotations

import math

from grm_operator.api.models import GRMDeployment, GRMDeploymentSpec, PodTemplate, Variant
from grm_operator.control.builders.layout import (
    ADMIN_PORT,
    CONFIG_DIR,
    CONFIG_FILE,
    HTTP_PORT,
    MODEL_CACHE_DIR,
    RUN_AS_UID,
    WEIGHTS_DIR,
)
from grm_operator.control.builders.metadata import (
    ANNOTATION_CONFIG_HASH,
    LABEL_DEPLOYMENT,
    LABEL_VARIANT,
    Manifest,
    Owner,
    admin_token_secret_name,
    child_metadata,
    common_labels,
    config_map_name,
    deployment_name,
    stamp,
)
from grm_operator.control.builders.modelload import (
    download_allowance_s,
    fetch_init_container,
    startup_budget_s,
)
from grm_operator.control.builders.sizing import pod_size
from grm_operator.control.builders.workerconfig import ANNOTATION_WORKER_ENGINE, worker_config
from grm_operator.settings import OperatorSettings
from grm_worker.contract.admin import ADMIN_TOKEN_ENV, ADMIN_TOKEN_KEY

# Seconds preStop waits before SIGTERM so that endpoint removal reaches every Service proxy first
# (kube-proxy/EndpointSlice propagation is typically 1-3 s; 5 s leaves margin).
PRESTOP_SLEEP_S = 5
# The preStop hook runs coreutils' sleep inside the worker container: both worker images have it
# (vllm/vllm-openai is Ubuntu, worker-cpu Debian bookworm; tests/unit/helm/test_chart_images.py).
# Not the `sleep` lifecycle action: it is beta (on by default) only from Kubernetes 1.30; 1.29's
# API server drops it (alpha gate off) and 1.28's rejects it, and the chart supports >= 1.28.
PRESTOP_COMMAND = ["/bin/sleep", str(PRESTOP_SLEEP_S)]
# Seconds after the drain for vLLM to stop (free GPU memory, exit) before SIGKILL.
ENGINE_STOP_MARGIN_S = 15
STARTUP_PERIOD_S = 5


def pod_placement(template: PodTemplate) -> Manifest:
    """Where the template's pods may run and how their image is pulled (the fields set): node
    selector, tolerations, affinity, priority and runtime class, image pull Secrets. Worker pods
    and the quality gate's Jobs (which need the same GPU nodes) share them."""
    optional = {
        "nodeSelector": template.node_selector,
        "tolerations": template.tolerations,
        "affinity": template.affinity,
        "priorityClassName": template.priority_class_name,
        "runtimeClassName": template.runtime_class_name,
        "imagePullSecrets": (
            [ref.to_wire() for ref in template.image_pull_secrets] if template.image_pull_secrets else None
        ),
    }
    return {k: v for k, v in optional.items() if v is not None}


def startup_failure_threshold(spec: GRMDeploymentSpec, variant: Variant) -> int:
    """Startup-probe failures allowed: the budget (:func:`.modelload.startup_budget_s`) over the period.

    Example: DeepSeek-GRM-27B bf16, 54 GB at 0.25 GB/s → 414 s → 83 probes 5 s apart.
    """
    return math.ceil(startup_budget_s(spec, variant) / STARTUP_PERIOD_S)


def termination_grace_s(spec: GRMDeploymentSpec) -> int:
    """preStop sleep + drainSeconds + the engine's stop margin (60 s drain → 80 s)."""
    return PRESTOP_SLEEP_S + spec.rollout.drain_seconds + ENGINE_STOP_MARGIN_S


def _simulated(grmd: GRMDeployment) -> bool:
    return (grmd.metadata.annotations or {}).get(ANNOTATION_WORKER_ENGINE) == "sim"


def _resources(grmd: GRMDeployment, variant: Variant) -> Manifest:
    """Derived cpu/memory (:mod:`.sizing`), then template.resources, then the variant's override;
    the accelerator always gpusPerReplica."""
    spec = grmd.spec
    size = pod_size(spec, variant, simulated=_simulated(grmd))
    requests: dict[str, str] = {"cpu": size.cpu, "memory": size.memory}
    limits: dict[str, str] = {"memory": size.memory_limit}
    extra = spec.template.resources or {}
    requests.update(extra.get("requests") or {})
    limits.update(extra.get("limits") or {})
    if "memory" in (extra.get("requests") or {}) and "memory" not in (extra.get("limits") or {}):
        # A template memory request without a limit: the limit follows it (a derived limit could
        # fall below it, which the API server rejects).
        limits["memory"] = requests["memory"]
    override = variant.resources
    if override is not None:
        # The variant's own values beat the template's, which apply to every variant.
        if override.cpu is not None:
            requests["cpu"] = size.cpu
        if override.memory is not None or override.memory_limit is not None:
            requests["memory"] = size.memory
            limits["memory"] = size.memory_limit
    gpus = str(variant.gpus_per_replica)
    # Extended resources cannot be overcommitted: requests must equal limits.
    requests[variant.accelerator_resource] = gpus
    limits[variant.accelerator_resource] = gpus
    return {"requests": requests, "limits": limits}


def _env(grmd: GRMDeployment, variant: Variant) -> list[Manifest]:
    spec = grmd.spec
    env: list[Manifest] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": f"{MODEL_CACHE_DIR}/hf"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        # vLLM's torch.compile and CUDA-graph caches on the model cache volume: with a claim
        # (template.modelCache.claimName) a restarted or rescheduled pod reuses them instead of
        # compiling again (tens of seconds to minutes of every cold start).
        {"name": "VLLM_CACHE_ROOT", "value": f"{MODEL_CACHE_DIR}/vllm"},
        {"name": "TRITON_CACHE_DIR", "value": f"{MODEL_CACHE_DIR}/triton"},
        {"name": "GRM_VARIANT", "value": variant.name},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # The admin API's bearer token, from the Secret the operator creates before this
        # Deployment (control/admintoken.py): never in the ConfigMap nor in the arguments.
        {
            "name": ADMIN_TOKEN_ENV,
            "valueFrom": {
                "secretKeyRef": {"name": admin_token_secret_name(grmd.metadata.name), "key": ADMIN_TOKEN_KEY}
            },
        },
    ]
    # Download credentials go to the fetch-model init container only (modelload.fetch_init_container).
    ours = {e["name"] for e in env}
    for user in spec.template.env or []:
        if user.name not in ours:
            env.append(user.model_dump(by_alias=True, exclude_none=True))
    return env


def _volumes(grmd: GRMDeployment, owner: Owner, variant: Variant) -> tuple[list[Manifest], list[Manifest]]:
    spec = grmd.spec
    cache = spec.template.model_cache
    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": config_map_name(owner.name, variant.name)}},
        {"name": "tmp", "emptyDir": {}},
        # vLLM's tensor-parallel workers and NCCL exchange data through /dev/shm (64 MiB by
        # default); bounded because tmpfs pages are the pod's memory (1 GiB per GPU, .sizing).
        {
            "name": "shm",
            "emptyDir": {
                "medium": "Memory",
                "sizeLimit": pod_size(spec, variant, simulated=_simulated(grmd)).shared_memory,
            },
        },
        (
            {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
            if cache.claim_name
            else {"name": "model-cache", "emptyDir": {"sizeLimit": cache.size_limit}}
        ),
    ]
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "model-cache", "mountPath": MODEL_CACHE_DIR},
    ]
    uri = variant.uri or spec.model.uri
    if uri.startswith("pvc://"):
        claim = uri.removeprefix("pvc://").partition("/")[0]
        volumes.append({"name": "weights", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True})
    volumes.extend(spec.template.volumes or [])
    mounts.extend(spec.template.volume_mounts or [])
    return volumes, mounts


def _http_probe(path: str, period: int, failures: int, timeout: int = 3) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _model_fetch(
    grmd: GRMDeployment, variant: Variant, image: str, image_pull_policy: str, security: Manifest
) -> Manifest:
    """The pod spec's ``initContainers`` when the variant's weights are downloaded: never for the
    simulated engine, which reads no weights (tests and demos run it without network access)."""
    if worker_config(grmd, variant).engine == "sim":
        return {}
    init = fetch_init_container(grmd, variant, image, image_pull_policy, security)
    return {"initContainers": [init]} if init is not None else {}


def build_deployment(
    grmd: GRMDeployment,
    owner: Owner,
    variant: Variant,
    replicas: int,
    settings: OperatorSettings,
    config_hash: str,
) -> Manifest:
    """The worker Deployment ``<name>-<variant>`` with ``replicas`` pods."""
    spec = grmd.spec
    template = spec.template
    name = deployment_name(owner.name, variant.name)
    variant_label = {LABEL_VARIANT: variant.name}
    meta = child_metadata(owner, name, "worker", variant_label)
    pod_labels = dict(template.pod_labels or {})
    pod_labels.update(common_labels(owner.name, "worker"))
    pod_labels.update(variant_label)
    pod_annotations = dict(template.pod_annotations or {})
    pod_annotations.update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(HTTP_PORT),
            "prometheus.io/path": "/metrics",
            # A changed worker config changes the pod template, so the Deployment rolls its pods.
            ANNOTATION_CONFIG_HASH: config_hash,
        }
    )
    volumes, mounts = _volumes(grmd, owner, variant)
    image = template.image or settings.worker_image
    image_pull_policy = template.image_pull_policy or settings.worker_image_pull_policy
    container_security: Manifest = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container: Manifest = {
        "name": "worker",
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["grm-worker", "serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        # admin: the operator's sample-budget push, on a port the Service does not forward.
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": _env(grmd, variant),
        "resources": _resources(grmd, variant),
        "volumeMounts": mounts,
        "startupProbe": _http_probe("/ready", STARTUP_PERIOD_S, startup_failure_threshold(spec, variant)),
        "readinessProbe": _http_probe("/ready", 5, 3),
        "livenessProbe": _http_probe("/health", 10, 3, timeout=5),
        # Removed from endpoints first, then SIGTERM: the worker drains in-flight requests.
        "lifecycle": {"preStop": {"exec": {"command": list(PRESTOP_COMMAND)}}},
        # A crash's last log lines reach the pod status, whence the WorkersHealthy condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security,
    }
    pod_spec: Manifest = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_s(spec),
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            # Chown volumes only when their root is not already ours: a claim holding 100+ GB of
            # weights would otherwise be walked file by file at every pod start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": template.automount_service_account_token,
    }
    pod_spec.update(pod_placement(template))
    optional = {
        "serviceAccountName": template.service_account_name,
        "topologySpreadConstraints": template.topology_spread_constraints,
    }
    pod_spec.update({k: v for k, v in optional.items() if v is not None})
    pod_spec.update(_model_fetch(grmd, variant, image, image_pull_policy, container_security))
    startup_budget = startup_failure_threshold(spec, variant) * STARTUP_PERIOD_S
    manifest: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_DEPLOYMENT: owner.name, LABEL_VARIANT: variant.name}},
            # GPUs are scarce: surge one pod at a time and never drop below the serving count.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            # A rollout is stuck only after twice the startup budget (bf16: 830 s), at least 10 min,
            # plus the time a first download may take (54 GB at 100 MB/s: 540 s).
            "progressDeadlineSeconds": max(600, 2 * startup_budget)
            + int(download_allowance_s(spec, variant)),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }
    return stamp(manifest)
