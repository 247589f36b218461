"""FakeUpstream driven directly with the official SDKs and raw HTTP: every fixture parses, errors raise
the SDK's own exception classes, and the control headers (lockstep, delay, repeat, stall, abort) work."""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from typing import Any, Iterator
from urllib.parse import urlsplit

import anthropic
import httpx2
import openai
import pytest
from openai.types.responses import ResponseErrorEvent, ResponseFailedEvent

from tests.fakeupstream import FakeUpstream, load_fixtures, stream_events

FIXTURES = load_fixtures()
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")


def names(api: str, mode: str, *, ok: bool | None = None, events: bool | None = None) -> list[str]:
    """Fixture names of one API having a `mode` part, filtered on success and on having events."""
    out = []
    for name, fx in FIXTURES.items():
        part = fx[mode]
        if not name.startswith(api + "/") or part is None:
            continue
        if ok is not None and (part["status"] == 200) != ok:
            continue
        if events is not None and ("events" in part) != events:
            continue
        out.append(name)
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: FakeUpstream) -> FakeUpstream:
    server.clear()
    return server


def a_client(fake: FakeUpstream, fixture: str | None = None, timeout: float = 10, **headers: str) -> anthropic.Anthropic:
    default_headers = {"X-Fixture": fixture, **headers} if fixture else headers
    return anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0, timeout=timeout, default_headers=default_headers)


def o_client(fake: FakeUpstream, fixture: str | None = None, prefix: str = "/v1", timeout: float = 10,
             **headers: str) -> openai.OpenAI:
    default_headers = {"X-Fixture": fixture, **headers} if fixture else headers
    return openai.OpenAI(base_url=fake.url + prefix, api_key="x", max_retries=0, timeout=timeout, default_headers=default_headers)


def raw_post(fake: FakeUpstream, fixture: str, body: dict[str, Any], **headers: str) -> tuple[http.client.HTTPResponse, bytes, bool]:
    """POST with http.client; returns the response, the body bytes and whether the body was complete."""
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(fake.url).port, timeout=10)
    try:
        conn.request("POST", "/v1/any", body=json.dumps(body),
                     headers={"X-Fixture": fixture, "Content-Type": "application/json", **headers})
        response = conn.getresponse()
        try:
            return response, response.read(), True
        except http.client.IncompleteRead as cut:
            return response, cut.partial, False
    finally:
        conn.close()


def open_stream(fake: FakeUpstream, fixture: str, body: dict[str, Any], **headers: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(fake.url).port, timeout=10)
    conn.request("POST", "/v1/any", body=json.dumps({**body, "stream": True}),
                 headers={"X-Fixture": fixture, "Content-Type": "application/json", **headers})
    return conn, conn.getresponse()


def read_events(response: http.client.HTTPResponse, count: int) -> list[bytes]:
    """Read until `count` complete SSE events arrived (bounded by the socket timeout)."""
    buffer = b""
    while buffer.count(b"\n\n") < count:
        piece = response.read1(65536)
        assert piece, "stream ended early"
        buffer += piece
    return [e + b"\n\n" for e in buffer.split(b"\n\n")[:count]]


# ---------------------------------------------------------------- every fixture through the SDKs

@pytest.mark.parametrize("name", names("anthropic", "blocking", ok=True))
def test_anthropic_blocking(fake: FakeUpstream, name: str) -> None:
    part = FIXTURES[name]["blocking"]
    message = a_client(fake, name).messages.create(**FIXTURES[name]["request"])
    assert message.model_dump(mode="json", exclude_unset=True) == part["body"]
    assert message._request_id == part["headers"]["request-id"]


@pytest.mark.parametrize("name", names("anthropic", "streaming", ok=True, events=True))
def test_anthropic_stream(fake: FakeUpstream, name: str) -> None:
    fx = FIXTURES[name]
    client = a_client(fake, name)
    if fx["blocking"] is not None:
        # The SDK's accumulator rebuilds the very message the blocking call returns (text, thinking +
        # signature, tool inputs from input_json_delta, citations, final cumulative usage).
        with client.messages.stream(**fx["request"]) as stream:
            final = stream.get_final_message()
        assert final.model_dump(exclude_none=True) == client.messages.create(**fx["request"]).model_dump(exclude_none=True)
        assert final.usage.output_tokens == fx["expect"]["usage"]["output_tokens"]
        return
    seen: list[str] = []
    if fx["streaming"]["abort"]:
        with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
            for event in client.messages.create(**fx["request"], stream=True):
                seen.append(event.type)
    else:
        with pytest.raises(anthropic.APIStatusError) as raised:
            for event in client.messages.create(**fx["request"], stream=True):
                seen.append(event.type)
        assert raised.value.body["error"]["type"] == "overloaded_error"
    assert seen[0] == "message_start" and "content_block_delta" in seen and "message_stop" not in seen


