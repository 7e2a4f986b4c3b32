"""Quality watched while serving, end to end on real worker processes: a reference worker (bf16)
and a candidate (fp8, a sim whose verdicts are backwards on half the response sets) that shadows
every score request to it; the operator's metrics sources — Direct, and Prometheus (a real one,
scraping with the documented relabelling) — read both, and its policy adapter and plan demote the
candidate, while the reference's shadow work is not demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from grm_operator.control.actuation import VariantDeployment, plan
from grm_operator.handlers.policy_adapter import PodCounts, decide_intent
from grm_operator.metrics import Direct, MetricsTarget, PodEndpoint, Prometheus, Reading
from grm_operator.policy.quality_watch import LiveAgreement, watch_quality
from grm_worker.engines.simtext import response_quality, verdict_flipped
from support.paths import REPO
from support.policy import make_spec
from support.promserver import PrometheusServer, poll, prometheus_binary
from support.simworkers import SimWorker

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed (make system-deps)"),
]

# 160 compared verdicts: more than the 125 a perfect record needs to clear the 0.97 floor.
REQUESTS = 160
FLIP = 0.5
PAIRS = [
    (a, b)
    for a, b in ((f"answer {i}", f"other {i}") for i in range(2000))
    if response_quality(a) != response_quality(b)
][:REQUESTS]


def _prometheus(workers: dict[str, SimWorker]) -> PrometheusServer:
    """A Prometheus scraping ``workers`` (by variant) every 500 ms with the documented job's
    relabelling (examples/prometheus), its Kubernetes discovery replaced by static targets."""
    documented = yaml.safe_load((REPO / "examples/prometheus/grm-workers-scrape.yaml").read_text())
    job = documented["scrape_configs"][0]
    del job["kubernetes_sd_configs"]
    static = [
        {
            "targets": [w.address],
            "labels": {
                "__meta_kubernetes_namespace": "rl",
                "__meta_kubernetes_pod_name": f"reward-{v}-0",
                "__meta_kubernetes_pod_label_grm_dev_deployment": "reward",
                "__meta_kubernetes_pod_label_grm_dev_variant": v,
                "__meta_kubernetes_pod_container_port_name": "http",
            },
        }
        for v, w in workers.items()
    ]
    prom = PrometheusServer(
        {
            "global": {"scrape_interval": "500ms"},
            "scrape_configs": [{**job, "static_configs": static, "scrape_interval": "500ms"}],
        }
    )
    poll(lambda: True if len(prom.query('up{grm_dev_deployment="reward"} == 1')) == 2 else None, 30, "up")
    return prom


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[SimWorker, SimWorker, PrometheusServer]]:
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
    try:
        prom = _prometheus({"bf16": reference, "fp8": candidate})
    except BaseException:
        candidate.stop()
        reference.stop()
        raise
    yield reference, candidate, prom
    prom.stop()
    candidate.stop()
    reference.stop()


async def _metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url) as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_a_disagreeing_candidate_is_demoted_and_shadow_work_is_not_demand(
    workers: tuple[SimWorker, SimWorker, PrometheusServer],
) -> None:
    reference, candidate, prom = workers
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
    window = now - started + 1.0
    reading = await direct.observe(target, window, now)
    assert reading.notes == ()
    fp8, bf16 = reading.variants["fp8"], reading.variants["bf16"]
    flips = sum(verdict_flipped(list(p), FLIP) for p in PAIRS)
    assert 50 < flips < 110
    assert (fp8.shadow_verdicts, fp8.shadow_agreements) == (REQUESTS, REQUESTS - flips)
    # The reference's engine ran every shadow score's samples, yet its demand is nil; the
    # candidate's demand is its users' requests.
    assert bf16.rps == 0.0
    assert fp8.rps is not None and fp8.rps > 0.0

    # Prometheus, once it has scraped the final counts, reads the same through the default queries
    # (increase() extrapolates to the window's edges: within a few percent).
    poll(
        lambda: (
            True
            if prom.query(f'sum(grm_shadow_verdicts_total{{grm_dev_variant="fp8"}}) == {REQUESTS}')
            else None
        ),
        30,
        "Prometheus to scrape the final shadow counts",
    )
    by_prom: Reading = await Prometheus(prom.url).observe(target, max(window, 10.0), now)
    p_fp8, p_bf16 = by_prom.variants["fp8"], by_prom.variants["bf16"]
    assert p_fp8.shadow_verdicts == pytest.approx(REQUESTS, rel=0.1)
    assert p_fp8.shadow_agreements == pytest.approx(REQUESTS - flips, rel=0.1)
    assert p_bf16.rps == pytest.approx(0.0, abs=1e-9)
    assert p_fp8.rps is not None and p_fp8.rps > 0.0
    assert p_fp8.shadow_verdicts is not None and p_fp8.shadow_agreements is not None
    seen = {"fp8": LiveAgreement(p_fp8.shadow_verdicts, p_fp8.shadow_agreements)}
    assert watch_quality(spec, seen, {}, now).new == ("fp8",)

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
    assert conditions["LiveQualityMet"] == ("False", "AgreementBelowFloor")
    assert any(e.reason == "VariantDemoted" for e in step.events)
    assert intent.action == "SwitchVariant" and intent.variant != "fp8", intent.reason
    await direct.close()
