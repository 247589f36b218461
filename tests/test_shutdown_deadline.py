"""A stop cannot wait for streams longer than the graceful timeout: shortly before it, each stream
still in flight ends with the provider's own error event (the SDK raises) and its interception is
ended and written, where the master's kill used to reset the connections and leave them unended."""

from __future__ import annotations

import json
import signal
import threading

import anthropic
import openai

from tests.conftest import provider_env
from tests.harness import wait_for_records
from tests.sdk_calls import anthropic_client, openai_client

GRACEFUL_TIMEOUT = 6  # seconds; the streams below would last minutes
SLOW = {"X-Fake-Delay-Ms": "20000"}  # the fake upstream waits 20 s between events
STREAMS_PER_SDK = 3
WAIT = 30.0  # bound on every wait of the test


class _Stream(threading.Thread):
    """One SDK stream: its interception id, whether its first event came, and how it ended."""

    def __init__(self, start) -> None:
        super().__init__(daemon=True)
        self._start_stream = start
        self.interception_id: str | None = None
        self.under_way = threading.Event()
        self.error: Exception | None = None
        self.finished = False

    def run(self) -> None:
        try:
            raw = self._start_stream()
            self.interception_id = raw.headers["X-AIBridge-Interception-Id"]
            for _ in raw.parse():
                self.under_way.set()
            self.finished = True
        except Exception as error:  # what the test looks at
            self.error = error
        finally:
            self.under_way.set()


def _anthropic_stream(gateway, token: str) -> _Stream:
    client = anthropic_client(gateway.base("anthropic"), token, "anthropic/simple_text", **SLOW)
    return _Stream(lambda: client.messages.with_raw_response.create(
        model="claude-sonnet-4-5-20250929", max_tokens=1024, stream=True,
        messages=[{"role": "user", "content": "Write a haiku about the sea."}]))


def _openai_stream(gateway, token: str) -> _Stream:
    client = openai_client(f"{gateway.base('openai')}/v1", token, "openai_chat/simple_text", **SLOW)
    return _Stream(lambda: client.chat.completions.with_raw_response.create(
        model="gpt-4o-2024-08-06", stream=True, messages=[{"role": "user", "content": "Say hello in French."}]))


def test_streams_longer_than_the_graceful_timeout_end_with_an_error_event_and_a_record(
        start_gateway, upstream, identities, database):
    gateway = start_gateway({**provider_env(upstream), "GUNICORN_CMD_ARGS": f"--graceful-timeout {GRACEFUL_TIMEOUT}"},
                            workers=1)
    streams = [_anthropic_stream(gateway, identities.alice) for _ in range(STREAMS_PER_SDK)]
    streams += [_openai_stream(gateway, identities.bob) for _ in range(STREAMS_PER_SDK)]
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.under_way.wait(WAIT)
    assert [stream.error for stream in streams] == [None] * len(streams)  # every stream is relaying

    gateway.process.send_signal(signal.SIGTERM)
    for stream in streams:
        stream.join(WAIT)

    for stream in streams:
        assert not stream.finished
        # The SDK raised its API error from the provider's error event, not a transport error.
        assert isinstance(stream.error, (anthropic.APIError, openai.APIError)), repr(stream.error)
        assert "the gateway is shutting down" in str(stream.error)
    ids = [stream.interception_id for stream in streams]
    records = wait_for_records(database, ids)
    assert sorted(records) == sorted(ids)  # every one ended (ended_at set) and written
    for record in records.values():
        assert json.loads(record["metadata"])["error"] == "the gateway is shutting down"
    assert gateway.process.wait(WAIT) == 0  # the gateway stopped by itself, without a kill