@pytest.mark.parametrize("name", names("openai_chat", "blocking", ok=True))
def test_openai_blocking(fake: FakeUpstream, name: str) -> None:
    part = FIXTURES[name]["blocking"]
    completion = o_client(fake, name).chat.completions.create(**FIXTURES[name]["request"])
    assert completion.model_dump(mode="json", exclude_unset=True) == part["body"]
    assert completion._request_id == part["headers"]["x-request-id"]


def assemble(chunks: list[Any]) -> dict[str, Any]:
    """A chat completion message rebuilt from SDK chunks."""
    message: dict[str, Any] = {"content": "", "refusal": "", "reasoning_content": "", "tool_calls": {}}
    usage, finish = None, None
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            delta = choice.delta
            message["content"] += delta.content or ""
            message["refusal"] += delta.refusal or ""
            message["reasoning_content"] += (delta.model_extra or {}).get("reasoning_content") or ""
            for tc in delta.tool_calls or []:
                call = message["tool_calls"].setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.id or ""
                if tc.function:
                    call["name"] += tc.function.name or ""
                    call["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    message["tool_calls"] = [message["tool_calls"][i] for i in sorted(message["tool_calls"])]
    return {"message": message, "usage": usage, "finish_reason": finish}


@pytest.mark.parametrize("name", names("openai_chat", "streaming", ok=True, events=True))
def test_openai_stream(fake: FakeUpstream, name: str) -> None:
    fx = FIXTURES[name]
    client = o_client(fake, name)
    chunks: list[Any] = []
    kwargs = {**fx["request"], "stream": True, "stream_options": {"include_usage": True}}
    if fx["blocking"] is None:
        error = openai.APIConnectionError if fx["streaming"]["abort"] else openai.APIError
        with pytest.raises(error):
            chunks.extend(client.chat.completions.create(**kwargs))
        return
    chunks.extend(client.chat.completions.create(**kwargs))
    assert len(chunks) == len(fx["streaming"]["events"]) - 1  # all but [DONE]
    got = assemble(chunks)
    body = fx["blocking"]["body"]
    expected = body["choices"][0]["message"]
    assert got["message"]["content"] == (expected["content"] or "")
    assert got["message"]["refusal"] == (expected.get("refusal") or "")
    assert got["message"]["reasoning_content"] == expected.get("reasoning_content", "")
    assert got["message"]["tool_calls"] == [
        {"id": t["id"], "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
        for t in expected.get("tool_calls", [])]
    assert got["finish_reason"] == body["choices"][0]["finish_reason"]
    assert got["usage"].model_dump(mode="json", exclude_unset=True) == body["usage"]


def sse_payloads(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e.split("\ndata: ", 1)[1]) for e in events]


@pytest.mark.parametrize("name", names("openai_responses", "blocking", ok=True))
def test_responses_blocking(fake: FakeUpstream, name: str) -> None:
    part = FIXTURES[name]["blocking"]
    response = o_client(fake, name).responses.create(**FIXTURES[name]["request"])
    assert response.model_dump(mode="json", exclude_unset=True) == part["body"]
    assert response._request_id == part["headers"]["x-request-id"]
    assert fake.requests[-1].path == "/v1/responses"


@pytest.mark.parametrize("name", names("openai_responses", "streaming", ok=True, events=True))
def test_responses_stream(fake: FakeUpstream, name: str) -> None:
    fx = FIXTURES[name]
    client = o_client(fake, name)
    payloads = sse_payloads(fx["streaming"]["events"])
    seen: list[Any] = []
    if fx["streaming"]["abort"]:
        with pytest.raises((openai.APIConnectionError, httpx2.TransportError)):
            for event in client.responses.create(**fx["request"], stream=True):
                seen.append(event)
        assert [e.model_dump(mode="json", exclude_unset=True) for e in seen] == payloads
        return
    seen.extend(client.responses.create(**fx["request"], stream=True))
    # Every event parses to its own SDK type, nothing lost or added.
    assert [e.model_dump(mode="json", exclude_unset=True) for e in seen] == payloads
    last = seen[-1]
    if fx["blocking"] is None:  # a stream that goes wrong after the first byte: the SDK yields the event
        if last.type == "error":
            assert isinstance(last, ResponseErrorEvent) and last.code == "server_error" and last.message
        else:
            assert isinstance(last, ResponseFailedEvent) and last.response.status == "failed"
            assert last.response.error is not None and last.response.error.code == "server_error"
            assert last.response.usage is None
        return
    body = fx["blocking"]["body"]
    assert last.type == f"response.{body['status']}"
    assert last.response.model_dump(mode="json", exclude_unset=True) == body
    if body["status"] == "completed":
        # The SDK's stream helper accumulates deltas into the response the blocking call returns.
        with client.responses.stream(**fx["request"]) as stream:
            final = stream.get_final_response()
        blocking = client.responses.create(**fx["request"])
        assert final.id == blocking.id and final.output_text == blocking.output_text
        assert [item.type for item in final.output] == [item.type for item in blocking.output]
        assert final.usage == blocking.usage


def test_responses_repeat_makes_a_long_well_formed_stream(fake: FakeUpstream) -> None:
    name = "openai_responses/reasoning_summary"
    client = o_client(fake, name, **{"X-Fake-Repeat": "4"})
    events = list(client.responses.create(**FIXTURES[name]["request"], stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = FIXTURES[name]["blocking"]["body"]["output"][1]["content"][0]["text"]
    assert len(text) == 4 * len(final) and events[-1].type == "response.completed"
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert len(summary) == 4 * sum(len(s["text"]) for s in FIXTURES[name]["blocking"]["body"]["output"][0]["summary"])


def test_responses_passthrough_routes(fake: FakeUpstream) -> None:
    client = o_client(fake, prefix="/team-a/v1")
    body = FIXTURES["openai_responses/reasoning_summary"]["blocking"]["body"]
    stored = client.responses.retrieve(body["id"])
    assert stored.model_dump(mode="json", exclude_unset=True) == body
    assert (fake.requests[-1].method, fake.requests[-1].path) == ("GET", f"/team-a/v1/responses/{body['id']}")
    # A continuation's previous response is retrievable.
    previous = client.responses.retrieve(FIXTURES["openai_responses/tool_result"]["request"]["previous_response_id"])
    assert previous.output[0].type == "function_call"
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.retrieve("resp_0000000000000000000000000000000000000000000000000")
    assert set(raised.value.body) == {"message", "type", "param", "code"}
    conversation = client.conversations.create(metadata={"topic": "moving"})
    assert conversation.id.startswith("conv_") and conversation.object == "conversation"
    assert conversation.metadata == {"topic": "moving"} and conversation.created_at > 0
    assert client.conversations.retrieve(conversation.id) == conversation
    assert client.conversations.create().id != conversation.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve("conv_nope")
    # Answered the same when the client sends a fixture header (a gateway forwards it).
    with_header = o_client(fake, "openai_responses/simple_text")
    assert with_header.responses.retrieve(body["id"]).id == body["id"]
    assert with_header.conversations.create().object == "conversation"


ERRORS = {
    "anthropic": {400: anthropic.BadRequestError, 401: anthropic.AuthenticationError, 429: anthropic.RateLimitError,
                  500: anthropic.InternalServerError, 529: anthropic.OverloadedError},
    "openai_chat": {400: openai.BadRequestError, 401: openai.AuthenticationError, 429: openai.RateLimitError,
                    500: openai.InternalServerError, 503: openai.InternalServerError},
}
ERRORS["openai_responses"] = ERRORS["openai_chat"]


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
@pytest.mark.parametrize("name", names("anthropic", "blocking", ok=False) + names("openai_chat", "blocking", ok=False)
                         + names("openai_responses", "blocking", ok=False))
def test_http_errors_raise_the_sdk_exception(fake: FakeUpstream, name: str, stream: bool) -> None:
    api = name.split("/")[0]
    part = FIXTURES[name]["streaming" if stream else "blocking"]
    with pytest.raises(ERRORS[api][part["status"]]) as raised:
        if api == "anthropic":
            a_client(fake, name).messages.create(**FIXTURES[name]["request"], stream=stream)
        elif api == "openai_responses":
            o_client(fake, name).responses.create(**FIXTURES[name]["request"], stream=stream)
        else:
            o_client(fake, name).chat.completions.create(**FIXTURES[name]["request"], stream=stream)
    assert raised.value.status_code == part["status"]
    assert raised.value.body == (part["body"] if api == "anthropic" else part["body"]["error"])
    for header, value in part["headers"].items():
        assert raised.value.response.headers[header] == value


# ---------------------------------------------------------------- bytes on the wire

@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_wire_bytes_are_the_fixture(fake: FakeUpstream, name: str) -> None:
    for stream in (False, True):
        part = FIXTURES[name]["streaming" if stream else "blocking"]
        if part is None:
            continue
        body = {**FIXTURES[name]["request"], "stream": stream}
        if stream and name.startswith("openai_chat/"):
            body["stream_options"] = {"include_usage": True}
        response, data, complete = raw_post(fake, name, body)
        assert response.status == part["status"]
        assert data == fake.expected_bytes(name, stream=stream)
        for header, value in part["headers"].items():
            assert response.getheader(header) == value
        if "events" in part:
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert data == "".join(part["events"]).encode()
            assert complete is not part["abort"]
            log = fake.wait_streams(1)[-1]
            assert (log.fixture, log.events_sent, log.client_gone) == (name, len(part["events"]), False)
            fake.clear()
        else:
            assert int(response.getheader("Content-Length")) == len(data)


def test_include_usage_emulation(fake: FakeUpstream) -> None:
    name = "openai_chat/simple_text"
    events = FIXTURES[name]["streaming"]["events"]
    chunks = list(o_client(fake, name).chat.completions.create(**FIXTURES[name]["request"], stream=True))
    assert len(chunks) == len(events) - 2  # no usage-only chunk, no [DONE]
    assert all(c.usage is None and c.choices for c in chunks)
    _, data, _ = raw_post(fake, name, {**FIXTURES[name]["request"], "stream": True})
    assert b'"usage"' not in data
    assert data == fake.expected_bytes(name, stream=True, include_usage=False)
    # Byte-level: only the `,"usage":null` member is gone from each chunk.
    assert data.decode() == "".join(e.replace(',"usage":null', "") for e in events if '"choices":[]' not in e)
    _, with_usage, _ = raw_post(fake, name, {**FIXTURES[name]["request"], "stream": True,
                                             "stream_options": {"include_usage": True}})
    assert with_usage == "".join(events).encode()


def test_requests_are_recorded(fake: FakeUpstream) -> None:
    name = "openai_chat/simple_text"
    client = o_client(fake, name, prefix="/team-a/v1", **{"X-Custom": "yes"})
    client.chat.completions.create(**FIXTURES[name]["request"])
    (recorded,) = fake.requests
    assert (recorded.method, recorded.path) == ("POST", "/team-a/v1/chat/completions")
    assert recorded.headers["x-fixture"] == name and recorded.headers["x-custom"] == "yes"
    assert recorded.headers["authorization"] == "Bearer x"
    assert recorded.json == FIXTURES[name]["request"] and json.loads(recorded.body) == recorded.json


def test_chunked_request_body_is_read(fake: FakeUpstream) -> None:
    name = "anthropic/simple_text"
    payload = json.dumps(FIXTURES[name]["request"]).encode()
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(fake.url).port, timeout=10)
    conn.request("POST", "/v1/messages", body=iter([payload[:10], payload[10:]]), encode_chunked=True,
                 headers={"X-Fixture": name, "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert conn.getresponse().read() == fake.expected_bytes(name, stream=False)
    conn.close()
    assert fake.requests[0].body == payload


# ---------------------------------------------------------------- control headers

def test_lockstep_sends_each_event_only_after_the_ack(fake: FakeUpstream) -> None:
    name = "openai_chat/tool_call"
    lockstep = uuid.uuid4().hex
    client = o_client(fake, name, **{"X-Fake-Lockstep": lockstep})
    stream = client.chat.completions.create(**FIXTURES[name]["request"], stream=True, stream_options={"include_usage": True})
    count = 0
    for i, _chunk in enumerate(stream):
        time.sleep(0.01)  # a server ignoring lockstep would be ahead by now
        assert fake.stream_log(lockstep).events_sent == i + 1
        fake.ack(lockstep, i)
        count += 1
    # the SDK stops at [DONE], which may reach it before the server thread counts that write
    fake.wait_streams(1)
    log = fake.stream_log(lockstep)
    assert count == len(FIXTURES[name]["streaming"]["events"]) - 1
    assert (log.events_sent, log.lockstep_timeouts) == (count + 1, 0)


def test_lockstep_timeout_is_counted_and_the_stream_goes_on() -> None:
    name = "anthropic/max_tokens"
    with FakeUpstream(lockstep_timeout=0.05).start() as fake:
        _, data, complete = raw_post(fake, name, {**FIXTURES[name]["request"], "stream": True},
                                     **{"X-Fake-Lockstep": "nobody-acks"})
        events = FIXTURES[name]["streaming"]["events"]
        assert complete and data == "".join(events).encode()
        assert fake.stream_log("nobody-acks").lockstep_timeouts == len(events) - 1


def test_delay_spaces_events_and_each_is_flushed(fake: FakeUpstream) -> None:
    name = "anthropic/simple_text"
    count = len(FIXTURES[name]["streaming"]["events"])
    conn, response = open_stream(fake, name, FIXTURES[name]["request"], **{"X-Fake-Delay-Ms": "60"})
    arrivals = []
    for _ in range(count):
        read_events(response, 1)  # one chunk = one event
        arrivals.append(time.monotonic())
    conn.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert all(gap > 0.03 for gap in gaps), gaps
    assert arrivals[-1] - arrivals[0] >= 0.06 * (count - 1) * 0.9


def test_repeat_makes_a_long_well_formed_stream(fake: FakeUpstream) -> None:
    name = "openai_chat/simple_text"
    client = o_client(fake, name, **{"X-Fake-Repeat": "50"})
    chunks = list(client.chat.completions.create(**FIXTURES[name]["request"], stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f * 50 for f in ("Bon", "jour", " !"))
    assert chunks[-1].usage is not None
    thinking = stream_events("anthropic", FIXTURES["anthropic/thinking"]["streaming"]["events"], repeat=3)
    assert len(thinking) == len(FIXTURES["anthropic/thinking"]["streaming"]["events"]) + 2 * (4 + 3)


def test_client_going_away_is_noticed(fake: FakeUpstream) -> None:
    name = "anthropic/simple_text"
    conn, response = open_stream(fake, name, FIXTURES[name]["request"],
                                 **{"X-Fake-Repeat": "500", "X-Fake-Delay-Ms": "5"})
    read_events(response, 3)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    (log,) = fake.wait_streams(1, timeout=5)
    assert log.client_gone and 3 <= log.events_sent < 100


def test_stall_delays_the_response_headers(fake: FakeUpstream) -> None:
    name = "anthropic/simple_text"
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        a_client(fake, name, timeout=0.3, **{"X-Fake-Stall-Ms": "1500"}).messages.create(**FIXTURES[name]["request"])
    assert time.monotonic() - started < 1.4
    response, data, _ = raw_post(fake, name, FIXTURES[name]["request"], **{"X-Fake-Stall-Ms": "200"})
    assert response.status == 200 and data == fake.expected_bytes(name, stream=False)


def test_status_override(fake: FakeUpstream) -> None:
    name = "openai_chat/simple_text"
    with pytest.raises(openai.InternalServerError) as raised:
        o_client(fake, name, **{"X-Fake-Status": "503"}).chat.completions.create(**FIXTURES[name]["request"])
    assert raised.value.status_code == 503


# ---------------------------------------------------------------- routes without a fixture

def test_anthropic_passthrough_routes(fake: FakeUpstream) -> None:
    client = a_client(fake)
    models = [m.id for m in client.models.list()]
    assert "claude-sonnet-4-5-20250929" in models
    assert client.models.retrieve("claude-haiku-4-5-20251001").display_name == "Claude Haiku 4.5"
    assert client.models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5-20250929"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope")
    count = client.messages.count_tokens(**{k: v for k, v in FIXTURES["anthropic/tool_use"]["request"].items() if k != "max_tokens"})
    assert count.input_tokens > 0
    assert fake.requests[-1].path == "/v1/messages/count_tokens"


def test_openai_passthrough_routes(fake: FakeUpstream) -> None:
    client = o_client(fake, prefix="/team-a/v1")
    assert "gpt-4o-2024-08-06" in [m.id for m in client.models.list()]
    assert client.models.retrieve("gpt-4o").owned_by == "system"
    assert fake.requests[-1].path == "/team-a/v1/models/gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")


def test_unknown_fixture_or_missing_mode_is_an_error(fake: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError):
        o_client(fake, "openai_chat/nope").chat.completions.create(**FIXTURES["openai_chat/simple_text"]["request"])
    with pytest.raises(anthropic.BadRequestError):  # a streaming-only fixture asked for blocking
        a_client(fake, "anthropic/cut_stream").messages.create(**FIXTURES["anthropic/cut_stream"]["request"])


def test_stop_is_prompt_with_an_open_stream() -> None:
    name = "openai_chat/simple_text"
    fake = FakeUpstream().start()
    conn, response = open_stream(fake, name, FIXTURES[name]["request"], **{"X-Fake-Lockstep": "held"})
    read_events(response, 1)  # the server now waits for an ack that never comes
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()  # the connection was dropped without the terminating chunk
    conn.close()
    (log,) = fake.streams
    assert log.finished and log.events_sent == 1 and not log.client_gone
