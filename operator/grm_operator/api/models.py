"""The GRMDeployment API (group ``grm.dev``, version ``v1alpha1``) as pydantic v2 models.

These models are the single source of truth: the CRD's OpenAPI schema (descriptions, bounds,
defaults, CEL rules) is generated from them by :mod:`grm_operator.api.crd`, and the operator
parses every object it reads with them. Python attributes are snake_case; the wire format is
Kubernetes' camelCase (aliases). Every cross-field rule exists twice, as a pydantic validator
(for the operator and the simulator) and as a CEL ``x-kubernetes-validations`` rule (for the API
server); the tests check that both reject the same specs with the same message.

One concept in one module, on purpose (about 800 lines): the GRMDeployment's wire schema. Nearly
every line is a field with its description, bounds and default (what ``kubectl explain`` and
``docs/api-reference.md`` print) or a cross-field rule, whose two forms sit side by side so they
cannot drift apart. It reads top-down in the order of the object (spec.model, spec.engine,
spec.variants, slo, scaling, precision, scoring, metrics, rollout, template, then status);
splitting off the status would still leave the spec over 600 lines, and the schema the CRD
generator walks from :class:`GRMDeployment` would be spread over several files.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from .durations import Duration, parse_duration

GROUP = "grm.dev"
VERSION = "v1alpha1"
KIND = "GRMDeployment"
PLURAL = "grmdeployments"
SINGULAR = "grmdeployment"
SHORT_NAMES = ("grmd",)
API_VERSION = f"{GROUP}/{VERSION}"

Precision = Literal["bf16", "fp16", "fp8", "int8", "awq-int4", "gptq-int4"]
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MODEL_URI_PATTERN = r"^(pvc://[a-z0-9][-a-z0-9.]*(/.*)?|hf://[^\s]+|s3://[^\s]+|/[^\s]*)$"
# A Kubernetes resource.Quantity as users write them for cpu and memory (500m, 2, 64Gi, 1.5G).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"
# An extended resource name (<domain>/<name>), as device plugins advertise them: nvidia.com/gpu,
# nvidia.com/mig-1g.10gb, amd.com/gpu, gpu.intel.com/i915.
EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+"  # the domain
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"  # the name
)
DEFAULT_ACCELERATOR_RESOURCE = "nvidia.com/gpu"


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One ``x-kubernetes-validations`` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset optional fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---------------------------------------------------------------------------------------------
# spec.model


class SecretKeyRef(ApiModel):
    """A key of a Secret in the GRMDeployment's namespace."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = Field(
        default="token",
        description="Key in the Secret whose value is the credential (for example an HF token).",
        min_length=1,
        max_length=253,
    )


MSG_REVISION_HF = "revision applies only to an hf:// uri (pvc://, s3:// and paths have no revisions)"


