"""The usage rollups (migration 0004): the upserts that keep them current, the statements that
fill them from the records, and a recount."""

from __future__ import annotations

from typing import Any

from bridge.records import InterceptionRecord, TokenUsageRecord, ToolUsageRecord
from bridge.store.common import (
    _COST_FIGURES, _TOKEN_FIGURES, _USAGE_FIGURES, ROLLUP_TABLES, TOOL_DAILY_DIMENSIONS, TOOL_DIMENSIONS, TOOL_ROLLUPS,
    USAGE_DIMENSIONS, USAGE_ROLLUPS, _hour, _rollup_key, rollup_additions,
)
from bridge.store.dialect import Dialect, writes

_KEY_SQL = f"substr(started_at, 1, 13) || ':00:00Z', {', '.join(USAGE_DIMENSIONS)}"


def upsert_sql(table: str, period: str, keys: tuple[str, ...], figures: tuple[str, ...],
               costs: tuple[str, ...] = ()) -> str:
    """Add a row's ``figures`` to the stored ones; a ``costs`` column is NULL until a known cost adds to it."""
    columns = (period, *keys, *figures, *costs)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join((period, *keys))}) DO UPDATE SET "
        + ", ".join([*(f"{c} = {table}.{c} + excluded.{c}" for c in figures),
                     *(f"{c} = coalesce({table}.{c} + excluded.{c}, {table}.{c}, excluded.{c})" for c in costs)])
    )


UPSERTS = {
    **{table: upsert_sql(table, period, USAGE_DIMENSIONS, (*_USAGE_FIGURES, *_COST_FIGURES[:1]), _COST_FIGURES[1:])
       for period, table in USAGE_ROLLUPS.items()},
    TOOL_ROLLUPS["hour"]: upsert_sql(TOOL_ROLLUPS["hour"], "hour", (*TOOL_DIMENSIONS, "tool"), ("calls",)),
    TOOL_ROLLUPS["day"]: upsert_sql(TOOL_ROLLUPS["day"], "day", (*TOOL_DAILY_DIMENSIONS, "tool"), ("calls",)),
}


def backfill_statements(row_key: str, costs: bool = True) -> list[str]:
    """Fill the (empty) rollup tables from the records: one INSERT ... SELECT ... GROUP BY each.

    ``row_key`` groups per interception: ``i.rowid`` on SQLite (streams in table order), ``i.id``
    on PostgreSQL (the primary key, so the other columns of ``i`` may be selected). ``costs``: the
    cost columns too (False: migration 0004's backfill, before migration 0009 added them).
    """
    dimensions, tool_dimensions = ", ".join(USAGE_DIMENSIONS), ", ".join(TOOL_DIMENSIONS)
    hour = "substr(i.started_at, 1, 13) || ':00:00Z'"
    groups = ", ".join(str(n) for n in range(1, 2 + len(USAGE_DIMENSIONS)))
    daily_keys = ", ".join((*TOOL_DAILY_DIMENSIONS, "tool"))
    figures = (*_USAGE_FIGURES, *_COST_FIGURES) if costs else _USAGE_FIGURES
    per_interception = [f"coalesce(sum(u.{c}), 0) AS {c}" for c in _TOKEN_FIGURES]
    if costs:  # sum() of no priced usage is NULL: no cost known
        per_interception += ["count(u.id) - count(u.cost_usd) AS unpriced_token_usages", "sum(u.cost_usd) AS cost_usd"]
    # Per interception first (its token usages by index), then per key: half the time of joining a
    # per-interception aggregate of the token usages.
    return [
        f"""INSERT INTO {USAGE_ROLLUPS['hour']} (hour, {dimensions}, {', '.join(figures)})
            SELECT hour, {dimensions}, count(*), {', '.join(f'sum({c})' for c in figures[1:])} FROM (
                SELECT {hour} AS hour, {', '.join(f"coalesce(i.{c}, '') AS {c}" for c in USAGE_DIMENSIONS)},
                       {', '.join(per_interception)}
                FROM aibridge_interceptions AS i LEFT JOIN aibridge_token_usages AS u ON u.interception_id = i.id
                GROUP BY {row_key}
            ) AS per_interception GROUP BY {groups}""",
        f"""INSERT INTO {USAGE_ROLLUPS['day']} (day, {dimensions}, {', '.join(figures)})
            SELECT substr(hour, 1, 10) || 'T00:00:00Z', {dimensions}, {', '.join(f'sum({c})' for c in figures)}
            FROM {USAGE_ROLLUPS['hour']} GROUP BY {groups}""",
        f"""INSERT INTO {TOOL_ROLLUPS['hour']} (hour, {tool_dimensions}, tool, calls)
            SELECT {hour}, {', '.join(f"coalesce(i.{c}, '')" for c in TOOL_DIMENSIONS)}, coalesce(t.tool, ''), count(*)
            FROM aibridge_tool_usages AS t JOIN aibridge_interceptions AS i ON i.id = t.interception_id
            GROUP BY {', '.join(str(n) for n in range(1, 3 + len(TOOL_DIMENSIONS)))}""",
        f"""INSERT INTO {TOOL_ROLLUPS['day']} (day, {daily_keys}, calls)
            SELECT substr(hour, 1, 10) || 'T00:00:00Z', {daily_keys}, sum(calls)
            FROM {TOOL_ROLLUPS['hour']} GROUP BY {', '.join(str(n) for n in range(1, 3 + len(TOOL_DAILY_DIMENSIONS)))}""",
    ]


class Rollups:
    """Adds written records to the rollups (in the writer's transaction) and recounts them."""

    def __init__(self, store: Dialect) -> None:
        self.store = store

    def add(self, interceptions: list[InterceptionRecord], token_usages: list[TokenUsageRecord],
            tool_usages: list[ToolUsageRecord]) -> None:
        """Add newly inserted rows to the rollups: aggregated in Python, then one upsert per key and table.

        A token or tool usage counts in the hour and under the dimensions (the rollup key) of its
        interception: taken from this batch when the batch inserted it, else read in one query (an
        earlier batch wrote it; a SELECT of ~250 ids costs less than ``UPDATE ... RETURNING`` on the ends).
        """
        if not (interceptions or token_usages or tool_usages):
            return
        keys: dict[Any, tuple[str, ...]] = {
            record.id: _rollup_key(_hour(record.started_at), [getattr(record, c) for c in USAGE_DIMENSIONS])
            for record in interceptions
        }
        missing = {record.interception_id for record in token_usages} | {record.interception_id for record in tool_usages}
        missing.difference_update(keys)
        if missing:
            condition, param = self.store._in("id", [str(m) for m in missing])
            for found in self.store.db.execute(f"SELECT id, {_KEY_SQL} FROM aibridge_interceptions WHERE {condition}",
                                               [param]):
                keys[found[0]] = _rollup_key(found[1], found[2:])
        for table, rows in rollup_additions(keys, interceptions, token_usages, tool_usages).items():
            self.store._executemany(UPSERTS[table], rows)

    @writes
    def rebuild(self) -> None:
        """Recount the usage rollups from the records (for databases filled behind write_records'
        back, e.g. bench/seed.py). One transaction: holds the write lock for the whole recount."""
        with self.store.write():
            self.recount()

    def recount(self) -> None:
        """``rebuild`` inside the caller's transaction."""
        db = self.store.db
        for table in ROLLUP_TABLES:
            db.execute(f"DELETE FROM {table}")
        for statement in backfill_statements(self.store._backfill_key):
            db.execute(statement)
