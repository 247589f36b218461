"""Moving bytes between the client and the upstream: headers, the HTTP client, bodies and streams."""

from __future__ import annotations

import datetime
import os
import re
import socket
import weakref
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

import requests
import urllib3
import urllib3.connection
from loguru import logger
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from bridge import response_head
from bridge.content_coding import Inflater, content_coding
from bridge.errors import GatewayError
from bridge.intercept.sse import SSESplitter, last_event
from bridge.masking import holds_gateway_token
from bridge.reliability import UpstreamFailure
from bridge.sockets import readable_now, send_all

if TYPE_CHECKING:
    from bridge.interception import Interception
    from bridge.providers.base import StreamDecoder

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
# Never sent upstream: framing the gateway recomputes, compression it would have to undo, the
# client's cookies, and everything that identifies the caller to the gateway rather than the provider.
_REQUEST_DROPPED = HOP_BY_HOP | {
    "host", "content-length", "accept-encoding", "cookie", "x-coder-ai-governance-token",
}
_CLIENT_CREDENTIALS = frozenset({"authorization", "x-api-key"})
# Framing is the gateway's own on the way back; cookies belong to the upstream's domain. A body the
# upstream compressed (unasked) goes out as it came, so its Content-Encoding goes with it.
_RESPONSE_DROPPED = HOP_BY_HOP | {"content-length", "set-cookie"}
STREAM_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
_READ_SIZE = 65536
_JOINED_SEND_MAX = 1024 * 1024  # a request's head and body go out as one write up to this size
_UNSEEN_READS_MAX = 16  # reads relayed ahead of the interceptor at most, when the upstream sends faster than it reads


def upstream_headers(incoming: Iterable[tuple[str, str]], credentials: Mapping[str, str] | None) -> dict[str, str]:
    """Headers for the upstream request. ``credentials`` replace the client's own (centralized mode);
    None keeps the client's ``Authorization``/``X-Api-Key`` (bring-your-own-key).

    A header holding a gateway token (any user's) is dropped in every mode, whatever its name: a
    client may have put one where its own key goes, or anywhere else."""
    items = list(incoming)
    dropped = set(_REQUEST_DROPPED)
    for name, value in items:  # headers the client named in Connection are hop-by-hop too
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(","))
    if credentials is not None:
        dropped |= _CLIENT_CREDENTIALS
    # Non-ASCII values go as the bytes received: requests refuses a str one that starts with a
    # character Python deems whitespace (e.g. \x85), which would fail the call with a 502.
    headers = {name: value if value.isascii() else value.encode("latin-1") for name, value in items
               if name.lower() not in dropped and not name.lower().startswith("coder-")
               and not holds_gateway_token(value)}
    if credentials:
        headers.update(credentials)
    headers["Accept-Encoding"] = "identity"
    return headers


def response_headers(upstream: requests.Response) -> list[tuple[str, str]]:
    return [(name, value) for name, value in upstream.raw.headers.items() if name.lower() not in _RESPONSE_DROPPED]


class _LeanConnection:
    """urllib3's connection, minus two costs that showed in profiles of every relayed call:

    - a request's head and body went out in two writes; on loopback each write costs about as much
      as the rest of the call's Python work. They now go out together (a large body on its own:
      joining it to the head would copy it whole);
    - before reusing a pooled connection urllib3 checks it was not closed, through gevent's
      Python-level poll(); one zero-timeout poll() on the real descriptor answers the same.
    """

    _outgoing: list[bytes] | None = None

    def request(self, method, url, body=None, headers=None, **kwargs) -> None:
        self._outgoing = []
        try:
            super().request(method, url, body, headers, **kwargs)
            parts = self._outgoing
        finally:
            self._outgoing = None
        if sum(map(len, parts)) <= _JOINED_SEND_MAX:
            parts = [b"".join(parts)]
        for data in parts:
            if self.sock is None:
                super().send(data)  # connects first
            else:
                send_all(self.sock, data)

    def send(self, data) -> None:
        if self._outgoing is not None:
            self._outgoing.append(bytes(data))
        else:
            super().send(data)

    @property
    def is_connected(self) -> bool:
        # Readable while idle in the pool: closed by the peer (or stray bytes); either way not reusable.
        return self.sock is not None and not readable_now(self.sock)


