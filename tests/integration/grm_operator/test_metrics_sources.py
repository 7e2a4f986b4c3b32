"""The Prometheus and Direct metrics sources against a REAL Prometheus (Debian's package) that
scrapes worker metrics on loopback, relabelled exactly as examples/prometheus documents.

Workers: fixture metrics servers (tests/support/fakepod.py) whose request rate and latencies the test
sets, in vLLM 0.32's format; one serves the pre-0.10 metric names; one is idle. A fake DCGM
exporter reports GPU utilisation per pod. Both sources must read the numbers the workers were
given, and agree with each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import yaml

from grm_operator.metrics import Direct, MetricsError, MetricsTarget, PodEndpoint, Prometheus, Reading
from support.fakepod import FakeWorker
from support.paths import REPO
from support.promserver import PrometheusServer, poll, prometheus_binary
from support.simworkers import SimWorker

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed (make system-deps)"),
]

NS, NAME = "rl", "reward"
WINDOW_S = 6.0
SCRAPE_S = 0.5

# Variant a: two pods, 20 rps cycling TTFT 0.1/0.2/0.3/0.4 s and 10 rps at 0.6 s. Of 30 rps, the
# p95 rank 28.5 falls in vLLM's bucket (0.5, 0.75], which holds the 10 above the 20 at ≤ 0.4 s:
# 0.5 + 0.25·8.5/10 = 0.7125.
EXPECTED_A_TTFT_P95 = 0.5 + 0.25 * 8.5 / 10
PODS: dict[str, tuple[str, dict[str, Any]]] = {
    "reward-a-0": ("a", {"rps": 20.0, "ttft": (0.1, 0.2, 0.3, 0.4), "kv_cache": 0.3, "running": 3}),
    # The GRM front's shed counter: 3 samples of each request's budget shed under a queue.
    "reward-a-1": ("a", {"rps": 10.0, "ttft": (0.6,), "kv_cache": 0.5, "running": 2, "shed_per_request": 3}),
    "reward-b-0": (
        "b",
        # The worker's own GPU gauge (as grm-worker exports it), not the DCGM exporter's.
        {
            "rps": 5.0,
            "ttft": (1.2,),
            "itl": (0.06,),
            "kv_cache": 0.9,
            "old_names": True,
            "extra": "# TYPE grm_worker_gpu_utilization_ratio gauge\n"
            'grm_worker_gpu_utilization_ratio{gpu="0"} 0.95\n',
        },
    ),
    "reward-c-0": ("c", {"rps": 0.0, "waiting": 4}),
}
# What NVIDIA's DCGM exporter reports for the GPUs of variant a's pods.
GPU_UTIL = {"reward-a-0": 80, "reward-a-1": 60}


def _scrape_config(workers: dict[str, FakeWorker], dcgm: FakeWorker) -> dict[str, Any]:
    documented = yaml.safe_load((REPO / "examples/prometheus/grm-workers-scrape.yaml").read_text())
    job = documented["scrape_configs"][0]
    del job["kubernetes_sd_configs"]
    # Static targets carrying the labels Kubernetes service discovery would set on each pod.
    static = [
        {
            "targets": [workers[pod].address],
            "labels": {
                "__meta_kubernetes_namespace": NS,
                "__meta_kubernetes_pod_name": pod,
                "__meta_kubernetes_pod_label_grm_dev_deployment": NAME,
                "__meta_kubernetes_pod_label_grm_dev_variant": variant,
                "__meta_kubernetes_pod_container_port_name": "http",
            },
        }
        for pod, (variant, _) in PODS.items()
    ]
    return {
        "global": {"scrape_interval": "500ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {**job, "static_configs": static, "scrape_interval": "500ms"},
            # dcgm-exporter labels each GPU's series with the pod using it; honor_labels keeps them.
            {"job_name": "dcgm", "honor_labels": True, "static_configs": [{"targets": [dcgm.address]}]},
        ],
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[PrometheusServer, dict[str, FakeWorker]]]:
    workers = {pod: FakeWorker(**params) for pod, (_, params) in PODS.items()}
    dcgm_text = "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n" + "".join(
        f'DCGM_FI_DEV_GPU_UTIL{{gpu="0",namespace="{NS}",pod="{pod}"}} {util}\n'
        for pod, util in GPU_UTIL.items()
    )
    dcgm = FakeWorker()
    dcgm.text = lambda: dcgm_text  # type: ignore[method-assign]
    prom = PrometheusServer(_scrape_config(workers, dcgm))
    try:
        # All five targets up, then a full window of samples behind the newest one.
        poll(lambda: True if len(prom.query("up == 1")) == 5 else None, 30, "all targets up")
        poll(lambda: prom.scrapes_on_time(WINDOW_S, SCRAPE_S) or None, 30, "a full window of scrapes")
        yield prom, workers
    finally:
        prom.stop()
        for w in [*workers.values(), dcgm]:
            w.close()


def _target(workers: dict[str, FakeWorker], queries: dict[str, str] | None = None) -> MetricsTarget:
    return MetricsTarget(
        namespace=NS,
        name=NAME,
        variants=("a", "b", "c"),
        pods=tuple(PodEndpoint(pod, variant, workers[pod].url) for pod, (variant, _) in PODS.items()),
        queries=queries or {},
    )


async def _direct_reading(workers: dict[str, FakeWorker]) -> Reading:
    """Scrape every SCRAPE_S for a window, as Prometheus does, then reduce it."""
    direct = Direct()
    target = _target(workers)
    try:
        start = time.monotonic()
        while time.monotonic() - start <= WINDOW_S:
            assert await direct.scrape(target, time.monotonic()) == ()
            await asyncio.sleep(SCRAPE_S)  # the scrape interval itself, not a wait for a condition
        return direct.summarize(target, WINDOW_S, time.monotonic())
    finally:
        await direct.close()


async def _read_on_time(
    prom: PrometheusServer, source: Prometheus, target: MetricsTarget, prompt_s: float = 0.15
) -> Reading:
    """``source``'s reading of a window in which every scrape succeeded promptly (checked before
    and after, so the checks cover the window Prometheus evaluated between them): the tests check
    our queries, not the scrape timing of a loaded machine (``PrometheusServer.scrapes_on_time``)."""
    tries = 20
    for _ in range(tries):
        if prom.scrapes_on_time(WINDOW_S, SCRAPE_S, prompt_s=prompt_s):
            reading = await source.observe(target, WINDOW_S, now=0.0)
            if prom.scrapes_on_time(WINDOW_S, SCRAPE_S, prompt_s=prompt_s):
                return reading
        await asyncio.sleep(SCRAPE_S)  # the next scrape, not a wait for a condition
    raise AssertionError(f"no {WINDOW_S} s window with every scrape on time in {tries} tries")


def _check(reading: Reading, source: str) -> None:
    a, b, c, total = reading.variants["a"], reading.variants["b"], reading.variants["c"], reading.total
    assert a.rps == pytest.approx(30.0, rel=0.12), source
    assert b.rps == pytest.approx(5.0, rel=0.2), source
    assert c.rps == 0.0, source
    assert total.rps == pytest.approx(35.0, rel=0.12), source
    assert a.prompt_tps == pytest.approx(30_000, rel=0.12), source
    assert a.generation_tps == pytest.approx(9_000, rel=0.12), source
    assert a.ttft_p95 == pytest.approx(EXPECTED_A_TTFT_P95, abs=0.03), source
    # Variant b serves only 1.2 s TTFT, in vLLM's bucket (1.0, 2.5]: rank 95 % of the way in.
    assert b.ttft_p95 == pytest.approx(1.0 + 1.5 * 0.95, abs=0.05), source
    # b's ITL comes from the old name vllm:time_per_output_token_seconds: 0.06 s in (0.05, 0.075].
    assert b.itl_p95 is not None and 0.05 < b.itl_p95 <= 0.075, source
    assert c.ttft_p95 is None and c.e2e_p95 is None, f"{source}: idle window must be unknown, not 0"
    # e2e is the front's score latency (FakeWorker's default 5 s, in the bucket (2.5, 5]), not
    # vLLM's per-request histogram (1 s per critique there).
    assert a.e2e_p95 == pytest.approx(2.5 + 2.5 * 0.95, abs=0.05), source
    assert a.running == 5 and c.waiting == 4 and total.waiting == 4, source
    # Shed samples: 10 rps × 3 on a-1; pods without the counter are unknown, not 0.
    assert a.shed_sps == pytest.approx(30.0, rel=0.12), source
    assert total.shed_sps == pytest.approx(30.0, rel=0.12), source
    assert b.shed_sps is None and c.shed_sps is None, source
    assert a.kv_cache_usage == pytest.approx(0.4) and b.kv_cache_usage == pytest.approx(0.9), source
    assert a.pods_reporting == 2 and total.pods_reporting == 4, source
    assert total.sample_age_s is not None and total.sample_age_s < 3 * SCRAPE_S, source


async def test_the_prometheus_source_reads_what_the_workers_serve(
    cluster: tuple[PrometheusServer, dict[str, FakeWorker]],
) -> None:
    prom, workers = cluster
    source = Prometheus(prom.url)
    try:
        reading = await _read_on_time(prom, source, _target(workers))
    finally:
        await source.close()
    _check(reading, "prometheus")
    # a: from the DCGM exporter, joined to our pods through `up`'s variant label; b: the worker's
    # own gauge. Percent → 0–1.
    assert reading.variants["a"].gpu_util == pytest.approx(0.70)
    assert reading.variants["b"].gpu_util == pytest.approx(0.95)
    assert reading.variants["c"].gpu_util is None
    assert reading.total.gpu_util == pytest.approx(235 / 300)


async def test_the_direct_source_agrees_with_prometheus(
    cluster: tuple[PrometheusServer, dict[str, FakeWorker]],
) -> None:
    prom, workers = cluster
    direct = await _direct_reading(workers)
    _check(direct, "direct")
    # The Direct source sees the worker's own GPU gauge, not the DCGM exporter's series.
    assert direct.variants["b"].gpu_util == pytest.approx(0.95) and direct.variants["a"].gpu_util is None
    source = Prometheus(prom.url)
    try:
        via_prom = await _read_on_time(prom, source, _target(workers))
    finally:
        await source.close()
    for variant in ("a", "b"):
        d, p = direct.variants[variant], via_prom.variants[variant]
        assert d.rps == pytest.approx(p.rps, rel=0.15)
        assert d.ttft_p95 == pytest.approx(p.ttft_p95, rel=0.1)
        assert d.itl_p95 == pytest.approx(p.itl_p95, rel=0.1)
        assert d.e2e_p95 == pytest.approx(p.e2e_p95, rel=0.1)


async def test_query_overrides_substitute_selector_and_window(
    cluster: tuple[PrometheusServer, dict[str, FakeWorker]],
) -> None:
    prom, workers = cluster
    doubled = "2 * sum by (grm_dev_variant) (rate(vllm:request_success_total{selector}[{window}]))"
    finished = (
        "sum by (grm_dev_variant) "
        '(rate(vllm:request_success_total{{matchers},finished_reason!="x"}[{window}]))'
    )
    source = Prometheus(prom.url)
    try:
        reading = await _read_on_time(prom, source, _target(workers, {"rps": doubled}))
        # Without a total series the total of a rate is the sum of the variants.
        assert reading.variants["a"].rps == pytest.approx(60.0, rel=0.12)
        assert reading.total.rps == pytest.approx(70.0, rel=0.12)
        # {matchers} combines with matchers of one's own.
        reading = await _read_on_time(prom, source, _target(workers, {"rps": finished}))
        assert reading.variants["a"].rps == pytest.approx(30.0, rel=0.12)
        with pytest.raises(MetricsError, match="unknown signal"):
            await source.observe(_target(workers, {"latency": "up"}), WINDOW_S, now=0.0)
        with pytest.raises(MetricsError, match="rejected"):
            await source.observe(_target(workers, {"rps": "sum(rate(x[{window}]"}), WINDOW_S, now=0.0)
    finally:
        await source.close()


async def test_an_unknown_deployment_reads_as_unknown_and_a_dead_server_as_an_error(
    cluster: tuple[PrometheusServer, dict[str, FakeWorker]],
) -> None:
    prom, workers = cluster
    source = Prometheus(prom.url)
    try:
        other = MetricsTarget(namespace=NS, name="nobody", variants=("a",))
        reading = await source.observe(other, WINDOW_S, now=0.0)
        assert reading.total.known() == 0 and reading.variants["a"].known() == 0
    finally:
        await source.close()
    dead = Prometheus("http://127.0.0.1:9", timeout_s=1)
    try:
        with pytest.raises(MetricsError, match="failed"):
            await dead.observe(_target(workers), WINDOW_S, now=0.0)
    finally:
        await dead.close()


# --- real sim workers under load ------------------------------------------------------------------

SIM_RATES = {"a": 8.0, "b": 4.0}  # requests per second sent to each variant's worker


@pytest.fixture(scope="module")
def sim_cluster() -> Iterator[tuple[PrometheusServer, dict[str, SimWorker]]]:
    workers: dict[str, SimWorker] = {}
    prom: PrometheusServer | None = None
    try:
        for variant in SIM_RATES:
            workers[variant] = SimWorker(variant)
        documented = yaml.safe_load((REPO / "examples/prometheus/grm-workers-scrape.yaml").read_text())
        job = documented["scrape_configs"][0]
        del job["kubernetes_sd_configs"]
        static = [
            {
                "targets": [w.address],
                "labels": {
                    "__meta_kubernetes_namespace": NS,
                    "__meta_kubernetes_pod_name": f"sim-{v}-0",
                    "__meta_kubernetes_pod_label_grm_dev_deployment": "sim",
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
        poll(lambda: True if len(prom.query('up{grm_dev_deployment="sim"} == 1')) == 2 else None, 30, "up")
        yield prom, workers
    finally:
        if prom is not None:
            prom.stop()
        for w in workers.values():
            w.stop()


async def _load(session: aiohttp.ClientSession, worker: SimWorker, rps: float, stop: asyncio.Event) -> int:
    """Open-loop load: one GRM score request every 1/rps seconds until ``stop``; count the OKs.
    One sample each, so a score is one engine request: the engine's request rate is ``rps`` and
    the e2e signal (the front's score latency) has as many observations."""
    ok = 0

    async def one() -> None:
        nonlocal ok
        body = {
            "query": "Compare the two answers and score them. " * 8,
            "responses": ["4", "5"],
            "samples": 1,
        }
        async with session.post(f"{worker.base_url}/v1/grm/score", json=body) as resp:
            ok += resp.status == 200
            await resp.read()

    tasks: list[asyncio.Task[None]] = []
    while not stop.is_set():
        tasks.append(asyncio.create_task(one()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1 / rps)  # the arrival schedule, not a condition wait
    await asyncio.gather(*tasks)
    return ok


async def test_both_sources_agree_on_real_sim_workers_under_load(
    sim_cluster: tuple[PrometheusServer, dict[str, SimWorker]],
) -> None:
    prom, workers = sim_cluster
    target = MetricsTarget(
        namespace=NS,
        name="sim",
        variants=tuple(workers),
        pods=tuple(PodEndpoint(f"sim-{v}-0", v, w.metrics_url) for v, w in workers.items()),
    )
    direct, source = Direct(), Prometheus(prom.url)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        loads = [asyncio.create_task(_load(session, workers[v], r, stop)) for v, r in SIM_RATES.items()]
        try:
            # Warm up one window so both sources see steady load over a whole window.
            start = time.monotonic()
            while time.monotonic() - start <= 2 * WINDOW_S:
                assert await direct.scrape(target, time.monotonic()) == ()
                await asyncio.sleep(SCRAPE_S)  # the scrape interval
            by_direct = direct.summarize(target, WINDOW_S, time.monotonic())
            # A busy sim worker answers a scrape more slowly than a fixture; 0.3 s is 5 % of the window.
            by_prom = await _read_on_time(prom, source, target, prompt_s=0.3)
        finally:
            stop.set()
            sent = await asyncio.gather(*loads)
            await direct.close()
            await source.close()
    assert all(n > 0 for n in sent)
    for variant, rate in SIM_RATES.items():
        d, p = by_direct.variants[variant], by_prom.variants[variant]
        assert d.rps == pytest.approx(rate, rel=0.25), variant
        assert p.rps == pytest.approx(rate, rel=0.25), variant
        assert d.rps == pytest.approx(p.rps, rel=0.2), variant
        assert d.generation_tps == pytest.approx(p.generation_tps, rel=0.2), variant
        for name in ("ttft_p95", "itl_p95", "e2e_p95", "e2e_p50"):
            dv, pv = getattr(d, name), getattr(p, name)
            assert dv is not None and pv is not None, (variant, name)
            assert dv == pytest.approx(pv, rel=0.25), (variant, name)
        # An instantaneous gauge (busy fraction of the last simulated second): only its range is
        # comparable between two reads taken at different instants.
        assert d.gpu_util is not None and p.gpu_util is not None
        assert 0 <= d.gpu_util <= 1 and 0 <= p.gpu_util <= 1
        assert d.pods_reporting == p.pods_reporting == 1
    assert by_direct.total.rps == pytest.approx(by_prom.total.rps, rel=0.2)
