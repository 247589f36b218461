"""SQLite backend (the default: one file, one box), through sqlite-utils.

One ``SqliteStore`` wraps one sqlite3 connection. Under gevent, give each worker's writer thread
its own. Every write runs inside ``BEGIN IMMEDIATE``: a deferred ``BEGIN`` that later upgrades its
read lock to a write lock gets SQLITE_BUSY at once, without waiting on busy_timeout, when
another process writes (see notes/stack.md §3).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from bridge.pricing import Prices
from bridge.records import InterceptionEndRecord
from bridge.store.backend import Store
from bridge.store.common import (
    _FILTER_COLUMNS, _USAGE_FIGURES, RECORD_COLUMNS, TOOL_DAILY_DIMENSIONS, TOOL_DIMENSIONS, TOOL_ROLLUPS,
    USAGE_DIMENSIONS, USAGE_ROLLUPS, PROCESSES_TABLE, StoreError, _json_text, check_columns, touch_auth_stamp,
)
from bridge.store.budgets import budgets_schema
from bridge.store.rollups import backfill_statements
from bridge.store.costs import cost_schema
from bridge.store.sessions import facets_schema, session_schema, thread_schema
from bridge.store.writes import first_of_each

_ROWS_PER_STATEMENT = 250  # record rows per INSERT (fewer where SQLite allows fewer parameters)
_QUERY_MMAP_SIZE = 1 << 30  # 1 GiB (address space, not memory: pages come from the OS page cache)
_QUERY_CACHE_KIB = 32 * 1024
# Errors of the store that retrying cannot fix: the rows themselves are refused.
_REFUSED_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError)
_REFUSED_CODES = {sqlite3.SQLITE_ERROR, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_RANGE,
                  sqlite3.SQLITE_CONSTRAINT}


def refused(exc: BaseException) -> bool:
    """Whether SQLite refused the rows themselves (retrying the same batch cannot help)."""
    if isinstance(exc, _REFUSED_ERRORS):
        return True
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _REFUSED_CODES


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


# Schema versions, applied in order by SqliteStore.migrate(). Append new migrations; never edit old ones.
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
    for statement in backfill_statements("i.rowid", costs=False):
        db.execute(statement)


@MIGRATIONS(name="0005_interception_owners")
def _m0005_interception_owners(db: Database) -> None:
    """Which gateway process serves each interception (``owner``, random per process) and the heartbeats
    of the processes, so that interceptions left open by a process that is gone are ended (Recorder).
    The partial index holds the open interceptions alone: the periodic check reads only those."""
    db.execute("ALTER TABLE aibridge_interceptions ADD COLUMN owner TEXT")
    db.execute("CREATE INDEX aibridge_interceptions_open ON aibridge_interceptions (owner) WHERE ended_at IS NULL")
    db.execute(
        f"""CREATE TABLE {PROCESSES_TABLE} (
            owner TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            heartbeat REAL NOT NULL
        )"""
    )


_SESSIONS_MIGRATION = "0006_sessions"


@MIGRATIONS(name=_SESSIONS_MIGRATION)
def _m0006_sessions(db: Database) -> None:
    """Sessions and threads (SPEC §9): each interception's session and thread, one summary row per
    session, and the indexes that link an answer to the tool call it answers. Filled from the records
    stored before by SqliteStore.migrate (store.sessions.fill) in the same transaction."""
    for statement in session_schema("TEXT", "INTEGER"):
        db.execute(statement)


_FACETS_MIGRATION = "0007_session_facets"


@MIGRATIONS(name=_FACETS_MIGRATION)
def _m0007_session_facets(db: Database) -> None:
    """Each session's provider types and names and models, one row each (what the sessions list's
    filters read), and an index of session starts. Filled from the summaries by SqliteStore.migrate."""
    for statement in facets_schema("TEXT", " WITHOUT ROWID"):
        db.execute(statement)


@MIGRATIONS(name="0008_session_threads")
def _m0008_session_threads(db: Database) -> None:
    """An index of each thread's members in order (relinking a late prompt's followers, a session
    page's per-thread figures)."""
    for statement in thread_schema():
        db.execute(statement)