class ModelSource(ApiModel):
    """Which model to serve and where its weights are."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.revision) || self.uri.startsWith('hf://')", MSG_REVISION_HF, ".revision")
            ]
        }
    )

    name: str = Field(
        description="Model name, e.g. deepseek-ai/DeepSeek-GRM-27B. Used as the served model name "
        "unless servedModelName is set.",
        min_length=1,
        max_length=256,
    )
    uri: str = Field(
        description="Where the weights of the best-quality variant are: pvc://<claim>/<path> (mounted "
        "read-only), hf://<org>/<repo> or s3://<bucket>/<prefix> (downloaded into the model cache by "
        "the pods' fetch-model init step before the worker starts), or an absolute path inside the "
        "worker image.",
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
    )
    revision: str | None = Field(
        default=None,
        description="Branch, tag or commit of an hf:// uri to download (default: the repository's "
        "default branch). Pin a commit for reproducible weights. Only for hf:// uris: an s3:// prefix, "
        "a claim or a path has no revisions (version the path instead). Variants with their own hf:// "
        "uri have their own revision.",
        min_length=1,
        max_length=128,
    )
    served_model_name: str | None = Field(
        default=None,
        description="Name clients use in the OpenAI API's model field. Defaults to model.name.",
        max_length=256,
    )
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret with the credentials the fetch-model init step downloads with; only that "
        "init container sees them. hf://: the value of `key` becomes HF_TOKEN. s3://: the Secret's "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and (optional) AWS_SESSION_TOKEN keys become those "
        "variables (`key` is not used); without a Secret boto3's default chain applies (e.g. IRSA or "
        "EKS Pod Identity through template.serviceAccountName).",
    )
    parameters_billions: float | None = Field(
        default=None,
        description="Parameter count in billions (27 for DeepSeek-GRM-27B; the total, not the "
        "active, count of a mixture of experts). Sizes the worker pods' memory requests (weights "
        "pass through host RAM while loading). Unset: read from the model name (a number followed "
        "by B, e.g. -27B); a name without one gets only the per-process overhead. model.weightsGB, "
        "when set, gives the checkpoint size directly and wins.",
        gt=0,
        le=10_000,
    )
    architecture: str | None = Field(
        default=None,
        description="The checkpoint's model_type (config.json), e.g. gemma2. Chooses the dtype of "
        "AWQ/GPTQ variants: float16, except for architectures vLLM refuses to run in float16 "
        "(gemma2, gemma3, glm4), which get bfloat16. Unset: the worker reads config.json of a local "
        "checkpoint at start.",
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        max_length=64,
    )
    endpoint_url: str | None = Field(
        default=None,
        alias="endpointURL",
        description="Download from this endpoint instead of the public service: an S3-compatible "
        "store (MinIO, Ceph RGW, e.g. http://minio.storage:9000) for s3:// uris, a Hub mirror for "
        "hf:// uris (HF_ENDPOINT).",
        pattern=r"^https?://[^\s]+$",
        max_length=1024,
    )
    weights_gb: float | None = Field(
        default=None,
        alias="weightsGB",
        description="Size in GB (10^9 bytes) of the bf16/fp16 checkpoint at uri; each variant's size "
        "follows from its bytes per parameter (fp8 and int8 0.55 of it, int4 0.3). Sizes the memory "
        "requests and the cold-start estimate (loading local weights at 0.25 GB/s plus 60 s of engine "
        "start), which the startup probe allows 1.5 times and the autoscaler's demand forecast looks "
        "ahead by. Defaults to 2 "
        "bytes per parameter of a '<N>B' in model.name (DeepSeek-GRM-27B: 54 GB), else the "
        "precision's cold-start prior.",
        gt=0.0,
        le=10_000.0,
    )

    @model_validator(mode="after")
    def _revision_for_hf_only(self) -> ModelSource:
        if self.revision is not None and not self.uri.startswith("hf://"):
            raise ValueError(MSG_REVISION_HF)
        return self


# ---------------------------------------------------------------------------------------------
# spec.engine and per-variant overrides


class EngineOptions(ApiModel):
    """vLLM engine options shared by every variant (each variant may override them)."""

    max_model_len: int | None = Field(
        default=None, description="Maximum context length (prompt + output tokens).", ge=128, le=1_048_576
    )
    max_num_seqs: int | None = Field(
        default=None, description="Maximum sequences decoded together in one engine step.", ge=1, le=4096
    )
    max_num_batched_tokens: int | None = Field(
        default=None, description="Maximum tokens (prefill + decode) in one engine step.", ge=64, le=1_048_576
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        description="Fraction of GPU memory vLLM may use for weights, activations and KV cache.",
        gt=0.0,
        le=0.99,
    )
    tensor_parallel_size: int | None = Field(
        default=None,
        description="GPUs one replica shards the model over. Defaults to the variant's gpusPerReplica.",
        ge=1,
        le=16,
    )
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse KV cache across requests sharing a prefix (GRM templates do)."
    )
    kv_cache_dtype: KvCacheDtype | None = Field(
        default=None, description="KV-cache element type; fp8 halves KV memory and attention time."
    )
    extra_args: list[str] | None = Field(
        default=None,
        description="Extra vLLM command-line arguments, appended verbatim.",
        max_length=64,
    )


class PerformanceProfileSpec(ApiModel):
    """Step-time coefficients of one replica (the policy's prior; corrected online).

    The engine step takes stepOverhead + prefillPerToken·P + decodePerSequence·B +
    attentionPerContextToken·Σctx for P prefill tokens and B decoding sequences.
    """

    step_overhead_ms: float = Field(
        description="Fixed cost of one engine step, milliseconds.", gt=0, le=10_000
    )
    prefill_ms_per_token: float = Field(description="Cost per prefill token, milliseconds.", ge=0, le=100)
    decode_ms_per_sequence: float = Field(
        description="Cost per decoding sequence in a step, milliseconds.", ge=0, le=100
    )
    attention_us_per_context_token: float = Field(
        default=0.16,
        description="Decode attention cost per context token of running sequences, microseconds.",
        ge=0,
        le=1000,
    )
    kv_cache_tokens: int = Field(
        description="KV-cache capacity of one replica in tokens.", ge=1, le=100_000_000
    )
    cold_start: Duration | None = Field(
        default=None,
        description="Time from a worker pod's binding to a node to Ready (image pull, download, model "
        "load and engine start) on this cluster. Wins over the estimate from the checkpoint's size "
        "in the startup probe's budget (3× it), and over that estimate and the cold starts the "
        "operator measures (status.policyState.coldStarts) in the autoscaler's forecast horizon.",
    )


class VariantResources(ApiModel):
    """Host resources of one worker pod, overriding the values derived from the model.

    Derived (docs/operator.md, "Worker pod resources"): cpu 2 + 1 per GPU; memory the checkpoint's
    bytes (parameters × bytes per parameter of what the loader reads) + 4 GiB per GPU process + 3 GiB
    for the front and engine core + /dev/shm; memory limit 1.25 × memory; /dev/shm 1 GiB per GPU.
    """

    cpu: str | None = Field(
        default=None,
        description="CPU request of the worker container (no CPU limit is set: throttling a "
        "decode loop costs latency), e.g. 8.",
        pattern=QUANTITY_PATTERN,
        max_length=32,
    )
    memory: str | None = Field(
        default=None,
        description="Memory request of the worker container, e.g. 64Gi.",
        pattern=QUANTITY_PATTERN,
        max_length=32,
    )
    memory_limit: str | None = Field(
        default=None,
        description="Memory limit of the worker container. Unset: 1.25 × memory. Below memory, the "
        "request is lowered to it (Kubernetes requires requests ≤ limits).",
        pattern=QUANTITY_PATTERN,
        max_length=32,
    )
    shared_memory: str | None = Field(
        default=None,
        description="Size limit of /dev/shm (a memory-backed emptyDir; its pages count against the "
        "memory limit), e.g. 2Gi.",
        pattern=QUANTITY_PATTERN,
        max_length=32,
    )


_QUANTITY_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
}


def parse_quantity(quantity: str) -> float:
    """A Quantity of :data:`QUANTITY_PATTERN` as a number (``64Gi`` → 68719476736.0)."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", quantity)
    if match is None or match.group(2) not in _QUANTITY_SUFFIX:
        raise ValueError(f"not a quantity: {quantity!r}")
    return float(match.group(1)) * _QUANTITY_SUFFIX[match.group(2)]


BuildScheme = Literal["FP8_DYNAMIC", "W8A8", "W4A16"]
# Which precision each build scheme produces (the variant's precision must say the same).
SCHEME_PRECISION: dict[str, str] = {"FP8_DYNAMIC": "fp8", "W8A8": "int8", "W4A16": "gptq-int4"}
# Where a build may write its checkpoint: a claim or a path (hf:// and s3:// are read-only here);
# the uri also matches MODEL_URI_PATTERN, so the prefix decides.
WRITABLE_URI_PREFIXES = ("pvc://", "/")

MSG_BUILD_URI = (
    "a variant with build needs a uri the build Job can write: pvc://<claim>/<path> or an absolute path"
)
MSG_BUILD_PRECISION = "build.scheme must match precision: FP8_DYNAMIC builds fp8, W8A8 int8, W4A16 gptq-int4"
MSG_BUILD_SELF = "build.from must name another variant or a model uri, not the variant itself"


class Pruning(ApiModel):
    """Structured pruning applied before quantisation (SparseGPT, one shot)."""

    sparsity: Literal["2:4"] = Field(
        description="Sparsity pattern: 2:4 (two of every four consecutive weights zero), the pattern "
        "NVIDIA Ampere and later GPUs run with sparse tensor-core kernels. Where vLLM has no sparse "
        "kernel (CPUs, older GPUs) the checkpoint runs dense: same quality, no speed-up."
    )


class Calibration(ApiModel):
    """Calibration data of a build (the activations GPTQ, SparseGPT and static W8A8 scales are
    fitted on). FP8_DYNAMIC needs none; the default is the evaluation set's prompts."""

    samples: int = Field(
        default=256,
        description="Calibration sequences (llm-compressor's num_calibration_samples); 256–512 is "
        "llm-compressor's usual range, fewer for tiny test models.",
        ge=1,
        le=65536,
    )
    max_sequence_length: int = Field(
        default=2048,
        description="Tokens per calibration sequence (longer ones are truncated).",
        ge=16,
        le=1_048_576,
    )


