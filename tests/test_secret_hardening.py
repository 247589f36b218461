"""Secrets under a hostile or careless client (issue 15, items 2, 6 and 9): a gateway token never goes
upstream, secrets pasted into a conversation are masked everywhere, and credential headers have one
spelling."""

from __future__ import annotations

import base64
import copy
import json
import re

import orjson
import pytest
import requests

from bridge.masking import Masker, holds_gateway_token, mask_secret, without_gateway_tokens
from tests.conftest import (A_TOKEN, ANTHROPIC_KEY, CORP_KEY, OPENAI_KEY, TOKEN_SHAPE, LoggedGateway,
                            start_logged_gateway)
from tests.harness import wait_for_records, wait_until
from tests.sdk_calls import load_fixtures

FIXTURES = dict(load_fixtures("anthropic") + load_fixtures("openai_chat"))
AWS_ACCESS_KEY = "AKIAHARDENTESTKEY001"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYHARDENKEY1"  # an AWS secret's shape: no key format matches it
OWN_KEY = "sk-own-key-of-a-hardening-user-0123456789"
GITHUB_TOKEN = "gho_hardeningTestGithubToken0123456789AB"
# Public key formats nobody configured here: masked by their shape.
PASTED = {"aws id": "AKIAPASTEDTEST123456", "github": "ghp_" + "Pa5tedGithubToken" * 2 + "xy",
          "fine-grained github": "github_pat_11ABCDEFG0123456789_abcdefghijKLMNOP",
          "openai project": "sk-proj-Pa5tedOpenaiProjectKey-0123456789abcdef"}
INTERCEPTIONS = "/api/v2/aibridge/interceptions"


@pytest.fixture(scope="module")
def world(start_gateway, upstream, tmp_path_factory) -> LoggedGateway:
    """A gateway with structured logging and dumps on, and a store of its own (its prompts hold secrets)."""
    return start_logged_gateway(start_gateway, upstream, tmp_path_factory.mktemp("hardening"), dumps=True, env={
        "CODER_AIBRIDGE_PROVIDER_3_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_3_NAME": "bedrock",
        "CODER_AIBRIDGE_PROVIDER_3_BASE_URL": f"{upstream.url}/",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_REGION": "us-east-1",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_BASE_URL": f"{upstream.url}/bedrock",  # the fake records the call
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY": AWS_ACCESS_KEY,
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_MODEL": "anthropic.claude-sonnet-4-5-v1:0",
    })


def _post(world: LoggedGateway, provider: str, path: str, fixture: str, headers: dict, body: dict | None = None,
          stream: bool = False) -> requests.Response:
    body = {**FIXTURES[fixture]["request"], "stream": stream, **(body or {})}
    return requests.post(f"{world.gateway.base(provider)}/{path}", json=body, timeout=30,
                         headers={"X-Fixture": fixture, "anthropic-version": "2023-06-01", **headers})


# -- item 2: no gateway token upstream -----------------------------------------------------------


