"""The engine's queue as the front reads it: parsing vLLM's gauge and queue-time histogram, and
telling a full batch from a request that waits for the next engine step."""

from __future__ import annotations

import pytest

from grm_worker.contract.shedding import QueueReading, queue_blocked
from grm_worker.queue import engine_queue
from support.paths import FIXTURES

FIXTURE = FIXTURES / "vllm-0.32-metrics.txt"
MIN_WAIT_S = 0.25


def test_a_real_vllm_dump_reads_as_an_idle_queue_with_its_histogram() -> None:
    reading = engine_queue(FIXTURE.read_text())
    # 11 requests admitted after 0.38 ms of queueing in all: on an idle engine a request waits
    # for the next step, not for room in the batch.
    assert reading == QueueReading(0.0, 11.0, pytest.approx(0.000378283, rel=1e-6))


def test_label_sets_are_summed_and_a_missing_histogram_is_unknown() -> None:
    text = (
        'vllm:num_requests_waiting{engine="0"} 2.0\n'
        'vllm:num_requests_waiting{engine="1"} 1.0\n'
        'vllm:request_queue_time_seconds_count{engine="0"} 4.0\n'
        'vllm:request_queue_time_seconds_count{engine="1"} 6.0\n'
        'vllm:request_queue_time_seconds_sum{engine="0"} 1.5\n'
        'vllm:request_queue_time_seconds_sum{engine="1"} 0.5\n'
        'vllm:request_queue_time_seconds_bucket{engine="0",le="+Inf"} 4.0\n'
    )
    assert engine_queue(text) == QueueReading(3.0, 10.0, 2.0)
    assert engine_queue('vllm:num_requests_waiting{engine="0"} 2.0\n') == QueueReading(2.0)
    assert engine_queue("vllm:num_requests_running 5.0\n") is None


def test_a_request_between_two_steps_is_not_a_full_batch() -> None:
    # 30 requests admitted since the last read, 30 ms each on average, one waiting now.
    previous = QueueReading(1.0, 100.0, 3.0)
    assert queue_blocked(previous, QueueReading(1.0, 130.0, 3.9), MIN_WAIT_S) is False


def test_requests_that_waited_long_mean_a_full_batch() -> None:
    previous = QueueReading(0.0, 100.0, 3.0)
    # 10 admitted after 0.8 s each: full, even though the previous read saw no queue.
    assert queue_blocked(previous, QueueReading(4.0, 110.0, 11.0), MIN_WAIT_S) is True


def test_a_queue_that_admitted_nothing_between_two_reads_is_a_full_batch() -> None:
    assert queue_blocked(QueueReading(2.0, 100.0, 3.0), QueueReading(3.0, 100.0, 3.0), MIN_WAIT_S) is True
    # A request that arrived since the previous read (which saw none) has not waited a whole poll.
    assert queue_blocked(QueueReading(0.0, 100.0, 3.0), QueueReading(1.0, 100.0, 3.0), MIN_WAIT_S) is False


def test_without_the_histogram_a_queue_on_two_reads_in_a_row_counts() -> None:
    assert queue_blocked(QueueReading(1.0), QueueReading(2.0), MIN_WAIT_S) is True
    assert queue_blocked(QueueReading(0.0), QueueReading(2.0), MIN_WAIT_S) is False


def test_unknown_first_empty_and_restarted_readings() -> None:
    assert queue_blocked(QueueReading(2.0), None, MIN_WAIT_S) is None
    assert queue_blocked(None, QueueReading(2.0, 5.0, 9.0), MIN_WAIT_S) is False  # one read: no interval
    assert queue_blocked(QueueReading(2.0, 5.0, 9.0), QueueReading(0.0, 9.0, 20.0), MIN_WAIT_S) is False
    # The engine restarted: its counters went back.
    assert queue_blocked(QueueReading(2.0, 500.0, 90.0), QueueReading(2.0, 3.0, 4.0), MIN_WAIT_S) is False
