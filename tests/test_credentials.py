"""Who may call, and which credentials go upstream (SPEC §3)."""

from __future__ import annotations

import anthropic
import openai
import pytest
import requests

from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY, provider_env
from tests.sdk_calls import anthropic_client, call_anthropic, call_openai, load_fixtures, openai_client

ANTHROPIC_REQUEST = dict(load_fixtures("anthropic"))["anthropic/simple_text"]["request"]
OPENAI_REQUEST = dict(load_fixtures("openai_chat"))["openai_chat/simple_text"]["request"]


def _last_request(upstream):
    return upstream.requests[-1]


def _all_header_values(recorded) -> str:
    return "\n".join(f"{name}: {value}" for name, value in recorded.headers.items())


def test_anthropic_upstream_gets_the_provider_key_not_the_gateway_token(gateway, upstream, identities):
    client = anthropic_client(gateway.base("anthropic"), identities.alice, "anthropic/simple_text",
                              Cookie="session=abc", **{"Coder-Session-Token": identities.alice})
    result = call_anthropic(client, ANTHROPIC_REQUEST, stream=False)
    assert "error" not in result
    sent = _last_request(upstream)
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert identities.alice not in _all_header_values(sent)
    assert "cookie" not in sent.headers
    assert not any(name.lower().startswith("coder-") for name in sent.headers)
    assert sent.headers["accept-encoding"] == "identity"
    assert sent.headers["anthropic-version"]  # the client's own API headers go through


def test_openai_upstream_gets_the_provider_key_not_the_gateway_token(gateway, upstream, identities):
    client = openai_client(f"{gateway.base('openai')}/v1", identities.bob, "openai_chat/simple_text")
    assert "error" not in call_openai(client, OPENAI_REQUEST, stream=True)
    sent = _last_request(upstream)
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert identities.bob not in _all_header_values(sent)


def test_hop_by_hop_headers_stay_at_the_gateway(gateway, upstream, identities):
    response = requests.post(f"{gateway.base('anthropic')}/v1/messages", json=ANTHROPIC_REQUEST, timeout=30, headers={
        "X-Api-Key": identities.alice, "X-Fixture": "anthropic/simple_text", "anthropic-version": "2023-06-01",
        "Connection": "keep-alive, X-Private-Hop", "X-Private-Hop": "secret-hop", "Keep-Alive": "timeout=5",
        "TE": "trailers", "X-Client-Trace": "kept"})
    assert response.status_code == 200
    sent = _last_request(upstream)
    for dropped in ("x-private-hop", "keep-alive", "te", "x-coder-ai-governance-token"):
        assert dropped not in sent.headers
    assert sent.headers["x-client-trace"] == "kept"