def test_no_gateway_token_reaches_the_upstream_in_any_header_in_any_mode(world, upstream):
    alice, bob = world.alice, world.bob
    chat, messages = "openai_chat/simple_text", "anthropic/simple_text"
    before = len(upstream.requests)
    calls = [  # (provider, method, path, fixture, headers); a token also where no credential goes
        ("anthropic", "POST", "v1/messages", messages, {"X-Api-Key": alice, "X-Note": f"owner={alice}"}),
        ("openai", "POST", "v1/chat/completions", chat, {"Authorization": f"Bearer {alice}", "X-Api-Key": alice,
                                                          "X-Colleague": bob}),
        # bring-your-own-key, the own key in one header and the gateway token in the other
        ("openai", "POST", "v1/chat/completions", chat, {"X-Coder-AI-Governance-Token": alice,
                                                          "Authorization": f"Bearer {OWN_KEY}", "X-Api-Key": alice}),
        # a misconfigured BYOK client: the gateway token where its own key goes
        ("openai", "POST", "v1/chat/completions", chat, {"X-Coder-AI-Governance-Token": alice,
                                                          "Authorization": f"Bearer {alice}"}),
        ("anthropic", "POST", "v1/messages", messages, {"X-Coder-AI-Governance-Token": alice, "X-Api-Key": bob}),
        ("copilot", "POST", "chat/completions", chat, {"X-Coder-AI-Governance-Token": alice,
                                                       "Authorization": f"Bearer {GITHUB_TOKEN}", "X-Note": alice}),
        ("bedrock", "POST", "v1/messages", messages, {"X-Api-Key": alice, "X-Note": alice}),
        # passthrough routes
        ("openai", "GET", "v1/models", None, {"Authorization": f"Bearer {alice}", "X-Note": f"token {alice}"}),
        ("anthropic", "GET", "v1/models", None, {"X-Coder-AI-Governance-Token": alice, "X-Api-Key": alice}),
        ("copilot", "GET", "models", None, {"X-Coder-AI-Governance-Token": alice,
                                            "Authorization": f"Bearer {GITHUB_TOKEN}", "X-Trace": bob}),
    ]
    for provider, method, path, fixture, headers in calls:
        url = f"{world.gateway.base(provider)}/{path}"
        headers = {"anthropic-version": "2023-06-01", **headers}
        if fixture is None:
            response = requests.get(url, headers=headers, timeout=30)
        else:
            response = _post(world, provider, path, fixture, headers)
        assert response.status_code < 500, (provider, path, response.text)
    sent = upstream.requests[before:]
    assert len(sent) == len(calls)
    for request in sent:
        leaked = [f"{name}: {value}" for name, value in request.headers.items() if TOKEN_SHAPE.search(value)]
        assert not leaked, f"{request.method} {request.path} carried a gateway token upstream: {leaked}"
    byok = sent[2]
    assert byok.headers["authorization"] == f"Bearer {OWN_KEY}" and "x-api-key" not in byok.headers
    assert sent[5].headers["authorization"] == f"Bearer {GITHUB_TOKEN}"


def test_byok_with_the_gateway_token_as_its_key_is_served_with_the_provider_key(world, upstream):
    """A client that sends its gateway token both in the governance header and where its own key goes
    has no key of its own: it gets the provider key (centralized mode), and the record says so."""
    before = len(upstream.requests)
    response = _post(world, "openai", "v1/chat/completions", "openai_chat/simple_text",
                     {"X-Coder-AI-Governance-Token": world.alice, "Authorization": f"Bearer {world.alice}"})
    assert response.status_code == 200, response.text
    assert upstream.requests[before].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(world.database, [interception_id])[interception_id]
    assert (record["credential_kind"], record["credential_hint"]) == ("centralized", mask_secret(OPENAI_KEY))
    # Copilot has no key of the gateway's: refused, saying what to send instead.
    response = _post(world, "copilot", "chat/completions", "openai_chat/simple_text",
                     {"X-Coder-AI-Governance-Token": world.alice, "Authorization": f"Bearer {world.alice}"})
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    assert "GitHub token" in message and "gateway token" in message and world.alice not in message
    assert len(upstream.requests) == before + 1



def _carries(value: str, token: str) -> bool:
    """Whether a header value holds ``token``, as it is or base64-encoded in one of its words."""
    words = [word.rstrip("=") for word in value.split()]
    decoded = [base64.urlsafe_b64decode(word.translate(str.maketrans("+/", "-_")) + "=" * (-len(word) % 4))
               for word in words if re.fullmatch(r"[A-Za-z0-9+/_-]{16,}", word)]
    return token in value or any(token.encode() in data for data in decoded)


def test_a_gateway_token_glued_to_a_prefix_or_in_a_basic_credential_does_not_reach_the_upstream(world, upstream):
    alice, chat = world.alice, "openai_chat/simple_text"
    basic_of_user = "Basic " + base64.b64encode(f"user:{alice}".encode()).decode()
    basic_of_token = "Basic " + base64.urlsafe_b64encode(alice.encode()).decode().rstrip("=")
    calls = [
        {"Authorization": f"Bearer {alice}", "X-My-Token": f"gw_{alice}", "X-Note": f"token-{alice}"},
        {"X-Coder-AI-Governance-Token": alice, "Authorization": basic_of_user},  # BYOK, misconfigured
        {"X-Coder-AI-Governance-Token": alice, "Authorization": basic_of_token},
        {"Authorization": f"Bearer {alice}", "X-Upstream-Auth": basic_of_user},
    ]
    before = len(upstream.requests)
    for headers in calls:
        response = _post(world, "openai", "v1/chat/completions", chat, headers)
        assert response.status_code == 200, response.text
    sent = upstream.requests[before:]
    assert len(sent) == len(calls)
    for request in sent:
        leaked = [f"{name}: {value}" for name, value in request.headers.items() if _carries(value, alice)]
        assert not leaked, f"{request.method} {request.path} carried a gateway token upstream: {leaked}"
    # A Basic credential holding the gateway token is no key of the client's: the provider key serves it.
    assert [request.headers["authorization"] for request in sent[1:3]] == [f"Bearer {OPENAI_KEY}"] * 2