_COSTS_MIGRATION = "0009_costs"


@MIGRATIONS(name=_COSTS_MIGRATION)
def _m0009_costs(db: Database) -> None:
    """What each token usage cost (SPEC §11), the rollups' and sessions' sums of it, and how many
    usages had no price. The records stored before are priced by SqliteStore.migrate (store.costs.fill)."""
    for statement in cost_schema("REAL", "INTEGER"):
        db.execute(statement)


@MIGRATIONS(name="0010_budgets")
def _m0010_budgets(db: Database) -> None:
    """Budgets (SPEC §11): one row per user with a budget, and the default's."""
    for statement in budgets_schema("TEXT", "INTEGER", "REAL"):
        db.execute(statement)


def _write_header(conn: sqlite3.Connection) -> None:
    """Rewrite the header's user_version unchanged: a write (the caller rolls it back) that fails with
    SQLITE_READONLY on a read-only connection, where ``BEGIN IMMEDIATE`` alone succeeds."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.execute(f"PRAGMA user_version={int(version)}")


def _opened_read_only(conn: sqlite3.Connection) -> bool:
    """Whether SQLite opened the database read-only: a header write rolled back at once, without waiting
    for the write lock (held by another writer: then the file is writable)."""
    conn.execute("PRAGMA busy_timeout=0")
    conn.execute("BEGIN")
    try:
        _write_header(conn)
    except sqlite3.OperationalError as exc:
        return (exc.sqlite_errorcode & 0xFF) == sqlite3.SQLITE_READONLY
    finally:
        conn.execute("ROLLBACK")
        conn.execute("PRAGMA busy_timeout=10000")
    return False


class SqliteStore(Store):
    """Users, API tokens and interception records in one SQLite file."""

    def __init__(self, path: str) -> None:
        path = sqlite_path(path)
        # isolation_level=None: no implicit deferred BEGINs; transactions are explicit (write()).
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self.read_only = _opened_read_only(conn)
        except BaseException:
            conn.close()
            raise
        self.db = Database(conn)
        self.path = path
        self._max_variables: int | None = None  # SQLite's limit on parameters per statement, read once

    def close(self) -> None:
        self.db.close()

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

    def migrate(self, prices: Prices | None = None) -> None:
        if not MIGRATIONS.pending(self.db):
            return  # common case (every worker start): read only, no write lock taken
        # Re-checked under the write lock, so a racing process that migrated first wins cleanly;
        # sqlite-utils' per-migration atomic() nests as savepoints inside this transaction.
        with self.write():
            pending = {migration.name for migration in MIGRATIONS.pending(self.db)}
            MIGRATIONS.apply(self.db)
            if _SESSIONS_MIGRATION in pending:
                self.sessions.fill()  # sessions and threads of the records stored before
            elif _FACETS_MIGRATION in pending:
                self.sessions.fill_facets()
            if _COSTS_MIGRATION in pending:
                self.costs.fill(prices or Prices())

    def _check_writable(self, timeout: float) -> None:
        """Take the write lock, write the header and let both go at once (rolled back), waiting at most
        ``timeout`` seconds for another writer; raises sqlite3.Error when the store is not writable."""
        conn = self.db.conn
        previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout={max(0, int(timeout * 1000))}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _write_header(conn)
            finally:
                conn.execute("ROLLBACK")
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(previous)}")

    @contextmanager
    def _read_snapshot(self) -> Iterator[None]:
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

    def tune_for_queries(self) -> None:
        """The file mapped into memory, a larger cache."""
        self.db.execute(f"PRAGMA mmap_size={_QUERY_MMAP_SIZE}")
        self.db.execute(f"PRAGMA cache_size=-{_QUERY_CACHE_KIB}")

    def set_busy_timeout(self, seconds: float) -> None:
        self.db.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")

    def _in(self, column: str, values: list[Any]) -> tuple[str, Any]:
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(values)  # one parameter, any length

    @property
    def in_transaction(self) -> bool:
        return self.db.conn.in_transaction

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.db.conn.executemany(sql, rows)

    def _hint(self, column: str) -> str:
        return f"+{column}"  # unary plus: the planner does not use an index for this column

    # Record rows go in with one multi-row statement per table and batch: sqlite3 lets go of the GIL for
    # every step of a statement, and one statement per row meant a thousand GIL hand-overs per batch,
    # each waiting for the worker's busy main thread and then stalling it in turn.

    def _insert_rows(self, table: str, records: list[Any]) -> None:
        if records:
            self._insert_values(table, check_columns(table, records))

    def _inserted(self, table: str, records: list[Any]) -> list[Any]:
        """Insert ``records``; returns those that were new (not stored before, and the first of their id
        in the batch): the rollups count only those, so a replayed batch adds nothing."""
        if not records:
            return []
        values = check_columns(table, records)
        (unstored,) = self.db.conn.execute(  # the record tables' first column is their id
            f"SELECT json_group_array(value) FROM json_each(?) WHERE NOT EXISTS"
            f" (SELECT 1 FROM {table} AS stored WHERE stored.id = value)", [json.dumps([row[0] for row in values])],
        ).fetchone()
        self._insert_values(table, values)
        return first_of_each(records, set(json.loads(unstored)))

    def _insert_values(self, table: str, values: list[tuple[Any, ...]]) -> None:
        for part in self._statement_parts(values):
            self.db.conn.execute(_insert_sql(table, len(part)), [value for row in part for value in row])

    def _statement_parts(self, values: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        """``values`` in slices of as many rows as one statement takes (SQLite caps its parameters)."""
        if self._max_variables is None:
            self._max_variables = self.db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        step = max(1, min(_ROWS_PER_STATEMENT, self._max_variables // len(values[0]))) if values else 1
        return [values[start:start + step] for start in range(0, len(values), step)]

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def _end_interceptions(self, ends: list[InterceptionEndRecord]) -> None:
        conn = self.db.conn
        values = [(end.id, end.ended_at, _json_text(end.metadata)) for end in ends]
        if len({row[0] for row in values}) < len(values):
            # One by one, in order, where an interception is ended twice in a batch: each end's metadata is merged.
            parts = [[row] for row in values]
        else:
            parts = self._statement_parts(values)
        for part in parts:
            changed = conn.execute(
                "UPDATE aibridge_interceptions SET ended_at = e.column2,"
                " metadata = CASE WHEN e.column3 IS NULL THEN metadata ELSE json_patch(COALESCE(metadata, '{}'), e.column3) END"
                f" FROM (VALUES {', '.join(['(?, ?, ?)'] * len(part))}) AS e WHERE aibridge_interceptions.id = e.column1",
                [value for row in part for value in row]).rowcount
            if changed < len(part):
                stored = set(self._ids_stored([row[0] for row in part]))
                missing = next(row[0] for row in part if row[0] not in stored)
                raise StoreError(f"cannot end interception {missing!r}: it does not exist")

    def _ids_stored(self, ids: list[str]) -> list[str]:
        condition, param = self._in("id", ids)
        return [row[0] for row in self.db.execute(f"SELECT id FROM aibridge_interceptions WHERE {condition}", [param])]

    def _auth_changed(self) -> None:
        touch_auth_stamp(self.path)


@functools.lru_cache(maxsize=256)
def _insert_sql(table: str, rows: int) -> str:
    """Insert ``rows`` record rows. Rows are keyed by their uuid, so replaying a batch (journal) changes
    nothing. Not "OR IGNORE": that would also silently skip rows violating NOT NULL."""
    columns = RECORD_COLUMNS[table]
    row = f"({', '.join('?' for _ in columns)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)} ON CONFLICT (id) DO NOTHING"


def sqlite_path(target: str) -> str:
    """``sqlite:///relative.db`` / ``sqlite:////abs.db`` -> the path; a path -> itself."""
    return target[len("sqlite:///"):] if target.startswith("sqlite:///") else target
