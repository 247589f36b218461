"""Usage rollups (migration 0004) and the usage API: GET /api/v2/aibridge/usage and /tools.

The rollups are checked against the raw records after random batches as the recorder writes them
(starts, later ends with children, batches split, replayed and duplicated) and purges; the API
against sums computed from the records of the shared dataset of test_api.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sqlite3
import threading
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bridge.records import TokenUsageRecord
from bridge.store import (
    CHILD_TABLES,
    MIGRATIONS,
    TOOL_DAILY_DIMENSIONS,
    TOOL_DIMENSIONS,
    TOOL_ROLLUPS,
    USAGE_DIMENSIONS,
    USAGE_ROLLUPS,
    RecordBatch,
    Store,
    StoreError,
    open_store,
)
from bridge.timestamps import format_timestamp
from tests.test_api import Dataset, make_client, seed_dataset, spy_store_threads

FIGURES = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
TOKENS = FIGURES[1:]
#: What the usage figures add on costs: token usages without a price, and the priced ones' USD (None: none).
COSTS = ("unpriced_token_usages", "cost_usd")
USAGE = "/api/v2/aibridge/usage"
TOOLS = "/api/v2/aibridge/tools"
T0 = datetime(2026, 3, 28, 21, 0, tzinfo=timezone.utc)  # records spread over the days after this


def hour_of(timestamp: str) -> str:
    return f"{timestamp[:13]}:00:00Z"


def day_of(timestamp: str) -> str:
    return f"{timestamp[:10]}T00:00:00Z"


# -- the rollups equal a GROUP BY over the records -----------------------------------------------


def rollups(store: Store) -> dict[str, dict[tuple, tuple]]:
    """Every rollup table as {key: figures}, zero rows left out."""
    found = {}
    for period, table in USAGE_ROLLUPS.items():
        keys = ", ".join((period, *USAGE_DIMENSIONS))
        found[table] = {tuple(row[:6]): tuple(row[6:]) for row in store.db.execute(
            f"SELECT {keys}, {', '.join((*FIGURES, *COSTS))} FROM {table}")}
    for period, table in TOOL_ROLLUPS.items():
        keys = (period, *(TOOL_DIMENSIONS if period == "hour" else TOOL_DAILY_DIMENSIONS), "tool")
        found[table] = {tuple(row[:-1]): (row[-1],) for row in store.db.execute(
            f"SELECT {', '.join(keys)}, calls FROM {table}")}
    return found


def grouped_records(store: Store) -> dict[str, dict[tuple, tuple]]:
    """What the rollups must hold, by GROUP BY over the record tables."""
    dims = ", ".join(f"coalesce(i.{c}, '')" for c in USAGE_DIMENSIONS)
    tool_dims = ", ".join(f"coalesce(i.{c}, '')" for c in TOOL_DIMENSIONS)
    expected = {}
    for period, table in USAGE_ROLLUPS.items():
        at = f"substr(i.started_at, 1, {13 if period == 'hour' else 10})"
        counts = {tuple(row[:6]): row[6] for row in store.db.execute(
            f"SELECT {at}, {dims}, count(*) FROM aibridge_interceptions AS i GROUP BY 1, 2, 3, 4, 5, 6")}
        tokens = {tuple(row[:6]): row[6:] for row in store.db.execute(
            f"SELECT {at}, {dims}, {', '.join(f'sum(u.{c})' for c in TOKENS)},"
            " count(*) - count(u.cost_usd), sum(u.cost_usd) FROM aibridge_token_usages AS u"
            " JOIN aibridge_interceptions AS i ON i.id = u.interception_id GROUP BY 1, 2, 3, 4, 5, 6")}
        expected[table] = {
            (_period(period, key[0]), *key[1:]): (counts.get(key, 0), *tokens.get(key, (0, 0, 0, 0, 0, None)))
            for key in counts.keys() | tokens.keys()
        }
    for period, table in TOOL_ROLLUPS.items():
        at = f"substr(i.started_at, 1, {13 if period == 'hour' else 10})"
        keys = tool_dims if period == "hour" else ", ".join(f"coalesce(i.{c}, '')" for c in TOOL_DAILY_DIMENSIONS)
        width = 2 + keys.count("coalesce")
        expected[table] = {
            (_period(period, row[0]), *row[1:-1]): (row[-1],) for row in store.db.execute(
                f"SELECT {at}, {keys}, coalesce(t.tool, ''), count(*) FROM aibridge_tool_usages AS t"
                f" JOIN aibridge_interceptions AS i ON i.id = t.interception_id"
                f" GROUP BY {', '.join(str(n) for n in range(1, 1 + width))}")
        }
    return expected


def _period(period: str, prefix: str) -> str:
    return f"{prefix}:00:00Z" if period == "hour" else f"{prefix}T00:00:00Z"


class Traffic:
    """Random records as the recorder writes them: an interception's start in one batch, its end
    with the children in the same or a later one; batches split, replayed, duplicated."""

    USERS = ["u-ann", "u-ben", "u-cid", None]
    PROVIDERS = [("anthropic", "anthropic", "claude-sonnet-4-5"), ("openai", "openai", "gpt-5"),
                 ("openai", "team-b", "gpt-4o"), ("anthropic", "corp", None)]
    CLIENTS = ["Claude Code", "Codex", "Zed", None]
    TOOLS = ["Read", "Bash", "Edit", None]

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.open: list[tuple[str, str]] = []  # started, not ended: (id, started_at)
        self.written: list[RecordBatch] = []

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def batch(self) -> RecordBatch:
        rng = self.rng
        rows: dict[str, list[dict]] = {name: [] for name in ("interceptions", "ends", "token_usages", "user_prompts", "tool_usages")}
        for _ in range(rng.randint(0, 12)):
            provider, name, model = rng.choice(self.PROVIDERS)
            # Minutes over four days, so that hours and days (UTC) are crossed often.
            started = format_timestamp(T0 + timedelta(minutes=rng.randint(0, 4 * 24 * 60), seconds=rng.random() * 60))
            row = {"id": self.uid(), "initiator_id": rng.choice(self.USERS), "provider": provider,
                   "provider_name": name, "model": model, "client": rng.choice(self.CLIENTS), "started_at": started,
                   "metadata": {}}
            rows["interceptions"].append(row)
            self.open.append((row["id"], started))
        rng.shuffle(self.open)
        for _ in range(rng.randint(0, len(self.open))):
            iid, started = self.open.pop()
            rows["ends"].append({"id": iid, "ended_at": started, "metadata": None})
            for _ in range(rng.choice((0, 1, 1, 2))):
                usage = {
                    "id": self.uid(), "interception_id": iid, "input_tokens": rng.randint(0, 5000),
                    "output_tokens": rng.randint(0, 900), "cache_read_input_tokens": rng.choice((0, rng.randint(1, 9999))),
                    "cache_write_input_tokens": rng.choice((None, 0, rng.randint(1, 999))), "created_at": started}
                # Its cost as priced when recorded: a binary fraction (sums exact in any order), none for a
                # quarter (a model without a price); from its figures, so the random draws stay the same.
                usage["cost_usd"] = None if usage["input_tokens"] % 4 == 0 else usage["output_tokens"] / 1024
                rows["token_usages"].append(usage)
            for _ in range(rng.choice((0, 0, 1, 3))):
                rows["tool_usages"].append({"id": self.uid(), "interception_id": iid, "tool": rng.choice(self.TOOLS),
                                          "provider_tool_call_id": self.uid(), "input": "{}", "created_at": started})
            if rng.random() < 0.5:
                rows["user_prompts"].append({"id": self.uid(), "interception_id": iid, "prompt": "hi",
                                           "created_at": started})
        if rows["token_usages"] and rng.random() < 0.2:  # the same row twice in one batch
            rows["token_usages"].append(dict(rows["token_usages"][0]))
        if rows["interceptions"] and rng.random() < 0.2:
            rows["interceptions"].append(dict(rows["interceptions"][0]))
        return RecordBatch.load(rows)

    def write(self, store: Store) -> None:
        """A new batch (sometimes split per interception, as the recorder isolates a refused row),
        and sometimes a replay of an earlier one (a journal replayed after a crash)."""
        rng = self.rng
        batch = self.batch()
        parts = batch.split() if rng.random() < 0.2 else [batch]
        for part in parts:
            store.records.write_records(part)
        self.written.append(batch)
        if rng.random() < 0.3:
            self.replay(store, rng.choice(self.written))
        if rng.random() < 0.1:
            for old in rng.sample(self.written, min(3, len(self.written))):
                for part in old.split():
                    self.replay(store, part)

    @staticmethod
    def replay(store: Store, batch: RecordBatch) -> None:
        try:
            store.records.write_records(batch)
        except (StoreError, sqlite3.IntegrityError):  # it ends (or adds to) an interception purged since:
            pass  # refused as a whole, as the recorder sets it aside; the rollups must not move either


@pytest.fixture
def store(tmp_path: Path):
    with open_store(str(tmp_path / "usage.db"), migrate=True) as s:
        yield s


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_equal_a_group_by_over_the_records_through_replays_and_purges(store: Store, seed: int) -> None:
    traffic = Traffic(seed)
    for round_ in range(6):
        for _ in range(15):
            traffic.write(store)
        assert rollups(store) == grouped_records(store), f"round {round_}"
        # Purge at midnight (no partial hour or day is kept: see the test below), in chunks.
        cutoff = T0.replace(hour=0) + timedelta(days=round_ // 2 + traffic.rng.randint(0, 1))
        store.retention.purge_records(format_timestamp(cutoff), chunk=traffic.rng.choice((3, 10, 5000)))
        traffic.open = [(iid, at) for iid, at in traffic.open if at >= format_timestamp(cutoff)]  # gone
        assert rollups(store) == grouped_records(store), f"after purge {round_}"
    assert sum(r[0] for r in rollups(store)[USAGE_ROLLUPS["hour"]].values()) > 20  # it did count something
    store.retention.purge_records(format_timestamp(T0 + timedelta(days=10)))
    assert all(not rows for rows in rollups(store).values())


def test_a_batch_written_twice_counts_once(store: Store) -> None:
    traffic = Traffic(7)
    batches = [traffic.batch() for _ in range(20)]
    for batch in batches:
        store.records.write_records(batch)
    once = rollups(store)
    assert once == grouped_records(store)
    for batch in batches:
        store.records.write_records(batch)
        store.records.write_records(RecordBatch.from_json(batch.to_json()))
    assert rollups(store) == once


def test_children_count_under_their_interceptions_hour_when_written_later(store: Store) -> None:
    started = format_timestamp(T0 + timedelta(minutes=59, seconds=59))  # 21:59:59, day 28
    start = {"id": "i-1", "initiator_id": "u", "provider": "openai", "provider_name": "openai", "model": "gpt-5",
             "client": "Codex", "started_at": started}
    store.records.write_records(RecordBatch.load(dict(interceptions=[start])))
    later = format_timestamp(T0 + timedelta(hours=3))  # the next day
    store.records.write_records(RecordBatch.load(dict(
        ends=[{"id": "i-1", "ended_at": later, "metadata": None}],
        token_usages=[{"id": "t-1", "interception_id": "i-1", "input_tokens": 5, "output_tokens": 7, "created_at": later}],
        tool_usages=[{"id": "c-1", "interception_id": "i-1", "tool": "shell", "created_at": later}])))
    # No end in this batch: the interception is looked up in the store.
    store.records.write_records(RecordBatch.load(dict(
        token_usages=[{"id": "t-2", "interception_id": "i-1", "input_tokens": 1, "cache_read_input_tokens": 2,
                       "cache_write_input_tokens": 3, "created_at": later}],
        tool_usages=[{"id": "c-2", "interception_id": "i-1", "tool": "shell", "created_at": later}])))
    got = rollups(store)
    key = ("u", "openai", "openai", "gpt-5", "Codex")
    assert got[USAGE_ROLLUPS["hour"]] == {("2026-03-28T21:00:00Z", *key): (1, 6, 7, 2, 3, 2, None)}
    assert got[USAGE_ROLLUPS["day"]] == {("2026-03-28T00:00:00Z", *key): (1, 6, 7, 2, 3, 2, None)}
    assert got[TOOL_ROLLUPS["hour"]] == {("2026-03-28T21:00:00Z", "u", "openai", "gpt-5", "Codex", "shell"): (2,)}
    assert got[TOOL_ROLLUPS["day"]] == {("2026-03-28T00:00:00Z", "u", "shell"): (2,)}


def test_a_refused_batch_adds_nothing_to_the_rollups(store: Store) -> None:
    traffic = Traffic(3)
    good = traffic.batch()
    while not good.interceptions:
        good = traffic.batch()
    store.records.write_records(good)
    before = rollups(store)
    bad = traffic.batch()
    bad.interceptions.append(dataclasses.replace(good.interceptions[0], id="new-one"))
    bad.token_usages.append(TokenUsageRecord(id="orphan", interception_id="missing", created_at="2026-03-29T00:00:00Z"))
    with pytest.raises(Exception):  # the foreign key refuses the orphan: the whole batch rolls back
        store.records.write_records(bad)
    with pytest.raises(StoreError):  # a record in the wrong table
        store.records.write_records(RecordBatch(interceptions=[dataclasses.replace(bad.token_usages[-1], id="x")]))
    assert rollups(store) == before == grouped_records(store)


def test_a_purge_keeps_the_cutoffs_partial_hour_and_day(store: Store) -> None:
    rows = [{"id": f"i-{n}", "initiator_id": "u", "provider": "openai", "provider_name": "openai", "model": "m",
             "client": "c", "started_at": format_timestamp(T0 + timedelta(minutes=20 * n))} for n in range(12)]
    store.records.write_records(RecordBatch.load(dict(interceptions=rows)))  # 21:00 .. 00:40 the next day, three per hour
    cutoff = T0 + timedelta(hours=2, minutes=30)  # 23:30
    assert store.retention.purge_records(format_timestamp(cutoff), chunk=2) == 8  # up to 23:20
    hourly = {key[0]: figures[0] for key, figures in rollups(store)[USAGE_ROLLUPS["hour"]].items()}
    # 21:00 and 22:00 are gone; 23:00 keeps its three (two of them purged); 00:00 untouched.
    assert hourly == {"2026-03-28T23:00:00Z": 3, "2026-03-29T00:00:00Z": 3}
    daily = {key[0]: figures[0] for key, figures in rollups(store)[USAGE_ROLLUPS["day"]].items()}
    assert daily == {"2026-03-28T00:00:00Z": 9, "2026-03-29T00:00:00Z": 3}  # the cutoff's day stays whole
    # Once the cutoff moves past them, the partial hour and day go.
    store.retention.purge_records(format_timestamp(T0 + timedelta(hours=3)))
    assert {key[0] for key in rollups(store)[USAGE_ROLLUPS["hour"]]} == {"2026-03-29T00:00:00Z"}
    assert {key[0] for key in rollups(store)[USAGE_ROLLUPS["day"]]} == {"2026-03-29T00:00:00Z"}
    assert rollups(store) == grouped_records(store)


def test_a_bounded_purge_never_drops_the_rollups_of_hours_still_holding_records(store: Store) -> None:
    traffic = Traffic(11)
    for _ in range(40):
        store.records.write_records(traffic.batch())
    for batch in (traffic.batch() for _ in range(5)):  # end what is still open: all children written
        store.records.write_records(batch)
    cutoff = format_timestamp(T0 + timedelta(days=3, minutes=30))
    expected_after = None
    while True:
        deleted = store.retention.purge_records(cutoff, chunk=4, max_chunks=1)
        got, raw = rollups(store), grouped_records(store)
        for table, rows in raw.items():
            for key, figures in rows.items():  # every hour (day) with records keeps its rollup row
                assert key in got[table], (table, key)
        if deleted < 4:
            expected_after = raw
            break
    # Done: the cutoff's partial hour aside, the rollups are exactly the records.
    partial = hour_of(cutoff)
    got = rollups(store)
    assert {k: v for k, v in got[USAGE_ROLLUPS["hour"]].items() if k[0] != partial} == {
        k: v for k, v in expected_after[USAGE_ROLLUPS["hour"]].items() if k[0] != partial}
    assert all(k[0] >= partial for k in got[USAGE_ROLLUPS["hour"]])
    assert all(k[0] >= day_of(cutoff) for k in got[USAGE_ROLLUPS["day"]])


def test_the_migration_backfills_the_rollups_from_existing_records(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "old.db"))
    # The schema before rollups (0001-0003), and records written behind write_records' back.
    with store.write():
        MIGRATIONS.apply(store.db, stop_before="0004_usage_rollups")
    traffic = Traffic(5)
    for _ in range(30):
        batch = traffic.batch()
        for name in ("interceptions", *CHILD_TABLES):
            for record in getattr(batch, name):
                row = {k: (json.dumps(v) if isinstance(v, dict) else v) for k in record.__slots__
                       if (v := getattr(record, k)) is not None and k != "cost_usd"}  # (no such column yet)
                table = "aibridge_interceptions" if name == "interceptions" else CHILD_TABLES[name]
                store.db.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(row)}) VALUES"
                                 f" ({', '.join('?' * len(row))})", list(row.values()))
    assert "aibridge_usage_hourly" not in store.db.table_names()
    store.migrate()  # prices the records too (genai-prices: float costs, summed in another order than below)
    assert rollups(store) == _approx_costs(grouped_records(store))
    assert sum(r[0] for r in rollups(store)[USAGE_ROLLUPS["day"]].values()) > 50
    store.db.execute("DELETE FROM aibridge_usage_daily")
    store.rollups.rebuild()
    assert rollups(store) == _approx_costs(grouped_records(store))
    assert sum(r[-1] or 0 for r in rollups(store)[USAGE_ROLLUPS["day"]].values()) > 0  # priced at migration
    store.close()


def _approx_costs(found: dict[str, dict[tuple, tuple]]) -> dict[str, dict[tuple, tuple]]:
    """Rollups whose costs (a usage rollup row's last figure) compare as floats summed in any order."""
    return {table: {key: (*figures[:-1], pytest.approx(figures[-1], rel=1e-12))
                    if table in USAGE_ROLLUPS.values() and figures[-1] is not None else figures
                    for key, figures in rows.items()} for table, rows in found.items()}


# -- the store's usage queries ------------------------------------------------------------------


def _model_sums(store: Store, by_column: str, low: str, high: str, bucket: str | None, viewer: str | None = None):
    """Expected figures (FIGURES, then COSTS) per (key, bucket start) straight from the records, hours in [low, high)."""
    sums: dict[tuple, list[Any]] = defaultdict(lambda: [0] * 6 + [None])
    for row in store.db.execute(
        f"SELECT i.id, coalesce(i.{by_column}, ''), i.started_at, i.initiator_id FROM aibridge_interceptions AS i"
    ):
        iid, key, started, initiator = row
        hour = hour_of(started)
        if not low <= hour < high or (viewer is not None and initiator != viewer):
            continue
        at = None if bucket is None else hour if bucket == "hour" else day_of(started)
        figures = sums[(key, at)]
        figures[0] += 1
        for *usage, cost in store.db.execute(
                f"SELECT {', '.join(TOKENS)}, cost_usd FROM aibridge_token_usages WHERE interception_id = ?", [iid]):
            for n, value in enumerate(usage, 1):
                figures[n] += value
            if cost is None:
                figures[5] += 1
            else:
                figures[6] = (figures[6] or 0) + cost
    return dict(sums)


@pytest.mark.parametrize("since, until", [
    ("2026-03-28T21:00:00.000000Z", "2026-04-02T00:00:00.000000Z"),  # everything
    ("2026-03-29T05:17:00.000000Z", "2026-03-31T13:00:00.000001Z"),  # ragged ends: hours + days + hours
    ("2026-03-29T00:00:00.000000Z", "2026-03-30T00:00:00.000000Z"),  # exactly one day
    ("2026-03-29T10:00:00.000000Z", "2026-03-29T11:30:00.000000Z"),  # within a day
    ("2026-03-30T22:10:00.000000Z", "2026-03-31T01:00:00.000000Z"),  # across midnight, no whole day
])
def test_usage_series_sums_whole_hours_of_the_range(store: Store, since: str, until: str) -> None:
    traffic = Traffic(21)
    for _ in range(60):
        traffic.write(store)
    low = hour_of(since)
    high = until[:13] + ":00:00Z" if until.endswith(":00:00.000000Z") else hour_of(
        format_timestamp(datetime.fromisoformat(until.replace("Z", "+00:00")) + timedelta(hours=1)))
    for by, column in (("user", "initiator_id"), ("model", "model"), ("client", "client"), ("provider", "provider_name")):
        for bucket in ("hour", "day"):
            for viewer in (None, "u-ben"):
                found = store.queries.usage_series(by, bucket, since, until, viewer_id=viewer)
                got = {(s["key"] or "", p["t"]): [p[f] for f in (*FIGURES, *COSTS)] for s in found["series"]
                       for p in s["points"]}
                assert got == _model_sums(store, column, low, high, bucket, viewer), (by, bucket, viewer)
                for series in found["series"]:
                    assert [p["t"] for p in series["points"]] == sorted(p["t"] for p in series["points"])
                    assert [series["total"][f] for f in (*FIGURES, *COSTS)] == _summed(
                        [p[f] for f in (*FIGURES, *COSTS)] for p in series["points"])
                assert [found["totals"][f] for f in (*FIGURES, *COSTS)] == _summed(got.values())
                tokens = [sum(sum(p[f] for f in TOKENS) for p in s["points"]) for s in found["series"]]
                assert tokens == sorted(tokens, reverse=True)
                if viewer is not None and by == "user":
                    assert [s["key"] for s in found["series"]] in ([], ["u-ben"])
        summary = store.queries.usage_summary(by, since)
        expected = {key: figures for (key, _), figures in _model_sums(store, column, low, "9999", None).items()}
        assert {r["user_id" if by == "user" else "group"] or "": [r[f] for f in (*FIGURES, *COSTS)]
                for r in summary} == expected


def _summed(rows: Any) -> list[Any]:
    """Figures (FIGURES, then COSTS) summed over ``rows``: the cost None unless some row has one."""
    total: list[Any] = [0] * 6 + [None]
    for row in rows:
        total[:6] = [a + b for a, b in zip(total[:6], row[:6])]
        if row[6] is not None:
            total[6] = (total[6] or 0) + row[6]
    return total


def test_top_tools(store: Store) -> None:
    traffic = Traffic(33)
    for _ in range(60):
        traffic.write(store)
    since, until = "2026-03-29T05:17:00.000000Z", "2026-03-31T13:10:00.000000Z"
    for viewer in (None, "u-ann"):
        expected: dict[str, int] = defaultdict(int)
        for tool, started, initiator in store.db.execute(
            "SELECT coalesce(t.tool, ''), i.started_at, i.initiator_id FROM aibridge_tool_usages t"
            " JOIN aibridge_interceptions i ON i.id = t.interception_id"
        ):
            if "2026-03-29T05" <= started[:13] <= "2026-03-31T13" and viewer in (None, initiator):
                expected[tool] += 1
        ranked = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
        assert store.queries.top_tools(since, until, limit=100, viewer_id=viewer) == [
            {"tool": tool or None, "calls": calls} for tool, calls in ranked]
        assert store.queries.top_tools(since, until, limit=2, viewer_id=viewer) == [
            {"tool": tool or None, "calls": calls} for tool, calls in ranked[:2]]


# -- the API ------------------------------------------------------------------------------------


EXTRA_TOOLS = {"Bash": 5, "Edit": 3, "Grep": 1}  # calls added to bob's newest interception, besides the dataset's Read


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    data = seed_dataset(tmp_path_factory.mktemp("usage-api") / "usage.db")
    # More tools, written after their interception (the rollups look it up in the store).
    bob = data.users["bob"]["id"]
    newest = max((r for r in data.records if r["initiator_id"] == bob), key=lambda r: r["started_at"])
    rows = [{"id": f"extra-{tool}-{n}", "interception_id": newest["id"], "tool": tool, "created_at": newest["started_at"]}
            for tool, count in EXTRA_TOOLS.items() for n in range(count)]
    with open_store(str(data.path)) as store:
        store.records.write_records(RecordBatch.load(dict(tool_usages=rows)))
    newest["tool_usages"] = newest["tool_usages"] + rows
    return data


@pytest.fixture(scope="module")
def client(data: Dataset):
    return make_client(data.path)


def call(client, data: Dataset, user: str | None, path: str = USAGE, **params: Any):
    headers = {"Authorization": f"Bearer {data.tokens[user]}"} if user else {}
    return client.get(path, query_string=params, headers=headers)


def ok(response) -> Any:
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def expected_usage(data: Dataset, key, bucket: str = "day", since: str = "", viewer: str | None = None) -> dict:
    """{series key: {bucket start: figures}} from the dataset's records."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for record in data.records:
        if record["started_at"][:13] < since[:13] or (viewer is not None and record["initiator_id"] != viewer):
            continue
        at = hour_of(record["started_at"]) if bucket == "hour" else day_of(record["started_at"])
        figures = out.setdefault(key(record), {}).setdefault(at, {**dict.fromkeys(FIGURES, 0),
                                                                  "unpriced_token_usages": 0, "cost_usd": None})
        figures["interceptions"] += 1
        for usage in record["token_usages"]:
            for figure in TOKENS:
                figures[figure] += usage[figure] or 0
            if usage["cost_usd"] is None:
                figures["unpriced_token_usages"] += 1
            else:
                figures["cost_usd"] = (figures["cost_usd"] or 0) + usage["cost_usd"]
    return out


def as_expected(body: dict) -> dict:
    return {s["key"]: {p["t"]: {f: p[f] for f in (*FIGURES, *COSTS)} for p in s["points"]} for s in body["series"]}


BY = {"user": lambda r: r["initiator_id"], "model": lambda r: r["model"], "client": lambda r: r["client"],
      "provider": lambda r: r["provider_name"]}


def test_the_default_is_tokens_per_model_and_day_over_30_days(client, data: Dataset) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    body = ok(call(client, data, "alice"))
    after = datetime.now(timezone.utc)
    assert list(body) == ["by", "bucket", "sort", "since", "until", "series", "totals"]
    assert body["by"] == "model" and body["bucket"] == "day" and body["sort"] == "tokens"
    until = datetime.fromisoformat(body["until"].replace("Z", "+00:00"))
    assert before <= until <= after and body["until"].endswith("Z") and len(body["until"]) == 20
    since = datetime.fromisoformat(body["since"].replace("Z", "+00:00"))
    assert since == (before - timedelta(days=30)).replace(minute=0, second=0) or since == (
        after - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
    assert as_expected(body) == expected_usage(data, BY["model"])
    for series in body["series"]:
        assert list(series) == ["key", "label", "total", "points"] and series["label"] == series["key"]
        for point in series["points"]:
            assert list(point) == ["t", *FIGURES, *COSTS]
            assert point["t"].endswith("T00:00:00Z")
        assert [series["total"][f] for f in (*FIGURES, *COSTS)] == _summed(
            [p[f] for f in (*FIGURES, *COSTS)] for p in series["points"])
    totals = [sum(sum(p[f] for f in TOKENS) for p in s["points"]) for s in body["series"]]
    assert totals == sorted(totals, reverse=True) and len(totals) > 2
    usages = [u for r in data.records for u in r["token_usages"]]
    assert body["totals"] == {**{f: sum(sum(u[f] or 0 for u in r["token_usages"]) if f != "interceptions" else 1
                                        for r in data.records) for f in FIGURES},
                              "unpriced_token_usages": sum(u["cost_usd"] is None for u in usages),
                              "cost_usd": sum(u["cost_usd"] or 0 for u in usages)}
    # The dataset (test_api.seed_dataset): record i costs (i + 1) / 64 USD, none when i % 6 == 5.
    assert body["totals"]["unpriced_token_usages"] == 15
    assert body["totals"]["cost_usd"] == (90 * 91 / 2 - 6 * (15 * 16 / 2)) / 64 == 3375 / 64  # 1..90 less 6, 12, .., 90


@pytest.mark.parametrize("by", list(BY))
@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_every_grouping_and_bucket(client, data: Dataset, by: str, bucket: str) -> None:
    body = ok(call(client, data, "alice", by=by, bucket=bucket, since="7d"))
    assert body["by"] == by and body["bucket"] == bucket
    assert as_expected(body) == expected_usage(data, BY[by], bucket)
    if by == "user":
        names = {u["id"]: name for name, u in data.users.items()}
        assert {s["key"]: s["label"] for s in body["series"]} == {key: names[key] for key in as_expected(body)}
        assert "dave" in {s["label"] for s in body["series"]}  # a deleted user's usage keeps its name


def test_since_and_until_pick_whole_hours(client, data: Dataset) -> None:
    # A window of the dataset: records start 30 s past a minute, so 45 s past is never on a record.
    start = datetime.fromisoformat(data.at(60 * 30).replace("Z", "+00:00")).replace(second=45, microsecond=0)
    end = start + timedelta(hours=20, minutes=7)
    params = {"since": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "until": end.isoformat(), "by": "client",
              "bucket": "hour"}
    body = ok(call(client, data, "alice", **params))
    assert body["since"] == start.strftime("%Y-%m-%dT%H:00:00Z") and body["until"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")
    low, high = start.strftime("%Y-%m-%dT%H"), end.strftime("%Y-%m-%dT%H")
    expected = {key: {t: v for t, v in points.items() if low <= t[:13] <= high}
                for key, points in expected_usage(data, BY["client"], "hour").items()}
    assert as_expected(body) == {k: v for k, v in expected.items() if v}
    day = ok(call(client, data, "alice", **{**params, "bucket": "day"}))
    assert {k: sum(p["interceptions"] for p in v.values()) for k, v in as_expected(day).items()} == {
        k: sum(p["interceptions"] for p in v.values()) for k, v in expected.items() if v}
    # Durations count back from now.
    recent = ok(call(client, data, "alice", since="26h", bucket="hour"))
    assert 0 < recent["totals"]["interceptions"] < len(data.records)


def test_users_see_only_their_own_usage(client, data: Dataset) -> None:
    bob = data.users["bob"]["id"]
    for by in BY:
        body = ok(call(client, data, "bob", by=by))
        assert as_expected(body) == expected_usage(data, BY[by], viewer=bob), by
    mine = ok(call(client, data, "bob", by="user"))
    assert [(s["key"], s["label"]) for s in mine["series"]] == [(bob, "bob")]
    assert mine["totals"]["interceptions"] == sum(1 for r in data.records if r["initiator_id"] == bob) > 0
    everyone = ok(call(client, data, "alice", by="user"))
    assert len(everyone["series"]) == 4 and everyone["totals"]["interceptions"] == len(data.records)


def _expected_tools(data: Dataset, viewer: str | None = None, since: str = "") -> list[dict]:
    calls: dict[str, int] = defaultdict(int)
    for record in data.records:
        if (viewer is None or record["initiator_id"] == viewer) and record["started_at"][:13] >= since[:13]:
            for tool in record["tool_usages"]:
                calls[tool["tool"]] += 1
    return [{"tool": t, "calls": c} for t, c in sorted(calls.items(), key=lambda item: (-item[1], item[0]))]


def test_top_tools_api(client, data: Dataset) -> None:
    body = ok(call(client, data, "alice", TOOLS))
    assert list(body) == ["tools"]
    assert body["tools"] == _expected_tools(data) and [t["tool"] for t in body["tools"]][:2] == ["Read", "Bash"]
    assert ok(call(client, data, "alice", TOOLS, limit="2"))["tools"] == _expected_tools(data)[:2]
    carol = data.users["carol"]["id"]
    assert ok(call(client, data, "carol", TOOLS))["tools"] == _expected_tools(data, carol)
    bob = data.users["bob"]["id"]
    before = format_timestamp(datetime.now(timezone.utc) - timedelta(hours=1))
    recent = ok(call(client, data, "bob", TOOLS, since="1h"))["tools"]
    after = format_timestamp(datetime.now(timezone.utc) - timedelta(hours=1))
    assert recent in (_expected_tools(data, bob, before), _expected_tools(data, bob, after))
    assert {"tool": "Grep", "calls": 1} in recent and recent[0] == {"tool": "Bash", "calls": 5}
    old = datetime.now(timezone.utc) - timedelta(days=60)
    assert ok(call(client, data, "alice", TOOLS, since=old.strftime("%Y-%m-%dT%H:%M:%SZ"),
                   until=(old + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))) == {"tools": []}


BAD = [
    (USAGE, {"by": "colour"}, "invalid by 'colour'"),
    (USAGE, {"by": ""}, "invalid by"),
    (USAGE, {"bucket": "week"}, "invalid bucket 'week'"),
    (USAGE, {"sort": "spend"}, "invalid sort 'spend'"),
    (USAGE, {"sort": ""}, "use one of tokens, requests, cost"),
    (USAGE, {"since": "soon"}, "invalid since"),
    (USAGE, {"since": "0"}, "must be positive"),
    (USAGE, {"since": "7x"}, "not a duration"),
    (USAGE, {"since": "2025-06-01"}, "invalid since"),
    (USAGE, {"since": "2025-06-01T00:00:00"}, "no time zone"),
    (USAGE, {"since": "100000000d"}, "since"),
    (USAGE, {"until": "7d"}, "invalid until"),
    (USAGE, {"until": "2025-13-01T00:00:00Z"}, "invalid until"),
    (USAGE, {"since": "2025-06-02T00:00:00Z", "until": "2025-06-01T00:00:00Z"}, "until must be later than since"),
    (USAGE, {"since": "2099-01-01T00:00:00Z"}, "until must be later than since"),
    (USAGE, {"model": "gpt-4o"}, "unknown query parameter 'model'"),
    (USAGE, {"limit": "3"}, "unknown query parameter 'limit'"),
    (TOOLS, {"limit": "0"}, "invalid limit 0"),
    (TOOLS, {"limit": "1001"}, "out of range"),
    (TOOLS, {"limit": "many"}, "not a number"),
    (TOOLS, {"since": "yesterday"}, "invalid since"),
    (TOOLS, {"by": "model"}, "unknown query parameter 'by'"),
]


@pytest.mark.parametrize("path, params, fragment", BAD, ids=[f"{p} {q}" for p, q, _ in BAD])
def test_a_bad_value_is_a_400_naming_the_problem(client, data: Dataset, path: str, params: dict, fragment: str) -> None:
    response = call(client, data, "bob", path, **params)
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"message", "detail"} and body["detail"]
    assert fragment in body["message"] + " " + body["detail"]
    assert "filters go in q" not in body["detail"]


def test_a_parameter_given_twice_is_refused(client, data: Dataset) -> None:
    response = client.get(f"{USAGE}?by=user&by=model", headers={"Authorization": f"Bearer {data.tokens['alice']}"})
    assert response.status_code == 400 and "more than once" in response.get_json()["message"]


@pytest.mark.parametrize("path", [USAGE, TOOLS])
def test_no_token_is_a_401(client, data: Dataset, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = client.get(path, headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


def test_queries_run_off_the_calling_thread(client, data: Dataset, monkeypatch) -> None:
    threads = spy_store_threads(monkeypatch, "usage_series")
    ok(call(client, data, "alice"))
    assert threads and threading.get_ident() not in threads


def _rank(sort: str, total: dict[str, Any], key: str | None) -> tuple:
    """The documented series orders, biggest first: tokens (then interceptions), requests, cost (then
    as tokens; a series with no price last); the key breaks ties."""
    tokens = sum(total[f] for f in TOKENS)
    if sort == "tokens":
        return -tokens, -total["interceptions"], key or ""
    if sort == "requests":
        return -total["interceptions"], key or ""
    return total["cost_usd"] is None, -(total["cost_usd"] or 0), -tokens, -total["interceptions"], key or ""


@pytest.mark.parametrize("by", [*BY, "model_family"])
def test_sort_orders_the_series_by_tokens_requests_or_cost(client, data: Dataset, by: str) -> None:
    orders = {}
    for sort in ("tokens", "requests", "cost"):
        body = ok(call(client, data, "alice", by=by, sort=sort))
        assert body["sort"] == sort
        found = [(s["key"], s["total"]) for s in body["series"]]
        assert len(found) > 2
        assert found == sorted(found, key=lambda item: _rank(sort, item[1], item[0])), sort
        orders[sort] = [key for key, _ in found]
    assert ok(call(client, data, "alice", by=by))["series"] == ok(call(client, data, "alice", by=by, sort="tokens"))["series"]
    if by == "user":  # the dataset's users differ in what they spent and how often they called
        assert orders["requests"] != orders["tokens"] or orders["cost"] != orders["tokens"]
