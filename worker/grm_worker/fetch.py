"""Model fetching: ``grm-worker fetch-model``, the init step that puts an ``s3://`` or ``hf://``
checkpoint into the model cache volume before the worker (and vLLM) starts.

Why an init step and not vLLM's own loaders: a 27B checkpoint is 54.5 GB in bf16; at 100 MB/s
that is 9 minutes, far beyond any sensible startup probe. An init container is not probed, so the
download takes as long as it takes, and the worker's startup probe only has to cover loading
local weights (``docs/worker.md``, "Model loading"). vLLM's ``--load-format runai_streamer``
streams safetensors from S3 straight into GPU memory, but it re-reads the whole checkpoint from
the bucket at every start (every replica, every restart), needs the weights to be safetensors
and keeps credentials in the serving container; downloading once into the cache volume (a
PersistentVolumeClaim shared by the replicas, ``spec.template.modelCache.claimName``) pays the
transfer once.

* ``s3://bucket/prefix``: every object under ``prefix/`` is downloaded with boto3 (credentials
  from the standard ``AWS_*`` environment, ``endpoint_url`` for MinIO and other S3-compatible
  stores). Resumable: an object whose local file has the listed size and whose ETag the manifest
  ``.grm-fetch.json`` recorded is skipped; an interrupted object continues from its ``.part``
  file with a ranged GET conditioned on the same ETag (a changed object starts over).
* ``hf://org/repo``: ``huggingface_hub.snapshot_download`` at ``revision`` into the directory
  (it resumes and skips complete files itself; ``HF_TOKEN`` and ``HF_ENDPOINT`` from the
  environment, ``endpoint_url`` wins over ``HF_ENDPOINT``).
* ``pvc://`` and local paths need no download: the step returns at once.

Replicas share the cache (a ReadWriteMany claim), so several pods may start the same download at
once: the step holds an exclusive ``flock`` on ``<path>.lock`` beside the directory while it
downloads, and a second pod waits for it, then finds every file complete and skips it. (flock
works across nodes on NFSv4-based claims such as EFS, Filestore and Azure Files NFS; on a
filesystem without it the lock is node-local and the ETag check still keeps files whole.)

Progress is logged at most every ``progress_interval_s`` seconds and after every file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from grm_worker.contract.config import ModelConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["FetchError", "FetchReport", "fetch_hf", "fetch_model", "fetch_s3", "needs_fetch"]

log = logging.getLogger("grm_worker.fetch")

MANIFEST = ".grm-fetch.json"
# 8 MiB reads: large enough that per-call overhead is negligible at 1 GB/s, small enough that an
# interrupted object loses little and progress lines stay frequent.
CHUNK_BYTES = 8 * 1024 * 1024
PROGRESS_INTERVAL_S = 10.0
_FETCHED_SCHEMES = ("s3://", "hf://")


class FetchError(RuntimeError):
    """The checkpoint cannot be fetched (nothing at the URI, a bad key, a changed object)."""


@dataclass
class FetchReport:
    """What one fetch did: files and bytes found, downloaded, and skipped as already complete."""

    files_total: int = 0
    files_skipped: int = 0
    files_downloaded: int = 0
    bytes_total: int = 0
    bytes_downloaded: int = 0


def needs_fetch(uri: str | None) -> bool:
    """Whether a model URI is downloaded by the fetch step (s3:// and hf://)."""
    return uri is not None and uri.startswith(_FETCHED_SCHEMES)


class _Progress:
    """Logs bytes done out of the total, the rate and the file count, at most every interval."""

    def __init__(self, uri: str, total_bytes: int, interval_s: float, clock: Callable[[], float]) -> None:
        self.uri = uri
        self.total = total_bytes
        self.done = 0
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self.last_log = self.started

    def add(self, n: int, *, force: bool = False, file: str = "") -> None:
        self.done += n
        now = self.clock()
        if force or now - self.last_log >= self.interval_s:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-9) / 1e6
            pct = 100.0 * self.done / self.total if self.total else 100.0
            log.info(
                "fetch %s: %.2f of %.2f GB (%.0f%%) at %.1f MB/s %s",
                self.uri, self.done / 1e9, self.total / 1e9, pct, rate, file,
            )  # fmt: skip


