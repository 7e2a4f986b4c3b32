"""Fixtures for policy tests (the builders are in tests/support/policy.py)."""

from __future__ import annotations

import pytest

from grm_operator.api.models import GRMDeploymentSpec
from support.policy import make_spec


@pytest.fixture
def spec() -> GRMDeploymentSpec:
    return make_spec()
