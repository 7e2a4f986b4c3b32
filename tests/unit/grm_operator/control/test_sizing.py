"""Worker pod sizing: the parameter count read from model names, the bytes per parameter the
loader reads per precision, and the module's worked example (bf16 DeepSeek-GRM-27B on 2 GPUs)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.control.builders.sizing import (
    PodSize,
    checkpoint_bytes_per_parameter,
    checkpoint_gb,
    derived_size,
    parameters_billions,
)
from support.paths import EXAMPLES

LADDER: dict[str, Any] = yaml.safe_load((EXAMPLES / "grmd-ladder.yaml").read_text())["spec"]


def spec(**model: Any) -> GRMDeploymentSpec:
    body = {**LADDER, "model": {**LADDER["model"], **model}}
    return GRMDeploymentSpec.model_validate(body)


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("deepseek-ai/DeepSeek-GRM-27B", 27.0),
        ("google/gemma-2-27b-it", 27.0),
        ("Qwen/Qwen2.5-0.5B-Instruct", 0.5),
        ("meta-llama/Llama-3.1-8B", 8.0),  # the version 3.1 is not a size
        ("org/reward-model", None),
        ("org/bert-base", None),  # "b" inside a word is not a size
    ],
)
def test_parameters_read_from_the_model_name(name: str, billions: float | None) -> None:
    assert parameters_billions(spec(name=name)) == billions


def test_declared_parameters_win_over_the_name() -> None:
    # A mixture of experts names its active count; the loader reads all of it.
    assert parameters_billions(spec(name="org/Moe-A3B", parametersBillions=30)) == 30


def test_bytes_per_parameter_follow_what_the_loader_reads() -> None:
    s = spec()
    bf16, fp8, int4 = s.variants
    assert checkpoint_bytes_per_parameter(bf16) == 2.0
    # fp8 without a checkpoint of its own reads bf16 weights and quantizes them on the GPU ...
    assert checkpoint_bytes_per_parameter(fp8) == 2.0
    # ... with one, it reads 1 byte per parameter.
    assert checkpoint_bytes_per_parameter(fp8.model_copy(update={"uri": "pvc://models/grm-fp8"})) == 1.1
    assert checkpoint_bytes_per_parameter(int4) == 0.6


def test_the_worked_example_of_the_docs() -> None:
    # 27e9 × 2 B = 50.3 GiB + 2 × 4 GiB + 3 GiB + 2 GiB /dev/shm = 63.3 → 64Gi; limit 1.25 × 64 = 80Gi.
    assert derived_size(spec(), spec().variants[0]) == PodSize(
        cpu="4", memory="64Gi", memory_limit="80Gi", shared_memory="2Gi"
    )


def test_one_checkpoint_size_sizes_both_the_memory_and_the_startup_budget() -> None:
    from grm_operator.control.builders.modelload import startup_budget_s

    measured = spec(name="org/reward-model", weightsGB=20)
    by_name = {v.name: v for v in measured.variants}
    # weightsGB is the bf16 checkpoint; an int4 one holds 0.6 of 2 bytes per parameter.
    assert checkpoint_gb(measured, by_name["bf16"]) == 20
    assert checkpoint_gb(measured, by_name["int4"]) == pytest.approx(6.0)
    # The same number reaches the memory request (20 GB = 18.6 GiB + 8 + 3 + 2 → 32Gi) ...
    assert derived_size(measured, by_name["bf16"]).memory == "32Gi"
    # ... and the startup budget: 1.5 × (60 s + 20 GB / 0.25 GB/s) = 210 s.
    assert startup_budget_s(measured, by_name["bf16"]) == pytest.approx(210.0)
    unknown = spec(name="org/reward-model")
    assert checkpoint_gb(unknown, unknown.variants[0]) is None
