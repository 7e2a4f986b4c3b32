"""Model loading in the worker pod: where each variant's weights are, the ``fetch-model`` init
container that downloads ``hf://`` and ``s3://`` checkpoints into the model cache, and the
startup-probe budget sized from the size of the weights the worker loads.

Why an init container: a download of tens of GB (DeepSeek-GRM-27B is 54.5 GB in bf16, 9 minutes
at 100 MB/s) cannot fit a startup probe, and an init container is not probed. The worker's
startup probe then covers only loading local weights and starting the engine: 1.5 × the
cold-start estimate from the checkpoint's size (:func:`grm_operator.policy.coldstart.cold_start`,
``60 s + GB / 0.25 GB/s``, the same estimate the policy's forecast horizon uses), 1.5 being the
margin for a busy node. DeepSeek-GRM-27B bf16 (54 GB, from the 27B in its name): 1.5 × (60 +
54 / 0.25) = 414 s, where the static prior gave 3 × 90 s = 270 s whatever the model. A measured
``profile.coldStart`` wins over this estimate (3× it, as before), as does the precision's prior
when the size is unknown (3× it: a cold node also pulls the image).

The cold starts the operator measures on the cluster (``status.policyState.coldStarts``, which
the forecast horizon prefers to the size) do not move the budget, for three reasons. The budget
is in the pod template, and a template that followed a measurement would roll every worker (a
cold start each) whenever the measurement moved. A fast measured start (weights in a node's page
cache) must never shrink the probe below what a slower start needs: it would kill that start,
which then never gets measured. And a measurement cannot exceed the budget's load part anyway:
a load the probe cut short restarted, and restarted pods are not measured
(:mod:`grm_operator.control.coldstarts`). A cluster whose loads need more than 1.5× the size
estimate shows restarting workers (``WorkersHealthy``) and should declare ``profile.coldStart``.
"""

from __future__ import annotations

import math
import posixpath

from grm_operator.api.models import GRMDeployment, GRMDeploymentSpec, Variant
from grm_operator.control.builders.layout import CONFIG_DIR, CONFIG_FILE, MODEL_CACHE_DIR, WEIGHTS_DIR
from grm_operator.control.builders.metadata import Manifest
from grm_operator.policy.coldstart import checkpoint_gb, cold_start

# Downloaded checkpoints live under the model cache, one directory per source (and revision).
FETCHED_WEIGHTS_DIR = f"{MODEL_CACHE_DIR}/weights"
FETCH_CONTAINER = "fetch-model"

# The startup budget over a cold start estimated from the checkpoint's size.
LOAD_BUDGET_MARGIN = 1.5
# With a measured coldStart (or without any size), the budget is this × the cold start, as the
# precision priors (45-90 s) were sized for: a cold node also pulls the image.
COLD_START_BUDGET_FACTOR = 3.0
STARTUP_BUDGET_MIN_S = 120.0
# A download is given this rate (GB/s, 100 MB/s) in the Deployment's progress deadline, and an
# hour when the size is unknown, so that a first download is not reported as a stuck rollout.
DOWNLOAD_GB_PER_S = 0.1
DOWNLOAD_UNKNOWN_SIZE_S = 3600.0


def variant_uri(spec: GRMDeploymentSpec, variant: Variant) -> str:
    """The variant's own checkpoint, else the model's."""
    return variant.uri or spec.model.uri


def variant_revision(spec: GRMDeploymentSpec, variant: Variant) -> str | None:
    """The hf:// revision that goes with :func:`variant_uri`."""
    return variant.revision if variant.uri else spec.model.revision


def is_fetched(uri: str) -> bool:
    """Whether the fetch-model init step downloads ``uri`` (hf:// and s3://)."""
    return uri.startswith(("hf://", "s3://"))


def _safe_parts(path: str) -> list[str]:
    # "..", "." and empty segments are dropped, so no uri can name a directory outside the cache.
    return [part for part in path.split("/") if part not in ("", ".", "..")]


