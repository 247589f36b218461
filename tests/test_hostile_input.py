"""Hostile input at every route (SPEC §5, issue 7), against the real gateway under gunicorn.

Property-based (hypothesis, bounded and derandomized so CI is repeatable; set
``BRIDGE_HYPOTHESIS_PROFILE=explore`` to search with fresh random examples): malformed JSON, wrong
types for every field the gateway checks, garbage inside the accepted types, huge and deeply nested
bodies, invalid UTF-8, odd header values, odd request targets (``..``, ``%2e%2e``, ``//``, absolute
URLs, very long, non-UTF-8 escapes) and odd query strings.

Whatever comes in: never a 500, never a traceback in a body or in the gateway's log, the provider's
error shape on provider routes, nothing upstream for a request refused before it, nothing at all
reaching another host or a path outside the provider's allow-list, and no worker lost. Every
interception the hostile user caused is recorded, ended and intact; a refused request records none.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import ANTHROPIC, OPENAI
from bridge.store import open_store
from tests.harness import wait_for_records

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", max_examples=400, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = os.environ.get("BRIDGE_HYPOTHESIS_PROFILE", "ci")


def bounded(examples: int):
    """The profile's settings with at most ``examples`` examples (the CI budget of one test)."""
    base = settings.get_profile(PROFILE)
    return settings(base, max_examples=examples if PROFILE == "ci" else base.max_examples)


GITHUB_TOKEN = "gho_hostile_test_github_token_0000"
DEEP = 100_000  # levels of nesting: far past orjson's limit (1024) and Python's recursion limit


@dataclass(frozen=True)
class Route:
    provider: str
    path: str
    shape: str
    api: str  # chat | responses | messages

    def auth(self, token: str) -> dict[str, str]:
        if self.provider == "copilot":
            return {"X-Coder-AI-Governance-Token": token, "Authorization": f"Bearer {GITHUB_TOKEN}"}
        if self.shape == ANTHROPIC:
            return {"X-Api-Key": token, "anthropic-version": "2023-06-01"}
        return {"Authorization": f"Bearer {token}"}


INTERCEPTED = [
    Route("openai", "v1/chat/completions", OPENAI, "chat"),
    Route("openai", "v1/responses", OPENAI, "responses"),
    Route("team-b", "v1/chat/completions", OPENAI, "chat"),
    Route("anthropic", "v1/messages", ANTHROPIC, "messages"),
    Route("anthropic-corp", "v1/messages", ANTHROPIC, "messages"),
    Route("copilot", "chat/completions", OPENAI, "chat"),
    Route("copilot", "responses", OPENAI, "responses"),
]
SHAPES = {"openai": OPENAI, "team-b": OPENAI, "copilot": OPENAI, "anthropic": ANTHROPIC, "anthropic-corp": ANTHROPIC}
FIXTURE = {"chat": "openai_chat/simple_text", "responses": "openai_responses/simple_text",
           "messages": "anthropic/simple_text"}
