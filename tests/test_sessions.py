"""Sessions and threads (SPEC §9; issue 18): the store keeps them from the records on SQLite and
PostgreSQL, whatever order the records are written in; the API and the CLI show them.

The end-to-end session is Claude-Code-shaped and driven through the real gateway (gunicorn) against
the fake upstream replaying recorded Anthropic traffic: X-Claude-Code-Session-Id on every call, each
turn answering the previous turn's tool calls with tool_result blocks, and a new user prompt halfway.
Each turn's recorded answer gets tool call ids of its own (a real model never repeats one).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
import requests

from bridge.store import MIGRATIONS, RecordBatch, open_store
from tests.conftest import Identities, provider_env
from tests.harness import assert_cli_error, cli_runner, wait_until
from tests.test_api import BAD_QUERIES
from tests.sdk_calls import load_fixtures

FIXTURES = dict(load_fixtures("anthropic"))
API = "/api/v2/aibridge"
NEWER = "/api/v2/ai-gateway"
CLAUDE_CODE = "claude-cli/2.1.0 (external, cli)"
FIRST_PROMPT = FIXTURES["anthropic/tool_use"]["expect"]["prompt"]
SECOND_PROMPT = "And now compare Paris and Tokyo"


# -- a Claude-Code-shaped session through the gateway ------------------------------------------------


def _renamed(fixture: str, turn: str) -> dict[str, Any]:
    """A recorded answer whose tool call ids are made this turn's own."""
    text = json.dumps(FIXTURES[fixture])
    for call in FIXTURES[fixture]["expect"]["tool_calls"]:
        text = text.replace(call["id"], f"{call['id'][:-6]}{turn}")
    return json.loads(text)


class Turn:
    """One call of the session: the answer's fixture, and what the call recorded."""

    def __init__(self, fixture: dict[str, Any], stream: bool, prefix: str = API) -> None:
        self.fixture, self.stream, self.prefix = fixture, stream, prefix
        self.interception_id = ""

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.fixture["expect"]["tool_calls"]

    @property
    def usage(self) -> dict[str, int]:
        return self.fixture["expect"]["usage"]


def run_claude_code_session(gateway_url: str, token: str, upstream) -> tuple[str, list[Turn]]:
    """Five turns of one Claude Code session: a prompt and two tool round trips (one with parallel
    calls) answered in turn, then a new prompt and one round trip. The third turn goes through the
    /api/v2/ai-gateway/ prefix. Returns the session id and the turns with their interception ids."""
    tag = uuid.uuid4().hex[:6]
    turns = [Turn(_renamed("anthropic/tool_use", f"1{tag[:5]}"), False),
             Turn(_renamed("anthropic/parallel_tool_use", f"2{tag[:5]}"), True),
             Turn(copy.deepcopy(FIXTURES["anthropic/tool_result"]), False, NEWER),
             Turn(_renamed("anthropic/tool_use", f"4{tag[:5]}"), True),
             Turn(copy.deepcopy(FIXTURES["anthropic/tool_result"]), False)]
    session_id = str(uuid.uuid4())
    request = FIXTURES["anthropic/tool_use"]["request"]
    messages: list[dict[str, Any]] = [{"role": "user", "content": FIRST_PROMPT}]
    for n, turn in enumerate(turns):
        name = f"session-{tag}/turn{n + 1}"
        upstream.fixtures[name] = turn.fixture
        if n == 3:  # the answer before had no tool calls: the user asks something new
            messages.append({"role": "user", "content": SECOND_PROMPT})
        body = {**request, "model": turn.fixture["request"]["model"], "stream": turn.stream, "messages": messages}
        response = requests.post(f"{gateway_url}{turn.prefix}/anthropic/v1/messages", json=body, timeout=30, headers={
            "X-Api-Key": token, "anthropic-version": "2023-06-01", "User-Agent": CLAUDE_CODE,
            "X-Claude-Code-Session-Id": session_id, "X-Fixture": name})
        assert response.status_code == 200, response.text
        turn.interception_id = response.headers["X-AIBridge-Interception-Id"]
        answer = turn.fixture["blocking"]["body"]["content"]
        messages = [*messages, {"role": "assistant", "content": answer}]
        if turn.calls:  # Claude Code runs the tools and sends every result back in one user message
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call["id"], "content": "18°C, sunny"} for call in turn.calls]})
    return session_id, turns


