"""Who may read what (SPEC §3, §8; issue 7), through the real gateway under gunicorn.

A user never sees another user's records, by any filter, id, cursor or aggregate; a non-admin is
refused every admin route; revoked, expired and deleted-user tokens fail on every route family; and
no secret (provider key, AWS secret, gateway token) shows up in any response of this module, in the
gateway's logs or in the bytes of the store's files.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import requests

from bridge.app import create_app
from bridge.config import load_settings
from tests.conftest import ANTHROPIC_KEY, CORP_KEY, OPENAI_KEY, TEAM_B_KEY, provider_env
from tests.harness import free_port, wait_for_records
from tests.sdk_calls import load_fixtures

FIXTURES = dict(load_fixtures("anthropic") + load_fixtures("openai_chat") + load_fixtures("openai_responses"))
AWS_ACCESS_KEY = "AKIAAUTHZTESTKEY0001"
AWS_SECRET = "aws-authz-secret-Rt5Yu6Io7Pa8Sd9Fg0Hj"
DEAD_KEY = "sk-dead-authz-test-key-99998888"
BYOK_KEY = "sk-own-authz-byok-key-0123456789abcdef"
GITHUB_TOKEN = "gho_authz_test_github_token_12345678"
INTERCEPTIONS = "/api/v2/aibridge/interceptions"

#: Every route of the operating API, by who may call it (the inventory test keeps this complete).
USER_ROUTES = [("GET", INTERCEPTIONS), ("GET", f"{INTERCEPTIONS}/<path:interception_id>"),
               ("GET", "/api/v2/aibridge/clients"), ("GET", "/api/v2/aibridge/usage"), ("GET", "/api/v2/aibridge/tools"),
               ("GET", "/api/v2/aibridge/models"), ("GET", "/api/v2/aibridge/sessions"),
               ("GET", "/api/v2/aibridge/sessions/<path:session_id>"), ("GET", "/api/v2/users/me"),
               ("GET", f"{INTERCEPTIONS}/"), ("GET", "/api/v2/aibridge/sessions/"),  # no id: a 404 once signed in
               ("GET", "/api/v2/aibridge/budgets/me")]
ADMIN_ROUTES = [("GET", "/api/v2/users"), ("POST", "/api/v2/users"), ("GET", "/api/v2/users/<name>"),
                ("DELETE", "/api/v2/users/<name>"), ("GET", "/api/v2/users/<name>/tokens"),
                ("POST", "/api/v2/users/<name>/tokens"), ("DELETE", "/api/v2/tokens/<token_id>"),
                ("GET", "/api/v2/aibridge/budgets"), ("GET", "/api/v2/aibridge/budgets/<name>"),
                ("PUT", "/api/v2/aibridge/budgets/<name>"), ("DELETE", "/api/v2/aibridge/budgets/<name>")]
PUBLIC_ROUTES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/dashboard"),
                 ("GET", "/dashboard/"), ("GET", "/dashboard/static/<path:filename>")]


@dataclass
class World:
    gateway: object
    log_path: Path
    json_log_path: Path
    users: dict[str, dict] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    #: username -> the interception ids of that user's calls
    calls: dict[str, list[str]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    #: every token this module made (valid or not), to look for in responses, logs and files
    all_tokens: set[str] = field(default_factory=set)
    responses: list[requests.Response] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.hooks["response"].append(lambda response, *args, **kwargs: self.responses.append(response))

    def call(self, method: str, url: str, **kwargs) -> requests.Response:
        if url.startswith("/"):
            url = f"{self.gateway.url}{url}"
        return self.session.request(method, url, timeout=30, **kwargs)

    def api(self, user: str, path: str, method: str = "GET", **kwargs) -> requests.Response:
        return self.call(method, path, headers={"Authorization": f"Bearer {self.tokens[user]}"}, **kwargs)


@pytest.fixture(scope="module")
def world(start_gateway, upstream, identities, database, session_dir) -> World:
    suffix = uuid.uuid4().hex[:8]
    log_json = session_dir / f"authz-{suffix}.jsonl"
    env = {
        **provider_env(upstream),
        "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",  # every record in the logs too: none may carry a secret
        "CODER_LOGGING_JSON": str(log_json),
        "CODER_AIBRIDGE_PROVIDER_3_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_3_NAME": "bedrock",
        "CODER_AIBRIDGE_PROVIDER_3_BASE_URL": f"{upstream.url}/",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_REGION": "us-east-1",
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_BASE_URL": f"{upstream.url}/bedrock",  # Bedrock calls stay on 127.0.0.1
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY": AWS_ACCESS_KEY,
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_ACCESS_KEY_SECRET": AWS_SECRET,
        "CODER_AIBRIDGE_PROVIDER_3_BEDROCK_MODEL": "anthropic.claude-sonnet-4-5-v1:0",
        "CODER_AIBRIDGE_PROVIDER_4_TYPE": "openai",
        "CODER_AIBRIDGE_PROVIDER_4_NAME": "dead",
        "CODER_AIBRIDGE_PROVIDER_4_KEY": DEAD_KEY,
        "CODER_AIBRIDGE_PROVIDER_4_BASE_URL": f"http://127.0.0.1:{free_port()}/v1/",
        "CODER_AIBRIDGE_PROVIDER_4_MAX_RETRIES": "0",
    }
    gateway = start_gateway(env, workers=2)
    state = World(gateway, gateway.log_path, log_json)
    for role in ("x", "y", "admin"):
        name = f"authz-{role}-{suffix}"
        state.users[role] = identities.store.identity.create_user(name, is_admin=role == "admin")
        state.tokens[role], _ = identities.token(name)
    state.tokens["alice"] = identities.alice
    state.all_tokens |= {identities.alice, identities.bob, *state.tokens.values()}
    _make_calls(state, suffix, database)
    return state


def _make_calls(state: World, suffix: str, database: Path) -> None:
    """y: Claude Code calls with a tool use; x: a Codex call. Each with its own model and prompt."""
    gateway = state.gateway
    for role, user_agent in (("x", "codex_cli_rs/0.50.0"), ("y", "claude-cli/2.1.0 (external, cli)")):
        state.models[role] = f"authz-{role}-model-{suffix}"
        state.prompts[role] = f"the private prompt of {role} {suffix}"
        state.calls[role] = []
    y_headers = {"X-Api-Key": state.tokens["y"], "anthropic-version": "2023-06-01",
                 "User-Agent": "claude-cli/2.1.0 (external, cli)"}
    for fixture, stream in (("anthropic/tool_use", False), ("anthropic/simple_text", True)):
        body = {**FIXTURES[fixture]["request"], "model": state.models["y"], "stream": stream,
                "messages": [{"role": "user", "content": state.prompts["y"]}]}
        response = state.call("POST", f"{gateway.base('anthropic')}/v1/messages", json=body,
                              headers={**y_headers, "X-Fixture": fixture})
        assert response.status_code == 200, response.text
        state.calls["y"].append(response.headers["X-AIBridge-Interception-Id"])
    body = {"model": state.models["x"], "messages": [{"role": "user", "content": state.prompts["x"]}]}
    response = state.call("POST", f"{gateway.base('openai')}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {state.tokens['x']}", "User-Agent": "codex_cli_rs/0.50.0",
                                   "X-Fixture": "openai_chat/simple_text"})
    assert response.status_code == 200, response.text
    state.calls["x"].append(response.headers["X-AIBridge-Interception-Id"])
    ids = state.calls["x"] + state.calls["y"]
    assert len(wait_for_records(database, ids)) == len(ids)


def _all_text(response: requests.Response) -> str:
    return response.content.decode("utf-8", "replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())


def _assert_nothing_of_y(world: World, response: requests.Response) -> None:
    text = _all_text(response)
    for leaked in (world.users["y"]["id"], world.users["y"]["username"], world.models["y"], world.prompts["y"],
                   *world.calls["y"], "get_weather", "Claude Code"):
        assert leaked not in text, f"{leaked!r} of another user in {response.request.method} {response.url}"


# -- reading records -----------------------------------------------------------------------------


def test_the_records_exist_and_an_admin_sees_both_users(world):
    for role in ("x", "y"):
        body = world.api("admin", INTERCEPTIONS, params={"q": f"initiator:{world.users[role]['username']}"}).json()
        assert sorted(r["id"] for r in body["results"]) == sorted(world.calls[role])
    tools = world.api("admin", "/api/v2/aibridge/tools", params={"since": "1h"}).json()["tools"]
    assert "get_weather" in [t["tool"] for t in tools]


def _filters(world: World) -> list[str]:
    y = world.users["y"]
    return ["", f"initiator:{y['username']}", f"initiator:{y['id']}", f"initiator:{y['username'].upper()}",
            "initiator:me", "provider:anthropic", "provider_name:anthropic", f"model:{world.models['y']}",
            'client:"Claude Code"', "started_after:2000-01-01T00:00:00Z",
            f"initiator:{y['username']} provider:anthropic model:{world.models['y']}",
            f"model:{world.models['x']}", "client:Codex"]


@pytest.mark.parametrize("header", ["bearer", "session"])
def test_a_user_sees_only_their_own_records_by_any_filter(world, header):
    auth = ({"Authorization": f"Bearer {world.tokens['x']}"} if header == "bearer"
            else {"Coder-Session-Token": world.tokens["x"]})
    for q in _filters(world):
        for page in ({"limit": 1000}, {"limit": 1}, {"offset": 0}, {"offset": 1}):
            response = world.call("GET", INTERCEPTIONS, params={"q": q, **page}, headers=auth)
            assert response.status_code == 200, (q, response.text)
            body = response.json()
            assert {r["initiator"]["id"] for r in body["results"]} <= {world.users["x"]["id"]}, q
            assert body["count"] <= len(world.calls["x"]), q
            _assert_nothing_of_y(world, response)
    mine = world.call("GET", INTERCEPTIONS, headers=auth).json()
    assert [r["id"] for r in mine["results"]] == world.calls["x"]


def test_another_users_id_is_no_cursor_and_no_path(world):
    for y_id in world.calls["y"]:
        hidden = world.api("x", INTERCEPTIONS, params={"after_id": y_id})
        missing = world.api("x", INTERCEPTIONS, params={"after_id": str(uuid.uuid4())})
        assert hidden.status_code == missing.status_code == 400
        assert hidden.json()["detail"] == missing.json()["detail"]  # indistinguishable from an unknown id
        for path in (f"{INTERCEPTIONS}/{y_id}", f"{INTERCEPTIONS}?id={y_id}", f"/api/v2/aibridge/{y_id}"):
            response = world.api("x", path)
            assert response.status_code in (400, 404), path
            assert world.prompts["y"] not in response.text and world.models["y"] not in response.text
        _assert_nothing_of_y(world, world.api("x", INTERCEPTIONS, params={"q": f"initiator:{y_id}"}))
    # An admin may use it as a cursor.
    assert world.api("admin", INTERCEPTIONS, params={"after_id": world.calls["y"][0]}).status_code == 200


def test_aggregates_count_only_the_callers_own_records(world):
    clients = world.api("x", "/api/v2/aibridge/clients")
    assert clients.json() == ["Codex"]
    for by in ("user", "model", "client", "provider"):
        for bucket in ("hour", "day"):
            response = world.api("x", "/api/v2/aibridge/usage", params={"by": by, "bucket": bucket, "since": "2h"})
            assert response.status_code == 200, response.text
            _assert_nothing_of_y(world, response)
            series = response.json()["series"]
            assert sum(p["interceptions"] for s in series for p in s["points"]) == len(world.calls["x"]), (by, bucket)
            if by == "user":
                assert [s["key"] for s in series] == [world.users["x"]["id"]]
    tools = world.api("x", "/api/v2/aibridge/tools", params={"since": "2h"})
    assert tools.status_code == 200 and tools.json() == {"tools": []}
    _assert_nothing_of_y(world, tools)
    # and y sees its own
    assert "get_weather" in [t["tool"] for t in world.api("y", "/api/v2/aibridge/tools", params={"since": "2h"}).json()["tools"]]


# -- administration ------------------------------------------------------------------------------


def _admin_calls(world: World) -> list[tuple[str, str, dict | None]]:
    x, y = world.users["x"]["username"], world.users["y"]["username"]
    token_id = world.api("admin", f"/api/v2/users/{y}/tokens").json()[0]["id"]
    return [("GET", "/api/v2/users", None), ("POST", "/api/v2/users", {"username": f"mallory-{x[-8:]}"}),
            ("POST", "/api/v2/users", {"username": x, "is_admin": True}),
            ("GET", f"/api/v2/users/{y}", None), ("GET", f"/api/v2/users/{x}", None),
            ("DELETE", f"/api/v2/users/{y}", None), ("GET", f"/api/v2/users/{y}/tokens", None),
            ("GET", f"/api/v2/users/{x}/tokens", None), ("POST", f"/api/v2/users/{x}/tokens", {}),
            ("POST", f"/api/v2/users/{y}/tokens", {"lifetime": "1h"}), ("DELETE", f"/api/v2/tokens/{token_id}", None),
            ("GET", "/api/v2/aibridge/budgets", None), ("GET", f"/api/v2/aibridge/budgets/{y}", None),
            ("GET", "/api/v2/aibridge/budgets/default", None),
            ("PUT", f"/api/v2/aibridge/budgets/{x}", {"period": "day", "limit_usd": 1000}),
            ("PUT", "/api/v2/aibridge/budgets/default", {"period": "day", "limit_tokens": 0}),
            ("DELETE", f"/api/v2/aibridge/budgets/{y}", None), ("DELETE", "/api/v2/aibridge/budgets/default", None)]


def test_a_non_admin_is_refused_every_admin_route_and_nothing_happens(world):
    before = world.api("admin", "/api/v2/users").json()
    budgets = world.api("admin", "/api/v2/aibridge/budgets").json()
    y_tokens = world.api("admin", f"/api/v2/users/{world.users['y']['username']}/tokens").json()
    calls = _admin_calls(world)
    assert {(method, _template(path)) for method, path, _ in calls} == set(ADMIN_ROUTES)
    for method, path, body in calls:
        for auth in ({"Authorization": f"Bearer {world.tokens['x']}"}, {"Coder-Session-Token": world.tokens["x"]}):
            response = world.call(method, path, json=body, headers=auth)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json() == {"message": "this route is for administrators"}
    assert world.api("admin", "/api/v2/users").json() == before
    assert world.api("admin", "/api/v2/aibridge/budgets").json() == budgets
    assert world.api("admin", f"/api/v2/users/{world.users['y']['username']}/tokens").json() == y_tokens
    assert world.api("y", INTERCEPTIONS).status_code == 200  # y's token still works


def _template(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/api/v2/users/"):
        parts[4] = "<name>"
    if path.startswith("/api/v2/tokens/"):
        parts[4] = "<token_id>"
    if path.startswith("/api/v2/aibridge/budgets/"):
        parts[5] = "<name>"
    return "/".join(parts)


def test_every_route_is_classified(tmp_path, upstream):
    """The route inventory: a new route must be added to one of the lists above (and so to the
    tests of its authorization) before it can ship."""
    settings = load_settings(env={**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": str(tmp_path / "inv.db")})
    app = create_app(settings)
    known = set(USER_ROUTES) | set(ADMIN_ROUTES) | set(PUBLIC_ROUTES)
    provider_prefixes = tuple(f"/api/v2/aibridge/{p.name}/" for p in settings.providers) + ("/api/v2/aibridge/<name>",)
    unclassified = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(provider_prefixes):
            continue  # provider routes: authenticated by bridge.proxy, tested below and in test_credentials
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (method, rule.rule) not in known:
                unclassified.append(f"{method} {rule.rule}")
    assert unclassified == []


# -- bad tokens on every route family ------------------------------------------------------------


def _families(world: World) -> list[tuple[str, str, str, dict | None, str]]:
    gw = world.gateway
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    messages = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    return [
        ("openai chat", "POST", f"{gw.base('openai')}/v1/chat/completions", chat, "bearer"),
        ("openai chat via X-Api-Key", "POST", f"{gw.base('openai')}/v1/chat/completions", chat, "x-api-key"),
        ("openai responses", "POST", f"{gw.base('openai')}/v1/responses", {"model": "gpt-4o", "input": "hi"}, "bearer"),
        ("team-b chat", "POST", f"{gw.base('team-b')}/v1/chat/completions", chat, "bearer"),
        ("anthropic messages", "POST", f"{gw.base('anthropic')}/v1/messages", messages, "x-api-key"),
        ("anthropic byok", "POST", f"{gw.base('anthropic')}/v1/messages", messages, "governance"),
        ("copilot chat", "POST", f"{gw.base('copilot')}/chat/completions", chat, "governance"),
        ("openai models", "GET", f"{gw.base('openai')}/v1/models", None, "bearer"),
        ("anthropic count_tokens", "POST", f"{gw.base('anthropic')}/v1/messages/count_tokens", messages, "x-api-key"),
        ("copilot models", "GET", f"{gw.base('copilot')}/models", None, "governance"),
        *[(f"api {path}", method, path, None, header) for method, path in USER_ROUTES for header in ("bearer", "session")],
        *[(f"admin {method} {path}", method, path.replace("<name>", "alice").replace("<token_id>", "abcdefghij"),
           {"username": "nobody-new"} if method == "POST" and path == "/api/v2/users" else None, "bearer")
          for method, path in ADMIN_ROUTES],
    ]


def _auth(kind: str, token: str) -> dict[str, str]:
    return {
        "bearer": {"Authorization": f"Bearer {token}"},
        "session": {"Coder-Session-Token": token},
        "x-api-key": {"X-Api-Key": token, "anthropic-version": "2023-06-01"},
        "governance": {"X-Coder-AI-Governance-Token": token, "Authorization": f"Bearer {BYOK_KEY}",
                       "anthropic-version": "2023-06-01"},
    }[kind]


@pytest.fixture(scope="module")
def bad_tokens(world, identities) -> dict[str, str]:
    """Admin tokens that worked (and sit in the workers' caches) before they went bad."""
    suffix = uuid.uuid4().hex[:6]
    found = {}
    expires = 0.0
    for kind in ("revoked", "revoked-by-api", "expired", "deleted-user"):
        name = f"authz-bad-{kind}-{suffix}"
        identities.store.identity.create_user(name, is_admin=True)
        lifetime = 3.0 if kind == "expired" else None
        if lifetime:
            expires = time.monotonic() + lifetime
        token, row = identities.token(name, lifetime=lifetime)
        for _ in range(4):  # both workers have it cached
            assert world.call("GET", INTERCEPTIONS, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        if kind == "revoked":
            identities.store.identity.revoke_token(row["id"])
        elif kind == "revoked-by-api":
            assert world.api("admin", f"/api/v2/tokens/{row['id']}", method="DELETE").status_code == 204
        elif kind == "deleted-user":
            assert world.api("admin", f"/api/v2/users/{name}", method="DELETE").status_code == 204
        found[kind] = token
    time.sleep(max(0.0, expires + 0.2 - time.monotonic()))  # the expired one has expired
    real = world.tokens["admin"]
    found["unknown"] = "not-a-token-at-all-0000000000000000000000"
    found["tampered"] = real[:-4] + ("aaaa" if not real.endswith("aaaa") else "bbbb")
    found["empty"] = ""
    world.all_tokens |= {t for t in found.values() if t}
    return found


BAD_KINDS = ["revoked", "revoked-by-api", "expired", "deleted-user", "unknown", "tampered", "empty"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_tokens_fail_on_every_route_family(world, bad_tokens, upstream, kind):
    token = bad_tokens[kind]
    for name, method, url, body, header in _families(world):
        before = len(upstream.requests)
        response = world.call(method, url, json=body, headers=_auth(header, token))
        assert response.status_code == 401, (kind, name, response.status_code, response.text)
        assert len(upstream.requests) == before, f"{name}: a bad token reached the upstream"
        assert "X-AIBridge-Interception-Id" not in response.headers


# -- no secret anywhere --------------------------------------------------------------------------


def test_error_paths_carry_no_secret(world, upstream):
    """Calls that fail in every way a key could slip into an answer: the upstream's 401, an
    unreachable upstream, a provider with only AWS credentials, bring-your-own-key, bad bodies."""
    gw = world.gateway
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    token = world.tokens["x"]
    cases = [
        ("POST", f"{gw.base('openai')}/v1/chat/completions", {"json": chat, "headers": {
            "Authorization": f"Bearer {token}", "X-Fixture": "openai_chat/http_401"}}),
        ("POST", f"{gw.base('anthropic')}/v1/messages", {"json": FIXTURES["anthropic/http_401"]["request"], "headers": {
            "X-Api-Key": token, "X-Fixture": "anthropic/http_401", "anthropic-version": "2023-06-01"}}),
        ("POST", f"{gw.base('dead')}/v1/chat/completions", {"json": chat, "headers": {"Authorization": f"Bearer {token}"}}),
        ("GET", f"{gw.base('dead')}/v1/models", {"headers": {"Authorization": f"Bearer {token}"}}),
        ("POST", f"{gw.base('bedrock')}/v1/messages", {"json": FIXTURES["anthropic/simple_text"]["request"], "headers": {
            "X-Api-Key": token, "X-Fixture": "anthropic/simple_text", "anthropic-version": "2023-06-01"}}),
        ("POST", f"{gw.base('openai')}/v1/chat/completions", {"json": chat, "headers": {
            "X-Coder-AI-Governance-Token": token, "Authorization": f"Bearer {BYOK_KEY}",
            "X-Fixture": "openai_chat/http_401"}}),
        ("POST", f"{gw.base('openai')}/v1/chat/completions", {"data": b"{not json", "headers": {
            "Authorization": f"Bearer {token}"}}),
        ("POST", f"{gw.base('copilot')}/chat/completions", {"json": chat, "headers": {
            "X-Coder-AI-Governance-Token": token, "Authorization": f"Bearer {GITHUB_TOKEN}",
            "X-Fixture": "openai_chat/http_401"}}),
        ("GET", f"{gw.base('team-b')}/v1/nope", {"headers": {"Authorization": f"Bearer {token}"}}),
        ("GET", "/api/v2/aibridge/nope/v1/models", {"headers": {"Authorization": f"Bearer {token}"}}),
        ("GET", "/metrics", {}),
        ("GET", "/readyz", {}),
    ]
    for method, url, kwargs in cases:
        response = world.call(method, url, **kwargs)
        assert response.status_code < 500 or response.status_code in (502, 504), (url, response.text)
    made = world.api("admin", f"/api/v2/users/{world.users['x']['username']}/tokens", method="POST",
                     json={"lifetime": "1h", "name": "shown-once"})
    assert made.status_code == 201
    world.all_tokens.add(made.json()["token"])
    listed = world.api("admin", f"/api/v2/users/{world.users['x']['username']}/tokens")
    assert "hashed_secret" not in listed.text and made.json()["token"] not in listed.text


def _secrets(world: World) -> set[str]:
    return {OPENAI_KEY, ANTHROPIC_KEY, TEAM_B_KEY, CORP_KEY, AWS_SECRET, AWS_ACCESS_KEY, DEAD_KEY, BYOK_KEY,
            GITHUB_TOKEN} | world.all_tokens


def test_zz_no_secret_in_any_response_log_or_store_file(world, database, session_dir):
    """Runs last in this module: everything above has been answered, logged and stored."""
    secrets = _secrets(world)
    assert len(world.responses) > 100
    for response in world.responses:
        text = _all_text(response)
        # The token a client sends comes back only where it was made: the one answer that shows a
        # new token once.
        shown_once = response.json().get("token") if (response.request.method == "POST" and response.status_code == 201
                                                       and response.url.endswith("/tokens")) else None
        for secret in secrets - {shown_once}:
            assert secret not in text, f"{secret[:6]}... in the answer to {response.request.method} {response.url}"
        assert "hashed_secret" not in text

    time.sleep(0.5)  # the last log lines
    logs = {path: path.read_bytes() for path in session_dir.iterdir() if path.suffix in (".log", ".jsonl")}
    assert world.log_path in logs and world.json_log_path in logs
    assert b"interception log" in logs[world.json_log_path]  # structured logging was on: records are in the log
    store_files = [path for path in database.parent.iterdir()
                   if path.name.startswith(database.name) or "stamp" in path.name or path.suffix in (".db", ".db-wal")]
    assert any(path.name.endswith("-wal") or path.name.endswith(".db") for path in store_files)
    for path, data in [*logs.items(), *((p, p.read_bytes()) for p in store_files if p.is_file())]:
        for secret in secrets:
            assert secret.encode() not in data, f"{secret[:6]}... in {path.name}"
    # and they do hold what they should: the records, with the key only as its hint
    stored = b"".join(p.read_bytes() for p in store_files if p.is_file())
    assert world.prompts["x"].encode() in stored
    assert orjson.dumps(world.models["y"])[1:-1] in stored