class VariantBuild(ApiModel):
    """A recipe the operator turns into this variant's checkpoint with a Kubernetes Job
    (llm-compressor's one-shot quantisation, optionally after 2:4 pruning)."""

    source: str = Field(
        alias="from",
        description="What to compress: the name of another variant of this GRMDeployment (its "
        "checkpoint, spec.model.uri when it has none) or a model uri (pvc://<claim>/<path> or an "
        "absolute path). The source's content digest is part of the build's identity: same recipe "
        "and same source digest, no rebuild.",
        min_length=1,
        max_length=1024,
    )
    scheme: BuildScheme = Field(
        description="Quantisation scheme: FP8_DYNAMIC (fp8 weights, per-token dynamic fp8 "
        "activations; no calibration; precision fp8), W8A8 (int8 weights and activations, GPTQ and "
        "SmoothQuant; precision int8) or W4A16 (int4 weights, 16-bit activations, GPTQ; precision "
        "gptq-int4). The checkpoint is in compressed-tensors format, which vLLM loads."
    )
    prune: Pruning | None = Field(
        default=None, description="Prune with SparseGPT before quantising (optional)."
    )
    calibration: Calibration | None = Field(
        default=None,
        description="Calibration data size; unset: llm-compressor's defaults as the quantize "
        "command applies them.",
    )


class Variant(ApiModel):
    """One precision variant of the model: a rung of the quality ladder."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(self.precision in ['int8', 'awq-int4', 'gptq-int4']) || has(self.uri)",
                    "int8, awq-int4 and gptq-int4 variants need the uri of a pre-quantized checkpoint",
                    ".uri",
                ),
                cel(
                    "!has(self.revision) || (has(self.uri) && self.uri.startsWith('hf://'))",
                    MSG_REVISION_HF,
                    ".revision",
                ),
                cel(
                    "!has(self.build) || (has(self.uri) && "
                    "(self.uri.startsWith('pvc://') || self.uri.startsWith('/')))",
                    MSG_BUILD_URI,
                    ".uri",
                ),
                cel(
                    "!has(self.build) || "
                    + " || ".join(
                        f"(self.build.scheme == '{scheme}' && self.precision == '{precision}')"
                        for scheme, precision in SCHEME_PRECISION.items()
                    ),
                    MSG_BUILD_PRECISION,
                    ".build.scheme",
                ),
                cel("!has(self.build) || self.build.from != self.name", MSG_BUILD_SELF, ".build.from"),
            ]
        }
    )

    name: str = Field(
        description="Variant name, unique within the GRMDeployment; the worker Deployment is "
        "<metadata.name>-<name>.",
        pattern=NAME_PATTERN,
        min_length=1,
        max_length=20,
    )
    precision: Precision = Field(
        description="Weight precision: bf16, fp16, fp8 (W8A8), int8 (W8A8), awq-int4 or gptq-int4 (W4A16)."
    )
    uri: str | None = Field(
        default=None,
        description="Pre-quantized checkpoint of this variant (required for int8, awq-int4 and "
        "gptq-int4). Defaults to spec.model.uri. With build: where the build Job writes the "
        "checkpoint (pvc://<claim>/<path> or an absolute path on a shared volume).",
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
    )
    revision: str | None = Field(
        default=None,
        description="Branch, tag or commit of this variant's own hf:// uri (default: that repository's "
        "default branch). Only with an hf:// uri here; a variant without a uri uses spec.model's.",
        min_length=1,
        max_length=128,
    )
    quality: float = Field(
        description="Declared quality relative to the best variant, in (0, 1] (e.g. reward accuracy "
        "recovered). With precision.qualityPolicy Declared it is compared with "
        "spec.precision.minQuality; with Measured (the default) it is only a prior: the measured "
        "agreement with the reference (status.variants[].quality) replaces it once evaluated.",
        gt=0.0,
        le=1.0,
    )
    build: VariantBuild | None = Field(
        default=None,
        description="Build this variant's checkpoint with a Job (llm-compressor) instead of "
        "naming a finished one: quantise (and optionally prune) build.from into uri. The result's "
        "uri, content digest and recipe hash go to status.variants[].build; changing the recipe "
        "rebuilds and re-evaluates.",
    )
    gpus_per_replica: int = Field(
        default=1,
        description="Accelerators (units of acceleratorResource) each replica of this variant uses.",
        ge=1,
        le=16,
    )
    accelerator_resource: str = Field(
        default=DEFAULT_ACCELERATOR_RESOURCE,
        description="Extended resource each replica requests gpusPerReplica of, as the cluster's "
        "device plugin advertises it: nvidia.com/gpu, a MIG profile (nvidia.com/mig-1g.10gb), a "
        "renamed time-slicing resource (nvidia.com/gpu.shared) or another vendor's (amd.com/gpu).",
        pattern=EXTENDED_RESOURCE_PATTERN,
        max_length=253,
    )
    resources: VariantResources | None = Field(
        default=None,
        description="CPU, memory and /dev/shm of each replica, overriding the values derived from "
        "the model (parameters × bytes per parameter, per-GPU process overhead, loader peak).",
    )
    engine: EngineOptions | None = Field(
        default=None, description="Engine options for this variant, overriding spec.engine field by field."
    )
    profile: PerformanceProfileSpec | None = Field(
        default=None,
        description="Measured performance of one replica; defaults to the built-in profile of the precision.",
    )

    @model_validator(mode="after")
    def _checkpoint_for_integer_precisions(self) -> Variant:
        if self.precision in ("int8", "awq-int4", "gptq-int4") and self.uri is None:
            raise ValueError(MSG_QUANTIZED_URI)
        if self.revision is not None and not (self.uri or "").startswith("hf://"):
            raise ValueError(MSG_REVISION_HF)
        if self.build is not None:
            if self.uri is None or not self.uri.startswith(WRITABLE_URI_PREFIXES):
                raise ValueError(MSG_BUILD_URI)
            if SCHEME_PRECISION[self.build.scheme] != self.precision:
                raise ValueError(MSG_BUILD_PRECISION)
            if self.build.source == self.name:
                raise ValueError(MSG_BUILD_SELF)
        return self


MSG_QUANTIZED_URI = "int8, awq-int4 and gptq-int4 variants need the uri of a pre-quantized checkpoint"


# ---------------------------------------------------------------------------------------------
# spec.slo, spec.scaling, spec.precision, spec.scoring, spec.metrics, spec.rollout


class SLO(ApiModel):
    """Latency targets at the 95th percentile. At least one must be set."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.ttftP95) || has(self.itlP95) || has(self.e2eP95)",
                    "slo needs at least one of ttftP95, itlP95, e2eP95",
                )
            ]
        }
    )

    ttft_p95: Duration | None = Field(
        default=None, description="95th-percentile time to first token, e.g. 500ms."
    )
    itl_p95: Duration | None = Field(
        default=None, description="95th-percentile inter-token latency (time per output token), e.g. 50ms."
    )
    e2e_p95: Duration | None = Field(
        default=None,
        alias="e2eP95",
        description="95th-percentile end-to-end request latency (a whole GRM score), e.g. 20s.",
    )

    @property
    def ttft_p95_s(self) -> float | None:
        """ttftP95 in seconds."""
        return parse_duration(self.ttft_p95) if self.ttft_p95 else None

    @property
    def itl_p95_s(self) -> float | None:
        """itlP95 in seconds."""
        return parse_duration(self.itl_p95) if self.itl_p95 else None

    @property
    def e2e_p95_s(self) -> float | None:
        """e2eP95 in seconds."""
        return parse_duration(self.e2e_p95) if self.e2e_p95 else None

    @model_validator(mode="after")
    def _at_least_one(self) -> SLO:
        if self.ttft_p95 is None and self.itl_p95 is None and self.e2e_p95 is None:
            raise ValueError(MSG_SLO_EMPTY)
        return self


