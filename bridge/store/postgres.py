"""PostgreSQL backend: one database shared by several gateway instances (psycopg 3 + psycopg_pool).

Connections: one pool per process and database URL, shared by the process's stores (the
recorder's writer thread, the token lookup thread, the API's query threads). A store borrows a
connection for one statement, or for a whole transaction (``write()``, a read snapshot), so a
worker holds few server connections (at most ``POOL_MAX_SIZE``) however many threads use it.

Blocking: the callers run every store call on native threads (gevent ThreadPools), exactly as
for SQLite, so a slow query or an unreachable server never stalls the worker's event loop. The
pool's own background workers must live on the process's main hub when the process is
monkey-patched (psycopg_pool then uses gevent's primitives): the pool is opened there.

Schema: the same tables, columns and text ISO timestamps as SQLite (so ordering, cursors and
results are identical), created by this module's own migrations recorded in
``bridge_migrations``. Text columns use the "C" collation: byte order, as SQLite's BINARY, and
plain b-tree range scans on the ISO timestamps. Usernames are unique and matched
case-insensitively through ``lower(username)``.

Retention: batched deletes (``store.retention.purge_records``: 5000 interceptions per short transaction,
children by their indexed interception_id), not partitions. Children carry no ``started_at``, so
partitioning them by time would need a new column in every table and composite keys; and the
space freed by each purge is reused by the next inserts once autovacuum has run, which the
record tables ask for early (``autovacuum_vacuum_scale_factor`` 0.02): the tables settle at about
the retention window plus one purge interval, without bloat.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import orjson
import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from bridge.pricing import Prices
from bridge.records import InterceptionEndRecord
from bridge.store.backend import Store
from bridge.store.common import (
    _FILTER_COLUMNS, _USAGE_FIGURES, ADDED_COLUMNS, CHILD_TABLES, RECORD_COLUMNS, TOOL_DAILY_DIMENSIONS, TOOL_DIMENSIONS,
    TOOL_ROLLUPS, USAGE_DIMENSIONS, USAGE_ROLLUPS, PROCESSES_TABLE, RecordBatch, StoreError, _json_text, check_columns,
    mask_url,
)
from bridge.store.budgets import budgets_schema
from bridge.store.costs import cost_schema
from bridge.store.sessions import facets_schema, session_schema, thread_schema
from bridge.store.writes import first_of_each

#: Connections per process (recorder + token lookups + API threads, and one to spare).
POOL_MAX_SIZE = 5
#: How long a store call waits for a connection (the server may be down: the recorder journals).
POOL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5
#: Rows per multi-row INSERT (PostgreSQL allows 65535 parameters per statement).
_INSERT_ROWS = 1000
_MIGRATIONS_LOCK = 0x62726964  # pg_advisory_xact_lock key: one migrating process at a time
# Errors that retrying cannot fix: the server refused the rows themselves.
_REFUSED = (psycopg.errors.IntegrityError, psycopg.errors.DataError, psycopg.errors.ProgrammingError)


def _native_lock() -> Any:
    """A real OS lock even after monkey-patching: the pool registry is used from native threads."""
    try:
        from gevent.monkey import get_original
    except ImportError:
        return threading.Lock()
    return get_original("threading", "Lock")()


# The pool logs each failed connection attempt. With no handler configured (the CLI) Python would
# print them to stderr beside the CLI's one error line; the gateway routes them to its logs (root).
logging.getLogger("psycopg").addHandler(logging.NullHandler())

_pools: dict[tuple[int, str], list[Any]] = {}  # (pid, url) -> [pool, users]
_pools_lock = _native_lock()


def error_reason(exc: BaseException) -> str | None:
    """What went wrong, without the server's address (libpq's connection messages name it); None
    for an exception that is not PostgreSQL's."""
    if not isinstance(exc, psycopg.Error):
        return None
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return "the database is read-only"
    if exc.sqlstate is None:  # no answer from a server: connection refused, timeout, pool exhausted
        return "cannot reach the PostgreSQL server"
    return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"


