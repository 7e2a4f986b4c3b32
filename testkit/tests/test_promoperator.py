"""The Prometheus Operator's CRDs the e2e quickstart test applies: upstream's manifests of the
pinned release, one per kind the chart and the operator create, each serving monitoring.coreos.com/v1
with a schema."""

from __future__ import annotations

import pytest
import yaml

from grm_testkit.cluster import promoperator


def test_crds_of_the_pinned_release_serve_v1_with_a_schema() -> None:
    why = promoperator.unavailable()
    if why is not None:
        pytest.skip(why)
    files = promoperator.crd_files()
    assert [p.parent for p in files] == [promoperator.cache_dir()] * 3
    plurals = []
    for path in files:
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition"
        assert crd["spec"]["group"] == "monitoring.coreos.com"
        assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == promoperator.VERSION[1:]
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        assert v1["served"] and v1["storage"]
        assert v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["type"] == "object"
        plurals.append(crd["spec"]["names"]["plural"])
    assert plurals == list(promoperator.PLURALS)
    # Cached: a second call neither needs `go` nor changes the files.
    assert promoperator.crd_files() == files
