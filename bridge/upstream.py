"""The upstream client: the worker's one HTTP client for calls to providers (SPEC §1: requests).

Contract
- ``Upstream.send(method, url, headers, body, provider_name)`` sends one request, once (no retries
  here: bridge.reliability decides them), and returns the ``requests.Response`` as soon as its status
  line and headers are in; the body is left unread on the connection (``stream=True``), to be read
  with ``read_whole`` or, for a stream, ``raw.read1`` (bridge.relay.StreamRelay). The caller closes
  the response, which gives the connection back to its pool when the body was read to its end.
- The request goes as given: the URL is the provider's (base URL + quoted path + the client's query),
  the headers are ``upstream_headers``'s (or a provider's own, e.g. SigV4-signed), the body is bytes.
  No proxies (the environment's are ignored), no cookies kept, no redirects followed, no
  Content-Encoding asked for (``Accept-Encoding: identity``; a body compressed anyway is relayed as sent).
- Errors: ``UpstreamFailure`` (bridge.reliability), 504 for a connect or read timeout, 502 for an
  unreachable upstream or a request that cannot be sent; its message names the provider and a short
  cause, never the URL or headers (they may carry credentials). ``read_whole`` raises GatewayError
  502/504 for a body that breaks off or stalls.
- Pools: one per upstream ``scheme://host:port`` (up to 256 hosts, never evicted), each keeping up to
  the worker's connection count (``pool_size``) alive; beyond it, extra connections are opened and
  not kept (non-blocking).
- Timeouts: (connect, read) from UPSTREAM_CONNECT_TIMEOUT / UPSTREAM_READ_TIMEOUT; the read timeout
  bounds every wait for bytes, the first one included.
- TLS: upstream certificates are checked against certifi's bundle, or REQUESTS_CA_BUNDLE /
  SSL_CERT_FILE / SSL_CERT_DIR.

Shims over requests' public API (a Session with a mounted HTTPAdapter), each kept for its measured
cost: the client's CPU per call (send + read a small JSON answer + close), gevent-patched, against a
keep-alive server on loopback in another process, median of 7 alternating rounds of 2,000 calls (15
of 3,000 for request_url), on the 2-core development machine. All shims: 196 µs per call. Without:

  shim                                           without it     where
  joined head+body write, native poll() reuse   +39 µs (+20%)   _LeanConnection
  the upstream's pool remembered                +24 µs (+12%)   _LeanAdapter.get_connection_with_tls_context
  request target taken as built                  +8 µs  (+4%)   _LeanAdapter.request_url
  Response without a cookie jar                 +19 µs (+10%)   _UpstreamResponse
  PreparedRequest without URL re-parsing        +68 µs (+35%)   _prepare
  all of them: HTTPAdapter.send                +159 µs (+81%)
  Session.send (cookies, hooks, redirects)     +187 µs (+95%)
  Session.request (+ environment, merging)     +257 µs (+130%)
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Iterable, Mapping

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from bridge import patches
from bridge.errors import GatewayError
from bridge.masking import holds_gateway_token
from bridge.reliability import UpstreamFailure
from bridge.sockets import readable_now, send_all

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
_JOINED_SEND_MAX = 1024 * 1024  # a request's head and body go out as one write up to this size


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
    """urllib3's connection, minus two costs that showed in profiles of every relayed call (together
    39 µs of a 196 µs call, see the module doc):

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
    (proxy selection, TLS settings, pool key), and the gateway's upstreams and TLS settings are fixed
    (24 µs a call)."""

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
        """The request target (requests first looks for a proxy in ``proxies``: the gateway uses none; 8 µs a call)."""
        url = request.path_url
        return "/" + url.lstrip("/") if url.startswith("//") else url

    def build_response(self, req: requests.PreparedRequest, resp: urllib3.BaseHTTPResponse) -> requests.Response:
        """requests' Response, minus what the gateway never reads: cookies for a jar it does not keep
        (parsing them took a URL parse per call) and a text encoding for bodies it relays as bytes."""
        return _UpstreamResponse(req, resp, self)


class _UpstreamResponse(requests.Response):
    """requests' Response made in one step, without a cookie jar of its own: a new jar (with its lock)
    cost as much as the rest of the Response, and the gateway keeps no cookies (it never fills or
    reads this one; 19 µs a call)."""

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
    client's query), without parsing it apart and together again (68 µs a call)."""
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
    redirect and environment handling that a gateway never uses, on every call (28 µs).
    """

    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int) -> None:
        self._timeout = (connect_timeout, read_timeout)
        self._pool_size = pool_size
        self._adapter: HTTPAdapter | None = None
        self._verify = _trusted_cas()

    @property
    def adapter(self) -> HTTPAdapter:
        if self._adapter is None:  # created in the worker, after fork and gevent's patching
            patches.upstream_response_heads()
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
            raise UpstreamFailure(502, f"upstream of provider {provider_name!r} is unreachable ({failure_reason(exc)})",
                                  retryable=True, breaker_failure=True) from None
        except requests.RequestException as exc:  # a request that cannot be sent (says nothing about the upstream)
            raise UpstreamFailure(502, f"the request to the upstream of provider {provider_name!r} could not be sent "
                                       f"({failure_reason(exc)})", retryable=False, breaker_failure=False) from None


def read_whole(upstream: requests.Response, provider_name: str) -> bytes:
    """The whole body of a non-streamed answer, as sent (compressed, if the upstream compressed it)."""
    try:
        return upstream.raw.read(decode_content=False)
    except ReadTimeoutError:
        raise GatewayError(504, f"upstream of provider {provider_name!r} stopped sending") from None
    except (ProtocolError, OSError) as exc:
        raise GatewayError(502, f"upstream of provider {provider_name!r} broke off the response ({failure_reason(exc)})") from None
    finally:
        upstream.close()



def failure_reason(exc: BaseException) -> str:
    """A short cause without URLs or headers (which could carry credentials)."""
    text = str(exc).lower()
    for needle, reason in (("refused", "connection refused"), ("reset", "connection reset"),
                           ("name or service", "name resolution failed"), ("nodename", "name resolution failed"),
                           ("incomplete", "incomplete read"), ("ssl", "TLS error"), ("certificate", "TLS error")):
        if needle in text:
            return reason
    return type(exc).__name__
