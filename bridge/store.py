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

        Raises StoreError for an unknown column or for an end whose interception does not exist.
        """
        if not len(batch):
            return
        with self.write() as db:
            conn = db.conn
            _insert_rows(conn, "aibridge_interceptions", batch.interceptions)
            for end in batch.ends:
                cursor = conn.execute(
                    "UPDATE aibridge_interceptions SET ended_at = ?1,"
                    " metadata = CASE WHEN ?2 IS NULL THEN metadata ELSE json_patch(COALESCE(metadata, '{}'), ?2) END"
                    " WHERE id = ?3",
                    [end["ended_at"], _json_text(end.get("metadata")), end["id"]],
                )
                if cursor.rowcount == 0:
                    raise StoreError(f"cannot end interception {end['id']!r}: it does not exist")
            for name, table in CHILD_TABLES.items():
                _insert_rows(conn, table, getattr(batch, name))

    def purge_records(self, cutoff_iso: str, chunk: int = 5000, *, max_chunks: int | None = None) -> int:
        """Delete interceptions started before ``cutoff_iso`` with their children; returns how many.

        Each chunk is its own short transaction (children first, then their interceptions) so a
        purge of millions of rows never holds the write lock for long. ``max_chunks`` bounds one
        call, letting the recorder interleave purging with writing.
        """
        deleted = chunks = 0
        while max_chunks is None or chunks < max_chunks:
            with self.write() as db:
                ids = [
                    row[0]
                    for row in db.execute(
                        "SELECT id FROM aibridge_interceptions WHERE started_at < ? ORDER BY started_at LIMIT ?",
                        [cutoff_iso, chunk],
                    )
                ]
                if ids:
                    id_list = json.dumps(ids)  # one parameter, whatever the chunk size
                    for table in (*CHILD_TABLES.values(), "aibridge_interceptions"):
                        key = "id" if table == "aibridge_interceptions" else "interception_id"
                        db.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT value FROM json_each(?))", [id_list])
            deleted += len(ids)
            chunks += 1
            if len(ids) < chunk:
                break
        return deleted

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

    def usage_summary(self, by: str, since: str | None = None) -> list[dict[str, Any]]:
        """Interceptions and token totals per user, model, client or provider, biggest first.

        ``since`` (a store timestamp) counts only interceptions started then or later; their token
        usages are counted whenever they were written.
        """
        column = USAGE_GROUPS.get(by)
        if column is None:
            raise StoreError(f"cannot group usage by {by!r}: use one of {', '.join(USAGE_GROUPS)}")
        hint, condition, params = "", "", []
        if since is not None:
            # The time range picks the rows; without the hint the planner would rather read the
            # whole group-by index in order than sort a small range.
            hint, condition, params = " INDEXED BY aibridge_interceptions_started_at", " WHERE i.started_at >= ?", [since]
        with self._read_snapshot():
            counts = dict(self.db.execute(
                f"SELECT i.{column}, count(*) FROM aibridge_interceptions AS i{hint}{condition} GROUP BY i.{column}",
                params,
            ).fetchall())
            tokens = {
                row[0]: row[1:]
                for row in self.db.execute(
                    f"SELECT i.{column}, total(u.input_tokens), total(u.output_tokens), total(u.cache_read_input_tokens),"
                    f" total(u.cache_write_input_tokens) FROM aibridge_interceptions AS i{hint}"
                    f" JOIN aibridge_token_usages AS u ON u.interception_id = i.id{condition} GROUP BY i.{column}",
                    params,
                )
            }
            names: dict[str, str] = {}
            if column == "initiator_id" and counts:
                names = dict(self.db.execute(
                    "SELECT id, username FROM users WHERE id IN (SELECT value FROM json_each(?))",
                    [json.dumps([key for key in counts if key is not None])],
                ).fetchall())
        summary = []
        for key, interceptions in counts.items():
            figures = tokens.get(key, (0, 0, 0, 0))
            row = {"group": names.get(key, key) if column == "initiator_id" else key}
            if column == "initiator_id":
                row["user_id"] = key
            row.update(interceptions=interceptions, **dict(zip(_TOKEN_FIGURES, (int(f) for f in figures))))
            summary.append(row)
        summary.sort(key=lambda r: (-r["interceptions"], str(r["group"])))
        return summary

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
_TOKEN_FIGURES = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
#: usage_summary() groups -> interception column.
USAGE_GROUPS = {"user": "initiator_id", "model": "model", "client": "client", "provider": "provider_name"}


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
