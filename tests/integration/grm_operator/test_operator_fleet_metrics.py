"""The running operator exports the per-GRMDeployment series the Helm chart's alerts and dashboard
read (grm_operator/telemetry.py, fed by handlers/fleetmetrics.py from watch events): they appear
with the object's conditions and variants, follow its status, and vanish when it is deleted.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
TIMEOUT_S = 30.0


def test_fleet_series_follow_the_object(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    operator_process.install_crd(control_plane)
    operator = operator_process.OperatorProcess(
        control_plane.kubeconfig, tmp_path / "operator.log", env={"GRM_NAMESPACES": namespace}
    )
    operator.start()
    try:
        name = f"m{uuid.uuid4().hex[:6]}"
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"] = {"name": name, "namespace": namespace}
        path = f"/apis/grm.dev/v1alpha1/namespaces/{namespace}/grmdeployments"
        status, answer = control_plane.request("POST", path, body)
        assert status == 201, answer
        ids = f'grmdeployment="{name}",namespace="{namespace}"'

        def series() -> dict[str, float]:
            return {k: v for k, v in operator.metrics().items() if ids in k}

        def reconciled() -> dict[str, float] | None:
            got = series()
            ready = f'grm_operator_condition{{condition="Ready",{ids}}}'
            return got if ready in got else None

        try:
            got = operator_process.wait_for(reconciled, TIMEOUT_S, "Ready condition series")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{operator.tail()}")
        # The reconciler created bf16 (minReplicas 1) and no controller runs pods: 0 ready.
        assert got[f'grm_operator_condition{{condition="Ready",{ids}}}'] == 0
        assert got[f'grm_operator_slo_seconds{{{ids},objective="ttftP95"}}'] == 0.5
        assert got[f"grm_operator_switch_in_progress{{{ids}}}"] == 0
        status, answer = control_plane.request("DELETE", f"{path}/{name}")
        assert status == 200, answer
        operator_process.wait_for(lambda: not series(), TIMEOUT_S, "series removed after deletion")
    finally:
        operator.stop()
