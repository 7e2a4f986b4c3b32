"""The Prometheus Operator's real CRDs (PodMonitor, ServiceMonitor, PrometheusRule) for the local
cluster: upstream's own manifests, taken from its Go module through the Go module proxy
(`go mod download`, checked against the checksum database) and copied once into
`.cache/prometheus-operator-crds-<version>/`.

Only the CRDs: no Prometheus Operator runs here (its binary and image are not built). Applied to
the API server they make `monitoring.coreos.com/v1` served with upstream's OpenAPI schema, so the
chart renders its ServiceMonitor and PrometheusRule and the operator creates a PodMonitor per
GRMDeployment, each validated by the schema kube-prometheus-stack installs.

One concept in one module (fetching the Prometheus Operator's CRDs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from grm_testkit.cluster import tools

MODULE = "github.com/prometheus-operator/prometheus-operator"
# Pinned (the one place): the schema the e2e test validates the chart's and the operator's objects
# against. monitoring.coreos.com/v1 has been stable since v0.3x; bump it to test newer CRDs.
VERSION = "v0.85.0"
# The three kinds the chart and the operator create; the module's other CRDs (Prometheus,
# Alertmanager, …) describe the Prometheus Operator's own workloads, which do not run here.
PLURALS = ("podmonitors", "servicemonitors", "prometheusrules")
_EXAMPLE_DIR = "example/prometheus-operator-crd"


def cache_dir() -> Path:
    """`<repo>/.cache/prometheus-operator-crds-<VERSION>`."""
    return tools.repo_root() / ".cache" / f"prometheus-operator-crds-{VERSION}"


def _paths(directory: Path) -> list[Path]:
    return [directory / f"monitoring.coreos.com_{plural}.yaml" for plural in PLURALS]


def unavailable() -> str | None:
    """Why the CRDs cannot be had here (not cached and no `go`), or None."""
    if all(p.is_file() for p in _paths(cache_dir())):
        return None
    if shutil.which("go") is None:
        return (
            f"the Prometheus Operator's CRDs are not in {cache_dir()} and `go` is not installed to fetch them"
        )
    return None


def crd_files() -> list[Path]:
    """The PodMonitor, ServiceMonitor and PrometheusRule CRD manifests of `VERSION`, fetched and
    cached on the first call. Raises RuntimeError when `go mod download` fails."""
    target = cache_dir()
    if all(p.is_file() for p in _paths(target)):
        return _paths(target)
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(unavailable() or "go not found")
    # Outside any module (a temporary directory): `go mod download path@version` then only fetches.
    with tempfile.TemporaryDirectory(prefix="grm-promop-") as scratch:
        result = subprocess.run(
            [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
            cwd=scratch,
            env={**os.environ, "GO111MODULE": "on"},
            capture_output=True,
            text=True,
            timeout=600,
        )
    if result.returncode != 0:
        raise RuntimeError(f"go mod download {MODULE}@{VERSION} failed: {result.stdout}{result.stderr}")
    info = json.loads(result.stdout)
    if info.get("Error"):
        raise RuntimeError(f"go mod download {MODULE}@{VERSION}: {info['Error']}")
    sources = _paths(Path(info["Dir"]) / _EXAMPLE_DIR)
    # Copied into a sibling first and renamed: a concurrent or interrupted first call never leaves
    # a half-filled cache directory that later calls would take as complete.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users of the checkout
    try:
        for source in sources:
            shutil.copyfile(source, staging / source.name)
        try:
            staging.rename(target)
        except OSError:
            if not all(p.is_file() for p in _paths(target)):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _paths(target)
