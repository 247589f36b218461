"""The embedded store: the only module that speaks SQL.

One ``Store`` wraps one sqlite3 connection (through sqlite-utils). A Store is not shared
between threads at the same time; under gevent, give each worker's writer thread its own.
Every write runs inside ``BEGIN IMMEDIATE``: a deferred ``BEGIN`` that later upgrades its
read lock to a write lock gets SQLITE_BUSY at once, without waiting on busy_timeout, when
another process writes (see notes/stack.md §3).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import string
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from bridge.timestamps import format_timestamp, utc_now

USERNAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
TOKEN_ID_LENGTH = 10
_TOKEN_ID_ALPHABET = string.ascii_lowercase + string.digits
# <10 lowercase alphanumerics>-<token_urlsafe(32): 43 chars of base64url>
_TOKEN_RE = re.compile(r"^([a-z0-9]{10})-([A-Za-z0-9_-]{43})$")
_TOKEN_NAME_MAX = 64

_USER_COLUMNS = "id, username, is_admin, created_at, deleted_at"
_TOKEN_COLUMNS = "t.id, t.user_id, u.username, t.name, t.created_at, t.expires_at, t.revoked_at, t.last_used_at"


class StoreError(ValueError):
    """A request the store refuses (unknown user, duplicate name, bad value); one-line message."""


def _enable_wal(conn: sqlite3.Connection, wait: float = 10.0) -> None:
    """Switch the file to WAL (persistent, so only the first opener of a new file does work).

    The switch needs an exclusive lock and SQLite reports SQLITE_BUSY for it without calling
    the busy handler, so processes opening a fresh file at once retry here themselves.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


# Schema versions, applied in order by Store.migrate(). Append new migrations; never edit old ones.
MIGRATIONS = Migrations("bridge")


@MIGRATIONS(name="0001_users_and_tokens")
def _m0001_users_and_tokens(db: Database) -> None:
    db.execute(
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            username TEXT NOT NULL COLLATE NOCASE,
            is_admin INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            deleted_at TEXT
        )"""
    )
    # Soft-deleted users keep their row (audit records point at them), so a name is only
    # reserved while its user is alive. Case-insensitive, so "Alice" and "alice" can't coexist.
    db.execute("CREATE UNIQUE INDEX users_live_username ON users (username) WHERE deleted_at IS NULL")
    db.execute(
        """CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id),
            name TEXT,
            hashed_secret TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            last_used_at TEXT
        )"""
    )
    db.execute("CREATE INDEX api_tokens_user_id ON api_tokens (user_id)")


# Interception records (SPEC §6). Columns per table, in schema order; write_records() accepts
# exactly these keys so that a misspelt column fails loudly instead of storing NULL.
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {
    "aibridge_interceptions": (
        "id", "initiator_id", "provider", "provider_name", "model", "client", "client_session_id",
        "user_agent", "credential_kind", "credential_hint", "correlating_tool_call_id", "started_at",
        "ended_at", "metadata",
    ),
    "aibridge_token_usages": (
        "id", "interception_id", "provider_response_id", "input_tokens", "output_tokens",
        "cache_read_input_tokens", "cache_write_input_tokens", "metadata", "created_at",
    ),
    "aibridge_user_prompts": ("id", "interception_id", "provider_response_id", "prompt", "metadata", "created_at"),
    "aibridge_tool_usages": (
        "id", "interception_id", "provider_response_id", "provider_tool_call_id", "tool", "input",
        "server_url", "injected", "invocation_error", "metadata", "created_at",
    ),
    "aibridge_model_thoughts": ("id", "interception_id", "content", "metadata", "created_at"),
}
# RecordBatch field -> child table, in the order they are written and listed.
CHILD_TABLES: dict[str, str] = {
    "token_usages": "aibridge_token_usages",
    "user_prompts": "aibridge_user_prompts",
    "tool_usages": "aibridge_tool_usages",
    "model_thoughts": "aibridge_model_thoughts",
}
_JSON_COLUMNS = {"metadata", "input"}
# Values a missing or None column gets (the schema's NOT NULL defaults).
_COLUMN_DEFAULTS: dict[str, Any] = {
    "metadata": "{}",
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_write_input_tokens": 0,
    "injected": 0,
}


@MIGRATIONS(name="0002_records")
def _m0002_records(db: Database) -> None:
    db.execute(
        """CREATE TABLE aibridge_interceptions (
            id TEXT PRIMARY KEY,
            initiator_id TEXT,
            provider TEXT,
            provider_name TEXT,
            model TEXT,
            client TEXT,
            client_session_id TEXT,
            user_agent TEXT,
            credential_kind TEXT,
            credential_hint TEXT,
            correlating_tool_call_id TEXT,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            metadata TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    # (started_at, id): newest-first keyset pages (ORDER BY started_at DESC, id DESC) and retention.
    db.execute("CREATE INDEX aibridge_interceptions_started_at ON aibridge_interceptions (started_at, id)")
    for column in ("initiator_id", "provider", "provider_name", "model", "client"):
        db.execute(
            f"CREATE INDEX aibridge_interceptions_{column} ON aibridge_interceptions ({column}, started_at)"
        )
    child_columns = {
        "aibridge_token_usages": """provider_response_id TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_input_tokens INTEGER NOT NULL DEFAULT 0,""",
        "aibridge_user_prompts": """provider_response_id TEXT,
            prompt TEXT,""",
        "aibridge_tool_usages": """provider_response_id TEXT,
            provider_tool_call_id TEXT,
            tool TEXT,
            input TEXT,
            server_url TEXT,
            injected INTEGER NOT NULL DEFAULT 0,
            invocation_error TEXT,""",
        "aibridge_model_thoughts": """content TEXT,""",
    }
    for table, columns in child_columns.items():
        db.execute(
            f"""CREATE TABLE {table} (
            id TEXT PRIMARY KEY,
            interception_id TEXT NOT NULL REFERENCES aibridge_interceptions (id) ON DELETE CASCADE,
            {columns}
            metadata TEXT NOT NULL DEFAULT '{{}}',
            created_at TEXT NOT NULL
        )"""
        )
        db.execute(f"CREATE INDEX {table}_interception_id ON {table} (interception_id)")
    db.execute("CREATE INDEX aibridge_token_usages_created_at ON aibridge_token_usages (created_at)")


@dataclass
class RecordBatch:
    """Rows for one write_records() transaction (and one line of the recorder's journal).

    ``ends`` holds ``{"id", "ended_at", "metadata"}`` with metadata as JSON text (merged into the
    interception's) or None. JSON columns may be given as text or as Python values.
    """

    interceptions: list[dict[str, Any]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    token_usages: list[dict[str, Any]] = field(default_factory=list)
    user_prompts: list[dict[str, Any]] = field(default_factory=list)
    tool_usages: list[dict[str, Any]] = field(default_factory=list)
    model_thoughts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.interceptions) + len(self.ends) + len(self.token_usages) + len(self.user_prompts)
                + len(self.tool_usages) + len(self.model_thoughts))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False, default=str)

    @classmethod
    def from_json(cls, text: str) -> RecordBatch:
        return cls(**json.loads(text))

    def split(self) -> list[RecordBatch]:
        """One batch per interception, in first-seen order: isolates a row the store rejects."""
        parts: dict[str, RecordBatch] = {}
        for row in self.interceptions:
            parts.setdefault(row.get("id"), RecordBatch()).interceptions.append(row)
        for row in self.ends:
            parts.setdefault(row.get("id"), RecordBatch()).ends.append(row)
        for name in CHILD_TABLES:
            for row in getattr(self, name):
                getattr(parts.setdefault(row.get("interception_id"), RecordBatch()), name).append(row)
        return list(parts.values())