def refused(exc: BaseException) -> bool:
    """Whether PostgreSQL refused the rows themselves (retrying the same batch cannot help)."""
    return isinstance(exc, _REFUSED) and not isinstance(exc, psycopg.errors.InsufficientPrivilege)


def _on_main_hub(fn: Any) -> Any:
    """Run ``fn`` on the main hub when called from a gevent ThreadPool thread of a patched process
    (psycopg_pool's workers are then greenlets and must live where the hub runs); else here."""
    try:
        from gevent import getcurrent, monkey, spawn
        from gevent.threadpool import _WorkerGreenlet
    except ImportError:
        return fn()
    current = getcurrent()
    hub = getattr(current, "_hub", None)
    if not (_patched() and isinstance(current, _WorkerGreenlet) and hub is not None):
        return fn()
    done = monkey.get_original("threading", "Event")()
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed back to the calling thread
            outcome.append((False, exc))
        done.set()

    hub.loop.run_callback_threadsafe(spawn, call)  # a greenlet: loop callbacks must not block
    if not done.wait(POOL_TIMEOUT):  # the hub is not running (shutting down): fail like an unreachable server
        raise psycopg.OperationalError("the connection pool could not be opened: the event loop is not running")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _open_pool(url: str) -> ConnectionPool:
    pool = ConnectionPool(
        url, min_size=1, max_size=POOL_MAX_SIZE, timeout=POOL_TIMEOUT, open=False,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
        # A connection broken by a server restart is replaced before use, not failed on.
        check=ConnectionPool.check_connection, name="bridge",
    )
    pool.open(wait=False)
    return pool


def _acquire_pool(url: str) -> ConnectionPool:
    key = (os.getpid(), url)  # a forked worker opens its own: connections are not shared across fork
    with _pools_lock:
        entry = _pools.get(key)
        if entry is not None:
            entry[1] += 1
            return entry[0]
    # Opened without the lock held: the main hub may itself be waiting for it.
    pool = _on_main_hub(lambda: _open_pool(url))
    with _pools_lock:
        entry = _pools.setdefault(key, [pool, 0])
        entry[1] += 1
    if entry[0] is not pool:  # another thread opened one meanwhile
        _on_main_hub(lambda: pool.close(timeout=0))
    return entry[0]


def _release_pool(url: str) -> None:
    key = (os.getpid(), url)
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0 or _patched():
            # A gateway worker keeps its pool for life: its stores come and go (the recorder
            # reopens after errors), and closing joins the pool's threads, which the hub must not wait for.
            return
        del _pools[key]
    entry[0].close(timeout=1.0)  # the master before fork, the CLI, tests: nothing left to use it


@atexit.register
def _close_pools() -> None:
    """At process exit, while the hub still runs: a pool left to the garbage collector would try to
    stop its workers during interpreter finalization, when greenlets can no longer switch."""
    with _pools_lock:
        mine = [entry[0] for (pid, _), entry in _pools.items() if pid == os.getpid()]
        _pools.clear()
    for pool in mine:
        with suppress(Exception):  # exiting anyway: a pool that cannot close cleanly is dropped
            pool.close(timeout=1.0)


def _patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The shared SQL's ``?`` placeholders in psycopg's style (the shared SQL has no ``?`` literal)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Result:
    """A statement's rows, fetched before its connection went back to the pool."""

    def __init__(self, cursor: psycopg.Cursor) -> None:
        self.rowcount = cursor.rowcount
        self.description = cursor.description
        self._rows = cursor.fetchall() if cursor.description is not None else []
        self._next = 0

    def fetchone(self) -> tuple | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[tuple]:
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


