"""The Prometheus source's pure parts: query templates, substitution, reading answers (NaN,
missing series, scalars, totals derived when an override gives none). The queries themselves
run against a real Prometheus in tests/integration/grm_operator/test_metrics_sources.py."""

from __future__ import annotations

import pytest

from grm_operator.metrics.prometheus import (
    SIGNAL_FIELDS,
    default_queries,
    promql_duration,
    render_query,
    selector,
    split_result,
)
from grm_operator.metrics.source import MetricsError


def vector(*series: tuple[dict[str, str], str]) -> dict[str, object]:
    return {"resultType": "vector", "result": [{"metric": m, "value": [1.0, v]} for m, v in series]}


def test_every_signal_has_a_default_query_with_both_placeholders_where_it_reads_series() -> None:
    queries = default_queries()
    assert set(queries) == set(SIGNAL_FIELDS)
    for key, query in queries.items():
        assert "{selector}" in query, key
    for key in ("rps", "ttftP95", "itlP95", "e2eP95", "promptTokens"):
        assert "[{window}]" in queries[key], key


def test_renamed_metrics_are_read_new_name_first() -> None:
    q = default_queries()
    assert q["kvCacheUsage"].index("vllm:kv_cache_usage_perc") < q["kvCacheUsage"].index(
        "vllm:gpu_cache_usage_perc"
    )
    assert q["itlP95"].index("vllm:inter_token_latency_seconds") < q["itlP95"].index(
        "vllm:time_per_output_token_seconds"
    )


def test_e2e_quantiles_read_the_fronts_score_latency_not_vllms_per_request_histogram() -> None:
    q = default_queries()
    for key in ("e2eP50", "e2eP95"):
        assert "rate(grm_score_latency_seconds_bucket{selector}[{window}])" in q[key], key
        assert "vllm:e2e_request_latency_seconds" not in q[key], key


def test_gpu_util_reads_the_workers_ratio_and_falls_back_to_dcgm_exporter_in_percent() -> None:
    q = default_queries()["gpuUtil"]
    assert "grm_worker_gpu_utilization_ratio{selector}" in q
    # dcgm-exporter's series only where our scrape labels are absent, scaled from percent.
    assert 'DCGM_FI_DEV_GPU_UTIL{grm_dev_deployment=""} / 100' in q
    assert "DCGM_FI_DEV_GPU_UTIL{selector}" not in q
    assert q.index("grm_worker_gpu_utilization_ratio") < q.index("DCGM_FI_DEV_GPU_UTIL")


def test_render_substitutes_selector_matchers_and_window() -> None:
    sel = selector("rl", "reward")
    assert sel == '{namespace="rl",grm_dev_deployment="reward"}'
    rendered = render_query('rate(x{selector}[{window}]) + y{{matchers},a="b"}', sel, 90)
    assert rendered == (
        'rate(x{namespace="rl",grm_dev_deployment="reward"}[90s]) + '
        'y{namespace="rl",grm_dev_deployment="reward",a="b"}'
    )
    assert promql_duration(1.5) == "1500ms" and promql_duration(60) == "60s"


def test_answers_split_into_variants_and_total_and_nan_is_unknown() -> None:
    total, by_variant = split_result(
        vector(({"grm_dev_variant": "bf16"}, "0.3"), ({"grm_dev_variant": "fp8"}, "NaN"), ({}, "0.31"))
    )
    assert total == 0.31 and by_variant == {"bf16": 0.3, "fp8": None}
    assert split_result(vector()) == (None, {})
    assert split_result({"resultType": "scalar", "result": [1.0, "+Inf"]}) == (None, {})
    assert split_result({"resultType": "scalar", "result": [1.0, "4"]}) == (4.0, {})
    with pytest.raises(MetricsError):
        split_result({"resultType": "matrix", "result": []})


def test_rps_leaves_out_shadow_work_and_verdicts_read_over_the_shadow_window() -> None:
    q = default_queries()
    # Demand: the engines' finished requests less those run for other variants' shadow scores,
    # the plain rate where a worker has no shadow counter.
    assert (
        "- sum by (grm_dev_variant) (rate(grm_shadow_served_samples_total{selector}[{window}]))" in q["rps"]
    )
    assert q["rps"].endswith("or sum (rate(vllm:request_success_total{selector}[{window}]))")
    for key, name in (
        ("shadowVerdicts", "grm_shadow_verdicts_total"),
        ("shadowAgreements", "grm_shadow_agreements_total"),
    ):
        assert f"increase({name}{{selector}}[{{shadowWindow}}])" in q[key], key
    sel = selector("rl", "reward")
    assert render_query(q["shadowVerdicts"], sel, 60, 3600).count("[3600s]") == 2
    assert render_query(q["shadowVerdicts"], sel, 60).count("[60s]") == 2
