"""A fake Anthropic / OpenAI upstream: a real HTTP/1.1 server on 127.0.0.1 replaying tests/fixtures.

APIs: ``anthropic`` (Messages), ``openai_chat`` (Chat Completions), ``openai_responses`` (Responses).

The scenario is picked by the request header ``X-Fixture: <api>/<name>`` (the file under fixtures/
without ``.json``); ``"stream": true`` in the body selects the fixture's ``streaming`` part, else
``blocking``. Streams are written with chunked framing, one HTTP chunk per SSE event, sent at once.

Control headers (a gateway forwards unknown headers unchanged):
  X-Fake-Delay-Ms: N     sleep N ms before each event after the first
  X-Fake-Repeat: N       send every text/thinking/reasoning delta event N times (long, well-formed stream)
  X-Fake-Lockstep: ID    before event i+1, wait until the test called ``ack(ID, i)`` (bounded, see
                         ``lockstep_timeout``; a timeout is counted in the StreamLog and the stream goes on)
  X-Fake-Stall-Ms: N     wait N ms before sending the response status line and headers
  X-Fake-Status: N       override the fixture's status code

Without X-Fixture: ``GET …/models``, ``GET …/models/<id>`` (Anthropic shape when the request has an
``anthropic-version`` header, else OpenAI shape), ``POST …/messages/count_tokens``; anything else is a
404 in the provider's error shape.

Responses API passthrough (answered by the fake itself, with or without X-Fixture):
  GET  …/responses/<id>      the stored response: the blocking body of the openai_responses fixture with that
                             response id, else 404 (OpenAI shape)
  POST …/conversations       a new conversation object (``metadata`` echoed); GET …/conversations/<id> returns it
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"

# Response headers never copied from a fixture: framing is the server's own business.
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection"}
_USAGE_NULL = ',"usage":null'
_POLL_S = 0.05  # how often waits look at the client socket
# Responses API events whose repetition keeps a stream well-formed (X-Fake-Repeat).
_RESPONSES_TEXT_DELTAS = {"response.output_text.delta", "response.reasoning_summary_text.delta"}
# Routes the fake answers itself even when the request names a fixture (Responses API passthrough).
_RESPONSE_BY_ID = re.compile(r"/responses/([^/]+)$")
_CONVERSATIONS = re.compile(r"/conversations(?:/([^/]+))?$")

_ANTHROPIC_MODELS = [
    {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5",
     "created_at": "2025-09-29T00:00:00Z", "lifecycle": "active"},
    {"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5",
     "created_at": "2025-10-15T00:00:00Z", "lifecycle": "active"},
    {"type": "model", "id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1",
     "created_at": "2025-08-05T00:00:00Z", "lifecycle": "active"},
]
_OPENAI_MODELS = [
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
    {"id": "gpt-4o-2024-08-06", "object": "model", "created": 1722814719, "owned_by": "system"},
    {"id": "gpt-5-2025-08-07", "object": "model", "created": 1754425384, "owned_by": "system"},
    {"id": "gpt-5", "object": "model", "created": 1754425777, "owned_by": "system"},
]


# ---------------------------------------------------------------- corpus helpers (also used by tests)

def load_fixtures(fixtures_dir: Path = FIXTURES_DIR) -> dict[str, dict[str, Any]]:
    """All fixtures by name (``"anthropic/simple_text"``)."""
    return {
        f"{p.parent.name}/{p.stem}": json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(fixtures_dir.glob("*/*.json"))
    }


def render_body(api: str, body: Any) -> bytes:
    """A JSON body as the provider formats it: Anthropic compact, OpenAI indented
    (2 spaces for results, 4 for error objects ``{"error": {...}}``; a Responses object's own
    ``"error": null`` member does not make it an error object)."""
    if api == "anthropic":
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    else:
        is_error = isinstance(body, dict) and set(body) == {"error"}
        text = json.dumps(body, indent=4 if is_error else 2, ensure_ascii=False)
    return text.encode("utf-8")


def _sse_data(event: str) -> Any:
    """The parsed JSON of an SSE event's data line, or None (e.g. ``[DONE]``)."""
    for line in event.split("\n"):
        if line.startswith("data: "):
            try:
                return json.loads(line[6:])
            except ValueError:
                return None
    return None


def _is_usage_chunk(data: Any) -> bool:
    return isinstance(data, dict) and data.get("choices") == [] and data.get("usage") is not None


