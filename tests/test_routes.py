"""Routes, passthrough, and the gateway's own errors in each provider's shape (SPEC §4, §5)."""

from __future__ import annotations

import http.client
import json

import anthropic
import openai
import pytest
import requests

from tests.conftest import CORP_KEY, OPENAI_KEY, TEAM_B_KEY, provider_env
from tests.harness import free_port
from tests.sdk_calls import anthropic_client, call_anthropic, call_openai, call_responses, load_fixtures, openai_client

ANTHROPIC_REQUEST = dict(load_fixtures("anthropic"))["anthropic/simple_text"]["request"]
OPENAI_REQUEST = dict(load_fixtures("openai_chat"))["openai_chat/simple_text"]["request"]


def _auth(identities) -> dict[str, str]:
    return {"Authorization": f"Bearer {identities.alice}"}


@pytest.mark.parametrize("provider, path, upstream_path", [
    ("openai", "v1/models", "/v1/models"),
    ("openai", "v1/models/gpt-4o", "/v1/models/gpt-4o"),
    ("anthropic", "v1/models", "/v1/models"),
    ("anthropic", "v1/models/claude-sonnet-4-5", "/v1/models/claude-sonnet-4-5"),
    ("team-b", "v1/models", "/team-b/v1/models"),
    ("anthropic-corp", "v1/models", "/corp/anthropic/v1/models"),
    ("openai", "v1/responses/resp_68dd0051ae685fc481432a8ebf51b4c3a6e6f6b8a489d11f", "/v1/responses/resp_68dd0051ae685fc481432a8ebf51b4c3a6e6f6b8a489d11f"),
])
def test_passthrough_routes(provider, path, upstream_path, gateway, upstream, identities):
    headers = {**_auth(identities), "anthropic-version": "2023-06-01"} if "anthropic" in provider else _auth(identities)
    response = requests.get(f"{gateway.base(provider)}/{path}?limit=5", headers=headers, timeout=10)
    assert response.status_code == 200
    assert "X-AIBridge-Interception-Id" not in response.headers  # passthrough is not intercepted
    sent = upstream.requests[-1]
    assert sent.path == f"{upstream_path}?limit=5"


def test_count_tokens_passthrough(gateway, upstream, identities):
    client = anthropic_client(gateway.base("anthropic"), identities.alice)
    count = client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens > 0
    assert upstream.requests[-1].path == "/v1/messages/count_tokens"


def test_openai_sdk_lists_models_through_the_gateway(gateway, identities):
    models = openai_client(f"{gateway.base('openai')}/v1", identities.alice).models.list()
    assert len(list(models)) > 0


@pytest.mark.parametrize("method, provider, path", [
    ("GET", "openai", "v1/chat/completions"),
    ("POST", "openai", "v1/embeddings"),
    ("POST", "openai", "chat/completions"),
    ("POST", "anthropic", "v1/complete"),
    ("DELETE", "anthropic", "v1/messages"),
    ("GET", "openai", "v1/responses"),
])
def test_unsupported_routes_are_404_naming_the_route(method, provider, path, gateway, upstream, identities):
    before = len(upstream.requests)
    response = requests.request(method, f"{gateway.base(provider)}/{path}", headers=_auth(identities), timeout=10)
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert message == f"route not supported: {method} /{path}"
    assert len(upstream.requests) == before


@pytest.mark.parametrize("raw_path", [
    "/api/v2/aibridge/openai/v1/models/../../../admin",
    "/api/v2/aibridge/openai/v1/models/%2e%2e/%2e%2e/secret",
    "/api/v2/aibridge/openai/v1/models//x",
    "/api/v2/aibridge/openai/v1/models/http://evil.example/",
])
def test_path_tricks_do_not_leave_the_allow_list(raw_path, gateway, upstream, identities):
    before = len(upstream.requests)
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.request("GET", raw_path, headers=_auth(identities))
    response = connection.getresponse()
    body = response.read()
    connection.close()
    reached = upstream.requests[before:]
    assert response.status == 404 or all(r.path.startswith("/v1/models/") and ".." not in r.path for r in reached), body
    assert all(r.path.startswith("/v1/models") for r in reached)