def _json_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _column_value(column: str, value: Any) -> Any:
    if value is None:
        return _COLUMN_DEFAULTS.get(column)
    return _json_text(value) if column in _JSON_COLUMNS else value


def _insert_rows(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = RECORD_COLUMNS[table]
    values = []
    for row in rows:
        unknown = row.keys() - set(columns)
        if unknown:
            raise StoreError(f"{table}: unknown column(s) {', '.join(sorted(unknown))}")
        values.append(tuple(_column_value(column, row.get(column)) for column in columns))
    placeholders = ", ".join("?" for _ in columns)
    # Rows are keyed by their uuid, so replaying a batch (journal) changes nothing. Not "OR IGNORE":
    # that would also silently skip rows violating NOT NULL.
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING", values
    )


def auth_stamp_path(database_path: str) -> str:
    """A file whose change tells every gateway process that a token was revoked or a user deleted."""
    return database_path + ".auth-stamp"


def touch_auth_stamp(database_path: str) -> None:
    """Invalidate cached token lookups everywhere (they check this file's stat, a cheap syscall)."""
    path = auth_stamp_path(database_path)
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w") as stamp:
        stamp.write(str(time.time_ns()))
    os.replace(temporary, path)  # a new inode: a changed stat even within one mtime tick


# -- usage rollups (migration 0004) ---------------------------------------------------------------

#: Rollup tables per period: the period column has the table's period name and holds the UTC start
#: of the period (``2026-11-20T10:00:00Z``, ``2026-11-20T00:00:00Z``). Hourly rows answer hour
#: buckets and the ragged ends of a range; daily rows (the same sums, about 5 times fewer rows at
#: the bench's 1M interceptions) the whole days in between: a 30-day summary reads ~25k rows.
USAGE_ROLLUPS = {"hour": "aibridge_usage_hourly", "day": "aibridge_usage_daily"}
TOOL_ROLLUPS = {"hour": "aibridge_tool_usage_hourly", "day": "aibridge_tool_usage_daily"}
ROLLUP_TABLES = (*USAGE_ROLLUPS.values(), *TOOL_ROLLUPS.values())
#: Interception columns the usage rollups are keyed by (after the period); the hourly tool rollup
#: has no provider type, and the tool name last. The daily tool rollup only serves "top tools" (of
#: everyone, or of one user), so it is keyed by user and tool alone: 5 times fewer rows than with
#: every dimension, which keeps 90 days of top tools fast.
USAGE_DIMENSIONS = ("initiator_id", "provider", "provider_name", "model", "client")
TOOL_DIMENSIONS = ("initiator_id", "provider_name", "model", "client")
TOOL_DAILY_DIMENSIONS = ("initiator_id",)
_TOKEN_FIGURES = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
_USAGE_FIGURES = ("interceptions", *_TOKEN_FIGURES)
_ROLLUP_CHILDREN = ("token_usages", "tool_usages")
_TOOL_POSITIONS = tuple(1 + USAGE_DIMENSIONS.index(c) for c in TOOL_DIMENSIONS)  # in a usage key
_TOOL_DAILY_POSITIONS = tuple(1 + TOOL_DIMENSIONS.index(c) for c in TOOL_DAILY_DIMENSIONS)  # in an hourly tool key


def _upsert(table: str, period: str, keys: tuple[str, ...], figures: tuple[str, ...]) -> str:
    columns = (period, *keys, *figures)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join((period, *keys))}) DO UPDATE SET "
        + ", ".join(f"{c} = {c} + excluded.{c}" for c in figures)
    )


_UPSERTS = {
    **{table: _upsert(table, period, USAGE_DIMENSIONS, _USAGE_FIGURES) for period, table in USAGE_ROLLUPS.items()},
    TOOL_ROLLUPS["hour"]: _upsert(TOOL_ROLLUPS["hour"], "hour", (*TOOL_DIMENSIONS, "tool"), ("calls",)),
    TOOL_ROLLUPS["day"]: _upsert(TOOL_ROLLUPS["day"], "day", (*TOOL_DAILY_DIMENSIONS, "tool"), ("calls",)),
}


def _hour(timestamp: Any) -> str:
    """The rollup hour of a store timestamp: ``2026-11-20T10:42:07.123456Z`` -> ``2026-11-20T10:00:00Z``.

    Text slicing, exactly as migration 0004's backfill does it in SQL (``substr(started_at, 1, 13)``).
    """
    return f"{str(timestamp)[:13]}:00:00Z"


