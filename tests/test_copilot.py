"""GitHub Copilot: OpenAI wire format without v1/, always the user's GitHub token upstream (SPEC §3, §4)."""

from __future__ import annotations

import openai
import pytest
import requests

from tests.harness import wait_for_records
from tests.sdk_calls import call_openai, load_fixtures, openai_client

GITHUB_TOKEN = "ghu_usersOwnGithubToken0123456789abcd"
COPILOT_HEADERS = {"Editor-Version": "vscode/1.104.0", "Editor-Plugin-Version": "copilot-chat/0.31.0",
                   "Copilot-Integration-Id": "vscode-chat", "User-Agent": "GitHubCopilotChat/0.31.0"}
CHAT = dict(load_fixtures("openai_chat"))["openai_chat/tool_call"]


def _client(gateway, identities, fixture: str, **headers) -> openai.OpenAI:
    return openai_client(gateway.base("copilot"), GITHUB_TOKEN, fixture,
                         **{"X-Coder-AI-Governance-Token": identities.bob, **COPILOT_HEADERS, **headers})


@pytest.mark.parametrize("stream", [False, True])
def test_copilot_chat_goes_upstream_with_the_users_github_token(stream, gateway, upstream, identities, database):
    client = _client(gateway, identities, "openai_chat/tool_call")
    raw = client.chat.completions.with_raw_response.create(**CHAT["request"], stream=stream)
    parsed = raw.parse()
    if stream:
        list(parsed)
    sent = upstream.requests[-1]
    assert sent.path == "/copilot/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {GITHUB_TOKEN}"
    for name, value in COPILOT_HEADERS.items():
        assert sent.headers[name.lower()] == value
    assert identities.bob not in "\n".join(f"{k}: {v}" for k, v in sent.headers.items())
    interception_id = raw.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(database, [interception_id])[interception_id]
    assert (record["provider"], record["provider_name"], record["client"]) == ("copilot", "copilot", "GitHub Copilot")
    assert record["credential_kind"] == "byok"
    assert record["credential_hint"] == "ghu_...abcd"
    assert [row["tool"] for row in record["tool_usages"]] == [call["name"] for call in CHAT["expect"]["tool_calls"]]


def test_copilot_through_gateway_equals_direct(gateway, upstream, identities):
    direct = call_openai(openai_client(f"{upstream.url}/copilot", GITHUB_TOKEN, "openai_chat/tool_call"), CHAT["request"], True)
    through = call_openai(_client(gateway, identities, "openai_chat/tool_call"), CHAT["request"], True)
    assert through == direct


def test_gateway_token_must_come_in_the_governance_header(gateway, upstream, identities):
    before = len(upstream.requests)
    client = openai_client(gateway.base("copilot"), identities.bob, "openai_chat/simple_text")  # token as Bearer
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "X-Coder-AI-Governance-Token" in raised.value.message
    assert len(upstream.requests) == before


def test_missing_github_token_is_401_saying_so(gateway, upstream, identities):
    before = len(upstream.requests)
    response = requests.post(f"{gateway.base('copilot')}/chat/completions", timeout=10,
                             json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                             headers={"X-Coder-AI-Governance-Token": identities.bob})
    assert response.status_code == 401
    assert "GitHub token" in response.json()["error"]["message"]
    assert len(upstream.requests) == before


@pytest.mark.parametrize("path", ["models", "models/gpt-4o", "agents/list", ".well-known/copilot"])
def test_copilot_passthrough_routes(path, gateway, upstream, identities):
    response = requests.get(f"{gateway.base('copilot')}/{path}", timeout=10,
                            headers={"X-Coder-AI-Governance-Token": identities.bob, "Authorization": f"Bearer {GITHUB_TOKEN}"})
    assert response.status_code in (200, 404)  # the fake knows models; what matters is where it went
    sent = upstream.requests[-1]
    assert sent.path == f"/copilot/{path}"
    assert sent.headers["authorization"] == f"Bearer {GITHUB_TOKEN}"


def test_copilot_v1_paths_are_not_routes(gateway, identities):
    response = requests.post(f"{gateway.base('copilot')}/v1/chat/completions", json={}, timeout=10,
                             headers={"X-Coder-AI-Governance-Token": identities.bob, "Authorization": f"Bearer {GITHUB_TOKEN}"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "route not supported: POST /v1/chat/completions"


def test_copilot_responses_are_recorded_as_copilot(gateway, identities, database):
    fixture = dict(load_fixtures("openai_responses"))["openai_responses/function_call"]
    client = _client(gateway, identities, "openai_responses/function_call")
    raw = client.responses.with_raw_response.create(**fixture["request"], stream=True)
    list(raw.parse())
    interception_id = raw.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(database, [interception_id])[interception_id]
    assert (record["provider"], record["provider_name"]) == ("copilot", "copilot")
    assert [(row["provider_tool_call_id"], row["tool"], row["input"]) for row in record["tool_usages"]] == \
        [(call["id"], call["name"], call["input"]) for call in fixture["expect"]["tool_calls"]]
