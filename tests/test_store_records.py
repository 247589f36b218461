"""The interception record tables of the store, on both backends: schema, idempotent batch writes,
chunked purge, indexes (query plans: SQLite's, on ``sqlite_store``)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bridge.records import InterceptionEndRecord

from bridge.store import (
    ADDED_COLUMNS, CHILD_TABLES, RECORD_COLUMNS, InterceptionFilter, PostgresStore, RecordBatch, Store, StoreError, format_timestamp,
    open_store, refused,
)

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def store(store_url: str):
    with open_store(store_url, migrate=True) as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path: Path):
    with open_store(str(tmp_path / "bridge.db"), migrate=True) as s:
        yield s


def interception(started: datetime, **columns) -> RecordBatch:
    """A batch with one interception and one row of each child kind."""
    iid = str(uuid.uuid4())
    at = format_timestamp(started)

    def child(**values) -> dict:
        return {"id": str(uuid.uuid4()), "interception_id": iid, "created_at": at, **values}

    row = {"id": iid, "initiator_id": "u1", "provider": "anthropic", "provider_name": "anthropic",
           "model": "claude", "client": "Claude Code", "started_at": at, "metadata": '{"a": 1}', **columns}
    return RecordBatch.load(dict(
        interceptions=[row],
        ends=[{"id": iid, "ended_at": at, "metadata": '{"b": 2}'}],
        token_usages=[child(input_tokens=10, output_tokens=3, cache_read_input_tokens=7, metadata={"reasoning": 1})],
        user_prompts=[child(prompt="hi")],
        tool_usages=[child(tool="bash", provider_tool_call_id="t1", input={"cmd": "ls"}, injected=False)],
        model_thoughts=[child(content="hmm", metadata='{"source": "thinking"}')],
    ))


def combined(*batches: RecordBatch) -> RecordBatch:
    out = RecordBatch()
    for batch in batches:
        for name in ("interceptions", "ends", *CHILD_TABLES):
            getattr(out, name).extend(getattr(batch, name))
    return out


def test_schema_has_exactly_the_spec_columns(store: Store) -> None:
    for table, columns in RECORD_COLUMNS.items():
        if isinstance(store, PostgresStore):
            found = [row[0] for row in store.db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table])]
            # seq: the write order (SQLite's rowid), internal; then the columns later migrations added
            # (a token usage's cost_usd, SPEC §11)
            first = tuple(c for c in columns if c not in ADDED_COLUMNS)
            added = tuple(c for c in columns if c in ADDED_COLUMNS)
            assert tuple(found) == (columns if table == "aibridge_interceptions" else (*first, "seq", *added))
            pks = [row[0] for row in store.db.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = ?::regclass AND i.indisprimary", [table])]
            assert pks == ["id"]
        else:
            assert tuple(store.db[table].columns_dict) == columns
            assert store.db[table].pks == ["id"]


def test_write_records_is_idempotent(store: Store) -> None:
    batch = combined(*(interception(NOW - timedelta(minutes=n)) for n in range(3)))
    store.records.write_records(batch)
    first = {table: list(store.db.query(f"SELECT * FROM {table} ORDER BY id")) for table in RECORD_COLUMNS}
    store.records.write_records(batch)  # a journal replay
    store.records.write_records(RecordBatch.from_json(batch.to_json()))
    again = {table: list(store.db.query(f"SELECT * FROM {table} ORDER BY id")) for table in RECORD_COLUMNS}
    assert again == first
    assert store.queries.count_records() == {table: 3 for table in RECORD_COLUMNS}


def test_end_sets_ended_at_and_merges_metadata(store: Store) -> None:
    batch = interception(NOW)
    iid = batch.interceptions[0].id
    start = RecordBatch(interceptions=batch.interceptions)
    store.records.write_records(start)
    assert store.queries.get_interception(iid)["ended_at"] is None
    batch.interceptions = []
    store.records.write_records(batch)
    row = store.queries.get_interception(iid)
    assert row["ended_at"] == format_timestamp(NOW)
    assert json.loads(row["metadata"]) == {"a": 1, "b": 2}
    assert [r["prompt"] for r in row["user_prompts"]] == ["hi"]
    usage = row["token_usages"][0]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_input_tokens"],
            usage["cache_write_input_tokens"]) == (10, 3, 7, 0)
    assert json.loads(usage["metadata"]) == {"reasoning": 1}  # Python values are stored as JSON text
    tool = row["tool_usages"][0]
    assert json.loads(tool["input"]) == {"cmd": "ls"} and tool["injected"] == 0
    assert json.loads(row["model_thoughts"][0]["metadata"]) == {"source": "thinking"}


def test_end_metadata_is_a_merge_patch_on_both_backends(store: Store) -> None:
    """An end's null member removes the start's (RFC 7396, as SQLite's json_patch does): a record
    reads the same whichever database holds it."""
    batch = interception(NOW, metadata='{"streaming": true, "stop_reason": "x", "kept": 1}')
    iid = batch.interceptions[0].id
    batch.ends = [InterceptionEndRecord(id=iid, ended_at=format_timestamp(NOW), metadata={"stop_reason": None, "status": 200})]
    store.records.write_records(batch)
    assert json.loads(store.queries.get_interception(iid)["metadata"]) == {"streaming": True, "kept": 1, "status": 200}


def test_two_ends_adding_keys_in_steps_keep_both_steps_on_both_backends(store: Store) -> None:
    """An interception ended twice, each end adding its own keys (and the second removing one the
    first set), keeps every step, in order: in one batch, and in two batches."""
    later = format_timestamp(NOW + timedelta(seconds=2))
    steps = [{"error": "client disconnected", "status": 200, "note": "first"}, {"orphaned": True, "note": None}]
    expected = {"a": 1, "error": "client disconnected", "status": 200, "orphaned": True}

    one_batch = interception(NOW)
    iid = one_batch.interceptions[0].id
    one_batch.ends = [InterceptionEndRecord(id=iid, ended_at=format_timestamp(NOW), metadata=steps[0]),
                      InterceptionEndRecord(id=iid, ended_at=later, metadata=steps[1])]
    store.records.write_records(one_batch)
    row = store.queries.get_interception(iid)
    assert json.loads(row["metadata"]) == expected
    assert row["ended_at"] == later

    two_batches = interception(NOW)
    iid = two_batches.interceptions[0].id
    two_batches.ends = [InterceptionEndRecord(id=iid, ended_at=format_timestamp(NOW), metadata=steps[0])]
    store.records.write_records(two_batches)
    store.records.write_records(RecordBatch.load(dict(ends=[{"id": iid, "ended_at": later, "metadata": steps[1]}])))
    assert json.loads(store.queries.get_interception(iid)["metadata"]) == expected


def test_a_refused_batch_writes_nothing(store: Store) -> None:
    good = interception(NOW)
    orphan_end = RecordBatch.load(dict(ends=[{"id": "missing", "ended_at": format_timestamp(NOW), "metadata": None}]))
    with pytest.raises(StoreError, match="does not exist"):
        store.records.write_records(combined(good, orphan_end))
    bad_column = interception(NOW)
    with pytest.raises(ValueError, match="promt: Unknown field"):  # a journal line with a misspelt column
        RecordBatch.load({"user_prompts": [{"id": "p", "interception_id": bad_column.interceptions[0].id,
                                            "created_at": format_timestamp(NOW), "promt": "typo"}]})
    bad_column.tool_usages.append(bad_column.user_prompts[0])  # a record in the wrong table
    with pytest.raises(StoreError, match="is not a ToolUsageRecord"):
        store.records.write_records(bad_column)
    no_start = interception(NOW)
    no_start.interceptions[0].started_at = None
    with pytest.raises(Exception) as refusal:  # not silently skipped
        store.records.write_records(no_start)
    assert refused(refusal.value), refusal.value
    assert store.queries.count_records() == {table: 0 for table in RECORD_COLUMNS}
    assert not store.in_transaction


def test_every_value_is_stored_exactly_whatever_the_batch_holds(store: Store) -> None:
    """Texts JSON handles badly (NUL, lone surrogates are refused elsewhere; line separators, emoji,
    quotes) come back as written; a row repeated in one batch is stored and counted once; an
    interception ended twice in one batch gets both ends' metadata, in order. PostgreSQL's text cannot
    hold NUL: there it becomes U+FFFD rather than the record being refused."""
    odd = "nul\x00inside \u2028 \U0001f600 \"quoted\" \\ back"
    stored = odd.replace("\x00", "\ufffd") if isinstance(store, PostgresStore) else odd
    plain, with_nul = interception(NOW, model=odd), interception(NOW)
    with_nul.user_prompts[0].prompt = odd
    with_nul.model_thoughts[0].content = odd
    repeated = combined(plain, plain, with_nul)
    iid = plain.interceptions[0].id
    repeated.ends.append(InterceptionEndRecord(id=iid, ended_at=format_timestamp(NOW + timedelta(seconds=1)),
                                               metadata='{"c": 3}'))
    store.records.write_records(repeated)
    assert store.queries.count_records() == {table: 2 for table in RECORD_COLUMNS}
    first = store.queries.get_interception(iid)
    assert first["model"] == stored
    assert first["ended_at"] == format_timestamp(NOW + timedelta(seconds=1))
    assert json.loads(first["metadata"]) == {"a": 1, "b": 2, "c": 3}  # the first end's key too
    second = store.queries.get_interception(with_nul.interceptions[0].id)
    assert [r["prompt"] for r in second["user_prompts"]] == [stored]
    assert [r["content"] for r in second["model_thoughts"]] == [stored]
    totals = {row["group"]: row for row in store.queries.usage_summary("model")}
    assert totals[stored]["interceptions"] == 1 and totals[stored]["input_tokens"] == 10
    assert totals["claude"]["interceptions"] == 1


def test_ending_several_missing_interceptions_names_the_first(store: Store) -> None:
    good = interception(NOW)
    ends = [{"id": name, "ended_at": format_timestamp(NOW), "metadata": None} for name in ("gone-1", "gone-2")]
    with pytest.raises(StoreError, match="cannot end interception 'gone-1'"):
        store.records.write_records(combined(good, RecordBatch.load(dict(ends=ends))))
    assert store.queries.count_records() == {table: 0 for table in RECORD_COLUMNS}


def test_split_isolates_each_interception() -> None:
    a, b = interception(NOW), interception(NOW)
    parts = combined(a, b).split()
    assert [p.to_json() for p in parts] == [a.to_json(), b.to_json()]


def test_purge_deletes_exactly_the_old_interceptions_with_their_children(store: Store) -> None:
    cutoff = NOW - timedelta(days=30)
    old = [interception(cutoff - timedelta(seconds=n + 1)) for n in range(12)]
    new = [interception(cutoff + timedelta(seconds=n)) for n in range(8)]  # started_at == cutoff is kept
    store.records.write_records(combined(*old, *new))
    assert store.retention.purge_records(format_timestamp(cutoff)) == 12
    assert store.queries.count_records() == {table: 8 for table in RECORD_COLUMNS}
    kept = {r["id"] for r in store.db.query("SELECT id FROM aibridge_interceptions")}
    assert kept == {b.interceptions[0].id for b in new}
    for table in CHILD_TABLES.values():
        assert {r["interception_id"] for r in store.db.query(f"SELECT interception_id FROM {table}")} == kept
    assert store.retention.purge_records(format_timestamp(cutoff)) == 0


def test_purge_runs_in_chunks_of_short_transactions(sqlite_store: Store) -> None:
    store = sqlite_store
    store.records.write_records(combined(*(interception(NOW - timedelta(days=90, seconds=n)) for n in range(50))))
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    assert store.retention.purge_records(format_timestamp(NOW), chunk=7) == 50
    store.db.conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 8  # 7 full chunks and one of 1
    assert statements.count("COMMIT") == 8
    assert store.queries.count_records() == {table: 0 for table in RECORD_COLUMNS}


def test_purge_max_chunks_bounds_one_call(store: Store) -> None:
    store.records.write_records(combined(*(interception(NOW - timedelta(days=90, seconds=n)) for n in range(20))))
    assert store.retention.purge_records(format_timestamp(NOW), chunk=3, max_chunks=2) == 6
    # Oldest first: the remaining ones are the newest.
    assert store.queries.count_records()["aibridge_interceptions"] == 14
    assert store.retention.purge_records(format_timestamp(NOW), chunk=3) == 14


def _plan(store: Store, sql: str, params: list) -> str:
    return " | ".join(row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def test_indexes_serve_the_queries(sqlite_store: Store) -> None:
    store = sqlite_store
    store.records.write_records(combined(*(interception(NOW - timedelta(minutes=n)) for n in range(30))))
    store.db.execute("ANALYZE")
    page = _plan(
        store,
        "SELECT * FROM aibridge_interceptions WHERE (started_at, id) < (?, ?) ORDER BY started_at DESC, id DESC LIMIT 100",
        [format_timestamp(NOW), "z"],
    )
    assert "aibridge_interceptions_started_at" in page and "TEMP B-TREE" not in page
    for column in ("initiator_id", "provider", "provider_name", "model", "client"):
        plan = _plan(
            store,
            f"SELECT * FROM aibridge_interceptions WHERE {column} = ? AND started_at >= ? ORDER BY started_at DESC LIMIT 100",
            ["x", format_timestamp(NOW - timedelta(days=1))],
        )
        assert f"aibridge_interceptions_{column}" in plan and "TEMP B-TREE" not in plan
    for table in CHILD_TABLES.values():
        plan = _plan(store, f"SELECT * FROM {table} WHERE interception_id = ?", ["x"])
        assert f"{table}_interception_id" in plan
    plan = _plan(store, "SELECT sum(input_tokens) FROM aibridge_token_usages WHERE created_at >= ?", ["x"])
    assert "aibridge_token_usages_created_at" in plan


def test_read_helpers(store: Store) -> None:
    assert store.queries.get_interception("nope") is None
    assert store.queries.count_records() == {table: 0 for table in RECORD_COLUMNS}
    batch = interception(NOW)
    store.records.write_records(batch)
    row = store.queries.get_interception(batch.interceptions[0].id)
    assert row["client"] == "Claude Code"
    assert {name: len(row[name]) for name in CHILD_TABLES} == {name: 1 for name in CHILD_TABLES}


def test_rollup_ranges_are_primary_key_searches(sqlite_store: Store) -> None:
    """The usage rollups are WITHOUT ROWID tables keyed (period, dimensions...): a time range is one
    range of the primary key b-tree, whatever else the query asks."""
    store = sqlite_store
    store.records.write_records(combined(*(interception(NOW - timedelta(hours=n)) for n in range(30))))
    for period, table in (("hour", "aibridge_usage_hourly"), ("day", "aibridge_usage_daily"),
                          ("hour", "aibridge_tool_usage_hourly"), ("day", "aibridge_tool_usage_daily")):
        assert store.db[table].pks[0] == period
        for extra in ("", " AND initiator_id = ?"):
            plan = _plan(store, f"SELECT initiator_id, sum(1) FROM {table} WHERE {period} >= ? AND {period} < ?{extra}"
                                " GROUP BY 1", ["a", "b", "u"][: 3 if extra else 2])
            assert f"SEARCH {table} USING PRIMARY KEY ({period}>? AND {period}<?)" in plan, plan


def test_both_backends_answer_the_same(tmp_path: Path, postgres) -> None:
    """The same records written to SQLite and to PostgreSQL give the same answers: interception
    pages (filters, keyset and offset), clients, usage rollups, top tools, and after a purge."""
    users = ["u1", "u2", "u3"]
    batches = []
    for n in range(60):
        batch = interception(NOW - timedelta(hours=n * 3, seconds=n), initiator_id=users[n % 3],
                             model=("claude", "gpt-4o")[n % 2], client=("Claude Code", "Codex", None)[n % 3])
        batch.token_usages[0].input_tokens = n
        batches.append(batch)
    # Ends and children in a later batch than their interceptions for some: the rollup key comes from the table.
    early = combined(*batches[:30])
    late = combined(*batches[30:])
    starts_only = RecordBatch(interceptions=late.interceptions)
    rest = RecordBatch(ends=late.ends, **{name: getattr(late, name) for name in CHILD_TABLES})
    answers = []
    for target in (str(tmp_path / "bridge.db"), postgres.create_database("agree")):
        with open_store(target, migrate=True) as store:
            for batch in (early, starts_only, rest, early):  # early twice: a replay adds nothing
                store.records.write_records(batch)
            since, until = format_timestamp(NOW - timedelta(days=10)), format_timestamp(NOW)
            found: dict[str, object] = {
                "clients": store.queries.interception_clients(),
                "own clients": store.queries.interception_clients(viewer_id="u2"),
                "summary": [store.queries.usage_summary(by, since) for by in ("user", "model", "client", "provider")],
                "series": [store.queries.usage_series("model", bucket, since, until, viewer_id=viewer)
                           for bucket in ("hour", "day") for viewer in (None, "u1")],
                "tools": store.queries.top_tools(since, until),
            }
            pages = []
            for filters, kwargs in [(None, {"limit": 7}), (InterceptionFilter(model="gpt-4o"), {"limit": 5, "offset": 3}),
                                    (InterceptionFilter(initiator="u2", client="Codex"), {"limit": 100}),
                                    (InterceptionFilter(started_after=since, started_before=until), {"limit": 10})]:
                page = store.queries.query_interceptions(filters, **kwargs)
                follow = (store.queries.query_interceptions(filters, limit=4, after_id=page["results"][-1]["id"])
                          if page["results"] else None)
                pages.append((page, follow))
            found["pages"] = pages
            found["purged"] = store.retention.purge_records(format_timestamp(NOW - timedelta(days=5)))
            found["after purge"] = (store.queries.count_records(), store.queries.usage_summary("model"), store.queries.top_tools(since, until))
            answers.append(found)
    sqlite_answers, postgres_answers = answers
    for key in sqlite_answers:
        assert postgres_answers[key] == sqlite_answers[key], key
    assert sqlite_answers["purged"] > 0 and sqlite_answers["pages"][0][0]["count"] == 60