def _day(hour: str) -> str:
    """The rollup day of a rollup hour (or of a store timestamp)."""
    return f"{hour[:10]}T00:00:00Z"


def _figure(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _inserted(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert rows like _insert_rows(), one statement each, and return those actually inserted
    (``changes()`` = 1: not stored before, and the first of their id in the batch): what the rollups
    may count, so that a replayed batch adds nothing. Measured on the 1M bench database: about
    0.5 ms more per 250 rows than executemany(), half the cost of checking the ids first."""
    if not rows:
        return []
    columns = RECORD_COLUMNS[table]
    sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
           " ON CONFLICT (id) DO NOTHING")
    allowed = set(columns)
    cursor = conn.cursor()
    new = []
    for row in rows:
        if not row.keys() <= allowed:
            raise StoreError(f"{table}: unknown column(s) {', '.join(sorted(row.keys() - allowed))}")
        cursor.execute(sql, [_column_value(column, row.get(column)) for column in columns])
        if cursor.rowcount == 1:
            new.append(row)
    return new


_KEY_SQL = f"substr(started_at, 1, 13) || ':00:00Z', {', '.join(USAGE_DIMENSIONS)}"


def _rollup_key(hour: str, values: Any) -> tuple[str, ...]:
    """(hour, *USAGE_DIMENSIONS) from ``values`` in USAGE_DIMENSIONS order."""
    return (hour, *["" if v is None else str(v) for v in values])


def _add_to_rollups(conn: sqlite3.Connection, interceptions: list[dict[str, Any]], token_usages: list[dict[str, Any]],
                    tool_usages: list[dict[str, Any]]) -> None:
    """Add newly inserted rows to the rollups: aggregated here, then one upsert per key and table.

    A token or tool usage counts in the hour and under the dimensions (the rollup key) of its
    interception: taken from this batch when the batch inserted it, else read in one query (an
    earlier batch wrote it; a SELECT of ~250 ids costs less than ``UPDATE ... RETURNING`` on the ends).
    """
    if not (interceptions or token_usages or tool_usages):
        return
    keys: dict[Any, tuple[str, ...]] = {
        row["id"]: _rollup_key(_hour(row["started_at"]), [row.get(c) for c in USAGE_DIMENSIONS]) for row in interceptions
    }
    missing = {row["interception_id"] for row in token_usages} | {row["interception_id"] for row in tool_usages}
    missing.difference_update(keys)
    if missing:
        for found in conn.execute(
            f"SELECT id, {_KEY_SQL} FROM aibridge_interceptions WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(list(missing), default=str)],
        ):
            keys[found[0]] = _rollup_key(found[1], found[2:])
    width = len(_USAGE_FIGURES)
    usage: dict[tuple[str, ...], list[int]] = {}
    for row in interceptions:
        key = keys[row["id"]]
        figures = usage.get(key)
        if figures is None:
            figures = usage[key] = [0] * width
        figures[0] += 1
    for row in token_usages:
        key = keys.get(row["interception_id"])
        if key is None:  # no such interception: its insert has already failed on the foreign key
            continue
        figures = usage.get(key)
        if figures is None:
            figures = usage[key] = [0] * width
        get = row.get
        figures[1] += _figure(get("input_tokens"))
        figures[2] += _figure(get("output_tokens"))
        figures[3] += _figure(get("cache_read_input_tokens"))
        figures[4] += _figure(get("cache_write_input_tokens"))
    tools: dict[tuple[str, ...], list[int]] = {}
    for row in tool_usages:
        key = keys.get(row["interception_id"])
        if key is None:
            continue
        tool = row.get("tool")
        tool_key = (key[0], *[key[i] for i in _TOOL_POSITIONS], "" if tool is None else str(tool))
        calls = tools.get(tool_key)
        if calls is None:
            tools[tool_key] = [1]
        else:
            calls[0] += 1
    for rollups, per_hour, day_positions in ((USAGE_ROLLUPS, usage, range(1, 1 + len(USAGE_DIMENSIONS))),
                                             (TOOL_ROLLUPS, tools, (*_TOOL_DAILY_POSITIONS, -1))):
        if not per_hour:
            continue
        per_day: dict[tuple[str, ...], list[int]] = {}
        for key, figures in per_hour.items():
            day_key = (f"{key[0][:10]}T00:00:00Z", *[key[i] for i in day_positions])
            total = per_day.get(day_key)
            if total is None:
                per_day[day_key] = list(figures)
            else:
                for n, value in enumerate(figures):
                    total[n] += value
        conn.executemany(_UPSERTS[rollups["hour"]], [(*key, *figures) for key, figures in per_hour.items()])
        conn.executemany(_UPSERTS[rollups["day"]], [(*key, *figures) for key, figures in per_day.items()])


class Store:
    """Users, API tokens and interception records in one SQLite file."""

    def __init__(self, path: str) -> None:
        # isolation_level=None: no implicit deferred BEGINs; transactions are explicit (write()).
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        self.db = Database(conn)
        self.path = path

    @classmethod
    def from_path(cls, path: str) -> Store:
        """Open the store and bring its schema up to date."""
        store = cls(path)
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[Database]:
        """A write transaction: takes the write lock up front (waiting up to busy_timeout)."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def migrate(self) -> None:
        """Apply pending migrations; idempotent and safe when several processes start at once."""
        if not MIGRATIONS.pending(self.db):
            return  # common case (every worker start): read only, no write lock taken
        # Re-checked under the write lock, so a racing process that migrated first wins cleanly;
        # sqlite-utils' per-migration atomic() nests as savepoints inside this transaction.
        with self.write():
            MIGRATIONS.apply(self.db)

    # -- interception records -----------------------------------------------------------

    def write_records(self, batch: RecordBatch) -> None:
        """Write a batch in one transaction; idempotent, so a journal can be replayed safely.

        The usage rollups (migration 0004) are brought up to date in the same transaction, counting
        only the rows this call actually inserts: a replayed batch adds nothing.

        Raises StoreError for an unknown column or for an end whose interception does not exist.
        """
        if not len(batch):
            return
        with self.write() as db:
            conn = db.conn
            new_interceptions = _inserted(conn, "aibridge_interceptions", batch.interceptions)
            for end in batch.ends:
                cursor = conn.execute(
                    "UPDATE aibridge_interceptions SET ended_at = ?1,"
                    " metadata = CASE WHEN ?2 IS NULL THEN metadata ELSE json_patch(COALESCE(metadata, '{}'), ?2) END"
                    " WHERE id = ?3",
                    [end["ended_at"], _json_text(end.get("metadata")), end["id"]],
                )
                if cursor.rowcount == 0:
                    raise StoreError(f"cannot end interception {end['id']!r}: it does not exist")
            new_children: dict[str, list[dict[str, Any]]] = {}
            for name, table in CHILD_TABLES.items():
                rows = getattr(batch, name)
                if name in _ROLLUP_CHILDREN:
                    new_children[name] = _inserted(conn, table, rows)
                else:
                    _insert_rows(conn, table, rows)
            _add_to_rollups(conn, new_interceptions, new_children["token_usages"], new_children["tool_usages"])

    def purge_records(self, cutoff_iso: str, chunk: int = 5000, *, max_chunks: int | None = None) -> int:
        """Delete interceptions started before ``cutoff_iso`` with their children; returns how many.

        Each chunk is its own short transaction (children first, then their interceptions) so a
        purge of millions of rows never holds the write lock for long. ``max_chunks`` bounds one
        call, letting the recorder interleave purging with writing.

        The usage rollups go by whole periods: a chunk also deletes the hourly rollup rows of the
        hours it has emptied, up to the hour of the cutoff, and the daily rows of the days before
        that hour's day. The cutoff's own partial hour (and day, in the daily rollups) stays, so the
        rollups keep counting interceptions of that hour (day) started before the cutoff until a
        later purge moves past it (the periodic purge does, hourly).
        """
        cutoff_hour = _hour(cutoff_iso)
        deleted = chunks = 0
        while max_chunks is None or chunks < max_chunks:
            with self.write() as db:
                rows = db.execute(
                    "SELECT id, started_at FROM aibridge_interceptions WHERE started_at < ? ORDER BY started_at LIMIT ?",
                    [cutoff_iso, chunk],
                ).fetchall()
                ids = [row[0] for row in rows]
                if ids:
                    id_list = json.dumps(ids)  # one parameter, whatever the chunk size
                    for table in (*CHILD_TABLES.values(), "aibridge_interceptions"):
                        key = "id" if table == "aibridge_interceptions" else "interception_id"
                        db.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT value FROM json_each(?))", [id_list])
                # Interceptions go oldest first: every hour before the last one deleted is now empty
                # (all of them up to the cutoff's hour once the chunk is not full).
                emptied = cutoff_hour if len(ids) < chunk else min(cutoff_hour, _hour(rows[-1][1]))
                for rollups in (USAGE_ROLLUPS, TOOL_ROLLUPS):
                    db.execute(f"DELETE FROM {rollups['hour']} WHERE hour < ?", [emptied])
                    db.execute(f"DELETE FROM {rollups['day']} WHERE day < ?", [_day(emptied)])
            deleted += len(ids)
            chunks += 1
            if len(ids) < chunk:
                break
        return deleted

    def rebuild_rollups(self) -> None:
        """Recount the usage rollups from the records (for databases filled behind write_records'
        back, e.g. bench/seed.py). One transaction: holds the write lock for the whole recount."""
        with self.write() as db:
            for table in ROLLUP_TABLES:
                db.execute(f"DELETE FROM {table}")
            _backfill_rollups(db)

    def count_records(self) -> dict[str, int]:
        """Rows per record table."""
        return {table: self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in RECORD_COLUMNS}

    def get_interception(self, interception_id: str) -> dict[str, Any] | None:
        """An interception row (JSON columns as stored text) with its children under their field names.

        Children come in time order, ties in the order they were written (rowid).
        """
        row = next(iter(self.db.query("SELECT * FROM aibridge_interceptions WHERE id = ?", [interception_id])), None)
        if row is None:
            return None
        for name, table in CHILD_TABLES.items():
            row[name] = list(
                self.db.query(f"SELECT * FROM {table} WHERE interception_id = ? ORDER BY created_at, rowid", [interception_id])
            )
        return row

    # -- users -----------------------------------------------------------------------------

    def create_user(self, username: str, is_admin: bool = False) -> dict[str, Any]:
        if not USERNAME_RE.fullmatch(username):
            raise StoreError(
                f"invalid username {username!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        row = {
            "id": str(uuid.uuid4()),
            "username": username,
            "is_admin": int(is_admin),
            "created_at": utc_now(),
            "deleted_at": None,
        }
        with self.write() as db:
            if self._live_user_row(username, by_id=False) is not None:
                raise StoreError(f"user {username!r} already exists")
            db["users"].insert(row)
        return _user_dict(row)

    def list_users(self) -> list[dict[str, Any]]:
        return [
            _user_dict(r)
            for r in self.db.query(f"SELECT {_USER_COLUMNS} FROM users WHERE deleted_at IS NULL ORDER BY username")
        ]

    def get_user(self, username_or_id: str) -> dict[str, Any] | None:
        """A live (not deleted) user by id or, failing that, by username (case-insensitive)."""
        row = self._live_user_row(username_or_id, by_id=True) or self._live_user_row(username_or_id, by_id=False)
        return _user_dict(row) if row else None

    def delete_user(self, username_or_id: str) -> bool:
        """Soft delete: the row stays for audit records, its tokens stop authenticating."""
        with self.write():
            user = self.get_user(username_or_id)
            if user is None:
                return False
            self.db.execute("UPDATE users SET deleted_at = ? WHERE id = ?", [utc_now(), user["id"]])
        touch_auth_stamp(self.path)
        return True

    def _live_user_row(self, key: str, *, by_id: bool) -> dict[str, Any] | None:
        column = "id" if by_id else "username"
        rows = self.db.query(f"SELECT {_USER_COLUMNS} FROM users WHERE {column} = ? AND deleted_at IS NULL", [key])
        return next(iter(rows), None)

    # -- tokens ----------------------------------------------------------------------------

    def create_token(
        self, username: str, lifetime: float | None = None, name: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Create a token for a live user; returns (the token, shown once, and its row without the hash)."""
        if lifetime is not None and lifetime <= 0:
            raise StoreError("token lifetime must be positive (omit it for a token that never expires)")
        if name is not None and not 0 < len(name) <= _TOKEN_NAME_MAX:
            raise StoreError(f"token name must be 1-{_TOKEN_NAME_MAX} characters")
        secret = secrets.token_urlsafe(32)  # 256 bits
        now = datetime.now(timezone.utc)
        row = {
            "user_id": "",
            "name": name,
            "hashed_secret": _hash_secret(secret),
            "created_at": format_timestamp(now),
            "expires_at": format_timestamp(now + timedelta(seconds=lifetime)) if lifetime is not None else None,
            "revoked_at": None,
            "last_used_at": None,
        }
        with self.write() as db:
            user = self.get_user(username)
            if user is None:
                raise StoreError(f"unknown user {username!r}")
            row["user_id"] = user["id"]
            # 36^10 ids make a collision very unlikely, but a retry costs nothing.
            while True:
                row["id"] = "".join(secrets.choice(_TOKEN_ID_ALPHABET) for _ in range(TOKEN_ID_LENGTH))
                if not db.execute("SELECT 1 FROM api_tokens WHERE id = ?", [row["id"]]).fetchone():
                    break
            db["api_tokens"].insert(row)
        token_dict = {k: v for k, v in row.items() if k != "hashed_secret"}
        token_dict["username"] = user["username"]
        return f"{row['id']}-{secret}", _token_dict(token_dict)

    def list_tokens(self, username: str) -> list[dict[str, Any]]:
        """All tokens of a live user (revoked and expired included), oldest first."""
        user = self.get_user(username)
        if user is None:
            raise StoreError(f"unknown user {username!r}")
        rows = self.db.query(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.user_id = ? ORDER BY t.created_at, t.id",
            [user["id"]],
        )
        return [_token_dict(r) for r in rows]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token; False if there is no such token. Revoking twice keeps the first time."""
        with self.write() as db:
            cursor = db.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", [utc_now(), token_id]
            )
        touch_auth_stamp(self.path)
        return cursor.rowcount > 0

    def authenticate(self, token: str) -> dict[str, Any] | None:
        """Identity behind a gateway token, or None. Hot path: one indexed read, no write."""
        match = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return None
        token_id, secret = match.groups()
        row = self.db.execute(
            "SELECT t.hashed_secret, u.id, u.username, u.is_admin, t.expires_at FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.id = ? AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)"
            " AND u.deleted_at IS NULL",
            [token_id, utc_now()],
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash_secret(secret)):
            return None
        return {"user_id": row[1], "username": row[2], "is_admin": bool(row[3]), "token_id": token_id,
                "expires_at": row[4]}

    # -- interception queries (API, CLI) ----------------------------------------------------
    # Every query below is answered from one index: the count from a covering index range, a page
    # from an index in newest-first order (keyset or offset), the rows and their children by id.

    def tune_for_queries(self) -> None:
        """Settings for a read-mostly connection (the API's): the file mapped into memory, a larger cache."""
        self.db.execute(f"PRAGMA mmap_size={_QUERY_MMAP_SIZE}")
        self.db.execute(f"PRAGMA cache_size=-{_QUERY_CACHE_KIB}")

    def initiator_ids(self, user: str) -> list[str]:
        """The user ids an ``initiator`` filter value stands for: a user id, else a live username,
        else the deleted users of that name; a value matching no user is taken as a raw initiator id."""
        for sql in (
            "SELECT id FROM users WHERE id = ?",
            "SELECT id FROM users WHERE username = ? AND deleted_at IS NULL",
            "SELECT id FROM users WHERE username = ? ORDER BY deleted_at DESC",
        ):
            ids = [row[0] for row in self.db.execute(sql, [user])]
            if ids:
                return ids
        return [user]

    def query_interceptions(
        self,
        filters: InterceptionFilter | None = None,
        *,
        limit: int = 100,
        after_id: str | None = None,
        offset: int | None = None,
        viewer_id: str | None = None,
    ) -> dict[str, Any]:
        """``{"count": matching interceptions, "results": one page of them, newest first}``.

        ``viewer_id`` restricts everything (results, count, the cursor) to that user's records.
        ``after_id`` continues after that interception in newest-first order (started_at desc, id
        desc); it must exist and be visible, else UnknownCursor. Results carry their children, JSON
        columns decoded (a tool call's ``input`` stays the text the model sent).
        """
        filters = filters or InterceptionFilter()
        if after_id is not None and offset is not None:
            raise StoreError("after_id and offset cannot be combined")
        with self._read_snapshot():
            initiators = self.initiator_ids(filters.initiator) if filters.initiator is not None else None
            if viewer_id is not None:
                initiators = [viewer_id] if initiators is None or viewer_id in initiators else []
            cursor = None
            if after_id is not None:
                sql = "SELECT started_at, id FROM aibridge_interceptions WHERE id = ?"
                params: list[Any] = [after_id]
                if viewer_id is not None:
                    sql += " AND initiator_id = ?"
                    params.append(viewer_id)
                cursor = self.db.execute(sql, params).fetchone()
                if cursor is None:
                    raise UnknownCursor(f"unknown after_id {after_id!r}: no such interception")
            if initiators == []:
                return {"count": 0, "results": []}
            where, params = _interception_where(filters, initiators)
            count = self.db.execute(f"SELECT count(*) FROM aibridge_interceptions{_sql_where(where)}", params).fetchone()[0]
            if cursor is not None:
                where = [*where, "(started_at, id) < (?, ?)"]
                params = [*params, *cursor]
            page_sql = f"SELECT id FROM aibridge_interceptions{_sql_where(where)} ORDER BY started_at DESC, id DESC LIMIT ?"
            params.append(limit)
            if offset:
                page_sql += " OFFSET ?"
                params.append(offset)
            ids = [row[0] for row in self.db.execute(page_sql, params)]
            return {"count": count, "results": self._interceptions_by_id(ids)}

    def _interceptions_by_id(self, ids: list[str]) -> list[dict[str, Any]]:
        """Full results for these ids, in this order: one query for the rows, one per child table."""
        if not ids:
            return []
        id_list = json.dumps(ids)
        columns = RECORD_COLUMNS["aibridge_interceptions"]
        rows = {
            values[0]: values
            for values in self.db.execute(
                f"SELECT {', '.join('i.' + c for c in columns)}, u.username FROM aibridge_interceptions i"
                " LEFT JOIN users u ON u.id = i.initiator_id WHERE i.id IN (SELECT value FROM json_each(?))",
                [id_list],
            )
        }
        children: dict[str, dict[str, list[dict[str, Any]]]] = {i: {name: [] for name in CHILD_TABLES} for i in ids}
        for name, table in CHILD_TABLES.items():
            child_columns = RECORD_COLUMNS[table]
            for values in self.db.execute(
                f"SELECT {', '.join(child_columns)} FROM {table} WHERE interception_id IN (SELECT value FROM json_each(?))"
                " ORDER BY created_at, rowid",
                [id_list],
            ):
                child = _child_result(dict(zip(child_columns, values)))
                children[child["interception_id"]][name].append(child)
        return [_interception_result(dict(zip((*columns, "initiator_username"), rows[i])), children[i])
                for i in ids if i in rows]

    def interception_clients(self, viewer_id: str | None = None) -> list[str]:
        """Distinct client names, sorted; only the viewer's own when ``viewer_id`` is given."""
        if viewer_id is not None:
            sql = ("SELECT DISTINCT client FROM aibridge_interceptions WHERE initiator_id = ? AND client IS NOT NULL"
                   " ORDER BY client")
            return [row[0] for row in self.db.execute(sql, [viewer_id])]
        # A loose index scan: one seek per distinct name instead of reading every row.
        sql = """WITH RECURSIVE names(client) AS (
                     SELECT min(client) FROM aibridge_interceptions
                     UNION ALL
                     SELECT (SELECT min(client) FROM aibridge_interceptions WHERE client > names.client)
                     FROM names WHERE names.client IS NOT NULL)
                 SELECT client FROM names WHERE client IS NOT NULL"""
        return [row[0] for row in self.db.execute(sql)]

    # -- usage (the rollups of migration 0004) ------------------------------------------------
    # Rollups count by the hour an interception started in, so a time range is taken in whole
    # hours: from the start of the hour ``since`` falls in to the end of the hour ``until`` falls in.

    def usage_summary(self, by: str, since: str | None = None) -> list[dict[str, Any]]:
        """Interceptions and token totals per user, model, client or provider, most interceptions first.

        ``since`` (a store timestamp) counts interceptions started in its hour or later; their token
        usages are counted whenever they were written.
        """
        column = _usage_column(by)
        totals: dict[str, list[int]] = {}
        with self._read_snapshot():
            for period, low, high in _segments(None if since is None else _hour(since), None):
                where, params = _period_where(period, low, high, None)
                for key, *figures in self.db.execute(
                    f"SELECT {column}, {_SUM_FIGURES} FROM {USAGE_ROLLUPS[period]}{where} GROUP BY 1", params
                ):
                    _add(totals.setdefault(key, [0] * len(_USAGE_FIGURES)), figures)
            names = self._usernames(totals) if column == "initiator_id" else {}
        summary = []
        for key, figures in totals.items():
            value = key or None
            row: dict[str, Any] = {"group": names.get(key, value) if column == "initiator_id" else value}
            if column == "initiator_id":
                row["user_id"] = value
            row.update(zip(_USAGE_FIGURES, figures))
            summary.append(row)
        summary.sort(key=lambda r: (-r["interceptions"], str(r["group"])))
        return summary

    def usage_series(self, by: str, bucket: str, since: str, until: str, viewer_id: str | None = None) -> dict[str, Any]:
        """Usage over time per user, model, client or provider: ``{"series": [...], "totals": {...}}``.

        Each series is ``{"key", "label", "points": [{"t", "interceptions", <token figures>}]}``, its
        points one per ``bucket`` ("hour" or "day", UTC) that has data, oldest first; series come
        biggest first by total tokens (input + output + cache read + cache write). ``key`` is the
        dimension's value (a user id for "user", whose ``label`` is the username). ``viewer_id``
        restricts everything to that user's own usage.
        """
        column = _usage_column(by)
        if bucket not in ("hour", "day"):
            raise StoreError(f"cannot bucket usage by {bucket!r}: use hour or day")
        low, high = _hour(since), _ceil_hour(until)
        points: dict[str, dict[str, list[int]]] = {}
        with self._read_snapshot():
            for period, start, end in [("hour", low, high)] if bucket == "hour" else _segments(low, high):
                where, params = _period_where(period, start, end, viewer_id)
                t = period if period == bucket else f"substr({period}, 1, 10) || 'T00:00:00Z'"
                for key, at, *figures in self.db.execute(
                    f"SELECT {column}, {t}, {_SUM_FIGURES} FROM {USAGE_ROLLUPS[period]}{where} GROUP BY 1, 2", params
                ):
                    _add(points.setdefault(key, {}).setdefault(at, [0] * len(_USAGE_FIGURES)), figures)
            names = self._usernames(points) if column == "initiator_id" else {}
        series, totals = [], [0] * len(_USAGE_FIGURES)
        for key, by_time in points.items():
            sums = [0] * len(_USAGE_FIGURES)
            for figures in by_time.values():
                _add(sums, figures)
            _add(totals, sums)
            series.append(((-sum(sums[1:]), -sums[0], key), {
                "key": key or None,
                "label": names.get(key) or key or "(none)",
                "points": [{"t": at, **dict(zip(_USAGE_FIGURES, by_time[at]))} for at in sorted(by_time)],
            }))
        series.sort(key=lambda item: item[0])
        return {"series": [item[1] for item in series], "totals": dict(zip(_USAGE_FIGURES, totals))}

    def top_tools(self, since: str, until: str, limit: int = 20, viewer_id: str | None = None) -> list[dict[str, Any]]:
        """The most called tools in the range, ``[{"tool", "calls"}]`` most calls first."""
        calls: dict[str, int] = {}
        with self._read_snapshot():
            for period, start, end in _segments(_hour(since), _ceil_hour(until)):
                where, params = _period_where(period, start, end, viewer_id)
                for tool, count in self.db.execute(
                    f"SELECT tool, sum(calls) FROM {TOOL_ROLLUPS[period]}{where} GROUP BY 1", params
                ):
                    calls[tool] = calls.get(tool, 0) + count
        ranked = sorted(calls.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [{"tool": tool or None, "calls": count} for tool, count in ranked]

    def _usernames(self, user_ids: Any) -> dict[str, str]:
        """Usernames (of live or deleted users) by id."""
        ids = [key for key in user_ids if key]
        if not ids:
            return {}
        return dict(self.db.execute(
            "SELECT id, username FROM users WHERE id IN (SELECT value FROM json_each(?))", [json.dumps(ids)]
        ).fetchall())

    # -- health ------------------------------------------------------------------------------

    def check_writable(self, timeout: float = 1.0) -> None:
        """Take the write lock and let it go at once (``BEGIN IMMEDIATE; ROLLBACK``), waiting at most
        ``timeout`` seconds for another writer; raises sqlite3.Error when the store is not writable."""
        conn = self.db.conn
        previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout={max(0, int(timeout * 1000))}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(previous)}")

    @contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        """One read transaction: the count and the page see the same rows while the writer goes on."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")


def _user_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "is_admin": bool(row["is_admin"]),
        "created_at": row["created_at"],
        "deleted_at": row["deleted_at"],
    }


def _token_dict(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "user_id", "username", "name", "created_at", "expires_at", "revoked_at", "last_used_at")
    return {k: row[k] for k in keys}


# -- interception queries ------------------------------------------------------------------------

#: Filter columns, most selective first: the first one a query uses picks the index.
_FILTER_COLUMNS = ("initiator_id", "model", "client", "provider_name", "provider")
_QUERY_MMAP_SIZE = 1 << 30  # 1 GiB (address space, not memory: pages come from the OS page cache)
_QUERY_CACHE_KIB = 32 * 1024
#: usage_summary() groups -> interception column.
USAGE_GROUPS = {"user": "initiator_id", "model": "model", "client": "client", "provider": "provider_name"}
_SUM_FIGURES = ", ".join(f"sum({c})" for c in _USAGE_FIGURES)


def _usage_column(by: str) -> str:
    column = USAGE_GROUPS.get(by)
    if column is None:
        raise StoreError(f"cannot group usage by {by!r}: use one of {', '.join(USAGE_GROUPS)}")
    return column


def _add(total: list[int], figures: Any) -> None:
    for n, value in enumerate(figures):
        total[n] += value or 0


def _ceil_hour(timestamp: str) -> str:
    """The end of the hour ``timestamp`` falls in (itself when it is a whole hour), as a rollup hour."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(timezone.utc)
    start = moment.replace(minute=0, second=0, microsecond=0)
    return (start if start == moment else start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z")


def _next_day(day: str) -> str:
    return (datetime.fromisoformat(day.replace("Z", "+00:00")) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")


def _segments(low: str | None, high: str | None) -> list[tuple[str, str | None, str | None]]:
    """``(period, start, end)`` pieces covering the rollup hours in [low, high) (None: unbounded):
    the whole days from the daily rollups, the hours before and after them from the hourly ones."""
    first = None if low is None else low if low == _day(low) else _next_day(_day(low))  # first whole day
    end = None if high is None else _day(high)  # where the last whole day ends
    if first is not None and end is not None and first >= end:
        return [("hour", low, high)]
    pieces: list[tuple[str, str | None, str | None]] = [("day", first, end)]
    if low is not None and low < first:
        pieces.append(("hour", low, first))
    if high is not None and end < high:
        pieces.append(("hour", end, high))
    return pieces


def _period_where(period: str, start: str | None, end: str | None, viewer_id: str | None) -> tuple[str, list[Any]]:
    conditions, params = [], []
    if viewer_id is not None:
        conditions.append("initiator_id = ?")
        params.append(viewer_id)
    if start is not None:
        conditions.append(f"{period} >= ?")
        params.append(start)
    if end is not None:
        conditions.append(f"{period} < ?")
        params.append(end)
    return _sql_where(conditions), params


class UnknownCursor(StoreError):
    """An ``after_id`` that names no (visible) interception."""


@dataclass(frozen=True)
class InterceptionFilter:
    """What query_interceptions() matches; None means any. Times are store timestamps
    (``format_timestamp``): ``started_after`` inclusive, ``started_before`` exclusive."""

    initiator: str | None = None  # user id or username (see Store.initiator_ids)
    provider: str | None = None
    provider_name: str | None = None
    model: str | None = None
    client: str | None = None
    started_after: str | None = None
    started_before: str | None = None


def _interception_where(filters: InterceptionFilter, initiators: list[str] | None) -> tuple[list[str], list[Any]]:
    values: dict[str, list[str]] = {}
    if initiators is not None:
        values["initiator_id"] = initiators
    for column in _FILTER_COLUMNS[1:]:
        value = getattr(filters, column)
        if value is not None:
            values[column] = [value]
    where: list[str] = []
    params: list[Any] = []
    for n, column in enumerate(c for c in _FILTER_COLUMNS if c in values):
        # Each filter column leads an index holding all the others (migration 0003): the first
        # one picks that index and "+" keeps the rest from competing, so they are checked inside it.
        ref = column if n == 0 else f"+{column}"
        if len(values[column]) == 1:
            where.append(f"{ref} = ?")
            params.append(values[column][0])
        else:
            where.append(f"{ref} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(values[column]))
    if filters.started_after is not None:
        where.append("started_at >= ?")
        params.append(filters.started_after)
    if filters.started_before is not None:
        where.append("started_at < ?")
        params.append(filters.started_before)
    return where, params


def _sql_where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _json_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # not JSON after all: shown as stored


def _child_result(row: dict[str, Any]) -> dict[str, Any]:
    row["metadata"] = _json_value(row.get("metadata"))
    if "injected" in row:
        row["injected"] = bool(row["injected"])
    return row


_RESULT_COLUMNS = ("provider", "provider_name", "model", "client", "client_session_id", "user_agent", "credential_kind",
                   "credential_hint", "correlating_tool_call_id", "started_at", "ended_at")


def _interception_result(row: dict[str, Any], children: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    result = {"id": row["id"], "initiator": {"id": row["initiator_id"], "username": row["initiator_username"]}}
    result.update((column, row[column]) for column in _RESULT_COLUMNS)
    result["metadata"] = _json_value(row["metadata"])
    result.update(children)
    return result


@MIGRATIONS(name="0003_interception_query_indexes")
def _m0003_interception_query_indexes(db: Database) -> None:
    """Covering indexes for the interceptions API: (filter column, started_at, id, the other filter
    columns). Any combination of filters is counted from one index range, and pages come out of it
    newest first (keyset or offset) without touching the table. The narrower (column, started_at)
    indexes of 0002 stay: the planner counts a single filter from them, about twice as fast."""
    for column in _FILTER_COLUMNS:
        others = ", ".join(c for c in _FILTER_COLUMNS if c != column)
        db.execute(f"CREATE INDEX aibridge_interceptions_by_{column} ON aibridge_interceptions"
                   f" ({column}, started_at, id, {others})")


@MIGRATIONS(name="0004_usage_rollups")
def _m0004_usage_rollups(db: Database) -> None:
    """Usage rollups, so usage over any period reads thousands of rows instead of millions.

    An interception counts once, in the UTC hour (and day) of its started_at, under its
    dimensions; its token usages and tool calls add to the same hour and dimensions whenever they
    are written (tool calls per day only by user and tool). Kept up to date by write_records() (explicit upserts in its transaction) and
    trimmed by purge_records() (whole hours and days). Key columns are NOT NULL ('' for a missing
    value) so that upserts always meet their row. WITHOUT ROWID: each table is its primary key
    b-tree, so a period range is one scan. The backfill counts the records already stored."""
    dimensions = ", ".join(USAGE_DIMENSIONS)
    for period in ("hour", "day"):
        usage, tools = USAGE_ROLLUPS[period], TOOL_ROLLUPS[period]
        tool_keys = TOOL_DIMENSIONS if period == "hour" else TOOL_DAILY_DIMENSIONS
        db.execute(
            f"""CREATE TABLE {usage} (
                {period} TEXT NOT NULL,
                {', '.join(f'{c} TEXT NOT NULL' for c in USAGE_DIMENSIONS)},
                {', '.join(f'{c} INTEGER NOT NULL DEFAULT 0' for c in _USAGE_FIGURES)},
                PRIMARY KEY ({period}, {dimensions})
            ) WITHOUT ROWID"""
        )
        db.execute(
            f"""CREATE TABLE {tools} (
                {period} TEXT NOT NULL,
                {', '.join(f'{c} TEXT NOT NULL' for c in tool_keys)},
                tool TEXT NOT NULL,
                calls INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY ({period}, {', '.join(tool_keys)}, tool)
            ) WITHOUT ROWID"""
        )
    _backfill_rollups(db)


def _backfill_rollups(db: Database) -> None:
    """Fill the (empty) rollup tables from the records: one INSERT ... SELECT ... GROUP BY each."""
    dimensions, tool_dimensions = ", ".join(USAGE_DIMENSIONS), ", ".join(TOOL_DIMENSIONS)
    hour = "substr(i.started_at, 1, 13) || ':00:00Z'"
    groups = ", ".join(str(n) for n in range(1, 2 + len(USAGE_DIMENSIONS)))
    # Per interception first (its token usages by index, streaming in rowid order), then per key:
    # half the time of joining a per-interception aggregate of the token usages.
    db.execute(
        f"""INSERT INTO {USAGE_ROLLUPS['hour']} (hour, {dimensions}, {', '.join(_USAGE_FIGURES)})
            SELECT hour, {dimensions}, count(*), {', '.join(f'sum({c})' for c in _TOKEN_FIGURES)} FROM (
                SELECT {hour} AS hour, {', '.join(f"coalesce(i.{c}, '') AS {c}" for c in USAGE_DIMENSIONS)},
                       {', '.join(f'coalesce(sum(u.{c}), 0) AS {c}' for c in _TOKEN_FIGURES)}
                FROM aibridge_interceptions AS i LEFT JOIN aibridge_token_usages AS u ON u.interception_id = i.id
                GROUP BY i.rowid
            ) GROUP BY {groups}"""
    )
    db.execute(
        f"""INSERT INTO {USAGE_ROLLUPS['day']} (day, {dimensions}, {', '.join(_USAGE_FIGURES)})
            SELECT substr(hour, 1, 10) || 'T00:00:00Z', {dimensions}, {', '.join(f'sum({c})' for c in _USAGE_FIGURES)}
            FROM {USAGE_ROLLUPS['hour']} GROUP BY {groups}"""
    )
    tool_groups = ", ".join(str(n) for n in range(1, 3 + len(TOOL_DIMENSIONS)))
    db.execute(
        f"""INSERT INTO {TOOL_ROLLUPS['hour']} (hour, {tool_dimensions}, tool, calls)
            SELECT {hour}, {', '.join(f"coalesce(i.{c}, '')" for c in TOOL_DIMENSIONS)}, coalesce(t.tool, ''), count(*)
            FROM aibridge_tool_usages AS t JOIN aibridge_interceptions AS i ON i.id = t.interception_id
            GROUP BY {tool_groups}"""
    )
    daily_keys = ", ".join((*TOOL_DAILY_DIMENSIONS, "tool"))
    db.execute(
        f"""INSERT INTO {TOOL_ROLLUPS['day']} (day, {daily_keys}, calls)
            SELECT substr(hour, 1, 10) || 'T00:00:00Z', {daily_keys}, sum(calls)
            FROM {TOOL_ROLLUPS['hour']} GROUP BY {', '.join(str(n) for n in range(1, 3 + len(TOOL_DAILY_DIMENSIONS)))}"""
    )
