"""Fixtures for policy tests: specs built from a small base, and the closed-loop fleet."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from grm_operator.api.models import GRMDeploymentSpec

BASE: dict[str, Any] = {
    "model": {"name": "deepseek-ai/DeepSeek-GRM-27B", "uri": "pvc://models/grm-27b"},
    "variants": [
        {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
        {"name": "fp8", "precision": "fp8", "quality": 0.995, "gpusPerReplica": 1},
        {"name": "int4", "precision": "awq-int4", "uri": "pvc://models/grm-awq", "quality": 0.97},
    ],
    "slo": {"ttftP95": "500ms", "e2eP95": "20s"},
    "scaling": {"minReplicas": 1, "maxReplicas": 8, "maxGPUs": 12},
    "precision": {"policy": "Auto", "minQuality": 0.97},
    "scoring": {"samples": {"min": 8, "max": 8}},
}


def make_spec(**overrides: Any) -> GRMDeploymentSpec:
    """BASE with top-level sections merged (a dict value updates that section)."""
    data = {
        k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
        for k, v in BASE.items()
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return GRMDeploymentSpec.model_validate(data)


@pytest.fixture
def spec() -> GRMDeploymentSpec:
    return make_spec()
