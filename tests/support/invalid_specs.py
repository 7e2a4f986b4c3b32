"""Invalid GRMDeployment specs, each with the message (or the field) it must be rejected with.

One table for the offline checks (tests/unit/grm_operator/api/test_crd.py: pydantic and
cel-python) and the real API server (tests/integration/grm_operator/test_crd_apiserver.py), so
that the three are judged on the same cases. Each case mutates the ladder example
(examples/grmd-ladder.yaml), which is valid.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from grm_operator.api import models

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "grmd-ladder.yaml").read_text()
)


def spec_with(mutate: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    mutate(body["spec"])
    return body


def set_(path: str, value: Any) -> Any:
    def mutate(spec: dict[str, Any]) -> None:
        node = spec
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[parts[-1]] = value

    return mutate


def _duplicate_variant(spec: dict[str, Any]) -> None:
    spec["variants"].append(dict(spec["variants"][0]))


def drop(path: str) -> Any:
    def mutate(spec: dict[str, Any]) -> None:
        node = spec
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return mutate


def _floor_case(spec: dict[str, Any]) -> None:
    # Quality floor above every variant: the ladder's best is 1.0, so drop bf16 first.
    spec["variants"] = spec["variants"][1:]
    spec["precision"]["minQuality"] = 0.999


# (id, mutation, the message both pydantic and the CRD's CEL rule give, field path of the rule)
CEL_CASES = [
    ("min-above-max", set_("scaling.minReplicas", 9), models.MSG_MIN_MAX, ".spec.scaling.minReplicas"),
    ("replicas-above-max", set_("scaling.replicas", 9), models.MSG_REPLICAS_BOUNDS, ".spec.scaling.replicas"),
    (
        "replicas-below-min",
        lambda s: s["scaling"].update(minReplicas=2, replicas=1),
        models.MSG_REPLICAS_BOUNDS,
        ".spec.scaling.replicas",
    ),
    ("duplicate-variant", _duplicate_variant, models.MSG_UNIQUE_VARIANTS, ".spec.variants"),
    (
        "pinned-unknown",
        lambda s: s["precision"].update(policy="Pinned", pinnedVariant="fp4"),
        models.MSG_PINNED_EXISTS,
        ".spec.precision.pinnedVariant",
    ),
    (
        "pinned-without-variant",
        set_("precision.policy", "Pinned"),
        models.MSG_PINNED_NEEDS_VARIANT,
        ".spec.precision.pinnedVariant",
    ),
    (
        "pinned-variant-null",
        lambda s: s["precision"].update(policy="Pinned", pinnedVariant=None),
        models.MSG_PINNED_NEEDS_VARIANT,
        ".spec.precision.pinnedVariant",
    ),
    ("floor-above-all", _floor_case, models.MSG_QUALITY_FLOOR, ".spec.precision.minQuality"),
    ("no-slo", set_("slo", {}), models.MSG_SLO_EMPTY, ".spec.slo"),
    (
        "connection-age-above-a-day",
        lambda s: s.setdefault("rollout", {}).update(connectionMaxAge="24h0m1s"),
        models.MSG_CONNECTION_MAX_AGE,
        ".spec.rollout.connectionMaxAge",
    ),
    (
        "slo-all-null",
        set_("slo", {"ttftP95": None, "e2eP95": None}),
        models.MSG_SLO_EMPTY,
        ".spec.slo",
    ),
    ("int4-without-uri", drop("variants.2.uri"), models.MSG_QUANTIZED_URI, ".spec.variants[2].uri"),
    (
        "int8-uri-null",
        lambda s: s["variants"][1].update(precision="int8", uri=None),
        models.MSG_QUANTIZED_URI,
        ".spec.variants[1].uri",
    ),
    ("revision-on-pvc", set_("model.revision", "v1"), models.MSG_REVISION_HF, ".spec.model.revision"),
    (
        "variant-revision-on-pvc",
        set_("variants.2.revision", "v1"),
        models.MSG_REVISION_HF,
        ".spec.variants[2].revision",
    ),
    (
        "variant-revision-without-uri",
        lambda s: s["variants"][0].update(revision="v1"),
        models.MSG_REVISION_HF,
        ".spec.variants[0].revision",
    ),
    (
        "samples-order",
        set_("scoring.samples", {"min": 5, "max": 2}),
        models.MSG_SAMPLES_ORDER,
        ".spec.scoring.samples",
    ),
    (
        "extra-volume-takes-model-cache",
        set_("template.volumes", [{"name": "model-cache", "emptyDir": {}}]),
        models.MSG_RESERVED_VOLUME,
        ".spec.template.volumes",
    ),
    (
        "build-to-hf-uri",
        lambda s: s["variants"][1].update(
            uri="hf://org/out", build={"from": "bf16", "scheme": "FP8_DYNAMIC"}
        ),
        models.MSG_BUILD_URI,
        ".spec.variants[1].uri",
    ),
    (
        "build-scheme-precision-mismatch",
        lambda s: s["variants"][1].update(uri="/models/out", build={"from": "bf16", "scheme": "W8A8"}),
        models.MSG_BUILD_PRECISION,
        ".spec.variants[1].build.scheme",
    ),
    (
        "build-from-itself",
        lambda s: s["variants"][1].update(uri="/models/out", build={"from": "fp8", "scheme": "FP8_DYNAMIC"}),
        models.MSG_BUILD_SELF,
        ".spec.variants[1].build.from",
    ),
    (
        "build-from-unknown-variant",
        lambda s: s["variants"][1].update(uri="/models/out", build={"from": "bf17", "scheme": "FP8_DYNAMIC"}),
        models.MSG_BUILD_FROM,
        ".spec.variants",
    ),
    (
        "evaluation-set-two-sources",
        set_("precision.evaluationSet", {"configMapRef": {"name": "e"}, "uri": "/models/e.jsonl"}),
        models.MSG_EVALUATION_SOURCE,
        ".spec.precision.evaluationSet",
    ),
    (
        "extra-mount-on-dev-shm",
        set_("template.volumeMounts", [{"name": "big-shm", "mountPath": "/dev/shm"}]),
        models.MSG_RESERVED_MOUNT,
        ".spec.template.volumeMounts",
    ),
]


# Schema-level rejections (no CEL): both the CRD schema and pydantic refuse them.
SCHEMA_CASES = [
    ("bad-duration", set_("slo.ttftP95", "half a second"), ".spec.slo.ttftP95"),
    ("quality-zero", set_("variants.0.quality", 0), ".spec.variants[0].quality"),
    ("quality-above-one", set_("variants.0.quality", 1.5), ".spec.variants[0].quality"),
    ("unknown-precision", set_("variants.0.precision", "fp4"), ".spec.variants[0].precision"),
    ("unknown-quality-policy", set_("precision.qualityPolicy", "Trusted"), ".spec.precision.qualityPolicy"),
    (
        "unknown-build-scheme",
        lambda s: s["variants"][1].update(uri="/models/out", build={"from": "bf16", "scheme": "W2A16"}),
        ".spec.variants[1].build.scheme",
    ),
    (
        "unknown-sparsity",
        lambda s: s["variants"][1].update(
            uri="/models/out", build={"from": "bf16", "scheme": "FP8_DYNAMIC", "prune": {"sparsity": "1:2"}}
        ),
        ".spec.variants[1].build.prune.sparsity",
    ),
    ("variant-name-uppercase", set_("variants.0.name", "BF16"), ".spec.variants[0].name"),
    ("no-variants", set_("variants", []), ".spec.variants"),
    ("bad-uri", set_("model.uri", "ftp://host/model"), ".spec.model.uri"),
    ("endpoint-without-scheme", set_("model.endpointURL", "minio:9000"), ".spec.model.endpointURL"),
    ("weights-size-zero", set_("model.weightsGB", 0), ".spec.model.weightsGB"),
    ("negative-replicas", set_("scaling.replicas", -1), ".spec.scaling.replicas"),
    ("unknown-field", set_("scaling.maxReplica", 3), ".spec.scaling"),
    ("unknown-mode", set_("scaling.mode", "Magic"), ".spec.scaling.mode"),
    ("gpu-memory-one", set_("engine.gpuMemoryUtilization", 1.0), ".spec.engine.gpuMemoryUtilization"),
    ("samples-zero", set_("scoring.samples.min", 0), ".spec.scoring.samples.min"),
    ("missing-model", drop("model"), ".spec"),
    (
        "accelerator-not-extended",
        set_("variants.0.acceleratorResource", "gpu"),
        ".spec.variants[0].acceleratorResource",
    ),
    (
        "memory-not-quantity",
        set_("variants.0.resources", {"memory": "lots"}),
        ".spec.variants[0].resources.memory",
    ),
    (
        "pull-secret-without-name",
        set_("template.imagePullSecrets", [{}]),
        ".spec.template.imagePullSecrets[0]",
    ),
]
