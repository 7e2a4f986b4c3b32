"""WorkerConfig validation, file loading and the exact vLLM command line per precision/device."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from grm_worker.contract.config import ConfigError, WorkerConfig, load_config
from grm_worker.engines.vllm import detect_device
from grm_worker.engines.vllm_args import FLOAT16_REFUSED_ARCHITECTURES, vllm_command, vllm_env


def make(**fields: Any) -> WorkerConfig:
    base: dict[str, Any] = {"model": {"name": "grm", "path": "/models/grm"}}
    base.update(fields)
    return WorkerConfig.model_validate(base)


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_bf16_on_gpu_full_command() -> None:
    config = make(
        model={"name": "deepseek-ai/DeepSeek-GRM-27B", "path": "/models/grm", "served_name": "grm"},
        precision="bf16",
        engine_port=8123,
        vllm={"tensor_parallel_size": 2, "max_model_len": 8192, "max_num_seqs": 64, "python": "/py"},
    )
    assert vllm_command(config, device="cuda") == [
        "/py", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/grm", "--served-model-name", "grm",
        "--host", "127.0.0.1", "--port", "8123",
        "--dtype", "bfloat16",
        "--max-model-len", "8192", "--max-num-seqs", "64",
        "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "2",
        "--enable-prefix-caching",
    ]  # fmt: skip


def test_unix_transport_listens_on_the_workers_socket_instead_of_a_port() -> None:
    # The same port as the front: no clash, the child takes no port at all.
    config = make(engine_transport="unix", port=8100, engine_port=8100)
    cmd = vllm_command(config, device="cpu", unix_socket="/tmp/grm-vllm-x/vllm.sock")
    assert flag(cmd, "--uds") == "/tmp/grm-vllm-x/vllm.sock"
    assert "--port" not in cmd and "--host" not in cmd
    # Printed without a start, the command names what the worker will make.
    assert flag(vllm_command(config, device="cpu"), "--uds") == "<private dir>/vllm.sock"


@pytest.mark.parametrize(
    ("precision", "ckpt", "device", "dtype", "quant"),
    [
        ("fp16", "none", "cuda", "float16", None),
        ("bf16", "none", "cpu", "bfloat16", None),
        ("fp8", "none", "cuda", "bfloat16", "fp8"),
        ("fp8", "none", "cpu", "bfloat16", "fp8_per_channel"),
        ("fp8", "compressed-tensors", "cuda", "bfloat16", "compressed-tensors"),
        ("int8", "compressed-tensors", "cuda", "bfloat16", "compressed-tensors"),
        ("int8", "compressed-tensors", "cpu", "bfloat16", "compressed-tensors"),
        ("fp8", "compressed-tensors", "cpu", "bfloat16", "compressed-tensors"),
        ("awq-int4", "awq", "cuda", "float16", "awq_marlin"),
        ("gptq-int4", "gptq", "cuda", "float16", "gptq_marlin"),
    ],
)
def test_precision_mapping(precision: str, ckpt: str, device: str, dtype: str, quant: str | None) -> None:
    config = make(model={"path": "/m", "checkpoint_quantization": ckpt}, precision=precision)
    cmd = vllm_command(config, device=device)  # type: ignore[arg-type]
    assert flag(cmd, "--dtype") == dtype
    assert flag(cmd, "--quantization") == quant


@pytest.mark.parametrize("precision", ["awq-int4", "gptq-int4"])
def test_int4_of_a_gemma2_checkpoint_runs_in_bfloat16(precision: str, tmp_path: Path) -> None:
    # DeepSeek-GRM-27B is a Gemma-2: vLLM refuses --dtype float16 for it, so the int4 rung would
    # crash-loop. The architecture comes from the checkpoint's config.json ...
    ckpt = "awq" if precision == "awq-int4" else "gptq"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma2", "architectures": ["X"]}))
    local = make(model={"path": str(tmp_path), "checkpoint_quantization": ckpt}, precision=precision)
    assert flag(vllm_command(local, device="cuda"), "--dtype") == "bfloat16"
    # ... or, where the weights are not local at start (hf://), from the declared architecture.
    declared = make(
        model={"path": "org/grm-awq", "checkpoint_quantization": ckpt, "architecture": "gemma2"},
        precision=precision,
    )
    assert flag(vllm_command(declared, device="cuda"), "--dtype") == "bfloat16"
    # A Llama keeps float16, what its AWQ/GPTQ checkpoints are calibrated in.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert flag(vllm_command(local, device="cuda"), "--dtype") == "float16"


def test_fp16_of_a_float16_refusing_architecture_is_rejected_at_start() -> None:
    config = make(model={"path": "/m", "architecture": "gemma3"}, precision="fp16")
    with pytest.raises(ConfigError, match=r"fp16 cannot serve gemma3.*use bf16"):
        vllm_command(config, device="cuda")


def test_the_float16_refusals_are_vllms_own() -> None:
    # The list mirrors vLLM's; where the vLLM venv exists, check it has not grown.
    model_py = next(
        Path(__file__)
        .resolve()
        .parents[3]
        .glob(".venv-vllm/lib/python3*/site-packages/vllm/config/model.py"),
        None,
    )
    if model_py is None:
        pytest.skip("no .venv-vllm here (make vllm-venv)")
    text = model_py.read_text()
    block = text[text.index("_FLOAT16_NOT_SUPPORTED_MODELS = {") :].split("}", 1)[0]
    assert set(re.findall(r'"([a-z0-9_]+)":', block)) == FLOAT16_REFUSED_ARCHITECTURES


def test_cpu_omits_gpu_only_flags_and_sets_kv_space() -> None:
    config = make(vllm={"cpu_kvcache_space_gib": 1, "enforce_eager": True, "enable_prefix_caching": False})
    cmd = vllm_command(config, device="cpu")
    assert "--gpu-memory-utilization" not in cmd and "--tensor-parallel-size" not in cmd
    assert "--enforce-eager" in cmd and "--no-enable-prefix-caching" in cmd
    assert vllm_env(config, device="cpu", base={"PATH": "/bin"}) == {
        "PATH": "/bin",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    assert "VLLM_CPU_KVCACHE_SPACE" not in vllm_env(config, device="cuda")


def test_kv_cache_dtype_seed_and_extra_args_in_order() -> None:
    config = make(vllm={"kv_cache_dtype": "fp8", "seed": 7, "extra_args": ["--num-gpu-blocks-override", "8"]})
    cmd = vllm_command(config, device="cuda")
    assert flag(cmd, "--kv-cache-dtype") == "fp8" and flag(cmd, "--seed") == "7"
    assert cmd[-2:] == ["--num-gpu-blocks-override", "8"]


@pytest.mark.parametrize(
    ("fields", "device", "message"),
    [
        ({"precision": "awq-int4"}, "cuda", "pre-quantized awq checkpoint"),
        (
            {"precision": "gptq-int4", "model": {"path": "/m", "checkpoint_quantization": "awq"}},
            "cuda",
            "gptq",
        ),
        ({"precision": "int8"}, "cpu", "compressed-tensors checkpoint"),
        (
            {"precision": "bf16", "model": {"path": "/m", "checkpoint_quantization": "awq"}},
            "cuda",
            "unquantized",
        ),
        ({"vllm": {"kv_cache_dtype": "fp8"}}, "cpu", "fp8 KV cache"),
        ({"vllm": {"tensor_parallel_size": 2}}, "cpu", "tensor_parallel_size > 1"),
        (
            {"precision": "awq-int4", "model": {"path": "/m", "checkpoint_quantization": "awq"}},
            "cpu",
            "Marlin",
        ),
        ({"model": {"name": "x"}}, "cuda", "model.path is required"),
        ({"vllm": {"max_num_seqs": 256, "max_num_batched_tokens": 128}}, "cuda", "max_num_batched_tokens"),
    ],
)
def test_unsupported_combinations_are_rejected(fields: dict[str, Any], device: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        vllm_command(make(**fields), device=device)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"scoring": {"samples_min": 4, "samples_default": 2}},
        {"scoring": {"samples_default": 9, "samples_max": 8}},
        {"sim": {"profile": {"no_such_field": 1.0}}},
        {"port": 8100, "engine_port": 8100},
        {"engine_transport": "udp"},
        {"unknown_top_level": 1},
        {"precision": "int3"},
        {"sim": {"time_scale": 0}},
    ],
)
def test_invalid_configs_fail_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make(**fields)


@pytest.mark.parametrize(
    ("scoring", "error"),
    [
        ({}, None),
        ({"shed_floor": 1}, None),
        ({"samples_max": 16, "shed_floor": 16}, None),
        ({"samples_min": 2, "samples_default": 4, "shed_floor": 1}, "samples_min ≤ shed_floor"),
        ({"samples_max": 8, "shed_floor": 9}, "shed_floor ≤ samples_max"),
        ({"shed_floor": 0}, "shed_floor"),
        ({"shed_poll_s": 0}, "shed_poll_s"),
        ({"shed_poll_s": 61}, "shed_poll_s"),
        ({"shed_queue_s": 0}, "shed_queue_s"),
        ({"shed_queue_s": 61}, "shed_queue_s"),
    ],
)
def test_shed_floor_within_the_sample_bounds(scoring: dict[str, Any], error: str | None) -> None:
    if error is None:
        config = make(scoring=scoring)
        assert config.scoring.shed_floor == scoring.get("shed_floor")
        assert (config.scoring.shed_poll_s, config.scoring.shed_queue_s) == (1.0, 0.25)
        return
    with pytest.raises(ValidationError, match=error):
        make(scoring=scoring)


def test_load_yaml_and_json_with_dotted_overrides(tmp_path: Path) -> None:
    yaml_file = tmp_path / "worker.yaml"
    yaml_file.write_text("engine: sim\nprecision: fp8\nsim:\n  time_scale: 5\nscoring:\n  samples_max: 16\n")
    config = load_config(yaml_file, {"port": 9001, "sim.seed": 3})
    assert (config.engine, config.precision, config.port) == ("sim", "fp8", 9001)
    assert (config.sim.time_scale, config.sim.seed, config.scoring.samples_max) == (5, 3, 16)
    json_file = tmp_path / "worker.json"
    json_file.write_text(config.model_dump_json())
    assert load_config(json_file) == config
    assert load_config(None).engine == "vllm"


def test_schema_documents_every_field() -> None:
    def walk(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
        missing = []
        for name, prop in schema.get("properties", {}).items():
            if "description" not in prop:
                missing.append(name)
        return missing

    schema = WorkerConfig.model_json_schema()
    defs = schema.get("$defs", {})
    missing = walk(schema, defs) + [m for d in defs.values() for m in walk(d, defs)]
    assert missing == []
    json.dumps(schema)  # renderable into a ConfigMap's documentation


@pytest.mark.parametrize(
    ("nodes", "visible", "device"),
    [
        ({"/dev/nvidia0"}, "", "cuda"),
        ({"/dev/kfd"}, "", "cuda"),  # an amd.com/gpu pod: ROCm's kernel driver node
        (set(), "GPU-1234", "cuda"),
        (set(), "void", "cpu"),
        (set(), "", "cpu"),
    ],
)
def test_detect_device_sees_nvidia_and_amd_gpus(
    monkeypatch: pytest.MonkeyPatch, nodes: set[str], visible: str, device: str
) -> None:
    monkeypatch.setattr(os.path, "exists", lambda path: path in nodes)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", visible)
    assert detect_device() == device