class PgDatabase:
    """The subset of sqlite-utils' Database the shared store code uses (execute, query), on the
    pool: one borrowed connection per statement, or the pinned one inside a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool = _acquire_pool(url)
        self._pinned: psycopg.Connection | None = None

    @property
    def in_transaction(self) -> bool:
        return self._pinned is not None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if self._pinned is not None:
            yield self._pinned
            return
        with self.pool.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self, first: str | None = None, wait: float | None = None) -> Iterator[psycopg.Connection]:
        """Pin one connection for a transaction (nested ones join the outer one); ``wait``: at most
        this long for a connection (default POOL_TIMEOUT)."""
        if self._pinned is not None:
            yield self._pinned
            return
        with self.pool.connection(timeout=wait) as conn, conn.transaction():
            if first:
                conn.execute(first)
            self._pinned = conn
            try:
                yield conn
            finally:
                self._pinned = None

    def execute(self, sql: str, params: Any = ()) -> _Result:
        with self.connection() as conn:
            return _Result(conn.execute(_pg_sql(sql), list(params)))

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self.connection() as conn, conn.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), rows)  # pipelined: one round trip for all rows

    def query(self, sql: str, params: Any = ()) -> Iterator[dict[str, Any]]:
        result = self.execute(sql, params)
        names = [column.name for column in result.description or ()]
        return (dict(zip(names, row)) for row in result.fetchall())

    def table_names(self) -> list[str]:
        return [row[0] for row in self.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")]

    def close(self) -> None:
        if self.pool is not None:
            self.pool = None
            _release_pool(self.url)


# -- schema -----------------------------------------------------------------------------------

_TEXT = 'TEXT COLLATE "C"'


def _m0001_schema() -> list[str]:
    """The schema of SQLite's migrations 0001-0004 in PostgreSQL terms, in one step."""
    statements = [
        f"""CREATE TABLE users (
            id {_TEXT} PRIMARY KEY,
            username {_TEXT} NOT NULL,
            is_admin INTEGER NOT NULL DEFAULT 0,
            created_at {_TEXT} NOT NULL,
            deleted_at {_TEXT}
        )""",
        # A name is reserved while its user is alive, whatever its case (SQLite: COLLATE NOCASE).
        "CREATE UNIQUE INDEX users_live_username ON users (lower(username)) WHERE deleted_at IS NULL",
        "CREATE INDEX users_username ON users (lower(username))",
        f"""CREATE TABLE api_tokens (
            id {_TEXT} PRIMARY KEY,
            user_id {_TEXT} NOT NULL REFERENCES users (id),
            name {_TEXT},
            hashed_secret {_TEXT} NOT NULL,
            created_at {_TEXT} NOT NULL,
            expires_at {_TEXT},
            revoked_at {_TEXT},
            last_used_at {_TEXT}
        )""",
        "CREATE INDEX api_tokens_user_id ON api_tokens (user_id)",
        f"""CREATE TABLE aibridge_interceptions (
            {', '.join(f'{c} {_TEXT}' for c in RECORD_COLUMNS['aibridge_interceptions'][:11])},
            started_at {_TEXT} NOT NULL,
            ended_at {_TEXT},
            metadata {_TEXT} NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (id)
        ) WITH (autovacuum_vacuum_scale_factor = 0.02)""",
        "CREATE INDEX aibridge_interceptions_started_at ON aibridge_interceptions (started_at, id)",
    ]
    for column in _FILTER_COLUMNS:
        others = ", ".join(c for c in _FILTER_COLUMNS if c != column)
        statements.append(f"CREATE INDEX aibridge_interceptions_by_{column} ON aibridge_interceptions"
                          f" ({column}, started_at, id) INCLUDE ({others})")
    integers = {"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens", "injected"}
    for table in CHILD_TABLES.values():
        columns = []
        for column in RECORD_COLUMNS[table]:
            if column in ADDED_COLUMNS:  # not in the first schema
                continue
            if column == "id":
                columns.append(f"id {_TEXT} PRIMARY KEY")
            elif column == "interception_id":
                columns.append(f"interception_id {_TEXT} NOT NULL REFERENCES aibridge_interceptions (id) ON DELETE CASCADE")
            elif column in integers:
                columns.append(f"{column} BIGINT NOT NULL DEFAULT 0")
            elif column == "metadata":
                columns.append(f"metadata {_TEXT} NOT NULL DEFAULT '{{}}'")
            elif column == "created_at":
                columns.append(f"created_at {_TEXT} NOT NULL")
            else:
                columns.append(f"{column} {_TEXT}")
        # seq: the write order, for ties in created_at (SQLite's rowid).
        columns.append("seq BIGINT GENERATED ALWAYS AS IDENTITY")
        statements.append(f"CREATE TABLE {table} ({', '.join(columns)}) WITH (autovacuum_vacuum_scale_factor = 0.02)")
        statements.append(f"CREATE INDEX {table}_interception_id ON {table} (interception_id)")
    statements.append("CREATE INDEX aibridge_token_usages_created_at ON aibridge_token_usages (created_at)")
    for period in ("hour", "day"):
        tool_keys = TOOL_DIMENSIONS if period == "hour" else TOOL_DAILY_DIMENSIONS
        statements.append(
            f"""CREATE TABLE {USAGE_ROLLUPS[period]} (
                {period} {_TEXT} NOT NULL,
                {', '.join(f'{c} {_TEXT} NOT NULL' for c in USAGE_DIMENSIONS)},
                {', '.join(f'{c} BIGINT NOT NULL DEFAULT 0' for c in _USAGE_FIGURES)},
                PRIMARY KEY ({period}, {', '.join(USAGE_DIMENSIONS)})
            )"""
        )
        statements.append(
            f"""CREATE TABLE {TOOL_ROLLUPS[period]} (
                {period} {_TEXT} NOT NULL,
                {', '.join(f'{c} {_TEXT} NOT NULL' for c in tool_keys)},
                tool {_TEXT} NOT NULL,
                calls BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY ({period}, {', '.join(tool_keys)}, tool)
            )"""
        )
    return statements