VALID = {
    "chat": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    "responses": {"model": "gpt-4o", "input": "hi"},
    "messages": {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
}
NoneType = type(None)
#: The fields the gateway reads itself, and the JSON types it accepts for each (SPEC §5).
CHECKED = {
    "chat": {"model": {str}, "stream": {bool}, "messages": {list}, "stream_options": {dict, NoneType}},
    "responses": {"model": {str}, "stream": {bool}, "input": {str, list}, "background": {bool}},
    "messages": {"model": {str}, "stream": {bool}, "messages": {list}},
}
#: Where each provider's upstream requests may go (the fake upstream's paths): exact paths, and
#: prefixes ending in "/" that admit deeper paths (SPEC §4).
ALLOWED_UPSTREAM = {
    "": ["/v1/models", "/v1/models/", "/v1/responses/", "/v1/conversations", "/v1/conversations/",
         "/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens"],
    "/team-b": ["/v1/models", "/v1/models/", "/v1/responses/", "/v1/conversations", "/v1/conversations/",
                "/v1/chat/completions", "/v1/responses"],
    "/corp/anthropic": ["/v1/models", "/v1/models/", "/v1/messages", "/v1/messages/count_tokens"],
    "/copilot": ["/models", "/models/", "/agents/", "/.well-known/", "/chat/completions", "/responses"],
}


class Listener:
    """A socket nobody should ever reach: the 'other host' of absolute-URL and Host tricks."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Hostile:
    gateway: object
    upstream: object
    database: Path
    token: str
    user_id: str
    elsewhere: Listener
    log_offset: int
    workers: set[int]
    session: requests.Session = field(default_factory=requests.Session)
    #: interception id -> (the model the request asked for, the status the client got)
    recorded: dict[str, tuple[str, int]] = field(default_factory=dict)
    upstream_seen: int = 0

    def url(self, route: Route) -> str:
        return f"{self.gateway.base(route.provider)}/{route.path}"

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Hostile(user={self.user_id}, recorded={len(self.recorded)})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


def _worker_pids(master: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.add(int(entry))
    return pids


@pytest.fixture(scope="module")
def hostile(gateway, upstream, identities, database):
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    user = identities.store.identity.create_user(name)
    token, _ = identities.token(name)
    elsewhere = Listener()
    state = Hostile(gateway, upstream, database, token, user["id"], elsewhere,
                    log_offset=len(gateway.log()), workers=_worker_pids(gateway.process.pid))
    assert len(state.workers) == gateway.workers
    yield state
    elsewhere.close()
    state.session.close()


# -- checks --------------------------------------------------------------------------------------


def assert_sane(response_status: int, body: bytes) -> None:
    # 501: a feature the server does not have (an unknown transfer coding, a background response).
    assert response_status < 500 or response_status == 501, (response_status, body[:500])
    for marker in (b"Traceback", b'File "', b"internal gateway error"):
        assert marker not in body, body[:500]


def assert_provider_shape(shape: str, status: int, body: bytes) -> dict:
    """The provider's own error body, as its SDK parses it."""
    parsed = orjson.loads(body)
    if shape == ANTHROPIC:
        assert parsed["type"] == "error" and isinstance(parsed["error"]["type"], str), parsed
        assert isinstance(parsed["error"]["message"], str) and parsed["error"]["message"]
    else:
        assert set(parsed) == {"error"}, parsed
        assert isinstance(parsed["error"]["message"], str) and parsed["error"]["message"]
        assert isinstance(parsed["error"]["type"], str) and "param" in parsed["error"] and "code" in parsed["error"]
    return parsed


def refused_before_upstream(state: Hostile, response: requests.Response, route: Route, status: int | None = 400) -> dict:
    """A request the gateway refused itself: provider-shaped, no interception, nothing upstream."""
    assert_sane(response.status_code, response.content)
    if status is not None:
        assert response.status_code == status, response.text[:300]
    assert "X-AIBridge-Interception-Id" not in response.headers
    assert len(state.upstream.requests) == state.upstream_seen, "a refused request reached the upstream"
    return assert_provider_shape(route.shape, response.status_code, response.content)


def relayed(state: Hostile, response: requests.Response, model: str) -> None:
    """A request that went upstream: relayed in full, its interception remembered for the final check."""
    body = response.content  # a stream is read to its end
    assert_sane(response.status_code, body)
    assert response.status_code == 200, body[:300]
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    state.recorded[interception_id] = (model, 200)
    state.upstream_seen = len(state.upstream.requests)


def post(state: Hostile, route: Route, body: bytes, **headers: str) -> requests.Response:
    state.upstream_seen = len(state.upstream.requests)
    return state.session.post(state.url(route), data=body, timeout=30,
                              headers={**route.auth(state.token), "Content-Type": "application/json", **headers})


# -- strategies ----------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
routes = st.sampled_from(INTERCEPTED)


@st.composite
def malformed_bodies(draw) -> bytes:
    api = draw(st.sampled_from(sorted(VALID)))
    valid = orjson.dumps(VALID[api])
    return draw(st.one_of(
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),                # truncated
        st.binary(max_size=300).filter(lambda b: not b.strip().startswith(b"{")),  # noise
        json_values.filter(lambda v: not isinstance(v, dict)).map(orjson.dumps),    # JSON, not an object
        st.sampled_from([
            b"{", b"}", b"{'model': 'x'}", b'{"model": "x",}', b'{"model": NaN, "messages": []}',
            b'{"model": "x", "messages": [], "n": Infinity}', b'{"model": "x", "messages": [], "n": 1e999}',
            b"\xef\xbb\xbf" + valid, b'{"a":1}{"b":2}', valid + b"garbage", valid + b"\x00", b"\x00" + valid,
            b'{"model":"x\x00","messages":[]}', b'{"model":"\\ud800","messages":[]}', b"null", b"[]", b'""',
            valid.replace(b'"', b"'"), valid.replace(b":", b"="), b"{" * 2000, b'{"model":' * 2000,
        ]),
        # invalid UTF-8 inside a string of an otherwise valid body
        st.sampled_from([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf5\x80\x80\x80", b"\x80", b"\xe2\x82"])
        .flatmap(lambda junk: st.text(max_size=5).map(lambda text: b'{"model":"' + text.encode() + junk
                                                      + b'","messages":[],"input":"x"}')),
    ))


@st.composite
def wrong_types(draw) -> tuple[Route, str, object]:
    route = draw(routes)
    name = draw(st.sampled_from(sorted(CHECKED[route.api])))
    allowed = CHECKED[route.api][name]
    value = draw(json_values.filter(lambda v: type(v) not in allowed))
    return route, name, value


message_like = st.fixed_dictionaries({}, optional={
    "role": json_values | st.sampled_from(["user", "assistant", "tool", "system", "developer"]),
    "type": json_values | st.sampled_from(["message", "function_call_output", "custom_tool_call_output",
                                           "tool_result", "text", "input_text"]),
    "content": json_values | st.lists(st.fixed_dictionaries({}, optional={
        "type": json_values | st.sampled_from(["text", "input_text", "tool_result", "image"]),
        "text": json_values, "tool_use_id": json_values}), max_size=3),
    "tool_call_id": json_values, "call_id": json_values, "tool_calls": json_values,
})


@st.composite
def odd_but_accepted(draw) -> tuple[Route, dict]:
    """Bodies whose checked fields have an accepted type, with anything inside them and around them."""
    route = draw(routes)
    body = dict(VALID[route.api])
    body["model"] = draw(st.text(max_size=60))
    body["stream"] = draw(st.booleans())
    items = draw(st.lists(message_like | json_values, max_size=5))
    if route.api == "responses":
        body["input"] = draw(st.just(items) | st.text(max_size=50))
    else:
        body["messages"] = items
    if route.api == "chat" and draw(st.booleans()):
        body["stream_options"] = draw(st.none() | st.dictionaries(st.sampled_from(["include_usage", "x"]), json_values,
                                                                   max_size=2))
    body.update(draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in CHECKED[route.api]), json_values,
                                     max_size=3)))
    return route, body


