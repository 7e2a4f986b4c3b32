"""Test helpers for the Helm chart helm/grm-operator: the real helm binary from `make tools`,
rendering with given values, the Kubernetes versions kubernetes-validate can check, and rule
sets of rendered (Cluster)Roles.

A missing helm or promtool skips the tests that need it, except under CI (CI=true), where the
Makefile has installed both and a missing binary is an error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from grm_testkit.cluster import tools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "grm-operator"
# The chart's kubeVersion floor and the newest Kubernetes the project targets (issue 8: 1.28–1.35).
MIN_K8S, MAX_K8S = (1, 28), (1, 35)
# Kinds whose schemas come from CRDs, not from Kubernetes' OpenAPI: kubernetes-validate has none.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# The Prometheus Operator's API: the chart renders its ServiceMonitor and PrometheusRule only
# where the cluster serves it (.Capabilities.APIVersions).
PROMETHEUS_OPERATOR_API = "monitoring.coreos.com/v1"

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI installs it)")
    pytest.skip(what)


def helm() -> Path:
    """The helm binary of `make tools`; skips (fails under CI) when absent."""
    path = tools.helm()
    if path is None:
        _missing(f"helm missing in {tools.tools_bin_dir()} (run `make tools`)")
    assert path is not None
    return path


def promtool() -> str:
    """promtool from Debian's prometheus package (`make system-deps`)."""
    path = shutil.which("promtool")
    if path is None:
        _missing("promtool missing (apt-get install prometheus, or `make system-deps` as root)")
    assert path is not None
    return path


def run_helm(
    *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm with a private, empty configuration (no repositories, no user cache)."""
    home = Path(tempfile.gettempdir()) / "grm-helm-home"
    full_env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        **(env or {}),
    }
    proc = subprocess.run(
        [str(helm()), *args], capture_output=True, text=True, timeout=120, env=full_env, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def write_values(values: Mapping[str, Any], directory: Path) -> Path:
    path = directory / f"values-{abs(hash(yaml.safe_dump(dict(values))))}.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "grm",
    namespace: str = "grm-system",
    include_crds: bool = False,
    api_versions: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The chart rendered by `helm template` with ``values``: every non-empty document.

    ``api_versions`` are the APIs the pretended cluster serves beyond Kubernetes' own (e.g.
    :data:`PROMETHEUS_OPERATOR_API`, which the ServiceMonitor and PrometheusRule need)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["template", release, str(CHART), "--namespace", namespace]
        args += ["--values", str(write_values(values or {}, Path(tmp)))]
        if include_crds:
            args.append("--include-crds")
        for api in api_versions:
            args += ["--api-versions", api]
        out = run_helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(values: Mapping[str, Any]) -> str:
    """helm template's error for ``values`` that must be rejected (fails if they are accepted)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = run_helm(
            "template", "grm", str(CHART), "--values", str(write_values(values, Path(tmp))), check=False
        )
    assert proc.returncode != 0, f"values {values} were accepted"
    return proc.stderr


def k8s_versions() -> list[str]:
    """The Kubernetes versions in [MIN_K8S, MAX_K8S] that kubernetes-validate ships schemas of."""
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = set()
    for entry in schemas.iterdir():
        match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", entry.name)
        if match and MIN_K8S <= (int(match[1]), int(match[2])) <= MAX_K8S:
            found.add(f"{match[1]}.{match[2]}.{match[3]}")
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def by_kind(docs: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def triples(rules: Iterable[Mapping[str, Any]]) -> set[Triple]:
    """Every (apiGroup, resource, verb) a list of PolicyRules grants."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }
