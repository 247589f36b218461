"""Secrets under a hostile or careless client (issue 15, items 2, 6 and 9): a gateway token never goes
upstream, secrets pasted into a conversation are masked everywhere, and credential headers have one
spelling."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import requests

from bridge.masking import Masker, mask_secret
from bridge.store import Store
from tests.conftest import ANTHROPIC_KEY, CORP_KEY, OPENAI_KEY, provider_env
from tests.harness import wait_for_records
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
TOKEN_SHAPE = re.compile(r"[a-z0-9]{10}-[A-Za-z0-9_-]{43}")
INTERCEPTIONS = "/api/v2/aibridge/interceptions"


@dataclass
class World:
    gateway: object
    database: Path
    json_log: Path
    dump_dir: Path
    alice: str  # admin
    bob: str


@pytest.fixture(scope="module")
def world(start_gateway, upstream, tmp_path_factory) -> World:
    """A gateway with structured logging and dumps on, and a store of its own (its prompts hold secrets)."""
    root = tmp_path_factory.mktemp("hardening")
    database, json_log, dump_dir = root / "bridge.db", root / "bridge.jsonl", root / "dumps"
    store = Store(str(database))
    try:
        store.migrate()
        store.create_user("alice", is_admin=True)
        store.create_user("bob")
        alice, bob = store.create_token("alice")[0], store.create_token("bob")[0]
    finally:
        store.close()
    gateway = start_gateway({
        **provider_env(upstream),
        "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}",
        "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",
        "CODER_LOGGING_JSON": str(json_log),  # and the human log on stderr, in the gateway's log file
        "CODER_AIBRIDGE_DUMP_DIR": str(dump_dir),
        "CODER_AIBRIDGE_PROVIDER_3_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_3_NAME": "bedrock",
        "CODER_AIBRIDGE_PROVIDER_3_BASE_URL": f"{upstream.url}/",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_REGION": "us-east-1",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_BASE_URL": f"{upstream.url}/bedrock",  # the fake records the call
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY": AWS_ACCESS_KEY,
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_MODEL": "anthropic.claude-sonnet-4-5-v1:0",
    }, workers=2)
    return World(gateway, database, json_log, dump_dir, alice, bob)


def _post(world: World, provider: str, path: str, fixture: str, headers: dict, body: dict | None = None,
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


# -- item 6: pasted secrets are masked everywhere ------------------------------------------------


def _wait_for(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not show up within {timeout}s")


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

    def logged_prompt():
        for line in world.json_log.read_text().splitlines():
            entry = orjson.loads(line)
            if entry.get("record_type") == "prompt_usage" and entry.get("interception_id") == interception_id:
                return entry["prompt"]
    assert _wait_for(logged_prompt, "the prompt_usage log line") == expected
    human = _wait_for(lambda: [line for line in world.gateway.log().splitlines() if interception_id in line
                               and "prompt_usage" in line], "the human log line")
    assert ordinary in human[0]

    request_dump = world.dump_dir / "openai" / f"{interception_id}.request.json"
    dumped = orjson.loads(_wait_for(lambda: request_dump.exists() and request_dump.read_bytes(), "the dump"))
    assert dumped["body"]["messages"][0]["content"] == expected

    for source, text in (("the JSON log", world.json_log.read_text()), ("the human log", world.gateway.log()),
                         ("the dumps", "".join(p.read_text(errors="replace") for p in world.dump_dir.rglob("*.*")))):
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {source}"


def test_the_masker_masks_every_format_once_and_leaves_ordinary_text_alone():
    masker = Masker([AWS_SECRET, "sk-configured-key-0000111122223333"])
    token = "abcdefgh12-" + "Xy0_-" * 8 + "abc"
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
        pending, out = b"", b""
        for start in range(0, len(data), size):
            part, pending = masker.stream_part(pending + data[start:start + size])
            out += part
        assert out + masker.data(pending) == masker.data(data), size


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
