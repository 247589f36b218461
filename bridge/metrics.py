"""Prometheus metrics (SPEC §8), summed across gunicorn workers.

With several workers each process counts in its own files under PROMETHEUS_MULTIPROC_DIR (set by
the gunicorn config before any worker imports prometheus_client) and a scrape of any worker adds
them up. Without that variable (a single process) the default registry is used.

Label values a client (or the model it talks to) chooses are bounded: per provider, the first
MAX_MODELS distinct models the upstream served (answered below 400) keep their name and every other
one is counted as ``other`` (so a made-up model the upstream refuses never takes a place), and
likewise the first MAX_TOOL_PAIRS distinct (model, tool) pairs. A label value never holds a secret:
it is masked (bridge.masking) before it is admitted. Each series costs
memory in every worker and bytes in every scrape, so an unbounded label lets any user take a
worker down through ``/metrics``. The ``client`` label is one of a fixed set (bridge.clients).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from bridge import patches
from bridge.masking import Masker

_process_id = os.getpid()


def _forked() -> None:
    global _process_id, _scrape_pool
    _process_id = os.getpid()
    _scrape_pool = None  # the parent's native thread does not exist in the child


os.register_at_fork(after_in_child=_forked)
_DIRECTORY = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _DIRECTORY:
    # Each process's values go to files named by its pid, which prometheus_client asks the kernel for
    # on every increment (a dozen getpid() syscalls per request); the pid changes only at a fork.
    patches.metrics_process_identifier(lambda: _process_id)

LABELS = ("provider", "model", "client")

INTERCEPTIONS = Counter("interceptions", "Intercepted requests, by upstream status", (*LABELS, "status"))
INFLIGHT = Gauge("interceptions_inflight", "Intercepted requests in progress", LABELS, multiprocess_mode="livesum")
DURATION = Histogram("interceptions_duration_seconds", "Time from request to the end of the response", LABELS,
                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
PASSTHROUGH = Counter("passthrough", "Requests relayed on passthrough routes (not recorded)", ("provider", "method"))
PROMPTS = Counter("prompts", "User prompts recorded", LABELS)
TOKENS = Counter("tokens", "Tokens used, by kind (input, output, cache_read, cache_write)", (*LABELS, "type"))
COST = Counter("cost_usd", "What the recorded token usages cost, in USD (calls to models without a price add nothing)",
               LABELS)
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
BUDGET_REJECTIONS = Counter("budget_rejections", "Intercepted requests refused because the caller's budget is spent, "
                            "by the budget that refused (user: their own; default)", ("provider", "budget"))

# Every family, also one with no sample yet: a multiprocess scrape only sees families with samples.
_EMPTY_FAMILIES = tuple(family for metric in (
    INTERCEPTIONS, INFLIGHT, DURATION, PASSTHROUGH, PROMPTS, TOKENS, TOOL_SELECTIONS, BREAKER_STATE, BREAKER_TRIPS,
    BREAKER_REJECTS, UPSTREAM_RETRIES, LIMIT_REJECTS, BUDGET_REJECTIONS) for family in metric.describe())

# --- bounded label values ------------------------------------------------------------------------

OTHER = "other"
#: Models per provider with a series of their own; enough for every model a provider serves.
MAX_MODELS = 100
#: (model, tool) pairs per provider with a series of their own: a model picks tools among those the
#: client defined, so their names are as free as the model's; pairs, not names, bound the product.
MAX_TOOL_PAIRS = 200
#: A label value is cut to this length (model names are far shorter).
MAX_LABEL_LENGTH = 200
#: The file names of the admitted label values in PROMETHEUS_MULTIPROC_DIR (cleared at startup
#: with the metrics files by bridge.gunicorn_conf).
LABELS_SUFFIX = ".labels"


class _Admitted:
    """The values admitted for one provider, and how far this process has read the shared file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.values: set = set()
        self.offset = 0

    def admit(self, value, limit: int) -> bool:
        if self.path is None:
            if len(self.values) >= limit:
                return False
            self.values.add(value)
            return True
        try:
            with open(self.path, "a+b") as file:  # O_APPEND: each line lands whole at the end
                fcntl.flock(file, fcntl.LOCK_EX)  # held for microseconds; released by close()
                file.seek(self.offset)
                self._read(file.read())  # what the other workers admitted meanwhile
                if value in self.values:
                    return True
                if len(self.values) >= limit:
                    return False
                line = json.dumps(value).encode() + b"\n"
                file.write(line)
                self.values.add(value)
                self.offset += len(line)
                return True
        except (OSError, ValueError):  # an unusable metrics directory or file: OTHER rather than a failed request
            return False

    def refresh(self) -> None:
        """Read what the other workers admitted since the last read."""
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as file:
                fcntl.flock(file, fcntl.LOCK_SH)  # no half-written line
                file.seek(self.offset)
                self._read(file.read())
        except (OSError, ValueError):  # none admitted yet (no file), or an unusable one: as known so far
            pass

    def _read(self, data: bytes) -> None:
        for line in data.splitlines():
            value = json.loads(line)
            self.values.add(tuple(value) if isinstance(value, list) else value)
        self.offset += len(data)


