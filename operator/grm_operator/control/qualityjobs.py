"""The quality gate's Jobs: the build Job that compresses a checkpoint and the evaluation Job that
measures a variant against the reference. Pure: a GRMDeployment and what the gate knows in, Job
manifests out.

* **Build** (``<name>-<variant>-build-<hash>``): ``grm-operator quantize --source DIR --scheme S
  [--prune 2:4] --out DIR`` (llm-compressor's one-shot run) writes the variant's checkpoint to
  its uri (a claim mounted read-write, or a path), then reports the checkpoint's manifest (recipe
  and sha256 content digest) as the container's termination message.
* **Evaluation** (``<name>-<variant>-eval-<hash>``): ``grm-operator evaluate --variant DIR
  --reference DIR --dataset FILE --json OUT`` serves both checkpoints on the real engine, scores
  the evaluation set with each, and reports agreement (with its interval), rank correlation and
  accuracy as the termination message.

**Identity.** A Job's name ends in a hash of everything that decides its result: for a build the
recipe (scheme, pruning, calibration), the source's uri and content digest (when the source is a
variant the operator built) and the output uri (:func:`build_key`); for an evaluation the
variant's and the reference's checkpoints (content digest when built, else uri and revision), the
evaluation set (ConfigMap content hash, or uri) and the engine options that change scores
(:func:`evaluation_key`). The same inputs give the same name, so creating a Job that exists is a
409 and a restarted operator finds its Jobs where it left them: the state lives in the Jobs and in
status, never in the operator's memory. A changed recipe gives a new name, a new Job.

**Results travel in the termination message** (``/dev/termination-log``, at most 4096 bytes,
which the kubelet copies into the Pod's status): the Kubernetes-native channel for a Job's small
result (Tekton's task results use it), readable with the Pod ``get`` the operator already has; no
Secret, ConfigMap or API write from inside the Job, so the Job's pod needs no token. The
container keeps only the fields the gate reads (:data:`BUILD_RESULT_KEYS`,
:data:`EVALUATION_RESULT_KEYS`) so a verbose report never overflows the limit.

**Storage.** pvc://<claim>/<path> checkpoints are mounted (one volume per claim under
``/mnt/claims/<claim>``: read-write for the build's output claim, read-only otherwise); absolute
paths are used as they are (the image's, or the user's template.volumes, which the Jobs get
too); hf:// and s3:// variants are downloaded first by the worker image's ``fetch-model`` init
step, as the worker pods do.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grm_operator.api.models import GRMDeployment, Variant
from grm_operator.control.builders.deployment import pod_placement
from grm_operator.control.builders.layout import CONFIG_FILE, MODEL_CACHE_DIR, RUN_AS_UID
from grm_operator.control.builders.metadata import (
    LABEL_INSTANCE,
    LABEL_NAME,
    LABEL_VARIANT,
    Manifest,
    Owner,
    child_metadata,
    config_map_name,
    stamp,
)
from grm_operator.control.builders.modelload import (
    is_fetched,
    variant_revision,
    variant_uri,
    weights_path,
)
from grm_operator.control.builders.sizing import pod_size
from grm_operator.control.builders.workerconfig import merged_engine

QUALITY_APP = "grm-quality"
LABEL_QUALITY_JOB = "grm.dev/quality-job"  # "build" or "evaluation"
LABEL_JOB_KEY = "grm.dev/job-key"
ANNOTATION_RECIPE = "grm.dev/recipe"
BUILD = "build"
EVALUATION = "evaluation"
CLAIMS_DIR = "/mnt/claims"
EVALSET_DIR = "/etc/grm/evalset"
TERMINATION_LOG = "/dev/termination-log"
#: The file in a built checkpoint where ``grm-operator quantize`` records recipe and digest.
BUILD_MANIFEST = "grm-build.json"
#: What the build reports back: the checkpoint's content digest and the recipe it ran.
BUILD_RESULT_KEYS = ("digest", "recipe_digest", "scheme")
#: What the evaluation reports back (``grm-operator evaluate --json``).
EVALUATION_RESULT_KEYS = (
    "agreement",
    "agreement_low",
    "agreement_high",
    "n",
    "rank_correlation",
    "accuracy",
    "dataset_digest",
)
#: On the GRMDeployment: a JSON list of extra arguments of ``grm-operator evaluate`` (e.g.
#: ``["--max-tokens", "16"]``), for tests and demos on tiny models; the evaluation key includes them.
ANNOTATION_EVALUATION_ARGS = "grm.dev/evaluation-args"
#: On the GRMDeployment: a new value (a timestamp, say) asks for a fresh evaluation of every variant
#: demoted by its live agreement; one that passes lifts the demotion (policy.quality_watch). Each
#: value buys one re-evaluation per demotion: the same value never re-runs or lifts anything again.
ANNOTATION_RE_EVALUATE = "grm.dev/re-evaluate"
#: A request value becomes part of a Job's identity; longer ones are refused (an invalid spec).
RE_EVALUATE_MAX_LENGTH = 253
#: One retry: a build or evaluation that fails twice fails for a reason a third try will not fix
#: (a bad recipe, a checkpoint vLLM cannot load), and each try holds a GPU for up to hours.
BACKOFF_LIMIT = 1
#: A build of a 27B model takes ~1 GPU-hour (GPTQ) on an H100 (docs/quality.md); 12 h bounds a hung one.
BUILD_DEADLINE_S = 12 * 3600
#: An evaluation serves two models and scores the set with each: 4 h bounds a hung one.
EVALUATION_DEADLINE_S = 4 * 3600


def evaluation_args(grmd: GRMDeployment) -> list[str]:
    """The extra ``grm-operator evaluate`` arguments of :data:`ANNOTATION_EVALUATION_ARGS`
    (``ValueError`` for anything but a JSON list of strings: reported like an invalid spec)."""
    raw = (grmd.metadata.annotations or {}).get(ANNOTATION_EVALUATION_ARGS)
    if not raw:
        return []
    args = json.loads(raw)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"{ANNOTATION_EVALUATION_ARGS} must be a JSON list of strings")
    return args


def _key(data: object) -> str:
    """A 12-hex-digit sha256 of JSON-able data: long enough that two recipes never meet."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class JobPodDefaults:
    """The installation's settings for the quality Jobs' pods (the chart's ``qualityJobs``): extra
    resources beside the GPUs (a build holds the model in host memory: ~2 bytes a parameter), and
    a node selector and tolerations used when the GRMDeployment's ``spec.template`` sets none."""

    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    node_selector: Mapping[str, str] | None = None
    tolerations: tuple[Mapping[str, Any], ...] | None = None


