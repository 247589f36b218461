"""Secrets in the fields of a request a client chooses besides its prompt (issue 15, items 2 and 6):
the model, the User-Agent, the session header and a tool result's call id are masked in the
interception's row, the API, both logs and /metrics; a gateway token in the query string never goes
upstream (through real gunicorn with 2 gevent workers); a compressed answer is dumped inflated and masked."""

from __future__ import annotations

import gzip
import sqlite3

import orjson
import pytest
import requests

from bridge.masking import mask_secret
from tests.conftest import A_TOKEN, ANTHROPIC_KEY, OPENAI_KEY, TOKEN_SHAPE, LoggedGateway, start_logged_gateway
from tests.harness import wait_for_records, wait_until

FIELDS = ("model", "user_agent", "client_session_id", "correlating_tool_call_id")


@pytest.fixture(scope="module")
def world(start_gateway, upstream, tmp_path_factory) -> LoggedGateway:
    """A gateway with structured logging (JSON file and human log) and a store of its own."""
    return start_logged_gateway(start_gateway, upstream, tmp_path_factory.mktemp("field-masking"))


def test_secrets_in_client_chosen_fields_are_masked_in_store_api_logs_and_metrics(world):
    bob = world.bob
    messages = [
        {"role": "user", "content": "what is 6 x 7?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": bob, "type": "function", "function": {"name": "multiply", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": bob, "content": "42"},
    ]
    response = requests.post(
        f"{world.gateway.base('openai')}/v1/chat/completions", timeout=30,
        json={"model": f"gpt-x-{bob}", "messages": messages},
        headers={"Authorization": f"Bearer {world.alice}", "X-Fixture": "openai_chat/simple_text",
                 "User-Agent": f"cli key={bob} {OPENAI_KEY}", "X-Session-Id": ANTHROPIC_KEY})
    assert response.status_code == 200, response.text
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    secrets = (bob, ANTHROPIC_KEY, OPENAI_KEY)

    wait_for_records(world.database, [interception_id])
    with sqlite3.connect(world.database) as connection:
        row = connection.execute(f"SELECT {', '.join(FIELDS)} FROM aibridge_interceptions WHERE id = ?",
                                 (interception_id,)).fetchone()
    stored = dict(zip(FIELDS, row))
    # masked, and still telling which model, agent and tool call it was
    assert stored == {"model": f"gpt-x-{mask_secret(bob)}",
                      "user_agent": f"cli key={mask_secret(bob)} {mask_secret(OPENAI_KEY)}",
                      "client_session_id": mask_secret(ANTHROPIC_KEY),
                      "correlating_tool_call_id": mask_secret(bob)}

    shown = requests.get(f"{world.gateway.url}/api/v2/aibridge/interceptions/{interception_id}", timeout=30,
                         headers={"Authorization": f"Bearer {world.alice}"})
    assert shown.status_code == 200, shown.text
    assert shown.json()["model"] == stored["model"]

    logged_start = orjson.loads(world.logged_line("interception_start", interception_id))
    assert logged_start["user_agent"] == stored["user_agent"]
    wait_until(lambda: interception_id in world.gateway.log(), "the human log line")

    scrape = ""
    for _ in range(4):  # whichever worker answers
        scrape += requests.get(f"{world.gateway.url}/metrics", timeout=30).text
    assert f'model="{stored["model"]}"' in scrape  # served: a label of its own, masked

    for source, text in (("the API", shown.text), ("the JSON log", world.json_log.read_text()),
                         ("the human log", world.gateway.log()), ("/metrics", scrape)):
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {source}"


@pytest.mark.parametrize("method, path", [("POST", "v1/chat/completions"), ("GET", "v1/models")])
def test_a_gateway_token_in_the_query_string_does_not_reach_the_upstream(world, upstream, method, path):
    """An intercepted and a passthrough route: the parameter holding the token is dropped, the rest kept."""
    before = len(upstream.requests)
    response = requests.request(
        method, f"{world.gateway.base('openai')}/{path}?api_key={world.bob}&keep=1&other=x%20y", timeout=30,
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None,
        headers={"Authorization": f"Bearer {world.alice}", "X-Fixture": "openai_chat/simple_text"})
    assert response.status_code < 500, response.text
    [sent] = upstream.requests[before:]
    assert not TOKEN_SHAPE.search(sent.path), sent.path
    assert sent.path.endswith("?keep=1&other=x%20y"), sent.path


# -- a compressed answer is dumped inflated, so that its secrets are masked (issue 15 item 6) --------


@pytest.mark.parametrize("streamed", [False, True])
def test_a_gzip_answer_is_dumped_inflated_and_masked(tmp_path, streamed):
    from bridge.dump import Dumper

    body = f'{{"content": "the key is {ANTHROPIC_KEY}, the token {A_TOKEN}"}}'.encode() * 3
    compressed = gzip.compress(body)
    headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
    dump = Dumper(str(tmp_path), "openai", [ANTHROPIC_KEY]).begin("id-1", "POST", "http://upstream/v1", {}, b"{}", [])
    if streamed:  # split inside the compressed bytes: inflated piece by piece
        relayed = b"".join(dump.stream(iter([compressed[:20], compressed[20:]]), 200, headers))
        assert relayed == compressed  # the client gets the bytes as sent
    else:
        dump.whole(200, headers, compressed)
    dumped = (tmp_path / "openai" / "id-1.response").read_text()
    assert "X-Bridge-Dump: body inflated from gzip" in dumped
    assert dumped.endswith(body.decode().replace(ANTHROPIC_KEY, mask_secret(ANTHROPIC_KEY))
                           .replace(A_TOKEN, mask_secret(A_TOKEN)))