MSG_SLO_EMPTY = "slo needs at least one of ttftP95, itlP95, e2eP95"

ScalingMode = Literal["Auto", "Manual", "External"]


class Scaling(ApiModel):
    """How the replica count is chosen and its bounds."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "scaling.minReplicas must be ≤ scaling.maxReplicas",
                    ".minReplicas",
                ),
                cel(
                    "!has(self.replicas) || (self.replicas >= self.minReplicas && "
                    "self.replicas <= self.maxReplicas)",
                    "scaling.replicas must lie within [minReplicas, maxReplicas]",
                    ".replicas",
                ),
            ]
        }
    )

    mode: ScalingMode = Field(
        default="Auto",
        description="Auto: the operator's SLO policy sets replicas. Manual: replicas come from "
        "spec.scaling.replicas (kubectl scale). External: an HPA or KEDA sets spec.scaling.replicas "
        "through the scale subresource; the operator still chooses the variant.",
    )
    replicas: int | None = Field(
        default=None,
        description="Replica count in Manual and External modes (the scale subresource's spec "
        "replicas). Ignored in Auto mode.",
        ge=0,
        le=1000,
    )
    min_replicas: int = Field(default=1, description="Fewest replicas the operator keeps.", ge=0, le=1000)
    max_replicas: int = Field(default=8, description="Most replicas the operator runs.", ge=1, le=1000)
    max_gpus: int | None = Field(
        default=None,
        alias="maxGPUs",
        description="Most GPUs all replicas of all variants may hold at once (switch surges "
        "included). Unset: maxReplicas × the largest gpusPerReplica.",
        ge=1,
        le=100_000,
    )
    scale_up_stabilization: Duration = Field(
        default="0s", description="Window over which scale-up recommendations are smoothed (min over window)."
    )
    scale_down_stabilization: Duration = Field(
        default="5m",
        description="Window over which scale-down recommendations are smoothed (max over window): "
        "replicas fall only when lower for this long. Stepping up to a better operating point waits "
        "as long. Where the variant admits several sample budgets, a burst is remembered for 3 "
        "windows: scaling in keeps the replicas that serve its peak at the lowest budget, and a "
        "step up must fit its peak.",
    )
    control_period: Duration = Field(default="15s", description="How often the policy runs.")
    pending_grace: Duration = Field(
        default="5m",
        description="How long a worker pod may stay unscheduled (Pending, PodScheduled=False) before "
        'the policy reads it as "no GPU left" and shrinks the GPU budget to the GPUs already '
        "scheduled, stepping down the precision ladder if that budget cannot hold the SLO. Within "
        "the grace the pod is counted as a node still coming: a node autoscaler (Karpenter, "
        "cluster-autoscaler) brings a GPU node in 1–5 minutes; set it above your autoscaler's GPU-node "
        "time if that is slower. 0s reads Pending as no GPU at once (a fixed cluster); in the fleet "
        "simulator 0s cost 12–15 points of SLO attainment where nodes came in 3 minutes and gained "
        "nothing measurable on a fixed cluster (docs/policy.md §3).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MSG_MIN_MAX)
        if self.replicas is not None and not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(MSG_REPLICAS_BOUNDS)
        return self


MSG_MIN_MAX = "scaling.minReplicas must be ≤ scaling.maxReplicas"
MSG_REPLICAS_BOUNDS = "scaling.replicas must lie within [minReplicas, maxReplicas]"

PrecisionPolicy = Literal["Auto", "Pinned"]
QualityPolicy = Literal["Measured", "Declared"]


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the GRMDeployment's namespace."""

    name: str = Field(description="Name of the ConfigMap.", min_length=1, max_length=253)
    key: str = Field(
        default="eval.jsonl",
        description="Key holding the evaluation set (JSONL).",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


MSG_EVALUATION_SOURCE = "evaluationSet takes configMapRef or uri, not both"


class EvaluationSet(ApiModel):
    """The prompts the evaluation Job scores with a variant and with the reference: JSONL, one
    object per line, {"prompt": str, "responses": [str, ...], "label": int | null} where label is
    the index of the preferred response (human preference; null: unlabelled). Unset: the small
    set shipped with the operator, enough for a smoke test only (docs/quality.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.configMapRef) && has(self.uri))", MSG_EVALUATION_SOURCE),
            ]
        }
    )

    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None,
        description="A ConfigMap key holding the set (up to ~1 MiB, a ConfigMap's limit).",
    )
    uri: str | None = Field(
        default=None,
        description="A JSONL file in model storage: pvc://<claim>/<path>.jsonl or an absolute path.",
        pattern=r"^(pvc://[a-z0-9][-a-z0-9.]*/.+|/[^\s]+)$",
        max_length=1024,
    )

    @model_validator(mode="after")
    def _one_source(self) -> EvaluationSet:
        if self.config_map_ref is not None and self.uri is not None:
            raise ValueError(MSG_EVALUATION_SOURCE)
        return self


class LiveQuality(ApiModel):
    """Quality watched while serving: live score requests re-scored by the reference variant."""

    fraction: float = Field(
        default=0.01,
        description="Fraction of the score requests each worker of a variant other than the reference "
        "(the first) re-scores on the reference variant in the background, after answering, to compare "
        "verdicts; not counted as demand, never delaying a request. While the reference runs no pod "
        "the samples are kept (a bounded reservoir) and replayed once it does. 0: no watching.",
        ge=0.0,
        le=1.0,
    )
    window: Duration = Field(
        default="1h",
        description="The window of compared verdicts a variant's live agreement is computed over "
        "(Prometheus source: any length; Direct source: at most the last 256 control periods).",
    )
    min_comparisons: int = Field(
        default=100,
        description="Compared verdicts in the window before a variant may be demoted; never fewer "
        "than a perfect record needs to clear precision.minQuality (125 for 0.97).",
        ge=1,
        le=1000000,
    )


class PrecisionControl(ApiModel):
    """How the operator may trade precision for speed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.policy != 'Pinned' || has(self.pinnedVariant)",
                    "precision.pinnedVariant is required when precision.policy is Pinned",
                    ".pinnedVariant",
                )
            ]
        }
    )

    policy: PrecisionPolicy = Field(
        default="Auto",
        description="Auto: switch variants along the quality ladder to hold the SLO. Pinned: always "
        "run pinnedVariant.",
    )
    pinned_variant: str | None = Field(
        default=None, description="The variant to run when policy is Pinned.", max_length=20
    )
    min_quality: float = Field(
        default=0.0,
        description="Quality floor: variants (and sample budgets) below it are never used.",
        ge=0.0,
        le=1.0,
    )
    switch_cooldown: Duration = Field(
        default="10m", description="Minimum time between two variant switches (against flapping)."
    )
    shadow: LiveQuality = Field(
        default_factory=LiveQuality,
        description="Quality watched while serving: a variant whose live agreement with the reference "
        "has a 95% lower bound below minQuality is demoted (status.variants[].demoted, condition "
        "LiveQualityMet, an Event) and the ladder skips it until it is redefined or re-evaluated (an "
        "evaluation finished after the demotion admits it: a changed evaluation set or checkpoint, or "
        "a new value of the annotation grm.dev/re-evaluate, e.g. a timestamp).",
    )
    quality_policy: QualityPolicy = Field(
        default="Measured",
        description="Measured: every variant but the reference (the first) is evaluated by a Job "
        "against the reference on evaluationSet before it serves, and joins the ladder only when the "
        "lower bound of its measured agreement is ≥ minQuality (else it is Rejected and never "
        "switched to); the measurement replaces the declared quality. Declared: the variants' "
        "declared quality is trusted and nothing is evaluated.",
    )
    evaluation_set: EvaluationSet | None = Field(
        default=None,
        description="What the evaluation Jobs score (qualityPolicy Measured). Unset: the small set "
        "shipped with the operator.",
    )

    @model_validator(mode="after")
    def _pinned_needs_variant(self) -> PrecisionControl:
        if self.policy == "Pinned" and not self.pinned_variant:
            raise ValueError(MSG_PINNED_NEEDS_VARIANT)
        return self