def test_unknown_provider_is_404_naming_it(gateway, identities):
    response = requests.post(f"{gateway.url}/api/v2/aibridge/nosuch/v1/messages", headers=_auth(identities), json={}, timeout=10)
    assert response.status_code == 404
    assert "nosuch" in response.json()["error"]["message"]


def test_gateway_disabled_answers_404(start_gateway, upstream, identities):
    env = {**provider_env(upstream), "CODER_AIBRIDGE_ENABLED": "false"}
    gateway = start_gateway(env, workers=1)
    client = anthropic_client(gateway.base("anthropic"), identities.alice, "anthropic/simple_text")
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(**ANTHROPIC_REQUEST)
    assert raised.value.message == "AI Gateway is disabled" or "AI Gateway is disabled" in str(raised.value.body)
    assert "AI Gateway is disabled" in gateway.log()  # and a warning at startup


def test_two_instances_of_one_type_use_their_own_base_url_and_key(gateway, upstream, identities):
    result = call_openai(openai_client(f"{gateway.base('team-b')}/v1", identities.alice, "openai_chat/simple_text"),
                         OPENAI_REQUEST, stream=False)
    assert "error" not in result
    sent = upstream.requests[-1]
    assert sent.path == "/team-b/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {TEAM_B_KEY}"

    result = call_anthropic(anthropic_client(gateway.base("anthropic-corp"), identities.alice, "anthropic/simple_text"),
                            ANTHROPIC_REQUEST, stream=True)
    assert "error" not in result
    sent = upstream.requests[-1]
    assert sent.path == "/corp/anthropic/v1/messages"
    assert sent.headers["x-api-key"] == CORP_KEY


@pytest.mark.parametrize("body, field", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b"\xff\xfe{}", None),
    (json.dumps({"messages": []}).encode(), "model"),
    (json.dumps({"model": 42, "messages": []}).encode(), "model"),
    (json.dumps({"model": "m", "messages": [], "stream": "yes"}).encode(), "stream"),
    (json.dumps({"model": "m", "messages": "hello"}).encode(), "messages"),
    (json.dumps({"model": "m", "messages": [], "stream": True, "stream_options": []}).encode(), "stream_options"),
])
def test_bad_openai_bodies_get_400_in_openai_shape(body, field, gateway, upstream, identities):
    before = len(upstream.requests)
    response = requests.post(f"{gateway.base('openai')}/v1/chat/completions", data=body, timeout=10,
                             headers={**_auth(identities), "Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if field:
        assert error["message"].startswith(f"{field}:") and error["param"] == field
    assert len(upstream.requests) == before


def test_bad_anthropic_body_raises_the_sdks_bad_request_error(gateway, identities):
    client = anthropic_client(gateway.base("anthropic"), identities.alice)
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages="hello")  # type: ignore[arg-type]
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert "messages" in raised.value.message


def test_body_over_the_limit_is_413_without_reaching_upstream(start_gateway, upstream, identities):
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_MAX_BODY_SIZE": "1KiB"}, workers=1)
    before = len(upstream.requests)
    big = {**OPENAI_REQUEST, "messages": [{"role": "user", "content": "x" * 5000}]}
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(f"{gateway.base('openai')}/v1", identities.alice).chat.completions.create(**big)
    assert raised.value.status_code == 413
    # a chunked body (no Content-Length) is cut off as well
    chunks = iter([json.dumps(big).encode()[i:i + 512] for i in range(0, 6000, 512)])
    response = requests.post(f"{gateway.base('anthropic')}/v1/messages", data=chunks, headers=_auth(identities), timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert len(upstream.requests) == before
    # the worker still serves
    assert "error" not in call_openai(openai_client(f"{gateway.base('openai')}/v1", identities.alice, "openai_chat/simple_text"),
                                      OPENAI_REQUEST, stream=False)


def test_unreachable_upstream_is_502_in_provider_shape(start_gateway, upstream, identities):
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = start_gateway({"CODER_AIBRIDGE_ENABLED": "true", "CODER_AIBRIDGE_OPENAI_KEY": "sk-dead-0000000000000000",
                             "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{dead}/v1/", "CODER_AIBRIDGE_ANTHROPIC_KEY": "sk-ant-dead-000000000",
                             "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": dead}, workers=1)
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(f"{gateway.base('openai')}/v1", identities.alice).chat.completions.create(**OPENAI_REQUEST, stream=True)
    assert raised.value.status_code == 502
    assert raised.value.response.headers["X-AIBridge-Interception-Id"]
    with pytest.raises(anthropic.APIStatusError) as raised:
        anthropic_client(gateway.base("anthropic"), identities.alice).messages.create(**ANTHROPIC_REQUEST)
    assert raised.value.status_code == 502
    assert raised.value.body["error"]["type"] == "api_error"
    assert "sk-dead" not in raised.value.response.text


def test_slow_upstream_is_504_before_the_first_byte_and_an_error_event_after(start_gateway, upstream, identities):
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_UPSTREAM_READ_TIMEOUT": "1s"}, workers=1)
    client = anthropic_client(gateway.base("anthropic"), identities.alice, "anthropic/simple_text", **{"X-Fake-Stall-Ms": "3000"})
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.create(**ANTHROPIC_REQUEST)
    assert raised.value.status_code == 504
    assert raised.value.body["error"]["type"] == "timeout_error"

    client = openai_client(f"{gateway.base('openai')}/v1", identities.alice, "openai_chat/simple_text", **{"X-Fake-Delay-Ms": "2500"})
    result = call_openai(client, OPENAI_REQUEST, stream=True)
    assert len(result["chunks"]) == 1  # the first event came, then the upstream stalled
    assert result["error"][0] == "APIError"
    assert "stopped sending" in str(result["error"][2])

    # the Responses API reports it with its own error event, next in sequence
    client = openai_client(f"{gateway.base('openai')}/v1", identities.alice, "openai_responses/simple_text",
                           **{"X-Fake-Delay-Ms": "2500"})
    request = dict(load_fixtures("openai_responses"))["openai_responses/simple_text"]["request"]
    events = call_responses(client, request, True)["events"]
    assert len(events) == 2
    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_timeout"
    assert "stopped sending" in events[-1]["message"]
    assert events[-1]["sequence_number"] == events[0]["sequence_number"] + 1


def test_responses_get_by_id_and_conversations_pass_through(gateway, upstream, identities):
    client = openai_client(f"{gateway.base('openai')}/v1", identities.alice)
    conversation = client.conversations.create(metadata={"topic": "audit"})
    assert conversation.id and upstream.requests[-1].path == "/v1/conversations"
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    fixture = dict(load_fixtures("openai_responses"))["openai_responses/simple_text"]
    stored = client.responses.retrieve(fixture["blocking"]["body"]["id"])
    assert stored.model_dump() == openai_client(f"{upstream.url}/v1", "k").responses.retrieve(stored.id).model_dump()


def test_background_responses_get_501_in_openai_shape(gateway, upstream, identities):
    before = len(upstream.requests)
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client(f"{gateway.base('openai')}/v1", identities.alice).responses.create(
            model="gpt-5", input="hi", background=True)
    assert raised.value.status_code == 501
    assert raised.value.body["param"] == "background"
    assert len(upstream.requests) == before


@pytest.mark.parametrize("status", [200, 302, 404, 204, 304])
def test_relayed_headers_go_out_as_the_upstream_sent_them(status):
    """A relative or non-ASCII Location is not rewritten; a 204 still loses its Content-Length, a 304
    its entity headers."""
    from werkzeug.test import create_environ

    from bridge.proxy import RelayResponse

    headers = [("Location", "/v1/files/\u00e9t\u00e9?x=1"), ("Content-Type", "application/json"), ("X-Upstream", "a b")]
    sent = []
    response = RelayResponse(b"" if status in (204, 304) else b"{}", status=status, headers=headers)
    response(create_environ("/api/v2/aibridge/openai/v1/files", method="POST"), lambda *args: sent.append(args))
    (status_line, out_headers), = sent
    assert status_line.startswith(str(status))
    expected = {204: headers, 304: [headers[0], headers[2]]}.get(status, headers + [("Content-Length", "2")])
    assert out_headers == expected
