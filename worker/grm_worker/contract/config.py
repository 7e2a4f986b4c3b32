"""The worker's configuration contract: what one worker pod serves and how.

This is a contract module (pydantic v2 only, importable without vLLM): the operator renders a
:class:`WorkerConfig` as JSON/YAML into a ConfigMap, the worker reads it with
``grm-worker serve --config FILE``. Field names are snake_case and stable; every field is
documented because the description is the contract.

The vLLM command line a config maps to is worker-side only: :mod:`grm_worker.engines.vllm_args`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from grm_worker.contract.perfmodel import PerformanceProfile

__all__ = [
    "DEFAULT_CONNECTION_MAX_AGE_S",
    "CheckpointQuantization",
    "ConfigError",
    "Device",
    "EngineKind",
    "KvCacheDtype",
    "ModelConfig",
    "Precision",
    "ScoringConfig",
    "ShadowConfig",
    "SimConfig",
    "VllmOptions",
    "WorkerConfig",
    "load_config",
]

Precision = Literal["bf16", "fp16", "fp8", "int8", "awq-int4", "gptq-int4"]
EngineKind = Literal["vllm", "sim"]
Device = Literal["cuda", "cpu"]
CheckpointQuantization = Literal["none", "compressed-tensors", "awq", "gptq"]
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]


#: Default of :attr:`WorkerConfig.connection_max_age_s`, chosen by the measurement in docs/worker.md
#: ("Connections, drain and scale-up"): a keep-alive pool reaches a new replica's share within
#: about this long, for one reconnect per connection per 30 s (0.03 connections/s per connection).
DEFAULT_CONNECTION_MAX_AGE_S = 30.0


class ConfigError(ValueError):
    """A configuration the worker cannot serve (raised at start-up, never at a request)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """The model the worker serves."""

    name: str = Field(
        "grm", min_length=1, description="Model name, e.g. deepseek-ai/DeepSeek-GRM-27B (informational)."
    )
    path: str | None = Field(
        None,
        description="Local directory (or Hugging Face id resolvable offline) vLLM loads. Required for the "
        "vllm engine; the operator mounts a pvc:// uri here, and the fetch-model init step downloads "
        "an s3:// or hf:// uri here.",
    )
    uri: str | None = Field(
        None,
        description="Where the weights come from (pvc://, s3://, hf://). For s3:// and hf:// the "
        "`grm-worker fetch-model` init step downloads them into `path` before vLLM starts.",
    )
    revision: str | None = Field(
        None,
        description="hf:// only: the branch, tag or commit to download (the Hub's default branch if unset).",
    )
    endpoint_url: str | None = Field(
        None,
        description="Where fetch-model downloads from instead of the public service: an S3-compatible "
        "endpoint (MinIO, Ceph RGW) for s3://, a Hub mirror for hf://.",
    )
    served_name: str | None = Field(
        None, description="Name clients use in the `model` field; defaults to `name`."
    )
    checkpoint_quantization: CheckpointQuantization = Field(
        "none",
        description="Quantization the checkpoint at `path` already carries: none (bf16/fp16 weights), "
        "compressed-tensors (e.g. W8A8 int8 or fp8), awq or gptq (int4).",
    )

    architecture: str | None = Field(
        None,
        description="The checkpoint's model_type (its config.json), e.g. gemma2; chooses the dtype "
        "of AWQ/GPTQ variants. None: read from <path>/config.json when path is a local checkpoint.",
    )

    @property
    def public_name(self) -> str:
        """The name served in ``/v1/models`` and matched against requests' ``model``."""
        return self.served_name or self.name


class VllmOptions(_Section):
    """Engine options passed to vLLM (the sim engine honours the scheduling limits too)."""

    python: str | None = Field(
        None,
        description="Python interpreter that has vLLM installed (e.g. .venv-vllm/bin/python); "
        "defaults to the worker's own interpreter.",
    )
    max_model_len: int | None = Field(None, ge=16, description="--max-model-len: longest prompt+output.")
    max_num_seqs: int = Field(256, ge=1, le=65536, description="--max-num-seqs: sequences decoding at once.")
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="--max-num-batched-tokens: token budget of one step (chunked prefill)."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="--gpu-memory-utilization (GPU only)."
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="--tensor-parallel-size: GPUs per replica.")
    enable_prefix_caching: bool = Field(True, description="vLLM --enable-prefix-caching.")
    kv_cache_dtype: KvCacheDtype = Field("auto", description="--kv-cache-dtype (fp8 GPU only).")
    enforce_eager: bool = Field(False, description="--enforce-eager: no CUDA graphs.")
    seed: int | None = Field(None, description="--seed for vLLM's sampler.")
    cpu_kvcache_space_gib: int = Field(
        4, ge=1, description="VLLM_CPU_KVCACHE_SPACE on the CPU backend: GiB of KV cache."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="Further vLLM arguments, appended verbatim.",
    )
    extra_env: dict[str, str] = Field(default_factory=dict, description="Extra env of the vLLM process.")
    startup_timeout_s: float = Field(
        900.0, gt=0, description="Seconds the engine may take to answer /health before the worker gives up."
    )
    health_check_period_s: float = Field(
        5.0, gt=0, description="After start, seconds between the worker's checks of the engine's /health."
    )
    health_check_failures: int = Field(
        6, ge=1, description="Failed /health checks in a row after which the worker exits (hung engine)."
    )