def _m0002_interception_owners() -> list[str]:
    """SQLite's migration 0005: each interception's owning process, and the processes' heartbeats."""
    return [
        f"ALTER TABLE aibridge_interceptions ADD COLUMN owner {_TEXT}",
        "CREATE INDEX aibridge_interceptions_open ON aibridge_interceptions (owner) WHERE ended_at IS NULL",
        f"""CREATE TABLE {PROCESSES_TABLE} (
            owner {_TEXT} PRIMARY KEY,
            host {_TEXT} NOT NULL,
            pid BIGINT NOT NULL,
            started_at {_TEXT} NOT NULL,
            heartbeat DOUBLE PRECISION NOT NULL
        )""",
    ]


#: SQLite's migration 0006: sessions and threads, filled from the records stored before (PostgresStore.migrate).
_SESSIONS_MIGRATION = "0003_sessions"
#: SQLite's migration 0007: the sessions' facet rows (filled from the summaries when 0003 was applied before).
_FACETS_MIGRATION = "0004_session_facets"

#: SQLite's migration 0009: costs, the records stored before priced (PostgresStore.migrate).
_COSTS_MIGRATION = "0006_costs"

#: (name, statements), applied in order. Append new migrations; never edit old ones.
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_schema", _m0001_schema()),
    ("0002_interception_owners", _m0002_interception_owners()),
    (_SESSIONS_MIGRATION, session_schema(_TEXT, "BIGINT", " WITH (autovacuum_vacuum_scale_factor = 0.02)")),
    (_FACETS_MIGRATION, facets_schema(_TEXT)),
    ("0005_session_threads", thread_schema()),  # SQLite's 0008
    (_COSTS_MIGRATION, cost_schema("DOUBLE PRECISION", "BIGINT")),
    ("0007_budgets", budgets_schema(_TEXT, "BIGINT", "DOUBLE PRECISION")),  # SQLite's 0010
]
#: pg_advisory_xact_lock(key1, key2)'s first key for the session locks (see PostgresStore._lock_sessions).
_SESSION_LOCKS = 0x73657373