def re_evaluation_request(grmd: GRMDeployment) -> str | None:
    """The value of :data:`ANNOTATION_RE_EVALUATE` (stripped), None when unset or empty
    (``ValueError`` when longer than :data:`RE_EVALUATE_MAX_LENGTH`: reported like an invalid spec)."""
    raw = (grmd.metadata.annotations or {}).get(ANNOTATION_RE_EVALUATE)
    value = raw.strip() if isinstance(raw, str) else ""
    if len(value) > RE_EVALUATE_MAX_LENGTH:
        raise ValueError(f"{ANNOTATION_RE_EVALUATE} must be at most {RE_EVALUATE_MAX_LENGTH} characters")
    return value or None


def job_name(owner: str, variant: str, kind: str, key: str) -> str:
    """``<name>-<variant>-build-<key>`` / ``-eval-``, within the 63 characters of a label value (the
    Job controller labels its pods with the Job's name): the GRMDeployment's name is shortened."""
    suffix = f"-{variant}-{'build' if kind == BUILD else 'eval'}-{key}"
    return owner[: 63 - len(suffix)].rstrip("-") + suffix


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint a Job reads or writes: its uri and, for an hf:// or s3:// one, the variant whose
    worker config the fetch-model step downloads it with."""

    uri: str
    revision: str | None = None
    digest: str | None = None
    fetch_variant: str | None = None

    def identity(self) -> dict[str, str | None]:
        """What the checkpoint's content is known by: its digest when built, else uri and revision."""
        return {"digest": self.digest} if self.digest else {"uri": self.uri, "revision": self.revision}


def variant_checkpoint(grmd: GRMDeployment, variant: Variant, digest: str | None = None) -> Checkpoint:
    """Where a variant's weights are, as a Job sees them."""
    uri = variant_uri(grmd.spec, variant)
    return Checkpoint(
        uri=uri,
        revision=variant_revision(grmd.spec, variant),
        digest=digest,
        fetch_variant=variant.name if is_fetched(uri) else None,
    )