# -- request bodies ------------------------------------------------------------------------------


@bounded(150)
@given(route=routes, body=malformed_bodies())
def test_malformed_json_is_a_400_in_the_providers_shape(hostile, route, body):
    response = post(hostile, route, body)
    message = refused_before_upstream(hostile, response, route)
    text = message["error"]["message"]
    # The message says what is wrong with the body: not JSON at all, or JSON but not an object.
    assert text.startswith("request body is not valid JSON") or text == "request body must be a JSON object", text


@bounded(200)
@given(case=wrong_types())
def test_a_wrong_type_for_a_checked_field_is_a_400_naming_it(hostile, case):
    route, name, value = case
    body = {**VALID[route.api], name: value}
    response = post(hostile, route, orjson.dumps(body))
    parsed = refused_before_upstream(hostile, response, route)
    assert parsed["error"]["message"].startswith(f"{name}:"), parsed
    if route.shape == OPENAI:
        assert parsed["error"]["param"] == name


@bounded(150)
@given(case=odd_but_accepted())
def test_anything_inside_accepted_types_is_relayed_and_recorded(hostile, case):
    route, body = case
    response = hostile.session.post(hostile.url(route), data=orjson.dumps(body), timeout=30, stream=body["stream"],
                                    headers={**route.auth(hostile.token), "X-Fixture": FIXTURE[route.api],
                                             "Content-Type": "application/json"})
    relayed(hostile, response, body["model"])