def _api(gateway_url: str, token: str, path: str, prefix: str = API, **params: Any) -> requests.Response:
    return requests.get(f"{gateway_url}{prefix}/{path}", params=params, headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


def _ok(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _recorded_session(gateway_url: str, admin: str, session_id: str, count: int) -> dict[str, Any]:
    """The session once the writers stored all ``count`` interceptions ended."""
    def whole() -> dict[str, Any] | None:
        response = _api(gateway_url, admin, f"sessions/{session_id}")
        if response.status_code != 200:
            return None
        found = response.json()
        ended = all(r["ended_at"] for t in found["threads"] for r in t["interceptions"])
        return found if found["interception_count"] == count and ended else None
    return wait_until(whole, f"session {session_id} with {count} ended interceptions", timeout=20)


def check_claude_code_session(gateway_url: str, upstream, owner: str, owner_token: str, admin: str, other: str) -> None:
    """The session shows exactly its turns, in two threads, to its owner and admins, to no one else,
    under both prefixes."""
    session_id, turns = run_claude_code_session(gateway_url, owner_token, upstream)
    ids = [turn.interception_id for turn in turns]
    session = _recorded_session(gateway_url, admin, session_id, len(turns))

    threads = [[ids[0], ids[1], ids[2]], [ids[3], ids[4]]]
    assert [t["id"] for t in session["threads"]] == [ids[0], ids[3]]
    assert [[r["id"] for r in t["interceptions"]] for t in session["threads"]] == threads
    assert [t["prompt"] for t in session["threads"]] == [FIRST_PROMPT, SECOND_PROMPT]
    for thread, members in zip(session["threads"], threads):
        used = [turns[ids.index(i)].usage for i in members]
        assert thread["token_usage"] == {"input": sum(u["input_tokens"] for u in used),
                                         "output": sum(u["output_tokens"] for u in used),
                                         "cache_read": sum(u["cache_read_input_tokens"] for u in used),
                                         "cache_write": sum(u["cache_write_input_tokens"] for u in used)}
        assert thread["started_at"] == thread["interceptions"][0]["started_at"]
        # Claude Sonnet 4.5's published prices: input 3, output 15 USD per million tokens (no cache use here).
        tokens = thread["token_usage"]
        assert thread["cost_usd"] == pytest.approx((tokens["input"] * 3 + tokens["output"] * 15) / 1e6, rel=1e-9)
        assert thread["ended_at"] == max(r["ended_at"] for r in thread["interceptions"])
        for record in thread["interceptions"]:
            assert (record["session_id"], record["thread_id"]) == (session_id, thread["id"])
            assert record["client"] == "Claude Code" and record["client_session_id"] == session_id
    answered = [r["correlating_tool_call_id"] for t in session["threads"] for r in t["interceptions"]]
    assert answered == [None, turns[0].calls[-1]["id"], turns[1].calls[-1]["id"], None, turns[3].calls[-1]["id"]]
    assert [len(r["tool_usages"]) for t in session["threads"] for r in t["interceptions"]] == [1, 3, 0, 1, 0]

    listed = _ok(_api(gateway_url, admin, "sessions", q=f"session_id:{session_id}"))
    assert listed["count"] == 1
    [summary] = listed["sessions"]
    assert summary == {key: value for key, value in session.items() if key != "threads"}
    models = sorted({turn.fixture["request"]["model"] for turn in turns})
    assert summary["initiator"]["username"] == owner and summary["client"] == "Claude Code"
    assert summary["providers"] == ["anthropic"] and summary["models"] == models
    assert (summary["interception_count"], summary["thread_count"]) == (5, 2)
    assert summary["last_prompt"] == SECOND_PROMPT
    # Turns 1-3: 412 + 688 + 531 input, 84 + 187 + 19 output; turns 4-5: 412 + 531 input, 84 + 19 output.
    assert [t["cost_usd"] for t in session["threads"]] == [pytest.approx((1631 * 3 + 290 * 15) / 1e6, rel=1e-9),
                                                          pytest.approx((943 * 3 + 103 * 15) / 1e6, rel=1e-9)]
    assert summary["cost_usd"] == pytest.approx((2574 * 3 + 393 * 15) / 1e6, rel=1e-9)  # $0.013617
    assert summary["token_usage"]["input"] == sum(turn.usage["input_tokens"] for turn in turns)
    records = [r for t in session["threads"] for r in t["interceptions"]]
    assert summary["started_at"] == records[0]["started_at"]
    assert summary["last_active_at"] == summary["ended_at"] == max(r["ended_at"] for r in records)

    # One interception by id, and in the list, carries its session and thread.
    by_id = _ok(_api(gateway_url, owner_token, f"interceptions/{ids[1]}"))
    assert (by_id["session_id"], by_id["thread_id"]) == (session_id, ids[0])
    assert set(models) <= set(_ok(_api(gateway_url, owner_token, "models")))

    # The owner sees it; another user does not, by any route; the newer prefix answers the same.
    assert _ok(_api(gateway_url, owner_token, f"sessions/{session_id}")) == session
    assert _ok(_api(gateway_url, admin, f"sessions/{session_id}", prefix=NEWER)) == session
    assert _ok(_api(gateway_url, admin, "sessions", prefix=NEWER, q=f"session_id:{session_id}")) == listed
    assert _api(gateway_url, other, f"sessions/{session_id}").status_code == 404
    assert session_id not in {s["id"] for s in _ok(_api(gateway_url, other, "sessions", limit=1000))["sessions"]}
    assert _api(gateway_url, other, "sessions", q=f"session_id:{session_id}").status_code == 400  # not theirs: unknown

    # Pages of the session: two interceptions at a time, forward and back, threads cut where the page ends.
    page = _ok(_api(gateway_url, admin, f"sessions/{session_id}", limit=2, after_id=ids[1]))
    assert [[r["id"] for r in t["interceptions"]] for t in page["threads"]] == [[ids[2]], [ids[3]]]
    assert page["threads"][0]["token_usage"] == session["threads"][0]["token_usage"]  # the whole thread's
    page = _ok(_api(gateway_url, admin, f"sessions/{session_id}", limit=2, before_id=ids[3]))
    assert [[r["id"] for r in t["interceptions"]] for t in page["threads"]] == [[ids[1], ids[2]]]


def test_a_claude_code_session_through_the_gateway_sqlite(gateway, upstream, identities: Identities) -> None:
    owner = f"cc-{uuid.uuid4().hex[:8]}"
    identities.store.identity.create_user(owner)
    token, _ = identities.token(owner)
    check_claude_code_session(gateway.url, upstream, owner, token, identities.alice, identities.bob)


@pytest.fixture(scope="module")
def pg_world(postgres, start_gateway, upstream) -> Iterator[tuple[Any, Identities]]:
    url = postgres.create_database("sessions_gateway")
    store = open_store(url, migrate=True)
    try:
        identities = Identities(store)
        yield start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": url}), identities
    finally:
        store.close()


def test_a_claude_code_session_through_the_gateway_postgres(pg_world, upstream) -> None:
    gateway, identities = pg_world
    identities.store.identity.create_user("carol")
    token, _ = identities.token("carol")
    check_claude_code_session(gateway.url, upstream, "carol", token, identities.alice, identities.bob)


def test_unknown_filter_values_are_a_400_naming_them(gateway, identities: Identities) -> None:
    cases = [
        ({"q": "initiator:nobody-at-all"}, "unknown initiator 'nobody-at-all'"),
        ({"q": "provider_name:no-such-provider"}, "unknown provider_name 'no-such-provider'"),
        ({"q": "provider:gemini"}, "unknown provider 'gemini'"),
        ({"q": "model:no-such-model"}, "unknown model 'no-such-model'"),
        ({"q": "client:NoSuchClient"}, "unknown client 'NoSuchClient'"),
        ({"q": "session_id:no-such-session"}, "unknown session_id 'no-such-session'"),
        ({"q": "started_after:yesterday"}, "invalid started_after"),
        ({"limit": "0"}, "invalid limit 0"),
        ({"after_session_id": "nope"}, "unknown after_session_id 'nope'"),
        ({"after_session_id": "a", "offset": "1"}, "after_session_id and offset cannot be combined"),
        # the query parser's refusals of the interceptions list (but for its after_id cursor) too
        *((params, fragment) for params, fragment in BAD_QUERIES if "after_id" not in params),
    ]
    for params, fragment in cases:
        response = _api(gateway.url, identities.alice, "sessions", **params)
        assert response.status_code == 400 and fragment in response.json()["message"], (params, response.text)
        assert response.json()["detail"], params
    # A provider configured but never used, and a known user without sessions, are honest empties.
    identities.store.identity.create_user("quiet-user")
    for q in ("provider_name:team-b initiator:quiet-user", "initiator:quiet-user"):
        assert _ok(_api(gateway.url, identities.alice, "sessions", q=q)) == {"count": 0, "sessions": []}
    detail = _api(gateway.url, identities.alice, "sessions/x", after_id="a", before_id="b")
    assert detail.status_code == 400 and "cannot be combined" in detail.json()["message"]
    assert _api(gateway.url, identities.alice, "sessions/no-such-session").status_code == 404


def test_a_non_admin_learns_nothing_of_other_users_from_the_filters(gateway, identities: Identities) -> None:
    """``initiator:`` naming anyone else is the same empty answer whether the user exists or not, and a
    provider name only someone else's records hold is as unknown as one never seen."""
    at = "2026-03-01T10:00:01.000000Z"
    identities.store.records.write_records(RecordBatch.load({"interceptions": [{
        "id": str(uuid.uuid4()), "initiator_id": identities.store.identity.get_user("alice")["id"],
        "provider": "openai", "provider_name": "retired-provider", "model": "m", "client": "Unknown",
        "client_session_id": "alices-session", "started_at": at}]}))
    admin = _ok(_api(gateway.url, identities.alice, "sessions", q="provider_name:retired-provider"))
    assert admin["count"] >= 1
    empty = {"count": 0, "sessions": []}
    for q in ("initiator:alice", "initiator:nobody-at-all", "initiator:alice provider_name:anthropic"):
        assert _ok(_api(gateway.url, identities.bob, "sessions", q=q)) == empty, q
    answers = [_api(gateway.url, identities.bob, "sessions", q=f"provider_name:{name}")
               for name in ("retired-provider", "never-a-provider")]
    assert [a.status_code for a in answers] == [400, 400]
    assert [a.json()["detail"] for a in answers][0] == answers[1].json()["detail"]
    assert _api(gateway.url, identities.alice, "sessions", q="initiator:nobody-at-all").status_code == 400


def test_a_list_route_with_a_slash_and_no_id_is_the_apis_404(gateway, identities: Identities) -> None:
    for prefix in (API, NEWER):
        for kind in ("sessions", "interceptions"):
            response = _api(gateway.url, identities.alice, f"{kind}/", prefix=prefix)
            assert response.status_code == 404, (prefix, kind, response.text)
            assert response.json() == {"message": f"missing {kind[:-1]} id",
                                       "detail": f"give one: /api/v2/aibridge/{kind}/<id>"}
            assert requests.get(f"{gateway.url}{prefix}/{kind}/", timeout=10).status_code == 401


def test_a_very_long_client_session_id_is_recorded_capped_and_opens(gateway, upstream, identities: Identities) -> None:
    """8,000 characters of X-Claude-Code-Session-Id: recorded as 200 of them, "…" and a hash, so the same
    long id is one session (opened by URL), and another long one with the same start is another."""
    stem = "L" * 7_900 + uuid.uuid4().hex
    ids = [stem + "a" * 68, stem + "b" * 68]
    assert all(len(i) == 8_000 for i in ids)
    fixture = FIXTURES["anthropic/tool_use"]
    name = f"long-session-{uuid.uuid4().hex[:6]}"
    upstream.fixtures[name] = fixture
    for client_session_id in (ids[0], ids[0], ids[1]):
        response = requests.post(f"{gateway.url}{API}/anthropic/v1/messages", json=fixture["request"], timeout=30,
                                 headers={"X-Api-Key": identities.bob, "anthropic-version": "2023-06-01",
                                          "User-Agent": CLAUDE_CODE, "X-Claude-Code-Session-Id": client_session_id,
                                          "X-Fixture": name})
        assert response.status_code == 200, response.text
    capped = [f"{i[:200]}…{hashlib.sha256(i.encode()).hexdigest()[:16]}" for i in ids]
    session = _recorded_session(gateway.url, identities.alice, quote(capped[0], safe=""), 2)
    assert session["id"] == capped[0] and len(capped[0]) == 217
    assert {r["client_session_id"] for t in session["threads"] for r in t["interceptions"]} == {capped[0]}
    other = _recorded_session(gateway.url, identities.bob, quote(capped[1], safe=""), 1)
    assert other["id"] == capped[1] != capped[0]


# -- the store: any write order, pages and filters, retention, the migration ---------------------------


T0 = "2026-03-01T10:00:"


def _at(second: int) -> str:
    return f"{T0}{second:02d}.000000Z"


def _script(users: dict[str, str]) -> list[RecordBatch]:
    """One interception per batch pair (start, end) for several sessions, tool calls and answers
    crossing: the expected threads are in ``EXPECTED``."""
    ann, ben = users["ann"], users["ben"]
    steps = [  # id, user, session, model, second, answers, calls, prompt
        ("a1", ann, "S", "m-1", 1, None, ["ca1"], "first"),
        ("a2", ann, "S", "m-1", 2, "ca1", ["ca2", "ca3"], None),
        ("a3", ann, "S", "m-2", 3, "ca3", [], None),
        ("a4", ann, "S", "m-1", 4, "cb1", [], None),           # answers a call of ben's session: its own thread
        ("a5", ann, "S", "m-1", 5, "ca2", ["ca5"], "second"),  # a prompt wins over the tool result it carries
        ("a6", ann, "S", "m-1", 6, "ca5", [], None),
        ("b1", ben, "S", "m-3", 1, None, ["cb1"], "ben's"),   # the same client session id, another user
        ("b2", ben, "S", "m-3", 2, "cb1", [], None),
        ("x1", ann, None, "m-1", 7, "ca1", [], None),          # no session id: a session of its own
    ]
    batches = []
    for iid, user, session, model, second, answers, calls, prompt in steps:
        batches.append(RecordBatch.load({"interceptions": [{
            "id": iid, "initiator_id": user, "provider": "anthropic", "provider_name": "anthropic", "model": model,
            "client": "Claude Code", "client_session_id": session, "correlating_tool_call_id": answers,
            "started_at": _at(second)}]}))
        end: dict[str, list] = {
            "ends": [{"id": iid, "ended_at": _at(second).replace(".000000", ".500000")}],
            "token_usages": [{"id": f"{iid}-u", "interception_id": iid, "input_tokens": second, "output_tokens": 1,
                              "created_at": _at(second)}],
            "tool_usages": [{"id": f"{iid}-{c}", "interception_id": iid, "provider_tool_call_id": c, "tool": "Read",
                             "input": "{}", "created_at": _at(second)} for c in calls],
            "user_prompts": [{"id": f"{iid}-p", "interception_id": iid, "prompt": prompt, "created_at": _at(second)}]
            if prompt else []}
        batches.append(RecordBatch.load(end))
    return batches


EXPECTED = {("ann", "S"): [["a1", "a2", "a3"], ["a4"], ["a5", "a6"]], ("ben", "S"): [["b1", "b2"]],
            ("ann", "x1"): [["x1"]]}


def _threads(store, users: dict[str, str]) -> dict[tuple[str, str], list[list[str]]]:
    found = {}
    for user, session_id in EXPECTED:
        session = store.session_queries.session(session_id, initiator=users[user], limit=1000)
        found[(user, session_id)] = [[r["id"] for r in t["interceptions"]] for t in session["threads"]]
    return found


def _orders(batches: list[RecordBatch], rng: random.Random) -> list[RecordBatch]:
    """The batches in a random order in which each interception starts before it ends, some merged."""
    starts, ends = batches[0::2], batches[1::2]
    pending = list(range(len(starts)))
    started: list[int] = []
    out: list[RecordBatch] = []
    while pending or started:
        if pending and (not started or rng.random() < 0.5):
            n = pending.pop(rng.randrange(len(pending)))
            out.append(starts[n])
            started.append(n)
        else:
            out.append(ends[started.pop(rng.randrange(len(started)))])
        if len(out) > 1 and rng.random() < 0.25:  # two batches written as one
            last = out.pop()
            merged = RecordBatch()
            for part in (out.pop(), last):
                for name in ("interceptions", "ends", "token_usages", "user_prompts", "tool_usages", "model_thoughts"):
                    getattr(merged, name).extend(getattr(part, name))
            out.append(merged)
    return out


def _summaries(store) -> list[tuple]:
    return sorted(store.db.execute("SELECT * FROM aibridge_sessions").fetchall())


def test_threads_are_the_same_whatever_order_the_records_are_written_in(store_url: str) -> None:
    with open_store(store_url, migrate=True) as store:
        users = {name: store.identity.create_user(name)["id"] for name in ("ann", "ben")}
        script = _script(users)
        for seed in range(12):
            for table in ("aibridge_sessions", "aibridge_session_interceptions", "aibridge_token_usages",
                          "aibridge_user_prompts", "aibridge_tool_usages", "aibridge_interceptions"):
                store.db.execute(f"DELETE FROM {table}")
            rng = random.Random(seed)
            written = _orders(script, rng)
            for batch in written:
                store.records.write_records(batch)
            for batch in rng.sample(written, 3):  # journal replays change nothing
                store.records.write_records(batch)
            assert _threads(store, users) == EXPECTED, seed
            kept = _summaries(store)
            store.sessions.rebuild()  # the same as counted from scratch
            assert _summaries(store) == kept, seed
        # Retention: a purge that takes a session's first turns leaves it counted from what is left.
        store.retention.purge_records(_at(3))
        assert _threads_left(store, users["ann"], "S") == [["a3"], ["a4"], ["a5", "a6"]]
        assert [s["id"] for s in store.session_queries.list_sessions(viewer_id=users["ben"])["sessions"]] == []
        kept = _summaries(store)
        store.sessions.rebuild()
        assert _summaries(store) == kept


def _threads_left(store, user: str, session_id: str) -> list[list[str]]:
    session = store.session_queries.session(session_id, initiator=user, limit=1000)
    return [[r["id"] for r in t["interceptions"]] for t in session["threads"]]


def test_the_migration_fills_sessions_and_threads_from_existing_records(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "old.db"))
    with store.write():  # the schema before sessions, and records written behind write_records' back
        MIGRATIONS.apply(store.db, stop_before="0006_sessions")
    users = {name: store.identity.create_user(name)["id"] for name in ("ann", "ben")}
    for batch in _script(users):
        for name in ("interceptions", "ends", "token_usages", "user_prompts", "tool_usages"):
            for record in getattr(batch, name):
                if name == "ends":
                    store.db.execute("UPDATE aibridge_interceptions SET ended_at = ? WHERE id = ?",
                                     [record.ended_at, record.id])
                    continue
                row = {k: v for k in record.__slots__ if (v := getattr(record, k)) is not None}
                table = "aibridge_interceptions" if name == "interceptions" else f"aibridge_{name}"
                store.db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                 list(row.values()))
    assert "aibridge_sessions" not in store.db.table_names()
    store.migrate()
    assert _threads(store, users) == EXPECTED
    listed = store.session_queries.list_sessions(limit=10)
    assert listed["count"] == 3
    ann_s = next(s for s in listed["sessions"] if s["id"] == "S" and s["initiator"]["id"] == users["ann"])
    assert (ann_s["interception_count"], ann_s["thread_count"], ann_s["last_prompt"]) == (6, 3, "second")
    assert ann_s["models"] == ["m-1", "m-2"] and ann_s["token_usage"]["input"] == 1 + 2 + 3 + 4 + 5 + 6
    assert (ann_s["started_at"], ann_s["ended_at"]) == (_at(1), _at(6).replace(".000000", ".500000"))
    store.close()


