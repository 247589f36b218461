"""gunicorn's gevent worker, with bounded waits for request heads, a stop that ends every stream
before the graceful timeout, and each response's head written with its first body bytes.

- Waits for a request head: the stock worker gives the whole wait the keep-alive time (75 s here,
  to outlast load balancers), so clients sending nothing or a head one line at a time held every
  connection of a worker. A head is now due within the header timeout (CODER_AIBRIDGE_HEADER_TIMEOUT)
  from its first byte, or from the connect on a new connection; only the idle time before a
  keep-alive connection's next request keeps the keep-alive time.
- Waits for a request body: bounded by bridge.body_limits (a deadline, CODER_AIBRIDGE_BODY_TIMEOUT,
  and a budget of body bytes read at once). Near worker_connections, the connections that have
  waited longest for a head or a body are closed, so new clients always get in.
- Stopping: idle waits are ended at once (SDK pools keep such connections, and every restart took
  the keep-alive time); a connection takes no request after the one in progress; streams still in
  flight shortly before the graceful timeout end with the provider's error event and their records
  are written, where the master's kill at the deadline used to cut them bare and unrecorded.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import OrderedDict
from functools import cached_property
from typing import TYPE_CHECKING

import gevent
from gevent import get_hub, getcurrent
from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import wsgi
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.ggevent import GeventWorker as _StockGeventWorker

from bridge import patches
from bridge.body_limits import BodyBudget, TimedBody
from bridge.sockets import send_all

if TYPE_CHECKING:
    from bridge.gateway import Gateway  # imports requests: the master loads this module


class GunicornLogger(Logger):
    """gunicorn's logger, minus the access-log line it formats for every request whenever a
    logging config is given (ours routes gunicorn's logs to loguru), unless an access log is asked for."""

    def access(self, resp, req, environ, request_time) -> None:
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


class _DateHeader:
    """gunicorn's ``http_date()`` (the Date header of every response), made once a second: it went
    through the email package's date formatting for every answer."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, timestamp: float | None = None) -> str:
        if timestamp is not None:
            return _STOCK_HTTP_DATE(timestamp)
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, _STOCK_HTTP_DATE(second)
        return self._text


_STOCK_HTTP_DATE = util.http_date


class OneWriteResponse(wsgi.Response):
    """gunicorn's HTTP/1 response, writing its head together with the first body bytes (and a
    chunked body's end with the head when there is no body): one socket write fewer per answer.

    The head counts as sent only once it is written, so an error before that still gets gunicorn's
    error response.
    """

    _head: bytes | None = None

    def send_headers(self) -> None:
        if self.headers_sent or self._head is not None:
            return
        lines = self.default_headers()
        lines.extend(["%s: %s\r\n" % (name, value) for name, value in self.headers])
        self._head = ("%s\r\n" % "".join(lines)).encode("latin-1")

    def _take_head(self) -> bytes:
        head, self._head = self._head, None
        if head is None:
            return b""
        self.headers_sent = True
        return head

    def _emit_body(self, data: bytes) -> None:
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        head = self._take_head()
        send_all(self.sock, head + data if head else data)

    def _flush_head(self, tail: bytes = b"") -> None:
        self.send_headers()
        data = self._take_head() + tail
        if data:
            send_all(self.sock, data)

    def close(self) -> None:
        self._flush_head(b"0\r\n\r\n" if self.chunked else b"")

    def sendfile(self, respiter) -> bool:
        self._flush_head()
        return super().sendfile(respiter)


_RECORDS_MARGIN = 5.0  # seconds before the graceful timeout that streams are ended, to write their records
_RESERVE_SHARE = 10  # 1/10 of worker_connections is kept free for new clients
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _HeadWaitOver(BaseException):
    """Raised in a connection's greenlet to end its wait for a request head (a BaseException, like
    gevent's Timeout, so that no handler in the parser takes it); the connection is then closed."""


class _HeadWait:
    """The wait for a connection's next request head: until its first byte, the keep-alive time (the
    header timeout on a new connection), then the header timeout for the whole head. Registered, so
    that a stop or a worker short of connections can end it."""

    __slots__ = ("_worker", "_fresh", "_greenlet", "_timeout", "_sock", "_active")

    def __init__(self, worker: "GeventWorker", fresh: bool) -> None:
        self._worker = worker
        self._fresh = fresh
        self._timeout: gevent.Timeout | None = None
        self._sock: socket.socket | None = None  # set once bytes of the head came
        self._active = False

    def __enter__(self) -> "_HeadWait":
        self._greenlet = getcurrent()
        self._worker.waits[self._greenlet] = self
        self._active = True
        self._restart(self._worker.header_timeout if self._fresh else self._worker.cfg.keepalive)
        return self

    def head_started(self, sock: socket.socket) -> None:
        if self._sock is None:
            self._sock = sock
            if not self._fresh:  # a new connection's head is due within the header timeout of its connect
                self._restart(self._worker.header_timeout)

    def end_soon(self) -> None:
        """End the wait as if its time had run out; scheduled, not waited for (callers may not switch)."""
        get_hub().loop.run_callback(self._expire)

    def _expire(self) -> None:
        if self._active:
            self._greenlet.throw(_HeadWaitOver)
        else:  # the head came in the meantime: the connection stays and counts again
            self._worker.shed.discard(self._greenlet)

    def _restart(self, seconds: float) -> None:
        if self._timeout is not None:
            self._timeout.close()
        self._timeout = gevent.Timeout(seconds, _HeadWaitOver)
        self._timeout.start()

    def __exit__(self, exc_type, exc, traceback) -> bool | None:
        self._active = False
        self._timeout.close()
        if self._worker.waits.get(self._greenlet) is self:
            del self._worker.waits[self._greenlet]
        if not isinstance(exc, _HeadWaitOver):
            return None
        if self._sock is not None:  # part of a head came: say why the connection closes
            _send_if_room(self._sock, _REQUEST_TIMEOUT)
        return True  # the connection is closed without an error, as when keep-alive time runs out


def _send_if_room(sock: socket.socket, data: bytes) -> None:
    """Best effort, never waiting: a client that does not read must not hold the connection."""
    try:
        sock.settimeout(0)
        sock.send(data)
    except OSError:
        pass


class _HeadTimedUnreader(SocketUnreader):
    """gunicorn's socket reader, telling the wait for a request head when the head's first bytes came."""

    waits: OrderedDict  # the worker's, by greenlet

    def chunk(self, size_hint=None) -> bytes:
        data = super().chunk(size_hint)
        if data:
            wait = self.waits.get(getcurrent())
            if type(wait) is _HeadWait:  # (a body being read has a TimedBody there)
                wait.head_started(self.sock)
        return data


class GeventWorker(_StockGeventWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Connections waiting for a request head or body from their client, by greenlet, oldest first
        # (a connection waits for one at a time).
        self.waits: OrderedDict[object, _HeadWait | TimedBody] = OrderedDict()
        self._fresh: set = set()  # greenlets of connections that have not started a request yet
        self.shed: set = set()  # greenlets of connections closed for room, not gone yet
        self._open = 0
        self._reserve = max(1, self.worker_connections // _RESERVE_SHARE)
        self._streams_deadline: gevent.Greenlet | None = None

    def init_process(self) -> None:
        _HeadTimedUnreader.waits = self.waits
        patches.gunicorn_worker(OneWriteResponse, _HeadTimedUnreader, _DateHeader())
        super().init_process()

    @property
    def gateway(self) -> Gateway | None:
        """The app's services (bridge.gateway.Gateway), once the app is loaded."""
        return getattr(getattr(self, "wsgi", None), "extensions", {}).get("bridge")

    @cached_property
    def header_timeout(self) -> float:
        gateway = self.gateway
        return gateway.settings.header_timeout if gateway is not None else self.cfg.keepalive

    @cached_property
    def body_timeout(self) -> float:
        gateway = self.gateway
        return gateway.settings.body_timeout if gateway is not None else self.cfg.keepalive

    @cached_property
    def body_budget(self) -> BodyBudget:
        gateway = self.gateway
        return BodyBudget(gateway.settings.max_body_size if gateway is not None else sys.maxsize)

    def timeout_ctx(self) -> _HeadWait:
        greenlet = getcurrent()
        fresh = greenlet in self._fresh
        self._fresh.discard(greenlet)
        return _HeadWait(self, fresh)

    def handle(self, listener, client, addr) -> None:
        greenlet = getcurrent()
        self._open += 1
        self._fresh.add(greenlet)
        self._make_room()
        try:
            super().handle(listener, client, addr)
        finally:
            self._open -= 1
            self._fresh.discard(greenlet)
            self.shed.discard(greenlet)

    def _make_room(self) -> None:
        """Keep a reserve of connections for new clients (and health checks): near worker_connections,
        close the connections that have waited longest for a request head or body (slow or idle clients)."""
        excess = self._open - len(self.shed) - (self.worker_connections - self._reserve)
        while excess > 0 and self.waits:
            greenlet, wait = self.waits.popitem(last=False)
            self.shed.add(greenlet)
            wait.end_soon()
            excess -= 1

    def handle_request(self, listener_name, req, sock, addr) -> None:
        if self.nr + 1 >= self.max_requests:  # gunicorn recycles the worker after this one (max_requests)
            self._end_streams_before_deadline()
        body = TimedBody.wrap(req, self.body_timeout, self.body_budget, self.waits, self.shed)
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            if body is not None:
                body.close()
        if not self.alive:
            raise StopIteration()  # stopping: the connection takes no further request

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # Not in the signal handler itself: it may not switch greenlets.
        gevent.spawn(self._end_head_waits)
        self._end_streams_before_deadline()

    def _end_head_waits(self) -> None:
        """End the waits for request heads (idle connections); bodies being received still come."""
        for greenlet, wait in list(self.waits.items()):
            if type(wait) is _HeadWait:
                del self.waits[greenlet]
                wait.end_soon()

    def _end_streams_before_deadline(self) -> None:
        """Schedule the end of the streams still in flight, a margin before the graceful timeout
        (at which the master kills the worker): enough to write their records."""
        if self._streams_deadline is None:
            graceful = float(self.cfg.graceful_timeout)
            margin = min(_RECORDS_MARGIN, graceful / 2)
            self._streams_deadline = gevent.spawn_later(graceful - margin, self._end_streams, margin)

    def _end_streams(self, within: float) -> None:
        gateway = self.gateway
        if gateway is not None:
            gateway.end_streams(within)
