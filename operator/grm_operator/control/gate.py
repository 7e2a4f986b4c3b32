"""The quality gate's controller, decided purely: the GRMDeployment, its status and its Jobs in;
the Jobs to create or delete, each variant's gate state, build and measured quality, the
``QualityGate`` condition and the Events out.

The reconciler (:mod:`grm_operator.handlers.reconcile`) does the I/O around :func:`plan_gate`:
it reads the Jobs from its store (watched like every child), the termination message of each
finished Job whose result status does not hold yet (:func:`jobs_needing_results`), and the
evaluation set's ConfigMap; it creates and deletes the Jobs and folds the variants' entries into
status. Nothing is remembered between reconciles: a restarted operator finds the same Jobs (their
names are the hash of their inputs, :mod:`grm_operator.control.qualityjobs`) and the same
status, and so decides the same.

Per variant, in spec order:

1. **Build** (``variants[].build``, under either quality policy: the checkpoint must exist before
   anything serves it). The source is ``build.from``: a variant's checkpoint (a built one once its
   own build finished: its content digest is part of the recipe's identity) or a uri. The build
   is done when ``status.variants[].build.recipeHash`` is the current recipe's hash; else its Job
   is created (``Building``), awaited, and its report (checkpoint digest) recorded; a failed Job
   rejects the variant (``Rejected``, ``BuildFailed``) until the recipe changes or the Job is
   deleted (which retries it).
2. **Evaluation** (``precision.qualityPolicy: Measured``, every variant but the reference): the
   measurement is current when ``status.variants[].quality.evaluatedKey`` is the hash of the two
   checkpoints and the set; else the evaluation Job is created (``Evaluating``) and its report
   recorded. A failed evaluation rejects the variant (``EvaluationFailed``). A variant demoted by
   its live agreement (``status.variants[].demoted``, written by the autoscaler) is evaluated
   again when the GRMDeployment's ``grm.dev/re-evaluate`` annotation has a value other than the
   one recorded at its demotion and than the one its current measurement was made for; the new
   measurement (``quality.reEvaluate`` says for which value) lifts the demotion when it passes
   (:mod:`grm_operator.policy.quality_watch`).
3. **Verdict**: ``Admitted`` when the measured lower bound is ≥ ``precision.minQuality``, else
   ``Rejected`` with the numbers. A changed floor re-judges the stored measurement without a new
   Job. ``Declared``: ``Admitted`` once built.

Jobs of a variant whose inputs changed (an older recipe, a re-built checkpoint) and Jobs of
variants no longer in the spec are deleted: a stale build still running would hold a GPU for
hours to produce a checkpoint nobody asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from grm_operator.api.models import GRMDeployment, Variant
from grm_operator.control.builders.metadata import LABEL_VARIANT, Manifest, Owner
from grm_operator.control.qualityjobs import (
    BUILD,
    EVALUATION,
    LABEL_JOB_KEY,
    LABEL_QUALITY_JOB,
    Checkpoint,
    JobPodDefaults,
    build_job,
    build_key,
    evaluation_job,
    evaluation_key,
    job_name,
    re_evaluation_key,
    re_evaluation_request,
    variant_checkpoint,
)
from grm_operator.policy.gate import ADMITTED, REJECTED

GATE_CONDITION = "QualityGate"
JobState = Literal["Running", "Succeeded", "Failed"]
#: The status fields of a variant entry that the gate owns.
GATE_FIELDS = ("gate", "gateMessage", "build", "quality")


@dataclass(frozen=True)
class JobView:
    """What the gate needs of one of its Jobs."""

    name: str
    kind: str  # BUILD or EVALUATION
    variant: str
    key: str
    state: JobState
    #: Why a Failed Job failed (its condition's message), for the gate message.
    failure: str = ""
    uid: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView | None:
        """The view of a Job manifest as read; None for a Job that is not one of the gate's."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        kind, variant, key = (
            labels.get(LABEL_QUALITY_JOB),
            labels.get(LABEL_VARIANT),
            labels.get(LABEL_JOB_KEY),
        )
        if kind not in (BUILD, EVALUATION) or not variant or not key:
            return None
        status = body.get("status") or {}
        conditions = {
            str(c.get("type")): c for c in status.get("conditions") or [] if c.get("status") == "True"
        }
        state: JobState = "Running"
        failure = ""
        if "Complete" in conditions or int(status.get("succeeded") or 0) > 0:
            state = "Succeeded"
        elif "Failed" in conditions:
            state = "Failed"
            cond = conditions["Failed"]
            failure = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
        return cls(str(meta.get("name")), str(kind), str(variant), str(key), state, failure, meta.get("uid"))


