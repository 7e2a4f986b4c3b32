"""The GRMDeployment API: pydantic models (the single source of truth) and the CRD built from them."""

from .models import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    GRMDeployment,
    GRMDeploymentSpec,
    GRMDeploymentStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "GRMDeployment",
    "GRMDeploymentSpec",
    "GRMDeploymentStatus",
]
