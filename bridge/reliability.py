"""Keeping a failing upstream from taking the gateway down with it (SPEC §7): circuit breakers,
retries before the first byte, and the per-process concurrency and rate limits.

Everything here is per worker process and lives on gevent's hub. There are no real threads, and no
state change sleeps or does I/O halfway (logs and metrics are written after the state is settled),
so each change is atomic for greenlets.

Semantics
---------
Circuit breaker (``CODER_AIBRIDGE_CIRCUIT_BREAKER_*``), one per provider instance, endpoint (the
route, e.g. ``v1/messages``) and model (as the record names it: masked); intercepted routes only.
  - At most MAX_BREAKERS_PER_ROUTE models per provider and endpoint have a breaker (the model is
    client-chosen): for a new one the least recently used closed breaker is forgotten, never an
    open or half-open one; when none is closed, the new model shares the route's one fallback
    breaker. The breaker's metrics and log lines name the model by its metrics label
    (bridge.metrics.model_label: bounded, ``other`` for a model the upstream has not served yet).
  - A *failure* is an upstream answer of 429, 503, 504 or 529, an unreachable upstream (connection
    refused/reset, connect timeout) or an upstream that did not answer in time. Any other answer,
    500 included, is a success: the upstream is there and not overloaded.
  - Closed: FAILURE_THRESHOLD consecutive failures open it. A success resets the count. While closed,
    the counts are also cleared every INTERVAL (a cyclic window, as gobreaker's ``Interval``);
    INTERVAL=0 never clears them by time (only a success does).
  - Open: requests get 503 in the provider's shape with ``Retry-After`` (whole seconds until it turns
    half-open), without reaching the upstream. After TIMEOUT it turns half-open.
  - Half-open: at most MAX_REQUESTS probe requests are let through (others get 503 with
    ``Retry-After: 1``); when MAX_REQUESTS probes have succeeded it closes, the first failed probe
    opens it again for another TIMEOUT.
  - The outcome of a request admitted before a state change is ignored (gobreaker's generations).
  - Every state change is one log line naming provider, endpoint, model and the new state, and the
    metrics ``circuit_breaker_state`` (0 closed, 1 half-open, 2 open; across workers the worst live
    one), ``circuit_breaker_trips_total`` and ``circuit_breaker_rejects_total``.

Retries (``CODER_AIBRIDGE_PROVIDER_<N>_MAX_RETRIES``, default 2), decided on the status line and
headers only, so never after a byte reached the client:
  - retried: a connection error (refused, reset or closed before an answer, connect timeout), 429
    and 5xx (529 included) except 501; an ``x-should-retry`` header from the upstream overrides
    this either way, as the providers' SDKs do.
  - not retried: an upstream that accepted the request and then did not answer within the read
    timeout (it may be working on it; waiting that long again and again would hang the client),
    anything after the headers (a stream that breaks ends with the provider's error event).
  - wait: ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date) when the upstream sends
    one, else 0.5 s × 2^n (at most 8 s) minus up to 25 % jitter. A Retry-After above 10 s is not
    waited for: the client gets that answer at once (its SDK honours the header itself).
  - each retry is one log line; the client gets the last answer (the upstream's own status and
    body), or the gateway's 502/504 when the last attempt got none. An open breaker stops retries.

Limits (``CODER_AIBRIDGE_MAX_CONCURRENCY``, ``CODER_AIBRIDGE_RATE_LIMIT``; 0 = unlimited), per
worker process, on intercepted routes after authentication and before the body is read: over
either → 429 in the provider's shape with ``Retry-After``, nothing sent upstream, nothing
recorded. A stream holds its slot until it ends (or the client goes away). The rate limit is a
token bucket refilled at RATE per second holding max(1, RATE) tokens. Passthrough routes (model
lists, token counting, …) are light and unrecorded: neither limits nor breakers apply to them.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from email.utils import parsedate_to_datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Callable, Mapping

from loguru import logger

from bridge import metrics
from bridge.config import CircuitBreakerSettings
from bridge.errors import GatewayError

if TYPE_CHECKING:
    import requests

#: Upstream answers a breaker counts as failures (Anthropic's 529 "overloaded" included).
BREAKER_FAILURE_STATUSES = frozenset({429, 503, 504, 529})
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
#: The longest Retry-After the gateway waits out itself; a longer one goes back to the client.
RETRY_AFTER_MAX = 10.0
Clock = Callable[[], float]


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


_STATE_NAMES = {State.CLOSED: "closed", State.HALF_OPEN: "half-open", State.OPEN: "open"}


class UpstreamFailure(GatewayError):
    """No answer from the upstream: the gateway's own 502/504.

    ``retryable``: nothing reached the upstream or it dropped the connection before answering.
    ``breaker_failure``: counts against the circuit breaker (unreachable or too slow)."""

    def __init__(self, status: int, message: str, *, retryable: bool, breaker_failure: bool) -> None:
        super().__init__(status, message)
        self.retryable = retryable
        self.breaker_failure = breaker_failure


class CircuitOpen(GatewayError):
    def __init__(self, breaker: "CircuitBreaker", retry_after: int) -> None:
        provider, endpoint, model = breaker.key
        super().__init__(503, f"circuit breaker open for provider {provider!r} ({endpoint}, model {model!r}): "
                              f"the upstream keeps failing; retry in {retry_after}s",
                         headers={"Retry-After": str(retry_after)})


class CircuitBreaker:
    """One provider instance + endpoint + model (``key``; the model OTHER for a route's fallback breaker)."""

    def __init__(self, settings: CircuitBreakerSettings, key: tuple[str, str, str], clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self.key = key
        self._clock = clock
        self.state = State.CLOSED
        self._generation = 0
        self._failures = 0      # consecutive, while closed
        self._admitted = 0      # probes let through, while half-open
        self._successes = 0     # successful probes, while half-open
        self._open_until = 0.0
        self._window_end = self._next_window(clock())
        labels = self.labels
        if labels[2] != metrics.OTHER:  # "other" is shared: a new closed breaker must not hide an open one
            metrics.BREAKER_STATE.labels(*labels).set(State.CLOSED)

    @property
    def labels(self) -> tuple[str, str, str]:
        """The breaker's metrics labels: the model's bounded label, looked up each time (it gets its
        own once the upstream serves it)."""
        provider, endpoint, model = self.key
        return provider, endpoint, metrics.model_label(provider, model)

    def admit(self) -> int:
        """Let one request through: returns its ticket for ``record``; raises CircuitOpen otherwise."""
        now = self._clock()
        self._advance(now)
        if self.state == State.OPEN:
            return self._reject(max(1, math.ceil(self._open_until - now)))
        if self.state == State.HALF_OPEN:
            if self._admitted >= self._settings.max_requests:
                return self._reject(1)  # the probes are out; their answers decide soon
            self._admitted += 1
        return self._generation

    def record(self, ticket: int, failed: bool | None) -> None:
        """The outcome of an admitted request: True failed, False succeeded, None says nothing
        about the upstream (the probe slot is given back)."""
        now = self._clock()
        self._advance(now)
        if ticket != self._generation:
            return  # admitted before the last state change
        if failed is None:
            if self.state == State.HALF_OPEN:
                self._admitted -= 1
        elif failed:
            if self.state == State.HALF_OPEN:
                self._change(State.OPEN, now)
            elif self.state == State.CLOSED:
                self._failures += 1
                if self._failures >= self._settings.failure_threshold:
                    self._change(State.OPEN, now)
        elif self.state == State.HALF_OPEN:
            self._successes += 1
            if self._successes >= self._settings.max_requests:
                self._change(State.CLOSED, now)
        elif self.state == State.CLOSED:
            self._failures = 0

    def _reject(self, retry_after: int) -> int:
        metrics.series(metrics.BREAKER_REJECTS, *self.labels).inc()
        raise CircuitOpen(self, retry_after)

    def _next_window(self, now: float) -> float:
        return now + self._settings.interval if self._settings.interval > 0 else math.inf

    def _advance(self, now: float) -> None:
        """Changes that come with time: the closed window rolls over, an open breaker turns half-open."""
        if self.state == State.CLOSED and now >= self._window_end:
            self._new_generation(now)
        elif self.state == State.OPEN and now >= self._open_until:
            self._change(State.HALF_OPEN, now)

    def _new_generation(self, now: float) -> None:
        self._generation += 1
        self._failures = self._admitted = self._successes = 0
        self._window_end = self._next_window(now)

    def _change(self, state: State, now: float) -> None:
        previous, self.state = self.state, state
        self._new_generation(now)
        if state == State.OPEN:
            self._open_until = now + self._settings.timeout
        # the state is settled: now the side effects
        labels = self.labels
        provider, endpoint, model = self.key
        metrics.BREAKER_STATE.labels(*labels).set(state)
        if state == State.OPEN:
            metrics.BREAKER_TRIPS.labels(*labels).inc()
        log = logger.bind(provider=provider, endpoint=endpoint, model=model, breaker_state=_STATE_NAMES[state])
        text = (f"circuit breaker {_STATE_NAMES[state]}: provider {provider}, endpoint {endpoint}, model {model} "
                f"(was {_STATE_NAMES[previous]})")
        if state == State.OPEN:
            log.warning(text + f"; rejecting requests for {self._settings.timeout:g}s")
        else:
            log.info(text)


class CircuitBreakers:
    """The worker's breakers, created on first use; None everywhere when they are disabled."""

    #: Breakers per provider and endpoint (one per model); far more models than a provider serves.
    MAX_BREAKERS_PER_ROUTE = 1000

    def __init__(self, settings: CircuitBreakerSettings, clock: Clock = time.monotonic,
                 max_per_route: int = MAX_BREAKERS_PER_ROUTE) -> None:
        self._settings = settings
        self._clock = clock
        self._max = max_per_route
        # per (provider, endpoint): model -> breaker, least recently used first
        self._routes: dict[tuple[str, str], OrderedDict[str, CircuitBreaker]] = {}
        self._fallbacks: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, provider: str, endpoint: str, model: str) -> CircuitBreaker | None:
        """The breaker of ``model`` (as the record names it: masked, never a secret) on this route."""
        if not self._settings.enabled:
            return None
        model = str(model)[:metrics.MAX_LABEL_LENGTH]  # the key and the log lines need no more of it
        route = (provider, endpoint)
        breakers = self._routes.get(route)
        if breakers is None:
            breakers = self._routes[route] = OrderedDict()
        breaker = breakers.get(model)
        if breaker is not None:
            breakers.move_to_end(model)
            return breaker
        if len(breakers) >= self._max and not self._forget_closed(breakers):
            # Every breaker is open or half-open (only upstream failures open one): forgetting one
            # would let its requests hammer an overloaded upstream again.
            fallback = self._fallbacks.get(route)
            if fallback is None:
                fallback = self._fallbacks[route] = CircuitBreaker(self._settings, (*route, metrics.OTHER), self._clock)
            return fallback
        breaker = breakers[model] = CircuitBreaker(self._settings, (*route, model), self._clock)
        return breaker

    @staticmethod
    def _forget_closed(breakers: OrderedDict[str, CircuitBreaker]) -> bool:
        """Forget the least recently used closed breaker; False when none is closed."""
        for model, breaker in breakers.items():
            if breaker.state == State.CLOSED:
                del breakers[model]
                return True
        return False


# --- retries ------------------------------------------------------------------------------------

def retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The wait an upstream asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            milliseconds = float(value)
            if math.isfinite(milliseconds):
                return max(0.0, milliseconds / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def should_retry(response: requests.Response) -> bool:
    hint = response.headers.get("x-should-retry", "").strip().lower()
    if hint in ("true", "false"):
        return hint == "true" and response.status_code >= 400
    status = response.status_code
    return status == 429 or (status >= 500 and status != 501)


def backoff(retry: int) -> float:
    """The wait before retry number ``retry`` (1, 2, …): exponential, with jitter."""
    return min(BACKOFF_BASE * 2 ** (retry - 1), BACKOFF_MAX) * (1 - 0.25 * random.random())


def send_with_retries(send: Callable[[], requests.Response], *, provider: str, breaker: CircuitBreaker | None,
                      max_retries: int, on_attempt: Callable[[int], None] | None = None, log=logger,
                      sleep: Callable[[float], None] | None = None) -> requests.Response:
    """Call ``send`` until it gives an answer worth relaying (see the module doc); ``on_attempt`` is
    told the number (1, 2, …) of each upstream call before it is made. Raises CircuitOpen when the breaker refuses the first attempt
    (or a retry), and the last UpstreamFailure when no attempt got an answer."""
    sleep = sleep or _sleep
    retries = attempts = 0
    while True:
        ticket = breaker.admit() if breaker is not None else 0
        attempts += 1
        if on_attempt is not None:
            on_attempt(attempts)
        try:
            response = send()
        except UpstreamFailure as failure:
            if breaker is not None:
                breaker.record(ticket, True if failure.breaker_failure else None)
            if not failure.retryable or retries >= max_retries or _breaker_open(breaker):
                raise
            retries += 1
            wait = backoff(retries)
            log.warning("upstream attempt {} failed ({}); retry {}/{} in {:.1f}s",
                        attempts, failure.message, retries, max_retries, wait)
            metrics.UPSTREAM_RETRIES.labels(provider, str(failure.status)).inc()
            sleep(wait)
            continue
        except BaseException:
            if breaker is not None:
                breaker.record(ticket, None)  # says nothing about the upstream
            raise
        status = response.status_code
        if breaker is not None:
            breaker.record(ticket, status in BREAKER_FAILURE_STATUSES)
        if retries >= max_retries or not should_retry(response) or _breaker_open(breaker):
            return response
        asked = retry_after(response.headers)
        if asked is not None and asked > RETRY_AFTER_MAX:
            log.info("upstream answered {} with Retry-After {:.0f}s (more than {:.0f}s): not retried",
                     status, asked, RETRY_AFTER_MAX)
            return response
        retries += 1
        wait = asked if asked is not None else backoff(retries)
        log.warning("upstream attempt {} answered {}; retry {}/{} in {:.1f}s",
                    attempts, status, retries, max_retries, wait)
        metrics.UPSTREAM_RETRIES.labels(provider, str(status)).inc()
        response.close()
        sleep(wait)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up when called: gevent's, once the worker has patched the module


def _breaker_open(breaker: CircuitBreaker | None) -> bool:
    return breaker is not None and breaker.state == State.OPEN


# --- limits ------------------------------------------------------------------------------------

class Slot:
    """One place in the concurrency limit; ``release`` may be called any number of times."""

    __slots__ = ("_limits",)

    def __init__(self, limits: "Limits | None") -> None:
        self._limits = limits

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.in_flight -= 1


class Limits:
    def __init__(self, max_concurrency: int, rate: float, clock: Clock = time.monotonic) -> None:
        self.max_concurrency = max_concurrency
        self.rate = rate
        self.in_flight = 0
        self._clock = clock
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._refilled = clock()

    def acquire(self, provider: str) -> Slot:
        """A slot for one intercepted request, or GatewayError 429 with Retry-After."""
        if self.max_concurrency and self.in_flight >= self.max_concurrency:
            metrics.series(metrics.LIMIT_REJECTS, provider, "concurrency").inc()
            raise GatewayError(429, f"too many concurrent requests: this gateway process relays at most "
                                    f"{self.max_concurrency} at once; retry shortly",
                               headers={"Retry-After": "1"})
        if self.rate:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens < 1:
                wait = max(1, math.ceil((1 - self._tokens) / self.rate))
                metrics.series(metrics.LIMIT_REJECTS, provider, "rate").inc()
                raise GatewayError(429, f"rate limit exceeded: this gateway process accepts at most "
                                        f"{self.rate:g} requests per second; retry in {wait}s",
                                   headers={"Retry-After": str(wait)})
            self._tokens -= 1
        if not self.max_concurrency:
            return Slot(None)
        self.in_flight += 1
        return Slot(self)