class ScoringConfig(_Section):
    """The GRM scoring front (/v1/grm/score): k-sample voting with exact early exit."""

    samples_min: int = Field(1, ge=1, le=64, description="Lowest sample budget the operator may set.")
    samples_max: int = Field(8, ge=1, le=64, description="Highest sample budget (and per-request cap).")
    samples_default: int = Field(4, ge=1, le=64, description="Sample budget at start (within [min, max]).")
    samples_per_round: int = Field(
        4,
        ge=1,
        le=64,
        description="Samples asked of the engine per round (`n`); early exit is checked between rounds.",
    )
    early_exit: Literal["exact", "off"] = Field(
        "exact",
        description="exact: stop once no remaining sample can change the winner; "
        "off: always the full budget.",
    )
    sampling: Literal["shuffled", "shared-prefill"] = Field(
        "shuffled",
        description="shuffled: responses re-shuffled per sample (one prefill each, DeepSeek-GRM's recipe); "
        "shared-prefill: one shuffled prompt per round sampled n times (one prefill).",
    )
    max_responses: int = Field(16, ge=2, le=64, description="Most responses one score request may carry.")
    max_tokens: int = Field(512, ge=16, description="Token limit of one critique.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature of critiques.")
    shed_floor: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Samples a new score request gets while the engine has requests waiting (the fewest "
        "that meet precision.minQuality on this variant); None: always the budget.",
    )
    shed_queue_s: float = Field(
        0.25,
        gt=0.0,
        le=60.0,
        description="Mean wait in the engine's queue (of the requests admitted since the last read) from "
        "which its queue means a full batch; a queue that admitted nothing between two reads counts too. "
        "Shorter waits are requests between two engine steps (10-100 ms).",
    )
    shed_poll_s: float = Field(
        1.0,
        gt=0.0,
        le=60.0,
        description="Seconds between the front's reads of the engine's queue (vllm:num_requests_waiting) "
        "while shedding is on.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ScoringConfig:
        if not self.samples_min <= self.samples_default <= self.samples_max:
            raise ValueError(
                f"need samples_min ≤ samples_default ≤ samples_max, got "
                f"{self.samples_min} ≤ {self.samples_default} ≤ {self.samples_max}"
            )
        if self.shed_floor is not None and not self.samples_min <= self.shed_floor <= self.samples_max:
            raise ValueError(
                f"need samples_min ≤ shed_floor ≤ samples_max, got "
                f"{self.samples_min} ≤ {self.shed_floor} ≤ {self.samples_max}"
            )
        return self


class ShadowConfig(_Section):
    """Quality watched while serving: a fraction of live score requests re-scored by the reference.

    After the user's response is sent, a sampled score request is sent again, in the background,
    to ``reference_url`` (the reference variant's Service); the two verdicts (which response wins)
    are compared and counted in ``grm_shadow_verdicts_total`` / ``grm_shadow_agreements_total``,
    which the operator reads to demote a variant whose live agreement falls below the floor.
    While the reference does not answer, sampled requests wait in a bounded reservoir and are
    replayed once it does. Shadow work never delays a user's request: a bounded queue (full:
    dropped), a few concurrent shadow requests, a timeout each.
    """

    fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Fraction of successful score requests shadowed to the reference (0: none).",
    )
    reference_url: str | None = Field(
        None,
        description="Base URL of the reference variant's workers (its Service), e.g. "
        "http://reward-reference.rl.svc:8000. None: no shadowing (this worker is the reference).",
    )
    timeout_s: float = Field(
        120.0,
        gt=0.0,
        le=3600.0,
        description="Seconds one shadow score may take on the reference before it is given up "
        "(a reference under load takes its e2e latency, seconds to tens of seconds).",
    )
    concurrency: int = Field(
        2, ge=1, le=64, description="Shadow score requests in flight to the reference at once."
    )
    queue_size: int = Field(
        32, ge=1, le=4096, description="Sampled requests waiting to be shadowed; more are dropped."
    )
    reservoir_size: int = Field(
        256,
        ge=0,
        le=65536,
        description="Sampled requests kept (a uniform reservoir sample) while the reference does not "
        "answer, replayed against it once it does; 0: none kept.",
    )
    probe_interval_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="Seconds between checks whether an unreachable reference answers again.",
    )