class _HTTPConnection(_LeanConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_LeanConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _LeanAdapter(HTTPAdapter):
    """requests' transport adapter (its extension point for how connections are made) on the lean
    connections, remembering each upstream's pool: requests works the pool out again on every call
    (proxy selection, TLS settings, pool key), and the gateway's upstreams and TLS settings are fixed."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        key = "/".join(request.url.split("/", 3)[:3])  # scheme://host[:port]
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = super().get_connection_with_tls_context(request, verify, proxies, cert)
        return pool

    def request_url(self, request: requests.PreparedRequest, proxies: Mapping[str, str]) -> str:
        """The request target (requests first looks for a proxy in ``proxies``: the gateway uses none)."""
        url = request.path_url
        return "/" + url.lstrip("/") if url.startswith("//") else url

    def build_response(self, req: requests.PreparedRequest, resp: urllib3.BaseHTTPResponse) -> requests.Response:
        """requests' Response, minus what the gateway never reads: cookies for a jar it does not keep
        (parsing them took a URL parse per call) and a text encoding for bodies it relays as bytes."""
        return _UpstreamResponse(req, resp, self)


class _UpstreamResponse(requests.Response):
    """requests' Response made in one step, without a cookie jar of its own: a new jar (with its lock)
    cost as much as the rest of the Response, and the gateway keeps no cookies (it never fills or
    reads this one)."""

    def __init__(self, req: requests.PreparedRequest, resp: urllib3.BaseHTTPResponse, adapter: HTTPAdapter) -> None:
        self._content = False
        self._content_consumed = False
        self._next = None
        self.status_code = resp.status
        self.headers = CaseInsensitiveDict(resp.headers)
        self.raw = resp
        self.url = req.url
        self.encoding = None
        self.history = []
        self.reason = resp.reason
        self.cookies = _NO_COOKIES
        self.elapsed = datetime.timedelta(0)
        self.request = req
        self.connection = adapter


_NO_COOKIES = requests.cookies.RequestsCookieJar()


def _trusted_cas() -> str | bool:
    """The CA bundle (or directory) upstream certificates are checked against: requests' own
    (certifi) unless the operator names one the usual way."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        if os.environ.get(name):
            return os.environ[name]
    return True


_UPSTREAM_HOSTS_MAX = 256
# What the HTTP client would refuse in a request target; such a URL gets requests' full preparation (quoting).
_UNSAFE_IN_URL = re.compile(r"[^\x21-\x7e]")


def _prepare(method: str, url: str, headers: Mapping[str, str | bytes], body: bytes | None) -> requests.PreparedRequest:
    """requests' PreparedRequest without what a gateway call never has (cookies, hooks) and, for a URL
    that is already a valid request target (the gateway builds it: base URL + quoted path + the
    client's query), without parsing it apart and together again."""
    prepared = requests.PreparedRequest()
    prepared.prepare_method(method)
    full = _UNSAFE_IN_URL.search(url) or "@" in url.split("/", 3)[2]  # odd characters, or credentials in the URL
    if full:
        prepared.prepare_url(url, None)
    else:
        prepared.url = url
    prepared.prepare_headers(headers)
    prepared.prepare_body(body, None)
    if full:
        prepared.prepare_auth(None, prepared.url)
    return prepared


class Upstream:
    """The worker's HTTP client: requests' transport adapter with its connection pools, no proxies,
    no cookies kept, bounded waits.

    Calls go to the adapter, not through a Session: Session.send adds cookie jars, hooks,
    redirect and environment handling that a gateway never uses, on every call.
    """

    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int) -> None:
        self._timeout = (connect_timeout, read_timeout)
        self._pool_size = pool_size
        self._adapter: HTTPAdapter | None = None
        self._verify = _trusted_cas()

    @property
    def adapter(self) -> HTTPAdapter:
        if self._adapter is None:  # created in the worker, after fork and gevent's patching
            response_head.install()
            # pool_connections: enough pools for every configured upstream host, so none is ever evicted.
            self._adapter = _LeanAdapter(pool_connections=_UPSTREAM_HOSTS_MAX, pool_maxsize=self._pool_size,
                                         pool_block=False, max_retries=0)
        return self._adapter

    def send(self, method: str, url: str, headers: Mapping[str, str | bytes], body: bytes | None,
             provider_name: str) -> requests.Response:
        try:
            prepared = _prepare(method, url, headers, body)
            return self.adapter.send(prepared, stream=True, timeout=self._timeout, verify=self._verify, proxies={})
        except requests.ConnectTimeout:
            raise UpstreamFailure(504, f"upstream of provider {provider_name!r} did not answer in time (connect)",
                                  retryable=True, breaker_failure=True) from None
        except requests.Timeout:  # it has the request, but no answer came within the read timeout
            raise UpstreamFailure(504, f"upstream of provider {provider_name!r} did not answer in time",
                                  retryable=False, breaker_failure=True) from None
        except requests.ConnectionError as exc:  # refused, reset or closed before an answer
            raise UpstreamFailure(502, f"upstream of provider {provider_name!r} is unreachable ({_reason(exc)})",
                                  retryable=True, breaker_failure=True) from None
        except requests.RequestException as exc:  # a request that cannot be sent (says nothing about the upstream)
            raise UpstreamFailure(502, f"the request to the upstream of provider {provider_name!r} could not be sent "
                                       f"({_reason(exc)})", retryable=False, breaker_failure=False) from None