@pytest.mark.parametrize("route", INTERCEPTED, ids=[f"{r.provider}/{r.path}" for r in INTERCEPTED])
def test_deeply_nested_bodies_are_refused_without_hurting_the_worker(hostile, route):
    nested_arrays = b"[" * DEEP + b"]" * DEEP
    for body in (nested_arrays, b'{"a":' * DEEP + b"1" + b"}" * DEEP, b"[" * DEEP,
                 b'{"model":"m","messages":' + nested_arrays + b',"input":' + nested_arrays + b"}",
                 b'{"model":"m","messages":[{"role":"user","content":' + nested_arrays + b"}]}"):
        response = post(hostile, route, body)
        parsed = refused_before_upstream(hostile, response, route)
        assert "depth" in parsed["error"]["message"] or "JSON" in parsed["error"]["message"]


@pytest.mark.parametrize("path", ["/api/v2/users", "/api/v2/users/alice/tokens"])
def test_deeply_nested_bodies_on_the_admin_api_are_a_400(hostile, identities, path):
    for body in (b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP):
        response = hostile.session.post(f"{hostile.gateway.url}{path}", data=body, timeout=30,
                                        headers={"Authorization": f"Bearer {identities.alice}",
                                                 "Content-Type": "application/json"})
        assert_sane(response.status_code, response.content)
        assert response.status_code == 400 and "JSON object" in response.json()["message"]


@pytest.mark.parametrize("route", [INTERCEPTED[0], INTERCEPTED[3]], ids=["openai", "anthropic"])
def test_huge_strings_are_relayed_and_bounded_in_the_metrics(hostile, route):
    model = "m" * 1_000_000 + uuid.uuid4().hex
    body = {**VALID[route.api], "model": model,
            "messages": [{"role": "user", "content": "x" * 8_000_000}], "metadata": {"k" * 100_000: "v"}}
    response = hostile.session.post(hostile.url(route), data=orjson.dumps(body), timeout=60,
                                    headers={**route.auth(hostile.token), "X-Fixture": FIXTURE[route.api],
                                             "Content-Type": "application/json"})
    relayed(hostile, response, model)
    metrics = requests.get(f"{hostile.gateway.url}/metrics", timeout=30).text
    assert "m" * 1000 not in metrics  # a client-chosen label is cut short: no scrape of megabytes


def test_a_declared_body_over_the_limit_is_a_413_before_it_is_read(hostile):
    route = INTERCEPTED[0]
    head = (f"POST /api/v2/aibridge/{route.provider}/{route.path} HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {hostile.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {2**40}\r\nConnection: close\r\n\r\n").encode()
    hostile.upstream_seen = len(hostile.upstream.requests)
    status, headers, body = raw_http(hostile.gateway.port, head + b'{"model":')
    assert status == 413
    assert_provider_shape(route.shape, status, body)
    assert len(hostile.upstream.requests) == hostile.upstream_seen


# -- headers -------------------------------------------------------------------------------------


