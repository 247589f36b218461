"""OpenAI Responses API (``POST v1/responses``), as Codex and newer OpenAI tooling speak it.

A stream announces each output item (``response.output_item.added``), grows it with deltas and
settles it (``response.output_item.done``); the final ``response.completed`` / ``failed`` /
``incomplete`` event repeats the whole response with usage. Items are tracked by output index so
that a stream cut before its end still yields what was seen.
"""

from __future__ import annotations

import re
from typing import Iterable

import orjson

from bridge.errors import GatewayError, error_object
from bridge.intercept.base import Interceptor, check_field, json_object, text_of
from bridge.intercept.sse import Event, SSESplitter
from bridge.records import OPENAI_USAGE, Thought, ToolCall, call_arguments

_INPUT_TEXT = ("input_text", "text", "output_text")
_TOOL_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output"})
# Streamed pieces: event type -> (item field they extend).
_DELTAS = {
    "response.function_call_arguments.delta": "arguments",
    "response.custom_tool_call_input.delta": "input",
}
_DONES = {
    "response.function_call_arguments.done": ("arguments", "arguments"),
    "response.custom_tool_call_input.done": ("input", "input"),
}
_FINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
#: Where an event holds something for the record: any "type" but a text delta's (most of a stream).
#: Inside JSON strings quotes are escaped, so no text a model writes can match.
_NOTEWORTHY = re.compile(rb'"type"\s*+:\s*+(?!"response\.output_text\.delta")')


