"""Anthropic Messages API (``POST v1/messages``), direct or through Bedrock."""

from __future__ import annotations

import re

import orjson

from bridge.intercept.base import Interceptor, check_field, json_object
from bridge.intercept.sse import Event
from bridge.records import ANTHROPIC_USAGE, Thought, ToolCall

#: Where an event holds something for the record: any "type" but those of text deltas and pings (most
#: of a stream, never parsed). Inside JSON strings quotes are escaped, so no text a model writes can match.
_NOTEWORTHY = re.compile(rb'"type"\s*+:\s*+(?!"(?:content_block_delta|text_delta|ping)")')
#: Content blocks in which the model calls a tool (its own, or one the provider runs).
TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def _compact_json(text: str) -> str:
    """Tool input as compact JSON, the same whether it was streamed in pieces or sent whole."""
    try:
        return orjson.dumps(orjson.loads(text)).decode()
    except orjson.JSONDecodeError:
        return text  # a stream cut mid-arguments: keep what was sent


class _OpenBlock:
    __slots__ = ("type", "id", "name", "parts")

    def __init__(self, block: dict) -> None:
        self.type = block.get("type")
        self.id = block.get("id")
        self.name = block.get("name")
        self.parts: list[str] = []
        if self.type == "thinking" and block.get("thinking"):
            self.parts.append(block["thinking"])
        elif self.type in TOOL_BLOCKS and block.get("input"):
            self.parts.append(orjson.dumps(block["input"]).decode())


class MessagesInterceptor(Interceptor):
    usage_schema = ANTHROPIC_USAGE
    noteworthy = _NOTEWORTHY

    def __init__(self, body: dict, raw_body: bytes) -> None:
        super().__init__(body, raw_body)
        self._open: dict[int, _OpenBlock] = {}

    def validate(self) -> None:
        check_field(self.body, "messages", (list,), required=True)

    def observe_event(self, event: Event) -> None:
        payload = json_object(event.data)
        if payload is None:
            return
        kind = payload.get("type")
        if kind == "content_block_delta":
            block = self._open.get(payload.get("index"))
            delta = payload.get("delta") or {}
            if block is not None:
                piece = delta.get("partial_json") if delta.get("type") == "input_json_delta" else delta.get("thinking")
                if isinstance(piece, str):
                    block.parts.append(piece)
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") in TOOL_BLOCKS or block.get("type") == "thinking":
                self._open[payload.get("index")] = _OpenBlock(block)
        elif kind == "content_block_stop":
            self._close(payload.get("index"))
        elif kind == "message_start":
            message = payload.get("message") or {}
            self.response_id = message.get("id")
            self.usage_payload = dict(message.get("usage") or {})
        elif kind == "message_delta":
            # Figures are cumulative: each one replaces the earlier value, never adds to it.
            updates = {key: value for key, value in (payload.get("usage") or {}).items() if value is not None}
            self.usage_payload = {**(self.usage_payload or {}), **updates}
            self.stop_reason = (payload.get("delta") or {}).get("stop_reason") or self.stop_reason

    def _close(self, index: int | None) -> None:
        block = self._open.pop(index, None)
        if block is None:
            return
        if block.type == "thinking":
            self.thoughts.append(Thought("".join(block.parts), "thinking"))
        else:
            self.tool_calls.append(ToolCall(block.id, block.name or "", _compact_json("".join(block.parts) or "{}")))

    def finish(self) -> None:
        for index in sorted(self._open, key=lambda i: (i is None, i)):
            self._close(index)

    def ends_stream(self, event: Event) -> bool:
        payload = json_object(event.data)
        return payload is not None and payload.get("type") in ("message_stop", "error")

    def observe_response(self, status: int, body: bytes) -> None:
        message = json_object(body) if status < 400 else None
        if message is None:
            return
        self.response_id = message.get("id")
        self.usage_payload = message.get("usage")
        self.stop_reason = message.get("stop_reason")
        for block in message.get("content") or []:
            if block.get("type") in TOOL_BLOCKS:
                self.tool_calls.append(ToolCall(block.get("id"), block.get("name") or "",
                                                orjson.dumps(block.get("input") or {}).decode()))
            elif block.get("type") == "thinking":
                self.thoughts.append(Thought(block.get("thinking") or "", "thinking"))

    def last_message(self) -> dict | None:
        # Claude Code ends the conversation with a "system" message (its environment) after the user's turn.
        messages = [m for m in self.body.get("messages") or () if not (isinstance(m, dict) and m.get("role") == "system")]
        return messages[-1] if messages and isinstance(messages[-1], dict) else None

    def correlating_tool_call_id(self) -> str | None:
        last = self.last_message()
        if not last or last.get("role") != "user" or not isinstance(last.get("content"), list):
            return None
        results = [part.get("tool_use_id") for part in last["content"]
                   if isinstance(part, dict) and part.get("type") == "tool_result"]
        return results[-1] if results else None
