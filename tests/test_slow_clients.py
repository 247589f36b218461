"""Slow clients cannot take a worker's connections: a request head is due within the header timeout
(CODER_AIBRIDGE_HEADER_TIMEOUT), and near worker_connections the connections that have waited
longest for a head are closed, so health checks and new clients are served."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from bridge.config import FLAG_VARIABLES, ConfigError, load_settings
from tests.conftest import provider_env
from tests.harness import read_head, sent_before_close
from tests.sdk_calls import anthropic_client

CAPACITY = 50  # worker_connections of the one worker
SLOW_CLIENTS = 70  # more than the worker can hold
WAIT = 10.0  # bound on every wait for the gateway (the keep-alive time is 75 s)
PARTIAL_HEAD = b"POST /api/v2/aibridge/anthropic/v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def _connect(gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT)


def _get_healthz(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head, body = read_head(sock)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        data = sock.recv(4096)
        assert data
        body += data
    return head


def test_slow_header_clients_leave_room_for_health_checks_and_new_clients(start_gateway, upstream, identities):
    # A header timeout far longer than the test: only the reserve of connections lets others in.
    gateway = start_gateway({**provider_env(upstream), "BRIDGE_WORKER_CONNECTIONS": str(CAPACITY),
                             "CODER_AIBRIDGE_HEADER_TIMEOUT": "120s"}, workers=1)
    slow = []
    for _ in range(SLOW_CLIENTS):
        sock = _connect(gateway)
        sock.sendall(PARTIAL_HEAD)
        slow.append(sock)
    stop = threading.Event()

    def trickle() -> None:  # each slow client sends one more header line now and then
        for line in range(60):
            if stop.wait(0.5):
                return
            for sock in slow:
                try:
                    sock.send(b"X-Slow-%d: 1\r\n" % line)
                except OSError:
                    pass  # closed by the gateway

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        assert requests.get(f"{gateway.url}/healthz", timeout=WAIT).status_code == 200
        client = anthropic_client(gateway.base("anthropic"), identities.alice, "anthropic/simple_text")
        message = client.with_options(timeout=WAIT).messages.create(
            model="claude-sonnet-4-5-20250929", max_tokens=1024,
            messages=[{"role": "user", "content": "Write a haiku about the sea."}])
        assert message.content[0].text
        # The first slow client (the longest waiting for its head) made room.
        assert sent_before_close(slow[0], WAIT) is not None
    finally:
        stop.set()
        trickler.join(WAIT)
        for sock in slow:
            sock.close()


def test_a_request_head_is_due_within_the_header_timeout_but_idle_time_between_requests_is_not(
        start_gateway, upstream):
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_HEADER_TIMEOUT": "1s"}, workers=1)

    with _connect(gateway) as silent:  # a new connection that sends nothing is closed
        assert sent_before_close(silent, WAIT) == b""
    with _connect(gateway) as partial_line:  # so is one whose request line never ends
        partial_line.sendall(PARTIAL_HEAD[:20])
        answer = sent_before_close(partial_line, WAIT)
        assert answer is not None, "the partial request line was still being waited for"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer

    with _connect(gateway) as keep_alive:
        assert _get_healthz(keep_alive).startswith(b"HTTP/1.1 200")
        time.sleep(2)  # idle between requests for longer than the header timeout: the keep-alive time applies
        assert _get_healthz(keep_alive).startswith(b"HTTP/1.1 200")
        # A head sent one line at a time is answered 408 (or closed) once the header timeout has passed.
        keep_alive.sendall(PARTIAL_HEAD)
        answer = None
        for line in range(40):  # 40 x 0.25 s: far less than the keep-alive time
            try:
                keep_alive.sendall(b"X-Slow-%d: 1\r\n" % line)
            except OSError:
                answer = b""
                break
            answer = sent_before_close(keep_alive, 0.25)
            if answer is not None:
                break
        assert answer is not None, "the partial head was still being waited for"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("setting, default", [("header_timeout", 10.0), ("body_timeout", 60.0)])
def test_the_head_and_body_timeouts_are_settings_with_a_one_line_error(setting: str, default: float):
    """CODER_AIBRIDGE_HEADER_TIMEOUT (here) and CODER_AIBRIDGE_BODY_TIMEOUT (tests/test_slow_bodies.py)."""
    variable = f"CODER_AIBRIDGE_{setting.upper()}"
    assert getattr(load_settings(env={}), setting) == default
    assert getattr(load_settings(env={variable: "2.5s"}), setting) == 2.5
    assert FLAG_VARIABLES["--aibridge-" + setting.replace("_", "-")] == variable
    with pytest.raises(ConfigError, match=rf"^{variable}: expected a duration .*'0'$"):
        load_settings(env={variable: "0"})
