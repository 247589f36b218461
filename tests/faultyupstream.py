"""A misbehaving Anthropic / OpenAI upstream on 127.0.0.1, for fault-injection tests.

Each request is answered by the next *planned* fault (``plan(...)``), then by ``default`` (a good
answer). The good answers are the recorded ``simple_text`` fixtures of the API the path names
(``…/messages`` Anthropic, ``…/chat/completions`` OpenAI Chat, ``…/responses`` OpenAI Responses),
streamed when the body says ``"stream": true``.

Faults (all waits are bounded and end early when the server stops):
  Ok(...)                       the good answer (options: ``hold`` after the first event, ``delay`` between events)
  Status(code, retry_after=…)   an error answer in the API's shape (JSON), optional Retry-After / extra headers
  Reset()                       read the request, then reset the connection (RST) without answering
  Close()                       read the request, then close the connection without answering
  Stall(seconds)                wait before the status line (the gateway's read timeout should fire first)
  Stream(reset_after=n | stall_after=n | events=[...])  a 200 SSE stream cut (RST) or stalled after n
                                events, or made of the given raw events (malformed SSE)
  Truncated()                   a 200 JSON answer whose Content-Length promises more than is sent
  Raw(status, body, content_type)  any complete answer (e.g. invalid JSON with a 200)
  GzipBomb(stream=…)            a 200 gzip answer (unasked) inflating to 1 GiB, JSON or an event stream
  Gzipped()                     the good answer, gzip-compressed (unasked)
  CloseDelimited(cut_after=n)   the good stream without length or chunks, closed after n events (or all)

``refuse()`` stops listening (connections are refused), ``listen()`` accepts again on the same port.
Every request that reached the server is in ``requests``.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from tests.fakeupstream import load_fixtures, render_body, stream_events

_FIXTURES = load_fixtures()
MAX_WAIT = 15.0  # no fault waits longer than this, whatever it was asked


def api_for(path: str) -> str:
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/messages"):
        return "anthropic"
    if path.endswith("/responses"):
        return "openai_responses"
    return "openai_chat"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: a body nested deeper than Python's json reads
            return None


# ---------------------------------------------------------------- faults

class Fault:
    def serve(self, conn: "_Connection", request: Seen) -> None:
        raise NotImplementedError


@dataclass
class Ok(Fault):
    """The recorded good answer; a stream can be held after its first event until ``hold`` is set."""
    hold: threading.Event | None = None
    delay: float = 0.0

    def serve(self, conn: "_Connection", request: Seen) -> None:
        api = api_for(request.path)
        fixture = _FIXTURES[f"{api}/simple_text"]
        body = request.json if isinstance(request.json, dict) else {}
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = api != "openai_chat" or (isinstance(options, dict) and options.get("include_usage") is True)
            events = stream_events(api, fixture["streaming"]["events"], include_usage=include_usage)
            conn.stream(200, fixture["streaming"]["headers"], events, hold=self.hold, delay=self.delay)
        else:
            part = fixture["blocking"]
            conn.send(part["status"], part["headers"], render_body(api, part["body"]))


def error_body(api: str, status: int, message: str) -> bytes:
    if api == "anthropic":
        kind = {429: "rate_limit_error", 529: "overloaded_error", 503: "overloaded_error"}.get(status, "api_error")
        return render_body(api, {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_faulty"})
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    return render_body(api, {"error": {"message": message, "type": kind, "param": None, "code": None}})


@dataclass
class Status(Fault):
    status: int
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def serve(self, conn: "_Connection", request: Seen) -> None:
        api = api_for(request.path)
        headers = {"content-type": "application/json", **self.headers}
        if self.retry_after is not None:
            headers["retry-after"] = self.retry_after
        message = self.message or f"faulty upstream says {self.status}"
        conn.send(self.status, headers, error_body(api, self.status, message))


@dataclass
class Raw(Fault):
    status: int
    body: bytes
    content_type: str = "application/json"

    def serve(self, conn: "_Connection", request: Seen) -> None:
        conn.send(self.status, {"content-type": self.content_type}, self.body)


class Reset(Fault):
    def serve(self, conn: "_Connection", request: Seen) -> None:
        conn.reset()


class Close(Fault):
    def serve(self, conn: "_Connection", request: Seen) -> None:
        conn.close()


@dataclass
class Stall(Fault):
    seconds: float

    def serve(self, conn: "_Connection", request: Seen) -> None:
        conn.wait(self.seconds)
        Ok().serve(conn, request)


@dataclass
class Stream(Fault):
    """A 200 event stream of the good answer, cut by a reset or a stall after ``n`` events, or made of ``events``."""
    reset_after: int | None = None
    stall_after: int | None = None
    stall: float = 5.0
    events: list[bytes] | None = None

    def serve(self, conn: "_Connection", request: Seen) -> None:
        api = api_for(request.path)
        fixture = _FIXTURES[f"{api}/simple_text"]["streaming"]
        events = self.events if self.events is not None else stream_events(api, fixture["events"])
        conn.stream(200, fixture["headers"], events, reset_after=self.reset_after,
                    stall_after=self.stall_after, stall=self.stall)


class Truncated(Fault):
    def serve(self, conn: "_Connection", request: Seen) -> None:
        api = api_for(request.path)
        part = _FIXTURES[f"{api}/simple_text"]["blocking"]
        body = render_body(api, part["body"])
        conn.send_head(200, {**part["headers"], "content-length": str(len(body))})
        conn.write(body[: len(body) // 2])
        conn.close()


# ---------------------------------------------------------------- compressed and close-delimited answers

BOMB_INFLATED = 1024 ** 3  # what the gzip bomb inflates to: 1 GiB of zeros, about 1 MB of gzip
_bomb: list[bytes] = []


def gzip_bomb() -> bytes:
    """1 GiB of zeros as gzip (made once: about a second)."""
    if not _bomb:
        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = bytes(1024 * 1024)
        _bomb.append(b"".join([*(packer.compress(block) for _ in range(BOMB_INFLATED // len(block))), packer.flush()]))
    return _bomb[0]


@dataclass
class GzipBomb(Fault):
    """A 200 answer with ``Content-Encoding: gzip`` (whatever the request's Accept-Encoding) whose body
    inflates to 1 GiB: JSON with a Content-Length, or an event stream in chunks."""
    stream: bool = False

    def serve(self, conn: "_Connection", request: Seen) -> None:
        bomb = gzip_bomb()
        if not self.stream:
            conn.send(200, {"content-type": "application/json", "content-encoding": "gzip"}, bomb)
            return
        pieces = [bomb[i:i + 65536] for i in range(0, len(bomb), 65536)]
        conn.stream(200, {"content-type": "text/event-stream", "content-encoding": "gzip"}, pieces)


@dataclass
class Gzipped(Fault):
    """The good answer, gzip-compressed (unasked): a blocking one whole, a stream compressed as one
    gzip member flushed after every event."""

    def serve(self, conn: "_Connection", request: Seen) -> None:
        api = api_for(request.path)
        fixture = _FIXTURES[f"{api}/simple_text"]
        body = request.json if isinstance(request.json, dict) else {}
        if body.get("stream") is not True:
            part = fixture["blocking"]
            conn.send(part["status"], {**part["headers"], "content-encoding": "gzip"},
                      gzip.compress(render_body(api, part["body"])))
            return
        packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        events = stream_events(api, fixture["streaming"]["events"], include_usage=True)
        pieces = [packer.compress(event) + packer.flush(zlib.Z_SYNC_FLUSH) for event in events] + [packer.flush()]
        conn.stream(200, {**fixture["streaming"]["headers"], "content-encoding": "gzip"}, pieces)


@dataclass
class CloseDelimited(Fault):
    """A 200 event stream of the good answer with neither Content-Length nor chunks: its end is the
    connection's (closed cleanly, FIN), after ``cut_after`` events or after all of them."""
    cut_after: int | None = None

    def serve(self, conn: "_Connection", request: Seen) -> None:
        api = api_for(request.path)
        fixture = _FIXTURES[f"{api}/simple_text"]["streaming"]
        events = stream_events(api, fixture["events"])[:self.cut_after]
        headers = {k: v for k, v in fixture["headers"].items() if k.lower() not in ("content-length", "transfer-encoding")}
        if conn.send_head(200, headers):
            for event in events:
                if not conn.write(event):
                    break
        conn.close()


# ---------------------------------------------------------------- server

class _Connection:
    """One accepted connection (closed after one exchange: every answer says ``Connection: close``)."""

    def __init__(self, sock: socket.socket, server: "FaultyUpstream") -> None:
        self.sock = sock
        self.server = server
        self.closed = False

    def read_request(self) -> Seen | None:
        reader = self.sock.makefile("rb")
        try:
            line = reader.readline(65536)
            if not line:
                return None
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while True:
                line = reader.readline(65536)
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                parts = []
                while (size := int(reader.readline(1024).split(b";")[0].strip() or b"0", 16)):
                    parts.append(reader.read(size))
                    reader.readline(1024)
                reader.readline(1024)
                body = b"".join(parts)
            else:
                body = reader.read(int(headers.get("content-length") or 0))
            return Seen(method, target, headers, body)
        finally:
            reader.close()

    def wait(self, seconds: float, until: threading.Event | None = None) -> bool:
        """Wait up to ``seconds`` (or until ``until`` is set); False if the server is stopping."""
        deadline = time.monotonic() + min(seconds, MAX_WAIT)
        while time.monotonic() < deadline:
            if self.server.stopping.is_set():
                return False
            if until is not None and until.is_set():
                return True
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return True

    def write(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def send_head(self, status: int, headers: dict[str, str]) -> bool:
        lines = [f"HTTP/1.1 {status} Faulty", "connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "connection"]
        return self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        if self.send_head(status, {**headers, "content-length": str(len(body))}):
            self.write(body)
        self.close()

    def stream(self, status: int, headers: dict[str, str], events: list[bytes], *, hold: threading.Event | None = None,
               delay: float = 0.0, reset_after: int | None = None, stall_after: int | None = None,
               stall: float = 0.0) -> None:
        headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        if not self.send_head(status, {**headers, "transfer-encoding": "chunked"}):
            return self.close()
        for i, event in enumerate(events):
            if i == reset_after:
                return self.reset()
            if i == stall_after:
                self.wait(stall)
                return self.close()  # cut without the last chunk, if the gateway has not hung up already
            if i == 1 and hold is not None:
                self.wait(MAX_WAIT, until=hold)
            elif i and delay:
                self.wait(delay)
            if not self.write(b"%x\r\n%s\r\n" % (len(event), event)):
                return self.close()
        self.write(b"0\r\n\r\n")
        self.close()

    def reset(self) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class FaultyUpstream:
    def __init__(self) -> None:
        self.port = 0
        self.url = ""
        self.requests: list[Seen] = []
        self.default: Fault = Ok()
        self.stopping = threading.Event()
        self._planned: list[Fault] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> "FaultyUpstream":
        self.listen()
        return self

    def listen(self) -> None:
        """(Again) accept connections, on the same port as before."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True, name="faulty-accept")
        self._accepting.start()

    def refuse(self) -> None:
        """Stop listening: new connections are refused until ``listen()``."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._accepting is not None:
            self._accepting.join(timeout=5)

    def stop(self) -> None:
        self.stopping.set()
        self.refuse()

    # -- test API

    def plan(self, *faults: Fault) -> None:
        """The answers to the next requests, in order (then ``default``)."""
        with self._lock:
            self._planned = list(faults)

    def reset_state(self) -> None:
        with self._lock:
            self._planned.clear()
            self.requests.clear()
        self.default = Ok()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def wait_requests(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} upstream requests expected, saw {self.count}")
            time.sleep(0.02)

    # -- server side

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # refuse() or stop()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(sock,), daemon=True, name="faulty-conn").start()

    def _serve(self, sock: socket.socket) -> None:
        conn = _Connection(sock, self)
        try:
            sock.settimeout(MAX_WAIT)
            request = conn.read_request()
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
                fault = self._planned.pop(0) if self._planned else self.default
            fault.serve(conn, request)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