def build_key(variant: Variant, source: Checkpoint) -> str:
    """The build's identity: recipe, source content, output."""
    assert variant.build is not None
    recipe = variant.build.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"source"})
    return _key({"recipe": recipe, "source": source.identity(), "out": variant.uri})


def evaluation_key(
    grmd: GRMDeployment, variant: Variant, checkpoint: Checkpoint, reference: Checkpoint, dataset: str
) -> str:
    """The evaluation's identity: both checkpoints, the set (``dataset``: its content hash, or its
    uri) and the engine options that change a score (context length, extra arguments)."""
    engine = merged_engine(grmd.spec, variant)
    return _key(
        {
            "variant": checkpoint.identity(),
            "precision": variant.precision,
            "reference": reference.identity(),
            "dataset": dataset,
            "maxModelLen": engine.max_model_len,
            "extraArgs": engine.extra_args,
            "samples": grmd.spec.scoring.samples.max,
            "evaluationArgs": evaluation_args(grmd),
        }
    )


def re_evaluation_key(key: str, request: str | None) -> str:
    """The identity of a re-evaluation asked for by ``grm.dev/re-evaluate``: the evaluation's key
    and the request's value (same inputs, a new Job); the evaluation's own key without one."""
    return _key({"evaluation": key, "reEvaluate": request}) if request else key


def _resources(defaults: JobPodDefaults, accelerator: str, gpus: int) -> Manifest:
    """The container's resources: the installation's, with the variant's GPUs as the limit of its
    accelerator resource (the GPU count is the variant's, never the installation's)."""
    resources: Manifest = {k: dict(v) for k, v in defaults.resources.items() if v}
    resources.setdefault("limits", {})[accelerator] = gpus
    return resources


class _Volumes:
    """The pod's volumes and mounts, one per claim, and the in-pod path of each checkpoint."""

    def __init__(self) -> None:
        self.volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
        self.mounts: list[Manifest] = [{"name": "tmp", "mountPath": "/tmp"}]
        self.claims: dict[str, bool] = {}  # claim → read-only
        self.fetched: list[str] = []  # variants downloaded by fetch-model

    def path(self, checkpoint: Checkpoint, *, writable: bool = False) -> str:
        uri = checkpoint.uri
        if uri.startswith("pvc://"):
            claim, _, sub = uri.removeprefix("pvc://").partition("/")
            self.claims[claim] = self.claims.get(claim, True) and not writable
            parts = [p for p in sub.split("/") if p not in ("", ".", "..")]
            return posixpath.join(CLAIMS_DIR, claim, *parts)
        if checkpoint.fetch_variant is not None:
            if checkpoint.fetch_variant not in self.fetched:
                self.fetched.append(checkpoint.fetch_variant)
            return weights_path(uri, checkpoint.revision)
        return uri

    def finish(self, grmd: GRMDeployment, owner: Owner) -> None:
        for i, (claim, read_only) in enumerate(sorted(self.claims.items())):
            name = f"claim-{i}"
            self.volumes.append(
                {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
            )
            self.mounts.append(
                {"name": name, "mountPath": posixpath.join(CLAIMS_DIR, claim), "readOnly": read_only}
            )
        if self.fetched:
            cache = grmd.spec.template.model_cache
            self.volumes.append(
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
                if cache.claim_name
                else {"name": "model-cache", "emptyDir": {"sizeLimit": cache.size_limit}}
            )
            self.mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_DIR})
            for i, variant in enumerate(self.fetched):
                self.volumes.append(
                    {"name": f"fetch-config-{i}", "configMap": {"name": config_map_name(owner.name, variant)}}
                )
        self.volumes.extend(grmd.spec.template.volumes or [])
        self.mounts.extend(grmd.spec.template.volume_mounts or [])


_CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def _fetch_containers(grmd: GRMDeployment, vols: _Volumes, image: str, pull: str) -> list[Manifest]:
    out: list[Manifest] = []
    for i, variant in enumerate(vols.fetched):
        config_dir = f"/etc/grm/fetch-{i}"
        env: list[Manifest] = [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": f"{MODEL_CACHE_DIR}/hf"},
        ]
        ref = grmd.spec.model.credentials_secret_ref
        if ref is not None:
            env.append(
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
        out.append(
            {
                "name": f"fetch-{variant}",
                "image": image,
                "imagePullPolicy": pull,
                "command": ["grm-worker", "fetch-model", "--config", f"{config_dir}/{CONFIG_FILE}"],
                "env": env,
                "volumeMounts": [
                    {"name": f"fetch-config-{i}", "mountPath": config_dir, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "model-cache", "mountPath": MODEL_CACHE_DIR},
                ],
                "securityContext": _CONTAINER_SECURITY,
            }
        )
    return out


def _report(source_json: str, keys: tuple[str, ...]) -> str:
    """A shell line copying ``keys`` of a JSON file (``source_json``, shell-quoted already) into
    the termination message (≤ 4096 bytes): $GRM_REPORT, the container's terminationMessagePath."""
    program = (
        "import json,sys; d=json.load(open(sys.argv[1])); "
        "print(json.dumps({k: d.get(k) for k in sys.argv[2:]}))"
    )
    return f'python3 -c {shlex.quote(program)} {source_json} {" ".join(keys)} > "$GRM_REPORT"'


def _job(
    grmd: GRMDeployment,
    owner: Owner,
    variant: Variant,
    *,
    kind: str,
    key: str,
    script: str,
    vols: _Volumes,
    image: str,
    image_pull_policy: str,
    gpus: int,
    deadline_s: int,
    recipe: Mapping[str, object],
    pod_defaults: JobPodDefaults | None = None,
) -> Manifest:
    defaults = pod_defaults or JobPodDefaults()
    # vLLM (the evaluation's engine; llm-compressor's too on several GPUs) allocates its
    # engine-to-front ring and NCCL's buffers in /dev/shm: vLLM 0.32's CPU engine asks 160 MiB at
    # start, and a container's default /dev/shm is 64 MiB. Sized as a worker replica's (.sizing:
    # 1 GiB per GPU, memory-backed, so it counts against the pod's memory).
    shared_memory = pod_size(grmd.spec, variant, simulated=False).shared_memory
    vols.volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shared_memory}})
    vols.mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    vols.finish(grmd, owner)
    name = job_name(owner.name, variant.name, kind, key)
    labels = {
        LABEL_NAME: QUALITY_APP,
        LABEL_VARIANT: variant.name,
        LABEL_QUALITY_JOB: kind,
        LABEL_JOB_KEY: key,
    }
    meta = child_metadata(owner, name, f"quality-{kind}", labels)
    # The pods carry neither grm.dev/deployment nor grm.dev/variant nor the workers' app name: the
    # Service, the PodDisruptionBudget and the autoscaler's pod counts select worker pods by those.
    pod_labels = {
        LABEL_NAME: QUALITY_APP,
        LABEL_INSTANCE: owner.name,
        LABEL_QUALITY_JOB: kind,
        LABEL_JOB_KEY: key,
    }
    meta["annotations"][ANNOTATION_RECIPE] = json.dumps(recipe, sort_keys=True)
    template = grmd.spec.template
    env: list[Manifest] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "GRM_REPORT", "value": TERMINATION_LOG},
    ]
    env.extend(e.model_dump(by_alias=True, exclude_none=True) for e in template.env or [])
    container: Manifest = {
        "name": kind,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["sh", "-c", script],
        "env": env,
        "resources": _resources(defaults, variant.accelerator_resource, gpus),
        "volumeMounts": vols.mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # A crash before the report leaves the log's tail as the message: the error the gate shows.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _CONTAINER_SECURITY,
    }
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": vols.volumes,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "fsGroup": RUN_AS_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    fetch = _fetch_containers(grmd, vols, image, image_pull_policy)
    if fetch:
        pod_spec["initContainers"] = fetch
    placement = pod_placement(template)
    if defaults.node_selector and "nodeSelector" not in placement:
        placement["nodeSelector"] = dict(defaults.node_selector)
    if defaults.tolerations and "tolerations" not in placement:
        placement["tolerations"] = [dict(t) for t in defaults.tolerations]
    pod_spec.update(placement)
    manifest: Manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": deadline_s,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }
    return stamp(manifest)


