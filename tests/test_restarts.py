"""Restarts lose nothing: SIGHUP and max_requests recycling let in-flight streams finish and every
answered call is recorded (SPEC §7)."""

from __future__ import annotations

import signal
import threading
import time

import requests

from tests.conftest import provider_env
from tests.harness import wait_for_records
from tests.sdk_calls import load_fixtures

FIXTURE = dict(load_fixtures("anthropic"))["anthropic/simple_text"]


def _stream(gateway, token: str, delay_ms: int = 0) -> tuple[str, bytes]:
    response = requests.post(f"{gateway.base('anthropic')}/v1/messages", timeout=60,
                             json={**FIXTURE["request"], "stream": True},
                             headers={"X-Api-Key": token, "X-Fixture": "anthropic/simple_text",
                                      "X-Fake-Delay-Ms": str(delay_ms)})
    assert response.status_code == 200
    return response.headers["X-AIBridge-Interception-Id"], response.content


def test_sighup_lets_an_in_flight_stream_finish(start_gateway, upstream, identities, database):
    gateway = start_gateway(provider_env(upstream), workers=1)
    result: dict = {}

    def slow_stream() -> None:
        result["id"], result["body"] = _stream(gateway, identities.alice, delay_ms=150)

    thread = threading.Thread(target=slow_stream)
    thread.start()
    time.sleep(0.5)  # the stream is under way
    gateway.process.send_signal(signal.SIGHUP)  # reload: new workers, the old one stops gracefully
    thread.join(timeout=60)
    assert b"message_stop" in result["body"]  # the stream finished, whole
    ids = [result["id"]]
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
