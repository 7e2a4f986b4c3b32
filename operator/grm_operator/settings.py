"""The operator's own configuration: one typed object read from ``GRM_*`` environment variables.

Everything that is a property of the installation rather than of one GRMDeployment lives here:
which namespaces to watch, the worker image used when a GRMDeployment names none, the default
Prometheus URL, HA (Lease-based leader election), timeouts, and the ports of the liveness and
metrics endpoints. The
Helm chart sets these as env vars on the operator Deployment; ``grm-operator run`` flags override
them. Parsing is pure (:meth:`OperatorSettings.from_env` takes the mapping), so tests never touch
``os.environ``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "GRM_"

DEFAULT_WORKER_IMAGE = "ghcr.io/grm-elastic/grm-worker:0.1.0"

# Kubernetes' label syntax (apimachinery validation): an optional DNS-subdomain prefix of at most
# 253 characters and "/", then a name of at most 63 alphanumerics, "-", "_" or "." that starts
# and ends alphanumeric; values are the same name syntax or empty.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_RE = re.compile(rf"^(({_LABEL_PREFIX})/)?{_LABEL_NAME}$")
LABEL_VALUE_RE = re.compile(rf"^({_LABEL_NAME})?$")
# Label prefixes the operator sets on its children and selects them by (grm.dev/deployment,
# app.kubernetes.io/managed-by, ...): an installation-wide extra label may not override them.
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "grm.dev/")


class SettingsError(ValueError):
    """The environment holds a setting the operator cannot use (the message names the variable)."""


class OperatorSettings(BaseModel):
    """Installation-wide operator settings; env var ``GRM_<FIELD_NAME_UPPER>`` sets each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: tuple[str, ...] = Field(
        default=(),
        description="Namespaces to watch (comma-separated in GRM_NAMESPACES); empty: all namespaces.",
    )
    worker_image: str = Field(
        default=DEFAULT_WORKER_IMAGE,
        min_length=1,
        description="Worker image for GRMDeployments whose spec.template.image is unset.",
    )
    worker_image_pull_policy: str = Field(
        default="IfNotPresent",
        pattern=r"^(Always|IfNotPresent|Never)$",
        description="Pull policy when spec.template.imagePullPolicy is unset.",
    )
    quality_job_image: str | None = Field(
        default=None,
        description="Image of the quality gate's build and evaluation Jobs: it must have "
        "grm-operator with the compress extra (llm-compressor) and vLLM (images/quality/Dockerfile). "
        "Unset: the GRMDeployment's worker image.",
    )
    quality_job_image_pull_policy: str | None = Field(
        default=None,
        description="Pull policy of the quality Jobs' image. Unset: the GRMDeployment's "
        "spec.template.imagePullPolicy, else the workers' default.",
    )
    quality_job_resources: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Resources of the quality Jobs' container beside the variant's GPUs (JSON in "
        'GRM_QUALITY_JOB_RESOURCES), e.g. {"requests": {"cpu": "8", "memory": "128Gi"}}: a build '
        "holds the model in host memory.",
    )
    quality_job_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node selector of the quality Jobs when the GRMDeployment's spec.template sets "
        "none (JSON in GRM_QUALITY_JOB_NODE_SELECTOR), e.g. the GPU nodes' label.",
    )
    quality_job_tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations of the quality Jobs when the GRMDeployment's spec.template sets "
        "none (JSON in GRM_QUALITY_JOB_TOLERATIONS), e.g. of the GPU nodes' taint.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus base URL used when a GRMDeployment's spec.metrics.prometheusURL is unset.",
    )
    autoscale_tick_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the autoscaler's timer wakes per GRMDeployment to see whether its "
        "spec.scaling.controlPeriod has elapsed (the period itself is per object).",
    )
    metrics_endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Worker URLs by pod (namespace/name → base URL, e.g. http://127.0.0.1:18000) used "
        "instead of http://<podIP>:8000 by the Direct metrics source; "
        "for test clusters whose pod IPs the operator cannot reach (JSON in GRM_METRICS_ENDPOINTS).",
    )
    admin_endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Worker admin API URLs by pod (namespace/name → base URL) used instead of "
        "http://<podIP>:8001 by the sample-budget push; for test clusters whose pod IPs the "
        "operator cannot reach (JSON in GRM_ADMIN_ENDPOINTS).",
    )
    leader_election_lease: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Name of the coordination.k8s.io/v1 Lease that HA replicas elect their leader "
        "with: only the holder runs handlers and the autoscaler, the others wait for it (like "
        "controller-runtime's leader election). Unset: no election, for a single replica.",
    )
    leader_election_namespace: str | None = Field(
        default=None,
        description="Namespace of the leader-election Lease (the chart: the operator's own); unset: "
        "the service account's namespace, else default.",
    )
    leader_election_identity: str | None = Field(
        default=None,
        max_length=200,
        description="This replica's name in the Lease's holderIdentity (the chart: the pod name); a "
        "random suffix per process start is always added, so a restarted replica never mistakes "
        "its predecessor's lease for its own. Unset: the host name.",
    )
    lease_duration_s: float = Field(
        default=15.0,
        ge=2,
        le=600,
        description="How long a Lease not renewed stays the holder's: a standby takes over this "
        "long after the leader died (client-go's default, 15 s).",
    )
    lease_renew_deadline_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A leader that could not renew for this long stops acting and exits; shorter "
        "than the lease duration, so it has stopped before anyone else may take over.",
    )
    lease_retry_period_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often the leader renews, and a standby tries to acquire, the Lease.",
    )
    podmonitor_enabled: bool = Field(
        default=True,
        description="Create a monitoring.coreos.com/v1 PodMonitor per GRMDeployment when that CRD exists.",
    )
    podmonitor_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels of every PodMonitor the operator creates (JSON object in "
        'GRM_PODMONITOR_LABELS), e.g. {"release": "kube-prometheus-stack"}: a Prometheus '
        "Operator picks up only the PodMonitors its podMonitorSelector matches, and "
        "kube-prometheus-stack selects by its release label.",
    )
    health_port: int = Field(default=8080, ge=0, le=65535, description="Liveness endpoint port; 0: off.")
    health_host: str = Field(default="0.0.0.0", description="Address of the liveness endpoint.")
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Operator /metrics port (prometheus_client); 0: off."
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address of the metrics endpoint.")
    request_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Timeout of one API request of the operator's own client."
    )
    watch_timeout_s: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="Server-side timeout of one watch request; kopf reconnects and resumes after it.",
    )
    retry_initial_s: float = Field(
        default=1.0, gt=0, le=600, description="First delay before a failed reconcile is retried."
    )
    retry_max_s: float = Field(
        default=60.0, gt=0, le=3600, description="Cap of the exponential retry delay of failed reconciles."
    )
    field_manager: str = Field(
        default="grm-operator",
        min_length=1,
        max_length=128,
        description="Server-side-apply field manager name of the operator's writes.",
    )
    log_level: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Python log level."
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("metrics_endpoints", "admin_endpoints", mode="before")
    @classmethod
    def _parse_endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"expected a JSON object of pod → URL: {exc}") from None
        return value

    @field_validator(
        "quality_job_resources", "quality_job_node_selector", "quality_job_tolerations", mode="before"
    )
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"expected JSON: {exc}") from None
        return value

    @field_validator("podmonitor_labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"expected a JSON object of label → value: {exc}") from None
        return value

    @field_validator("podmonitor_labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if len(key) > 253 + 1 + 63 or not LABEL_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not a valid label key")
            if key.startswith(RESERVED_LABEL_PREFIXES):
                raise ValueError(
                    f"{key!r}: labels under {' and '.join(RESERVED_LABEL_PREFIXES)} are the operator's own"
                )
            if not LABEL_VALUE_RE.match(value):
                raise ValueError(f"{value!r} (label {key}) is not a valid label value")
        return labels

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorSettings:
        if not self.lease_retry_period_s < self.lease_renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs GRM_LEASE_RETRY_PERIOD_S < GRM_LEASE_RENEW_DEADLINE_S < "
                f"GRM_LEASE_DURATION_S (got {self.lease_retry_period_s} / {self.lease_renew_deadline_s} "
                f"/ {self.lease_duration_s}): a leader must stop before its lease can pass to another"
            )
        return self

    @property
    def clusterwide(self) -> bool:
        """True when every namespace is watched."""
        return not self.namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> OperatorSettings:
        """Settings from ``GRM_*`` variables of ``environ``; ``overrides`` (e.g. CLI flags) win.

        Unknown ``GRM_*`` variables are ignored (other components share the prefix); a malformed
        value raises :class:`SettingsError` naming the variable.
        """
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                # pydantic's lax mode turns "8080" into an int and "true" into a bool.
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            if not first["loc"]:  # a rule across fields: its message names them
                raise SettingsError(str(first["msg"])) from exc
            field = str(first["loc"][0])
            raise SettingsError(f"{ENV_PREFIX}{field.upper()}: {first['msg']}") from exc
