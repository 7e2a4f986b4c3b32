"""Pure manifest builders: a GRMDeployment (plus replica counts) in, its child objects out.

Children of a GRMDeployment ``<name>``:

* per variant ``v``: a ConfigMap ``<name>-<v>-config`` holding the worker's own
  :class:`grm_worker.contract.config.WorkerConfig` as ``worker.json``, and a Deployment ``<name>-<v>``
  running ``grm-worker serve --config /etc/grm/worker.json`` with the variant's GPUs;
* a Service ``<name>`` selecting every ready worker pod of the GRMDeployment, whatever its variant
  (a variant switch never changes where clients connect);
* a PodDisruptionBudget ``<name>`` and, when asked for, a PodMonitor ``<name>``.

Every child carries the standard ``app.kubernetes.io/*`` labels, ``grm.dev/deployment`` and a
controller owner reference, so Kubernetes' garbage collector deletes it with its parent and the
operator can tell what it owns. Replica counts are an input: the policy decides them;
:func:`initial_replicas` and :func:`plan_replicas` are the rules used before it has spoken.

Nothing here does I/O; the same spec always gives byte-identical manifests, which is what lets
the reconciler skip writes by comparing :data:`ANNOTATION_APPLIED_HASH` values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import (
    API_VERSION,
    KIND,
    EngineOptions,
    GRMDeployment,
    GRMDeploymentSpec,
    Variant,
)
from grm_operator.policy.capacity import shed_floor
from grm_operator.settings import OperatorSettings
from grm_worker.contract.config import (
    CheckpointQuantization,
    ModelConfig,
    ScoringConfig,
    VllmOptions,
    WorkerConfig,
)
from grm_worker.contract.perfmodel import profile_for

Manifest = dict[str, Any]

# --- names of labels and annotations (the operator's selectors depend on them) -------------------
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = "grm.dev/deployment"
LABEL_VARIANT = "grm.dev/variant"
WORKER_APP = "grm-worker"
MANAGED_BY = "grm-operator"
ANNOTATION_CONFIG_HASH = "grm.dev/config-hash"
ANNOTATION_APPLIED_HASH = "grm.dev/applied-hash"
# On the GRMDeployment: which worker engine to run ("vllm", the default, or "sim" for tests/demos).
ANNOTATION_WORKER_ENGINE = "grm.dev/worker-engine"
# On the GRMDeployment: a JSON object of dotted WorkerConfig keys merged into every variant's config
# (e.g. {"sim.time_scale": 10}), for demos and tests; the worker's model validates the result.
ANNOTATION_WORKER_OVERRIDES = "grm.dev/worker-overrides"

# --- worker pod layout ----------------------------------------------------------------------------
HTTP_PORT = 8000
CONFIG_DIR = "/etc/grm"
CONFIG_FILE = "worker.json"
MODEL_CACHE_DIR = "/models"
WEIGHTS_DIR = "/mnt/weights"
CREDENTIALS_DIR = "/var/run/secrets/grm"
RUN_AS_UID = 1000
# Seconds preStop waits before SIGTERM so that endpoint removal reaches every Service proxy first
# (kube-proxy/EndpointSlice propagation is typically 1-3 s; 5 s leaves margin).
PRESTOP_SLEEP_S = 5
# Seconds after the drain for vLLM to stop (free GPU memory, exit) before SIGKILL.
ENGINE_STOP_MARGIN_S = 15
# Startup probe budget = this × the variant's cold start: a cold node also pulls the image and
# downloads weights, which the profile's cold start (weights already local) does not include.
STARTUP_BUDGET_FACTOR = 3.0
STARTUP_BUDGET_MIN_S = 120.0
STARTUP_PERIOD_S = 5

_QUANTIZED_CHECKPOINT: dict[str, CheckpointQuantization] = {
    "int8": "compressed-tensors",
    "awq-int4": "awq",
    "gptq-int4": "gptq",
}


@dataclass(frozen=True)
class Owner:
    """The parent GRMDeployment as its children refer to it."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, grmd: GRMDeployment) -> Owner:
        meta = grmd.metadata
        if not meta.uid or not meta.namespace:
            raise ValueError(
                f"GRMDeployment {meta.name} has no uid/namespace yet (not stored by the API server)"
            )
        return cls(name=meta.name, namespace=meta.namespace, uid=meta.uid)

    def reference(self) -> Manifest:
        """A controller owner reference: garbage collection deletes the child with its parent, and
        blockOwnerDeletion keeps a foreground deletion of the parent waiting for it."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass
class Children:
    """Every child object of one GRMDeployment, ready to apply."""

    config_maps: dict[str, Manifest] = field(default_factory=dict)  # by variant name
    deployments: dict[str, Manifest] = field(default_factory=dict)  # by variant name
    service: Manifest = field(default_factory=dict)
    pdb: Manifest = field(default_factory=dict)
    pod_monitor: Manifest | None = None

    def all(self) -> list[Manifest]:
        """Every manifest, ConfigMaps first (a Deployment's pods mount them)."""
        items = [*self.config_maps.values(), *self.deployments.values(), self.service, self.pdb]
        if self.pod_monitor is not None:
            items.append(self.pod_monitor)
        return items


# --- names, labels, hashes -------------------------------------------------------------------------


def deployment_name(name: str, variant: str) -> str:
    """``<name>-<variant>``: the worker Deployment of one variant."""
    return f"{name}-{variant}"


def config_map_name(name: str, variant: str) -> str:
    """``<name>-<variant>-config``: the worker config of one variant."""
    return f"{name}-{variant}-config"


def selector_labels(name: str) -> dict[str, str]:
    """Labels every worker pod of the GRMDeployment has: the Service's and the PDB's selector."""
    return {LABEL_NAME: WORKER_APP, LABEL_DEPLOYMENT: name}


def selector_string(name: str) -> str:
    """:func:`selector_labels` as a label-selector string (status.selector, the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def common_labels(name: str, component: str) -> dict[str, str]:
    """Labels of every child object."""
    return {
        LABEL_NAME: WORKER_APP,
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: name,
    }


def content_hash(data: Any) -> str:
    """A short stable hash of JSON-able data (sorted keys): 16 hex digits of SHA-256."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def applied_hash(manifest: Manifest) -> str:
    """The hash of what the operator applies, ignoring spec.replicas (the policy changes replicas
    on its own; comparing them separately keeps a scale from looking like a template change)."""
    spec = (
        {k: v for k, v in manifest.get("spec", {}).items() if k != "replicas"} if "spec" in manifest else None
    )
    meta = dict(manifest["metadata"])
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != ANNOTATION_APPLIED_HASH}
    meta["annotations"] = annotations
    body = {k: v for k, v in manifest.items() if k not in ("spec", "metadata")}
    return content_hash({"metadata": meta, "spec": spec, "rest": body})


