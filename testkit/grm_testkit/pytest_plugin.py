"""The pytest plugin of the test kit (entry point ``pytest11``, loaded wherever the kit is installed):
the real Kubernetes control plane (etcd + kube-apiserver built by `make control-plane`) and
clients for it.

* `control_plane`: one etcd + kube-apiserver for the whole session (RBAC on; no controllers, so
  nothing rewrites the Deployment status a test sets). `.kubeconfig`, `.url`, `.ca_pem`,
  `.kubeconfig_for_user(...)`, `.kubeconfig_for_service_account(...)`.
* `control_plane_controllers`: a second, separate control plane that also runs
  kube-controller-manager and kube-scheduler (Deployments get ReplicaSets and Pods, owner
  references are garbage-collected); started only by the tests that ask for it.
* `kube_api`: a `kubernetes.client.ApiClient` with admin rights on `control_plane`.
* `namespace`: a fresh namespace per test on `control_plane`.

Tests that use a control plane get the `controlplane` marker automatically. When the binaries
are missing they are skipped, except under CI (CI=true), where the Makefile has built them and
a missing binary is an error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from grm_testkit.cluster.controlplane import ControlPlane

_CONTROL_PLANE_FIXTURES = {"control_plane", "control_plane_controllers", "kube_api", "namespace"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _CONTROL_PLANE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.controlplane)


def _start_control_plane(**options: Any) -> ControlPlane:
    from grm_testkit.cluster import tools
    from grm_testkit.cluster.controlplane import ControlPlane, ControlPlaneOptions

    opts = ControlPlaneOptions(**options)
    needed = ["etcd", "kube-apiserver"]
    if opts.controller_manager:
        needed.append("kube-controller-manager")
    if opts.scheduler:
        needed.append("kube-scheduler")
    absent = tools.missing(tools.k8s_bin_dir(), tuple(needed))
    if absent:
        where = tools.k8s_bin_dir()
        reason = f"control-plane binaries {absent} missing in {where} (run `make control-plane`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    plane = ControlPlane(opts)
    plane.start()
    return plane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (RBAC), shared by the whole session; ~3 s to start."""
    plane = _start_control_plane()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def control_plane_controllers() -> Iterator[ControlPlane]:
    """A separate control plane with kube-controller-manager and kube-scheduler too."""
    plane = _start_control_plane(controller_manager=True, scheduler=True)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def kube_api(control_plane: ControlPlane) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` authenticated as the admin of `control_plane`."""
    from kubernetes import config

    # The official client ships no type hints.
    client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    """A namespace created for this test. It is not deleted: without the namespace controller a
    deleted namespace would stay Terminating, and the session's etcd is thrown away anyway."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    status, body = control_plane.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert status == 201, body
    return name