@pytest.mark.parametrize("header", ["X-Api-Key", "Authorization", "X-Coder-AI-Governance-Token"])
def test_gateway_token_accepted_from_each_header(header, gateway, upstream, identities):
    token = f"Bearer {identities.alice}" if header == "Authorization" else identities.alice
    headers = {header: token, "X-Fixture": "anthropic/simple_text", "anthropic-version": "2023-06-01"}
    if header == "X-Coder-AI-Governance-Token":
        headers["X-Api-Key"] = "sk-ant-users-own-key"
    response = requests.post(f"{gateway.base('anthropic')}/v1/messages", json=ANTHROPIC_REQUEST, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def test_byok_sends_the_users_own_key(gateway, upstream, identities):
    own_key = "sk-own-openai-key-of-alice-123456"
    client = openai.OpenAI(base_url=f"{gateway.base('openai')}/v1", api_key=own_key, max_retries=0,
                           default_headers={"X-Coder-AI-Governance-Token": identities.alice, "X-Fixture": "openai_chat/simple_text"})
    assert "error" not in call_openai(client, OPENAI_REQUEST, stream=False)
    sent = _last_request(upstream)
    assert sent.headers["authorization"] == f"Bearer {own_key}"
    assert OPENAI_KEY not in _all_header_values(sent)
    assert identities.alice not in _all_header_values(sent)


def test_byok_refused_when_disabled(start_gateway, upstream, identities):
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_ALLOW_BYOK": "false"}, workers=1)
    client = anthropic.Anthropic(base_url=gateway.base("anthropic"), api_key="sk-ant-own", max_retries=0,
                                 default_headers={"X-Coder-AI-Governance-Token": identities.alice})
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        client.messages.create(**ANTHROPIC_REQUEST)
    assert "bring" in raised.value.message.lower() or "own" in raised.value.message.lower()


def _bad_tokens(identities) -> dict[str, str]:
    revoked, row = identities.token("bob")
    identities.store.identity.revoke_token(row["id"])
    expired, _ = identities.token("bob", lifetime=0.001)
    identities.store.identity.create_user("carol")
    deleted_user_token, _ = identities.token("carol")
    identities.store.identity.delete_user("carol")
    real = identities.alice
    return {
        "unknown": "not-a-token",
        "tampered": real[:-4] + ("aaaa" if not real.endswith("aaaa") else "bbbb"),
        "revoked": revoked,
        "expired": expired,
        "deleted-user": deleted_user_token,
    }


@pytest.fixture(scope="module")
def bad_tokens(identities):
    return _bad_tokens(identities)


BAD_KINDS = ["unknown", "tampered", "revoked", "expired", "deleted-user"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_tokens_get_401_in_anthropic_shape(kind, bad_tokens, gateway, upstream):
    before = len(upstream.requests)
    client = anthropic.Anthropic(base_url=gateway.base("anthropic"), api_key=bad_tokens[kind], max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client.messages.create(**ANTHROPIC_REQUEST)
    assert raised.value.status_code == 401
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "authentication_error"
    assert len(upstream.requests) == before  # nothing reached the provider


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_tokens_get_401_in_openai_shape(kind, bad_tokens, gateway, upstream):
    before = len(upstream.requests)
    client = openai.OpenAI(base_url=f"{gateway.base('openai')}/v1", api_key=bad_tokens[kind], max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(**OPENAI_REQUEST, stream=True)
    assert raised.value.status_code == 401
    assert raised.value.body["code"] == "invalid_api_key"  # the SDK hands over the inner error object
    assert len(upstream.requests) == before


@pytest.mark.parametrize("provider, path, shape_check", [
    ("anthropic", "v1/messages", lambda body: body["error"]["type"] == "authentication_error"),
    ("openai", "v1/chat/completions", lambda body: body["error"]["code"] == "invalid_api_key"),
])
def test_missing_token_gets_401_saying_where_to_put_it(provider, path, shape_check, gateway, upstream):
    before = len(upstream.requests)
    response = requests.post(f"{gateway.base(provider)}/{path}", json=OPENAI_REQUEST, timeout=10)
    assert response.status_code == 401
    assert shape_check(response.json())
    assert "Authorization: Bearer" in response.json()["error"]["message"]
    assert len(upstream.requests) == before


def test_passthrough_requires_a_gateway_token(gateway, upstream):
    response = requests.get(f"{gateway.base('openai')}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("how", ["revoke", "delete-user"])
def test_revocation_takes_effect_at_once_for_a_token_in_use(how, gateway, upstream, identities):
    """Valid tokens are cached by the workers; revoking one (or deleting its user) still locks it
    out on the very next request, in every worker."""
    username = f"cached-{how}"
    identities.store.identity.create_user(username)
    token, row = identities.token(username)
    url = f"{gateway.base('openai')}/v1/models"
    for _ in range(6):  # warm both workers' caches
        assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    if how == "revoke":
        identities.store.identity.revoke_token(row["id"])
    else:
        identities.store.identity.delete_user(username)
    for _ in range(6):  # new connections: whichever worker answers
        assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 401
