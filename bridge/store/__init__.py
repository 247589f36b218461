"""The store: the only package that speaks SQL. SQLite by default, PostgreSQL for several instances.

``Store(target)`` (``Store.from_path`` also migrates) opens the backend ``target`` names: a path or
``sqlite:///PATH`` -> ``sqlite.SqliteStore``; ``postgres://`` / ``postgresql://`` ->
``postgres.PostgresStore``. Layout:

- ``common.py``: the record model and the plain-Python helpers (no SQL);
- ``base.py``: ``Store``, every query written once in the SQL both dialects share;
- ``sqlite.py`` / ``postgres.py``: connections, transactions, migrations, and the few
  fragments each dialect spells its own way.
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
from bridge.store.sqlite import MIGRATIONS, SqliteStore  # MIGRATIONS: SQLite's (sqlite-utils), as before the split
from bridge.timestamps import format_timestamp, utc_now


__all__ = [
    "CHILD_TABLES", "MIGRATIONS", "RECORD_COLUMNS", "ROLLUP_TABLES", "TOKEN_ID_LENGTH", "TOOL_DAILY_DIMENSIONS",
    "TOOL_DIMENSIONS", "TOOL_ROLLUPS", "USAGE_DIMENSIONS", "USAGE_GROUPS", "USAGE_ROLLUPS", "USERNAME_RE",
    "InterceptionFilter", "PostgresStore", "RecordBatch", "SqliteStore", "Store", "StoreError", "UnknownCursor",
    "auth_stamp_path", "database_errors", "format_timestamp", "is_postgres_url", "mask_url", "postgres_error_reason", "refused", "touch_auth_stamp",
    "utc_now",
]


def database_errors() -> tuple[type[BaseException], ...]:
    """What a store call raises when the database itself fails. A function, used in ``except
    database_errors():`` (evaluated when an exception is being matched), so that psycopg is only
    imported where PostgreSQL is used: a psycopg error cannot exist before psycopg is loaded."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


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