def stamp(manifest: Manifest) -> Manifest:
    """The manifest with its :data:`ANNOTATION_APPLIED_HASH` set."""
    manifest["metadata"].setdefault("annotations", {})[ANNOTATION_APPLIED_HASH] = applied_hash(manifest)
    return manifest


def _meta(owner: Owner, name: str, component: str, extra_labels: Mapping[str, str] | None = None) -> Manifest:
    labels = common_labels(owner.name, component)
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "annotations": {},
        "ownerReferences": [owner.reference()],
    }


# --- replica counts before the policy speaks -----------------------------------------------------


def starting_variant(spec: GRMDeploymentSpec) -> Variant:
    """The pinned variant, else the best-quality variant at or above the quality floor."""
    if spec.precision.policy == "Pinned" and spec.precision.pinned_variant:
        return spec.variant(spec.precision.pinned_variant)
    admissible = spec.admissible_variants()
    # The models guarantee one admissible variant; the fallback only guards hand-built specs.
    return admissible[0] if admissible else spec.variants[0]


def _target_replicas(spec: GRMDeploymentSpec) -> int:
    """Replicas of the serving variant when nothing else is known: spec.scaling.replicas in Manual
    and External modes (clamped by the CRD's rule to the bounds), minReplicas in Auto mode."""
    scaling = spec.scaling
    if scaling.mode != "Auto" and scaling.replicas is not None:
        return scaling.replicas
    return scaling.min_replicas


def initial_replicas(spec: GRMDeploymentSpec) -> dict[str, int]:
    """Replicas of each variant for a new GRMDeployment: the starting variant gets
    minReplicas (spec.scaling.replicas in Manual/External mode), every other variant 0."""
    start = starting_variant(spec).name
    return {v.name: (_target_replicas(spec) if v.name == start else 0) for v in spec.variants}