def _safe_relative(key: str, prefix: str) -> PurePosixPath:
    rel = PurePosixPath(key[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise FetchError(f"object key {key!r} would be written outside the model directory")
    return rel


def _read_manifest(dest: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(dest: Path, manifest: dict[str, dict[str, Any]]) -> None:
    tmp = dest / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, sort_keys=True, indent=1))
    os.replace(tmp, dest / MANIFEST)


def _part_path(target: Path, etag: str) -> Path:
    # The ETag is in the name, so a part of an older version of the object is never resumed.
    digest = hashlib.sha256(etag.encode()).hexdigest()[:16]
    return target.with_name(f"{target.name}.{digest}.part")


def _download_object(
    client: S3Client, bucket: str, key: str, etag: str, size: int, target: Path, progress: _Progress
) -> int:
    """Download one object into ``target`` via its ``.part`` file; returns the bytes transferred."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(target, etag)
    for stale in target.parent.glob(f"{target.name}.*.part"):
        if stale != part:
            stale.unlink()
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    transferred = 0
    if offset < size:
        if offset:
            log.info("fetch s3://%s/%s: resuming at byte %d of %d", bucket, key, offset, size)
            response = client.get_object(Bucket=bucket, Key=key, IfMatch=etag, Range=f"bytes={offset}-")
        else:
            response = client.get_object(Bucket=bucket, Key=key, IfMatch=etag)
        with part.open("ab") as out:
            for chunk in response["Body"].iter_chunks(CHUNK_BYTES):
                out.write(chunk)
                transferred += len(chunk)
                progress.add(len(chunk))
    got = part.stat().st_size
    if got != size:
        raise FetchError(f"s3://{bucket}/{key}: got {got} bytes, the listing says {size}")
    os.replace(part, target)
    return transferred


def fetch_s3(
    uri: str,
    dest: Path,
    *,
    endpoint_url: str | None = None,
    client: S3Client | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> FetchReport:
    """Download every object under ``s3://bucket/prefix/`` into ``dest``, resumably."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if client is None:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint_url)
    objects: list[tuple[str, str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith("/"):  # "directory" marker objects carry no data
                objects.append((key, obj["ETag"], obj["Size"]))
    if not objects:
        raise FetchError(f"no objects under {uri} (the uri names a prefix holding the checkpoint's files)")
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(dest)
    report = FetchReport(files_total=len(objects), bytes_total=sum(size for _, _, size in objects))
    progress = _Progress(uri, report.bytes_total, progress_interval_s, clock)
    for key, etag, size in objects:
        rel = _safe_relative(key, prefix)
        target = dest.joinpath(*rel.parts)
        recorded = manifest.get(str(rel), {})
        if target.is_file() and target.stat().st_size == size and recorded.get("etag") == etag:
            report.files_skipped += 1
            progress.add(size, force=True, file=f"{rel} (already complete)")
            continue
        report.bytes_downloaded += _download_object(client, bucket, key, etag, size, target, progress)
        report.files_downloaded += 1
        manifest[str(rel)] = {"etag": etag, "size": size}
        _write_manifest(dest, manifest)
        progress.add(0, force=True, file=str(rel))
    return report


def fetch_hf(
    uri: str, dest: Path, *, revision: str | None = None, endpoint_url: str | None = None
) -> FetchReport:
    """Download the Hub repository ``hf://org/repo`` at ``revision`` into ``dest``."""
    from huggingface_hub import snapshot_download

    repo_id = uri.removeprefix("hf://").strip("/")
    before = (
        {p.relative_to(dest): p.stat().st_size for p in dest.rglob("*") if p.is_file()}
        if dest.exists()
        else {}
    )
    log.info("fetch %s at revision %s into %s", uri, revision or "(default branch)", dest)
    snapshot_download(repo_id=repo_id, revision=revision, local_dir=dest, endpoint=endpoint_url)
    files = {
        p.relative_to(dest): p.stat().st_size
        for p in dest.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(dest).parts
    }
    skipped = [f for f, size in files.items() if before.get(f) == size]
    report = FetchReport(
        files_total=len(files),
        files_skipped=len(skipped),
        files_downloaded=len(files) - len(skipped),
        bytes_total=sum(files.values()),
        bytes_downloaded=sum(size for f, size in files.items() if f not in skipped),
    )
    log.info("fetch %s: %d files, %.2f GB in %s", uri, report.files_total, report.bytes_total / 1e9, dest)
    return report


@contextlib.contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_file``, logging when another process holds it first."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("fetch: another pod is downloading into this cache; waiting for %s", lock_file)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_model(model: ModelConfig, *, progress_interval_s: float = PROGRESS_INTERVAL_S) -> FetchReport:
    """Fetch the config's model into ``model.path`` (nothing to do for pvc:// and local paths)."""
    if not needs_fetch(model.uri):
        log.info("fetch: %s needs no download", model.uri or model.path)
        return FetchReport()
    assert model.uri is not None
    if not model.path:
        raise FetchError("model.path (the directory to download into) is not set")
    dest = Path(model.path)
    if model.uri.startswith("s3://") and model.revision:
        raise FetchError("model.revision applies to hf:// only; an s3:// prefix has no revisions")
    with exclusive_lock(dest.with_name(f"{dest.name}.lock")):
        if model.uri.startswith("s3://"):
            return fetch_s3(
                model.uri, dest, endpoint_url=model.endpoint_url, progress_interval_s=progress_interval_s
            )
        return fetch_hf(model.uri, dest, revision=model.revision, endpoint_url=model.endpoint_url)
