"""Quality watched while serving, end to end on real worker processes: a reference worker (bf16)
and a candidate (fp8, a sim whose verdicts are backwards on half the response sets) that shadows
every score request to it; the operator's Direct metrics source scrapes both, and its policy
adapter and plan demote the candidate — while the reference's shadow work is not demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from grm_operator.control.actuation import VariantDeployment, plan
from grm_operator.handlers.policy_adapter import PodCounts, decide_intent
from grm_operator.metrics import Direct, MetricsTarget, PodEndpoint
from grm_worker.engines.simtext import response_quality, verdict_flipped
from support.policy import make_spec
from support.simworkers import SimWorker

# 160 compared verdicts: more than the 125 a perfect record needs to clear the 0.97 floor.
REQUESTS = 160
FLIP = 0.5
PAIRS = [
    (a, b)
    for a, b in ((f"answer {i}", f"other {i}") for i in range(2000))
    if response_quality(a) != response_quality(b)
][:REQUESTS]


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[SimWorker, SimWorker]]:
    reference = SimWorker("bf16", time_scale=1000.0)
    try:
        candidate = SimWorker(
            "fp8",
            time_scale=1000.0,
            extra=(
                "--set",
                "shadow.fraction=1.0",
                "--set",
                f"shadow.reference_url={reference.base_url}",
                "--set",
                f"sim.verdict_flip={FLIP}",
                "--set",
                "shadow.concurrency=4",
                # Room for every request: the test compares all of them (a full queue drops).
                "--set",
                f"shadow.queue_size={REQUESTS}",
            ),
        )
    except BaseException:
        reference.stop()
        raise
    yield reference, candidate
    candidate.stop()
    reference.stop()


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url) as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_a_disagreeing_candidate_is_demoted_and_shadow_work_is_not_demand(
    workers: tuple[SimWorker, SimWorker],
) -> None:
    reference, candidate = workers
    spec = make_spec()  # bf16 (the reference), fp8, int4; floor 0.97
    target = MetricsTarget(
        namespace="rl",
        name="reward",
        variants=tuple(v.name for v in spec.variants),
        pods=(
            PodEndpoint("reward-bf16-0", "bf16", reference.metrics_url),
            PodEndpoint("reward-fp8-0", "fp8", candidate.metrics_url),
        ),
        shadow_window_s=3600.0,
    )
    direct = Direct()
    started = time.time()
    await direct.observe(target, 60.0, started)  # every counter's first sample
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        gate = asyncio.Semaphore(8)

        async def score(pair: tuple[str, str]) -> None:
            async with (
                gate,
                session.post(
                    f"{candidate.base_url}/v1/grm/score",
                    json={"query": "which is better?", "responses": list(pair)},
                ) as response,
            ):
                assert response.status == 200, await response.text()

        await asyncio.gather(*(score(p) for p in PAIRS))
        # Shadow scores run after the answers, in the background: wait for all to be compared.
        async with asyncio.timeout(120):
            while True:
                compared = await _metric(session, candidate.metrics_url, "grm_shadow_verdicts_total")
                dropped = await _metric(session, candidate.metrics_url, "grm_shadow_dropped_total")
                if compared + dropped >= REQUESTS:
                    break
                await asyncio.sleep(0.1)
    assert dropped == 0, Path(candidate.log.name).read_text()[-3000:]
    now = time.time()
    reading = await direct.observe(target, now - started + 1.0, now)
    assert reading.notes == ()
    fp8, bf16 = reading.variants["fp8"], reading.variants["bf16"]
    flips = sum(verdict_flipped(list(p), FLIP) for p in PAIRS)
    assert 50 < flips < 110
    assert (fp8.shadow_verdicts, fp8.shadow_agreements) == (REQUESTS, REQUESTS - flips)
    # The reference's engine ran every shadow score's samples, yet its demand is nil; the
    # candidate's demand is its users' requests.
    assert bf16.rps == 0.0
    assert fp8.rps is not None and fp8.rps > 0.0

    deployments = {"fp8": VariantDeployment(desired=1, replicas=1, ready=1)}
    status: dict[str, Any] = {"activeVariant": "fp8", "samples": 8}
    intent = decide_intent(
        spec=spec,
        status=status,
        reading=reading,
        pods={"fp8": PodCounts(ready=1, pending=0), "bf16": PodCounts(ready=1, pending=0)},
        deployments=deployments,
        now=now,
    )
    step = plan(
        spec=spec,
        generation=1,
        status=status,
        deployments=deployments,
        observed=reading.total,
        metrics_error=None,
        intent=intent,
        now=now,
    )
    mark = next(v for v in step.status["variants"] if v["name"] == "fp8")["demoted"]
    assert (mark["compared"], mark["agreed"]) == (REQUESTS, REQUESTS - flips)
    assert mark["agreementLow"] < 0.97
    conditions = {c["type"]: (c["status"], c["reason"]) for c in step.status["conditions"]}
    assert conditions["LiveQualityMet"] == ("False", "VariantDemoted")
    assert any(e.reason == "VariantDemoted" for e in step.events)
    assert intent.action == "SwitchVariant" and intent.variant != "fp8", intent.reason
    await direct.close()