def read_whole(upstream: requests.Response, provider_name: str) -> bytes:
    """The whole body of a non-streamed answer, as sent (compressed, if the upstream compressed it)."""
    try:
        return upstream.raw.read(decode_content=False)
    except ReadTimeoutError:
        raise GatewayError(504, f"upstream of provider {provider_name!r} stopped sending") from None
    except (ProtocolError, OSError) as exc:
        raise GatewayError(502, f"upstream of provider {provider_name!r} broke off the response ({_reason(exc)})") from None
    finally:
        upstream.close()


class StreamRelay:
    """The response body of a relayed stream: the upstream's SSE bytes as they arrive, with the
    interceptor seeing every event.

    A stream that breaks or stalls upstream, or ends before the provider's final event (e.g. a
    stream without length or chunks, whose end is the connection's), ends with the provider's error
    event, so the client's SDK raises instead of waiting or taking a cut stream for a finished one.
    A stream the upstream compressed (unasked) is relayed as it came, inflated only to be read
    (bridge.content_coding), and not rewritten. ``close()`` (the WSGI
    server calls it once the response is over: after its last byte went out, or the client went
    away) closes the upstream connection and ends the interception, even if the body was never
    iterated. The record is made there and not at the last event, so the client is not kept
    waiting for the end of its response while the gateway builds the record.

    Every relay of the process is registered until it is closed, so that a stopping worker can
    end the streams still in flight (``abort``) before it is killed.
    """

    _in_flight: "weakref.WeakSet[StreamRelay]" = weakref.WeakSet()

    def __init__(self, upstream: requests.Response, interception: Interception, shape: str, provider_name: str,
                 decoder: StreamDecoder | None = None) -> None:
        self._upstream = upstream
        self._decoder = decoder  # turns a non-SSE upstream stream (Bedrock's) into the SSE the client gets
        self._interception = interception
        self._shape = shape
        self._provider_name = provider_name
        self._events: Iterator[bytes] | None = None
        self._splitter = SSESplitter()
        self._unseen: list[bytes] = []  # relayed, not yet read for the record
        self._last_run = b""  # the last whole events read for the record
        coding = content_coding(upstream.headers.items())
        self._inflater = Inflater(coding) if coding else None  # for the decoder if there is one, else the record
        self._abort_reason: str | None = None
        StreamRelay._in_flight.add(self)

    @classmethod
    def in_flight(cls) -> list[StreamRelay]:
        """The relays of this process not closed yet."""
        return list(cls._in_flight)

    @property
    def closed(self) -> bool:
        return self not in StreamRelay._in_flight

    def abort(self, reason: str) -> None:
        """End the stream early: the upstream connection is shut down, so the read waiting on it
        returns, and the client gets the provider's error event saying ``reason``. A stream whose
        upstream answer is already whole (its connection released) is left to finish."""
        sock = getattr(self._upstream.raw.connection, "sock", None)
        if sock is None:
            return
        self._abort_reason = reason
        try:
            # Through a duplicate descriptor: a TLS socket's own shutdown() would also unwrap it
            # under the read in progress. Shutting down the connection wakes that read.
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed meanwhile: the read ends anyway
            pass

    def end_interception(self) -> None:
        """End the interception now, for a stream whose close has not come (its client is not
        reading): its record is written while the worker can still write it."""
        self._interception.end()

    def __iter__(self) -> Iterator[bytes]:
        self._events = self._relay()
        return self._events

    def _relay(self) -> Iterator[bytes]:
        interceptor = self._interception.interceptor
        framer = SSESplitter()  # cuts a rewritten stream at event boundaries
        read1 = self._upstream.raw.read1
        rewrite = interceptor.rewrites_stream and self._inflater is None  # compressed: relayed as it came
        decoder = self._decoder
        try:
            while True:
                try:
                    chunk = read1(_READ_SIZE, decode_content=False)
                except ReadTimeoutError:
                    yield self._fail(504, f"upstream of provider {self._provider_name!r} stopped sending mid-stream")
                    return
                except (ProtocolError, OSError) as exc:
                    yield self._fail(502, f"upstream of provider {self._provider_name!r} broke off the stream ({_reason(exc)})")
                    return
                if not chunk:
                    break
                if decoder is not None:
                    chunk = self._decoded(chunk)
                    if not chunk and not self._undecodable():  # no whole frame yet
                        continue
                if rewrite:  # whole events only, rewritten as one run
                    chunk = framer.feed_whole(chunk)
                    out = self._rewrite(chunk) if chunk else b""
                else:
                    out = chunk
                # The bytes go out first; reading them for the record waits until the upstream makes
                # the gateway wait, so the end of a stream that came at once is not held up by it.
                if chunk:
                    self._unseen.append(chunk)
                if out:
                    yield out
                if decoder is not None and self._undecodable():
                    yield self._fail(502, f"the stream of provider {self._provider_name!r} cannot be read: "
                                          f"{self._inflater.stopped}")
                    return
                if len(self._unseen) >= _UNSEEN_READS_MAX or not self._next_read_ready():
                    self._observe_unseen()
            rest = b""
            if rewrite:
                rest = framer.remainder()
                if rest:
                    yield rest
            # A clean end is the provider's only if its last event says so (a stream without length or
            # chunks ends with the connection, cut or not).
            if not self._ends_as_provider_ends_it(rest):
                yield self._fail(502, f"upstream of provider {self._provider_name!r} closed the stream "
                                      "before its final event")
        except GeneratorExit:
            self._interception.error = "client disconnected"
            raise
        finally:
            self._upstream.close()

    def _next_read_ready(self) -> bool:
        """Whether the next read returns at once: the answer's whole length is read, or bytes (or the
        connection's end) wait on the socket."""
        raw = self._upstream.raw
        if raw.length_remaining == 0:
            return True
        sock = getattr(raw.connection, "sock", None)
        return sock is not None and readable_now(sock)

    def _decoded(self, data: bytes) -> bytes:
        """The SSE bytes the decoder makes of upstream bytes (inflated first, if compressed)."""
        if self._inflater is None:
            return self._decoder.feed(data)
        return b"".join([self._decoder.feed(piece) for piece in self._inflater.feed(data)])

    def _undecodable(self) -> bool:
        """Whether the rest of a compressed stream cannot be inflated for the decoder (see Inflater.stopped)."""
        return self._inflater is not None and self._inflater.stopped is not None

    def _observe_unseen(self) -> None:
        """Show the interceptor the events of every read relayed but not yet read for the record, in order."""
        unseen, self._unseen = self._unseen, []
        data = b"".join(unseen)
        inflater = self._inflater if self._decoder is None else None  # a decoder's output is plain SSE
        if inflater is None:
            self._observe_run(self._splitter.feed_whole(data))
            return
        for piece in inflater.feed(data):
            self._observe_run(self._splitter.feed_whole(piece))
        if inflater.stopped:
            self._interception.incomplete = f"read for the record up to where it stopped: {inflater.stopped}"

    def _observe_run(self, run: bytes) -> None:
        if run:
            self._last_run = run
            self._observe_all(self._interception.interceptor.events_for_record(run))

    def _ends_as_provider_ends_it(self, unfinished: bytes) -> bool:
        """Whether the stream's last event (``unfinished``: a rewritten stream's event without its
        blank line, if any) is one the provider ends a stream with: its final event or an error. True
        as well when the stream could not be read to its end (no way to tell).

        Only that event is parsed: the reads not yet seen by the interceptor are read for the record
        after the client has its end (in close()), unless they must be inflated first."""
        if self._inflater is not None and self._decoder is None:
            self._observe_unseen()  # compressed: only the inflated events can be looked at
            unfinished = unfinished or self._splitter.pending
        if self._interception.incomplete:
            return True
        if not unfinished.strip():  # the stream's bytes since the last event read for the record
            unfinished = self._splitter.pending + b"".join(self._unseen) if self._unseen else self._splitter.pending
        event = last_event(unfinished if unfinished.strip() else self._last_run)
        try:
            return event is not None and self._interception.interceptor.ends_stream(event)
        except Exception as exc:
            self._unreadable(exc)
            return True

    # The interceptor only reads along: an event it cannot make sense of (wrong types, a provider's
    # new format) is relayed as it came and left out of the record, never a broken stream.
    def _rewrite(self, events: bytes) -> bytes:
        try:
            return self._interception.interceptor.rewrite(events)
        except Exception as exc:
            self._unreadable(exc)
            return events

    def _observe_all(self, events) -> None:
        observe = self._interception.interceptor.observe_event
        for event in events:
            try:
                observe(event)
            except Exception as exc:
                self._unreadable(exc)

    def _unreadable(self, exc: Exception) -> None:
        if not self._interception.unreadable:
            logger.bind(provider=self._provider_name, interception_id=self._interception.id).warning(
                "an upstream event could not be read for the record ({}); relayed unchanged", type(exc).__name__)
        self._interception.unreadable += 1

    def _fail(self, status: int, message: str) -> bytes:
        if self._abort_reason:  # the read failed, or the stream was cut, because abort() shut the connection down
            status, message = 503, self._abort_reason
        self._interception.error = message
        return self._interception.interceptor.stream_error(self._shape, status, message)

    def close(self) -> None:
        StreamRelay._in_flight.discard(self)
        try:
            if self._events is not None:
                events, self._events = self._events, None
                events.close()
        finally:
            self._upstream.close()
            try:
                self._observe_unseen()
            finally:
                self._interception.end()


def _reason(exc: BaseException) -> str:
    """A short cause without URLs or headers (which could carry credentials)."""
    text = str(exc).lower()
    for needle, reason in (("refused", "connection refused"), ("reset", "connection reset"),
                           ("name or service", "name resolution failed"), ("nodename", "name resolution failed"),
                           ("incomplete", "incomplete read"), ("ssl", "TLS error"), ("certificate", "TLS error")):
        if needle in text:
            return reason
    return type(exc).__name__
