"""Sessions at scale (issue 18's red team): a late prompt or tool call in a long session relinks only
the interceptions it changes, and the record writer's work for it does not grow with the session;
random write orders of crossing tool-call chains give what a rebuild counts."""

from __future__ import annotations

import random
from typing import Any

from bridge.store import RecordBatch, open_store

T0 = "2026-03-01T10:"


def _at(n: int) -> str:
    """The n-th second after T0 (n < 3,600)."""
    return f"{T0}{n // 60:02d}:{n % 60:02d}.000000Z"


def _start(iid: str, user: str, n: int, answers: str | None, session: str = "S") -> dict[str, Any]:
    return {"id": iid, "initiator_id": user, "provider": "anthropic", "provider_name": "anthropic", "model": "m",
            "client": "Claude Code", "client_session_id": session, "correlating_tool_call_id": answers,
            "started_at": _at(n)}


def _end(iid: str, n: int, calls: list[str], prompt: str | None) -> dict[str, list]:
    return {"ends": [{"id": iid, "ended_at": _at(n).replace(".000000", ".500000")}],
            "token_usages": [{"id": f"{iid}-u", "interception_id": iid, "input_tokens": 3, "output_tokens": 1,
                              "created_at": _at(n)}],
            "tool_usages": [{"id": f"{iid}-{c}", "interception_id": iid, "provider_tool_call_id": c, "tool": "Read",
                             "input": "{}", "created_at": _at(n)} for c in calls],
            "user_prompts": [{"id": f"{iid}-p", "interception_id": iid, "prompt": prompt, "created_at": _at(n)}]
            if prompt else []}


def _merge(parts: list[dict[str, list]]) -> dict[str, list]:
    merged: dict[str, list] = {}
    for part in parts:
        for name, rows in part.items():
            merged.setdefault(name, []).extend(rows)
    return merged


