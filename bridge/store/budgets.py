"""Budgets (SPEC §11; SQLite migration 0010, PostgreSQL 0007): one row per user with a budget and one
default row, and what users spent since the start of the current day, ISO week and month, read from
the daily usage rollups (their rows for today are kept current by the record writer, in the same
transaction as the hourly ones, so whole periods of days need no hourly rows)."""

from __future__ import annotations

from typing import Any

from bridge.store.common import USAGE_ROLLUPS, StoreError
from bridge.store.dialect import Dialect, writes
from bridge.store.identity import Identity
from bridge.timestamps import utc_now

BUDGETS_TABLE = "aibridge_budgets"
#: The default budget's key: no user id is empty.
DEFAULT_KEY = ""
_TOKENS = "input_tokens + output_tokens + cache_read_input_tokens + cache_write_input_tokens"
#: A user's spend in one period: (USD, None when none of it was priced; tokens).
Spend = tuple[float | None, int]


def budgets_schema(text: str, integer: str, real: str) -> list[str]:
    """The budgets table in a dialect's column types."""
    return [f"""CREATE TABLE {BUDGETS_TABLE} (
        user_id {text} PRIMARY KEY,
        period {text} NOT NULL,
        limit_usd {real},
        limit_tokens {integer},
        updated_at {text} NOT NULL
    )"""]


class Budgets:
    """Budgets by user (a username or id; None: the default budget) and the spend they are held to."""

    def __init__(self, store: Dialect, identity: Identity) -> None:
        self.store = store
        self.identity = identity

    @writes
    def put(self, user: str | None, period: str, limit_usd: float | None, limit_tokens: int | None) -> dict[str, Any]:
        """Set a user's budget (None: the default); StoreError for an unknown user. Values are checked
        by the caller (bridge.budget_rules.parse_budget)."""
        with self.store.write() as db:
            key, username = self._key(user)
            db.execute(
                f"INSERT INTO {BUDGETS_TABLE} (user_id, period, limit_usd, limit_tokens, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET period = excluded.period, limit_usd = excluded.limit_usd,"
                " limit_tokens = excluded.limit_tokens, updated_at = excluded.updated_at",
                [key, period, limit_usd, limit_tokens, utc_now()])
        return self._row(key, username)

    def get(self, user: str | None) -> dict[str, Any] | None:
        """A user's own budget (None: the default's), or None; StoreError for an unknown user."""
        key, username = self._key(user)
        return self._row(key, username)

    @writes
    def delete(self, user: str | None) -> bool:
        """Remove a user's budget (None: the default); False when there was none."""
        with self.store.write() as db:
            key, _ = self._key(user)
            return db.execute(f"DELETE FROM {BUDGETS_TABLE} WHERE user_id = ?", [key]).rowcount > 0

    def list_budgets(self) -> list[dict[str, Any]]:
        """The default budget first, then live users' by username."""
        rows = self.store.db.query(
            f"SELECT b.user_id, u.username, b.period, b.limit_usd, b.limit_tokens, b.updated_at FROM {BUDGETS_TABLE} b"
            " LEFT JOIN users u ON u.id = b.user_id AND u.deleted_at IS NULL"
            " WHERE b.user_id = ? OR u.id IS NOT NULL ORDER BY b.user_id <> ?, lower(u.username), u.username",
            [DEFAULT_KEY, DEFAULT_KEY])
        return [_budget(row) for row in rows]

    def spend(self, periods: dict[str, tuple[str, str]], user_ids: list[str] | None) -> dict[str, dict[str, Spend]]:
        """Each user's spend in each period (``{period: (start, end)}``, daily rollup keys): ``{user id:
        {period: (usd, tokens)}}``, users who spent nothing left out; ``user_ids`` None: every user.
        One query on the daily rollups."""
        if user_ids is not None and not user_ids:
            return {}
        figures, params = [], []
        for start, end in periods.values():
            within = "day >= ? AND day < ?"
            figures.append(f"sum(CASE WHEN {within} THEN cost_usd END)")
            figures.append(self.store._SUM.format(f"CASE WHEN {within} THEN {_TOKENS} ELSE 0 END"))
            params += [start, end, start, end]
        where, where_params = "day >= ? AND day < ?", [min(s for s, _ in periods.values()),
                                                        max(e for _, e in periods.values())]
        if user_ids is not None:
            condition, param = self.store._in("initiator_id", user_ids)
            where, where_params = f"{where} AND {condition}", [*where_params, param]
        rows = self.store.db.execute(
            f"SELECT initiator_id, {', '.join(figures)} FROM {USAGE_ROLLUPS['day']} WHERE {where} GROUP BY initiator_id",
            [*params, *where_params])
        names = list(periods)
        return {row[0]: {name: (row[1 + 2 * n], int(row[2 + 2 * n] or 0)) for n, name in enumerate(names)}
                for row in rows}

    def snapshot(self, periods: dict[str, tuple[str, str]]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Spend]]]:
        """Every budget, and the spend of the users they hold (every user while a default budget
        exists), in one read transaction: what a worker's budget guard (bridge.budgets) refreshes."""
        with self.store._read_snapshot():
            budgets = self.list_budgets()
            if not budgets:
                return budgets, {}
            everyone = any(budget["user_id"] is None for budget in budgets)
            return budgets, self.spend(periods, None if everyone else [b["user_id"] for b in budgets])

    def _key(self, user: str | None) -> tuple[str, str | None]:
        if user is None:
            return DEFAULT_KEY, None
        found = self.identity.get_user(user)
        if found is None:
            raise StoreError(f"unknown user {user!r}")
        return found["id"], found["username"]

    def _row(self, key: str, username: str | None) -> dict[str, Any] | None:
        row = next(iter(self.store.db.query(
            f"SELECT user_id, period, limit_usd, limit_tokens, updated_at FROM {BUDGETS_TABLE} WHERE user_id = ?",
            [key])), None)
        return None if row is None else _budget({**row, "username": username})


def _budget(row: dict[str, Any]) -> dict[str, Any]:
    default = row["user_id"] == DEFAULT_KEY
    return {"user_id": None if default else row["user_id"], "username": None if default else row["username"],
            "default": default, "period": row["period"],
            "limit_usd": None if row["limit_usd"] is None else float(row["limit_usd"]),
            "limit_tokens": None if row["limit_tokens"] is None else int(row["limit_tokens"]),
            "updated_at": row["updated_at"]}