class SimConfig(_Section):
    """The simulated engine: vLLM's API and metrics, latency from :mod:`grm_worker.contract.perfmodel`."""

    time_scale: float = Field(
        1.0,
        gt=0.0,
        le=10000.0,
        description="Run N× faster than real time; reported latencies stay in simulated seconds.",
    )
    startup_delay_s: float = Field(
        0.0,
        ge=0.0,
        description="Simulated seconds before the engine is ready (model load).",
    )
    jitter: float = Field(
        0.0, ge=0.0, le=1.0, description="Relative standard deviation of each step's duration (log-normal)."
    )
    profile: dict[str, float] = Field(
        default_factory=dict,
        description="Overrides of the precision's default PerformanceProfile fields (e.g. step_overhead_s).",
    )
    seed: int = Field(0, description="Seed of jitter and generated text.")
    verdict_flip: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of GRM prompts (a stable draw per set of responses) this engine ranks "
        "backwards: a broken variant whose verdicts disagree with a correct one's on about that "
        "fraction of score requests (tests of the quality gate and of live agreement).",
    )
    output_tokens: int = Field(
        300,
        ge=1,
        description="Tokens of a critique the sim generates for GRM prompts (capped by max_tokens).",
    )
    gpu_util_window_s: float = Field(
        1.0,
        gt=0.0,
        description=(
            "Simulated seconds over which grm_worker_gpu_utilization_ratio averages the busy fraction."
        ),
    )

    @model_validator(mode="after")
    def _known_profile_fields(self) -> SimConfig:
        unknown = set(self.profile) - set(PerformanceProfile.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown sim.profile fields: {', '.join(sorted(unknown))}")
        return self


class WorkerConfig(BaseModel):
    """Everything one worker pod needs: model, precision variant, engine, scoring, ports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig = Field(default_factory=ModelConfig, description="The model served.")
    variant: str = Field("default", min_length=1, description="Name of the precision variant (e.g. fp8).")
    precision: Precision = Field("bf16", description="Weights/compute precision of the variant.")
    engine: EngineKind = Field("vllm", description="vllm: real vLLM child process; sim: simulated engine.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Where vLLM runs; auto picks cuda when an NVIDIA GPU is visible."
    )
    vllm: VllmOptions = Field(default_factory=VllmOptions, description="vLLM engine options.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="GRM scoring front.")
    sim: SimConfig = Field(default_factory=SimConfig, description="Simulated engine settings.")
    shadow: ShadowConfig = Field(
        default_factory=ShadowConfig,
        description="Live agreement with the reference variant (shadowed score requests).",
    )
    host: str = Field("0.0.0.0", description="Address the front listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the front (OpenAI API, score, metrics).")
    admin_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "Port of the admin API (/admin/samples, /admin/sim), a listener of its own on `host` "
            "that the GRMDeployment's Service never lists, so clients of the Service cannot set "
            "the sample budget or inject faults; every request must also carry the bearer token "
            "of the environment variable GRM_ADMIN_TOKEN (never in this config). The operator "
            "sets it (8001); unset: no admin API."
        ),
    )
    engine_port: int = Field(
        8100,
        ge=1,
        le=65535,
        description=(
            "Loopback port of the vLLM child with engine_transport tcp (must differ per worker on a host)."
        ),
    )
    engine_transport: Literal["tcp", "unix"] = Field(
        "tcp",
        description=(
            "How the front reaches its vLLM child. tcp: 127.0.0.1:engine_port. unix: a Unix socket "
            "in a private directory the worker creates at each start (vLLM's --uds), which no other "
            "process can take or answer on; for workers that share one network namespace, as in "
            "the local cluster. Needs a vLLM server that takes --uds (added in 2025; 0.32 has it)."
        ),
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0.0,
        description="On SIGTERM, seconds the drain may take: the worker stops being Ready, keeps serving "
        "every request (each answered with `Connection: close`), closes idle connections, and stops the "
        "engine once no connection is left or this time has passed.",
    )
    connection_max_age_s: float = Field(
        DEFAULT_CONNECTION_MAX_AGE_S,
        ge=0.0,
        le=86400.0,
        description="Age (seconds since its first request, ±10 % jitter per connection) after which the "
        "front answers a connection's next response with `Connection: close`, like gRPC's "
        "MaxConnectionAge: a keep-alive client then reconnects, and kube-proxy (which balances per "
        "connection) spreads its connections over the replicas there are now, new ones included. "
        "0: connections live as long as the client keeps them (a keep-alive pool then never "
        "reaches a replica added after it connected).",
    )
    connection_max_requests: int | None = Field(
        None,
        ge=1,
        description="Responses after which the front closes a connection (`Connection: close` on the "
        "last); None: no limit. The age limit bounds the time to rebalance whatever the request "
        "rate; this one recycles busy connections sooner.",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> WorkerConfig:
        if self.engine == "vllm" and self.engine_transport == "tcp" and self.port == self.engine_port:
            raise ValueError(f"port and engine_port must differ, both are {self.port}")
        return self


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> WorkerConfig:
    """Read a config from a JSON or YAML file (or defaults when ``path`` is None), then apply
    ``overrides``: dotted keys such as ``{"sim.time_scale": 10, "port": 9000}``."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return WorkerConfig.model_validate(data)