def _dataset(store) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Forty sessions of three users, three clients, several models (one session spans two)."""
    rng = random.Random(7)
    users = {name: store.identity.create_user(name)["id"] for name in ("ann", "ben", "cid")}
    expected = []
    for n in range(40):
        user = rng.choice(list(users))
        client, provider, name, model = rng.choice([("Claude Code", "anthropic", "anthropic", "claude-x"),
                                                    ("Codex", "openai", "openai", "gpt-x"),
                                                    ("Zed", "openai", "team-b", "gpt-y")])
        session_id = f"s-{n:02d}" if client != "Zed" else None
        turns = rng.randint(1, 3)
        start = rng.randint(0, 50)
        models = {model}
        batch: dict[str, list] = {"interceptions": [], "token_usages": []}
        for turn in range(turns):
            iid = f"i-{n:02d}-{turn}"
            used = model if turn < 2 else "extra-model"
            models.add(used)
            batch["interceptions"].append({
                "id": iid, "initiator_id": users[user], "provider": provider, "provider_name": name, "model": used,
                "client": client, "client_session_id": session_id, "started_at": f"2026-03-{1 + start // 24:02d}T"
                f"{start % 24:02d}:{turn:02d}:00.000000Z", "ended_at": None})
            batch["token_usages"].append({"id": f"{iid}-u", "interception_id": iid, "input_tokens": 10,
                                          "created_at": "2026-03-01T00:00:00Z"})
        if session_id is None:  # every interception is a session of its own
            for record in batch["interceptions"]:
                expected.append({"id": record["id"], "user": user, "client": client, "provider": provider,
                                 "provider_name": name, "models": [record["model"]], "started_at": record["started_at"]})
        else:
            expected.append({"id": session_id, "user": user, "client": client, "provider": provider,
                             "provider_name": name, "models": sorted(models),
                             "started_at": batch["interceptions"][0]["started_at"],
                             "last": batch["interceptions"][-1]["started_at"]})
        store.records.write_records(RecordBatch.load(batch))
    for session in expected:
        session.setdefault("last", session["started_at"])
    expected.sort(key=lambda s: (s["last"], s["id"], users[s["user"]]), reverse=True)
    return users, expected


@pytest.mark.parametrize("facet_rows_first", [True, False])
def test_sessions_list_pages_and_filters(store_url: str, facet_rows_first: bool, monkeypatch) -> None:
    """Both ways a provider or model filter is answered: from its facet rows (few matches) or by
    checking the sessions most recently active first (many)."""
    from bridge.store import SessionFilter, session_queries

    if not facet_rows_first:
        monkeypatch.setattr(session_queries, "_FROM_FACETS_MAX", 0)

    with open_store(store_url, migrate=True) as store:
        users, expected = _dataset(store)
        queries = store.session_queries

        def ids(filters: SessionFilter | None = None, viewer: str | None = None) -> list[str]:
            found = queries.list_sessions(filters, limit=1000, viewer_id=viewer)
            assert found["count"] == len(found["sessions"])
            return [s["id"] for s in found["sessions"]]

        assert ids() == [s["id"] for s in expected]
        middle = expected[len(expected) // 2]["started_at"]
        cases = [
            (SessionFilter(initiator="ben"), lambda s: s["user"] == "ben"),
            (SessionFilter(initiator=users["cid"]), lambda s: s["user"] == "cid"),
            (SessionFilter(provider="openai"), lambda s: s["provider"] == "openai"),
            (SessionFilter(provider_name="team-b"), lambda s: s["provider_name"] == "team-b"),
            (SessionFilter(model="extra-model"), lambda s: "extra-model" in s["models"]),
            (SessionFilter(model="gpt-x"), lambda s: "gpt-x" in s["models"]),
            (SessionFilter(client="Codex"), lambda s: s["client"] == "Codex"),
            (SessionFilter(session_id="s-03"), lambda s: s["id"] == "s-03"),
            (SessionFilter(started_after=middle), lambda s: s["started_at"] >= middle),
            (SessionFilter(started_before=middle), lambda s: s["started_at"] < middle),
            (SessionFilter(initiator="ann", client="Claude Code", model="claude-x"),
             lambda s: s["user"] == "ann" and s["client"] == "Claude Code"),
        ]
        for filters, predicate in cases:
            assert ids(filters) == [s["id"] for s in expected if predicate(s)], filters
        assert ids(viewer=users["ben"]) == [s["id"] for s in expected if s["user"] == "ben"]
        assert ids(SessionFilter(initiator="ann"), viewer=users["ben"]) == []

        # Keyset and offset pages give the whole list, in order, once.
        keyset, offset, cursor = [], [], None
        for _ in range(len(expected)):
            page = queries.list_sessions(limit=7, after_session_id=cursor)
            assert page["count"] == len(expected)
            if not page["sessions"]:
                break
            keyset += [s["id"] for s in page["sessions"]]
            cursor = page["sessions"][-1]["id"]
        for start in range(0, len(expected) + 7, 7):
            offset += [s["id"] for s in queries.list_sessions(limit=7, offset=start)["sessions"]]
        assert keyset == offset == [s["id"] for s in expected]


@pytest.fixture
def cli_store(tmp_path: Path) -> tuple[Any, dict[str, str], Any]:
    database = tmp_path / "cli.db"
    with open_store(str(database), migrate=True) as store:
        users = {name: store.identity.create_user(name)["id"] for name in ("ann", "ben")}
        for batch in _script(users):
            store.records.write_records(batch)
    return cli_runner(f"sqlite:///{database}", tmp_path / "home"), users, database


def test_cli_sessions_list_and_show(cli_store) -> None:
    cli, users, database = cli_store
    listed = cli("sessions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    with open_store(str(database)) as store:
        assert json.loads(listed.stdout) == store.session_queries.list_sessions()
        shown = store.session_queries.session("S", initiator="ann")
    table = cli("sessions", "list").stdout.splitlines()
    assert table[0].split() == ["LAST", "ACTIVE", "SESSION", "USER", "CLIENT", "MODELS", "TURNS", "THREADS", "INPUT",
                                "OUTPUT", "COST", "USD", "LAST", "PROMPT"]
    assert table[1].split()[1:4] == ["x1", "ann", "Claude"] and table[-1] == "3 of 3 matching session(s)"
    ann_row = next(line for line in table if " S " in line and " ann " in line).split()
    # turns, threads, input, output, cost (its models m-1, m-2 have no price), last prompt
    assert ann_row[-6:] == ["6", "3", "21", "6", "—", "second"]
    paged = cli("sessions", "list", "--limit", "1", "--initiator", "ben").stdout.splitlines()
    assert paged[-1] == "1 of 1 matching session(s)"

    as_json = cli("sessions", "show", "S", "--initiator", "ann", "--json")
    assert json.loads(as_json.stdout) == shown
    text = cli("sessions", "show", "S", "--initiator", "ann").stdout
    assert "interceptions  6 in 3 thread(s)" in text and "last prompt    second" in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("thread ")] == ["a1", "a4", "a5"]
    assert "tool results for Read" in text and "prompt: first" in text
    assert_cli_error(cli("sessions", "show", "S"), "names sessions of several users: ann, ben")
    assert_cli_error(cli("sessions", "show", "nope"), "unknown session id 'nope'")
    assert_cli_error(cli("sessions", "list", "--initiator", "nobody"), "unknown initiator 'nobody'")
    assert_cli_error(cli("sessions", "list", "--started-after", "soon"), "--started-after", status=2)


# -- costs (SPEC §11): each session's and thread's, kept with the token sums ---------------------------

SONNET = "claude-sonnet-4-5"  # published prices: input 3, output 15 USD per million tokens


def _cost_turn(iid: str, session: str, second: int, answers: str | None, calls: list[str],
               costs: list[float | None], model: str = SONNET) -> tuple[RecordBatch, RecordBatch]:
    """An interception's start, then its end with one token usage (1,000 input, 100 output) per cost
    in ``costs`` (as priced when recorded; binary fractions, so sums are exact in any order)."""
    start = RecordBatch.load({"interceptions": [{
        "id": iid, "initiator_id": "", "provider": "anthropic", "provider_name": "anthropic", "model": model,
        "client": "Claude Code", "client_session_id": session, "correlating_tool_call_id": answers,
        "started_at": _at(second)}]})
    end = RecordBatch.load({
        "ends": [{"id": iid, "ended_at": _at(second).replace(".000000", ".500000")}],
        "token_usages": [{"id": f"{iid}-u{n}", "interception_id": iid, "input_tokens": 1000, "output_tokens": 100,
                          "cost_usd": cost, "created_at": _at(second)} for n, cost in enumerate(costs)],
        "tool_usages": [{"id": f"{iid}-{c}", "interception_id": iid, "provider_tool_call_id": c, "tool": "Read",
                         "input": "{}", "created_at": _at(second)} for c in calls]})
    return start, end


def _session_costs(store) -> dict[str, Any]:
    return {row[0]: row[1] for row in store.db.execute("SELECT session_id, cost_usd FROM aibridge_sessions")}


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_session_and_thread_costs_are_kept_like_the_token_sums(store_url: str) -> None:
    with open_store(store_url, migrate=True) as store:
        a1, a1_end = _cost_turn("a1", "S", 1, None, ["c1"], [0.25])
        a2, a2_end = _cost_turn("a2", "S", 2, "c1", [], [None, 0.5])  # one usage without a price
        b1, b1_end = _cost_turn("b1", "U", 3, None, [], [None], model="made-up-model")
        c1, c1_end = _cost_turn("c1", "T", 4, None, [], [0.125])
        c2, c2_end = _cost_turn("c2", "T", 5, None, [], [None], model="made-up-model")
        # a2 starts (and ends) before a1's end records the call it answers: a late relink.
        for batch in (a1, a2, a2_end, a1_end, b1, b1_end, c1, c1_end, c2, c2_end):
            store.records.write_records(batch)
        assert _session_costs(store) == {"S": 0.75, "U": None, "T": 0.125}
        session = store.session_queries.session("S")
        assert session["cost_usd"] == 0.75
        [thread] = session["threads"]
        assert [r["id"] for r in thread["interceptions"]] == ["a1", "a2"] and thread["cost_usd"] == 0.75
        assert [r["cost_usd"] for r in thread["interceptions"]] == [0.25, 0.5]
        [unpriced] = store.session_queries.session("U")["threads"]
        assert unpriced["cost_usd"] is None and unpriced["interceptions"][0]["cost_usd"] is None
        assert store.queries.interception_result("a2")["cost_usd"] == 0.5
        kept = _summaries_of(store)
        store.sessions.rebuild()
        assert _summaries_of(store) == kept
        # Retention takes c1 (T's only priced usage): T's cost is unknown again; S loses a1's 0.25.
        store.retention.purge_records(_at(5), chunk=1)
        assert _session_costs(store) == {"T": None}
        kept = _summaries_of(store)
        store.sessions.rebuild()
        assert _summaries_of(store) == kept


def _summaries_of(store) -> list[tuple]:
    return sorted(store.db.execute("SELECT * FROM aibridge_sessions").fetchall())


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_a_purge_that_keeps_priced_usages_keeps_their_cost(store_url: str) -> None:
    with open_store(store_url, migrate=True) as store:
        for n, costs in enumerate(([0.25], [None], [0.5, 0.125])):
            for batch in _cost_turn(f"i{n}", "S", n + 1, None, [], costs):
                store.records.write_records(batch)
        assert _session_costs(store) == {"S": 0.875}
        store.retention.purge_records(_at(2), chunk=1)  # takes i0
        assert _session_costs(store) == {"S": 0.625}
        assert store.session_queries.session("S")["cost_usd"] == 0.625


def test_cli_shows_costs_and_reprices_them(tmp_path: Path) -> None:
    database = tmp_path / "costs.db"
    with open_store(str(database), migrate=True) as store:
        for batch in (*_cost_turn("a1", "S", 1, None, ["c1"], [0.25]), *_cost_turn("a2", "S", 2, "c1", [], [None]),
                      *_cost_turn("b1", "U", 3, None, [], [None], model="made-up-model")):
            store.records.write_records(batch)
    cli = cli_runner(f"sqlite:///{database}", tmp_path / "home")
    table = cli("sessions", "list").stdout.splitlines()
    rows = {line.split()[1]: line.split() for line in table[1:] if line.strip() and "matching" not in line}
    assert rows["S"][-2] == "0.2500" and rows["U"][-2] == "—"
    text = cli("sessions", "show", "S").stdout
    assert "cost           $0.250000" in text and "· cost $0.250000" in text
    shown = cli("interceptions", "show", "a2").stdout
    assert [line.split(None, 1)[1] for line in shown.splitlines() if line.startswith("cost ")] == ["— (nothing priced)"]
    # Priced again from the table: Claude Sonnet 4.5, 1,000 input and 100 output tokens each.
    repriced = cli("costs", "reprice")
    assert repriced.returncode == 0, repriced.stderr
    assert repriced.stdout.strip().endswith("2 priced, 1 without a price")
    each = (1000 * 3 + 100 * 15) / 1e6  # $0.0045
    session = json.loads(cli("sessions", "show", "S", "--json").stdout)
    assert session["cost_usd"] == pytest.approx(2 * each, rel=1e-9)
    assert [r["cost_usd"] for r in session["threads"][0]["interceptions"]] == [pytest.approx(each, rel=1e-9)] * 2
    assert json.loads(cli("sessions", "show", "U", "--json").stdout)["cost_usd"] is None