def raw_http(port: int, data: bytes, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers (lower-case) and the de-chunked body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server answered and closed before reading everything
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # e.g. after a 414, the server closes with our unread bytes in its buffer
    head, _, body = received.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue): the real one follows
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), received[:200]
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def _raw_request(method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1"]
    if not any(name.lower() == b"host" for name, _ in headers):
        lines.append(b"Host: gateway.test")
    lines += [name + b": " + value for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _models_request(token: str, extra: list[tuple[bytes, bytes]]) -> bytes:
    return _raw_request("GET", b"/api/v2/aibridge/openai/v1/models",
                        [(b"Authorization", b"Bearer " + token.encode()), *extra])


def _upstream_headers_are_clean(state: Hostile) -> None:
    for sent in state.upstream.requests[state.upstream_seen:]:
        for name, value in sent.headers.items():
            assert not set("\r\n\x00") & set(name + value), (name, value)
            assert state.token not in value, f"the gateway token went upstream in {name}"
        assert "x-injected" not in sent.headers


HEADER_CASES = {
    # name: (extra header lines, acceptable statuses); with a gateway token as Authorization unless the
    # extra lines bring their own.
    "bare CR in a value": ([(b"X-Note", b"a\rX-Injected: yes")], {400}),
    "bare LF in a value": ([(b"X-Note", b"a\nX-Injected: yes")], {400}),
    "obsolete line folding": ([(b"X-Note", b"a\r\n X-Injected: yes")], {400}),
    "NUL in a value": ([(b"X-Note", b"a\x00b")], {400}),
    "NUL in a name": ([(b"X-No\x00te", b"a")], {400}),
    "space before the colon": ([(b"X-Note ", b"a")], {400}),
    "non-ASCII name": ([(b"X-N\xc3\xb6te", b"a")], {400}),
    "latin-1 value": ([(b"X-Note", b"caf\xe9")], {200}),
    "UTF-8 value": ([(b"X-Note", "café ✓ 漢字".encode())], {200}),
    "invalid UTF-8 value": ([(b"X-Note", b"\xff\xfe\xc0\xaf")], {200}),
    "huge value": ([(b"X-Note", b"a" * 100_000)], {400, 431}),
    "many headers": ([(f"X-N{i}".encode(), b"v") for i in range(500)], {400, 431}),
    "duplicate Content-Length": ([(b"Content-Length", b"0"), (b"Content-Length", b"5")], {400}),
    "Content-Length with chunked": ([(b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked")], {400}),
    "unknown Transfer-Encoding": ([(b"Transfer-Encoding", b"gzip, chunked, rot13")], {400, 501}),
    "Host of another server": ([(b"Host", b"127.0.0.1:ELSEWHERE")], {200}),
    "forwarded to another server": ([(b"X-Forwarded-Host", b"127.0.0.1:ELSEWHERE"),
                                     (b"Forwarded", b"host=127.0.0.1:ELSEWHERE")], {200}),
    "two Host headers": ([(b"Host", b"gateway.test"), (b"Host", b"127.0.0.1:ELSEWHERE")], {200, 400}),
    # A credential header has one spelling: the underscore one is dropped, and the own key alone is no token.
    "governance token with underscores": ([(b"X_Coder_AI_Governance_Token", b"TOKEN"),
                                           (b"Authorization", b"Bearer sk-own-byok-key-0123456789")], {401}),
    "session token with underscores": ([(b"Coder_Session_Token", b"TOKEN")], {200}),
    "Expect 100-continue": ([(b"Expect", b"100-continue")], {200, 417}),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_odd_headers(hostile, case):
    extra, statuses = HEADER_CASES[case]
    extra = [(name, value.replace(b"TOKEN", hostile.token.encode())
              .replace(b"ELSEWHERE", str(hostile.elsewhere.port).encode())) for name, value in extra]
    hostile.upstream_seen = len(hostile.upstream.requests)
    own_auth = any(name.lower() == b"authorization" for name, _ in extra)
    request = (_raw_request("GET", b"/api/v2/aibridge/openai/v1/models", extra) if own_auth
               else _models_request(hostile.token, extra))
    status, headers, body = raw_http(hostile.gateway.port, request)
    assert status in statuses, (status, body[:300])
    assert_sane(status, body)
    if status != 200 and headers.get("content-type", "").startswith("application/json"):
        assert_provider_shape(OPENAI, status, body)
    _upstream_headers_are_clean(hostile)
    assert hostile.elsewhere.connections == 0


@pytest.mark.parametrize("order", ["valid first", "invalid first"])
def test_duplicate_credentials_never_authenticate_by_accident(hostile, order):
    good, bad = b"Bearer " + hostile.token.encode(), b"Bearer not-a-token"
    pair = [(b"Authorization", good), (b"Authorization", bad)]
    status, _, body = raw_http(hostile.gateway.port, _raw_request(
        "GET", b"/api/v2/aibridge/openai/v1/models", pair if order == "valid first" else pair[::-1]))
    assert status == 401  # the values are joined into one, which is no token
    assert_provider_shape(OPENAI, status, body)


@bounded(100)
@given(value=st.binary(max_size=200), name=st.sampled_from([b"X-Note", b"Authorization", b"X-Api-Key", b"User-Agent",
                                                             b"anthropic-version", b"X-Fixture", b"Coder-Session-Token"]))
def test_arbitrary_header_bytes(hostile, value, name):
    hostile.upstream_seen = len(hostile.upstream.requests)
    extra = [(name, value)]
    request = (_models_request(hostile.token, extra) if name != b"Authorization"
               else _raw_request("GET", b"/api/v2/aibridge/openai/v1/models", extra))
    status, headers, body = raw_http(hostile.gateway.port, request)
    assert status in (200, 400, 401, 404), (status, body[:300])
    assert_sane(status, body)
    if status != 200 and headers.get("content-type", "").startswith("application/json"):
        assert_provider_shape(OPENAI, status, body)
    _upstream_headers_are_clean(hostile)


# -- request targets -----------------------------------------------------------------------------

PREFIXES = ["/api/v2/aibridge/openai/", "/api/v2/aibridge/openai/v1/", "/api/v2/aibridge/anthropic/v1/",
            "/api/v2/aibridge/copilot/", "/api/v2/aibridge/team-b/v1/", "/api/v2/aibridge/anthropic-corp/",
            "/api/v2/aibridge/", "/api/v2/", "/", "//", "/dashboard/static/", "/api/v2/aibridge/interceptions/",
            "/api/v2/users/", "/healthz/", "/api/v2/aibridge/%6fpenai/v1/", "/api/v2/aibridge/openai%2fv1/"]
PIECES = ["..", "%2e%2e", "%2E%2e", ".", "%2e", "", "%2f", "%2F..%2F", "%5c..%5c", "\\..\\", "%00", "%ff", "%c0%af",
          "%c0%ae%c0%ae", "%0d%0aX-Injected:%20yes", "%0aX-Injected:%20yes", "~", "%", "%zz", "a;b", "models", "v1",
          "chat", "completions", "messages", "count_tokens", "responses", "conversations", ".well-known", "agents",
          "openai", "anthropic", "copilot", "interceptions", "users", "tokens", "static", "@127.0.0.1:ELSEWHERE",
          "127.0.0.1:ELSEWHERE", "http:", "%C3%A9", "%E2%80%AE", "a" * 300, "models%2f..%2f..%2fchat",
          "..;", "%252e%252e", "*", "%3f", "%23"]
QUERIES = ["", "?a=..", "?after_id=%ff", "?q=%00", "?x=%0d%0aX-Injected:%20yes", "?" + "a" * 3000, "?a=1&a=2",
           "?limit=1e9", "?q=initiator:alice"]


@st.composite
def request_targets(draw) -> tuple[str, bytes]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO"]))
    path = draw(st.sampled_from(PREFIXES)) + "/".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6)))
    path += draw(st.sampled_from(QUERIES))
    form = draw(st.sampled_from(["origin", "origin", "absolute-elsewhere", "absolute-other-name"]))
    if form == "absolute-elsewhere":
        path = "http://127.0.0.1:ELSEWHERE" + path
    elif form == "absolute-other-name":
        path = "http://evil.example" + path
    return method, path.encode()


def _provider_of(target: str) -> str | None:
    """The provider the app routes the target to (decoded as werkzeug decodes it), if any."""
    path = re.sub(r"^https?://[^/]*", "", target).split("?", 1)[0]
    parts = unquote(path, errors="replace").split("/")
    if len(parts) > 5 and parts[1:4] == ["api", "v2", "aibridge"]:
        return parts[4] if parts[4] in SHAPES else None
    return None


def _upstream_paths_stay_in_the_allow_list(state: Hostile) -> None:
    for sent in state.upstream.requests[state.upstream_seen:]:
        raw = sent.path.split("?", 1)[0]
        assert not set(" \r\n\x00") & set(raw), raw
        decoded = unquote_to_bytes(raw).decode("utf-8", "replace")
        segments = decoded.split("/")[1:]
        assert not {".", ".."} & set(segments), f"a dot segment reached the upstream: {raw}"
        allowed = False
        for base, paths in ALLOWED_UPSTREAM.items():
            if not decoded.startswith(base + "/"):
                continue
            rest = decoded[len(base):]
            allowed = allowed or any(rest == p or (p.endswith("/") and rest.startswith(p) and len(rest) > len(p))
                                     for p in paths)
        assert allowed, f"the upstream got a path outside the allow-list: {raw}"


@bounded(400)
@given(case=request_targets())
def test_odd_request_targets_at_every_route(hostile, case):
    method, target = case
    target = target.replace(b"ELSEWHERE", str(hostile.elsewhere.port).encode())
    provider = _provider_of(target.decode())
    auth = [(b"X-Coder-AI-Governance-Token", hostile.token.encode()), (b"Authorization", b"Bearer " + GITHUB_TOKEN.encode())] \
        if provider == "copilot" else [(b"Authorization", b"Bearer " + hostile.token.encode())]
    body = orjson.dumps(VALID["chat"] | VALID["messages"]) if method in ("POST", "PUT", "PATCH") else b""
    hostile.upstream_seen = len(hostile.upstream.requests)
    status, headers, response_body = raw_http(hostile.gateway.port, _raw_request(method, target, auth, body))
    assert_sane(status, response_body)
    from_app = headers.get("content-type", "").startswith("application/json")
    went_upstream = len(hostile.upstream.requests) > hostile.upstream_seen  # then the answer may be the upstream's
    if provider and from_app and status >= 400 and method != "HEAD" and not went_upstream:
        assert_provider_shape(SHAPES[provider], status, response_body)
    interception_id = headers.get("x-aibridge-interception-id")
    if interception_id:
        hostile.recorded[interception_id] = (orjson.loads(body)["model"], status)
    _upstream_paths_stay_in_the_allow_list(hostile)
    assert hostile.elsewhere.connections == 0


@pytest.mark.parametrize("target", [
    b"/api/v2/aibridge/openai/v1/models/../../../anthropic/v1/messages",
    b"/api/v2/aibridge/openai/v1/%2e%2e/%2e%2e/admin",
    b"/api/v2/aibridge/openai/v1/models/%2e%2e%2f%2e%2e%2fchat%2fcompletions",
    b"/api/v2/aibridge/openai//v1/models",
    b"/api/v2/aibridge/openai/v1/models/",
    b"/api/v2/aibridge/copilot/.well-known/../../v1/models",
    b"/api/v2/aibridge/openai/v1/models/\xff",
    b"/api/v2/aibridge/openai/v1/models/" + b"a" * 5000,
    b"http://127.0.0.1:ELSEWHERE/api/v2/aibridge/openai/v1/models",
    b"//127.0.0.1:ELSEWHERE/api/v2/aibridge/openai/v1/models",
    b"/api/v2/aibridge/openai/v1/models/@127.0.0.1:ELSEWHERE",
    b"/dashboard/static/../../bridge/config.py",
    b"/dashboard/static/%2e%2e/%2e%2e/bridge/config.py",
    b"/api/v2/aibridge/..%2f..%2fusers",
    b"*",
])
def test_known_path_tricks(hostile, target):
    target = target.replace(b"ELSEWHERE", str(hostile.elsewhere.port).encode())
    hostile.upstream_seen = len(hostile.upstream.requests)
    status, headers, body = raw_http(hostile.gateway.port, _raw_request(
        "GET", target, [(b"Authorization", b"Bearer " + hostile.token.encode())]))
    assert_sane(status, body)
    assert status in (200, 400, 404, 414), (status, body[:200])
    assert b"load_settings" not in body  # no file of the gateway is served
    passthrough_ok = target.endswith(b"@127.0.0.1:" + str(hostile.elsewhere.port).encode()) or target.startswith(b"http")
    if status == 200:
        assert passthrough_ok, (target, body[:200])
    _upstream_paths_stay_in_the_allow_list(hostile)
    assert hostile.elsewhere.connections == 0


# -- the operating API ---------------------------------------------------------------------------

query_text = st.text(max_size=40) | st.sampled_from([
    "1e9", "9" * 400, "-1", "0", "1_000", "٣", "nan", "inf", "99999999999999999999d", "1h30m", "2025-01-01T00:00:00Z",
    "2025-01-01T00:00:00+99:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2025-02-30T00:00:00Z", "\x00",
    "initiator:me", 'client:"a', "started_after:0001-01-01T00:00:00-23:59", "model:" + "x" * 2000])


@bounded(150)
@given(path=st.sampled_from(["/api/v2/aibridge/interceptions", "/api/v2/aibridge/clients", "/api/v2/aibridge/usage",
                             "/api/v2/aibridge/tools", "/api/v2/users", "/api/v2/users/alice/tokens"]),
       params=st.dictionaries(st.sampled_from(["q", "limit", "after_id", "offset", "since", "until", "by", "bucket",
                                               "x"]), query_text, max_size=4))
def test_odd_queries_on_the_api(hostile, identities, path, params):
    for token in (hostile.token, identities.alice):
        response = hostile.session.get(f"{hostile.gateway.url}{path}", params=params, timeout=30,
                                       headers={"Authorization": f"Bearer {token}"})
        assert_sane(response.status_code, response.content)
        assert response.status_code in (200, 400, 403, 414), (response.status_code, response.text[:300])
        if response.status_code in (400, 403):
            assert isinstance(response.json()["message"], str)


# -- afterwards ----------------------------------------------------------------------------------


def test_zz_the_gateway_is_unharmed_and_every_record_is_intact(hostile, identities):
    """Runs last (pytest keeps file order): the workers that served all of the above still serve,
    logged no traceback, and recorded exactly the interceptions that reached the upstream."""
    gateway = hostile.gateway
    assert requests.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    real = requests.post(f"{gateway.base('anthropic')}/v1/messages", timeout=30, json=VALID["messages"],
                         headers={"X-Api-Key": hostile.token, "X-Fixture": "anthropic/simple_text",
                                  "anthropic-version": "2023-06-01"})
    assert real.status_code == 200 and real.json()["type"] == "message"
    hostile.recorded[real.headers["X-AIBridge-Interception-Id"]] = (VALID["messages"]["model"], 200)
    assert _worker_pids(gateway.process.pid) == hostile.workers, "a worker died and was replaced"

    log = gateway.log()[hostile.log_offset:]
    for marker in ("Traceback", "unhandled error", "Worker exiting", "Booting worker", "WORKER TIMEOUT"):
        assert marker not in log, log[log.find(marker) - 500: log.find(marker) + 2000]

    assert len(hostile.recorded) > 50
    found = wait_for_records(hostile.database, list(hostile.recorded))
    assert set(found) == set(hostile.recorded), "an interception was lost"
    for interception_id, record in found.items():
        model, status = hostile.recorded[interception_id]
        assert record["model"] == model
        assert record["initiator_id"] == hostile.user_id
        assert record["ended_at"] >= record["started_at"]
        metadata = orjson.loads(record["metadata"])
        assert metadata["status"] == status and "error" not in metadata, metadata
    store = open_store(str(hostile.database))
    try:
        count = store.db.execute("SELECT count(*) FROM aibridge_interceptions WHERE initiator_id = ?",
                                 [hostile.user_id]).fetchone()[0]
        assert count == len(hostile.recorded), "a request refused before the upstream left a record"
        assert store.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        store.close()