def _is_content_delta(api: str, event: str) -> bool:
    """True for events carrying model text (safe to repeat without breaking the stream)."""
    data = _sse_data(event)
    if not isinstance(data, dict):
        return False
    if api == "anthropic":
        return data.get("type") == "content_block_delta" and data["delta"].get("type") in ("text_delta", "thinking_delta")
    if api == "openai_responses":
        return data.get("type") in _RESPONSES_TEXT_DELTAS
    choices = data.get("choices") or []
    return any(
        not c["delta"].get("tool_calls") and (c["delta"].get("content") or c["delta"].get("reasoning_content"))
        for c in choices
    )


def stream_events(api: str, events: list[str], *, include_usage: bool = True, repeat: int = 1) -> list[bytes]:
    """The events as the fake sends them.

    OpenAI without ``stream_options.include_usage``: the usage-only chunk is dropped and
    ``,"usage":null`` is cut from every other chunk, exactly as the real API leaves them out.
    """
    out: list[bytes] = []
    for event in events:
        if api == "openai_chat" and not include_usage:
            if _is_usage_chunk(_sse_data(event)):
                continue
            i = event.rfind(_USAGE_NULL)
            if i >= 0:
                event = event[:i] + event[i + len(_USAGE_NULL):]
        copies = repeat if repeat > 1 and _is_content_delta(api, event) else 1
        out.extend([event.encode("utf-8")] * copies)
    return out


def api_of(name: str) -> str:
    return name.split("/", 1)[0]


# ---------------------------------------------------------------- records

@dataclass
class RecordedRequest:
    method: str
    path: str                  # full request target, incl. any prefix and query
    headers: dict[str, str]    # lower-case names
    body: bytes
    json: Any                  # parsed body or None


@dataclass
class StreamLog:
    fixture: str
    lockstep: str | None = None  # the X-Fake-Lockstep id, if any
    events_sent: int = 0
    client_gone: bool = False  # a write failed (BrokenPipe / ConnectionReset) or the peer closed while we waited
    lockstep_timeouts: int = 0
    finished: bool = False     # the server is done with this stream (completed, aborted or client gone)