MSG_PINNED_NEEDS_VARIANT = "precision.pinnedVariant is required when precision.policy is Pinned"


class SampleBudget(ApiModel):
    """Bounds of k, the number of critiques sampled per GRM score request."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.min <= self.max", "scoring.samples.min must be ≤ scoring.samples.max")
            ]
        }
    )

    min: int = Field(default=1, description="Fewest samples per request under load.", ge=1, le=64)
    max: int = Field(default=8, description="Samples per request when capacity allows.", ge=1, le=64)

    @model_validator(mode="after")
    def _ordered(self) -> SampleBudget:
        if self.min > self.max:
            raise ValueError(MSG_SAMPLES_ORDER)
        return self


MSG_SAMPLES_ORDER = "scoring.samples.min must be ≤ scoring.samples.max"


class Scoring(ApiModel):
    """The GRM scoring endpoint's sampling and voting."""

    samples: SampleBudget = Field(default_factory=SampleBudget, description="Sample budget k per request.")
    early_exit: Literal["Exact", "Off"] = Field(
        default="Exact",
        description="Exact: stop sampling once no remaining sample can change the winner (same "
        "result as voting over all samples, fewer samples). Off: always draw the full budget.",
    )
    sampling: Literal["Shuffled", "SharedPrefill"] = Field(
        default="Shuffled",
        description="Shuffled: responses shuffled per sample (DeepSeek-GRM's recipe against position "
        "bias, one prefill per sample). SharedPrefill: one shuffled prompt, n samples sharing its prefill.",
    )
    shed_samples: Literal["OnQueue", "Off"] = Field(
        default="OnQueue",
        description="OnQueue: while a worker's engine has requests waiting, a new score request gets "
        "the fewest samples that still meet precision.minQuality on the worker's variant (bf16×1 "
        "instead of ×4 on the ladder example), so a burst's queue drains at once, without a cold "
        "start; the samples not drawn are exported as grm_score_samples_shed_total and the "
        "autoscaler counts them as demand. Off: every request gets the sample budget.",
    )
    critique_tokens: int = Field(
        default=300,
        description="Expected tokens per critique (DeepSeek-GRM: 218–376); used for capacity planning.",
        ge=1,
        le=32768,
    )


class Metrics(ApiModel):
    """Where the operator reads latency and load metrics."""

    source: Literal["Prometheus", "Direct"] | None = Field(
        default=None,
        description="Prometheus: PromQL against prometheusURL. Direct: the operator scrapes each Ready "
        "worker's /metrics. Defaults to Prometheus when prometheusURL (or the operator's default) is "
        "set, Direct otherwise.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus base URL, e.g. http://prometheus.monitoring:9090.",
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        alias="prometheusURL",
    )
    window: Duration = Field(default="1m", description="Window of rates and percentiles.")
    queries: dict[str, str] | None = Field(
        default=None,
        description="PromQL overrides by signal name (rps, ttftP95, itlP95, e2eP95, running, waiting, "
        "kvCacheUsage, gpuUtil); {selector} and {window} are substituted.",
    )


class Rollout(ApiModel):
    """How variant switches and scale-downs happen."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.connectionMaxAge) || duration(self.connectionMaxAge) <= duration('24h')",
                    "rollout.connectionMaxAge must be at most 24h",
                    ".connectionMaxAge",
                )
            ]
        }
    )

    switch_timeout: Duration = Field(
        default="10m",
        description="How long the new variant may take to become Ready before the switch is rolled back.",
    )
    drain_seconds: int = Field(
        default=60,
        description="Seconds a terminating worker keeps serving in-flight requests before it stops.",
        ge=0,
        le=3600,
    )
    unhealthy_backoff: Duration = Field(
        default="30m", description="How long a variant whose switch failed is not tried again."
    )
    connection_max_age: Duration = Field(
        default="30s",
        description="Age after which a worker answers a client connection's next request with "
        "`Connection: close` (±10% jitter), like gRPC's MaxConnectionAge: kube-proxy balances per "
        "connection, so this bounds how long a keep-alive client (an RL trainer's pool, a gateway) "
        "takes to reach replicas added after it connected. 0s: never (a pool then stays on the "
        "replicas it first reached). At most 24h.",
    )

    @model_validator(mode="after")
    def _connection_age_bound(self) -> Rollout:
        if parse_duration(self.connection_max_age) > CONNECTION_MAX_AGE_LIMIT_S:
            raise ValueError(MSG_CONNECTION_MAX_AGE)
        return self


CONNECTION_MAX_AGE_LIMIT_S = 86400.0  # the worker's own bound (WorkerConfig.connection_max_age_s)
MSG_CONNECTION_MAX_AGE = "rollout.connectionMaxAge must be at most 24h"


# ---------------------------------------------------------------------------------------------
# spec.template: the worker pods. Free-form Kubernetes objects stay free-form (their schemas are
# Kubernetes' own and the API server validates them when the Deployment is written).


class EnvVar(ApiModel):
    """An environment variable of the worker container."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    name: str = Field(description="Variable name.", min_length=1, max_length=256)
    value: str | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None,
        description="Source of the value (secretKeyRef, configMapKeyRef, fieldRef), as in a Pod spec.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class ModelCache(ApiModel):
    """Where workers keep downloaded weights."""

    size_limit: str = Field(
        default="200Gi",
        description="Size of the emptyDir used as model cache when no claim is given.",
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
    )
    claim_name: str | None = Field(
        default=None,
        description="PersistentVolumeClaim to use as model cache instead of an emptyDir.",
        max_length=253,
    )


