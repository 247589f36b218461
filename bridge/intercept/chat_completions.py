"""OpenAI Chat Completions (``POST v1/chat/completions``) and the compatible APIs that copy it.

Usage is only sent on streams when asked for, so the gateway asks for it itself
(``stream_options.include_usage``) and hides what that changes from the client: the extra
usage-only chunk, and the ``"usage":null`` member the provider then adds to every other chunk.
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Iterator

import orjson

from bridge.intercept.base import Interceptor, check_field, json_object
from bridge.intercept.sse import Event, event_around, parse_event
from bridge.records import OPENAI_USAGE, Thought, ToolCall, call_arguments

#: Where an event holds something for the record: a finish, a usage, a tool call or reasoning. Keys are
#: looked for as bytes; inside JSON strings quotes are escaped, so no text a model writes can match.
#: Content deltas (most of a stream) have none and are never parsed.
_NOTEWORTHY = re.compile(  # one leading quote for all branches: the scan looks at quotes only
    rb'"(?:finish_reason"\s*+:\s*+(?!null\s*+[,}])|usage"\s*+:\s*+(?!null\s*+[,}])|tool_calls"|reasoning)')
_INCLUDE_USAGE_MEMBER = b'"stream_options":{"include_usage":true},'
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')
#: Compatible providers (DeepSeek, vLLM, OpenRouter, ...) stream the model's reasoning under these names.
_REASONING_FIELDS = ("reasoning_content", "reasoning")


def _without_null_usage(raw: bytes) -> bytes:
    """``raw`` without its compact ``"usage":null`` members (quotes inside JSON strings are escaped,
    so no text a model writes can match)."""
    return raw.replace(b',"usage":null,', b",").replace(b',"usage":null}', b"}")


def _without_usage(event: Event) -> bytes:
    """The event without the ``"usage":null`` member, or nothing for the usage-only chunk."""
    raw = _without_null_usage(event.raw)
    if b'"usage"' not in raw:
        return raw
    chunk = json_object(event.data)
    if isinstance(chunk, dict) and chunk.get("choices") == [] and chunk.get("usage") is not None:
        return b""  # the usage-only chunk the client did not ask for
    return _USAGE_NULL.sub(b"", raw)


class ChatCompletionsInterceptor(Interceptor):
    usage_schema = OPENAI_USAGE
    noteworthy = _NOTEWORTHY

    def __init__(self, body: dict, raw_body: bytes, *, include_usage: bool = True) -> None:
        self._include_usage = include_usage
        super().__init__(body, raw_body)
        # Streamed tool calls and reasoning, keyed by (choice index, tool call index) / choice index.
        self._calls: dict[tuple[int, int], list] = {}
        self._reasoning: dict[int, list[str]] = {}

    def validate(self) -> None:
        check_field(self.body, "messages", (list,), required=True)
        options = check_field(self.body, "stream_options", (dict,), nullable=True)
        if self.streaming and self._include_usage and not (options or {}).get("include_usage") is True:
            self.rewrites_stream = True

    def upstream_body(self) -> bytes:
        if not self.rewrites_stream:
            return self.raw_body
        if "stream_options" not in self.body:
            # Put in front of the client's bytes, not re-serialized: a large body is copied once, not
            # made again from its parse. The object has members ("messages"), so a comma follows.
            start = self.raw_body.index(b"{") + 1
            return b"".join((self.raw_body[:start], _INCLUDE_USAGE_MEMBER, memoryview(self.raw_body)[start:]))
        body = dict(self.body)
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return orjson.dumps(body)

    def rewrite(self, events: bytes) -> bytes:
        # The compact forms in every event of the run at once; an event still holding a usage member
        # (the usage-only chunk) on its own.
        if b'"usage"' not in events:
            return events
        out = _without_null_usage(events)
        parts, done = [], 0
        while (hit := out.find(b'"usage"', done)) >= 0:
            start, end = event_around(out, hit, done)
            parts += [out[done:start], _without_usage(parse_event(out[start:end]))]
            done = end
        return b"".join([*parts, out[done:]]) if parts else out

    def noteworthy_positions(self, run: bytes) -> Iterator[int]:
        hits = super().noteworthy_positions(run)
        return hits if self.response_id is not None else chain((0,), hits)  # the first event: the id

    def observe_event(self, event: Event) -> None:
        chunk = json_object(event.data) if event.data != b"[DONE]" else None
        if chunk is None:
            return
        self.response_id = self.response_id or chunk.get("id")
        if chunk.get("usage"):
            self.usage_payload = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or ():
                key = (index, call.get("index", 0))
                function = call.get("function") or {}
                if key not in self._calls:
                    self._calls[key] = [call.get("id"), function.get("name") or "", []]
                elif function.get("name") and not self._calls[key][1]:
                    self._calls[key][1] = function["name"]
                if isinstance(function.get("arguments"), str):
                    self._calls[key][2].append(function["arguments"])
            for name in _REASONING_FIELDS:
                if isinstance(delta.get(name), str):
                    self._reasoning.setdefault(index, []).append(delta[name])
                    break
            if choice.get("finish_reason"):
                self.stop_reason = choice["finish_reason"]

    def finish(self) -> None:
        for (_, _), (call_id, name, parts) in sorted(self._calls.items()):
            self.tool_calls.append(ToolCall(call_id, name, call_arguments("".join(parts))))
        for _, parts in sorted(self._reasoning.items()):
            self.thoughts.append(Thought("".join(parts), "reasoning_content"))
        self._calls.clear()
        self._reasoning.clear()

    def ends_stream(self, event: Event) -> bool:
        if event.data.strip() == b"[DONE]":
            return True
        chunk = json_object(event.data)  # an error sent mid-stream, as OpenAI does, ends it too
        return chunk is not None and "error" in chunk

    def observe_response(self, status: int, body: bytes) -> None:
        completion = json_object(body) if status < 400 else None
        if completion is None:
            return
        self.response_id = completion.get("id")
        self.usage_payload = completion.get("usage")
        for choice in completion.get("choices") or ():
            message = choice.get("message") or {}
            for call in message.get("tool_calls") or ():
                if call.get("type") == "custom":
                    custom = call.get("custom") or {}
                    self.tool_calls.append(ToolCall(call.get("id"), custom.get("name") or "", custom.get("input") or ""))
                else:
                    function = call.get("function") or {}
                    self.tool_calls.append(ToolCall(call.get("id"), function.get("name") or "",
                                                    call_arguments(function.get("arguments") or "")))
            for name in _REASONING_FIELDS:
                if isinstance(message.get(name), str) and message[name]:
                    self.thoughts.append(Thought(message[name], "reasoning_content"))
                    break
            self.stop_reason = choice.get("finish_reason") or self.stop_reason

    def correlating_tool_call_id(self) -> str | None:
        last = self.last_message()
        return last.get("tool_call_id") if last and last.get("role") == "tool" else None