def _long_session(store, user: str, turns: int, prompt_every: int = 500) -> None:
    """A session of ``turns`` interceptions, each answering the previous one's tool call (a prompt
    every ``prompt_every`` turns), written in order, then a turn X started and an answer Y to X's call
    stored before X's end."""
    starts = [_start(f"t{k}", user, k // 2, f"c{k - 1}" if k else None) for k in range(turns)]
    ends = [_end(f"t{k}", k // 2, [f"c{k}"], "go on" if k % prompt_every == 0 else None) for k in range(turns)]
    store.records.write_records(RecordBatch.load({"interceptions": starts, **_merge(ends)}))
    store.records.write_records(RecordBatch.load({"interceptions": [
        _start("X", user, 3_000, f"c{turns - 1}"), _start("Y", user, 3_001, "cX")]}))


def _members(store) -> list[tuple]:
    return sorted(store.db.execute("SELECT * FROM aibridge_session_interceptions").fetchall())


def _summaries(store) -> list[tuple]:
    return sorted(store.db.execute("SELECT * FROM aibridge_sessions").fetchall())


def _facets(store) -> list[tuple]:
    return sorted(store.db.execute("SELECT * FROM aibridge_session_facets").fetchall())


def _late_end() -> RecordBatch:
    """X's end: its prompt (typed text beside its tool result) and the tool call Y answers."""
    return RecordBatch.load(_end("X", 3_000, ["cX"], "and now this"))


def test_a_late_prompt_and_tool_call_in_a_long_session_relink_only_what_they_change(store_url: str) -> None:
    with open_store(store_url, migrate=True) as store:
        user = store.identity.create_user("ann")["id"]
        _long_session(store, user, 3_000)
        assert dict(store.db.execute("SELECT interception_id, thread_id FROM aibridge_session_interceptions"
                                     " WHERE interception_id IN ('X', 'Y')").fetchall()) == {"X": "t2500", "Y": None}
        store.records.write_records(_late_end())
        threads = dict(store.db.execute("SELECT interception_id, thread_id FROM aibridge_session_interceptions"
                                        " WHERE interception_id IN ('X', 'Y', 't2999', 't2501')").fetchall())
        assert threads == {"X": None, "Y": "X", "t2999": "t2500", "t2501": "t2500"}
        [(count, thread_count)] = store.db.execute(
            "SELECT interception_count, thread_count FROM aibridge_sessions").fetchall()
        assert (count, thread_count) == (3_002, 7)  # t0, t500, ..., t2500, and X
        kept = (_members(store), _summaries(store))
        store.sessions.rebuild()
        assert (_members(store), _summaries(store)) == kept


def _counted(store, read) -> tuple[Any, int]:
    """What ``read()`` returns, and the SQLite virtual machine steps it took (each row read is some)."""
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    store.db.conn.set_progress_handler(step, 1)
    try:
        return read(), steps[0]
    finally:
        store.db.conn.set_progress_handler(None, 1)


def _work_of_late_end(tmp_path, turns: int) -> tuple[int, int]:
    """The statements and SQLite VM steps the writer spends on X's end in a session of ``turns``."""
    with open_store(str(tmp_path / f"s{turns}.db"), migrate=True) as store:
        user = store.identity.create_user("ann")["id"]
        _long_session(store, user, turns)
        statements: list[str] = []
        store.db.conn.set_trace_callback(statements.append)
        try:
            _, steps = _counted(store, lambda: store.records.write_records(_late_end()))
        finally:
            store.db.conn.set_trace_callback(None)
        return len(statements), steps


def test_the_writers_work_for_a_late_prompt_does_not_grow_with_the_session(tmp_path) -> None:
    """Counted in statements and in SQLite virtual machine steps (each row read is some), not time:
    a session ten times longer costs the same statements and at most a few more steps (deeper indexes)."""
    short, long = _work_of_late_end(tmp_path, 300), _work_of_late_end(tmp_path, 3_000)
    assert long[0] == short[0]
    assert long[1] < short[1] * 1.2, (short, long)


def _page_in_the_middle(tmp_path, turns: int) -> tuple[list[tuple], int]:
    """A page of 20 interceptions in the middle of a session of ``turns`` (threads of 10 turns)."""
    with open_store(str(tmp_path / f"p{turns}.db"), migrate=True) as store:
        user = store.identity.create_user("ann")["id"]
        _long_session(store, user, turns, prompt_every=10)
        session, steps = _counted(store, lambda: store.session_queries.session(
            "S", initiator=user, limit=20, after_id=f"t{turns // 2 + 4}"))
        threads = [(t["id"], [r["id"] for r in t["interceptions"]], t["token_usage"]["input"], t["ended_at"])
                   for t in session["threads"]]
        return threads, steps


def test_a_session_page_reads_its_page_and_its_threads_not_the_session(tmp_path) -> None:
    """Counted in SQLite virtual machine steps, not time: a page in a session ten times longer costs
    at most a few more steps (deeper indexes); each thread's figures are the whole thread's."""
    (threads, short), (long_threads, long) = _page_in_the_middle(tmp_path, 300), _page_in_the_middle(tmp_path, 3_000)
    assert long < short * 1.2, (short, long)
    first = 1_500 + 5
    assert [t[1] for t in long_threads] == [[f"t{k}" for k in range(first, 1_510)],
                                            [f"t{k}" for k in range(1_510, 1_520)],
                                            [f"t{k}" for k in range(1_520, first + 20)]]
    assert [(t[0], t[2], t[3]) for t in long_threads] == [
        (f"t{k}", 30, _at((k + 9) // 2).replace(".000000", ".500000")) for k in (1_500, 1_510, 1_520)]
    assert len(threads) == 3


def _purge_a_chunk(tmp_path, turns: int) -> int:
    """The SQLite virtual machine steps of a retention chunk that takes a long session's first 100 turns."""
    with open_store(str(tmp_path / f"r{turns}.db"), migrate=True) as store:
        user = store.identity.create_user("ann")["id"]
        _long_session(store, user, turns, prompt_every=10)
        purged, steps = _counted(store, lambda: store.retention.purge_records(_at(50), chunk=100, max_chunks=1))
        assert purged == 100
        kept = (_members(store), _summaries(store), _facets(store))
        store.sessions.rebuild()
        assert (_members(store), _summaries(store), _facets(store)) == kept
        return steps


def test_a_retention_chunk_does_not_recount_a_long_session(tmp_path) -> None:
    """Counted in SQLite virtual machine steps, not time: purging 100 turns of a session ten times longer
    costs at most a few more steps (deeper indexes), and leaves what a rebuild counts."""
    short, long = _purge_a_chunk(tmp_path, 300), _purge_a_chunk(tmp_path, 3_000)
    assert long < short * 1.2, (short, long)


def test_random_write_orders_of_crossing_chains_give_what_a_rebuild_counts(store_url: str) -> None:
    """Chains of answers that cross, prompts on answers, a tool call id recorded twice, some late ends: in
    any order the records are written, and after a purge in small chunks, the threads, summaries and
    facet rows are those counted from scratch."""
    with open_store(store_url, migrate=True) as store:
        users = [store.identity.create_user(name)["id"] for name in ("ann", "ben")]
        for seed in range(8):
            rng = random.Random(seed)
            steps = []
            for k in range(24):
                user = users[k % 2 if k < 20 else 0]
                answers = f"c{rng.randrange(k)}" if k and rng.random() < 0.8 else None
                calls = [f"c{k}"] + (["c1"] if k == 5 else [])
                prompt = "typed" if rng.random() < 0.2 else None
                start = {**_start(f"i{k}", user, k, answers, session=f"S{k % 3}"), "model": f"m{rng.randrange(3)}"}
                steps.append((start, _end(f"i{k}", k + rng.randrange(4) * rng.randrange(20), calls, prompt)))
            for table in ("aibridge_sessions", "aibridge_session_interceptions", "aibridge_session_facets",
                          "aibridge_token_usages", "aibridge_user_prompts", "aibridge_tool_usages",
                          "aibridge_interceptions"):
                store.db.execute(f"DELETE FROM {table}")
            pending, started = list(range(len(steps))), []
            for _ in range(4 * len(steps)):  # each interception starts before it ends
                if not (pending or started):
                    break
                if pending and (not started or rng.random() < 0.5):
                    n = pending.pop(rng.randrange(len(pending)))
                    started.append(n)
                    store.records.write_records(RecordBatch.load({"interceptions": [steps[n][0]]}))
                else:
                    n = started.pop(rng.randrange(len(started)))
                    store.records.write_records(RecordBatch.load(steps[n][1]))
            kept = (_members(store), _summaries(store), _facets(store))
            store.sessions.rebuild()
            assert (_members(store), _summaries(store), _facets(store)) == kept, seed
            # Retention, a few interceptions a chunk: what is left is counted as from scratch.
            store.retention.purge_records(_at(rng.randrange(4, 24)), chunk=rng.choice((1, 3, 7)))
            kept = (_members(store), _summaries(store), _facets(store))
            store.sessions.rebuild()
            assert (_members(store), _summaries(store), _facets(store)) == kept, seed


def test_admin_pages_visit_every_session_once_when_users_share_session_ids(store_url: str) -> None:
    """Ann and Ben (and a call with no user) use the same client session ids, their sessions
    interleaved in time: paging with the last session's id and initiator visits each exactly once."""
    with open_store(store_url, migrate=True) as store:
        users = [store.identity.create_user(name)["id"] for name in ("ann", "ben")] + [None]
        starts = [_start(f"i{k}-{n}", user, 10 * k + n, None, session=f"S{k % 3}")
                  for k in range(6) for n, user in enumerate(users)]
        store.records.write_records(RecordBatch.load({"interceptions": starts}))
        everything = [(s["initiator"]["id"], s["id"]) for s in store.session_queries.list_sessions()["sessions"]]
        assert len(everything) == len(set(everything)) == 9
        for limit in (1, 2, 4):
            seen: list[tuple] = []
            page = store.session_queries.list_sessions(limit=limit)["sessions"]
            for _ in range(len(everything) + 1):
                seen.extend((s["initiator"]["id"], s["id"]) for s in page)
                if not page:
                    break
                last = page[-1]
                page = store.session_queries.list_sessions(limit=limit, after_session_id=last["id"],
                                                           after_initiator=last["initiator"]["id"] or "")["sessions"]
            assert seen == everything, limit