# -- item 6: pasted secrets are masked everywhere ------------------------------------------------


def test_secrets_pasted_into_a_prompt_are_masked_in_store_api_logs_and_dumps(world):
    """Through the openai provider: another user's gateway token, the anthropic and corp keys, the
    Bedrock AWS secret, and public key formats nobody configured."""
    secrets = [world.bob, world.alice, ANTHROPIC_KEY, CORP_KEY, AWS_SECRET, AWS_ACCESS_KEY, *PASTED.values()]
    ordinary = "deploy frontend-service-production-us-east-1-canary-release-2024 with --dry-run"
    prompt = " | ".join(f"secret {i}: {secret}" for i, secret in enumerate(secrets)) + f" | {ordinary}"
    expected = prompt
    for secret in secrets:
        expected = expected.replace(secret, mask_secret(secret))
    response = _post(world, "openai", "v1/chat/completions", "openai_chat/simple_text",
                     {"Authorization": f"Bearer {world.alice}"},
                     {"messages": [{"role": "user", "content": prompt}]}, stream=True)
    assert response.status_code == 200, response.text
    interception_id = response.headers["X-AIBridge-Interception-Id"]

    record = wait_for_records(world.database, [interception_id])[interception_id]
    assert record["user_prompts"][0]["prompt"] == expected

    shown = requests.get(f"{world.gateway.url}{INTERCEPTIONS}", headers={"Authorization": f"Bearer {world.alice}"},
                         params={"limit": 1000}, timeout=30).json()
    [mine] = [r for r in shown["results"] if r["id"] == interception_id]
    assert mine["user_prompts"][0]["prompt"] == expected

    assert orjson.loads(world.logged_line("prompt_usage", interception_id))["prompt"] == expected
    human = wait_until(lambda: [line for line in world.gateway.log().splitlines() if interception_id in line
                               and "prompt_usage" in line], "the human log line")
    assert ordinary in human[0]

    request_dump = world.dump_dir / "openai" / f"{interception_id}.request.json"
    dumped = orjson.loads(wait_until(lambda: request_dump.exists() and request_dump.read_bytes(), "the dump"))
    assert dumped["body"]["messages"][0]["content"] == expected

    for source, text in (("the JSON log", world.json_log.read_text()), ("the human log", world.gateway.log()),
                         ("the dumps", "".join(p.read_text(errors="replace") for p in world.dump_dir.rglob("*.*")))):
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {source}"