# ---------------------------------------------------------------- server

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # the default 5 drops connections when a load test opens many at once
    fake: FakeUpstream

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._open_lock:
            self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Peers that hang up (resets, timeouts) are normal here; only report real bugs."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Shut every open connection so handler threads blocked on I/O return at once."""
        with self._open_lock:
            socks = list(self._open)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakeupstream"
    sys_version = ""
    timeout = 30  # bounds reads on idle keep-alive connections and writes to a stuck client
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- request

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = RecordedRequest(self.command, self.path, headers, body, parsed)
        fake._record(req)

        stall_ms = int(headers.get("x-fake-stall-ms") or 0)
        if stall_ms and fake._sleep(stall_ms / 1000):
            self.close_connection = True
            return
        name = headers.get("x-fixture")
        if name and not self._is_builtin_passthrough(req):
            self._serve_fixture(name, req)
        else:
            self._serve_builtin(req)

    # -- responses

    def _write_head(self, status: int, headers: dict[str, str], framing: tuple[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in _FRAMING_HEADERS:
                self.send_header(k, v)
        self.send_header(*framing)
        self.end_headers()

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        try:
            self._write_head(status, headers, ("Content-Length", str(len(body))))
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _send_error(self, anthropic: bool, status: int, etype: str, message: str) -> None:
        if anthropic:
            body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_fakeupstream"}
            self._send(status, {"content-type": "application/json", "request-id": "req_fakeupstream"},
                       render_body("anthropic", body))
        else:
            body = {"error": {"message": message, "type": etype, "param": None, "code": None}}
            self._send(status, {"content-type": "application/json", "x-request-id": "req_fakeupstream"},
                       render_body("openai_chat", body))

    def _serve_fixture(self, name: str, req: RecordedRequest) -> None:
        fake = self.server.fake
        api = api_of(name)
        fixture = fake.fixtures.get(name)
        if fixture is None:
            self._send_error(api == "anthropic", 404, "not_found_error", f"fakeupstream: unknown fixture {name!r}")
            return
        body = req.json if isinstance(req.json, dict) else {}
        streaming = body.get("stream") is True
        part = fixture["streaming" if streaming else "blocking"]
        if part is None:
            mode = "streaming" if streaming else "blocking"
            self._send_error(api == "anthropic", 400, "invalid_request_error", f"fakeupstream: {name} has no {mode} part")
            return
        status = int(req.headers.get("x-fake-status") or part["status"])
        if "events" not in part:
            self._send(status, part["headers"], render_body(api, part["body"]))
            return
        options = body.get("stream_options")
        include_usage = api != "openai_chat" or (isinstance(options, dict) and options.get("include_usage") is True)
        events = stream_events(api, part["events"], include_usage=include_usage,
                               repeat=int(req.headers.get("x-fake-repeat") or 1))
        self._stream(name, status, part["headers"], events, part.get("abort", False), req.headers)

    def _stream(self, name: str, status: int, headers: dict[str, str], events: list[bytes], abort: bool,
                control: dict[str, str]) -> None:
        fake = self.server.fake
        lockstep = control.get("x-fake-lockstep")
        log = fake._new_stream(StreamLog(fixture=name, lockstep=lockstep))
        delay = int(control.get("x-fake-delay-ms") or 0) / 1000
        cut = abort
        try:
            try:
                self._write_head(status, headers, ("Transfer-Encoding", "chunked"))
                for i, event in enumerate(events):
                    if i > 0 and not self._pace(log, i, delay, lockstep):
                        cut = True
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))  # unbuffered: one send per event
                    log.events_sent += 1
                if not cut:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                log.client_gone = not fake.stopping
                cut = True
            if cut:  # drop the connection without the terminating 0-chunk
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.connection.close()
        finally:
            fake._finish_stream(log)

    def _pace(self, log: StreamLog, i: int, delay: float, lockstep: str | None) -> bool:
        """Wait before event i (delay, then lockstep); False ends the stream."""
        fake = self.server.fake
        if delay and not self._hold(log, delay):
            return False
        if lockstep:
            def acked() -> bool:
                return i - 1 in fake._acks.get(lockstep, ())
            if not self._hold(log, fake.lockstep_timeout, acked):
                return False
            if not acked():
                log.lockstep_timeouts += 1
        return True

    def _hold(self, log: StreamLog, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Wait up to ``seconds``, or until ``until()`` holds. False when meanwhile the fake stops or
        the client hangs up (then marked in the log): watching the socket catches a peer that closed
        its connection even though no write has failed yet."""
        fake = self.server.fake
        deadline = time.monotonic() + seconds
        with fake._cond:
            while not (until and until()):
                if fake.stopping:
                    return False
                if self._peer_closed():
                    log.client_gone = True
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                fake._cond.wait(min(left, _POLL_S))
        return True

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset by peer
            return True

    @staticmethod
    def _is_builtin_passthrough(req: RecordedRequest) -> bool:
        path = req.path.split("?", 1)[0].rstrip("/")
        if req.method == "GET" and _RESPONSE_BY_ID.search(path):
            return True
        found = _CONVERSATIONS.search(path)
        if not found:
            return False
        return (req.method == "POST" and not found.group(1)) or (req.method == "GET" and bool(found.group(1)))

    def _serve_builtin(self, req: RecordedRequest) -> None:
        anthropic = "anthropic-version" in req.headers
        path = req.path.split("?", 1)[0].rstrip("/")
        models = _ANTHROPIC_MODELS if anthropic else _OPENAI_MODELS
        by_id = None if anthropic else _RESPONSE_BY_ID.search(path)
        conversations = None if anthropic else _CONVERSATIONS.search(path)
        if req.method == "GET" and by_id:
            stored = self.server.fake.stored_response(by_id.group(1))
            if stored is None:
                self._send_error(False, 404, "invalid_request_error",
                                 f"Response with id '{by_id.group(1)}' not found.")
            else:
                self._send_json(False, 200, stored)
        elif req.method == "POST" and conversations and not conversations.group(1):
            body = req.json if isinstance(req.json, dict) else {}
            self._send_json(False, 200, self.server.fake._new_conversation(body.get("metadata") or {}))
        elif req.method == "GET" and conversations and conversations.group(1):
            conversation = self.server.fake.conversations.get(conversations.group(1))
            if conversation is None:
                self._send_error(False, 404, "invalid_request_error",
                                 f"Conversation with id '{conversations.group(1)}' not found.")
            else:
                self._send_json(False, 200, conversation)
        elif req.method == "GET" and path.endswith("/models"):
            if anthropic:
                listing: dict[str, Any] = {"data": models, "has_more": False,
                                           "first_id": models[0]["id"], "last_id": models[-1]["id"]}
            else:
                listing = {"object": "list", "data": models}
            self._send_json(anthropic, 200, listing)
        elif req.method == "GET" and "/models/" in path:
            model_id = path.rsplit("/", 1)[1]
            found = next((m for m in models if m["id"] == model_id), None)
            if found is None and anthropic:  # an alias (claude-sonnet-4-5) resolves to the dated model
                found = next((m for m in models if m["id"].rsplit("-", 1)[0] == model_id), None)
            if found is None:
                etype = "not_found_error" if anthropic else "invalid_request_error"
                self._send_error(anthropic, 404, etype, f"model: {model_id}")
            else:
                self._send_json(anthropic, 200, found)
        elif req.method == "POST" and path.endswith("/messages/count_tokens"):
            self._send_json(True, 200, {"input_tokens": max(1, len(req.body) // 4)})
        else:
            etype = "not_found_error" if anthropic else "invalid_request_error"
            self._send_error(anthropic, 404, etype, f"fakeupstream: no route for {req.method} {path}")

    def _send_json(self, anthropic: bool, status: int, obj: Any) -> None:
        if anthropic:
            headers = {"content-type": "application/json", "request-id": "req_fakeupstream"}
        else:
            headers = {"content-type": "application/json", "x-request-id": "req_fakeupstream"}
        self._send(status, headers, render_body("anthropic" if anthropic else "openai_chat", obj))


class FakeUpstream:
    """Replays the fixture corpus over real HTTP. Use as ``with FakeUpstream().start() as fake: ...``."""

    def __init__(self, fixtures_dir: Path = FIXTURES_DIR, lockstep_timeout: float = 5.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.fixtures = load_fixtures(fixtures_dir)
        self.tls = tls  # a server context: HTTPS instead of HTTP
        self.lockstep_timeout = lockstep_timeout
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.streams: list[StreamLog] = []
        self.conversations: dict[str, dict[str, Any]] = {}  # created through POST …/conversations
        self._cond = threading.Condition()
        self._acks: dict[str, set[int]] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeUpstream:
        self._stopping.clear()
        self._server = _Server(self)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakeupstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly: wakes every wait, drops open connections (streams included)."""
        if self._server is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- test API

    def ack(self, lockstep_id: str, index: int) -> None:
        """Let a lockstep stream send the event after event ``index``."""
        with self._cond:
            self._acks.setdefault(lockstep_id, set()).add(index)
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.streams.clear()
            self._acks.clear()
            self.conversations.clear()

    def stream_log(self, lockstep_id: str) -> StreamLog:
        """The (latest) stream sent with ``X-Fake-Lockstep: lockstep_id``. Raises LookupError."""
        with self._cond:
            for log in reversed(self.streams):
                if log.lockstep == lockstep_id:
                    return log
        raise LookupError(f"no stream with lockstep id {lockstep_id!r}")

    def wait_streams(self, count: int = 1, timeout: float = 5.0) -> list[StreamLog]:
        """Wait until ``count`` streams are finished; return all stream logs. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(s.finished for s in self.streams) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{count} finished stream(s) expected, have {self.streams}")
                self._cond.wait(remaining)
            return list(self.streams)

    def stored_response(self, response_id: str) -> dict[str, Any] | None:
        """What ``GET …/responses/<id>`` returns: the blocking body of the Responses fixture with that id."""
        for name, fixture in self.fixtures.items():
            part = fixture["blocking"]
            if (api_of(name) == "openai_responses" and part is not None and part["status"] == 200
                    and part["body"].get("id") == response_id):
                return part["body"]
        return None

    def expected_bytes(self, name: str, *, stream: bool, include_usage: bool = True, repeat: int = 1) -> bytes:
        """The exact response body the fake sends for ``name`` (for byte-for-byte relay checks)."""
        part = self.fixtures[name]["streaming" if stream else "blocking"]
        if "events" not in part:
            return render_body(api_of(name), part["body"])
        return b"".join(stream_events(api_of(name), part["events"], include_usage=include_usage, repeat=repeat))

    # -- used by the handler threads

    def _record(self, req: RecordedRequest) -> None:
        with self._cond:
            self.requests.append(req)

    def _new_stream(self, log: StreamLog) -> StreamLog:
        with self._cond:
            self.streams.append(log)
        return log

    def _new_conversation(self, metadata: dict[str, Any]) -> dict[str, Any]:
        conversation = {"id": f"conv_{int(time.time()):08x}{uuid.uuid4().hex[:24]}{uuid.uuid4().hex[:16]}",
                        "object": "conversation", "created_at": int(time.time()), "metadata": metadata}
        with self._cond:
            self.conversations[conversation["id"]] = conversation
        return conversation

    def _finish_stream(self, log: StreamLog) -> None:
        with self._cond:
            log.finished = True
            self._cond.notify_all()

    def _sleep(self, seconds: float) -> bool:
        """Sleep; True when interrupted by stop()."""
        return self._stopping.wait(seconds)
