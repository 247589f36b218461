"""Which backend a database setting names, and opening it: the one place that chooses."""

from __future__ import annotations

import os
import sqlite3

from bridge.pricing import Prices
from bridge.store.backend import Store
from bridge.store.sqlite import SqliteStore, sqlite_path


def is_postgres_url(target: str) -> bool:
    """Whether a database setting names PostgreSQL (``postgres://`` or ``postgresql://``)."""
    return target.split("://", 1)[0].lower() in ("postgres", "postgresql") and "://" in target


def store_class(target: str) -> type[Store]:
    """The backend for a database setting. PostgreSQL's (psycopg, which also loads asyncio and ssl)
    is imported on first use, so that the gunicorn master of a SQLite gateway never loads it."""
    if is_postgres_url(target):
        from bridge.store.postgres import PostgresStore

        return PostgresStore
    return SqliteStore


def store_exists(target: str) -> bool:
    """Whether the store ``target`` names is there to be read: false only for a SQLite file that does
    not exist (a PostgreSQL database is created by its administrator, not by opening it)."""
    return is_postgres_url(target) or os.path.exists(sqlite_path(target))


def open_store(target: str, *, migrate: bool = False, writable: bool = False,
               busy_timeout: float | None = None, prices: Prices | None = None) -> Store:
    """Open the store ``target`` names (a path, ``sqlite:///PATH`` or ``postgres://...``).

    ``migrate``: bring its schema up to date (every opener that migrates comes here). ``writable``:
    refuse a store SQLite opened read-only (sqlite3.OperationalError; see ``Store.read_only``).
    ``busy_timeout``: how long its writes, the migration first, wait for the lock. ``prices``: what
    the migration that adds costs prices the stored records with (the settings' prices file)."""
    store = store_class(target)(target)
    try:
        if writable and store.read_only:
            raise sqlite3.OperationalError("the database is read-only")
        if busy_timeout is not None:
            store.set_busy_timeout(busy_timeout)
        if migrate:
            store.migrate(prices)
    except BaseException:
        store.close()
        raise
    return store
