"""Hostile and large bodies (issue 15, items 7, 8 and part of 9), through gunicorn with one gevent worker.

- A gzip bomb from the upstream (1 MB of gzip inflating to 1 GiB, sent although the gateway asks for
  identity) is relayed as it came, blocking and streamed: the client gets the compressed bytes and
  the Content-Encoding, the worker's peak memory stays bounded, and so does the dump.
- A compressed ordinary answer still works with the SDKs (their HTTP client inflates it) and is
  recorded.
- A 5 MB prompt, a 200 kB tool input and a 200 kB thought are recorded and logged (both logs) cut,
  with a marker saying how much was cut.
- A stream without length or chunks that the upstream closes before the provider's final event
  ends with the provider's error event, and its record says it was cut.
- A request nested 1,000 levels deep is relayed and dumped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anthropic
import orjson
import pytest
import requests

from bridge.content_coding import DECODED_MAX
from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.faultyupstream import BOMB_INFLATED, CloseDelimited, FaultyUpstream, GzipBomb, Gzipped, Raw, gzip_bomb
from tests.harness import json_log_line, wait_for_records, wait_until
from tests.sdk_calls import anthropic_client, openai_client

ID_HEADER = "X-AIBridge-Interception-Id"
CHAT = {"model": "gpt-4o-2024-08-06", "messages": [{"role": "user", "content": "Say hello in French."}]}
MESSAGES = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Write a haiku about the sea."}]}
RESPONSES = {"model": "gpt-5", "input": "Say hello in French."}
WORKER_PEAK_MAX_KB = 400 * 1024  # a resource bound: the bomb inflates to 1 GiB; the gateway may read 32 MiB of it
RECORDED_TEXT_MAX = 64 * 1024  # CODER_AIBRIDGE_MAX_RECORDED_TEXT's default


@pytest.fixture(scope="module")
def faulty():
    server = FaultyUpstream().start()
    gzip_bomb()  # made once, before any test times a request
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(faulty):
    faulty.reset_state()


@pytest.fixture(scope="module")
def dump_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dumps")


@pytest.fixture(scope="module")
def json_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs") / "bridge.jsonl"


@pytest.fixture(scope="module")
def gateway(start_gateway, faulty, dump_dir, json_log):
    p = "CODER_AIBRIDGE_PROVIDER_"
    return start_gateway({
        "CODER_AIBRIDGE_ENABLED": "true",
        f"{p}0_TYPE": "openai", f"{p}0_NAME": "oai", f"{p}0_KEY": OPENAI_KEY, f"{p}0_BASE_URL": f"{faulty.url}/v1/",
        f"{p}0_MAX_RETRIES": "0",
        f"{p}1_TYPE": "anthropic", f"{p}1_NAME": "ant", f"{p}1_KEY": ANTHROPIC_KEY, f"{p}1_BASE_URL": f"{faulty.url}/",
        f"{p}1_MAX_RETRIES": "0",
        "CODER_AIBRIDGE_DUMP_DIR": str(dump_dir),
        "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",  # both logs: the JSON one, the human one in the gateway's
        "CODER_LOGGING_JSON": str(json_log),
        "CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT": "20s",
    }, workers=1)


def _post(gateway, identities, route: str, body: dict | bytes, **kwargs) -> requests.Response:
    provider, path = route.split(":")
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Authorization": f"Bearer {identities.alice}", "Content-Type": "application/json"}
    if provider == "ant":
        headers["anthropic-version"] = "2023-06-01"
    return requests.post(f"{gateway.base(provider)}/{path}", data=data, headers=headers, timeout=60, **kwargs)


def _record(database, interception_id: str) -> dict:
    record = wait_for_records(database, [interception_id]).get(interception_id)
    assert record is not None, f"interception {interception_id} was not recorded and ended"
    return {**record, "metadata": json.loads(record["metadata"])}


def _logged(gateway, json_log: Path, record_type: str, interception_id: str) -> tuple[dict, str]:
    """The record as the JSON log has it, and the human log's line of it."""
    entry = orjson.loads(json_log_line(json_log, record_type, interception_id))
    lines = wait_until(lambda: [line for line in gateway.log().splitlines()
                                if interception_id in line and record_type in line], f"the human {record_type} line")
    return entry, lines[0]


def _undecoded(answer: requests.Response, most: int) -> bytes:
    """The answer's body as the gateway sent it (not inflated by the client), read up to ``most`` bytes."""
    data = answer.raw.read(most, decode_content=False)
    answer.close()
    return data


