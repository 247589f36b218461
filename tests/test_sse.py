"""The SSE splitter returns whole events with their exact bytes, however the stream is cut into reads."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.intercept import sse
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
    assert [interceptor.rewrite(event.raw) for event in events] == expected
    assert interceptor.rewrite(b"".join(event.raw for event in events)) == b"".join(expected)  # a run of events
    deltas_only = events[0].raw * 3 + b"data: [DONE]\n\n"  # the whole run in one pass
    assert interceptor.rewrite(deltas_only) == expected[0] * 3 + b"data: [DONE]\n\n"


@pytest.mark.parametrize("delimiter", [b"\n\n", b"\r\n\r\n"])
def test_whole_events_are_cut_at_the_last_boundary_of_every_read(delimiter):
    stream = b"".join(b"data: " + str(n).encode() + delimiter for n in range(5))
    for size in (1, 3, 7, len(stream)):
        splitter, runs = SSESplitter(), []
        for start in range(0, len(stream), size):
            run = splitter.feed_whole(stream[start:start + size])
            assert run == b"" or run.endswith(delimiter)
            runs.append(run)
        assert b"".join(runs) == stream and splitter.remainder() == b""
        assert [event.data for event in SSESplitter().feed(b"".join(runs))] == [str(n).encode() for n in range(5)]


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


@pytest.mark.parametrize("delimiter", [b"\n\n", b"\r\n\r\n"])
def test_a_run_is_rewritten_as_its_events_one_by_one(delimiter):
    interceptor = _interceptor()
    events = [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}',
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
        b'data: {"id":"c", "choices":[{"index":0,"delta":{}}], "usage": null}',  # spaced: the pattern's work
        b'data: {"id":"c","usage":null,"choices":[{"index":0,"delta":{"content":"b"}}]}',
        b"data: [DONE]",
    ]
    run = b"".join(event + delimiter for event in events)
    one_by_one = b"".join(interceptor.rewrite(event + delimiter) for event in events)
    assert interceptor.rewrite(run) == one_by_one
    assert b'"usage"' not in one_by_one and one_by_one.count(b"data:") == 4


def _read_fields(raw: bytes) -> tuple[bytes | None, bytes]:
    """The event's name and data, line by line as the SSE format reads them (the reference)."""
    name, data = None, []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, b"\n".join(data)


def test_every_event_form_parses_as_its_lines_read():
    pieces = [b"data: ", b"data:", b"event: ", b"event:", b"x", b" y ", b"\n", b"\r", b"\r\n", b":c", b"id: 1"]
    for count in range(1, 4):
        for combination in itertools.product(pieces, repeat=count):
            for end in (b"\n\n", b"\r\n\r\n", b"\n"):
                raw = b"".join(combination) + end
                event = parse_event(raw)
                assert (event.raw, event.name, event.data) == (raw, *_read_fields(raw)), raw


def _naive_after_last_blank_line(run: bytes, low: int, high: int) -> int:
    ends = [found + len(blank) for blank in (b"\n\n", b"\r\n\r\n") if (found := run.rfind(blank, low, high)) >= 0]
    return max(ends, default=low)


def _naive_event_end(run: bytes, index: int) -> int:
    ends = [found + len(blank) for blank in (b"\n\n", b"\r\n\r\n") if (found := run.find(blank, index)) >= 0]
    return min(ends, default=len(run))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"data: x", b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n", b"event: e"]), max_size=24),
       st.data())
def test_event_bounds_match_a_search_for_either_blank_line(pieces, data):
    """Event starts and ends are the nearest blank line of either form, in streams mixing them."""
    run = b"".join(pieces)
    low = data.draw(st.integers(0, len(run)))
    index = data.draw(st.integers(low, len(run)))
    assert sse._after_last_blank_line(run, low, index) == _naive_after_last_blank_line(run, low, index)
    assert sse.event_around(run, index, low) == (_naive_after_last_blank_line(run, low, index),
                                                 _naive_event_end(run, index))
    for crlf_first in (False, True):  # whichever form the splitter expects, the nearer one is found
        end, _ = sse._next_blank_line(run, index, crlf_first)
        assert (end if end >= 0 else len(run)) == _naive_event_end(run, index)
