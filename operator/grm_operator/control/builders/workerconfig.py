"""The worker's config of one variant: the worker's own :class:`grm_worker.contract.config.WorkerConfig`,
rendered as stable JSON into the variant's ConfigMap ``<name>-<variant>-config``.

It comes from the spec (model, engine options merged with the variant's, scoring) and from two
annotations on the GRMDeployment for tests and demos (:data:`ANNOTATION_WORKER_ENGINE`,
:data:`ANNOTATION_WORKER_OVERRIDES`); the worker's model validates the result.
"""

from __future__ import annotations

import json
from typing import Any

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import EngineOptions, GRMDeployment, GRMDeploymentSpec, Variant
from grm_operator.control.builders.layout import (
    ADMIN_PORT,
    CONFIG_FILE,
    HTTP_PORT,
)
from grm_operator.control.builders.metadata import (
    LABEL_VARIANT,
    Manifest,
    Owner,
    child_metadata,
    config_map_name,
    reference_service_name,
    stamp,
)
from grm_operator.control.builders.modelload import is_fetched, variant_revision, variant_uri, weights_path
from grm_operator.policy.capacity import shed_floor
from grm_worker.contract.config import (
    CheckpointQuantization,
    ModelConfig,
    ScoringConfig,
    ShadowConfig,
    VllmOptions,
    WorkerConfig,
)

# On the GRMDeployment: which worker engine to run ("vllm", the default, or "sim" for tests/demos).
ANNOTATION_WORKER_ENGINE = "grm.dev/worker-engine"
# On the GRMDeployment: a JSON object of dotted WorkerConfig keys merged into every variant's config
# (e.g. {"sim.time_scale": 10}), for demos and tests; the worker's model validates the result.
ANNOTATION_WORKER_OVERRIDES = "grm.dev/worker-overrides"

# The format of each integer precision's pre-quantized checkpoint, which tells vLLM how to load it.
_QUANTIZED_CHECKPOINT: dict[str, CheckpointQuantization] = {
    "int8": "compressed-tensors",
    "awq-int4": "awq",
    "gptq-int4": "gptq",
}


def merged_engine(spec: GRMDeploymentSpec, variant: Variant) -> EngineOptions:
    """spec.engine overridden field by field by the variant's engine options."""
    base = spec.engine.model_dump(exclude_none=True)
    if variant.engine is not None:
        base.update(variant.engine.model_dump(exclude_none=True))
    return EngineOptions.model_validate(base)


def _checkpoint_quantization(variant: Variant) -> CheckpointQuantization:
    # A checkpoint the operator built is llm-compressor's compressed-tensors, whatever the scheme
    # (W4A16 included: GPTQ's algorithm, not the gptq format).
    if variant.build is not None:
        return "compressed-tensors"
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
    uri = variant_uri(spec, variant)
    revision = variant_revision(spec, variant)
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
            path=weights_path(uri, revision),
            uri=uri,
            revision=revision,
            endpoint_url=spec.model.endpoint_url if is_fetched(uri) else None,
            served_name=spec.model.served_model_name,
            checkpoint_quantization=_checkpoint_quantization(variant),
            architecture=spec.model.architecture,
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
        **_shadow(grmd, variant),
        port=HTTP_PORT,
        admin_port=ADMIN_PORT,
        drain_timeout_s=float(spec.rollout.drain_seconds),
        connection_max_age_s=parse_duration(spec.rollout.connection_max_age),
    )
    overrides = annotations.get(ANNOTATION_WORKER_OVERRIDES)
    return config if not overrides else apply_overrides(config, overrides)


def _shadow(grmd: GRMDeployment, variant: Variant) -> dict[str, ShadowConfig]:
    """A variant other than the reference shadows spec.precision.shadow.fraction of its score
    requests to the reference variant's Service (by its cluster DNS name); the reference, or a
    fraction of 0, sets nothing (the worker's default: no shadowing)."""
    watch = grmd.spec.precision.shadow
    if variant.name == grmd.spec.variants[0].name or watch.fraction <= 0.0:
        return {}
    service = reference_service_name(grmd.metadata.name)
    url = f"http://{service}.{grmd.metadata.namespace or 'default'}.svc:{HTTP_PORT}"
    return {"shadow": ShadowConfig(fraction=watch.fraction, reference_url=url)}


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
    meta = child_metadata(
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
