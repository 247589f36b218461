"""What the interceptors read from each recorded exchange matches the fixture's ``expect`` (SPEC §6)."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from datetime import datetime, timezone

import orjson
import pytest

from bridge.errors import GatewayError
from bridge.intercept.chat_completions import ChatCompletionsInterceptor
from bridge.intercept.messages import MessagesInterceptor
from bridge.intercept.responses import ResponsesInterceptor
from bridge.intercept.sse import SSESplitter
from bridge.records import new_id
from bridge.timestamps import format_timestamp, utc_now
from tests.sdk_calls import load_fixtures

CASES = [
    pytest.param(name, fixture, mode, id=f"{name}-{mode}")
    for name, fixture in load_fixtures("anthropic") + load_fixtures("openai_chat") + load_fixtures("openai_responses")
    for mode in ("blocking", "streaming")
    if fixture.get(mode) and fixture[mode].get("status") == 200
]


def _interceptor(name: str, request: dict, stream: bool):
    body = {**request, "stream": stream}
    raw = orjson.dumps(body)
    if name.startswith("anthropic/"):
        return MessagesInterceptor(body, raw)
    if name.startswith("openai_responses/"):
        return ResponsesInterceptor(body, raw)
    return ChatCompletionsInterceptor(body, raw)


def _tool_input(name: str, expected):
    # Anthropic inputs are JSON objects, stored as compact JSON text; OpenAI arguments are kept as sent.
    return orjson.dumps(expected).decode() if name.startswith("anthropic/") else expected


def _observe_as_relayed(wire: bytes, interceptor, read_size: int) -> None:
    """What the relay does: whole events of each read, shown as the interceptor picks them."""
    splitter = SSESplitter()
    for start in range(0, len(wire), read_size):
        run = splitter.feed_whole(wire[start:start + read_size])
        for event in interceptor.events_for_record(run) if run else ():
            interceptor.observe_event(event)


def _seen(interceptor) -> tuple:
    error_event = interceptor.stream_error("openai", 502, "cut")  # the Responses API's is numbered after the events
    interceptor.finish()
    return (error_event, interceptor.response_id, interceptor.usage_payload, interceptor.stop_reason,
            [(call.id, call.name, call.input) for call in interceptor.tool_calls],
            [(thought.content, thought.source) for thought in interceptor.thoughts])


def _spaced(wire: bytes) -> bytes:
    """The stream with its JSON written with spaces (``"key" : value``), as some compatible servers send it."""
    out = []
    for event in SSESplitter().feed(wire):
        try:
            data = json.dumps(json.loads(event.data), separators=(" , ", " : "))
        except ValueError:
            out.append(event.raw)
            continue
        out.append(event.raw.replace(event.data, data.encode()))
    return b"".join(out)


STREAMS = [pytest.param(name, fixture, id=name) for name, fixture, mode in (case.values for case in CASES)
           if mode == "streaming"]


@pytest.mark.parametrize("name, fixture", STREAMS)
@pytest.mark.parametrize("spacing", ["compact", "spaced"])
def test_events_left_unparsed_hold_nothing_for_the_record(name, fixture, spacing):
    """Reading only the events the interceptor picks gives the record that reading every event gives,
    however the stream is cut into reads and however its JSON is spaced."""
    wire = "".join(fixture["streaming"]["events"]).encode()
    if spacing == "spaced":
        wire = _spaced(wire)
    every = _interceptor(name, fixture["request"], True)
    for event in SSESplitter().feed(wire):
        every.observe_event(event)
    expected = _seen(every)
    assert expected[0] is not None
    for read_size in (1, 13, 97, 1024, len(wire)):
        picked = _interceptor(name, fixture["request"], True)
        _observe_as_relayed(wire, picked, read_size)
        assert _seen(picked) == expected, read_size


@pytest.mark.parametrize("name, fixture, mode", CASES)
def test_interceptor_reads_what_the_auditor_expects(name, fixture, mode):
    interceptor = _interceptor(name, fixture["request"], mode == "streaming")
    if mode == "streaming":
        _observe_as_relayed("".join(fixture["streaming"]["events"]).encode(), interceptor, 97)
    else:
        interceptor.observe_response(200, orjson.dumps(fixture["blocking"]["body"]))
    interceptor.finish()
    expect = fixture["expect"]

    usage = interceptor.usage()
    if expect["usage"] is None:
        assert usage is None
    else:
        assert usage is not None
        assert {**usage.__dict__} == expect["usage"]
    assert interceptor.prompt() == expect["prompt"]
    assert [(call.id, call.name, call.input) for call in interceptor.tool_calls] == \
        [(call["id"], call["name"], _tool_input(name, call["input"])) for call in expect["tool_calls"]]
    assert [(thought.content, thought.source) for thought in interceptor.thoughts] == \
        [(thought["content"], thought["source"]) for thought in expect["thoughts"]]
    if not fixture[mode].get("abort"):
        assert interceptor.stop_reason == expect["stop_reason"]
    if "correlating_tool_call_id" in expect:
        assert interceptor.correlating_tool_call_id() == expect["correlating_tool_call_id"]
    assert interceptor.response_id


def test_anthropic_usage_figures_are_cumulative_not_added():
    """message_start says output 1; the final message_delta says 90: the record says 90, not 91."""
    name, fixture = "anthropic/cached_tokens", dict(load_fixtures("anthropic"))["anthropic/cached_tokens"]
    interceptor = _interceptor(name, fixture["request"], True)
    for event in SSESplitter().feed("".join(fixture["streaming"]["events"]).encode()):
        interceptor.observe_event(event)
    usage = interceptor.usage()
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens, usage.cache_write_input_tokens) == (3, 90, 12000, 40)


def test_openai_cached_tokens_are_split_from_input():
    fixture = dict(load_fixtures("openai_chat"))["openai_chat/cached_tokens"]
    interceptor = _interceptor("openai_chat/cached_tokens", fixture["request"], False)
    interceptor.observe_response(200, orjson.dumps(fixture["blocking"]["body"]))
    usage = interceptor.usage()
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (2000, 18000)


@pytest.mark.parametrize("messages, prompt, correlating", [
    ([{"role": "user", "content": "hi"}], "hi", None),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}, {"type": "text", "text": "b"}]}], "a\nb", None),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], None, None),
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]}], None, "toolu_1"),
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"},
                                   {"type": "text", "text": "and now?"}]}], "and now?", "toolu_1"),
    # Claude Code: a system reminder before the typed text, and a trailing "system" message
    ([{"role": "user", "content": [{"type": "text", "text": "<system-reminder>\nctx\n</system-reminder>"},
                                   {"type": "text", "text": "fix the bug"}]},
      {"role": "system", "content": [{"type": "text", "text": "env"}]}], "fix the bug", None),
])
def test_anthropic_prompt_rule(messages, prompt, correlating):
    interceptor = _interceptor("anthropic/x", {"model": "m", "max_tokens": 5, "messages": messages}, False)
    assert interceptor.prompt() == prompt
    assert interceptor.correlating_tool_call_id() == correlating


@pytest.mark.parametrize("messages, prompt, correlating", [
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "hi", None),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}], "a", None),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": []}, {"role": "tool", "tool_call_id": "call_9", "content": "r"}], None, "call_9"),
])
def test_openai_prompt_rule(messages, prompt, correlating):
    interceptor = _interceptor("openai_chat/x", {"model": "m", "messages": messages}, False)
    assert interceptor.prompt() == prompt
    assert interceptor.correlating_tool_call_id() == correlating


def test_background_responses_are_refused_with_501():
    with pytest.raises(GatewayError) as raised:
        ResponsesInterceptor({"model": "gpt-5", "input": "hi", "background": True}, b"{}")
    assert raised.value.status == 501 and raised.value.param == "background"


@pytest.mark.parametrize("body, field", [
    ({"model": "gpt-5", "input": 3}, "input"),
    ({"model": "gpt-5", "input": "x", "stream": "true"}, "stream"),
    ({"input": "x"}, "model"),
])
def test_responses_field_checks(body, field):
    with pytest.raises(GatewayError) as raised:
        ResponsesInterceptor(body, b"{}")
    assert raised.value.status == 400 and raised.value.param == field


def test_record_ids_are_distinct_time_ordered_uuids_in_canonical_text():
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)
        assert before <= parsed.int >> 80 <= after  # the creation time in milliseconds leads
    time.sleep(0.002)
    assert new_id() > max(ids)  # a later id sorts after: it goes at the end of the indexes
    # every hex digit of the random part shows up, so no position is stuck
    for position in (15, 16, 17, 20, 35):
        assert {text[position] for text in ids} == set("0123456789abcdef")
    assert {text[19] for text in ids} == set("89ab")


def test_a_forked_worker_never_reuses_its_parents_random_bits():
    new_id()  # the parent now holds random bits read ahead
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the worker gunicorn forks
        try:
            os.write(writing, " ".join(new_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        childs = {text[15:] for text in pipe.read().decode().split()}  # past the time and the version
    os.waitpid(child, 0)
    parents = {new_id()[15:] for _ in range(100)}
    assert len(childs) == 100 and not childs & parents


def test_timestamps_have_one_fixed_width_utc_form():
    before = datetime.now(timezone.utc)
    now = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", now)
    assert format_timestamp(before) <= now <= format_timestamp(datetime.now(timezone.utc))
    assert format_timestamp(datetime.fromisoformat(now.replace("Z", "+00:00"))) == now


def test_a_responses_call_streamed_without_argument_fragments_is_recorded_with_an_empty_object():
    """A function call whose stream carried no argument fragment (here cut right after the call was
    announced with ``"arguments": ""``) records ``{}``: a tool input is always a JSON object."""
    fixture = dict(load_fixtures("openai_responses"))["openai_responses/function_call"]
    events = fixture["streaming"]["events"]
    announced = next(i for i, event in enumerate(events) if "response.output_item.added" in event)
    interceptor = _interceptor("openai_responses/function_call", fixture["request"], True)
    _observe_as_relayed("".join(events[:announced + 1]).encode(), interceptor, 97)
    interceptor.finish()
    assert [(call.name, call.input) for call in interceptor.tool_calls] == [("get_weather", "{}")]
