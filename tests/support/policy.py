"""Inputs for policy tests: one spec builder and one observation builder.

* :func:`make_spec` — a small GRMDeployment spec (bf16 on 2 GPUs, fp8 and int4 on 1, maxGPUs 12,
  8 samples) with top-level sections overridden.
* :func:`make_signals` — one metrics window: a sequence rate with its token rates, and any other
  :class:`Signals` field by keyword.
* :func:`make_observation` — one control tick's :class:`Observation` of a fleet running a variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import Observation, PolicyState
from grm_operator.policy.signals import Signals

#: Tokens of a scored prompt and of one critique (sample), as the closed-loop fleet serves them.
PROMPT = 1000.0
OUTPUT = 300.0

BASE: dict[str, Any] = {
    # No size in the name (nor weightsGB): the policy's cold-start estimate is then the precision's
    # prior (45–90 s, grm_operator.policy.coldstart), which is how long the closed-loop fleet's
    # replicas take (support.fleet), so the forecast horizon and the harness agree.
    "model": {"name": "deepseek-ai/DeepSeek-GRM", "uri": "pvc://models/grm-27b"},
    "variants": [
        {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
        {"name": "fp8", "precision": "fp8", "quality": 0.995, "gpusPerReplica": 1},
        {"name": "int4", "precision": "awq-int4", "uri": "pvc://models/grm-awq", "quality": 0.97},
    ],
    "slo": {"ttftP95": "500ms", "e2eP95": "20s"},
    "scaling": {"minReplicas": 1, "maxReplicas": 8, "maxGPUs": 12},
    # Declared: the ladder's mechanics; the quality gate has its own tests (test_gate.py).
    "precision": {"policy": "Auto", "minQuality": 0.97, "qualityPolicy": "Declared"},
    "scoring": {"samples": {"min": 8, "max": 8}},
}


def make_spec(**overrides: Any) -> GRMDeploymentSpec:
    """BASE with top-level sections merged (a dict value updates that section)."""
    data = {
        k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
        for k, v in BASE.items()
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return GRMDeploymentSpec.model_validate(data)


def make_signals(rps: float | None, *, pods: int, **fields: float | None) -> Signals:
    """A window of ``rps`` completed sequences per second reported by ``pods`` workers, with
    PROMPT-token prompts and OUTPUT-token critiques (no token rates when ``rps`` is unknown).
    Every other field (latencies, ``running``, ``waiting``, ``sample_age_s``, ``shed_sps``) is
    as given, else unknown."""
    tokens = {} if rps is None else {"prompt_tps": rps * PROMPT, "generation_tps": rps * OUTPUT}
    return Signals(rps=rps, pods_reporting=pods, **{**tokens, **fields})


def make_observation(
    active: str,
    total: Signals | None,
    *,
    now: float,
    ready: int | Mapping[str, int],
    samples: int,
    desired: int | Mapping[str, int] | None = None,
    pending: int | Mapping[str, int] = 0,
    variants: Mapping[str, Signals] | None = None,
    metrics_error: str | None = None,
    pending_since: Mapping[str, tuple[float, ...]] | None = None,
) -> Observation:
    """A tick at ``now`` of a fleet running ``active`` at ``samples`` per request.

    ``total`` is the metrics window (None: the source failed), reported per variant as
    ``variants`` (default: all of it by ``active``). Pod counts are of ``active`` when given as
    a number, per variant as a mapping; ``desired`` defaults to ``ready`` (a fleet at rest).
    ``pending_since`` gives, per variant, when each pending pod became unscheduled (absent: since
    longer than any grace).
    """

    def per_variant(count: int | Mapping[str, int]) -> dict[str, int]:
        return {active: count} if isinstance(count, int) else dict(count)

    if variants is None:
        variants = {} if total is None else {active: total}
    return Observation(
        time=now,
        total=total,
        variants=dict(variants),
        active_variant=active,
        samples=samples,
        ready=per_variant(ready),
        pending=per_variant(pending),
        desired=per_variant(ready if desired is None else desired),
        metrics_error=metrics_error,
        pending_since=dict(pending_since or {}),
    )


def fp8_window(now: float, rps: float, e2e_p95: float) -> Observation:
    """2 fp8 replicas at k = 8 completing ``rps`` sequences/s, TTFT p95 at the 500 ms SLO."""
    signals = make_signals(
        rps,
        pods=2,
        ttft_p50=0.2,
        ttft_p95=0.5,
        itl_p50=0.03,
        itl_p95=0.04,
        e2e_p50=e2e_p95 / 2,
        e2e_p95=e2e_p95,
        running=rps * 5,
        waiting=0.0,
        sample_age_s=1.0,
    )
    return make_observation("fp8", signals, now=now, ready=2, samples=8)


def stale_bf16_state() -> PolicyState:
    """bf16 left behind with a tail that an overload taught it: e2e 6.0 (bound) makes 20 s read as
    a 3.3 s mean, so no bf16 replica looks able to hold it."""
    return PolicyState(
        tail={"bf16": {"e2e": 6.0, "ttft": 6.0, "itl": 1.3}},
        speed={"bf16": 1.0},
        learnt_at={"bf16": 0.0},
        last_switch=0.0,
    )