class PostgresStore(Store):
    """Users, API tokens and interception records in a PostgreSQL database."""

    _WRITE_ORDER = "seq"
    _USERNAME_IS = "lower(username) = lower(?)"
    _USERNAME_ORDER = "lower(username), username"
    _SUM = "sum({})::bigint"  # sum(bigint) is numeric: back to a Python int
    _backfill_key = "i.id"
    _NOW_SECONDS = "extract(epoch FROM clock_timestamp())::double precision"
    _LOCKS_SESSIONS = True
    _JSON_ELEMENTS = "jsonb_array_elements_text({}::jsonb) AS j(value)"
    # As _end_interceptions merges (RFC 7396, one level; the orphan metadata has no null member).
    _MERGE_METADATA = "(COALESCE(metadata, '{}')::jsonb || ?::jsonb)::text"

    def __init__(self, url: str) -> None:
        self.path = url
        try:
            self.db = PgDatabase(url)
        except psycopg.Error as exc:
            raise type(exc)(mask_url(str(exc))) from None

    def close(self) -> None:
        self.db.close()

    def __repr__(self) -> str:
        return f"PostgresStore({mask_url(self.path)!r})"

    @contextmanager
    def write(self) -> Iterator[PgDatabase]:
        with self.db.transaction():
            yield self.db

    @contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        with self.db.transaction("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"):
            yield

    def migrate(self, prices: Prices | None = None) -> None:
        if self.db.execute("SELECT to_regclass('bridge_migrations')").fetchone()[0] is not None:
            applied = {row[0] for row in self.db.execute("SELECT name FROM bridge_migrations")}
            if all(name in applied for name, _ in MIGRATIONS):
                return  # common case (every worker start): read only, no lock taken
        with self.write() as db:
            # Several gateways may start at once: one migrates, the others wait here and find it
            # done (even CREATE TABLE IF NOT EXISTS races without the lock).
            db.execute(f"SELECT pg_advisory_xact_lock({_MIGRATIONS_LOCK})")
            db.execute("CREATE TABLE IF NOT EXISTS bridge_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
            applied = {row[0] for row in db.execute("SELECT name FROM bridge_migrations")}
            done_now: set[str] = set()  # the migrations applied now (the sessions' are filled from the records)
            for name, statements in MIGRATIONS:
                if name in applied:
                    continue
                for statement in statements:
                    db.execute(statement)
                done_now.add(name)
                db.execute("INSERT INTO bridge_migrations (name, applied_at) VALUES (?, to_char(now() AT TIME ZONE 'UTC',"
                           " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))", [name])
            if _SESSIONS_MIGRATION in done_now:
                self.sessions.fill()  # sessions and threads of the records stored before (facets too)
            elif _FACETS_MIGRATION in done_now:
                self.sessions.fill_facets()
            if _COSTS_MIGRATION in done_now:
                self.costs.fill(prices or Prices())

    def _check_writable(self, timeout: float) -> None:
        """Fails when the server is unreachable, does not answer within ``timeout`` seconds, or
        takes no writes (a standby, or a read-only default)."""
        with self.db.transaction(wait=timeout) as conn:
            conn.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
            recovery, read_only = conn.execute(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").fetchone()
        if recovery or read_only == "on":
            raise psycopg.errors.ReadOnlySqlTransaction("the database is read-only")

    def _in(self, column: str, values: list[Any]) -> tuple[str, Any]:
        return f"{column} = ANY(?)", list(values)

    def _lock_sessions(self, keys: list[tuple[str, str]]) -> None:
        """Transaction-scoped advisory locks, one per session (a 32-bit hash of its key: a collision only
        makes two sessions wait for each other), taken in ascending order: writers never deadlock."""
        if keys:
            numbers = sorted({int.from_bytes(hashlib.blake2b(f"{initiator}\x00{session}".encode(), digest_size=4)
                                              .digest(), "big", signed=True) for initiator, session in keys})
            self.db.execute(f"SELECT pg_advisory_xact_lock({_SESSION_LOCKS}, k) FROM unnest(?::integer[]) AS k",
                            [numbers])

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.db.executemany(sql, rows)

    def _storable(self, batch: RecordBatch) -> RecordBatch:
        return _without_nul(batch)

    def _inserted(self, table: str, records: list[Any]) -> list[Any]:
        """Multi-row ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id``: one round trip per
        1000 rows, and the ids tell which records are new (the first of their id, not stored before)."""
        if not records:
            return []
        columns = RECORD_COLUMNS[table]
        values = check_columns(table, records)
        row_sql = f"({', '.join(['%s'] * len(columns))})"
        new_ids: set[Any] = set()
        with self.db.connection() as conn:
            for start in range(0, len(values), _INSERT_ROWS):
                part = values[start:start + _INSERT_ROWS]
                cursor = conn.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row_sql] * len(part))}"
                    " ON CONFLICT (id) DO NOTHING RETURNING id",
                    [value for row in part for value in row],
                )
                new_ids.update(row[0] for row in cursor.fetchall())
        return first_of_each(records, new_ids)

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _end_interceptions(self, ends: list[InterceptionEndRecord]) -> None:
        # One statement for all ends; metadata is merged as SQLite's json_patch() merges it (RFC 7396,
        # one level: ours is flat): key by key, and a null member removes the key. Kept as text.
        # An UPDATE ... FROM changes each row once, whatever number of source rows match it, so the
        # ends of one interception are folded into one first, in order (SQLite applies them one by one).
        ends = _folded_ends(ends)
        found = {row[0] for row in self.db.execute(
            "UPDATE aibridge_interceptions AS i SET ended_at = e.ended_at,"
            " metadata = CASE WHEN e.metadata IS NULL THEN i.metadata"
            " ELSE ((COALESCE(i.metadata, '{}')::jsonb || e.metadata::jsonb)"
            " - ARRAY(SELECT key FROM jsonb_each(e.metadata::jsonb) WHERE value = 'null'::jsonb))::text END"
            " FROM unnest(?::text[], ?::text[], ?::text[]) AS e(id, ended_at, metadata)"
            " WHERE i.id = e.id RETURNING i.id",
            [[str(end.id) for end in ends], [end.ended_at for end in ends], [_json_text(end.metadata) for end in ends]],
        )}
        for end in ends:
            if end.id not in found:
                raise StoreError(f"cannot end interception {end.id!r}: it does not exist")


