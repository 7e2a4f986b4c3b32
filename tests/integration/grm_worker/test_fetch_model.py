"""``grm-worker fetch-model`` offline: s3:// against a local S3-compatible server (moto in server
mode, on loopback): every object under the prefix lands in model.path, complete files are
skipped, an interrupted object resumes from its ``.part`` file, a changed object is fetched
again; hf:// against a fake Hub (``support.fakehub``, reached through ``endpoint_url`` as a Hub
mirror would be): the revision asked for, the token sent, complete files not downloaded again.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from grm_worker.contract.config import ModelConfig
from grm_worker.fetch import MANIFEST, FetchError, _part_path, fetch_model, fetch_s3
from support.fakehub import FakeHub

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "models"
SHARD = bytes(range(256)) * 12_288  # 3 MiB: several 8 MiB-chunk reads would hide nothing smaller
FILES = {
    "grm-27b/config.json": b'{"architectures": ["Gemma2ForCausalLM"]}',
    "grm-27b/model-00001-of-00001.safetensors": SHARD,
    "grm-27b/tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, S3Client]]:
    """A moto S3 server on a free loopback port with the bucket ``models`` filled."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    for key, body in FILES.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    client.put_object(Bucket=BUCKET, Key="grm-27b-awq/config.json", Body=b"{}")  # a sibling prefix
    try:
        yield endpoint, client
    finally:
        server.stop()


HUB_REPOS = {
    "org/grm": {
        "v1": ("a" * 40, {"config.json": b'{"v": 1}', "model.safetensors": b"1" * 5000}),
        "main": ("b" * 40, {"config.json": b'{"v": 2}', "model.safetensors": b"2" * 5000}),
    }
}