class LabelBudget:
    """The first ``limit`` distinct values of a label seen, per provider; any later value is OTHER.

    With several workers the admitted values are shared through a file per provider in the metrics
    directory (appended to under an exclusive lock), so all workers admit the same ones and a scrape
    has at most limit + 1 of them. A value seen before, and any value once the budget is full, costs
    a set lookup; only the first sight of each of the ``limit`` values touches the file."""

    def __init__(self, kind: str, limit: int, directory: str | None) -> None:
        self._kind = kind
        self._limit = limit
        self._directory = directory
        self._providers: dict[str, _Admitted] = {}

    def label(self, provider: str, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        """``value`` if it has (or now gets) a series of its own, else OTHER."""
        admitted = self._admitted(provider)
        if value in admitted.values:
            return value
        if len(admitted.values) >= self._limit:
            return OTHER
        return value if admitted.admit(value, self._limit) else OTHER

    def known(self, provider: str, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        """``value`` if it has a series of its own already (in any worker), else OTHER; admits nothing."""
        admitted = self._admitted(provider)
        if value not in admitted.values and len(admitted.values) < self._limit:
            admitted.refresh()  # another worker may have admitted it
        return value if value in admitted.values else OTHER

    def _admitted(self, provider: str) -> _Admitted:
        admitted = self._providers.get(provider)
        if admitted is None:
            admitted = self._providers[provider] = _Admitted(self._path(provider))
        return admitted

    def _path(self, provider: str) -> str | None:
        if not self._directory:
            return None
        digest = hashlib.sha256(provider.encode()).hexdigest()[:16]  # provider names are free text
        return os.path.join(self._directory, f"{self._kind}-{digest}{LABELS_SUFFIX}")


_MODELS = LabelBudget("models", MAX_MODELS, _DIRECTORY)
_TOOL_PAIRS = LabelBudget("tools", MAX_TOOL_PAIRS, _DIRECTORY)


#: Label values are masked by shape (gateway tokens, public key formats) here; the caller masks the
#: configured keys it knows of (bridge.interception masks the model with every provider's).
_SHAPES = Masker()


def model_label(provider: str, model: str) -> str:
    """The ``model`` label of a request to ``provider`` (also its circuit breaker's series): the
    model if it was admitted already (``served_model_label``), else OTHER. Admits nothing."""
    return _MODELS.known(provider, _label_value(model))


def served_model_label(provider: str, model: str) -> str:
    """The ``model`` label of a model the upstream answered successfully: admitted if there is room."""
    return _MODELS.label(provider, _label_value(model))


def _label_value(value: str) -> str:
    # masked before the cut (a secret across it is masked whole), from a bounded start of the value
    return (_SHAPES.text(str(value)[:4 * MAX_LABEL_LENGTH]) or "")[:MAX_LABEL_LENGTH]


def tool_label(provider: str, model: str, tool: str) -> str:
    """The ``tool`` label of a tool call made by the model labelled ``model``: the tool's name, or OTHER."""
    tool = _label_value(tool)
    return tool if _TOOL_PAIRS.label(provider, (model, tool)) != OTHER else OTHER


# --- series and the scrape -----------------------------------------------------------------------

_SERIES: dict[tuple, object] = {}


def series(metric, *labels: str):
    """``metric.labels(*labels)``, remembered: each call of it validates and locks, several times per request.
    The metric keeps every series it made anyway (as many as the bounded labels allow), so remembering
    them adds nothing that grows."""
    key = (metric, labels)
    child = _SERIES.get(key)
    if child is None:
        child = _SERIES[key] = metric.labels(*labels)
    return child


class _Families:
    """What generate_latest() scrapes: the families read from every worker's files."""

    def __init__(self, families: list) -> None:
        self._families = families

    def collect(self) -> list:
        return self._families


_scrape_pool = None


def exposition() -> tuple[bytes, str]:
    """The scrape body and its content type.

    The multiprocess scrape reads and sums every worker's files: it runs on a native thread, so
    that however long it takes the event loop keeps serving; one scrape at a time per worker."""
    if not _DIRECTORY:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    global _scrape_pool
    if _scrape_pool is None:
        from gevent.threadpool import ThreadPool

        _scrape_pool = ThreadPool(1)
    return _scrape_pool.apply(_multiprocess_exposition, (_DIRECTORY,)), CONTENT_TYPE_LATEST


def _multiprocess_exposition(directory: str) -> bytes:
    from prometheus_client.multiprocess import MultiProcessCollector

    families = list(MultiProcessCollector(None, path=directory).collect())
    present = {family.name for family in families}
    families.extend(family for family in _EMPTY_FAMILIES if family.name not in present)
    return generate_latest(_Families(families))