# ---------------------------------------------------------------- item 7: compressed answers

@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_a_gzip_bomb_is_relayed_compressed_and_never_inflated_whole(gateway, faulty, identities, database,
                                                                   dump_dir, stream):
    faulty.plan(GzipBomb(stream=stream))
    answer = _post(gateway, identities, "oai:v1/chat/completions", {**CHAT, "stream": stream}, stream=True)
    bomb = gzip_bomb()
    assert answer.status_code == 200
    assert answer.headers.get("Content-Encoding") == "gzip"
    assert _undecoded(answer, len(bomb) + 1) == bomb  # byte for byte what the upstream sent
    interception_id = answer.headers[ID_HEADER]

    assert gateway.worker_status_kb("VmHWM") < WORKER_PEAK_MAX_KB
    record = _record(database, interception_id)
    assert "inflates to more than" in record["metadata"]["record_incomplete"]
    assert "error" not in record["metadata"]
    dumped = dump_dir / "oai" / f"{interception_id}.response"
    # Dumped inflated so that masking sees the text, but only as far as the record reads it.
    assert dumped.stat().st_size < DECODED_MAX + 64 * 1024 < BOMB_INFLATED // 16


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_a_compressed_answer_reaches_the_sdk_and_is_recorded(gateway, faulty, identities, database, stream):
    faulty.plan(Gzipped())
    raw = _post(gateway, identities, "oai:v1/chat/completions", {**CHAT, "stream": stream}, stream=True)
    assert raw.headers.get("Content-Encoding") == "gzip"
    assert _undecoded(raw, 1 << 20)[:2] == b"\x1f\x8b"  # gzip's magic: relayed compressed

    faulty.plan(Gzipped())
    client = openai_client(f"{gateway.base('oai')}/v1", identities.alice)
    if stream:
        chunks = list(client.chat.completions.create(**CHAT, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        interception_id = None
    else:
        answer = client.chat.completions.with_raw_response.create(**CHAT)
        text = answer.parse().choices[0].message.content
        interception_id = answer.headers[ID_HEADER]
    assert "Bonjour" in text
    if interception_id:
        record = _record(database, interception_id)
        assert record["token_usages"] and record["token_usages"][0]["output_tokens"] > 0
        assert "record_incomplete" not in record["metadata"]


def test_a_compressed_stream_is_recorded_and_the_anthropic_sdk_reads_it(gateway, faulty, identities, database):
    faulty.plan(Gzipped())
    client = anthropic_client(gateway.base("ant"), identities.alice)
    with client.messages.with_streaming_response.create(**MESSAGES, stream=True) as answer:
        assert answer.headers.get("Content-Encoding") == "gzip"
        interception_id = answer.headers[ID_HEADER]
        kinds = [event.type for event in answer.parse()]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    record = _record(database, interception_id)
    assert record["token_usages"][0]["output_tokens"] > 0
    assert "error" not in record["metadata"] and "record_incomplete" not in record["metadata"]


# ---------------------------------------------------------------- item 8: long texts are recorded cut

def test_a_long_prompt_is_recorded_and_logged_cut_with_a_marker(gateway, faulty, identities, database, json_log):
    prompt = "0123456789abcdef" * (5 * 1024 * 1024 // 16)  # 5 MiB
    answer = _post(gateway, identities, "oai:v1/chat/completions",
                   {**CHAT, "messages": [{"role": "user", "content": prompt}]})
    assert answer.status_code == 200
    assert len(faulty.requests[-1].body) > len(prompt)  # the upstream got all of it
    interception_id = answer.headers[ID_HEADER]
    stored = _record(database, interception_id)["user_prompts"][0]["prompt"]
    assert stored == prompt[:RECORDED_TEXT_MAX] + f"…[truncated: {(len(prompt) - RECORDED_TEXT_MAX) / 1024 ** 2:.1f} MiB more]"
    entry, human = _logged(gateway, json_log, "prompt_usage", interception_id)
    assert entry["prompt"] == stored
    assert "…[truncated: 4.9 MiB more]" in human and len(human) < RECORDED_TEXT_MAX + 4096


def test_a_long_tool_input_is_recorded_and_logged_cut_as_json_text(gateway, faulty, identities, database, json_log):
    arguments = json.dumps({"path": "big.txt", "content": "x" * 200_000})
    completion = {
        "id": "chatcmpl-long-tool", "object": "chat.completion", "created": 1, "model": CHAT["model"],
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "write", "arguments": arguments}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    faulty.plan(Raw(200, orjson.dumps(completion)))
    answer = _post(gateway, identities, "oai:v1/chat/completions", CHAT)
    assert answer.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == arguments
    interception_id = answer.headers[ID_HEADER]
    stored = _record(database, interception_id)["tool_usages"][0]["input"]
    kept = json.loads(stored)  # still JSON text: a JSON string of the start of the arguments
    more = (len(arguments) - RECORDED_TEXT_MAX) / 1024
    assert kept == arguments[:RECORDED_TEXT_MAX] + f"…[truncated: {more:.1f} KiB more]"
    entry, human = _logged(gateway, json_log, "tool_usage", interception_id)
    assert entry["input"] == stored  # the same JSON text
    assert "…[truncated:" in human and len(human) < RECORDED_TEXT_MAX + 4096


def test_a_long_thought_is_recorded_and_logged_cut_with_a_marker(gateway, faulty, identities, database, json_log):
    thinking = "let me think. " * (200_000 // 14)
    message = {
        "id": "msg_long_thought", "type": "message", "role": "assistant", "model": MESSAGES["model"],
        "content": [{"type": "thinking", "thinking": thinking, "signature": "c2lnbmF0dXJl"},
                    {"type": "text", "text": "The sea."}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    faulty.plan(Raw(200, orjson.dumps(message)))
    answer = _post(gateway, identities, "ant:v1/messages", MESSAGES)
    assert answer.json()["content"][0]["thinking"] == thinking  # relayed whole
    interception_id = answer.headers[ID_HEADER]
    [stored] = [thought["content"] for thought in _record(database, interception_id)["model_thoughts"]]
    more = (len(thinking) - RECORDED_TEXT_MAX) / 1024
    assert stored == thinking[:RECORDED_TEXT_MAX] + f"…[truncated: {more:.1f} KiB more]"
    entry, human = _logged(gateway, json_log, "model_thought", interception_id)
    assert entry["content"] == stored
    assert "…[truncated:" in human and len(human) < RECORDED_TEXT_MAX + 4096


# ---------------------------------------------------------------- item 9: cut close-delimited streams

ROUTES = [("oai:v1/chat/completions", CHAT), ("ant:v1/messages", MESSAGES), ("oai:v1/responses", RESPONSES)]


@pytest.mark.parametrize("route,body", ROUTES, ids=["chat", "messages", "responses"])
def test_a_cut_close_delimited_stream_ends_with_the_providers_error_event(gateway, faulty, identities, database,
                                                                           route, body):
    faulty.plan(CloseDelimited(cut_after=3))
    answer = _post(gateway, identities, route, {**body, "stream": True})
    assert answer.status_code == 200
    last = answer.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert b"closed the stream before its final event" in last
    assert last.startswith(b"event: error\n") or (route.startswith("oai:v1/chat") and b'"error"' in last)
    record = _record(database, answer.headers[ID_HEADER])
    assert "closed the stream before its final event" in record["metadata"]["error"]

    faulty.plan(CloseDelimited())  # the whole stream, then the connection's end: a clean end
    whole = _post(gateway, identities, route, {**body, "stream": True})
    assert b"closed the stream" not in whole.content
    assert "error" not in _record(database, whole.headers[ID_HEADER])["metadata"]


def test_the_anthropic_sdk_raises_on_a_cut_close_delimited_stream(gateway, faulty, identities):
    faulty.plan(CloseDelimited(cut_after=3))
    client = anthropic_client(gateway.base("ant"), identities.alice)
    with pytest.raises(anthropic.APIStatusError, match="closed the stream before its final event"):
        list(client.messages.create(**MESSAGES, stream=True))


# ---------------------------------------------------------------- item 9: deep bodies are dumped

def test_a_body_nested_1000_levels_deep_is_relayed_and_dumped(gateway, faulty, identities, dump_dir):
    depth = 1000
    body = orjson.dumps(CHAT)[:-1] + b',"metadata_deep":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    answer = _post(gateway, identities, "oai:v1/chat/completions", body)
    assert answer.status_code == 200
    dumped = json.loads((dump_dir / "oai" / f"{answer.headers[ID_HEADER]}.request.json").read_text())
    assert dumped["body_text"] == body.decode()
    assert os.path.getsize(dump_dir / "oai" / f"{answer.headers[ID_HEADER]}.response") > 0
