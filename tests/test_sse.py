"""The SSE splitter returns whole events with their exact bytes, however the stream is cut into reads."""

from __future__ import annotations

import orjson
import pytest

from bridge.intercept.chat_completions import ChatCompletionsInterceptor
from bridge.intercept.sse import SSESplitter, parse_event

STREAM = (b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
          b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
          b"data: line one\ndata: line two\n\n"
          b"event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64, len(STREAM)])
def test_events_are_whole_and_exact_for_any_read_size(size):
    splitter = SSESplitter()
    events = []
    for start in range(0, len(STREAM), size):
        events.extend(splitter.feed(STREAM[start:start + size]))
    assert b"".join(event.raw for event in events) == STREAM
    assert [event.name for event in events] == [b"message_start", b"ping", None, b"message_stop"]
    assert events[2].data == b"line one\nline two"
    assert events[3].data == b'{"type":"message_stop"}'
    assert splitter.remainder() == b""


def test_unfinished_event_is_kept_as_remainder():
    splitter = SSESplitter()
    assert splitter.feed(b"data: {\"a\":1}\n\ndata: {\"b\"") == [parse_event(b"data: {\"a\":1}\n\n")]
    assert splitter.remainder() == b"data: {\"b\""


def test_data_field_without_space():
    assert parse_event(b"data:{\"x\":1}\n\n").data == b"{\"x\":1}"


def _chunk(**extra) -> bytes:
    return b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [], **extra}) + b"\n\n"


def _interceptor(**body) -> ChatCompletionsInterceptor:
    body = {"model": "gpt-4o", "messages": [], "stream": True, **body}
    return ChatCompletionsInterceptor(body, orjson.dumps(body))


def test_usage_is_requested_upstream_and_hidden_from_the_client():
    interceptor = _interceptor(stream_options={"something": 1})
    assert interceptor.rewrites_stream
    assert orjson.loads(interceptor.upstream_body())["stream_options"] == {"something": 1, "include_usage": True}
    events = SSESplitter().feed(
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"\\"usage\\":null"}}],"usage":null}\n\n'
        + _chunk(usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
        + b"data: [DONE]\n\n")
    # the escaped look-alike inside content stays; the real member goes; the usage-only chunk is dropped
    expected = [b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"\\"usage\\":null"}}]}\n\n', b"", b"data: [DONE]\n\n"]
    assert [interceptor.rewrite([event]) for event in events] == expected
    assert interceptor.rewrite(events) == b"".join(expected)  # a read of several events at once
    deltas_only = SSESplitter().feed(events[0].raw * 3 + b"data: [DONE]\n\n")  # the whole read in one pass
    assert interceptor.rewrite(deltas_only) == expected[0] * 3 + b"data: [DONE]\n\n"


@pytest.mark.parametrize("body", [
    {"stream_options": {"include_usage": True}},  # the client asked itself
    {"stream": False},                              # usage always comes on blocking answers
])
def test_usage_request_left_alone(body):
    interceptor = _interceptor(**body)
    assert not interceptor.rewrites_stream
    assert interceptor.upstream_body() == interceptor.raw_body


def test_include_usage_opt_out_per_provider():
    body = {"model": "gpt-4o", "messages": [], "stream": True}
    assert not ChatCompletionsInterceptor(body, orjson.dumps(body), include_usage=False).rewrites_stream
