"""The operating API (SPEC §8): interceptions and clients, users and tokens.

The query semantics run on a Flask test client over a temp database seeded with a known set of
records (every filter, both paginations, ties on started_at, permissions, every 400); the last
tests go through the real gateway under gunicorn, reading back a call it recorded itself.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.app import create_app
from bridge.config import load_settings
from bridge.store import RecordBatch, RecordQueries, Store, open_store
from bridge.timestamps import format_timestamp
from tests.harness import wait_for_records
from tests.sdk_calls import anthropic_client

INTERCEPTIONS = "/api/v2/aibridge/interceptions"
CLIENTS = "/api/v2/aibridge/clients"
PROVIDERS = [("anthropic", "anthropic", "claude-sonnet-4-5"), ("anthropic", "anthropic-corp", "claude-haiku-4-5"),
             ("openai", "openai", "gpt-4o"), ("openai", "team-b", "gpt-5"), ("copilot", "copilot", "gpt-4o")]
CLIENT_NAMES = ["Claude Code", "Codex", "openai-python", "GitHub Copilot", "Claude Code"]
RAW_TOOL_INPUT = '{"path":  "src/app.py",  "line": 3}'  # odd spacing: must come back exactly as sent


@dataclass
class Dataset:
    path: Path
    now: datetime
    users: dict[str, dict] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    #: Interception rows as written, with "username" and the children added.
    records: list[dict[str, Any]] = field(default_factory=list)

    def newest_first(self, records: list[dict] | None = None) -> list[str]:
        rows = self.records if records is None else records
        return [r["id"] for r in sorted(rows, key=lambda r: (r["started_at"], r["id"]), reverse=True)]

    def ids(self, predicate) -> list[str]:
        return self.newest_first([r for r in self.records if predicate(r)])

    def at(self, minutes_ago: float) -> str:
        return format_timestamp(self.now - timedelta(minutes=minutes_ago))


def seed_dataset(path: Path, count: int = 90) -> Dataset:
    """Users alice (admin), bob, carol and dave (deleted after his calls), and ``count`` interceptions
    over the last days cycling through providers, models and clients; every tenth pair shares its
    started_at to exercise the id tie-break of the ordering."""
    data = Dataset(path, datetime.now(timezone.utc).replace(microsecond=0))
    store = open_store(str(path), migrate=True)
    try:
        for name in ("alice", "bob", "carol", "dave"):
            data.users[name] = store.identity.create_user(name, is_admin=name == "alice")
            data.tokens[name], _ = store.identity.create_token(name)
        names = ["alice", "bob", "carol", "dave"]
        rng = random.Random(count)
        batch: dict[str, list[dict]] = {name: [] for name in ("interceptions", "token_usages", "user_prompts", "tool_usages", "model_thoughts")}
        for i in range(count):
            user = names[i % 4] if i % 7 else "bob"
            provider, provider_name, model = PROVIDERS[i % 5]
            minutes = i * 53 - (1 if i % 10 == 1 else 0) * 53  # i and i-1 collide when i % 10 == 1
            started = data.now - timedelta(minutes=minutes, seconds=30)
            row = {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "initiator_id": data.users[user]["id"], "provider": provider, "provider_name": provider_name,
                "model": model, "client": "Cursor" if user == "bob" and i % 7 == 0 else CLIENT_NAMES[(i // 5) % 5] if i % 11 else "Zed",
                "client_session_id": f"session-{i // 3}", "user_agent": f"agent/{i}",
                "credential_kind": "byok" if i % 6 == 0 else "centralized", "credential_hint": "sk-a...wxyz",
                "correlating_tool_call_id": f"toolu_{i - 1:03d}" if i % 4 == 1 else None,
                "started_at": format_timestamp(started), "ended_at": format_timestamp(started + timedelta(seconds=4)),
                "metadata": {"index": i},
            }
            batch["interceptions"].append(row)
            created = format_timestamp(started + timedelta(seconds=3))
            usages = [{"id": f"tu-{i}", "interception_id": row["id"], "provider_response_id": f"resp-{i}",
                       "input_tokens": 100 + i, "output_tokens": 10 + i, "cache_read_input_tokens": 2 * i,
                       "cache_write_input_tokens": i % 3, "metadata": {"reasoning_tokens": i}, "created_at": created,
                       # as priced when recorded: binary fractions (exact sums); every sixth without a price
                       "cost_usd": None if i % 6 == 5 else (i + 1) / 64}]
            prompts = [{"id": f"up-{i}", "interception_id": row["id"], "provider_response_id": f"resp-{i}",
                        "prompt": f"prompt number {i}", "metadata": {}, "created_at": created}] if i % 3 else []
            tools = [{"id": f"tool-{i}-{n}", "interception_id": row["id"], "provider_response_id": f"resp-{i}",
                      "provider_tool_call_id": f"toolu_{i:03d}" if n else f"toolu_{i:03d}a", "tool": "Read",
                      "input": RAW_TOOL_INPUT, "server_url": None, "injected": n == 1, "invocation_error": None,
                      "metadata": {}, "created_at": created} for n in range(2)] if i % 4 == 0 else []
            thoughts = [{"id": f"th-{i}", "interception_id": row["id"], "content": f"thinking about {i}",
                         "metadata": {"source": "thinking"}, "created_at": created}] if i % 5 == 0 else []
            batch["token_usages"] += usages
            batch["user_prompts"] += prompts
            batch["tool_usages"] += tools
            batch["model_thoughts"] += thoughts
            data.records.append({**row, "username": user, "token_usages": usages, "user_prompts": prompts,
                                 "tool_usages": tools, "model_thoughts": thoughts})
        store.records.write_records(RecordBatch.load(batch))
        store.identity.delete_user("dave")
    finally:
        store.close()
    return data


def make_client(path: Path):
    settings = load_settings(env={"CODER_AIBRIDGE_DATABASE_URL": str(path), "CODER_AIBRIDGE_RETENTION": "0"})
    return create_app(settings).test_client()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    return seed_dataset(tmp_path_factory.mktemp("api") / "api.db")


@pytest.fixture(scope="module")
def client(data: Dataset):
    return make_client(data.path)


def get(client, user: str | None, path: str = INTERCEPTIONS, header: str = "bearer", **params: Any):
    headers = {}
    if user is not None:
        token = DATA_TOKENS.get(user, user)  # a username of the module's dataset, or a token
        headers = {"Authorization": f"Bearer {token}"} if header == "bearer" else {"Coder-Session-Token": token}
    return client.get(path, query_string=params, headers=headers)


DATA_TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _tokens(data: Dataset):
    DATA_TOKENS.clear()
    DATA_TOKENS.update(data.tokens)


def ok(response) -> Any:
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def ids_of(body: dict) -> list[str]:
    return [r["id"] for r in body["results"]]


# -- results -------------------------------------------------------------------------------------


def test_results_are_newest_first_with_every_field_and_child(client, data: Dataset) -> None:
    body = ok(get(client, "alice", limit=1000))
    assert body["count"] == len(data.records) == len(body["results"])
    assert ids_of(body) == data.newest_first()
    by_id = {r["id"]: r for r in body["results"]}
    record = next(r for r in data.records if r["tool_usages"] and r["model_thoughts"] and r["user_prompts"])
    result = by_id[record["id"]]
    assert list(result) == ["id", "initiator", "provider", "provider_name", "model", "client", "client_session_id",
                            "user_agent", "credential_kind", "credential_hint", "correlating_tool_call_id",
                            "started_at", "ended_at", "metadata", "session_id", "thread_id", "cost_usd",
                            "token_usages", "user_prompts", "tool_usages", "model_thoughts"]
    assert result["initiator"] == {"id": record["initiator_id"], "username": record["username"]}
    for key in ("provider", "provider_name", "model", "client", "client_session_id", "user_agent", "credential_kind",
                "credential_hint", "correlating_tool_call_id", "started_at", "ended_at"):
        assert result[key] == record[key], key
    assert result["metadata"] == record["metadata"]
    [usage] = result["token_usages"]
    assert result["cost_usd"] == usage["cost_usd"] == record["token_usages"][0]["cost_usd"]
    assert usage["metadata"] == {"reasoning_tokens": record["token_usages"][0]["metadata"]["reasoning_tokens"]}
    assert {k: usage[k] for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens",
                                  "provider_response_id", "interception_id")} == {
        k: record["token_usages"][0][k] for k in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                                                  "cache_write_input_tokens", "provider_response_id", "interception_id")}
    assert [p["prompt"] for p in result["user_prompts"]] == [p["prompt"] for p in record["user_prompts"]]
    assert [(t["provider_tool_call_id"], t["tool"], t["input"], t["injected"]) for t in result["tool_usages"]] == [
        (t["provider_tool_call_id"], "Read", RAW_TOOL_INPUT, t["injected"]) for t in record["tool_usages"]]
    assert [(t["content"], t["metadata"]) for t in result["model_thoughts"]] == [
        (t["content"], {"source": "thinking"}) for t in record["model_thoughts"]]
    # An interception without children has empty lists, not missing keys.
    bare = next(r for r in data.records if not r["user_prompts"] and not r["tool_usages"] and not r["model_thoughts"])
    assert by_id[bare["id"]]["tool_usages"] == by_id[bare["id"]]["model_thoughts"] == by_id[bare["id"]]["user_prompts"] == []


def test_a_deleted_users_records_keep_their_initiator(client, data: Dataset) -> None:
    body = ok(get(client, "alice", q="initiator:dave", limit=1000))
    assert ids_of(body) == data.ids(lambda r: r["username"] == "dave") != []
    assert {r["initiator"]["username"] for r in body["results"]} == {"dave"}


def _filter_cases(data: Dataset) -> list[tuple[str, Any]]:
    bob, carol = data.users["bob"]["id"], data.users["carol"]["id"]
    t1, t2 = data.at(60 * 24), data.at(60 * 48)
    return [
        ("initiator:bob", lambda r: r["username"] == "bob"),
        (f"initiator:{carol}", lambda r: r["initiator_id"] == carol),
        ("initiator:BOB", lambda r: r["initiator_id"] == bob),  # usernames are case-insensitive
        ("initiator:me", lambda r: r["username"] == "alice"),
        ("provider:anthropic", lambda r: r["provider"] == "anthropic"),
        ("provider:copilot", lambda r: r["provider"] == "copilot"),
        ("provider_name:team-b", lambda r: r["provider_name"] == "team-b"),
        ("provider_name:anthropic", lambda r: r["provider_name"] == "anthropic"),
        ("model:gpt-4o", lambda r: r["model"] == "gpt-4o"),
        ('client:"Claude Code"', lambda r: r["client"] == "Claude Code"),
        ("'client:Claude Code'", lambda r: r["client"] == "Claude Code"),
        ("client:Zed", lambda r: r["client"] == "Zed"),
        (f"started_after:{t1}", lambda r: r["started_at"] >= t1),
        (f"started_before:{t1}", lambda r: r["started_at"] < t1),
        (f"started_after:{t2} started_before:{t1}", lambda r: t2 <= r["started_at"] < t1),
        ("provider:openai model:gpt-4o", lambda r: r["provider"] == "openai" and r["model"] == "gpt-4o"),
        ('initiator:bob client:"Claude Code" provider:anthropic',
         lambda r: r["username"] == "bob" and r["client"] == "Claude Code" and r["provider"] == "anthropic"),
        (f"model:gpt-5 started_after:{t2}", lambda r: r["model"] == "gpt-5" and r["started_at"] >= t2),
        ("  Model:gpt-5   Provider_Name:team-b ", lambda r: r["model"] == "gpt-5"),
        ("model:no-such-model", lambda r: False),
        ("initiator:nobody", lambda r: False),
        ("", lambda r: True),
    ]


def test_every_filter(client, data: Dataset) -> None:
    for q, predicate in _filter_cases(data):
        expected = data.ids(predicate)
        body = ok(get(client, "alice", q=q, limit=1000))
        assert ids_of(body) == expected, q
        assert body["count"] == len(expected), q
        small = ok(get(client, "alice", q=q, limit=3))  # the count is of all matches, not the page
        assert small["count"] == len(expected) and ids_of(small) == expected[:3], q
    assert any(len(data.ids(p)) > 3 for _, p in _filter_cases(data))


def test_times_with_offsets_and_fractions_compare_as_instants(client, data: Dataset) -> None:
    cutoff = data.now - timedelta(hours=30)
    expected = data.ids(lambda r: r["started_at"] >= format_timestamp(cutoff))
    local = cutoff.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    for text in (cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"), local, cutoff.strftime("%Y-%m-%dT%H:%M:%S.000000z")):
        assert ids_of(ok(get(client, "alice", q=f"started_after:{text}", limit=1000))) == expected, text


PAGED = {"": lambda r: True, "provider:anthropic": lambda r: r["provider"] == "anthropic",
         "initiator:bob": lambda r: r["username"] == "bob"}


@pytest.mark.parametrize("q", list(PAGED))
@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_keyset_pages_walk_every_match_once(client, data: Dataset, q: str, limit: int) -> None:
    expected = data.ids(PAGED[q])
    seen: list[str] = []
    params: dict[str, Any] = {"q": q, "limit": limit}
    for _ in range(len(data.records) + 2):
        body = ok(get(client, "alice", **params))
        assert body["count"] == len(expected)
        page = ids_of(body)
        assert len(page) <= limit
        if not page:
            break
        seen += page
        params["after_id"] = page[-1]
    assert seen == expected  # order kept, no duplicate, no gap (ties on started_at included)


@pytest.mark.parametrize("q", list(PAGED))
def test_offset_pages_walk_every_match_once(client, data: Dataset, q: str) -> None:
    expected = data.ids(PAGED[q])
    seen: list[str] = []
    for offset in range(0, len(expected) + 10, 10):
        seen += ids_of(ok(get(client, "alice", q=q, limit=10, offset=offset)))
    assert seen == expected
    assert ok(get(client, "alice", q=q, offset=len(expected) + 5)) == {"count": len(expected), "results": []}


def test_ties_on_started_at_are_ordered_by_id_descending(data: Dataset, client) -> None:
    by_time: dict[str, list[str]] = {}
    for r in data.records:
        by_time.setdefault(r["started_at"], []).append(r["id"])
    ties = [sorted(ids, reverse=True) for ids in by_time.values() if len(ids) > 1]
    assert ties, "the dataset must have ties"
    order = ids_of(ok(get(client, "alice", limit=1000)))
    for tie in ties:
        positions = [order.index(i) for i in tie]
        assert positions == list(range(positions[0], positions[0] + len(tie)))


def test_a_cursor_keeps_its_place_when_newer_records_arrive(tmp_path: Path) -> None:
    data = seed_dataset(tmp_path / "cursor.db", count=20)
    client = make_client(data.path)
    first = ok(get(client, data.tokens["alice"], limit=5))
    store = open_store(str(data.path))
    try:
        store.records.write_records(RecordBatch.load(dict(interceptions=[{
            "id": str(uuid.uuid4()), "initiator_id": data.users["alice"]["id"], "provider": "openai",
            "started_at": format_timestamp(datetime.now(timezone.utc)), "metadata": {}}])))
    finally:
        store.close()
    second = ok(get(client, data.tokens["alice"], limit=5, after_id=ids_of(first)[-1]))
    assert ids_of(second) == data.newest_first()[5:10]
    assert second["count"] == 21


# -- query plans: what keeps a page fast at a million interceptions ----------------------------


PLANNED = [
    {}, {"initiator": "bob"}, {"provider": "anthropic"}, {"provider_name": "team-b"}, {"model": "gpt-4o"},
    {"client": "Codex"}, {"started_after": "2025-01-01T00:00:00.000000Z"},
    {"model": "gpt-4o", "client": "Codex", "provider": "openai"}, {"initiator": "bob", "model": "gpt-5"},
    {"provider_name": "team-b", "started_after": "2025-01-01T00:00:00.000000Z",
     "started_before": "2030-01-01T00:00:00.000000Z"},
]


@pytest.mark.parametrize("filters", PLANNED, ids=[",".join(f) or "none" for f in PLANNED])
@pytest.mark.parametrize("page", ["first", "after_id", "offset"])
def test_every_query_reads_one_index_and_children_in_one_query_each(data: Dataset, filters: dict, page: str) -> None:
    """No ANALYZE (a gateway's own database has no statistics): the count and the page come from a
    covering index (no table rows, no sort), children from their interception_id index, and the
    number of statements does not grow with the page (no N+1)."""
    from bridge.store import InterceptionFilter, open_store

    store = open_store(str(data.path))
    statements: list[str] = []
    try:
        kwargs: dict[str, Any] = {"limit": 50}
        if page == "after_id":
            kwargs["after_id"] = data.newest_first()[3]
        elif page == "offset":
            kwargs["offset"] = 5
        store.db.conn.set_trace_callback(statements.append)
        result = store.queries.query_interceptions(InterceptionFilter(**filters), viewer_id=None, **kwargs)
        store.db.conn.set_trace_callback(None)
        assert result["results"] or filters, "the unfiltered query must return rows"
        plans = {sql: " | ".join(r[3] for r in store.db.execute(f"EXPLAIN QUERY PLAN {sql}"))
                 for sql in statements if sql.startswith("SELECT")}
    finally:
        store.close()
    count = [p for sql, p in plans.items() if sql.startswith("SELECT count(*) FROM aibridge_interceptions")]
    ids = [p for sql, p in plans.items() if sql.startswith("SELECT id FROM aibridge_interceptions")]
    assert len(count) == len(ids) == 1
    for plan in count + ids:
        assert "COVERING INDEX" in plan and "TEMP B-TREE" not in plan, plan
    children = [(sql, p) for sql, p in plans.items() if "WHERE interception_id IN" in sql]
    rows = [p for sql, p in plans.items() if sql.startswith("SELECT i.id")]
    if not result["results"]:
        assert children == rows == []  # an empty page reads nothing more
        return
    assert len(children) == 4  # one per child table, whatever the page size
    for sql, plan in children:
        assert "_interception_id (interception_id=?)" in plan, plan
    assert len(rows) == 1 and "(id=?)" in rows[0]
    assert len(plans) <= 7 + 3 + 1  # count, ids, rows, 4 children + resolving an initiator + the cursor


def spy_store_threads(monkeypatch, method: str) -> list[int]:
    """Wrap ``Store.<method>``: the returned list collects the id of the thread of every call."""
    threads: list[int] = []
    owner = RecordQueries if hasattr(RecordQueries, method) else Store
    original = getattr(owner, method)

    def spy(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, spy)
    return threads


def test_queries_run_on_a_native_thread_not_the_callers(client, data: Dataset, monkeypatch) -> None:
    """sqlite would block the gevent hub (every stream of the worker) while it reads."""
    threads = spy_store_threads(monkeypatch, "query_interceptions")
    ok(get(client, "alice", limit=1))
    assert threads and threading.get_ident() not in threads


# -- permissions ---------------------------------------------------------------------------------


def test_users_see_only_their_own_records(client, data: Dataset) -> None:
    bob = data.users["bob"]["id"]
    mine = data.ids(lambda r: r["initiator_id"] == bob)
    for header in ("bearer", "session"):
        body = ok(get(client, "bob", header=header, limit=1000))
        assert ids_of(body) == mine and body["count"] == len(mine)
        assert {r["initiator"]["username"] for r in body["results"]} == {"bob"}
    for q in ("initiator:me", "initiator:bob", f"initiator:{bob}"):
        assert ids_of(ok(get(client, "bob", q=q, limit=1000))) == mine
    assert ids_of(ok(get(client, "bob", q="model:gpt-4o", limit=1000))) == data.ids(
        lambda r: r["initiator_id"] == bob and r["model"] == "gpt-4o")


def test_other_users_records_are_invisible_by_any_filter_or_id(client, data: Dataset) -> None:
    alice = data.users["alice"]["id"]
    for q in ("initiator:alice", f"initiator:{alice}", "initiator:nobody", "initiator:dave"):
        assert ok(get(client, "bob", q=q)) == {"count": 0, "results": []}, q
    # An id of alice's interception as a cursor is refused exactly like one that does not exist.
    alices = data.ids(lambda r: r["initiator_id"] == alice)[0]
    hidden = get(client, "bob", after_id=alices)
    missing = get(client, "bob", after_id=str(uuid.uuid4()))
    assert hidden.status_code == missing.status_code == 400
    assert hidden.get_json()["detail"] == missing.get_json()["detail"]
    assert hidden.get_json()["message"] == f"unknown after_id {alices!r}"
    assert ok(get(client, "alice", after_id=alices))["count"] == len(data.records)  # visible to an admin


def test_clients_lists_the_distinct_client_names_the_caller_may_see(client, data: Dataset) -> None:
    assert ok(get(client, "alice", CLIENTS)) == sorted({r["client"] for r in data.records})
    carol = data.users["carol"]["id"]
    own = sorted({r["client"] for r in data.records if r["initiator_id"] == carol})
    assert ok(get(client, "carol", CLIENTS, header="session")) == own
    assert "Cursor" not in own and "Cursor" in ok(get(client, "bob", CLIENTS))  # only bob used it


# -- refusals ------------------------------------------------------------------------------------


BAD_QUERIES = [
    ({"q": "colour:red"}, "unknown filter 'colour'"),
    ({"q": "model"}, "not a key:value"),
    ({"q": "model:"}, "has no value"),
    ({"q": "model:a model:b"}, "more than once"),
    ({"q": 'client:"Claude Code'}, "unbalanced quotes"),
    ({"q": "started_after:yesterday"}, "started_after"),
    ({"q": "started_before:2025-13-01T00:00:00Z"}, "started_before"),
    ({"q": "started_after:2025-06-01"}, "RFC 3339"),
    ({"q": "started_after:2025-06-01T00:00:00"}, "no time zone"),
    ({"q": "started_after:2025-06-02T00:00:00Z started_before:2025-06-01T00:00:00Z"}, "started_before must be later"),
    ({"q": "started_after:2025-06-01T00:00:00Z started_before:2025-06-01T02:00:00+02:00"}, "started_before must be later"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "not a number"),
    ({"limit": "-5"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"offset": "x"}, "offset"),
    ({"offset": str(2**64)}, "out of range"),
    ({"offset": "0", "after_id": "abc"}, "cannot be combined"),
    ({"after_id": "0f6a4d07-5c53-4ad2-8f66-3f33f1bb5fb5"}, "unknown after_id"),
    ({"after_id": ""}, "after_id"),
    ({"model": "gpt-4o"}, "unknown query parameter 'model'"),
]


@pytest.mark.parametrize("params, fragment", BAD_QUERIES, ids=[str(p) for p, _ in BAD_QUERIES])
def test_a_bad_query_is_a_400_naming_the_problem(client, params: dict, fragment: str) -> None:
    response = get(client, "alice", **params)
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"message", "detail"}
    assert fragment in body["message"] + " " + body["detail"]


def test_a_parameter_given_twice_is_refused(client) -> None:
    response = client.get(f"{INTERCEPTIONS}?limit=1&limit=2", headers={"Authorization": f"Bearer {DATA_TOKENS['alice']}"})
    assert response.status_code == 400 and "more than once" in response.get_json()["message"]


def test_limits_at_the_edges_are_accepted(client, data: Dataset) -> None:
    assert len(ok(get(client, "alice", limit=1))["results"]) == 1
    assert len(ok(get(client, "alice", limit="1000"))["results"]) == len(data.records)
    assert len(ok(get(client, "alice"))["results"]) == min(100, len(data.records))


@pytest.mark.parametrize("path", [INTERCEPTIONS, CLIENTS, "/api/v2/users", "/api/v2/users/bob/tokens"])
def test_no_valid_token_is_a_401(client, data: Dataset, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Coder-Session-Token": "abcdefghij-" + "x" * 43},
                    {"Authorization": f"Basic {data.tokens['alice']}"}, {"X-Api-Key": data.tokens["alice"]}):
        response = client.get(path, headers=headers)
        assert response.status_code == 401, headers
        assert set(response.get_json()) == {"message"}
        assert response.headers["WWW-Authenticate"] == "Bearer"


# -- users and tokens ----------------------------------------------------------------------------


ADMIN_ROUTES = [("get", "/api/v2/users", None), ("post", "/api/v2/users", {"username": "mallory"}),
                ("get", "/api/v2/users/bob", None), ("delete", "/api/v2/users/carol", None),
                ("get", "/api/v2/users/carol/tokens", None), ("post", "/api/v2/users/bob/tokens", {}),
                ("delete", "/api/v2/tokens/abcdefghij", None)]


@pytest.mark.parametrize("method, path, body", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_refuse_users_and_anonymous_callers(client, data: Dataset, method: str, path: str, body) -> None:
    call = getattr(client, method)
    refused = call(path, json=body, headers={"Authorization": f"Bearer {data.tokens['bob']}"})
    assert refused.status_code == 403 and refused.get_json() == {"message": "this route is for administrators"}
    assert call(path, json=body).status_code == 401
    # nothing happened
    store = open_store(str(data.path))
    try:
        assert store.identity.get_user("mallory") is None and store.identity.get_user("carol") is not None
        assert len(store.identity.list_tokens("bob")) == 1
    finally:
        store.close()


def test_admin_user_and_token_lifecycle(tmp_path: Path) -> None:
    data = seed_dataset(tmp_path / "admin.db", count=5)
    client = make_client(data.path)
    admin = {"Authorization": f"Bearer {data.tokens['alice']}"}

    created = client.post("/api/v2/users", json={"username": "erin", "is_admin": False}, headers=admin)
    assert created.status_code == 201
    erin = created.get_json()
    assert erin["username"] == "erin" and erin["is_admin"] is False and erin["deleted_at"] is None
    assert client.post("/api/v2/users", json={"username": "ERIN"}, headers=admin).status_code == 409
    assert client.post("/api/v2/users", json={"username": "bad name!"}, headers=admin).status_code == 400
    for body in ({}, {"username": 5}, {"username": "x", "is_admin": "yes"}, {"username": "x", "admin": True}, [1]):
        response = client.post("/api/v2/users", json=body, headers=admin)
        assert response.status_code == 400 and "message" in response.get_json(), body
    response = client.post("/api/v2/users", data="{not json", headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == 400
    boss = client.post("/api/v2/users", json={"username": "frank", "is_admin": True}, headers=admin).get_json()
    assert boss["is_admin"] is True
    listed = client.get("/api/v2/users", headers=admin).get_json()
    assert [u["username"] for u in listed] == ["alice", "bob", "carol", "erin", "frank"]  # dave is deleted
    assert client.get("/api/v2/users/erin", headers=admin).get_json() == erin
    assert client.get(f"/api/v2/users/{erin['id']}", headers=admin).get_json() == erin
    assert client.get("/api/v2/users/dave", headers=admin).status_code == 404

    made = client.post("/api/v2/users/erin/tokens", json={"lifetime": "30d", "name": "laptop"}, headers=admin)
    assert made.status_code == 201
    token = made.get_json()
    assert token["username"] == "erin" and token["name"] == "laptop" and token["expires_at"] > token["created_at"]
    assert "hashed_secret" not in token
    erin_headers = {"Coder-Session-Token": token["token"]}
    assert ok(client.get(INTERCEPTIONS, headers=erin_headers)) == {"count": 0, "results": []}
    assert client.get("/api/v2/users", headers=erin_headers).status_code == 403
    forever = client.post("/api/v2/users/erin/tokens", headers=admin)  # no body: never expires
    assert forever.status_code == 201 and forever.get_json()["expires_at"] is None
    for body, fragment in (({"lifetime": "30x"}, "lifetime"), ({"lifetime": "0"}, "positive"),
                           ({"lifetime": 30}, "string"), ({"name": ""}, "name")):
        response = client.post("/api/v2/users/erin/tokens", json=body, headers=admin)
        assert response.status_code == 400 and fragment in response.get_json()["message"], body
    assert client.post("/api/v2/users/nobody/tokens", json={}, headers=admin).status_code == 404
    assert client.get("/api/v2/users/nobody/tokens", headers=admin).status_code == 404
    tokens = client.get("/api/v2/users/erin/tokens", headers=admin).get_json()
    assert [t["id"] for t in tokens] == [token["id"], forever.get_json()["id"]]
    assert all("token" not in t and "hashed_secret" not in t for t in tokens)

    assert client.delete(f"/api/v2/tokens/{token['id']}", headers=admin).status_code == 204
    assert client.get(INTERCEPTIONS, headers=erin_headers).status_code == 401
    assert client.get("/api/v2/users/erin/tokens", headers=admin).get_json()[0]["revoked_at"] is not None
    assert client.delete("/api/v2/tokens/nosuchtokn", headers=admin).status_code == 404

    other = {"Authorization": f"Bearer {forever.get_json()['token']}"}
    assert client.get(INTERCEPTIONS, headers=other).status_code == 200
    assert client.delete("/api/v2/users/erin", headers=admin).status_code == 204
    assert client.get(INTERCEPTIONS, headers=other).status_code == 401  # a deleted user's tokens stop working
    assert client.delete("/api/v2/users/erin", headers=admin).status_code == 404
    assert client.get("/api/v2/users/erin", headers=admin).status_code == 404
    assert client.post("/api/v2/users", json={"username": "erin"}, headers=admin).status_code == 201  # name is free


def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    data = seed_dataset(tmp_path / "expired.db", count=1)
    store = open_store(str(data.path))
    try:
        expired, _ = store.identity.create_token("alice", lifetime=0.001)
    finally:
        store.close()
    client = make_client(data.path)
    assert client.get(INTERCEPTIONS, headers={"Authorization": f"Bearer {expired}"}).status_code == 401


# -- through the real gateway --------------------------------------------------------------------


def test_a_call_the_gateway_recorded_is_served_by_the_api(gateway, identities, database) -> None:
    """gunicorn, two gevent workers: a user's call, read back by that user and by an admin."""
    name = f"api-{uuid.uuid4().hex[:8]}"
    identities.store.identity.create_user(name)
    token, _ = identities.token(name)
    anthropic = anthropic_client(gateway.base("anthropic"), token, "anthropic/simple_text",
                                 **{"User-Agent": "claude-cli/2.1.0 (external, cli)"})
    raw = anthropic.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=10,
                                                      messages=[{"role": "user", "content": "hi from the api test"}])
    interception_id = raw.headers["X-AIBridge-Interception-Id"]
    stored = wait_for_records(database, [interception_id])[interception_id]

    url = f"{gateway.url}{INTERCEPTIONS}"
    mine = requests.get(url, params={"q": "initiator:me"}, headers={"Coder-Session-Token": token}, timeout=10)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["count"] == 1 and ids_of(body) == [interception_id]
    [result] = body["results"]
    assert result["initiator"]["username"] == name and result["client"] == "Claude Code"
    assert result["model"] == "claude-haiku-4-5" and result["ended_at"] == stored["ended_at"]
    assert [p["prompt"] for p in result["user_prompts"]] == ["hi from the api test"]
    assert [u["output_tokens"] for u in result["token_usages"]] == [u["output_tokens"] for u in stored["token_usages"]]

    admin = {"Authorization": f"Bearer {identities.alice}"}
    seen = requests.get(url, params={"q": f'initiator:{name} client:"Claude Code"'}, headers=admin, timeout=10).json()
    assert seen["results"] == body["results"]
    hidden = requests.get(url, params={"q": "initiator:alice", "limit": 1}, headers={"Coder-Session-Token": token},
                          timeout=10)
    assert hidden.json() == {"count": 0, "results": []}
    clients = requests.get(f"{gateway.url}{CLIENTS}", headers={"Coder-Session-Token": token}, timeout=10)
    assert clients.json() == ["Claude Code"]
    bad = requests.get(url, params={"q": "colour:red"}, headers=admin, timeout=10)
    assert bad.status_code == 400 and "colour" in bad.json()["message"]
    assert requests.get(url, timeout=10).status_code == 401