def test_secrets_after_json_escapes_in_a_tool_call_are_masked_in_store_logs_and_dumps(world, upstream):
    """A tool call's arguments are JSON text stored as sent: a secret after "\\n" or "\\t" starts a word."""
    content = (f"OPENAI={PASTED['openai project']}\n{OWN_KEY}\n{world.bob}\n{PASTED['github']}\t"
               f"{PASTED['aws id']}\n\u00e9{ANTHROPIC_KEY}")
    arguments = json.dumps({"content": content})
    assert "\\n" in arguments and "\\u00e9" in arguments  # the secrets follow escapes in the JSON text
    fixture = copy.deepcopy(upstream.fixtures["openai_chat/tool_call"])
    fixture["blocking"]["body"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = arguments
    upstream.fixtures["openai_chat/hardening_secret_tool_call"] = fixture
    secrets = [PASTED["openai project"], OWN_KEY, world.bob, PASTED["github"], PASTED["aws id"], ANTHROPIC_KEY]
    expected = content
    for secret in secrets:
        expected = expected.replace(secret, mask_secret(secret))

    response = requests.post(f"{world.gateway.base('openai')}/v1/chat/completions", timeout=30,
                             json={**FIXTURES["openai_chat/tool_call"]["request"], "stream": False},
                             headers={"X-Fixture": "openai_chat/hardening_secret_tool_call",
                                      "Authorization": f"Bearer {world.alice}"})
    assert response.status_code == 200, response.text
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(world.database, [interception_id])[interception_id]
    [tool_usage] = record["tool_usages"]
    recorded = tool_usage["input"]
    assert json.loads(recorded if isinstance(recorded, str) else json.dumps(recorded)) == {"content": expected}

    logged = world.logged_line("tool_usage", interception_id)
    response_dump = world.dump_dir / "openai" / f"{interception_id}.response"
    dumped = wait_until(lambda: response_dump.exists() and response_dump.read_text(), "the response dump")
    assert json.loads(json.loads(dumped.split("\n\n", 1)[1])["choices"][0]["message"]["tool_calls"][0]
                      ["function"]["arguments"]) == {"content": expected}  # still valid JSON, masked
    for source, text in (("the JSON log", logged), ("the dump", dumped)):
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {source}"


def test_the_masker_masks_every_format_once_and_leaves_ordinary_text_alone():
    masker = Masker([AWS_SECRET, "sk-configured-key-0000111122223333"])
    token = A_TOKEN
    text = (f"token {token}; keys sk-configured-key-0000111122223333, {AWS_SECRET}, {AWS_ACCESS_KEY}, "
            + ", ".join(PASTED.values()) + f", {ANTHROPIC_KEY}")
    expected = text
    for secret in [token, "sk-configured-key-0000111122223333", AWS_SECRET, AWS_ACCESS_KEY, *PASTED.values(),
                   ANTHROPIC_KEY]:
        expected = expected.replace(secret, mask_secret(secret))
    assert masker.text(text) == expected
    assert masker.data(text.encode()) == expected.encode()
    ordinary = ("kubernetes-controller-manager-deployment-config-primary-us-east, task-sk-abc, skip-AKIA, "
                "mytask-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ, ghp_short, a-b-c")
    assert masker.text(ordinary) == ordinary
    # A stream dumped piece by piece masks what the whole would.
    data = (text + "\n\n").encode() * 4
    for size in (1, 5, 64, 500):
        assert _masked_in_pieces(masker, data, size) == masker.data(data), size


def _masked_in_pieces(masker: Masker, data: bytes, size: int) -> bytes:
    """A stream masked as the dump masks it, ``size`` bytes at a time."""
    pending, out = b"", b""
    for start in range(0, len(data), size):
        part, pending = masker.stream_part(pending + data[start:start + size])
        out += part
    return out + masker.data(pending)


def test_the_masker_masks_secrets_after_escapes_and_keeps_json_valid():
    masker = Masker()
    secrets = [A_TOKEN, *PASTED.values()]
    text = "\n".join(secrets) + "\t" + PASTED["aws id"] + "\r" + A_TOKEN + "\u00e9" + PASTED["github"] + "\\" + A_TOKEN
    expected = text
    for secret in secrets:
        expected = expected.replace(secret, mask_secret(secret))
    as_json = json.dumps({"content": text})
    assert orjson.loads(masker.text(as_json)) == {"content": expected}
    assert orjson.loads(masker.data(as_json.encode())) == {"content": expected}
    assert masker.text(f"?a=1&k=%20{A_TOKEN}") == f"?a=1&k=%20{mask_secret(A_TOKEN)}"  # URL escapes too
    ordinary = "\\nsk-short \\task-0123456789abcdefghijklmnop \\u00e9AKIA"
    assert masker.text(ordinary) == ordinary
    # Masked piece by piece, a stream split anywhere (after a backslash too) masks what the whole would.
    data = (as_json + "\n\n").encode() * 3
    for size in (1, 2, 7, 64):
        assert _masked_in_pieces(masker, data, size) == masker.data(data), size


def test_a_token_glued_to_a_word_is_a_token_but_random_base64url_is_not():
    masker = Masker()
    for glued in (f"gw_{A_TOKEN}", f"token-{A_TOKEN}", f"X-My-Token: gw_{A_TOKEN}", f"my_gateway_token_{A_TOKEN}"):
        assert holds_gateway_token(glued), glued
        assert A_TOKEN not in masker.text(glued) and masker.text(glued).endswith(mask_secret(A_TOKEN)), glued
    # A JWT (or any base64url credential) may hold "_<10 lowercase>-<43 characters>" in its middle:
    # a client's own credential is not dropped for that, nor masked in part.
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.Qm9i" + f"_{A_TOKEN}" + "Zk3_Tq9Lx2PvW8"
    assert not holds_gateway_token(f"Bearer {jwt}") and masker.text(jwt) == jwt


def test_a_gateway_token_inside_a_basic_credential_is_found():
    for credential in (f"user:{A_TOKEN}", A_TOKEN, f"{A_TOKEN}:", f"x:gw_{A_TOKEN}"):
        standard = base64.b64encode(credential.encode()).decode()
        urlsafe = base64.urlsafe_b64encode(credential.encode()).decode().rstrip("=")
        for value in (f"Basic {standard}", f"basic  {urlsafe}", f"Proxy: Basic {standard}"):
            assert holds_gateway_token(value), (credential, value)
    assert not holds_gateway_token("Basic " + base64.b64encode(b"user:hunter2-password").decode())
    assert not holds_gateway_token("Basic !!not*base64!!") and not holds_gateway_token("Basic " + "A" * 20_000)


def test_query_parameters_holding_a_gateway_token_are_dropped():
    encoded = A_TOKEN.replace("-", "%2D").replace("_", "%5F")
    query = f"a=1&api_key={A_TOKEN}&b=x%20y&key={encoded}&t=gw_{A_TOKEN}&{A_TOKEN}&c=3".encode()
    assert without_gateway_tokens(query) == b"a=1&b=x%20y&c=3"
    assert without_gateway_tokens(f"key={encoded}".encode()) == b""
    for kept in (b"", b"a=1&b=2", b"model=gpt-4o-2024-08-06&x=kubernetes-controller-manager-deployment-primary"):
        assert without_gateway_tokens(kept) == kept


def test_a_token_in_a_client_chosen_field_is_masked():
    """The interception row's client-chosen fields (model, user agent, session id) are masked per request."""
    masker = Masker(["sk-configured-key-0000111122223333"])
    fields = ["gpt-4o-2024-08-06", "claude-cli/2.0.14 (external, cli)", "b3b9e1f2-5c1d-4a7e-9f3a-2d8e6c4b1a00",
              f"model-{A_TOKEN}"]
    assert [masker.text(field) for field in fields] == [*fields[:3], f"model-{mask_secret(A_TOKEN)}"]


# -- item 9: credential headers have one spelling ------------------------------------------------


def test_underscore_spellings_of_credential_headers_do_not_authenticate(world, upstream):
    """gunicorn maps X_Api_Key and X-Api-Key to one WSGI name; only Codex's session_id keeps its
    underscores."""
    before = len(upstream.requests)
    refused = [
        _post(world, "anthropic", "v1/messages", "anthropic/simple_text", {"X_Api_Key": world.alice}),
        _post(world, "openai", "v1/chat/completions", "openai_chat/simple_text",
              {"X_Coder_AI_Governance_Token": world.alice, "Authorization": f"Bearer {OWN_KEY}"}),
        _post(world, "openai", "v1/chat/completions", "openai_chat/simple_text", {"x_api_key": world.alice}),
        requests.get(f"{world.gateway.url}{INTERCEPTIONS}", headers={"Coder_Session_Token": world.alice}, timeout=30),
    ]
    assert [response.status_code for response in refused] == [401] * len(refused)
    assert len(upstream.requests) == before
    response = _post(world, "openai", "v1/chat/completions", "openai_chat/simple_text",
                     {"Authorization": f"Bearer {world.alice}", "User-Agent": "codex_cli_rs/0.50.0",
                      "session_id": "codex-session-underscore-1"})
    assert response.status_code == 200, response.text
    interception_id = response.headers["X-AIBridge-Interception-Id"]
    record = wait_for_records(world.database, [interception_id])[interception_id]
    assert (record["client"], record["client_session_id"]) == ("Codex", "codex-session-underscore-1")