# The worker pod's own volumes and mount paths (control.builders.deployment creates them; a unit
# test checks that the lists agree): extra volumes and mounts must not take them.
RESERVED_VOLUME_NAMES = ("config", "tmp", "shm", "model-cache", "weights")
RESERVED_MOUNT_PATHS = ("/etc/grm", "/tmp", "/dev/shm", "/models", "/mnt/weights")


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


MSG_RESERVED_VOLUME = "template.volumes must not use the worker's own volume names " + ", ".join(
    RESERVED_VOLUME_NAMES
)
MSG_RESERVED_MOUNT = "template.volumeMounts must not use the worker's own mount paths " + ", ".join(
    RESERVED_MOUNT_PATHS
)


def _named_items(max_name: int, required: str) -> JsonDict:
    """Items of a Kubernetes list kept free-form except for the one field a CEL rule reads."""
    return {
        "items": {
            "type": "object",
            "required": [required],
            "properties": {
                required: {
                    "type": "string",
                    "maxLength": max_name,
                    "description": f"The {required} field, as in a Pod spec (not one of the worker's own).",
                }
            },
            "x-kubernetes-preserve-unknown-fields": True,
        }
    }


class LocalObjectReference(ApiModel):
    """The name of an object in the GRMDeployment's namespace."""

    name: str = Field(
        description="Name of the object (a Secret for imagePullSecrets).", min_length=1, max_length=253
    )