def test_admin_api_refuses_a_huge_body_and_keeps_serving(gateway, identities) -> None:
    from bridge.api import API_BODY_MAX

    admin = {"Authorization": f"Bearer {identities.alice}", "Content-Type": "application/json"}
    users = f"{gateway.url}/api/v2/users"
    huge = b'{"username": "' + b"x" * (API_BODY_MAX * 16) + b'"}'
    declared = requests.post(users, data=huge, headers=admin, timeout=30)
    chunked = requests.post(users, data=iter([huge[:1000], huge[1000:]]), headers=admin, timeout=30)  # no length
    for response in (declared, chunked):
        assert response.status_code == 413 and "limit" in response.json()["message"]
    name = f"small-{uuid.uuid4().hex[:8]}"
    assert requests.post(users, json={"username": name}, headers=admin, timeout=10).status_code == 201
    assert requests.delete(f"{users}/{name}", headers=admin, timeout=10).status_code == 204


def test_admin_rest_through_the_gateway(gateway, identities) -> None:
    admin = {"Authorization": f"Bearer {identities.alice}"}
    name = f"rest-{uuid.uuid4().hex[:8]}"
    users = f"{gateway.url}/api/v2/users"
    assert requests.post(users, json={"username": name}, headers=admin, timeout=10).status_code == 201
    made = requests.post(f"{users}/{name}/tokens", json={"lifetime": "1h"}, headers=admin, timeout=10)
    assert made.status_code == 201
    token = made.json()["token"]
    assert requests.get(f"{gateway.url}{INTERCEPTIONS}", headers={"Authorization": f"Bearer {token}"},
                        timeout=10).json() == {"count": 0, "results": []}
    assert requests.get(users, headers={"Authorization": f"Bearer {identities.bob}"}, timeout=10).status_code == 403
    assert requests.delete(f"{gateway.url}/api/v2/tokens/{made.json()['id']}", headers=admin, timeout=10).status_code == 204
    assert requests.get(f"{gateway.url}{INTERCEPTIONS}", headers={"Authorization": f"Bearer {token}"},
                        timeout=10).status_code == 401
    assert requests.delete(f"{users}/{name}", headers=admin, timeout=10).status_code == 204
    assert name not in [u["username"] for u in requests.get(users, headers=admin, timeout=10).json()]