@dataclass(frozen=True)
class GateEvent:
    """A Kubernetes Event about the GRMDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class GatePlan:
    """What the reconciler applies after one gate step."""

    create: list[Manifest] = field(default_factory=list)
    #: Jobs to delete: (name, uid).
    delete: list[tuple[str, str | None]] = field(default_factory=list)
    #: Per variant: the gate's fields of its status entry (a None value removes the field).
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    condition: tuple[Literal["True", "False", "Unknown"], str, str] | None = None
    events: list[GateEvent] = field(default_factory=list)


def jobs_needing_results(status: Mapping[str, Any], jobs: Sequence[JobView]) -> list[JobView]:
    """Finished Jobs whose report status does not hold yet: the reconciler reads their pods'
    termination messages (one pod LIST each, once)."""
    recorded: set[str] = set()
    for entry in status.get("variants") or []:
        build = entry.get("build") or {}
        if build.get("job") and build.get("digest"):  # a build in progress names its Job already
            recorded.add(str(build["job"]))
        quality = entry.get("quality") or {}
        if quality.get("job"):
            recorded.add(str(quality["job"]))
    return [j for j in jobs if j.state == "Succeeded" and j.name not in recorded]


def parse_report(message: str | None, required: Sequence[str]) -> dict[str, Any] | None:
    """A Job's termination message as JSON with the ``required`` keys, else None."""
    if not message:
        return None
    try:
        data = json.loads(message.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if not isinstance(data, dict) or any(data.get(k) is None for k in required):
        return None
    return data


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class _Step:
    """One variant's result while planning."""

    gate: str
    message: str
    fields: dict[str, Any]


def plan_gate(
    grmd: GRMDeployment,
    owner: Owner,
    status: Mapping[str, Any],
    jobs: Sequence[JobView],
    reports: Mapping[str, str | None],
    *,
    dataset_identity: str | None,
    dataset_problem: str | None = None,
    image: str,
    image_pull_policy: str,
    now: str,
    pod_defaults: JobPodDefaults | None = None,
) -> GatePlan:
    """One step of the gate (see the module doc). ``reports``: termination messages by Job name
    (of :func:`jobs_needing_results`); ``dataset_identity``: the evaluation set's content hash
    (ConfigMap) or uri or ``default``; None with ``dataset_problem`` when it cannot be read."""
    spec = grmd.spec
    plan = GatePlan()
    by_name = {j.name: j for j in jobs}
    entries = {str(e.get("name")): e for e in status.get("variants") or [] if isinstance(e, Mapping)}
    measured = spec.precision.quality_policy == "Measured"
    floor = spec.precision.min_quality
    request = re_evaluation_request(grmd)
    wanted: set[str] = set()
    checkpoints: dict[str, Checkpoint | None] = {}  # None: not built yet
    steps: dict[str, _Step] = {}

    def job_for(kind: str, variant: Variant, key: str, manifest: Manifest) -> JobView | None:
        name = job_name(owner.name, variant.name, kind, key)
        wanted.add(name)
        job = by_name.get(name)
        if job is None:
            plan.create.append(manifest)
        return job

    for index, v in enumerate(spec.variants):
        previous = entries.get(v.name) or {}
        fields: dict[str, Any] = {"build": previous.get("build"), "quality": previous.get("quality")}
        # --- build ---------------------------------------------------------------------------------
        checkpoint: Checkpoint = variant_checkpoint(grmd, v)
        if v.build is not None:
            source = _source(grmd, v, checkpoints)
            if source is None:
                steps[v.name] = _Step(
                    "Pending", f"waiting for build.from {v.build.source} to be built", fields
                )
                checkpoints[v.name] = None
                continue
            key = build_key(v, source)
            built = fields["build"] if (fields["build"] or {}).get("recipeHash") == key else None
            if built is None or not built.get("digest"):
                manifest = build_job(
                    grmd,
                    owner,
                    v,
                    source,
                    image=image,
                    image_pull_policy=image_pull_policy,
                    pod_defaults=pod_defaults,
                )
                job = job_for(BUILD, v, key, manifest)
                name = str(manifest["metadata"]["name"])
                fields["build"] = {
                    "uri": v.uri,
                    "recipeHash": key,
                    "job": name,
                    "sourceDigest": source.digest,
                }
                fields["quality"] = None
                checkpoints[v.name] = None
                if job is None or job.state == "Running":
                    steps[v.name] = _Step("Building", f"build Job {name} ({v.build.scheme}) running", fields)
                    if job is None:
                        plan.events.append(
                            GateEvent(
                                "Normal",
                                "BuildStarted",
                                f"{v.name}: building {v.build.scheme} into {v.uri} (Job {name})",
                            )
                        )
                    continue
                if job.state == "Failed":
                    steps[v.name] = _Step(REJECTED, f"build Job {name} failed: {job.failure}", fields)
                    continue
                report = parse_report(reports.get(name), ("digest",))
                if report is None:
                    steps[v.name] = _Step(
                        REJECTED,
                        f"build Job {name} succeeded without a report of the checkpoint's digest",
                        fields,
                    )
                    continue
                fields["build"] = {**fields["build"], "digest": str(report["digest"]), "completed": now}
                plan.events.append(
                    GateEvent(
                        "Normal", "BuildSucceeded", f"{v.name}: built {v.uri} (digest {report['digest']})"
                    )
                )
                built = fields["build"]
            else:
                wanted.add(str(built.get("job") or ""))
            checkpoint = variant_checkpoint(grmd, v, digest=str(built["digest"]))
        else:
            fields["build"] = None
        checkpoints[v.name] = checkpoint
        # --- evaluation ----------------------------------------------------------------------------
        if index == 0 or not measured:
            fields["quality"] = fields["quality"] if measured else None
            steps[v.name] = _Step(
                ADMITTED,
                "the reference: the others are measured against it"
                if index == 0
                else "precision.qualityPolicy Declared: the declared quality stands",
                fields,
            )
            continue
        reference = checkpoints.get(spec.variants[0].name)
        if reference is None:
            steps[v.name] = _Step("Pending", "waiting for the reference's build", fields)
            continue
        if dataset_identity is None:
            steps[v.name] = _Step("Pending", f"evaluation set unavailable: {dataset_problem}", fields)
            continue
        key = evaluation_key(grmd, v, checkpoint, reference, dataset_identity)
        quality = fields["quality"] if (fields["quality"] or {}).get("evaluatedKey") == key else None
        demotion = previous.get("demoted")
        # Demoted, and the annotation has a value this demotion has not seen and no measurement was
        # made for: the evaluation to run (or running: the stored one is cleared meanwhile) is
        # the re-evaluation for that value.
        asked = (
            isinstance(demotion, Mapping)
            and request is not None
            and request != demotion.get("reEvaluate")
            and (quality is None or request != quality.get("reEvaluate"))
        )
        if quality is None or asked:
            job_request = request if asked else None
            again = asked
            manifest = evaluation_job(
                grmd,
                owner,
                v,
                checkpoint,
                reference,
                dataset_identity=dataset_identity,
                image=image,
                image_pull_policy=image_pull_policy,
                request=job_request,
                pod_defaults=pod_defaults,
            )
            name = str(manifest["metadata"]["name"])
            job = job_for(EVALUATION, v, re_evaluation_key(key, job_request), manifest)
            fields["quality"] = None
            if job is None or job.state == "Running":
                why = f", demoted: re-evaluation asked by grm.dev/re-evaluate={job_request}" if again else ""
                steps[v.name] = _Step("Evaluating", f"evaluation Job {name} running{why}", fields)
                if job is None:
                    plan.events.append(
                        GateEvent(
                            "Normal",
                            "EvaluationStarted",
                            f"{v.name}: evaluating against {spec.variants[0].name} (Job {name}){why}",
                        )
                    )
                continue
            if job.state == "Failed":
                steps[v.name] = _Step(REJECTED, f"evaluation Job {name} failed: {job.failure}", fields)
                continue
            report = parse_report(reports.get(name), ("agreement", "agreement_low", "agreement_high", "n"))
            if report is None:
                steps[v.name] = _Step(
                    REJECTED, f"evaluation Job {name} succeeded without a readable report", fields
                )
                continue
            quality = {
                "value": _number(report["agreement"]),
                "low": _number(report["agreement_low"]),
                "high": _number(report["agreement_high"]),
                "items": int(report["n"]),
                "rankCorrelation": _number(report.get("rank_correlation")),
                "accuracy": _number(report.get("accuracy")),
                "datasetDigest": str(report.get("dataset_digest") or dataset_identity),
                "evaluatedKey": key,
                "reEvaluate": job_request,
                "job": name,
                "measured": now,
            }
            fields["quality"] = {k: val for k, val in quality.items() if val is not None}
        else:
            wanted.add(str(quality.get("job") or ""))
        q = fields["quality"]
        numbers = (
            f"agreement {q['value']:.3f} (95% interval {q['low']:.3f}–{q['high']:.3f}, n={q['items']}) "
            f"with {spec.variants[0].name}"
        )
        if q["low"] >= floor:
            steps[v.name] = _Step(ADMITTED, f"{numbers}: lower bound ≥ minQuality {floor:g}", fields)
        else:
            steps[v.name] = _Step(REJECTED, f"{numbers}: lower bound < minQuality {floor:g}", fields)

    # --- status entries, Events, the condition ------------------------------------------------------
    for v in spec.variants:
        step = steps[v.name]
        previous = entries.get(v.name) or {}
        plan.variants[v.name] = {"gate": step.gate, "gateMessage": step.message[:1024], **step.fields}
        if (
            previous.get("gate") != step.gate
            and step.gate in (ADMITTED, REJECTED)
            and v is not spec.variants[0]
        ):
            kind: Literal["Normal", "Warning"] = "Normal" if step.gate == ADMITTED else "Warning"
            reason = "VariantAdmitted" if step.gate == ADMITTED else "VariantRejected"
            plan.events.append(GateEvent(kind, reason, f"{v.name}: {step.message}"))
    rejected = [f"{n}: {s.message}" for n, s in steps.items() if s.gate == REJECTED]
    waiting = [f"{n} {s.gate.lower()}" for n, s in steps.items() if s.gate not in (ADMITTED, REJECTED)]
    if rejected:
        plan.condition = ("False", "VariantRejected", "; ".join(rejected))
    elif waiting:
        plan.condition = ("Unknown", "GateInProgress", "; ".join(waiting))
    else:
        plan.condition = ("True", "AllAdmitted", "every variant is admitted to the ladder")

    # --- stale Jobs -----------------------------------------------------------------------------------
    for job in jobs:
        if job.name not in wanted:
            plan.delete.append((job.name, job.uid))
    return plan


def _source(
    grmd: GRMDeployment, variant: Variant, checkpoints: Mapping[str, Checkpoint | None]
) -> Checkpoint | None:
    """What ``variant`` is built from; None while that is a variant not built yet. Variants are
    planned in spec order, so a source listed *after* the variant is read from the spec as it is
    (unbuilt sources after it wait a reconcile: ``checkpoints`` misses them)."""
    assert variant.build is not None
    source = variant.build.source
    names = {v.name: v for v in grmd.spec.variants}
    if source not in names:
        return Checkpoint(uri=source)
    if source in checkpoints:
        return checkpoints[source]
    other = names[source]
    return None if other.build is not None else variant_checkpoint(grmd, other)


def merge_variant_entries(
    entries: Sequence[Mapping[str, Any]], gate: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """status.variants with the gate's fields set (None removes a field)."""
    out: list[dict[str, Any]] = []
    for entry in entries:
        merged = dict(entry)
        for key, value in (gate.get(str(entry.get("name"))) or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        out.append(merged)
    return out