def active_variant(spec: GRMDeploymentSpec, status_active: str | None) -> str:
    """The variant serving traffic: status.activeVariant while it is still listed, else
    :func:`starting_variant` (the pinned one with a Pinned policy).

    A pin on another variant than the serving one is reached through a switch, like the policy's
    own switches: the autoscaler surges the pinned variant next to the serving one and drains that
    one once the new pods are Ready (:func:`grm_operator.actuation.plan`), which then becomes
    status.activeVariant. Returning the pin at once would scale the serving variant to 0 while the
    pinned one still loads (30–120 s), and every request in between would fail."""
    names = {v.name for v in spec.variants}
    if status_active in names:
        return str(status_active)
    return starting_variant(spec).name


def plan_replicas(
    spec: GRMDeploymentSpec,
    active: str,
    live: Mapping[str, int],
    *,
    switching: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Replicas to apply to each variant's Deployment.

    ``live`` holds spec.replicas of the variant Deployments that exist (the policy's last word);
    ``switching`` names the variants a switch in progress holds (the autoscaler owns those).

    * The variants of a switch in progress keep their live count, the active one included: a
      rolling switch hands the old (still active) variant's GPUs over down to 0 replicas, and
      clamping it back to minReplicas (or to Manual's spec.scaling.replicas) would take GPUs
      the new variant was just given.
    * Manual/External mode: the active variant runs spec.scaling.replicas; the others are scaled
      to 0.
    * Auto mode: the active variant keeps its live count clamped to [minReplicas, maxReplicas]
      (minReplicas when new); the others 0.
    """
    scaling = spec.scaling
    plan: dict[str, int] = {}
    for v in spec.variants:
        current = live.get(v.name)
        if v.name in switching and current is not None:
            plan[v.name] = current
        elif v.name == active:
            if scaling.mode != "Auto" and scaling.replicas is not None:
                plan[v.name] = scaling.replicas
            elif current is None:
                plan[v.name] = _target_replicas(spec)
            else:
                plan[v.name] = min(max(current, scaling.min_replicas), scaling.max_replicas)
        else:
            plan[v.name] = 0
    return plan


# --- worker config ------------------------------------------------------------------------------


def merged_engine(spec: GRMDeploymentSpec, variant: Variant) -> EngineOptions:
    """spec.engine overridden field by field by the variant's engine options."""
    base = spec.engine.model_dump(exclude_none=True)
    if variant.engine is not None:
        base.update(variant.engine.model_dump(exclude_none=True))
    return EngineOptions.model_validate(base)


def _model_path(uri: str, model_name: str) -> str:
    """Where vLLM finds the weights of ``uri`` inside the pod."""
    if uri.startswith("pvc://"):
        _claim, _, sub = uri.removeprefix("pvc://").partition("/")
        return f"{WEIGHTS_DIR}/{sub}".rstrip("/") if sub else WEIGHTS_DIR
    if uri.startswith("hf://"):
        # A Hugging Face id: vLLM downloads it into HF_HOME (the model cache volume).
        return uri.removeprefix("hf://")
    if uri.startswith("s3://"):
        # The worker downloads s3:// checkpoints into the cache before starting vLLM.
        return f"{MODEL_CACHE_DIR}/{model_name.replace('/', '--')}"
    return uri


def _checkpoint_quantization(variant: Variant) -> CheckpointQuantization:
    if variant.precision in _QUANTIZED_CHECKPOINT:
        return _QUANTIZED_CHECKPOINT[variant.precision]
    # An fp8 variant with a checkpoint of its own is a pre-quantized (compressed-tensors) one;
    # without, vLLM quantizes the bf16 weights to fp8 at load time.
    if variant.precision == "fp8" and variant.uri is not None:
        return "compressed-tensors"
    return "none"


def worker_config(grmd: GRMDeployment, variant: Variant) -> WorkerConfig:
    """The worker's own config contract for one variant (validated by the worker's model)."""
    spec = grmd.spec
    uri = variant.uri or spec.model.uri
    engine = merged_engine(spec, variant)
    annotations = grmd.metadata.annotations or {}
    engine_kind = annotations.get(ANNOTATION_WORKER_ENGINE, "vllm")
    vllm: dict[str, Any] = {
        "tensor_parallel_size": engine.tensor_parallel_size or variant.gpus_per_replica,
    }
    optional = {
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "kv_cache_dtype": engine.kv_cache_dtype,
        "extra_args": engine.extra_args,
    }
    vllm.update({k: v for k, v in optional.items() if v is not None})
    samples = spec.scoring.samples
    config = WorkerConfig(
        model=ModelConfig(
            name=spec.model.name,
            path=_model_path(uri, spec.model.name),
            uri=uri,
            served_name=spec.model.served_model_name,
            checkpoint_quantization=_checkpoint_quantization(variant),
        ),
        variant=variant.name,
        precision=variant.precision,
        engine="sim" if engine_kind == "sim" else "vllm",
        device="auto",
        vllm=VllmOptions.model_validate(vllm),
        scoring=ScoringConfig(
            samples_min=samples.min,
            samples_max=samples.max,
            samples_default=samples.max,
            samples_per_round=min(4, samples.max),
            shed_floor=shed_floor(spec, variant.name),
            early_exit="exact" if spec.scoring.early_exit == "Exact" else "off",
            sampling="shuffled" if spec.scoring.sampling == "Shuffled" else "shared-prefill",
        ),
        port=HTTP_PORT,
        drain_timeout_s=float(spec.rollout.drain_seconds),
    )
    overrides = annotations.get(ANNOTATION_WORKER_OVERRIDES)
    return config if not overrides else apply_overrides(config, overrides)


def apply_overrides(config: WorkerConfig, overrides_json: str) -> WorkerConfig:
    """``config`` with the dotted-key overrides of :data:`ANNOTATION_WORKER_OVERRIDES` applied.

    Raises ``ValueError`` (pydantic's ValidationError is one) for malformed JSON or a result the
    worker's model rejects, so a bad annotation is reported like an invalid spec.
    """
    overrides = json.loads(overrides_json)
    if not isinstance(overrides, dict):
        raise ValueError(f"{ANNOTATION_WORKER_OVERRIDES} must be a JSON object of dotted keys")
    data = config.model_dump(mode="json", exclude_unset=True)
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = str(dotted).split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return WorkerConfig.model_validate(data)


def render_worker_config(config: WorkerConfig) -> str:
    """The ConfigMap text: stable JSON (sorted keys), so an unchanged config hashes the same.

    Only what the operator decided is written (the worker fills in its own defaults), so a new
    defaulted field in a later worker release does not change the hash and roll every pod.
    """
    data = config.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def build_config_map(grmd: GRMDeployment, owner: Owner, variant: Variant) -> Manifest:
    """The ConfigMap holding one variant's worker config."""
    meta = _meta(
        owner, config_map_name(owner.name, variant.name), "worker-config", {LABEL_VARIANT: variant.name}
    )
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {CONFIG_FILE: render_worker_config(worker_config(grmd, variant))},
        }
    )


# --- the worker Deployment ----------------------------------------------------------------------


def cold_start_s(variant: Variant) -> float:
    """The variant's model-load time: its profile's coldStart, else the precision's prior."""
    if variant.profile is not None and variant.profile.cold_start:
        return parse_duration(variant.profile.cold_start)
    return profile_for(variant.precision).cold_start_s


def startup_failure_threshold(variant: Variant) -> int:
    """Startup-probe failures allowed: the budget (3 × cold start, at least 120 s) over the period.

    Example: bf16's 90 s prior → 270 s → 54 probes 5 s apart before the kubelet restarts the pod.
    """
    budget = max(STARTUP_BUDGET_FACTOR * cold_start_s(variant), STARTUP_BUDGET_MIN_S)
    return math.ceil(budget / STARTUP_PERIOD_S)


def termination_grace_s(spec: GRMDeploymentSpec) -> int:
    """preStop sleep + drainSeconds + the engine's stop margin (60 s drain → 80 s)."""
    return PRESTOP_SLEEP_S + spec.rollout.drain_seconds + ENGINE_STOP_MARGIN_S


def _resources(spec: GRMDeploymentSpec, variant: Variant) -> Manifest:
    extra = spec.template.resources or {}
    requests = dict(extra.get("requests") or {})
    limits = dict(extra.get("limits") or {})
    gpus = str(variant.gpus_per_replica)
    # Extended resources cannot be overcommitted: requests must equal limits.
    requests["nvidia.com/gpu"] = gpus
    limits["nvidia.com/gpu"] = gpus
    return {"requests": requests, "limits": limits}


def _env(grmd: GRMDeployment, variant: Variant) -> list[Manifest]:
    spec = grmd.spec
    env: list[Manifest] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": f"{MODEL_CACHE_DIR}/hf"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "VLLM_CACHE_ROOT", "value": "/tmp/vllm"},
        {"name": "GRM_VARIANT", "value": variant.name},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    ref = spec.model.credentials_secret_ref
    uri = variant.uri or spec.model.uri
    if ref is not None and uri.startswith("hf://"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    elif ref is not None and uri.startswith("s3://"):
        env.append({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": f"{CREDENTIALS_DIR}/{ref.key}"})
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
        # vLLM's tensor-parallel workers exchange tensors through /dev/shm (64 MiB by default).
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
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
    ref = spec.model.credentials_secret_ref
    if ref is not None and uri.startswith("s3://"):
        volumes.append({"name": "credentials", "secret": {"secretName": ref.name}})
        mounts.append({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
    return volumes, mounts


def _http_probe(path: str, period: int, failures: int, timeout: int = 3) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


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
    meta = _meta(owner, name, "worker", variant_label)
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
    container: Manifest = {
        "name": "worker",
        "image": template.image or settings.worker_image,
        "imagePullPolicy": template.image_pull_policy or settings.worker_image_pull_policy,
        "command": ["grm-worker", "serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": _env(grmd, variant),
        "resources": _resources(spec, variant),
        "volumeMounts": mounts,
        "startupProbe": _http_probe("/ready", STARTUP_PERIOD_S, startup_failure_threshold(variant)),
        "readinessProbe": _http_probe("/ready", 5, 3),
        "livenessProbe": _http_probe("/health", 10, 3, timeout=5),
        # Removed from endpoints first, then SIGTERM: the worker drains in-flight requests.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
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
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    optional = {
        "nodeSelector": template.node_selector,
        "tolerations": template.tolerations,
        "affinity": template.affinity,
        "priorityClassName": template.priority_class_name,
        "serviceAccountName": template.service_account_name,
    }
    pod_spec.update({k: v for k, v in optional.items() if v is not None})
    startup_budget = startup_failure_threshold(variant) * STARTUP_PERIOD_S
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
            # A rollout is stuck only after twice the startup budget (bf16: 540 s), at least 10 min.
            "progressDeadlineSeconds": max(600, 2 * startup_budget),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }
    return stamp(manifest)


# --- Service, PDB, PodMonitor -------------------------------------------------------------------


def build_service(owner: Owner) -> Manifest:
    """The Service ``<name>``: every ready worker pod of the GRMDeployment, all variants."""
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(owner, owner.name, "service"),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(owner.name),
                "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )


def build_pdb(owner: Owner) -> Manifest:
    """At most one worker pod of the GRMDeployment voluntarily disrupted at a time; pods that are
    not Ready never block a node drain (AlwaysAllow)."""
    return stamp(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(owner, owner.name, "disruption-budget"),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(owner.name)},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )


def build_pod_monitor(owner: Owner) -> Manifest:
    """A Prometheus Operator PodMonitor scraping every worker's /metrics every 15 s."""
    return stamp(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": _meta(owner, owner.name, "monitoring"),
            "spec": {
                "selector": {"matchLabels": selector_labels(owner.name)},
                # Copied onto every series as grm_dev_deployment / grm_dev_variant: the
                # Prometheus metrics source selects and groups by them (docs/metrics.md).
                "podTargetLabels": [LABEL_DEPLOYMENT, LABEL_VARIANT],
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            },
        }
    )


def build_children(
    grmd: GRMDeployment,
    replicas: Mapping[str, int],
    settings: OperatorSettings,
    *,
    pod_monitor: bool = False,
) -> Children:
    """Every child of ``grmd``; ``replicas`` gives each variant's count (missing: 0)."""
    owner = Owner.of(grmd)
    children = Children()
    for variant in grmd.spec.variants:
        cm = build_config_map(grmd, owner, variant)
        children.config_maps[variant.name] = cm
        config_hash = content_hash(cm["data"])
        children.deployments[variant.name] = build_deployment(
            grmd, owner, variant, replicas.get(variant.name, 0), settings, config_hash
        )
    children.service = build_service(owner)
    children.pdb = build_pdb(owner)
    if pod_monitor:
        children.pod_monitor = build_pod_monitor(owner)
    return children
