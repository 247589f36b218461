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
import re
import secrets
import sqlite3
import string
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

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


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with a fixed width (``2026-01-02T03:04:05.000006Z``) so text order is time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


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


class Store:
    """Users and API tokens (and later the interception records) in one SQLite file."""

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
            return cursor.rowcount > 0

    def authenticate(self, token: str) -> dict[str, Any] | None:
        """Identity behind a gateway token, or None. Hot path: one indexed read, no write."""
        match = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return None
        token_id, secret = match.groups()
        row = self.db.execute(
            "SELECT t.hashed_secret, u.id, u.username, u.is_admin FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.id = ? AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)"
            " AND u.deleted_at IS NULL",
            [token_id, utc_now()],
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash_secret(secret)):
            return None
        return {"user_id": row[1], "username": row[2], "is_admin": bool(row[3]), "token_id": token_id}


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
