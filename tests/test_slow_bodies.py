"""Clients stalling a request body cannot hold a worker's memory or connections (issue 15, item 5):
the whole body is due within CODER_AIBRIDGE_BODY_TIMEOUT (408 in the provider's shape, then the
connection closes), near worker_connections the longest waits for a head or a body are closed, and a
worker reads at most 4 x CODER_AIBRIDGE_MAX_BODY_SIZE of bodies at once (more: 503 + Retry-After)."""

from __future__ import annotations

import select
import socket
import time

import orjson
import requests

from tests.conftest import provider_env
from tests.harness import read_head, sent_before_close
from tests.sdk_calls import anthropic_client

WAIT = 10.0  # bound on every wait for the gateway
MESSAGES_PATH = "/api/v2/aibridge/anthropic/v1/messages"
MESSAGE = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024,
           "messages": [{"role": "user", "content": "Write a haiku about the sea."}]}


def _head(path: str, token: str, length: int, fixture: str = "anthropic/simple_text") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"anthropic-version: 2023-06-01\r\nX-Fixture: {fixture}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _stalled(gateway, path: str, token: str, length: int, sent: int) -> socket.socket:
    """A connection that sent a request head and ``sent`` bytes of its ``length``-byte body, then stopped."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT)
    sock.sendall(_head(path, token, length) + b" " * sent)
    return sock


def _answer_then_close(sock: socket.socket, within: float = WAIT) -> tuple[bytes, bytes] | None:
    """The head and body the server sent before it closed the connection (None: no close in time)."""
    received = sent_before_close(sock, within)
    if received is None:
        return None
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def _message_works(gateway, token: str) -> None:
    client = anthropic_client(gateway.base("anthropic"), token, "anthropic/simple_text")
    assert client.with_options(timeout=WAIT).messages.create(**MESSAGE).content[0].text


def test_a_stalled_body_gets_408_in_the_providers_shape_and_a_slow_one_within_the_deadline_works(
        start_gateway, upstream, identities):
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_BODY_TIMEOUT": "2s"}, workers=1)
    body = orjson.dumps(MESSAGE)

    # Sent in pieces over about a second, within the deadline: answered as usual.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT) as slow:
        slow.sendall(_head(MESSAGES_PATH, identities.bob, len(body)))
        for start in range(0, len(body), len(body) // 4 + 1):
            time.sleep(0.25)
            slow.sendall(body[start:start + len(body) // 4 + 1])
        head, _ = read_head(slow)
        assert head.startswith(b"HTTP/1.1 200"), head

    # The provider's intercepted route: the anthropic error, and the connection closes.
    with _stalled(gateway, MESSAGES_PATH, identities.bob, 1000, 500) as stalled:
        answer = _answer_then_close(stalled)
        assert answer is not None, "the stalled body was still being waited for"
        head, error = answer
        assert head.startswith(b"HTTP/1.1 408"), head
        assert _header(head, b"Connection") == b"close"
        assert orjson.loads(error)["type"] == "error"
        assert "did not arrive within 2s" in orjson.loads(error)["error"]["message"]

    # The admin API reads JSON bodies too: a 408 in the API's shape.
    with _stalled(gateway, "/api/v2/users", identities.alice, 100, 10) as stalled:
        answer = _answer_then_close(stalled)
        assert answer is not None, "the stalled body was still being waited for"
        head, error = answer
        assert head.startswith(b"HTTP/1.1 408"), head
        assert "did not arrive within 2s" in orjson.loads(error)["message"]

    _message_works(gateway, identities.bob)  # the worker serves on


def test_stalled_bodies_leave_room_for_health_checks_and_new_clients(start_gateway, upstream, identities):
    # A body timeout far longer than the test: only the reserve of connections lets others in.
    capacity = 30
    gateway = start_gateway({**provider_env(upstream), "BRIDGE_WORKER_CONNECTIONS": str(capacity),
                             "CODER_AIBRIDGE_BODY_TIMEOUT": "120s"}, workers=1)
    stalled = [_stalled(gateway, MESSAGES_PATH, identities.bob, 100_000, 1000) for _ in range(capacity + 10)]
    try:
        assert requests.get(f"{gateway.url}/healthz", timeout=WAIT).status_code == 200
        _message_works(gateway, identities.alice)
        # The first stalled client (the longest waiting for its body) made room, and was told why.
        answer = _answer_then_close(stalled[0])
        assert answer is not None, "the longest-stalled body was still being waited for"
        assert answer[0].startswith(b"HTTP/1.1 408"), answer
    finally:
        for sock in stalled:
            sock.close()


def test_bodies_over_the_workers_budget_get_503_and_its_memory_stays_bounded(start_gateway, upstream, identities):
    size = 4 * 1024 * 1024  # CODER_AIBRIDGE_MAX_BODY_SIZE: the worker reads 4 such bodies at once at most
    clients, held = 12, 4
    declared = size - 64 * 1024  # 4 of them leave room for a small body, a 5th does not fit
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_MAX_BODY_SIZE": str(size),
                             "CODER_AIBRIDGE_BODY_TIMEOUT": "5s"}, workers=1)
    _message_works(gateway, identities.bob)
    before = gateway.worker_status_kb("VmRSS")
    stalled = [_stalled(gateway, MESSAGES_PATH, identities.bob, declared, 1024) for _ in range(clients)]
    try:
        refused = []
        deadline = time.monotonic() + WAIT
        while len(refused) < clients - held and (left := deadline - time.monotonic()) > 0:
            for sock in select.select([s for s in stalled if s not in refused], [], [], left)[0]:
                refused.append(sock)
        assert len(refused) == clients - held, "bodies over the budget were not refused at once"
        for sock in refused:
            answer = _answer_then_close(sock)
            assert answer is not None and answer[0].startswith(b"HTTP/1.1 503"), answer
            assert _header(answer[0], b"Retry-After") is not None
            assert orjson.loads(answer[1])["error"]["type"] == "overloaded_error"

        # The bodies within the budget come almost whole, and stop: the worker holds only those.
        reading = [sock for sock in stalled if sock not in refused]
        for sock in reading:
            sock.sendall(b" " * (declared - 1024 - 200))
        _message_works(gateway, identities.alice)  # a small body fits in what is left
        grown_mb = (gateway.worker_status_kb("VmRSS") - before) / 1024
        assert grown_mb < 48, f"the worker grew by {grown_mb:.0f} MB holding {held} bodies of 4 MiB"
        for sock in reading:  # and they end at the deadline
            answer = _answer_then_close(sock)
            assert answer is not None and answer[0].startswith(b"HTTP/1.1 408"), answer
    finally:
        for sock in stalled:
            sock.close()

