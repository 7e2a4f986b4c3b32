"""``grm-operator render``: the operator's own children of a GRMDeployment file as YAML, replica
counts from a status, clear errors (exit 2) on bad input, and every example's objects accepted by
``kubernetes-validate --strict`` for every Kubernetes minor the chart's kubeVersion admits."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from grm_operator import cli, render
from grm_operator.api.models import GRMDeployment
from grm_operator.control.builders import build_children
from grm_operator.control.builders.replicas import initial_replicas
from grm_operator.settings import OperatorSettings
from support.helmchart import CHART
from support.paths import EXAMPLES

LADDER = EXAMPLES / "grmd-ladder.yaml"
GRMD_EXAMPLES = sorted(p for p in EXAMPLES.glob("*.yaml") if "kind: GRMDeployment" in p.read_text())
# Kinds of the Prometheus Operator's CRDs: kubernetes-validate has no schema for them.
CRD_KINDS = {"PodMonitor"}


def run_render(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str, **env: str
) -> tuple[int, list[dict[str, Any]], str]:
    """``grm-operator render ARGV`` with only ``env`` as GRM_* settings: (status, objects, stderr)."""
    for name in OperatorSettings.model_fields:
        monkeypatch.delenv("GRM_" + name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = cli.main(["render", *argv])
    captured = capsys.readouterr()
    return status, [d for d in yaml.safe_load_all(captured.out) if d is not None], captured.err


def by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def replicas(objects: list[dict[str, Any]]) -> dict[str, int]:
    return {name: d["spec"]["replicas"] for name, d in by_name(objects, "Deployment").items()}


# --- what it prints -----------------------------------------------------------------------------


def test_render_prints_the_operators_own_children(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, objects, err = run_render(capsys, monkeypatch, "-f", str(LADDER))
    assert (status, err) == (0, "")
    # Exactly what the reconciler's builders give for a new object (nothing re-implemented).
    body = yaml.safe_load(LADDER.read_text())
    body["metadata"]["uid"] = render.UNASSIGNED_UID
    grmd = GRMDeployment.model_validate(body)
    expected = build_children(grmd, initial_replicas(grmd.spec), OperatorSettings(), pod_monitor=True).all()
    assert objects == expected
    assert [o["kind"] for o in objects] == ["ConfigMap"] * 3 + ["Deployment"] * 3 + [
        "Service",
        "Service",  # <name>-reference, the reference variant's pods (shadow scoring)
        "PodDisruptionBudget",
        "PodMonitor",
    ]
    # A new GRMDeployment runs its best admissible variant at minReplicas.
    assert replicas(objects) == {"reward-bf16": 1, "reward-fp8": 0, "reward-int4": 0}
    assert objects[0]["metadata"]["ownerReferences"][0]["uid"] == render.UNASSIGNED_UID


def test_worker_config_reads_as_a_literal_block(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "-f", str(LADDER)]) == 0
    text = capsys.readouterr().out
    assert "  worker.json: |\n    {\n" in text


def test_installation_settings_come_from_the_operators_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, objects, _ = run_render(
        capsys,
        monkeypatch,
        "-f",
        str(LADDER),
        GRM_WORKER_IMAGE="registry.example/grm-worker:9",
        GRM_PODMONITOR_LABELS='{"release": "kps"}',
    )
    worker = by_name(objects, "Deployment")["reward-bf16"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["image"] == "registry.example/grm-worker:9"
    assert by_name(objects, "PodMonitor")["reward"]["metadata"]["labels"]["release"] == "kps"
    # No PodMonitor where the operator would create none.
    _, objects, _ = run_render(capsys, monkeypatch, "-f", str(LADDER), "--no-pod-monitor")
    assert not by_name(objects, "PodMonitor")
    _, objects, _ = run_render(capsys, monkeypatch, "-f", str(LADDER), GRM_PODMONITOR_ENABLED="false")
    assert not by_name(objects, "PodMonitor")


def test_a_namespace_the_operator_does_not_watch_is_a_warning(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, objects, err = run_render(capsys, monkeypatch, "-f", str(LADDER), GRM_NAMESPACES="eval,prod")
    assert status == 0 and objects  # still rendered: what it would be once the namespace is watched
    assert "warning:" in err and "namespace rl is not watched (GRM_NAMESPACES=eval,prod)" in err
    _, _, err = run_render(capsys, monkeypatch, "-f", str(LADDER), GRM_NAMESPACES="rl")
    assert err == ""


def test_other_kinds_in_the_file_are_the_users_and_skipped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Secret, PersistentVolumeClaim, then the GRMDeployment.
    status, objects, _ = run_render(capsys, monkeypatch, "-f", str(EXAMPLES / "grmd-pvc-hf-secret.yaml"))
    assert status == 0
    assert {o["kind"] for o in objects} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PodMonitor",
    }


def test_namespace_and_uid_of_a_stored_object_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = yaml.safe_load(LADDER.read_text())
    del body["metadata"]["namespace"]
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(body))
    _, objects, _ = run_render(capsys, monkeypatch, "-f", str(plain))
    assert {o["metadata"]["namespace"] for o in objects} == {"default"}
    _, objects, _ = run_render(capsys, monkeypatch, "-f", str(plain), "-n", "rl")
    assert {o["metadata"]["namespace"] for o in objects} == {"rl"}
    body["metadata"].update({"namespace": "eval", "uid": "0b5c1f36-1111-2222-3333-444455556666"})
    stored = tmp_path / "stored.yaml"
    stored.write_text(yaml.safe_dump(body))
    _, objects, _ = run_render(capsys, monkeypatch, "-f", str(stored), "-n", "rl")
    assert {o["metadata"]["namespace"] for o in objects} == {"eval"}
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in objects} == {
        "0b5c1f36-1111-2222-3333-444455556666"
    }


# --- replica counts from a status ---------------------------------------------------------------

SWITCHING = {
    "activeVariant": "bf16",
    "variants": [
        {"name": "bf16", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 2},
        {"name": "fp8", "replicas": 1, "readyReplicas": 0, "desiredReplicas": 1},
    ],
    "switch": {
        "from": "bf16",
        "to": "fp8",
        "started": "2026-01-01T00:00:00Z",
        "targetReplicas": 4,
        "phase": "Surging",
    },
}


def test_status_gives_the_replicas_the_operator_would_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status_file = tmp_path / "status.yaml"
    # A switch bf16 → fp8 in progress: both keep their live counts (the autoscaler owns them).
    status_file.write_text(yaml.safe_dump(SWITCHING))
    _, objects, err = run_render(capsys, monkeypatch, "-f", str(LADDER), "--status", str(status_file))
    assert err == ""
    assert replicas(objects) == {"reward-bf16": 2, "reward-fp8": 1, "reward-int4": 0}
    # fp8 serves, no switch: fp8 keeps its count within [minReplicas, maxReplicas] = [1, 8]; the
    # others are scaled to 0.
    serving = {
        "activeVariant": "fp8",
        "variants": [{"name": "bf16", "desiredReplicas": 1}, {"name": "fp8", "desiredReplicas": 12}],
    }
    status_file.write_text(yaml.safe_dump(serving))
    _, objects, _ = run_render(capsys, monkeypatch, "-f", str(LADDER), "--status", str(status_file))
    assert replicas(objects) == {"reward-bf16": 0, "reward-fp8": 8, "reward-int4": 0}


def test_status_of_kubectl_get_output_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `kubectl get grmd reward -o yaml`: the object with its uid and status, as --status or -f.
    body = yaml.safe_load(LADDER.read_text())
    body["metadata"].update({"uid": "0b5c1f36-1111-2222-3333-444455556666", "resourceVersion": "42"})
    body["status"] = SWITCHING
    stored = tmp_path / "reward.yaml"
    stored.write_text(yaml.safe_dump(body))
    _, inline, _ = run_render(capsys, monkeypatch, "-f", str(stored))
    assert replicas(inline) == {"reward-bf16": 2, "reward-fp8": 1, "reward-int4": 0}
    _, given, _ = run_render(capsys, monkeypatch, "-f", str(LADDER), "--status", str(stored))
    assert replicas(given) == replicas(inline)


# --- bad input: one line naming the file, exit 2 ------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _ladder_with(mutate: Any) -> str:
    body = yaml.safe_load(LADDER.read_text())
    mutate(body)
    return yaml.safe_dump(body)


BAD_INPUTS: dict[str, tuple[str, str]] = {
    "not YAML": ("kind: [GRMDeployment\n", "not YAML"),
    "no GRMDeployment": (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        "no grm.dev/v1alpha1 GRMDeployment",
    ),
    "a list": ("- 1\n- 2\n", "document 1 is not a mapping"),
    "other apiVersion": (
        _ladder_with(lambda b: b.update(apiVersion="grm.dev/v1")),
        "apiVersion 'grm.dev/v1' is not grm.dev/v1alpha1",
    ),
    "quality out of range": (
        _ladder_with(lambda b: b["spec"]["variants"][0].update(quality=1.5)),
        "document 1 (GRMDeployment reward): spec.variants.0.quality",
    ),
    "unknown field": (
        _ladder_with(lambda b: b["spec"].update(replicaz=3)),
        "spec.replicaz: Extra inputs are not permitted",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text, message = BAD_INPUTS[case]
    path = _write(tmp_path, "in.yaml", text)
    status, objects, err = run_render(capsys, monkeypatch, "-f", path)
    assert status == render.EXIT_BAD_INPUT
    assert objects == []  # nothing half-printed
    assert err.startswith(f"grm-operator render: {path}") and err.count("\n") == 1, err
    assert message in err


def test_missing_file_bad_status_and_bad_settings_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = run_render(capsys, monkeypatch, "-f", str(tmp_path / "absent.yaml"))
    assert status == 2 and "absent.yaml: cannot read" in err
    bad_status = _write(tmp_path, "status.yaml", "variants: [{name: bf16, desiredReplicas: -1}]\n")
    status, _, err = run_render(capsys, monkeypatch, "-f", str(LADDER), "--status", bad_status)
    assert status == 2 and "invalid status: variants.0.desiredReplicas" in err
    two = _write(
        tmp_path, "two.yaml", LADDER.read_text() + "---\n" + LADDER.read_text().replace("reward", "other")
    )
    good_status = _write(tmp_path, "good.yaml", yaml.safe_dump(SWITCHING))
    status, _, err = run_render(capsys, monkeypatch, "-f", two, "--status", good_status)
    assert status == 2 and "--status needs a file with one GRMDeployment, it has 2" in err
    status, _, err = run_render(capsys, monkeypatch, "-f", str(LADDER), GRM_PODMONITOR_LABELS="release=x")
    assert status == 2 and "GRM_PODMONITOR_LABELS" in err


def test_render_imports_neither_kopf_nor_the_kubernetes_client() -> None:
    # A CI job or a laptop renders without the operator's runtime (and without a cluster).
    code = (
        "import io, contextlib, sys\n"
        "from grm_operator import cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = cli.main(['render', '-f', {str(LADDER)!r}])\n"
        "assert rc == 0 and 'kind: Deployment' in out.getvalue()\n"
        "print(sorted(m for m in ('kopf', 'kubernetes', 'aiohttp') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- every example, every Kubernetes minor the chart admits -------------------------------------


def admitted_k8s_versions() -> list[str]:
    """The Kubernetes versions kubernetes-validate has strict schemas of that the chart's
    ``kubeVersion`` (``>=MAJOR.MINOR…``) admits: every minor from the floor up."""
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)\.\d+(-0)?", kube_version.strip())
    assert floor is not None, f"kubeVersion {kube_version!r}: this test reads only a '>=' floor"
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = []
    for entry in schemas.iterdir():
        match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", entry.name)
        if match and (int(match[1]), int(match[2])) >= (int(floor[1]), int(floor[2])):
            found.append(f"{match[1]}.{match[2]}.{match[3]}")
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


VERSIONS = admitted_k8s_versions()


def test_versions_reach_from_the_floor_to_the_newest_known() -> None:
    assert VERSIONS[0].startswith("1.28."), VERSIONS
    assert len(VERSIONS) >= 8, VERSIONS  # 1.28 … 1.35 at least


def _rendered(example: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["render", "-f", str(example)]) == 0
    return [d for d in yaml.safe_load_all(out.getvalue()) if d is not None]


@pytest.fixture(scope="module")
def rendered_examples() -> dict[str, list[dict[str, Any]]]:
    return {p.name: _rendered(p) for p in GRMD_EXAMPLES}


def test_every_grmdeployment_example_renders(rendered_examples: dict[str, list[dict[str, Any]]]) -> None:
    assert len(rendered_examples) >= 5
    for name, objects in rendered_examples.items():
        assert by_name(objects, "Deployment"), name


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_examples_validate_strictly(
    rendered_examples: dict[str, list[dict[str, Any]]], version: str
) -> None:
    for name, objects in rendered_examples.items():
        for obj in objects:
            if obj["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']} on {version}: {exc.message}")


def test_the_sleep_lifecycle_action_would_fail_the_floor(
    rendered_examples: dict[str, list[dict[str, Any]]],
) -> None:
    # The check above can fail: the preStop `sleep` action (beta from 1.30) is rejected on 1.28,
    # which is why the builders exec /bin/sleep instead.
    deployment = copy.deepcopy(by_name(rendered_examples["grmd-ladder.yaml"], "Deployment")["reward-bf16"])
    deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {
        "preStop": {"sleep": {"seconds": 5}}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_render_reads_stdin() -> None:
    # `kubectl get grmd reward -o yaml | grm-operator render -f -`
    result = subprocess.run(
        [sys.executable, "-m", "grm_operator.cli", "render", "-f", "-"],
        input=LADDER.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(result.stdout) if d}
    assert {"reward-bf16", "reward-fp8", "reward-int4", "reward"} <= names