class PodTemplate(ApiModel):
    """Shape of the worker pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.volumes) || self.volumes.all(v, "
                    f"!(v.name in {_cel_list(RESERVED_VOLUME_NAMES)}))",
                    MSG_RESERVED_VOLUME,
                    ".volumes",
                ),
                cel(
                    "!has(self.volumeMounts) || self.volumeMounts.all(m, "
                    f"!(m.mountPath in {_cel_list(RESERVED_MOUNT_PATHS)}))",
                    MSG_RESERVED_MOUNT,
                    ".volumeMounts",
                ),
            ]
        }
    )

    image: str | None = Field(
        default=None,
        description="Worker image. Defaults to the operator's configured worker image.",
        max_length=1024,
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the worker container."
    )
    resources: dict[str, Any] | None = Field(
        default=None,
        description="Requests/limits of every variant's worker container (cpu, memory, "
        "other extended resources), over the values derived from the model; variants[].resources "
        "override these. The accelerator resource is always gpusPerReplica.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    node_selector: dict[str, str] | None = Field(default=None, description="Node selector of worker pods.")
    tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        description="Tolerations of worker pods (e.g. for nvidia.com/gpu taints).",
        max_length=64,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Affinity of worker pods.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of worker pods.", max_length=253
    )
    service_account_name: str | None = Field(
        default=None, description="ServiceAccount of worker pods.", max_length=253
    )
    env: list[EnvVar] | None = Field(
        default=None, description="Extra environment variables of the worker container.", max_length=128
    )
    model_cache: ModelCache = Field(
        default_factory=ModelCache, description="Volume holding downloaded weights (mounted at /models)."
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None, description="Annotations added to worker pods."
    )
    pod_labels: dict[str, str] | None = Field(default=None, description="Labels added to worker pods.")
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None,
        description="Secrets with credentials for the registry holding the worker image.",
        max_length=16,
    )
    runtime_class_name: str | None = Field(
        default=None,
        description="RuntimeClass of worker pods (e.g. nvidia, where the NVIDIA container runtime "
        "is not the node's default).",
        max_length=253,
    )
    topology_spread_constraints: list[dict[str, Any]] | None = Field(
        default=None,
        description="Topology spread constraints of worker pods, as in a Pod spec (e.g. spread "
        "replicas over zones).",
        max_length=16,
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    volumes: list[dict[str, Any]] | None = Field(
        default=None,
        description="Extra volumes of worker pods, as in a Pod spec. Names config, tmp, shm, "
        "model-cache and weights are the worker's own.",
        max_length=32,
        json_schema_extra=_named_items(63, "name"),
    )
    volume_mounts: list[dict[str, Any]] | None = Field(
        default=None,
        description="Extra volume mounts of the worker container, as in a Container spec. Paths "
        "/etc/grm, /tmp, /dev/shm, /models, /mnt/weights and /var/run/secrets/grm are the worker's own.",
        max_length=32,
        json_schema_extra=_named_items(4096, "mountPath"),
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount a ServiceAccount token into worker pods. Off: the worker never calls "
        "the Kubernetes API, so a token would only be something to steal.",
    )

    @model_validator(mode="after")
    def _reserved_volumes_and_paths(self) -> PodTemplate:
        if any(v.get("name") in RESERVED_VOLUME_NAMES for v in self.volumes or []):
            raise ValueError(MSG_RESERVED_VOLUME)
        if any(m.get("mountPath") in RESERVED_MOUNT_PATHS for m in self.volume_mounts or []):
            raise ValueError(MSG_RESERVED_MOUNT)
        return self


# ---------------------------------------------------------------------------------------------
# spec


MSG_BUILD_FROM = "build.from must name a variant of spec.variants, a pvc:// uri or an absolute path"


class GRMDeploymentSpec(ApiModel):
    """Desired state: the model, its precision variants, the SLO and the scaling bounds."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
                    "variant names must be unique",
                    ".variants",
                ),
                cel(
                    "!has(self.precision) || !has(self.precision.pinnedVariant) || "
                    "self.variants.exists(v, v.name == self.precision.pinnedVariant)",
                    "precision.pinnedVariant must name one of spec.variants",
                    ".precision.pinnedVariant",
                ),
                cel(
                    "!has(self.precision) || self.variants.exists(v, v.quality >= self.precision.minQuality)",
                    "at least one variant must meet precision.minQuality",
                    ".precision.minQuality",
                ),
                cel(
                    "self.variants.all(v, !has(v.build) || v.build.from.startsWith('pvc://') || "
                    "v.build.from.startsWith('/') || self.variants.exists(w, w.name == v.build.from))",
                    MSG_BUILD_FROM,
                    ".variants",
                ),
            ]
        },
    )

    model: ModelSource = Field(description="The model and where its weights are.")
    variants: list[Variant] = Field(
        description="Precision variants, ordered best quality first. The operator starts with the "
        "first that meets minQuality.",
        min_length=1,
        max_length=8,
    )
    engine: EngineOptions = Field(
        default_factory=EngineOptions, description="vLLM options for every variant."
    )
    slo: SLO = Field(
        description="Latency targets at the 95th percentile that the operator keeps, trading "
        "replicas, precision and samples for them; at least one of ttftP95, itlP95, e2eP95."
    )
    scaling: Scaling = Field(default_factory=Scaling, description="Replica bounds and scaling mode.")
    precision: PrecisionControl = Field(
        default_factory=PrecisionControl, description="Precision switching policy and quality floor."
    )
    scoring: Scoring = Field(default_factory=Scoring, description="GRM scoring endpoint settings.")
    metrics: Metrics = Field(default_factory=Metrics, description="Where metrics come from.")
    rollout: Rollout = Field(default_factory=Rollout, description="Switch timeout and drain.")
    template: PodTemplate = Field(default_factory=PodTemplate, description="Worker pod settings.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> GRMDeploymentSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(MSG_UNIQUE_VARIANTS)
        pinned = self.precision.pinned_variant
        if pinned is not None and pinned not in names:
            raise ValueError(MSG_PINNED_EXISTS)
        if not any(v.quality >= self.precision.min_quality for v in self.variants):
            raise ValueError(MSG_QUALITY_FLOOR)
        for v in self.variants:
            source = v.build.source if v.build is not None else None
            if source is not None and not source.startswith(WRITABLE_URI_PREFIXES) and source not in names:
                raise ValueError(MSG_BUILD_FROM)
        return self

    def variant(self, name: str) -> Variant:
        """The variant called ``name`` (``KeyError`` when there is none)."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def admissible_variants(self) -> list[Variant]:
        """Variants at or above the quality floor, best quality first (spec order)."""
        return [v for v in self.variants if v.quality >= self.precision.min_quality]

    def max_gpus(self) -> int:
        """The GPU budget: scaling.maxGPUs, or maxReplicas × the largest gpusPerReplica."""
        if self.scaling.max_gpus is not None:
            return self.scaling.max_gpus
        return self.scaling.max_replicas * max(v.gpus_per_replica for v in self.variants)


MSG_UNIQUE_VARIANTS = "variant names must be unique"
MSG_PINNED_EXISTS = "precision.pinnedVariant must name one of spec.variants"
MSG_QUALITY_FLOOR = "at least one variant must meet precision.minQuality"


# ---------------------------------------------------------------------------------------------
# status


class Condition(ApiModel):
    """A status condition in the shape of Kubernetes' metav1.Condition."""

    type: str = Field(description="Condition type, e.g. Ready, SLOMet.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed from.", ge=0
    )
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    reason: str = Field(
        description="CamelCase reason for the last transition.",
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(default="", description="Human-readable details.", max_length=32768)


class ObservedMetrics(ApiModel):
    """What the operator last observed, over the metrics window (absent when unknown)."""

    rps: float | None = Field(default=None, description="Requests per second.")
    ttft_p95: float | None = Field(default=None, description="95th-percentile time to first token, seconds.")
    itl_p95: float | None = Field(default=None, description="95th-percentile inter-token latency, seconds.")
    e2e_p95: float | None = Field(
        default=None, alias="e2eP95", description="95th-percentile end-to-end latency, seconds."
    )
    gpu_util: float | None = Field(default=None, description="Mean GPU utilisation of ready workers, 0–1.")
    kv_cache_usage: float | None = Field(
        default=None, description="Mean KV-cache usage of ready workers, 0–1."
    )
    queue: float | None = Field(default=None, description="Requests waiting in engine queues.")
    running: float | None = Field(default=None, description="Requests running in engines.")
    sample_age_seconds: float | None = Field(default=None, description="Age of the newest metric sample.")


class Decision(ApiModel):
    """The policy's last decision, in words and numbers."""

    time: str = Field(description="When it was made (RFC 3339).")
    action: Literal["None", "ScaleUp", "ScaleDown", "SwitchVariant", "SetSamples", "Hold"] = Field(
        description="What the operator did."
    )
    from_variant: str | None = Field(default=None, description="Variant before a switch.", alias="from")
    to_variant: str | None = Field(default=None, description="Variant after a switch.", alias="to")
    replicas: int | None = Field(default=None, description="Replica count decided.", ge=0)
    samples: int | None = Field(default=None, description="Sample budget decided.", ge=0)
    reason: str = Field(description="Why, with the numbers that caused it.", max_length=4096)


class VariantDemotion(ApiModel):
    """Why a variant left the quality ladder while serving: its live agreement with the reference
    (spec.precision.shadow) had a 95% lower bound below precision.minQuality. It stays until there
    is fresh evidence: the variant is redefined (its definition in spec.variants changes), or an
    evaluation finished after the demotion admits it (qualityPolicy Measured: the evaluation set or
    a checkpoint changed, or the annotation grm.dev/re-evaluate got a new value), or, under
    qualityPolicy Declared, grm.dev/re-evaluate gets a value other than reEvaluate."""

    since: str = Field(description="When the variant was demoted (RFC 3339).")
    reason: Literal["LiveAgreementBelowFloor"] = Field(
        default="LiveAgreementBelowFloor", description="Why (CamelCase)."
    )
    message: str = Field(description="The numbers, for people.", max_length=1024)
    agreement: float = Field(description="Share of compared verdicts that agreed.", ge=0.0, le=1.0)
    agreement_low: float = Field(description="Lower bound of the 95% Wilson interval.", ge=0.0, le=1.0)
    agreement_high: float = Field(description="Upper bound of the 95% Wilson interval.", ge=0.0, le=1.0)
    compared: int = Field(description="Verdicts compared with the reference's in the window.", ge=0)
    agreed: int = Field(description="Of those, the same winner.", ge=0)
    floor: float = Field(description="precision.minQuality at the time.", ge=0.0, le=1.0)
    variant_digest: str = Field(
        description="Digest of the variant's definition when demoted; another one re-admits it.",
        max_length=80,
    )
    re_evaluate: str | None = Field(
        default=None,
        description="The annotation grm.dev/re-evaluate's value when demoted: only another value "
        "asks for a re-evaluation.",
        max_length=253,
    )


class VariantReinstatement(ApiModel):
    """Why and when a demoted variant came back on the quality ladder. For one
    precision.shadow.window after it the variant's live agreement is not judged: that window still
    holds the comparisons that demoted it."""

    since: str = Field(description="When the demotion was lifted (RFC 3339).")
    reason: Literal["Redefined", "ReEvaluated", "ReEvaluationRequested"] = Field(
        description="Redefined: its definition changed. ReEvaluated: an evaluation finished after the "
        "demotion admits it. ReEvaluationRequested: grm.dev/re-evaluate got a new value under "
        "qualityPolicy Declared."
    )
    message: str = Field(description="The numbers, for people.", max_length=1024)


GateState = Literal["Pending", "Building", "Evaluating", "Admitted", "Rejected"]


class BuildStatus(ApiModel):
    """The checkpoint a build Job produced (or is producing) for a variant."""

    uri: str = Field(description="Where the checkpoint is (the variant's uri).")
    recipe_hash: str = Field(
        description="sha256 of the recipe (scheme, pruning, calibration) and the source's uri and "
        "digest: the build's identity. A Job with this hash is never run twice."
    )
    digest: str | None = Field(
        default=None, description="sha256 content digest of the checkpoint (from its manifest)."
    )
    source_digest: str | None = Field(
        default=None, description="Content digest of the source checkpoint, when the source was built."
    )
    job: str | None = Field(default=None, description="The build Job's name.")
    completed: str | None = Field(default=None, description="When the build finished (RFC 3339).")


class MeasuredQuality(ApiModel):
    """A variant's quality as the evaluation Job measured it against the reference."""

    value: float = Field(
        description="Agreement of the GRM verdict (which response wins) with the reference's, 0–1."
    )
    low: float = Field(description="Lower bound of the 95 % confidence interval of value.")
    high: float = Field(description="Upper bound of the 95 % confidence interval of value.")
    items: int = Field(
        description="Evaluation items scored (the interval's sample size). Named items, not n: "
        "YAML 1.1 reads a bare n as false.",
        ge=0,
    )
    rank_correlation: float | None = Field(
        default=None, description="Rank correlation of the variant's and the reference's scores."
    )
    accuracy: float | None = Field(
        default=None,
        description="Pairwise accuracy against the set's human labels (null: the set has none).",
    )
    dataset_digest: str = Field(description="sha256 of the evaluation set scored.")
    evaluated_key: str = Field(
        description="What was evaluated: hash of the variant's checkpoint (digest or uri), the "
        "reference's and the set's; a change re-evaluates."
    )
    re_evaluate: str | None = Field(
        default=None,
        description="The grm.dev/re-evaluate value this measurement was made for (a re-evaluation "
        "of a demoted variant); unset for an evaluation its inputs caused.",
        max_length=253,
    )
    job: str | None = Field(default=None, description="The evaluation Job's name.")
    measured: str = Field(description="When it was measured (RFC 3339).")


class VariantStatus(ApiModel):
    """Replica counts of one variant's Deployment, and where it stands at the quality gate."""

    name: str = Field(description="Variant name.")
    replicas: int = Field(default=0, description="Pods of this variant.", ge=0)
    ready_replicas: int = Field(default=0, description="Ready pods of this variant.", ge=0)
    desired_replicas: int = Field(default=0, description="Replicas the operator asked for.", ge=0)
    unhealthy_until: str | None = Field(
        default=None, description="Set after a failed switch: the variant is not tried before this time."
    )
    demoted: VariantDemotion | None = Field(
        default=None,
        description="Set when the variant's live agreement with the reference fell below the floor: "
        "the ladder skips it until it is redefined or re-evaluated.",
    )
    reinstated: VariantReinstatement | None = Field(
        default=None, description="Set when the variant's last demotion was lifted: why and when."
    )
    gate: GateState | None = Field(
        default=None,
        description="Quality gate (precision.qualityPolicy Measured): Pending (waiting for its "
        "source or the reference), Building (build Job running), Evaluating (evaluation Job "
        "running), Admitted (on the ladder), Rejected (below minQuality, or its build or evaluation "
        "failed: never switched to). The reference and Declared variants are Admitted.",
    )
    gate_message: str | None = Field(
        default=None, description="Why the variant is where it is at the gate, with the numbers."
    )
    build: BuildStatus | None = Field(default=None, description="The variant's built checkpoint.")
    quality: MeasuredQuality | None = Field(default=None, description="The variant's measured quality.")


class SwitchProgress(ApiModel):
    """A variant switch in progress (kept in status so a restarted operator can resume it)."""

    from_variant: str = Field(description="Variant being replaced.", alias="from")
    to_variant: str = Field(description="Variant being brought up.", alias="to")
    started: str = Field(description="When the switch began (RFC 3339).")
    target_replicas: int = Field(description="Replicas of the new variant to reach before draining.", ge=0)
    phase: Literal["Surging", "Draining", "RollingBack"] = Field(description="Where the switch is.")


class GRMDeploymentStatus(ApiModel):
    """Observed state, written by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last acted on.", ge=0
    )
    active_variant: str | None = Field(default=None, description="Variant serving traffic.")
    replicas: int = Field(default=0, description="Pods of the active variant (scale subresource).", ge=0)
    ready_replicas: int = Field(default=0, description="Ready pods of the active variant.", ge=0)
    desired_replicas: int | None = Field(default=None, description="Replicas the operator wants.", ge=0)
    samples: int | None = Field(default=None, description="GRM sample budget pushed to the workers.", ge=0)
    selector: str | None = Field(
        default=None, description="Label selector of all worker pods (scale subresource)."
    )
    slo: str | None = Field(default=None, description="The SLO in short form, for kubectl get.")
    variants: list[VariantStatus] | None = Field(
        default=None, description="Per variant: replica counts, build, measured quality, gate."
    )
    gate: str | None = Field(
        default=None,
        description="The quality gate in short form for kubectl get, e.g. fp8=Admitted(0.981) "
        "int4=Rejected(0.912).",
    )
    observed: ObservedMetrics | None = Field(default=None, description="Last observed metrics.")
    last_decision: Decision | None = Field(default=None, description="Last decision of the policy.")
    decisions: list[Decision] | None = Field(
        default=None, description="Recent decisions, newest last (bounded).", max_length=20
    )
    switch: SwitchProgress | None = Field(default=None, description="Variant switch in progress, if any.")
    policy_state: dict[str, Any] | None = Field(
        default=None,
        description="The policy's memory (recommendation windows, correction factors, the worker "
        "pods' measured cold starts) so that a restarted operator continues where it left off.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description=(
            "Ready, Progressing, Degraded, SpecValid (the reconciler's); SLOMet, MetricsAvailable,"
            " QualityFloorMet, WorkersHealthy (the autoscaler's)."
        ),
        max_length=32,
        # metav1.Condition's convention: one entry per type, so server-side apply merges by type.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ObjectMeta(BaseModel):
    """The subset of metav1.ObjectMeta the operator reads."""

    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class GRMDeployment(ApiModel):
    """A generative reward model served elastically: variants, SLO, scaling bounds."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    api_version: Literal["grm.dev/v1alpha1"] = Field(default="grm.dev/v1alpha1", alias="apiVersion")
    kind: Literal["GRMDeployment"] = "GRMDeployment"
    metadata: ObjectMeta
    spec: GRMDeploymentSpec
    status: GRMDeploymentStatus | None = None
