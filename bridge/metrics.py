"""Prometheus metrics (SPEC §8), summed across gunicorn workers.

With several workers each process counts in its own files under PROMETHEUS_MULTIPROC_DIR (set by
the gunicorn config before any worker imports prometheus_client) and a scrape of any worker adds
them up. Without that variable (a single process) the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values

_process_id = os.getpid()


def _forked() -> None:
    global _process_id
    _process_id = os.getpid()


os.register_at_fork(after_in_child=_forked)
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each process's values go to files named by its pid, which prometheus_client asks the kernel for
    # on every increment (a dozen getpid() syscalls per request); the pid changes only at a fork.
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _process_id)

LABELS = ("provider", "model", "client")

INTERCEPTIONS = Counter("interceptions", "Intercepted requests, by upstream status", (*LABELS, "status"))
INFLIGHT = Gauge("interceptions_inflight", "Intercepted requests in progress", LABELS, multiprocess_mode="livesum")
DURATION = Histogram("interceptions_duration_seconds", "Time from request to the end of the response", LABELS,
                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
PASSTHROUGH = Counter("passthrough", "Requests relayed on passthrough routes (not recorded)", ("provider", "method"))
PROMPTS = Counter("prompts", "User prompts recorded", LABELS)
TOKENS = Counter("tokens", "Tokens used, by kind (input, output, cache_read, cache_write)", (*LABELS, "type"))
TOOL_SELECTIONS = Counter("non_injected_tool_selections", "Tool calls made by the model (tools the client defined)",
                          (*LABELS, "tool"))

BREAKER_LABELS = ("provider", "endpoint", "model")
# Per worker process; across workers the scrape shows the worst state of a live worker.
BREAKER_STATE = Gauge("circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open", BREAKER_LABELS,
                      multiprocess_mode="livemax")
BREAKER_TRIPS = Counter("circuit_breaker_trips", "Times a circuit breaker opened", BREAKER_LABELS)
BREAKER_REJECTS = Counter("circuit_breaker_rejects", "Requests refused by an open circuit breaker", BREAKER_LABELS)
UPSTREAM_RETRIES = Counter("upstream_retries", "Upstream calls retried before the first byte, by the status "
                           "that caused it (502/504: no answer)", ("provider", "status"))
LIMIT_REJECTS = Counter("limit_rejects", "Intercepted requests refused by MAX_CONCURRENCY or RATE_LIMIT",
                        ("provider", "limit"))


_SERIES: dict[tuple, object] = {}


def series(metric, *labels: str):
    """``metric.labels(*labels)``, remembered: each call of it validates and locks, several times per request.
    The metric keeps every series it made anyway, so remembering them adds nothing that grows."""
    key = (metric, labels)
    child = _SERIES.get(key)
    if child is None:
        child = _SERIES[key] = metric.labels(*labels)
    return child


def exposition() -> tuple[bytes, str]:
    """The scrape body and its content type."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST
