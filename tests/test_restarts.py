"""Restarts lose nothing: SIGHUP and max_requests recycling let in-flight streams finish and every
answered call is recorded (SPEC §7)."""

from __future__ import annotations

import re
import signal
import time
import uuid

import requests

from bridge.intercept.sse import SSESplitter
from tests.conftest import provider_env
from tests.harness import wait_for_records
from tests.sdk_calls import load_fixtures

FIXTURE = dict(load_fixtures("anthropic"))["anthropic/simple_text"]


def _stream(gateway, token: str) -> tuple[str, bytes]:
    response = requests.post(f"{gateway.base('anthropic')}/v1/messages", timeout=60,
                             json={**FIXTURE["request"], "stream": True},
                             headers={"X-Api-Key": token, "X-Fixture": "anthropic/simple_text"})
    assert response.status_code == 200
    return response.headers["X-AIBridge-Interception-Id"], response.content


def _wait_for_line(gateway, pattern: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, gateway.log()):
        assert time.monotonic() < deadline, f"no line matching {pattern!r} in the gateway's log:\n{gateway.log()}"
        time.sleep(0.05)


def test_sighup_lets_an_in_flight_stream_finish(start_gateway, upstream, identities, database, monkeypatch):
    gateway = start_gateway(provider_env(upstream), workers=1)
    old_worker = re.search(r"Booting worker with pid: (\d+)", gateway.log()).group(1)
    # Lockstep: the upstream sends each event after the first only once we acked the one before.
    lockstep = uuid.uuid4().hex
    # Longer than any wait below: no event goes out before its ack (the session's upstream gets its own back).
    monkeypatch.setattr(upstream, "lockstep_timeout", 30)
    response = requests.post(f"{gateway.base('anthropic')}/v1/messages", stream=True, timeout=60,
                             json={**FIXTURE["request"], "stream": True},
                             headers={"X-Api-Key": identities.alice, "X-Fixture": "anthropic/simple_text",
                                      "X-Fake-Lockstep": lockstep})
    assert response.status_code == 200
    pieces = response.iter_content(chunk_size=None)
    splitter = SSESplitter()
    received: list[bytes] = []
    while not received:  # the first event reached the client: the stream is under way, and waits for us
        received += [event.raw for event in splitter.feed(next(pieces))]
    gateway.process.send_signal(signal.SIGHUP)  # reload: new workers, the old one stops gracefully
    # The master stops the old worker right after it forked the new one, which logs its boot.
    _wait_for_line(gateway, r"Booting worker with pid: (?!%s\b)\d+" % old_worker)
    for index in range(len(received)):
        upstream.ack(lockstep, index)
    for piece in pieces:
        for event in splitter.feed(piece):
            received.append(event.raw)
            upstream.ack(lockstep, len(received) - 1)
    assert b"message_stop" in b"".join(received)  # the stream finished, whole
    assert upstream.stream_log(lockstep).lockstep_timeouts == 0  # its rest went out after the reload began
    _wait_for_line(gateway, r"Worker exiting \(pid: %s\)" % old_worker)  # served by the worker that stopped
    ids = [response.headers["X-AIBridge-Interception-Id"]]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # and the reloaded gateway serves
        try:
            ids.append(_stream(gateway, identities.alice)[0])
            break
        except (requests.ConnectionError, AssertionError):
            time.sleep(0.2)
    assert len(ids) == 2
    assert sorted(wait_for_records(database, ids)) == sorted(ids)
    assert "Handling signal: hup" in gateway.log()


def test_max_requests_recycling_loses_no_request_and_no_record(start_gateway, upstream, identities, database):
    gateway = start_gateway({**provider_env(upstream), "GUNICORN_CMD_ARGS": "--max-requests 4"}, workers=1)
    ids = [_stream(gateway, identities.alice)[0] for _ in range(14)]  # the worker is replaced on the way
    assert sorted(wait_for_records(database, ids)) == sorted(ids)
    assert "Autorestarting worker" in gateway.log()
