"""Keeps the recorded-traffic corpus (tests/fixtures) honest.

Every body and event must validate with the official SDK types, use the providers' own byte format,
and agree with its "expect" block, recomputed here by a small fold independent of the gateway.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pydantic
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from openai.resources.responses import Responses
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject

from tests.fakeupstream import FIXTURES_DIR, load_fixtures

FIXTURES = load_fixtures()
NAMES = sorted(FIXTURES)
STREAMED = [n for n in NAMES if FIXTURES[n]["streaming"] is not None and "events" in FIXTURES[n]["streaming"]]
ANTHROPIC_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)

# Fields the SDK types do not model but a real (compatible) provider sends.
ALLOWED_EXTRAS = {"openai_chat/reasoning_content": {"reasoning_content", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens"}}
OPENAI_CHUNK_KEYS = ["id", "object", "created", "model", "service_tier", "system_fingerprint", "choices", "usage", "obfuscation"]
# Usage fields that have their own column; every other numeric figure goes to metadata.
ANTHROPIC_COLUMNS = {"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"}
OPENAI_COLUMNS = {"prompt_tokens", "completion_tokens", "prompt_tokens_details.cached_tokens"}
RESPONSES_COLUMNS = {"input_tokens", "output_tokens", "input_tokens_details.cached_tokens",
                     "input_tokens_details.cache_write_tokens"}

# Responses API: fields the real API sends that the SDK types do not declare, as (SDK class, field).
# Checked per class, so e.g. an unknown `status` anywhere but on a custom_tool_call still fails.
RESPONSES_EXTRAS = {
    ("Response", "store"),                  # every response object echoes `store`
    ("Response", "billing"),                # ... and says who pays: {"payer": "developer"}
    ("ResponseCustomToolCall", "status"),   # custom_tool_call items carry a status like function_call items
    # stream obfuscation (on by default, `stream_options.include_obfuscation`): random padding on delta events
    ("ResponseTextDeltaEvent", "obfuscation"),
    ("ResponseReasoningSummaryTextDeltaEvent", "obfuscation"),
    ("ResponseFunctionCallArgumentsDeltaEvent", "obfuscation"),
    ("ResponseCustomToolCallInputDeltaEvent", "obfuscation"),
}
RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def parts(name: str) -> list[tuple[str, dict[str, Any]]]:
    fx = FIXTURES[name]
    return [(mode, fx[mode]) for mode in ("blocking", "streaming") if fx[mode] is not None]


def api(name: str) -> str:
    return name.split("/")[0]


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def extras(obj: Any) -> set[str]:
    """Names of fields present in the data but not declared by the SDK model (anywhere inside obj)."""
    found: set[str] = set()
    if isinstance(obj, pydantic.BaseModel):
        found |= set(obj.model_extra or {})
        for field in type(obj).model_fields:
            found |= extras(getattr(obj, field))
    elif isinstance(obj, list):
        for item in obj:
            found |= extras(item)
    return found


def check_extras(name: str, model: pydantic.BaseModel) -> None:
    unexpected = extras(model) - ALLOWED_EXTRAS.get(name, set())
    assert not unexpected, f"fields unknown to the SDK: {unexpected}"


def class_extras(obj: Any) -> set[tuple[str, str]]:
    """Like extras(), naming the SDK class each unknown field was found on."""
    found: set[tuple[str, str]] = set()
    if isinstance(obj, pydantic.BaseModel):
        found |= {(type(obj).__name__, key) for key in obj.model_extra or {}}
        for field in type(obj).model_fields:
            found |= class_extras(getattr(obj, field))
    elif isinstance(obj, list):
        for item in obj:
            found |= class_extras(item)
    return found


def check_responses_extras(model: pydantic.BaseModel) -> None:
    unexpected = class_extras(model) - RESPONSES_EXTRAS
    assert not unexpected, f"fields unknown to the SDK: {unexpected}"


def sse_data(event: str) -> str:
    lines = event[:-2].split("\n")
    assert event.endswith("\n\n") and lines[-1].startswith("data: "), event
    return lines[-1][len("data: "):]


def is_success(part: dict[str, Any]) -> bool:
    return part["status"] == 200


# ---------------------------------------------------------------- independent folds (SPEC §6)

def numeric_leaves(obj: dict[str, Any], prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(numeric_leaves(v, f"{prefix}{k}."))
        elif isinstance(v, int) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "cache_read_input_tokens": usage.get("cache_read_input_tokens") or 0,
        "cache_write_input_tokens": usage.get("cache_creation_input_tokens") or 0,
        "metadata": {k: v for k, v in numeric_leaves(usage).items() if k not in ANTHROPIC_COLUMNS},
    }


def openai_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": usage["prompt_tokens"] - cached,
        "output_tokens": usage["completion_tokens"],
        "cache_read_input_tokens": cached,
        "cache_write_input_tokens": 0,
        "metadata": {k: v for k, v in numeric_leaves(usage).items() if k not in OPENAI_COLUMNS},
    }


def prompt_of(request: dict[str, Any]) -> str | None:
    last = request["messages"][-1]
    if last["role"] != "user":
        return None
    if isinstance(last["content"], str):
        return last["content"]
    texts = [p["text"] for p in last["content"] if p.get("type") == "text"]
    return "\n".join(texts) if texts else None


def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Cumulative usage: later values replace earlier ones (nested objects merged)."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        elif v is not None:
            into[k] = v


def fold_anthropic_blocking(body: dict[str, Any]) -> dict[str, Any]:
    content = body["content"]
    return {
        "usage": anthropic_usage(body["usage"]),
        "tool_calls": [{"id": b["id"], "name": b["name"], "input": b["input"]}
                       for b in content if b["type"] in ("tool_use", "server_tool_use")],
        "thoughts": [{"content": b["thinking"], "source": "thinking"} for b in content if b["type"] == "thinking"],
        "stop_reason": body["stop_reason"],
        "text": "".join(b["text"] for b in content if b["type"] == "text"),
    }


def fold_anthropic_stream(events: list[str]) -> dict[str, Any]:
    usage: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    stop_reason = None
    for event in events:
        data = json.loads(sse_data(event))
        kind = data["type"]
        if kind == "message_start":
            usage = json.loads(json.dumps(data["message"]["usage"]))
        elif kind == "content_block_start":
            blocks[data["index"]] = {**data["content_block"], "deltas": []}
        elif kind == "content_block_delta":
            blocks[data["index"]]["deltas"].append(data["delta"])
        elif kind == "message_delta":
            assert usage is not None
            merge(usage, data["usage"])
            stop_reason = data["delta"]["stop_reason"]
    tool_calls, thoughts, text = [], [], ""
    for _, block in sorted(blocks.items()):
        if block["type"] in ("tool_use", "server_tool_use"):
            raw = "".join(d["partial_json"] for d in block["deltas"])
            tool_calls.append({"id": block["id"], "name": block["name"], "input": json.loads(raw) if raw else block["input"]})
        elif block["type"] == "thinking":
            thoughts.append({"content": "".join(d["thinking"] for d in block["deltas"] if d["type"] == "thinking_delta"),
                             "source": "thinking"})
        elif block["type"] == "text":
            text += "".join(d["text"] for d in block["deltas"] if d["type"] == "text_delta")
    return {"usage": anthropic_usage(usage), "tool_calls": tool_calls, "thoughts": thoughts,
            "stop_reason": stop_reason, "text": text}


def fold_openai_blocking(body: dict[str, Any]) -> dict[str, Any]:
    choice = body["choices"][0]
    message = choice["message"]
    reasoning = message.get("reasoning_content")
    return {
        "usage": openai_usage(body.get("usage")),
        # The record's rule: a call without arguments is recorded as the empty object.
        "tool_calls": [{"id": t["id"], "name": t["function"]["name"], "input": t["function"]["arguments"] or "{}"}
                       for t in message.get("tool_calls") or []],
        "thoughts": [{"content": reasoning, "source": "reasoning_content"}] if reasoning else [],
        "stop_reason": choice["finish_reason"],
        "text": message["content"] or "",
    }


def fold_openai_stream(events: list[str]) -> dict[str, Any]:
    usage = None
    calls: dict[int, dict[str, Any]] = {}
    reasoning, text, stop_reason = "", "", None
    for event in events:
        payload = sse_data(event)
        if payload == "[DONE]":
            continue
        data = json.loads(payload)
        if "error" in data:
            continue
        usage = data.get("usage") or usage
        for choice in data["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for tc in delta.get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": None, "name": None, "input": ""})
                call["id"] = tc.get("id") or call["id"]
                fn = tc.get("function") or {}
                call["name"] = fn.get("name") or call["name"]
                call["input"] += fn.get("arguments") or ""
            stop_reason = choice["finish_reason"] or stop_reason
    for call in calls.values():  # the record's rule: a call without arguments is the empty object
        call["input"] = call["input"] or "{}"
    return {"usage": openai_usage(usage), "tool_calls": [calls[i] for i in sorted(calls)],
            "thoughts": [{"content": reasoning, "source": "reasoning_content"}] if reasoning else [],
            "stop_reason": stop_reason, "text": text}


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": usage["input_tokens"] - cached,
        "output_tokens": usage["output_tokens"],
        "cache_read_input_tokens": cached,
        "cache_write_input_tokens": (usage.get("input_tokens_details") or {}).get("cache_write_tokens") or 0,
        "metadata": {k: v for k, v in numeric_leaves(usage).items() if k not in RESPONSES_COLUMNS},
    }


def responses_prompt(request: dict[str, Any]) -> str | None:
    """`input` when a string, else the last input item when it is a user message: its input_text parts."""
    items = request.get("input")
    if isinstance(items, str):
        return items
    if not items:
        return None
    last = items[-1]
    if last.get("type", "message") != "message" or last.get("role") != "user":
        return None
    if isinstance(last["content"], str):
        return last["content"]
    texts = [p["text"] for p in last["content"] if p["type"] == "input_text"]
    return "\n".join(texts) if texts else None


def correlating_tool_call_id(request: dict[str, Any]) -> str | None:
    items = request.get("input")
    if isinstance(items, list) and items and items[-1].get("type") in ("function_call_output", "custom_tool_call_output"):
        return items[-1]["call_id"]
    return None


def responses_items(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]], str]:
    """Tool calls, thoughts and answer text of finished output items, in output order."""
    tool_calls: list[dict[str, Any]] = []
    thoughts: list[dict[str, str]] = []
    text = ""
    for item in items:
        if item["type"] == "reasoning":
            thoughts += [{"content": s["text"], "source": "reasoning_summary"} for s in item["summary"]]
        elif item["type"] == "message":
            said = "".join(c["text"] for c in item["content"] if c["type"] == "output_text")
            if item.get("phase") == "commentary":
                thoughts.append({"content": said, "source": "commentary"})
            else:
                text += said
        elif item["type"] == "function_call":
            tool_calls.append({"id": item["call_id"], "name": item["name"], "input": item["arguments"]})
        elif item["type"] == "custom_tool_call":
            tool_calls.append({"id": item["call_id"], "name": item["name"], "input": item["input"]})
    return tool_calls, thoughts, text


def fold_responses_blocking(body: dict[str, Any]) -> dict[str, Any]:
    tool_calls, thoughts, text = responses_items(body["output"])
    return {"usage": responses_usage(body.get("usage")), "tool_calls": tool_calls, "thoughts": thoughts,
            "stop_reason": body["status"], "text": text}


def fold_responses_stream(events: list[str]) -> dict[str, Any]:
    """Rebuilt from the deltas (checked against every .done event on the way); tool calls count once their
    item is done; usage and stop reason come from the terminal response event, if any."""
    items: dict[int, dict[str, Any]] = {}
    final = None
    for event in events:
        data = json.loads(sse_data(event))
        kind = data["type"]
        if kind == "response.output_item.added":
            items[data["output_index"]] = {"item": data["item"], "done": None, "text": {}, "summary": {}, "input": ""}
            continue
        if kind in RESPONSES_TERMINAL:
            final = data["response"]
            continue
        if "output_index" not in data:
            continue
        state = items[data["output_index"]]
        item_id = data["item"]["id"] if kind == "response.output_item.done" else data["item_id"]
        assert item_id == state["item"]["id"], kind
        if kind == "response.output_text.delta":
            state["text"][data["content_index"]] = state["text"].get(data["content_index"], "") + data["delta"]
        elif kind == "response.output_text.done":
            assert state["text"].get(data["content_index"], "") == data["text"]
        elif kind == "response.reasoning_summary_text.delta":
            state["summary"][data["summary_index"]] = state["summary"].get(data["summary_index"], "") + data["delta"]
        elif kind in ("response.reasoning_summary_text.done", "response.reasoning_summary_part.done"):
            text = data["text"] if "text" in data else data["part"]["text"]
            assert state["summary"].get(data["summary_index"], "") == text
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            state["input"] += data["delta"]
        elif kind == "response.function_call_arguments.done":
            assert state["input"] == data["arguments"]
        elif kind == "response.custom_tool_call_input.done":
            assert state["input"] == data["input"]
        elif kind == "response.output_item.done":
            state["done"] = data["item"]
    tool_calls: list[dict[str, Any]] = []
    thoughts: list[dict[str, str]] = []
    answer = ""
    for index in sorted(items):
        state = items[index]
        item = state["item"]
        if item["type"] == "reasoning":
            thoughts += [{"content": state["summary"][i], "source": "reasoning_summary"} for i in sorted(state["summary"])]
        elif item["type"] == "message":
            said = "".join(state["text"][i] for i in sorted(state["text"]))
            if item.get("phase") == "commentary":
                thoughts.append({"content": said, "source": "commentary"})
            else:
                answer += said
        elif item["type"] in ("function_call", "custom_tool_call") and state["done"] is not None:
            tool_calls.append({"id": item["call_id"], "name": item["name"], "input": state["input"]})
    return {"usage": responses_usage(final["usage"]) if final else None, "tool_calls": tool_calls,
            "thoughts": thoughts, "stop_reason": final["status"] if final else None, "text": answer,
            "final": final, "done_items": [items[i]["done"] for i in sorted(items) if items[i]["done"] is not None]}


# ---------------------------------------------------------------- tests

def test_corpus_covers_the_required_scenarios() -> None:
    apis = ("anthropic", "openai_chat", "openai_responses")
    assert not [p for p in FIXTURES_DIR.iterdir() if p.is_dir() and p.name not in apis]
    required = {
        "anthropic": ["simple_text", "multiturn_image", "thinking", "redacted_thinking", "tool_use", "parallel_tool_use",
                      "tool_result", "cached_tokens", "max_tokens", "web_search", "error_midstream", "cut_stream",
                      "http_400", "http_401", "http_429", "http_500", "http_529"],
        "openai_chat": ["simple_text", "multiturn_parts", "tool_call", "parallel_tool_calls", "tool_result",
                        "cached_tokens", "reasoning_usage", "reasoning_content", "refusal", "length", "logprobs",
                        "error_midstream", "cut_stream", "http_400", "http_401", "http_429", "http_500", "http_503"],
        "openai_responses": ["simple_text", "input_items", "reasoning_summary", "commentary", "function_call",
                             "parallel_function_calls", "custom_tool_call", "cached_tokens", "tool_result",
                             "conversation", "max_output_tokens", "failed_midstream", "error_midstream", "cut_stream",
                             "http_400", "http_401", "http_429", "http_500"],
    }
    assert set(NAMES) >= {f"{a}/{n}" for a, ns in required.items() for n in ns}


@pytest.mark.parametrize("name", NAMES)
def test_fixture_layout(name: str) -> None:
    fx = FIXTURES[name]
    assert set(fx) == {"description", "request", "blocking", "streaming", "expect"}
    assert fx["description"] and "stream" not in fx["request"]
    keys = {"usage", "prompt", "tool_calls", "thoughts", "stop_reason"}
    if api(name) == "openai_responses":
        keys.add("correlating_tool_call_id")
    assert set(fx["expect"]) == keys
    assert parts(name), "a fixture needs a blocking or a streaming part"
    for mode, part in parts(name):
        assert isinstance(part["status"], int)
        assert all(k == k.lower() for k in part["headers"]), "header names are lower-case"
        assert not {"content-length", "transfer-encoding"} & set(part["headers"])
        if "events" in part:
            assert mode == "streaming" and is_success(part) and set(part) == {"status", "headers", "events", "abort"}
            assert part["headers"]["content-type"].startswith("text/event-stream")
        else:
            assert set(part) == {"status", "headers", "body"}
            assert part["headers"]["content-type"] == "application/json"
    request_id = "request-id" if api(name) == "anthropic" else "x-request-id"
    assert all(request_id in part["headers"] for _, part in parts(name))


@pytest.mark.parametrize("name", NAMES)
def test_bodies_validate_with_sdk_types(name: str) -> None:
    for _, part in parts(name):
        if "body" not in part:
            continue
        body = part["body"]
        if is_success(part) and api(name) == "openai_responses":
            check_responses_extras(Response.model_validate(body))
        elif is_success(part):
            model = Message if api(name) == "anthropic" else ChatCompletion
            check_extras(name, model.model_validate(body))
        elif api(name) == "anthropic":
            err = ErrorResponse.model_validate(body)
            check_extras(name, err)
            assert body["request_id"] == part["headers"]["request-id"]
        else:
            assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
            check_extras(name, ErrorObject.model_validate(body["error"]))


@pytest.mark.parametrize("name", [n for n in STREAMED if api(n) == "anthropic"])
def test_anthropic_events_validate(name: str) -> None:
    part = FIXTURES[name]["streaming"]
    for event in part["events"]:
        head, data = event[:-2].split("\n")
        kind = head.removeprefix("event: ")
        assert head == f"event: {kind}" and data.startswith("data: ") and event.endswith("\n\n")
        payload = json.loads(data[6:])
        assert payload["type"] == kind
        if kind == "ping":
            assert data == 'data: {"type": "ping"}'  # the API's only non-compact event
            continue
        assert data[6:] == compact(payload), "Anthropic sends compact JSON"
        if kind == "error":
            check_extras(name, ErrorResponse.model_validate(payload))
        else:
            check_extras(name, ANTHROPIC_EVENT.validate_python(payload))
    kinds = [json.loads(sse_data(e))["type"] for e in part["events"]]
    assert kinds[0] == "message_start"
    if part["abort"] or kinds[-1] == "error":
        assert "message_stop" not in kinds
    else:
        assert kinds[-2:] == ["message_delta", "message_stop"]


@pytest.mark.parametrize("name", [n for n in STREAMED if api(n) == "openai_chat"])
def test_openai_chunks_validate(name: str) -> None:
    part = FIXTURES[name]["streaming"]
    events = part["events"]
    payloads = [sse_data(e) for e in events]
    assert all(e == f"data: {p}\n\n" for e, p in zip(events, payloads))
    chunks = []
    for payload in payloads:
        if payload == "[DONE]":
            continue
        data = json.loads(payload)
        assert payload == compact(data), "OpenAI sends compact JSON"
        if "error" in data:
            check_extras(name, ErrorObject.model_validate(data["error"]))
            continue
        keys = list(data)
        assert keys == [k for k in OPENAI_CHUNK_KEYS if k in keys], f"key order {keys}"
        assert "usage" in data, "recorded with stream_options.include_usage=true"
        check_extras(name, ChatCompletionChunk.model_validate(data))
        chunks.append(data)
    usage_chunks = [c for c in chunks if c["usage"] is not None]
    assert all(c["choices"] == [] for c in usage_chunks)
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    if part["abort"] or payloads[-1].startswith('{"error":'):
        assert "[DONE]" not in payloads and not usage_chunks
    else:
        assert payloads[-1] == "[DONE]" and chunks[-1] is usage_chunks[0] and len(usage_chunks) == 1


@pytest.mark.parametrize("name", [n for n in STREAMED if api(n) == "openai_responses"])
def test_responses_events_validate(name: str) -> None:
    part = FIXTURES[name]["streaming"]
    payloads = []
    for i, event in enumerate(part["events"]):
        head, data = event[:-2].split("\n")
        kind = head.removeprefix("event: ")
        assert head == f"event: {kind}" and data.startswith("data: ") and event.endswith("\n\n")
        payload = json.loads(data[6:])
        assert data[6:] == compact(payload), "OpenAI sends compact JSON"
        assert list(payload)[:2] == ["type", "sequence_number"] and payload["type"] == kind
        assert payload["sequence_number"] == i, "sequence numbers count events from 0"
        check_responses_extras(RESPONSES_EVENT.validate_python(payload))
        payloads.append(payload)
    kinds = [p["type"] for p in payloads]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    snapshots = [p["response"] for p in payloads if "response" in p]
    assert len({s["id"] for s in snapshots}) == 1 and all(s["status"] == "in_progress" for s in snapshots[:2])
    assert all(s["output"] == [] and s["usage"] is None for s in snapshots[:2])
    terminal = [k for k in kinds if k in RESPONSES_TERMINAL]
    if part["abort"] or kinds[-1] == "error":
        assert not terminal and kinds.count("error") == (0 if part["abort"] else 1)
    else:
        assert terminal == [kinds[-1]] and "error" not in kinds
        final = payloads[-1]["response"]
        assert kinds[-1] == f"response.{final['status']}"
    # Items are announced before their events and finished once, in output order.
    added = [p["output_index"] for p in payloads if p["type"] == "response.output_item.added"]
    done = [p["output_index"] for p in payloads if p["type"] == "response.output_item.done"]
    assert added == list(range(len(added))) and done == added[:len(done)]


def test_responses_requests_use_sdk_parameters() -> None:
    known = set(inspect.signature(Responses.create).parameters)
    for name in NAMES:
        if api(name) == "openai_responses":
            assert set(FIXTURES[name]["request"]) <= known, name


def test_responses_continuation_refers_to_a_recorded_call() -> None:
    """`tool_result` continues `function_call`: its previous_response_id and call_id are that response's."""
    previous = FIXTURES["openai_responses/function_call"]["blocking"]["body"]
    request = FIXTURES["openai_responses/tool_result"]["request"]
    assert request["previous_response_id"] == previous["id"]
    assert correlating_tool_call_id(request) == previous["output"][0]["call_id"]


