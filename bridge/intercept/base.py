"""What every interceptor shares: body checks, the hooks the relay calls while bytes pass, and what
the audit record needs from one request and its response."""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

import orjson
from marshmallow import Schema

from bridge.errors import GatewayError, stream_error_event
from bridge.intercept.sse import Event, SSESplitter, events_holding
from bridge.records import Thought, TokenUsage, ToolCall

_TYPE_NAMES = {str: "a string", bool: "a boolean", list: "an array", dict: "an object"}


def check_field(body: dict, field: str, types: tuple[type, ...], *, required: bool = False,
                nullable: bool = False) -> Any:
    """Return ``body[field]`` after checking its type; a wrong one is a 400 naming the field."""
    if field not in body:
        if required:
            raise GatewayError(400, f"{field}: field required", param=field)
        return None
    value = body[field]
    if value is None and nullable:
        return None
    # bool is an int subclass and JSON has no other overlap, so an exact type check is right here.
    if type(value) not in types:
        expected = " or ".join(_TYPE_NAMES[t] for t in types)
        raise GatewayError(400, f"{field}: expected {expected}", param=field)
    return value


def json_object(data: bytes) -> dict | None:
    """A JSON object from an upstream payload, or None for anything else (the relay never fails on it)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _client_injected(text: str) -> bool:
    """Text a coding agent adds to the user's turn (Claude Code's ``<system-reminder>`` blocks)."""
    stripped = text.strip()
    return stripped.startswith("<system-reminder>") and stripped.endswith("</system-reminder>")


def text_of(content: Any, text_types: tuple[str, ...] = ("text",)) -> str | None:
    """The text of a message's content: a string, or its text parts joined with newlines, leaving
    out parts the client injected rather than the user typed."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part["text"] for part in content
                 if isinstance(part, dict) and part.get("type") in text_types and isinstance(part.get("text"), str)
                 and not _client_injected(part["text"])]
        return "\n".join(texts) if texts else None
    return None


class Interceptor:
    """One intercepted call of one API shape.

    The relay gives it the parsed request body, asks it for the bytes to send upstream, and shows
    it the response: every SSE event of a stream, or the whole body of a blocking answer. What it
    gathers (response id, usage, tool calls, thoughts) becomes the audit record.
    """

    #: Streams this interceptor changes (rather than only reads) are relayed as whole events, through rewrite().
    rewrites_stream = False
    #: Normalizes this API's usage payload into a TokenUsage.
    usage_schema: Schema
    #: Where in a run of events something for the record is (events_for_record() parses only the
    #: events holding a match); None: every event may hold something.
    noteworthy: re.Pattern[bytes] | None = None

    def __init__(self, body: dict, raw_body: bytes) -> None:
        self.body = body
        self.raw_body = raw_body
        self.model: str = check_field(body, "model", (str,), required=True)
        self.streaming: bool = bool(check_field(body, "stream", (bool,)))
        self.validate()
        self.response_id: str | None = None
        self.usage_payload: dict | None = None
        self.tool_calls: list[ToolCall] = []
        self.thoughts: list[Thought] = []
        self.stop_reason: str | None = None

    def validate(self) -> None:
        """Check the API-specific fields the gateway reads itself."""

    def upstream_body(self) -> bytes:
        """The request body sent upstream: the client's bytes, unless the interceptor must add something."""
        return self.raw_body

    def forget_request(self) -> None:
        """Let go of the request's body once the upstream request is made from it: a stream keeps its
        interceptor to its end, and a large body with it. The record took what it needs when the
        interception began."""
        self.body = {}
        self.raw_body = b""

    def rewrite(self, events: bytes) -> bytes:
        """For rewriting interceptors: the bytes the client gets for a run of whole upstream events.
        The relay shows the events to observe_event() once these bytes are sent."""
        return events

    def events_for_record(self, run: bytes) -> Iterable[Event]:
        """The events of a run of whole upstream events that observe_event() must see, in order: those
        holding a ``noteworthy`` match, or all of them."""
        if self.noteworthy is None:
            return SSESplitter().feed(run)
        return events_holding(run, self.noteworthy_positions(run))

    def noteworthy_positions(self, run: bytes) -> Iterator[int]:
        """Where ``noteworthy`` matches in the run, in order."""
        return (match.start() for match in self.noteworthy.finditer(run))

    def observe_event(self, event: Event) -> None:
        """See one upstream SSE event."""

    def observe_response(self, status: int, body: bytes) -> None:
        """See a whole non-streamed response."""

    def finish(self) -> None:
        """The response is over (or was cut): settle what is still half-seen."""

    def ends_stream(self, event: Event) -> bool:
        """Whether a stream whose last event is ``event`` ended as the provider ends one (its final
        event, or an error); else the upstream's connection ended before the stream did."""
        return True

    def stream_error(self, shape: str, status: int, message: str) -> bytes:
        """The event that ends a stream the upstream broke off, as this API reports errors mid-stream."""
        return stream_error_event(shape, status, message)

    # --- what the record needs from the request ---

    def last_message(self) -> dict | None:
        messages = self.body.get("messages")
        return messages[-1] if messages and isinstance(messages[-1], dict) else None

    def prompt(self) -> str | None:
        """The last user prompt, only when the conversation's last message is the user's (chat
        completions and messages; the Responses API's input has its own shape)."""
        last = self.last_message()
        return text_of(last.get("content")) if last and last.get("role") == "user" else None

    def correlating_tool_call_id(self) -> str | None:
        """The tool call whose result this request returns (links the interception to the one that made it)."""
        return None

    def usage(self) -> TokenUsage | None:
        return None if self.usage_payload is None else self.usage_schema.load(self.usage_payload)
