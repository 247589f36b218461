"""gunicorn's gevent worker, closing idle keep-alive connections as soon as it is told to stop,
and writing each response's head with its first body bytes.

The stock worker waits for every connection's greenlet before it exits, and one that sits idle
between requests waits out the whole keep-alive time (75 s here, to outlast load balancers).
SDK connection pools keep such connections open, so every restart took that long. In-flight
requests and streams still get the graceful timeout; only idle waits are cut short.
"""

from __future__ import annotations

import time

import gevent
from gevent import getcurrent
from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import wsgi
from gunicorn.workers.ggevent import GeventWorker as _StockGeventWorker

from bridge.sockets import send_all


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


class _IdleWait:
    """The wait for a connection's next request, registered so that a stop can end it."""

    __slots__ = ("_worker", "_timeout", "_greenlet")

    def __init__(self, worker: "GeventWorker") -> None:
        self._worker = worker
        self._timeout = gevent.Timeout(worker.cfg.keepalive, False)

    def __enter__(self) -> gevent.Timeout:
        self._greenlet = getcurrent()
        self._worker.idle_waits[self._greenlet] = self._timeout
        return self._timeout.__enter__()

    def __exit__(self, *exc_info) -> bool | None:
        self._worker.idle_waits.pop(self._greenlet, None)
        return self._timeout.__exit__(*exc_info)


class GeventWorker(_StockGeventWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.idle_waits: dict = {}

    def init_process(self) -> None:
        # gunicorn builds each HTTP/1 response with wsgi.create(), which takes the class from its module.
        wsgi.Response = OneWriteResponse
        util.http_date = _DateHeader()
        super().init_process()

    def timeout_ctx(self) -> _IdleWait:
        return _IdleWait(self)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(self._end_idle_waits)  # not in the signal handler: it may not switch greenlets

    def _end_idle_waits(self) -> None:
        # Raising a wait's own timeout ends it as if the keep-alive time had run out: the
        # connection is closed without an error.
        for greenlet, timeout in list(self.idle_waits.items()):
            gevent.kill(greenlet, timeout)  # scheduled, not waited for
