"""The store: the only package that speaks SQL. SQLite by default, PostgreSQL for several instances.

``open_store(target, migrate=..., writable=..., busy_timeout=...)`` is the one way to open it:
a path or ``sqlite:///PATH`` -> ``sqlite.SqliteStore``; ``postgres://`` / ``postgresql://`` ->
``postgres.PostgresStore``. A process reaches it through a ``Database`` (runner.py). Layout, each
module importing only those above it:

- ``common.py``: ``RecordBatch`` (typed records, bridge.records), the columns, the plain-Python helpers (no SQL);
- ``dialect.py``: ``Dialect``, what the concerns use of a backend: a connection, transactions and
  the few fragments each dialect spells its own way; ``@writes`` marks the methods that write;
- ``identity.py`` (users, tokens, authentication), ``rollups.py`` (the usage rollups),
  ``sessions.py`` (sessions and threads, kept with the records), ``writes.py`` (record batches),
  ``retention.py`` (purging), ``processes.py`` (heartbeats, the interceptions of processes that are
  gone), ``queries.py`` (reading records and usage), ``session_queries.py`` (reading sessions): one
  class per concern, holding a Dialect, its SQL written once for both databases;
- ``budgets.py`` (budgets and the spend they are held to);
- ``backend.py``: ``Store``, a Dialect with its concerns as attributes (``store.identity``,
  ``store.records``, ``store.rollups``, ``store.sessions``, ``store.retention``, ``store.processes``,
  ``store.queries``, ``store.session_queries``);
- ``sqlite.py`` / ``postgres.py``: each backend's connection, transactions, migrations and fragments;
- ``opening.py``: which backend a setting names, and ``open_store``;
- ``runner.py``: ``Database``, a process's write thread and read pool (or its own thread, for the
  CLI), through which the recorder, auth, the API, /readyz and the CLI reach the store
  (``database.queries.top_tools(...)``), never from the gevent hub.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from bridge.store.backend import Store
from bridge.store.common import (
    ADDED_COLUMNS, CHILD_TABLES, USAGE_FIELDS, RECORD_COLUMNS, ROLLUP_TABLES, SESSION_MEMBERS_TABLE, SESSIONS_TABLE, TOKEN_ID_LENGTH,
    TOOL_DAILY_DIMENSIONS, TOOL_DIMENSIONS, TOOL_ROLLUPS, USAGE_DIMENSIONS, USAGE_GROUPS, USAGE_ROLLUPS, USERNAME_RE,
    AmbiguousSession, InterceptionFilter, OwnerState, RecordBatch, SessionFilter, StoreError, UnknownCursor,
    add_usage, auth_stamp_path, mask_url, total_cost, touch_auth_stamp,
)
from bridge.store.budgets import Budgets
from bridge.store.identity import Identity
from bridge.store.opening import is_postgres_url, open_store, store_exists
from bridge.store.processes import Processes
from bridge.store.queries import USAGE_SORTS, RecordQueries, no_usage, usage_series_result
from bridge.store.retention import Retention
from bridge.store.rollups import Rollups
from bridge.store.runner import Database, database_errors, file_id, journal_base
from bridge.store.session_queries import SessionQueries
from bridge.store.sessions import Sessions
from bridge.store.sqlite import MIGRATIONS, SqliteStore  # MIGRATIONS: SQLite's (sqlite-utils), as before the split
from bridge.store.writes import RecordWrites
from bridge.timestamps import format_timestamp, utc_now


__all__ = [
    "ADDED_COLUMNS", "Budgets", "CHILD_TABLES", "Database", "Identity", "MIGRATIONS", "OwnerState", "Processes", "RECORD_COLUMNS", "ROLLUP_TABLES",
    "AmbiguousSession", "SESSIONS_TABLE", "SESSION_MEMBERS_TABLE", "SessionFilter", "SessionQueries", "Sessions",
    "RecordQueries", "RecordWrites", "Retention", "Rollups", "TOKEN_ID_LENGTH", "TOOL_DAILY_DIMENSIONS",
    "TOOL_DIMENSIONS", "TOOL_ROLLUPS", "USAGE_DIMENSIONS", "USAGE_FIELDS", "USAGE_GROUPS", "USAGE_ROLLUPS", "USAGE_SORTS",
    "USERNAME_RE", "add_usage", "no_usage", "total_cost", "usage_series_result",
    "InterceptionFilter", "PostgresStore", "RecordBatch", "SqliteStore", "Store", "StoreError", "UnknownCursor",
    "auth_stamp_path", "database_error_reason", "database_errors", "file_id", "format_timestamp", "is_postgres_url",
    "journal_base", "mask_url", "open_store", "postgres_error_reason", "refused", "store_exists", "touch_auth_stamp",
    "utc_now",
]


def database_error_reason(exc: BaseException) -> str | None:
    """Why the database failed, in words that name no path nor server address (sqlite's messages,
    "database is locked", "disk I/O error", ..., carry none); None for any other exception."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{text} ({name})" if name else text
    return postgres_error_reason(exc)


def postgres_error_reason(exc: BaseException) -> str | None:
    """Why PostgreSQL failed, without the server's address; None for any other exception."""
    postgres = sys.modules.get("bridge.store.postgres")  # not loaded: no PostgreSQL error can exist
    return postgres.error_reason(exc) if postgres is not None else None


def refused(exc: BaseException) -> bool:
    """Whether the database refused the rows themselves (retrying the same batch cannot help)."""
    from bridge.store import sqlite

    if isinstance(exc, (StoreError, TypeError)) or sqlite.refused(exc):
        return True
    postgres = sys.modules.get("bridge.store.postgres")  # not loaded: no PostgreSQL error can exist
    return postgres is not None and postgres.refused(exc)


def __getattr__(name: str) -> Any:
    """PostgreSQL support (psycopg, which also loads asyncio and ssl) is imported on first use: the
    gunicorn master of a SQLite gateway (bridge.gunicorn_conf, before the workers patch the
    standard library) does not load it."""
    if name == "PostgresStore":
        from bridge.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