@pytest.mark.parametrize("name", NAMES)
def test_expect_agrees_with_traffic(name: str) -> None:
    fx = FIXTURES[name]
    expect = fx["expect"]
    if api(name) == "openai_responses":
        assert responses_prompt(fx["request"]) == expect["prompt"]
        assert correlating_tool_call_id(fx["request"]) == expect["correlating_tool_call_id"]
    else:
        assert prompt_of(fx["request"]) == expect["prompt"]
    folds = []
    for mode, part in parts(name):
        if not is_success(part):
            assert expect["usage"] is None and expect["tool_calls"] == [] and expect["stop_reason"] is None
            continue
        if api(name) == "openai_responses":
            folded = fold_responses_stream(part["events"]) if mode == "streaming" else fold_responses_blocking(part["body"])
            final = folded.get("final")
            if final is not None and final["status"] != "failed":
                # The terminal event carries the whole response: exactly the items streamed, folded the same way.
                assert final["output"] == folded["done_items"]
                assert fold_responses_blocking(final) == {k: folded[k] for k in ("usage", "tool_calls", "thoughts",
                                                                                 "stop_reason", "text")}
                if fx["blocking"] is not None:
                    assert final == fx["blocking"]["body"], "same scenario, same response in both modes"
        elif api(name) == "anthropic":
            folded = fold_anthropic_stream(part["events"]) if mode == "streaming" else fold_anthropic_blocking(part["body"])
        else:
            folded = fold_openai_stream(part["events"]) if mode == "streaming" else fold_openai_blocking(part["body"])
        folds.append(folded)
        for key in ("usage", "tool_calls", "thoughts", "stop_reason"):
            assert folded[key] == expect[key], f"{mode}: {key}"
    if len(folds) == 2:
        assert folds[0]["text"] == folds[1]["text"], "blocking and streaming answers differ"


@pytest.mark.parametrize("name", NAMES)
def test_error_parts_are_the_required_ones(name: str) -> None:
    """Error statuses pair with the provider's error type; 429s say when to retry."""
    for _, part in parts(name):
        if is_success(part):
            continue
        status = part["status"]
        if api(name) == "anthropic":
            assert part["body"]["error"]["type"] == {
                400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}[status]
        else:
            assert status in (400, 401, 429, 500, 503)
        if status == 429:
            assert int(part["headers"]["retry-after"]) > 0
