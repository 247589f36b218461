"""Bounds on receiving a request body, so that a client stalling an upload holds neither a worker's
memory nor its connections for long.

- A deadline: the whole body is due within CODER_AIBRIDGE_BODY_TIMEOUT from the end of the head; a
  read still waiting then raises GatewayError(408), which the views answer in the provider's shape.
- A budget: a worker reads at most 4 x CODER_AIBRIDGE_MAX_BODY_SIZE of request bodies at once (what
  is read is held in memory); a declared Content-Length that would go over it is refused with 503
  and Retry-After at the first read, before any of it is read; a chunked body counts as it comes
  (up to the largest body allowed: the app refuses a longer one with 413).

After either refusal the connection closes: the unread rest of the body makes it unusable.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import gevent
from gevent import get_hub, getcurrent
from gunicorn.http.body import LengthReader

from bridge.errors import GatewayError

BUDGET_BODIES = 4  # the budget, in bodies of the largest size allowed
RETRY_AFTER = "2"  # seconds: bodies being read take about that to come on a healthy connection


class BodyBudget:
    """Bytes of request bodies a worker is reading at once: at most ``BUDGET_BODIES`` of the largest."""

    def __init__(self, largest_body: int) -> None:
        self.largest_body = largest_body
        self.limit = BUDGET_BODIES * largest_body
        self.in_use = 0

    def take(self, size: int) -> bool:
        if self.in_use + size > self.limit:
            return False
        self.in_use += size
        return True

    def give(self, size: int) -> None:
        self.in_use -= size


class _BodyLate(BaseException):
    """Raised in a read to end it (a BaseException, like gevent's Timeout, so that no handler in
    gunicorn or werkzeug takes it); the read turns it into the 408."""


class TimedBody:
    """gunicorn's request body (``req.body``, the app's ``wsgi.input``) with the deadline and the
    budget. Registered in the worker's ``waits`` (by greenlet, oldest first) until the whole body
    came, so that a worker short of connections can end the longest waits (``end_soon``)."""

    def __init__(self, req, timeout: float, budget: BodyBudget, waits: OrderedDict, shed: set) -> None:
        self._req = req
        self._raw = req.body
        reader = self._raw.reader
        self._declared: int | None = reader.length if isinstance(reader, LengthReader) else None  # None: chunked
        self._budget = budget
        self._waits = waits
        self._shed = shed
        self._greenlet = getcurrent()
        self._deadline = time.monotonic() + timeout
        self._taken = 0  # bytes of the budget held
        self._received = 0
        self._reading = False
        self._done = False
        self._refusal: GatewayError | None = None
        self._slow_message = f"the request body did not arrive within {timeout:g}s"
        waits[self._greenlet] = self
        req.body = self

    @classmethod
    def wrap(cls, req, timeout: float, budget: BodyBudget, waits: OrderedDict, shed: set) -> "TimedBody | None":
        """Put the bounds on ``req``'s body (None when the request has none)."""
        reader = req.body.reader
        if isinstance(reader, LengthReader) and reader.length == 0:
            return None
        return cls(req, timeout, budget, waits, shed)

    def read(self, size: int | None = None) -> bytes:
        return self._timed(self._raw.read, size, eof_possible=size != 0)

    def readline(self, size: int | None = None) -> bytes:
        return self._timed(self._raw.readline, size, eof_possible=size != 0)

    def readlines(self, hint: int | None = None) -> list[bytes]:  # the hint is optional in WSGI: the whole body
        lines = []
        while line := self.readline():
            lines.append(line)
        return lines

    def __iter__(self):
        return iter(self.readline, b"")

    def _timed(self, read, size, eof_possible: bool) -> bytes:
        if self._refusal is not None:
            raise self._refusal
        if self._done:
            return read(size)
        if self._taken == 0 and self._declared is not None and not self._take(self._declared):
            raise self._refuse(self._over_budget())
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._refuse(GatewayError(408, self._slow_message))
        self._reading = True
        try:
            with gevent.Timeout(remaining, _BodyLate):
                data = read(size)
        except _BodyLate:
            raise self._refuse(GatewayError(408, self._slow_message)) from None
        finally:
            self._reading = False
        self._received += len(data)
        if self._declared is None and data:
            # A chunked body counts up to the largest allowed: past it the app refuses it (413).
            if not self._take(min(self._received, self._budget.largest_body) - self._taken):
                raise self._refuse(self._over_budget())
        if (self._declared is not None and self._received >= self._declared) or (not data and eof_possible):
            self.close()  # all of it came: the budget is free again, and no one waits on the client
        return data

    def _take(self, size: int) -> bool:
        if not self._budget.take(size):
            return False
        self._taken += size
        return True

    def _over_budget(self) -> GatewayError:
        return GatewayError(503, "the gateway is receiving too many request bodies at once; retry shortly",
                            headers={"Retry-After": RETRY_AFTER})

    def _refuse(self, error: GatewayError) -> GatewayError:
        """The refusal to raise; the connection closes after its answer (the rest of the body is unread)."""
        self._req.must_close = True
        self._refusal = error  # any later read is refused too
        self.close()
        return error

    def end_soon(self) -> None:
        """End the wait for the body now, to make room for other clients: a read in progress is ended
        (408), a later one refused. Scheduled, not waited for (callers may not switch)."""
        self._slow_message = "the request body came too slowly: the gateway needed the connection for other clients"
        get_hub().loop.run_callback(self._expire)

    def _expire(self) -> None:
        if self._reading:
            self._greenlet.throw(_BodyLate)
        elif self._done:  # the body came in the meantime: the connection stays and counts again
            self._shed.discard(self._greenlet)
        else:  # not reading yet (authenticating, say): its first read is refused
            self._deadline = 0.0
            self._req.must_close = True

    def close(self) -> None:
        """The body is read or the request ended: give back the budget and stop counting as a wait.
        The worker then puts gunicorn's own body back, which drains what the app left unread."""
        self._done = True
        if self._waits.get(self._greenlet) is self:
            del self._waits[self._greenlet]
        if self._taken:
            self._budget.give(self._taken)
            self._taken = 0
        if self._req.body is self:
            self._req.body = self._raw