def _fetch_cli(
    tmp_path: Path, model: dict[str, str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "worker.json").write_text(json.dumps({"model": {"name": "grm", **model}}))
    return subprocess.run(
        [sys.executable, "-m", "grm_worker.cli", "fetch-model", "--config", str(tmp_path / "worker.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


def _assert_checkpoint(dest: Path) -> None:
    for key, body in FILES.items():
        assert (dest / key.removeprefix("grm-27b/")).read_bytes() == body
    assert not (dest / "config.json.part").exists()
    assert not list(dest.rglob("*.part"))


def test_cli_downloads_every_object_under_the_prefix(s3: tuple[str, S3Client], tmp_path: Path) -> None:
    endpoint, _client = s3
    dest = tmp_path / "weights"
    model = {"uri": f"s3://{BUCKET}/grm-27b", "path": str(dest), "endpoint_url": endpoint}
    done = _fetch_cli(tmp_path, model, {})
    assert done.returncode == 0, done.stderr
    _assert_checkpoint(dest)
    # Only the prefix "grm-27b/", not its sibling "grm-27b-awq/".
    assert sorted(p.name for p in dest.iterdir()) == [
        MANIFEST,
        "config.json",
        "model-00001-of-00001.safetensors",
        "tokenizer",
    ]
    assert "fetch s3://models/grm-27b: 0.00 of 0.00 GB" in done.stderr
    assert "fetch-model done: 3 files (0 already complete)" in done.stderr


def test_complete_files_are_skipped_and_a_partial_one_resumes(
    s3: tuple[str, S3Client], tmp_path: Path
) -> None:
    endpoint, client = s3
    uri = f"s3://{BUCKET}/grm-27b/"
    dest = tmp_path / "weights"
    first = fetch_s3(uri, dest, endpoint_url=endpoint)
    assert (first.files_downloaded, first.bytes_downloaded) == (3, sum(map(len, FILES.values())))

    again = fetch_s3(uri, dest, endpoint_url=endpoint)
    assert (again.files_skipped, again.bytes_downloaded) == (3, 0)

    # An interrupted download: the shard is gone, its first MiB is in the .part file.
    shard = dest / "model-00001-of-00001.safetensors"
    etag = client.head_object(Bucket=BUCKET, Key="grm-27b/model-00001-of-00001.safetensors")["ETag"]
    shard.unlink()
    _part_path(shard, etag).write_bytes(SHARD[: 1 << 20])
    resumed = fetch_s3(uri, dest, endpoint_url=endpoint)
    assert (resumed.files_skipped, resumed.files_downloaded) == (2, 1)
    assert resumed.bytes_downloaded == len(SHARD) - (1 << 20)
    _assert_checkpoint(dest)


def test_a_changed_object_of_the_same_size_is_fetched_again(s3: tuple[str, S3Client], tmp_path: Path) -> None:
    endpoint, client = s3
    dest = tmp_path / "weights"
    fetch_s3(f"s3://{BUCKET}/grm-27b", dest, endpoint_url=endpoint)
    changed = SHARD[::-1]
    client.put_object(Bucket=BUCKET, Key="grm-27b/model-00001-of-00001.safetensors", Body=changed)
    # A stale part of the old version must not be resumed either.
    report = fetch_s3(f"s3://{BUCKET}/grm-27b", dest, endpoint_url=endpoint)
    assert (report.files_downloaded, report.bytes_downloaded) == (1, len(changed))
    assert (dest / "model-00001-of-00001.safetensors").read_bytes() == changed


def test_a_second_pod_waits_for_the_first_ones_download(s3: tuple[str, S3Client], tmp_path: Path) -> None:
    """Replicas share the cache: while one holds the download lock, another writes nothing."""
    endpoint, _client = s3
    dest = tmp_path / "weights"
    (tmp_path / "worker.json").write_text(
        json.dumps({"model": {"uri": f"s3://{BUCKET}/grm-27b", "path": str(dest), "endpoint_url": endpoint}})
    )
    command = [
        sys.executable,
        "-m",
        "grm_worker.cli",
        "fetch-model",
        "--config",
        str(tmp_path / "worker.json"),
    ]
    with (tmp_path / "weights.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first pod, mid-download
        second = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert second.stderr is not None
        lines = []
        for line in second.stderr:  # ends when the process exits: a missing lock fails below
            lines.append(line)
            if "another pod is downloading" in line:
                break
        assert "another pod is downloading" in "".join(lines), "".join(lines)
        assert second.poll() is None
        assert not dest.exists() or not any(dest.iterdir())
        fcntl.flock(held, fcntl.LOCK_UN)
    rest = second.communicate(timeout=120)[1]
    assert second.returncode == 0, rest
    _assert_checkpoint(dest)


def test_an_empty_prefix_and_an_s3_revision_are_clear_errors(
    s3: tuple[str, S3Client], tmp_path: Path
) -> None:
    endpoint, _client = s3
    with pytest.raises(FetchError, match="no objects under s3://models/nothing-here"):
        fetch_s3(f"s3://{BUCKET}/nothing-here", tmp_path / "w", endpoint_url=endpoint)
    model = ModelConfig(
        uri=f"s3://{BUCKET}/grm-27b", path=str(tmp_path / "w"), revision="v1", endpoint_url=endpoint
    )
    with pytest.raises(FetchError, match="revision applies to hf:// only"):
        fetch_model(model)


def test_pvc_and_local_paths_need_no_download(tmp_path: Path) -> None:
    report = fetch_model(ModelConfig(uri="pvc://models/grm", path=str(tmp_path / "never")))
    assert report.files_total == 0
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(("revision", "expected"), [("v1", b'{"v": 1}'), (None, b'{"v": 2}')])
def test_hf_downloads_the_revision_with_the_token(
    tmp_path: Path, revision: str | None, expected: bytes
) -> None:
    dest = tmp_path / "weights"
    model = {"uri": "hf://org/grm", "path": str(dest)}
    if revision is not None:
        model["revision"] = revision
    env = {"HF_TOKEN": "hf_secret", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with FakeHub(HUB_REPOS) as hub:
        first = _fetch_cli(tmp_path, {**model, "endpoint_url": hub.url}, env)
        assert first.returncode == 0, first.stderr
        assert (dest / "config.json").read_bytes() == expected
        assert {r.authorization for r in hub.requests} == {"Bearer hf_secret"}
        assert hub.requests[0].path == f"/api/models/org/grm/revision/{revision or 'main'}"
        downloads = [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
        assert len(downloads) == 2
        hub.requests.clear()
        again = _fetch_cli(tmp_path, {**model, "endpoint_url": hub.url}, env)
        assert again.returncode == 0, again.stderr
        assert not [r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
        assert "fetch-model done: 2 files (2 already complete)" in again.stderr


def test_hf_unknown_revision_fails_the_step(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with FakeHub(HUB_REPOS) as hub:
        model = {
            "uri": "hf://org/grm",
            "revision": "v9",
            "path": str(tmp_path / "w"),
            "endpoint_url": hub.url,
        }
        done = _fetch_cli(tmp_path, model, env)
    assert done.returncode == 1
    assert "fetch-model failed" in done.stderr
    assert "v9" in done.stderr


def test_the_operators_init_container_fetches_from_s3(s3: tuple[str, S3Client], tmp_path: Path) -> None:
    """The operator's fetch-model init container, run as the kubelet would: its command on the
    ConfigMap the operator built, its environment with the Secret's keys resolved; only the
    cache directory is moved under tmp_path (the pod mounts it at /models)."""
    from grm_operator.api.models import GRMDeployment
    from grm_operator.control.builders import build_children
    from grm_operator.control.builders.replicas import initial_replicas
    from grm_operator.settings import OperatorSettings
    from support.paths import EXAMPLES

    endpoint, _client = s3
    body = yaml.safe_load((EXAMPLES / "grmd-ladder.yaml").read_text())
    body["metadata"]["uid"] = "0b5c1f36-1111-2222-3333-444455556666"
    body["spec"]["model"].update(
        uri=f"s3://{BUCKET}/grm-27b", credentialsSecretRef={"name": "minio"}, endpointURL=endpoint
    )
    grmd = GRMDeployment.model_validate(body)
    built = build_children(grmd, initial_replicas(grmd.spec), OperatorSettings())
    (init,) = built.deployments["bf16"]["spec"]["template"]["spec"]["initContainers"]
    config_file = tmp_path / "worker.json"
    config_file.write_text(built.config_maps["bf16"]["data"]["worker.json"])
    secret = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # no session token
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    for var in init["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"]["secretKeyRef"]["key"] in secret:
            env[var["name"]] = secret[var["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert var["valueFrom"]["secretKeyRef"].get("optional") is True, var
    env["HOME"] = env["HF_HOME"] = env["XDG_CACHE_HOME"] = str(tmp_path)
    path = json.loads(config_file.read_text())["model"]["path"]
    assert path == "/models/weights/s3/models/grm-27b"
    dest = tmp_path / path.removeprefix("/")
    command = [*init["command"], "--model-path", str(dest)]
    command[command.index("/etc/grm/worker.json")] = str(config_file)
    assert command[:2] == ["grm-worker", "fetch-model"]
    done = subprocess.run(
        [sys.executable, "-m", "grm_worker.cli", *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _assert_checkpoint(dest)
