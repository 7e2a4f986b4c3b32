"""`--real-cluster` proved on a cluster we have: the local cluster seen only through its admin
kubeconfig, as any other cluster would be.

A bare local cluster (no operator) is started on the real node (kubelet, containerd) with the
project's images loaded; then `pytest e2e/test_grm_scenarios.py -k apply --real-cluster
--helm-set ...` (the images' names, as a user names the registry they pushed them to) runs as a
subprocess *inside* its network namespace (where the kubeconfig's server,
https://10.244.255.2:6443, is reachable, as a real cluster's API server is from a workstation) with
`KUBECONFIG` set to that kubeconfig. In that mode the e2e fixture does what it would on a real
cluster: `helm install` of the chart (the release does not exist yet), `kubectl proxy` on a
loopback port, every API call and every Service request through the proxy and the API server's
service proxy, `helm uninstall` at the end. The inner test must pass, not skip; the namespace and
Events it left in this cluster show it ran here.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from grm_testkit.cluster import pyimages, tools
from grm_testkit.cluster.localcluster import LocalCluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# The name the inner test gives its GRMDeployment (test_grm_scenarios.py).
INNER_GRMD = "e2e-apply"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def bare(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A local cluster without the operator (the inner run installs it), 4 GPUs: the inner test's
    one bf16 replica takes 2."""
    if request.config.getoption("--real-cluster"):
        pytest.skip("proves --real-cluster on a local cluster; not itself run with --real-cluster")
    why = LocalCluster.unavailable() or pyimages.missing()
    if why is not None:
        _skip_or_fail(why)
    if tools.kubectl() is None or tools.helm() is None:
        _skip_or_fail(f"kubectl/helm not installed in {tools.tools_bin_dir()} (run `make tools`)")
    with LocalCluster(gpus=4, prometheus=False, start_timeout_s=300) as cluster:
        yield cluster


def test_scenario_passes_with_real_cluster_option_against_a_kubeconfig(
    bare: LocalCluster, tmp_path: Path
) -> None:
    status, _ = bare.api("GET", "/api/v1/namespaces/grm-system")
    assert status == 404, "the operator's namespace exists before the inner run"
    # The images are in the node's containerd; the inner run names them as a user names theirs.
    values = pyimages.load_project_images(bare)
    pairs = zip(values[::2], values[1::2], strict=True)
    helm_set = [f"--helm-set={value}" for flag, value in pairs if flag == "--set"]
    junit = tmp_path / "inner.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "e2e/test_grm_scenarios.py",
        "-k",
        "apply",
        "--real-cluster",
        *helm_set,
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
        f"--junitxml={junit}",
    ]
    # KUBECONFIG is what the user of a real cluster sets; nothing else tells the inner run where
    # the cluster is. PYTEST_ADDOPTS of the outer run must not leak in.
    env = {"KUBECONFIG": str(bare.kubeconfig), "PYTEST_ADDOPTS": ""}
    result = bare.run(argv, env=env, cwd=REPO, timeout_s=480, check=False)
    output = f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, output
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": 1, "failures": 0, "errors": 0, "skipped": 0}, (counts, output)
    cases = [case.get("name") for case in suite.iter("testcase")]
    assert len(cases) == 1 and "apply" in str(cases[0]), cases

    # It ran against this cluster: helm's --create-namespace left grm-system (helm uninstall keeps
    # namespaces), and the operator's Events about the inner GRMDeployment are here.
    assert bare.get("/api/v1/namespaces/grm-system")["metadata"]["name"] == "grm-system"
    events = bare.get(f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{INNER_GRMD}")
    kinds = {e["involvedObject"].get("kind") for e in events["items"]}
    assert "GRMDeployment" in kinds, events["items"][:3]
    # The release was uninstalled at the end (it was installed by the inner run, not found there).
    releases = bare.helm("list", "-n", "grm-system", "-q").stdout.split()
    assert releases == [], releases
