"""Canned upstream bodies and client request bodies for the benchmark.

OpenAI chat and Anthropic messages are built from the recorded fixtures in tests/fixtures/
(``simple_text``): the same ids, headers and JSON layout, with the text cut into more deltas so
that a stream has ``STREAM_EVENTS`` (40) events. The Responses API has no fixture yet; its bodies
follow the public API reference (response.created … response.completed).

A delta whose text is ``STAMP`` is a placeholder: the paced mock replaces it with ``#T<ns>#``,
the CLOCK_MONOTONIC time at which it sent the event, so the client can measure per-event delay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
STREAM_EVENTS = 40
STAMP = "@@STAMP@@"

# ~4-character deltas, like real token-by-token streams.
_WORDS = ("The sea keeps its own time: waves fold into foam, salt wind carries the gulls' cries home, "
          "and the tide returns to the shore it left, patient as stone, bright as the morning light "
          "on water that remembers every moon it has ever followed across the dark.").split(" ")


def _deltas(n: int) -> list[str]:
    words = (_WORDS * (n // len(_WORDS) + 1))[:n]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _streaming(request: dict[str, Any], stream: bool) -> dict[str, Any]:
    """A copy of the request body, with ``stream: true`` when streaming."""
    return {**request, "stream": True} if stream else dict(request)


def _sse_json(event: str) -> Any:
    for line in event.split("\n"):
        if line.startswith("data: "):
            return json.loads(line[6:])
    raise ValueError(event)


# ---------------------------------------------------------------- OpenAI chat completions

def openai_request(stream: bool) -> dict[str, Any]:
    return _streaming(_fixture("openai_chat/simple_text")["request"], stream)


def openai_blocking() -> bytes:
    fx = _fixture("openai_chat/simple_text")["blocking"]["body"]
    body = json.loads(json.dumps(fx))
    body["choices"][0]["message"]["content"] = "".join(_deltas(STREAM_EVENTS - 4))
    return json.dumps(body, indent=2, ensure_ascii=False).encode()


def openai_stream_events(n: int = STREAM_EVENTS, stamp: bool = False) -> list[bytes]:
    """role chunk, n-4 content chunks, finish chunk, usage-only chunk (include_usage), [DONE]."""
    events = _fixture("openai_chat/simple_text")["streaming"]["events"]
    role, content, finish, usage = (_sse_json(e) for e in (events[0], events[1], events[-3], events[-2]))
    texts = [STAMP] * (n - 4) if stamp else _deltas(n - 4)
    out = [role]
    for text in texts:
        chunk = json.loads(json.dumps(content))
        chunk["choices"][0]["delta"]["content"] = text
        out.append(chunk)
    usage = json.loads(json.dumps(usage))
    usage["usage"]["completion_tokens"] = len(texts)
    usage["usage"]["total_tokens"] = usage["usage"]["prompt_tokens"] + len(texts)
    out += [finish, usage]
    return [f"data: {_compact(c)}\n\n".encode() for c in out] + [b"data: [DONE]\n\n"]


# ---------------------------------------------------------------- Anthropic messages

def anthropic_request(stream: bool) -> dict[str, Any]:
    return _streaming(_fixture("anthropic/simple_text")["request"], stream)


def anthropic_blocking() -> bytes:
    body = json.loads(json.dumps(_fixture("anthropic/simple_text")["blocking"]["body"]))
    body["content"][0]["text"] = "".join(_deltas(STREAM_EVENTS - 6))
    body["usage"]["output_tokens"] = STREAM_EVENTS - 6
    return _compact(body).encode()


def anthropic_stream_events(n: int = STREAM_EVENTS, stamp: bool = False) -> list[bytes]:
    """message_start, content_block_start, ping, n-6 text deltas, content_block_stop, message_delta, message_stop."""
    events = _fixture("anthropic/simple_text")["streaming"]["events"]
    by_type: dict[str, Any] = {}
    for e in events:
        by_type.setdefault(_sse_json(e)["type"], _sse_json(e))
    texts = [STAMP] * (n - 6) if stamp else _deltas(n - 6)
    out: list[tuple[str, Any]] = [("message_start", by_type["message_start"]),
                                  ("content_block_start", by_type["content_block_start"])]
    ping = 'event: ping\ndata: {"type": "ping"}\n\n'.encode()
    for text in texts:
        delta = json.loads(json.dumps(by_type["content_block_delta"]))
        delta["delta"]["text"] = text
        out.append(("content_block_delta", delta))
    message_delta = json.loads(json.dumps(by_type["message_delta"]))
    message_delta["usage"]["output_tokens"] = len(texts)
    out += [("content_block_stop", by_type["content_block_stop"]), ("message_delta", message_delta),
            ("message_stop", by_type["message_stop"])]
    rendered = [f"event: {name}\ndata: {_compact(obj)}\n\n".encode() for name, obj in out]
    return rendered[:2] + [ping] + rendered[2:]


# ---------------------------------------------------------------- OpenAI Responses API

_RESP_ID = "resp_68de2c1f0a7c8190b2d5e6f1a3c4b5d60e9f8a7b6c5d4e3f"
_MSG_ID = "msg_68de2c1f5b348190a1b2c3d4e5f60718293a4b5c6d7e8f90"
_RESP_MODEL = "gpt-4.1-2025-04-14"


def responses_request(stream: bool) -> dict[str, Any]:
    return _streaming({"model": "gpt-4.1", "input": "Write a haiku about the sea."}, stream)


def _response_object(status: str, text: str | None, output_tokens: int) -> dict[str, Any]:
    output = [] if text is None else [{
        "id": _MSG_ID, "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}]
    usage = None if status != "completed" else {
        "input_tokens": 14, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14 + output_tokens}
    return {"id": _RESP_ID, "object": "response", "created_at": 1759312800, "status": status,
            "background": False, "error": None, "incomplete_details": None, "instructions": None,
            "max_output_tokens": None, "model": _RESP_MODEL, "output": output, "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": True,
            "temperature": 1.0, "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage,
            "user": None, "metadata": {}}


def responses_blocking() -> bytes:
    n = STREAM_EVENTS - 9
    return json.dumps(_response_object("completed", "".join(_deltas(n)), n), indent=2).encode()


def responses_stream_events(n: int = STREAM_EVENTS, stamp: bool = False) -> list[bytes]:
    """created, in_progress, output_item.added, content_part.added, n-9 output_text deltas,
    output_text.done, content_part.done, output_item.done, completed."""
    texts = [STAMP] * (n - 9) if stamp else _deltas(n - 9)
    full = "".join(texts)
    item = {"id": _MSG_ID, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    done_part = {**part, "text": full}
    done_item = {**item, "status": "completed", "content": [done_part]}
    ev: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_object("in_progress", None, 0)},
        {"type": "response.in_progress", "response": _response_object("in_progress", None, 0)},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": _MSG_ID, "output_index": 0, "content_index": 0, "part": part},
    ]
    ev += [{"type": "response.output_text.delta", "item_id": _MSG_ID, "output_index": 0, "content_index": 0,
            "delta": t, "logprobs": []} for t in texts]
    ev += [
        {"type": "response.output_text.done", "item_id": _MSG_ID, "output_index": 0, "content_index": 0,
         "text": full, "logprobs": []},
        {"type": "response.content_part.done", "item_id": _MSG_ID, "output_index": 0, "content_index": 0, "part": done_part},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed", "response": _response_object("completed", full, len(texts))},
    ]
    out = []
    for seq, e in enumerate(ev):
        e = {**e, "sequence_number": seq}
        out.append(f"event: {e['type']}\ndata: {_compact(e)}\n\n".encode())
    return out


# ---------------------------------------------------------------- the scenario table

STREAM_EVENT_BUILDERS = {"openai": openai_stream_events, "anthropic": anthropic_stream_events,
                         "responses": responses_stream_events}
REQUEST_BUILDERS = {"openai": openai_request, "anthropic": anthropic_request, "responses": responses_request}
BLOCKING_BUILDERS = {"openai": openai_blocking, "anthropic": anthropic_blocking, "responses": responses_blocking}

#: Where each API lives under a base URL (what the gateway appends to a provider's base URL).
API_PATHS = {"openai": "v1/chat/completions", "anthropic": "v1/messages", "responses": "v1/responses"}


def canned_body(api: str, stream: bool) -> bytes:
    return b"".join(STREAM_EVENT_BUILDERS[api]()) if stream else BLOCKING_BUILDERS[api]()


def final_marker(api: str) -> bytes:
    """Bytes that the last event of a complete stream contains."""
    return {"openai": b"[DONE]", "anthropic": b"message_stop", "responses": b"response.completed"}[api]