def _folded_ends(ends: list[InterceptionEndRecord]) -> list[InterceptionEndRecord]:
    """One end per interception: the last end time, and the metadata patches applied in order (for
    flat patches, applying p1 then p2 is applying {**p1, **p2}: a later null still removes the key)."""
    folded: dict[str, InterceptionEndRecord] = {}
    for end in ends:
        key = str(end.id)
        earlier = folded.get(key)
        if earlier is None:
            folded[key] = end
            continue
        patches = [patch for patch in (earlier.metadata, end.metadata) if patch is not None]
        merged: dict[str, Any] = {}
        for patch in patches:
            merged.update(orjson.loads(patch) if isinstance(patch, str) else patch)
        folded[key] = InterceptionEndRecord(id=end.id, ended_at=end.ended_at, metadata=merged if patches else None)
    return list(folded.values())


def _without_nul(batch: RecordBatch) -> RecordBatch:
    """The batch with every NUL in a text replaced by U+FFFD (the replacement character): PostgreSQL's
    text cannot hold NUL, and a prompt may carry one; the record is kept rather than refused."""
    def clean(records: list[Any]) -> list[Any]:
        return [_record_without_nul(record) for record in records]

    return RecordBatch(**{name: clean(getattr(batch, name)) for name in ("interceptions", "ends", *CHILD_TABLES)})


def _record_without_nul(record: Any) -> Any:
    changes = {name: value.replace("\x00", "\ufffd") for name in record.__slots__
               if type(value := getattr(record, name)) is str and "\x00" in value}
    return dataclasses.replace(record, **changes) if changes else record
