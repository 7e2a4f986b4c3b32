"""Metrics sources: how the operator observes a GRMDeployment's workers.

Two sources behind one interface (:class:`MetricsSource`): :class:`Prometheus` (PromQL over the
workers' ``vllm:*`` series) and :class:`Direct` (the operator scrapes each Ready pod itself).
Both reduce a window of metrics to :class:`Signals` per variant and in total. The pure parts —
exposition parsing, PromQL's ``histogram_quantile``, windowed rates with counter resets — live
in :mod:`.exposition` and :mod:`.window` and are tested without servers.
"""

from grm_operator.metrics.direct import Direct
from grm_operator.metrics.exposition import ExpositionError, HistogramCounts, PodScrape, parse_scrape
from grm_operator.metrics.prometheus import Prometheus, default_queries, selector
from grm_operator.metrics.source import MetricsError, MetricsSource, MetricsTarget, PodEndpoint, Reading
from grm_operator.metrics.window import ScrapeStore, histogram_quantile, summarize
from grm_operator.policy.signals import Signals

__all__ = [
    "Direct",
    "ExpositionError",
    "HistogramCounts",
    "MetricsError",
    "MetricsSource",
    "MetricsTarget",
    "PodEndpoint",
    "PodScrape",
    "Prometheus",
    "Reading",
    "ScrapeStore",
    "Signals",
    "default_queries",
    "histogram_quantile",
    "parse_scrape",
    "selector",
    "summarize",
]