def weights_path(uri: str, revision: str | None) -> str:
    """Where the worker (and vLLM) finds the weights of ``uri`` inside the pod.

    ``pvc://claim/sub`` → ``/mnt/weights/sub``; ``hf://org/repo`` at revision ``r`` →
    ``/models/weights/hf/org/repo/r`` (``default`` for the default branch: one directory per
    revision, so a pinned commit never mixes with another); ``s3://bucket/prefix`` →
    ``/models/weights/s3/bucket/prefix``; an absolute path is itself.
    """
    if uri.startswith("pvc://"):
        _claim, _, sub = uri.removeprefix("pvc://").partition("/")
        return posixpath.join(WEIGHTS_DIR, *_safe_parts(sub))
    if uri.startswith("hf://"):
        return posixpath.join(
            FETCHED_WEIGHTS_DIR, "hf", *_safe_parts(uri.removeprefix("hf://")), revision or "default"
        )
    if uri.startswith("s3://"):
        return posixpath.join(FETCHED_WEIGHTS_DIR, "s3", *_safe_parts(uri.removeprefix("s3://")))
    return uri


def startup_budget_s(spec: GRMDeploymentSpec, variant: Variant) -> float:
    """Seconds the startup probe allows (module docstring): the cold-start estimate × 1.5 when it
    comes from the checkpoint's size, × 3 when declared or the precision's prior; at least 120 s.
    Measured cold starts are left out on purpose (module docstring)."""
    estimate = cold_start(spec, variant)
    factor = LOAD_BUDGET_MARGIN if estimate.basis == "size" else COLD_START_BUDGET_FACTOR
    return max(factor * estimate.seconds, STARTUP_BUDGET_MIN_S)


def download_allowance_s(spec: GRMDeploymentSpec, variant: Variant) -> float:
    """Seconds a first download may add to a rollout (0 when nothing is downloaded)."""
    if not is_fetched(variant_uri(spec, variant)):
        return 0.0
    size = checkpoint_gb(spec, variant)
    return DOWNLOAD_UNKNOWN_SIZE_S if size is None else math.ceil(size / DOWNLOAD_GB_PER_S)


def _fetch_env(grmd: GRMDeployment, uri: str) -> list[Manifest]:
    spec = grmd.spec
    env: list[Manifest] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": f"{MODEL_CACHE_DIR}/hf"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
    ]
    ref = spec.model.credentials_secret_ref
    if ref is not None and uri.startswith("hf://"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    elif ref is not None and uri.startswith("s3://"):
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            selector: Manifest = {"name": ref.name, "key": key}
            if optional:
                selector["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": selector}})
    ours = {e["name"] for e in env}
    # The user's variables reach the download too (AWS_REGION, HTTPS_PROXY, HF_XET_HIGH_PERFORMANCE).
    for user in spec.template.env or []:
        if user.name not in ours:
            env.append(user.model_dump(by_alias=True, exclude_none=True))
    return env


def fetch_init_container(
    grmd: GRMDeployment, variant: Variant, image: str, image_pull_policy: str, security_context: Manifest
) -> Manifest | None:
    """The ``fetch-model`` init container of a variant whose weights are downloaded, else None.

    It runs the worker image's ``grm-worker fetch-model`` on the variant's worker config (which
    names the uri, revision, endpoint and target path), with the model cache and /tmp mounted, and
    is the only container that sees the download credentials.
    """
    uri = variant_uri(grmd.spec, variant)
    if not is_fetched(uri):
        return None
    return {
        "name": FETCH_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["grm-worker", "fetch-model", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": _fetch_env(grmd, uri),
        # A download is network- and disk-bound: one core; 8 MiB reads need little memory.
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "model-cache", "mountPath": MODEL_CACHE_DIR},
        ],
        # The download's error (access denied, no such revision) reaches the pod status, and
        # from there the GRMDeployment's WorkersHealthy condition (control.podhealth).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": security_context,
    }
