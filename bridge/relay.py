"""Moving bytes between the client and the upstream: headers, the HTTP client, bodies and streams."""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

import requests
from loguru import logger
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from bridge.errors import GatewayError
from bridge.intercept.sse import SSESplitter
from bridge.reliability import UpstreamFailure

if TYPE_CHECKING:
    from bridge.interception import Interception

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
# Framing and encoding are the gateway's own on the way back; cookies belong to the upstream's domain.
_RESPONSE_DROPPED = HOP_BY_HOP | {"content-length", "content-encoding", "set-cookie"}
STREAM_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
_READ_SIZE = 65536


def upstream_headers(incoming: Iterable[tuple[str, str]], credentials: Mapping[str, str] | None) -> dict[str, str]:
    """Headers for the upstream request. ``credentials`` replace the client's own (centralized mode);
    None keeps the client's ``Authorization``/``X-Api-Key`` (bring-your-own-key)."""
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
               if name.lower() not in dropped and not name.lower().startswith("coder-")}
    if credentials:
        headers.update(credentials)
    headers["Accept-Encoding"] = "identity"
    return headers


def response_headers(upstream: requests.Response) -> list[tuple[str, str]]:
    return [(name, value) for name, value in upstream.raw.headers.items() if name.lower() not in _RESPONSE_DROPPED]


def is_event_stream(upstream: requests.Response) -> bool:
    return upstream.headers.get("content-type", "").startswith("text/event-stream")


class Upstream:
    """The worker's HTTP client: one pooled session, no proxy/netrc lookups, bounded waits."""

    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int) -> None:
        self._timeout = (connect_timeout, read_timeout)
        self._pool_size = pool_size
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        if self._session is None:  # created in the worker, after fork and gevent's patching
            session = requests.Session()
            session.trust_env = False
            # One session serves every user: never keep an upstream's cookies for the next caller.
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            adapter = HTTPAdapter(pool_connections=16, pool_maxsize=self._pool_size, pool_block=False, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._session = session
        return self._session

    def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
             provider_name: str) -> requests.Response:
        try:
            # Prepared directly: Session.request would merge session cookies, environment proxy
            # settings and hooks that a gateway never uses, on every call.
            prepared = requests.Request(method, url, headers=headers, data=body).prepare()
            return self.session.send(prepared, stream=True, timeout=self._timeout, allow_redirects=False, proxies={})
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
    """The whole body of a non-streamed answer."""
    try:
        return upstream.raw.read(decode_content=True)
    except ReadTimeoutError:
        raise GatewayError(504, f"upstream of provider {provider_name!r} stopped sending") from None
    except (ProtocolError, OSError) as exc:
        raise GatewayError(502, f"upstream of provider {provider_name!r} broke off the response ({_reason(exc)})") from None
    finally:
        upstream.close()


class StreamRelay:
    """The response body of a relayed stream: the upstream's SSE bytes as they arrive, with the
    interceptor seeing every event.

    A stream that breaks or stalls upstream ends with the provider's error event, so the client's
    SDK raises instead of waiting or taking a cut stream for a finished one. ``close()`` (the WSGI
    server calls it when the response ends, or the client went away) closes the upstream
    connection at once and ends the interception, even if the body was never iterated.
    """

    def __init__(self, upstream: requests.Response, interception: Interception, shape: str, provider_name: str) -> None:
        self._upstream = upstream
        self._interception = interception
        self._shape = shape
        self._provider_name = provider_name
        self._events: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._events = self._relay()
        return self._events

    def _relay(self) -> Iterator[bytes]:
        interceptor = self._interception.interceptor
        splitter = SSESplitter()
        read1 = self._upstream.raw.read1
        rewrite = interceptor.rewrites_stream
        try:
            while True:
                try:
                    chunk = read1(_READ_SIZE, decode_content=True)
                except ReadTimeoutError:
                    yield self._fail(504, f"upstream of provider {self._provider_name!r} stopped sending mid-stream")
                    return
                except (ProtocolError, OSError) as exc:
                    yield self._fail(502, f"upstream of provider {self._provider_name!r} broke off the stream ({_reason(exc)})")
                    return
                if not chunk:
                    break
                events = splitter.feed(chunk)
                if rewrite:
                    out = b"".join([self._rewrite(event) for event in events])
                    if out:
                        yield out
                else:
                    for event in events:
                        self._observe(event)
                    yield chunk
            if rewrite:
                rest = splitter.remainder()
                if rest:
                    yield rest
        except GeneratorExit:
            self._interception.error = "client disconnected"
            raise
        finally:
            self._finish()

    # The interceptor only reads along: an event it cannot make sense of (wrong types, a provider's
    # new format) is relayed as it came and left out of the record, never a broken stream.
    def _rewrite(self, event) -> bytes:
        try:
            return self._interception.interceptor.relay_event(event)
        except Exception as exc:
            self._unreadable(exc)
            return event.raw

    def _observe(self, event) -> None:
        try:
            self._interception.interceptor.observe_event(event)
        except Exception as exc:
            self._unreadable(exc)

    def _unreadable(self, exc: Exception) -> None:
        if not self._interception.unreadable:
            logger.bind(provider=self._provider_name, interception_id=self._interception.id).warning(
                "an upstream event could not be read for the record ({}); relayed unchanged", type(exc).__name__)
        self._interception.unreadable += 1

    def _fail(self, status: int, message: str) -> bytes:
        self._interception.error = message
        return self._interception.interceptor.stream_error(self._shape, status, message)

    def close(self) -> None:
        if self._events is not None:
            events, self._events = self._events, None
            events.close()
        self._finish()

    def _finish(self) -> None:
        self._upstream.close()
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