class ResponsesInterceptor(Interceptor):
    usage_schema = OPENAI_USAGE
    noteworthy = _NOTEWORTHY

    def __init__(self, body: dict, raw_body: bytes) -> None:
        super().__init__(body, raw_body)
        self._items: dict[int, dict] = {}
        # Streamed pieces of an item's text fields, joined once when read: concatenating each delta
        # would copy the text so far every time (quadratic in a long tool call's arguments).
        self._growing: dict[tuple[int, str], tuple[dict, str, list[str]]] = {}
        self._events_seen = 0  # sequence numbers count the events from 0

    def validate(self) -> None:
        check_field(self.body, "input", (str, list))
        if check_field(self.body, "background", (bool,)):
            raise GatewayError(501, "background: background responses are not supported by this gateway; "
                                    "send the request without \"background\": true", param="background")

    def events_for_record(self, run: bytes) -> Iterable[Event]:
        # Text deltas of commentary messages are recorded: a run near one is read event by event.
        # So is a run whose events cannot be counted by their blank lines (CRLF, or blank lines between events).
        if b'"commentary"' in run or self._has_commentary() or b"\r" in run or b"\n\n\n" in run:
            return SSESplitter().feed(run)
        events = list(super().events_for_record(run))
        self._events_seen += run.count(b"\n\n") - len(events)  # observe_event() counts the others
        return events

    def observe_event(self, event: Event) -> None:
        self._events_seen += 1
        # Text deltas are most of a stream; the record needs none except those of commentary messages.
        if event.name == b"response.output_text.delta" and not self._has_commentary():
            return
        payload = json_object(event.data)
        if payload is None:
            return
        kind = payload.get("type")
        if kind in ("response.created", "response.in_progress", "response.queued"):
            self.response_id = (payload.get("response") or {}).get("id") or self.response_id
        elif kind == "response.output_item.added" or kind == "response.output_item.done":
            item = payload.get("item")
            if isinstance(item, dict):
                self._items[payload.get("output_index", len(self._items))] = dict(item)
        elif kind in _DELTAS:
            item = self._items.get(payload.get("output_index"))
            if item is not None and isinstance(payload.get("delta"), str):
                self._grow(item, _DELTAS[kind], payload["delta"])
        elif kind in _DONES:
            item = self._items.get(payload.get("output_index"))
            field, source = _DONES[kind]
            if item is not None and isinstance(payload.get(source), str):
                self._set(item, field, payload[source])
        elif kind == "response.reasoning_summary_text.delta":
            self._grow(self._summary(payload), "text", payload.get("delta") or "")
        elif kind == "response.reasoning_summary_text.done":
            self._set(self._summary(payload), "text", payload.get("text") or "")
        elif kind == "response.output_text.delta":
            self._commentary_text(payload, payload.get("delta") or "", append=True)
        elif kind == "response.output_text.done":
            self._commentary_text(payload, payload.get("text") or "", append=False)
        elif kind in _FINAL:
            self._take_response(payload.get("response") or {})

    def ends_stream(self, event: Event) -> bool:
        payload = json_object(event.data)
        return payload is not None and (payload.get("type") in _FINAL or payload.get("type") == "error")

    def stream_error(self, shape: str, status: int, message: str) -> bytes:
        """The Responses API's own mid-stream error event (``event: error``), next in sequence."""
        error = error_object(shape, status, message)["error"]
        payload = {"type": "error", "code": error["code"], "message": message, "param": None,
                   "sequence_number": self._events_seen}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _has_commentary(self) -> bool:
        return any(item.get("phase") == "commentary" for item in self._items.values())

    def _summary(self, payload: dict) -> dict:
        item = self._items.setdefault(payload.get("output_index", -1), {"type": "reasoning"})
        summary = item.setdefault("summary", [])
        index = payload.get("summary_index", 0)
        while len(summary) <= index:
            summary.append({"type": "summary_text", "text": ""})
        return summary[index]

    def _commentary_text(self, payload: dict, text: str, append: bool) -> None:
        item = self._items.get(payload.get("output_index"))
        if item is None or item.get("phase") != "commentary":
            return
        content = item.setdefault("content", [])
        index = payload.get("content_index", 0)
        while len(content) <= index:
            content.append({"type": "output_text", "text": ""})
        (self._grow if append else self._set)(content[index], "text", text)

    def _grow(self, target: dict, field: str, piece: str) -> None:
        entry = self._growing.get((id(target), field))
        if entry is None:
            entry = self._growing[(id(target), field)] = (target, field, [target.get(field) or ""])
        entry[2].append(piece)

    def _set(self, target: dict, field: str, value: str) -> None:
        self._growing.pop((id(target), field), None)
        target[field] = value

    def _settle(self) -> None:
        for target, field, pieces in self._growing.values():
            target[field] = "".join(pieces)
        self._growing.clear()

    def _take_response(self, response: dict) -> None:
        self.response_id = response.get("id") or self.response_id
        if response.get("usage"):
            self.usage_payload = response["usage"]
        self.stop_reason = response.get("status") or self.stop_reason
        output = response.get("output")
        if output:  # the whole output, settled: it replaces what the deltas built
            self._items = {index: item for index, item in enumerate(output) if isinstance(item, dict)}
            self._growing.clear()

    def observe_response(self, status: int, body: bytes) -> None:
        response = json_object(body) if status < 400 else None
        if response is not None:
            self._take_response(response)

    def finish(self) -> None:
        self._settle()
        for _, item in sorted(self._items.items()):
            kind = item.get("type")
            if kind == "function_call":
                self.tool_calls.append(ToolCall(item.get("call_id"), item.get("name") or "",
                                                call_arguments(item.get("arguments") or "")))
            elif kind == "custom_tool_call":
                self.tool_calls.append(ToolCall(item.get("call_id"), item.get("name") or "", item.get("input") or ""))
            elif kind == "reasoning":
                for part in item.get("summary") or ():
                    if isinstance(part, dict) and part.get("text"):
                        self.thoughts.append(Thought(part["text"], "reasoning_summary"))
            elif kind == "message" and item.get("phase") == "commentary":
                text = text_of(item.get("content"), _INPUT_TEXT)
                if text:
                    self.thoughts.append(Thought(text, "commentary"))
        self._items.clear()

    def last_message(self) -> dict | None:
        items = self.body.get("input")
        return items[-1] if isinstance(items, list) and items and isinstance(items[-1], dict) else None

    def prompt(self) -> str | None:
        if isinstance(self.body.get("input"), str):
            return self.body["input"]
        last = self.last_message()
        if not last or last.get("role") != "user" or last.get("type", "message") != "message":
            return None
        return text_of(last.get("content"), _INPUT_TEXT)

    def correlating_tool_call_id(self) -> str | None:
        last = self.last_message()
        return last.get("call_id") if last and isinstance(last.get("type"), str) and last["type"] in _TOOL_OUTPUTS else None