def build_job(
    grmd: GRMDeployment,
    owner: Owner,
    variant: Variant,
    source: Checkpoint,
    *,
    image: str,
    image_pull_policy: str,
    pod_defaults: JobPodDefaults | None = None,
) -> Manifest:
    """The Job that builds ``variant``'s checkpoint from ``source`` (its ``build`` recipe)."""
    build = variant.build
    if build is None or variant.uri is None:
        raise ValueError(f"variant {variant.name} has no build recipe")
    vols = _Volumes()
    src = vols.path(source)
    out = vols.path(Checkpoint(variant.uri), writable=True)
    argv = ["grm-operator", "quantize", "--source", src, "--scheme", build.scheme]
    if build.prune is not None:
        argv += ["--prune", build.prune.sparsity]
    if build.calibration is not None:
        argv += [
            "--calibration-samples",
            str(build.calibration.samples),
            "--max-seq-length",
            str(build.calibration.max_sequence_length),
        ]
    argv += ["--out", out]
    report = _report(shlex.quote(posixpath.join(out, BUILD_MANIFEST)), BUILD_RESULT_KEYS)
    script = "set -e\n" + shlex.join(argv) + "\n" + report
    key = build_key(variant, source)
    recipe = {
        **build.model_dump(mode="json", by_alias=True, exclude_none=True),
        "source": source.identity(),
        "out": variant.uri,
    }
    return _job(
        grmd,
        owner,
        variant,
        kind=BUILD,
        key=key,
        script=script,
        vols=vols,
        image=image,
        image_pull_policy=image_pull_policy,
        gpus=variant.gpus_per_replica,
        deadline_s=BUILD_DEADLINE_S,
        recipe=recipe,
        pod_defaults=pod_defaults,
    )


def evaluation_job(
    grmd: GRMDeployment,
    owner: Owner,
    variant: Variant,
    checkpoint: Checkpoint,
    reference: Checkpoint,
    *,
    dataset_identity: str,
    image: str,
    image_pull_policy: str,
    request: str | None = None,
    pod_defaults: JobPodDefaults | None = None,
) -> Manifest:
    """The Job that measures ``variant`` against the reference on the evaluation set (again, for
    the ``grm.dev/re-evaluate`` value ``request``)."""
    spec = grmd.spec
    vols = _Volumes()
    variant_dir = vols.path(checkpoint)
    reference_dir = vols.path(reference)
    evalset = spec.precision.evaluation_set
    if evalset is not None and evalset.config_map_ref is not None:
        ref = evalset.config_map_ref
        vols.volumes.append(
            {
                "name": "evalset",
                "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": "set.jsonl"}]},
            }
        )
        vols.mounts.append({"name": "evalset", "mountPath": EVALSET_DIR, "readOnly": True})
        dataset: str | None = shlex.quote(f"{EVALSET_DIR}/set.jsonl")
    elif evalset is not None and evalset.uri is not None:
        dataset = shlex.quote(vols.path(Checkpoint(evalset.uri)))
    else:
        dataset = None  # grm-operator evaluate's own default: the set shipped in the package
    # The pod's /tmp (an emptyDir); TMPDIR is left to the runtime: vLLM binds Unix sockets there,
    # whose paths may not exceed 107 bytes.
    result = '"${TMPDIR:-/tmp}/evaluation.json"'
    argv = ["grm-operator", "evaluate", "--variant", variant_dir, "--reference", reference_dir]
    argv += ["--samples", str(spec.scoring.samples.max)]
    engine = merged_engine(spec, variant)
    if engine.max_model_len is not None:
        argv += ["--engine-option", f"vllm.max_model_len={engine.max_model_len}"]
    argv += evaluation_args(grmd)
    line = shlex.join(argv) + (f" --dataset {dataset}" if dataset else "") + f" --json {result}"
    script = f"set -e\n{line}\n{_report(result, EVALUATION_RESULT_KEYS)}"
    key = re_evaluation_key(evaluation_key(grmd, variant, checkpoint, reference, dataset_identity), request)
    recipe = {
        "variant": checkpoint.identity(),
        "reference": reference.identity(),
        "dataset": dataset_identity,
        **({"reEvaluate": request} if request else {}),
    }
    reference_variant = spec.variants[0]
    return _job(
        grmd,
        owner,
        variant,
        kind=EVALUATION,
        key=key,
        script=script,
        vols=vols,
        image=image,
        image_pull_policy=image_pull_policy,
        # Both engines on the larger of the two GPU counts (the reference usually).
        gpus=max(variant.gpus_per_replica, reference_variant.gpus_per_replica),
        deadline_s=EVALUATION_DEADLINE_S,
        recipe=recipe,
        pod_defaults=pod_defaults,
    )
