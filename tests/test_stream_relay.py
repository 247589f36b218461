"""Streams at the byte level: unchanged bytes, event-by-event delivery, and closing on client disconnect."""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from bridge.intercept.sse import SSESplitter
from tests.sdk_calls import load_fixtures
from tests.harness import wait_for_records

STREAMS = [(name, fixture) for name, fixture in load_fixtures("anthropic") + load_fixtures("openai_chat") + load_fixtures("openai_responses")
           if fixture.get("streaming") and fixture["streaming"].get("events") and not fixture["streaming"].get("abort")]


_ROUTES = {"anthropic": ("anthropic", "v1/messages"), "openai_chat": ("openai", "v1/chat/completions"),
           "openai_responses": ("openai", "v1/responses")}


def _target(name: str, base: str) -> str:
    return f"{base}/{_ROUTES[name.split('/')[0]][1]}"


def _post(url: str, name: str, body: dict, token: str = "direct", **headers) -> requests.Response:
    return requests.post(url, json=body, stream=True, timeout=30,
                         headers={"Authorization": f"Bearer {token}", "X-Fixture": name, **headers})


@pytest.mark.parametrize("name, fixture", STREAMS, ids=[name for name, _ in STREAMS])
def test_stream_is_byte_identical(name, fixture, gateway, upstream, identities):
    body = {**fixture["request"], "stream": True}
    direct = _post(_target(name, upstream.url), name, body)
    through = _post(_target(name, gateway.base(_ROUTES[name.split("/")[0]][0])), name, body, identities.alice)
    assert through.status_code == direct.status_code == 200
    assert through.content == direct.content
    assert through.headers["Content-Type"].startswith("text/event-stream")
    assert through.headers["Cache-Control"] == "no-cache"
    assert through.headers["X-Accel-Buffering"] == "no"
    uuid.UUID(through.headers["X-AIBridge-Interception-Id"])


@pytest.mark.parametrize("api, name, client_asks_usage", [
    ("anthropic", "anthropic/thinking", False),
    ("openai", "openai_responses/reasoning_summary", False),
    ("openai", "openai_chat/tool_call", True),
    ("openai", "openai_chat/tool_call", False),  # the gateway rewrites this stream (usage chunk removed)
])
def test_each_event_reaches_the_client_before_the_next_is_sent(api, name, client_asks_usage, gateway, upstream, identities):
    """The fake upstream sends event i+1 only once the client has acknowledged event i: a gateway
    that held anything back would make it wait and time out."""
    fixture = dict(load_fixtures(name.split("/")[0]))[name]
    body = {**fixture["request"], "stream": True}
    if client_asks_usage:
        body["stream_options"] = {"include_usage": True}
    # The one upstream event a rewritten stream never shows the client: acknowledged with its predecessor.
    hidden = -1
    if name.startswith("openai_chat/") and not client_asks_usage:
        hidden = next(i for i, event in enumerate(fixture["streaming"]["events"]) if '"choices":[]' in event)
    lockstep = uuid.uuid4().hex
    response = _post(_target(name, gateway.base(api)), name, body, identities.alice, **{"X-Fake-Lockstep": lockstep})
    splitter = SSESplitter()
    received = []
    for piece in response.iter_content(chunk_size=None):
        for event in splitter.feed(piece):
            index = len(received) if hidden < 0 or len(received) < hidden else len(received) + 1
            upstream.ack(lockstep, index)
            if index + 1 == hidden:
                upstream.ack(lockstep, hidden)
            received.append(event)
    log = upstream.stream_log(lockstep)
    assert log.lockstep_timeouts == 0
    assert len(received) == log.events_sent - (1 if hidden >= 0 else 0)
    assert len(received) > 3


@pytest.mark.parametrize("api, name", [("anthropic", "anthropic/simple_text"), ("openai", "openai_chat/simple_text")])
def test_client_disconnect_closes_the_upstream(api, name, gateway, upstream, identities, database):
    fixture = dict(load_fixtures(name.split("/")[0]))[name]
    marker = uuid.uuid4().hex
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    path = urlsplit(_target(name, gateway.base(api))).path
    connection.request("POST", path, body=json.dumps({**fixture["request"], "stream": True}),
                       headers={"Authorization": f"Bearer {identities.alice}", "X-Fixture": name,
                                "Content-Type": "application/json", "X-Fake-Repeat": "500",
                                "X-Fake-Delay-Ms": "20", "X-Fake-Lockstep": marker})
    response = connection.getresponse()
    assert response.status == 200
    interception_id = response.getheader("X-AIBridge-Interception-Id")
    splitter = SSESplitter()
    received = 0
    for _ in range(100):
        for _event in splitter.feed(response.read1(65536)):
            upstream.ack(marker, received)
            received += 1
        if received >= 3:
            break
    connection.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
    connection.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not upstream.stream_log(marker).client_gone:
        time.sleep(0.05)
    log = upstream.stream_log(marker)
    assert log.client_gone, "the upstream kept streaming after the client left"
    assert log.events_sent < 400
    # what was seen is recorded, and the interception is ended
    record = wait_for_records(database, [interception_id])[interception_id]
    assert json.loads(record["metadata"])["error"] == "client disconnected"
    assert record["user_prompts"] and record["model"] == fixture["request"]["model"]


def test_openai_stream_without_usage_request_is_what_the_provider_sends(gateway, upstream, identities):
    """The gateway asks upstream for usage, yet the client sees neither the usage chunk nor usage:null."""
    name = "openai_chat/simple_text"
    fixture = dict(load_fixtures("openai_chat"))[name]
    upstream.clear()
    through = _post(f"{gateway.base('openai')}/v1/chat/completions", name, {**fixture["request"], "stream": True}, identities.alice)
    text = through.content.decode()
    sent_upstream = upstream.requests[-1].json
    assert sent_upstream["stream_options"] == {"include_usage": True}
    assert '"usage"' not in text
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert chunks and all(chunk["choices"] for chunk in chunks)
