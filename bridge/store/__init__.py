"""The store: the only package that speaks SQL. SQLite by default, PostgreSQL for several instances.

``open_store(target)`` (or ``Store(target)``; ``Store.from_path`` also migrates) opens the backend
``target`` names: a path or ``sqlite:///PATH`` -> ``sqlite.SqliteStore``; ``postgres://`` /
``postgresql://`` -> ``postgres.PostgresStore``. Only this module chooses. Layout:

- ``common.py``: the record model and the plain-Python helpers (no SQL);
- ``base.py``: ``Store``, every query written once in the SQL both dialects share;
- ``sqlite.py`` / ``postgres.py``: connections, transactions, migrations, and the few
  fragments each dialect spells its own way;
- ``runner.py``: ``Database``, a worker's write thread and read pool, through which the recorder,
  auth, the API and /readyz reach the store (never from the gevent hub).
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from bridge.store.base import Store, is_postgres_url
from bridge.store.common import (
    CHILD_TABLES, RECORD_COLUMNS, ROLLUP_TABLES, TOKEN_ID_LENGTH, TOOL_DAILY_DIMENSIONS, TOOL_DIMENSIONS,
    TOOL_ROLLUPS, USAGE_DIMENSIONS, USAGE_GROUPS, USAGE_ROLLUPS, USERNAME_RE, InterceptionFilter, RecordBatch,
    StoreError, UnknownCursor, auth_stamp_path, mask_url, touch_auth_stamp,
)
from bridge.store.runner import Database, database_errors, journal_base
from bridge.store.sqlite import MIGRATIONS, SqliteStore  # MIGRATIONS: SQLite's (sqlite-utils), as before the split
from bridge.timestamps import format_timestamp, utc_now


__all__ = [
    "CHILD_TABLES", "Database", "MIGRATIONS", "RECORD_COLUMNS", "ROLLUP_TABLES", "TOKEN_ID_LENGTH", "TOOL_DAILY_DIMENSIONS",
    "TOOL_DIMENSIONS", "TOOL_ROLLUPS", "USAGE_DIMENSIONS", "USAGE_GROUPS", "USAGE_ROLLUPS", "USERNAME_RE",
    "InterceptionFilter", "PostgresStore", "RecordBatch", "SqliteStore", "Store", "StoreError", "UnknownCursor",
    "auth_stamp_path", "database_error_reason", "database_errors", "format_timestamp", "is_postgres_url", "journal_base", "mask_url", "open_store", "postgres_error_reason", "refused",
    "store_class", "touch_auth_stamp", "utc_now",
]


def store_class(target: str) -> type[Store]:
    """The backend for a database setting. PostgreSQL's (psycopg, which also loads asyncio and ssl)
    is imported on first use, so that the gunicorn master of a SQLite gateway never loads it."""
    if is_postgres_url(target):
        from bridge.store.postgres import PostgresStore

        return PostgresStore
    return SqliteStore


def open_store(target: str) -> Store:
    """Open the store ``target`` names (a path, ``sqlite:///PATH`` or ``postgres://...``)."""
    return store_class(target)(target)


Store._backend = store_class  # Store(target), as callers open it, asks the package which backend


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
