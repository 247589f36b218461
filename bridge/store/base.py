"""The store's SQL that both backends share, written once in the common subset of SQLite and
PostgreSQL (``?`` placeholders; the PostgreSQL backend turns them into ``%s``).

``Store`` holds every query; the backends (``sqlite.py``, ``postgres.py``) supply the
connection, transactions, migrations and the few fragments the dialects spell differently
(a list parameter, case-insensitive usernames, insert-and-tell-me-what-was-new, the JSON merge
of an interception's metadata). ``Store(target)`` (like ``bridge.store.open_store``) opens the
backend the target names, so the callers need not know which one it is.
"""

from __future__ import annotations

import hmac
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from bridge.store.common import (
    _TOKEN_COLUMNS, _TOKEN_ID_ALPHABET, _TOKEN_NAME_MAX, _TOKEN_RE, _USER_COLUMNS, _USAGE_FIGURES, _FILTER_COLUMNS,
    CHILD_TABLES, RECORD_COLUMNS, ROLLUP_TABLES, TOKEN_ID_LENGTH, TOOL_DAILY_DIMENSIONS, TOOL_DIMENSIONS, TOOL_ROLLUPS,
    USAGE_DIMENSIONS, USAGE_ROLLUPS, USERNAME_RE, _TOKEN_FIGURES, PROCESSES_TABLE, InterceptionFilter, OwnerState,
    RecordBatch, StoreError,
    UnknownCursor, _add, _ceil_hour, _child_result, _day, _hash_secret, _hour, _interception_result, _json_text,
    _rollup_key, _segments, _sql_where, _token_dict, _usage_column, _user_dict, rollup_additions,
)
from bridge.records import InterceptionEndRecord, InterceptionRecord, TokenUsageRecord, ToolUsageRecord
from bridge.timestamps import format_timestamp, utc_now

_ROLLUP_CHILDREN = ("token_usages", "tool_usages")
_KEY_SQL = f"substr(started_at, 1, 13) || ':00:00Z', {', '.join(USAGE_DIMENSIONS)}"


def is_postgres_url(target: str) -> bool:
    """Whether a database setting names PostgreSQL (``postgres://`` or ``postgresql://``)."""
    return target.split("://", 1)[0].lower() in ("postgres", "postgresql") and "://" in target


def upsert_sql(table: str, period: str, keys: tuple[str, ...], figures: tuple[str, ...]) -> str:
    columns = (period, *keys, *figures)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join((period, *keys))}) DO UPDATE SET "
        + ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in figures)
    )


UPSERTS = {
    **{table: upsert_sql(table, period, USAGE_DIMENSIONS, _USAGE_FIGURES) for period, table in USAGE_ROLLUPS.items()},
    TOOL_ROLLUPS["hour"]: upsert_sql(TOOL_ROLLUPS["hour"], "hour", (*TOOL_DIMENSIONS, "tool"), ("calls",)),
    TOOL_ROLLUPS["day"]: upsert_sql(TOOL_ROLLUPS["day"], "day", (*TOOL_DAILY_DIMENSIONS, "tool"), ("calls",)),
}


def backfill_statements(row_key: str) -> list[str]:
    """Fill the (empty) rollup tables from the records: one INSERT ... SELECT ... GROUP BY each.

    ``row_key`` groups per interception: ``i.rowid`` on SQLite (streams in table order), ``i.id``
    on PostgreSQL (the primary key, so the other columns of ``i`` may be selected).
    """
    dimensions, tool_dimensions = ", ".join(USAGE_DIMENSIONS), ", ".join(TOOL_DIMENSIONS)
    hour = "substr(i.started_at, 1, 13) || ':00:00Z'"
    groups = ", ".join(str(n) for n in range(1, 2 + len(USAGE_DIMENSIONS)))
    daily_keys = ", ".join((*TOOL_DAILY_DIMENSIONS, "tool"))
    # Per interception first (its token usages by index), then per key: half the time of joining a
    # per-interception aggregate of the token usages.
    return [
        f"""INSERT INTO {USAGE_ROLLUPS['hour']} (hour, {dimensions}, {', '.join(_USAGE_FIGURES)})
            SELECT hour, {dimensions}, count(*), {', '.join(f'sum({c})' for c in _TOKEN_FIGURES)} FROM (
                SELECT {hour} AS hour, {', '.join(f"coalesce(i.{c}, '') AS {c}" for c in USAGE_DIMENSIONS)},
                       {', '.join(f'coalesce(sum(u.{c}), 0) AS {c}' for c in _TOKEN_FIGURES)}
                FROM aibridge_interceptions AS i LEFT JOIN aibridge_token_usages AS u ON u.interception_id = i.id
                GROUP BY {row_key}
            ) AS per_interception GROUP BY {groups}""",
        f"""INSERT INTO {USAGE_ROLLUPS['day']} (day, {dimensions}, {', '.join(_USAGE_FIGURES)})
            SELECT substr(hour, 1, 10) || 'T00:00:00Z', {dimensions}, {', '.join(f'sum({c})' for c in _USAGE_FIGURES)}
            FROM {USAGE_ROLLUPS['hour']} GROUP BY {groups}""",
        f"""INSERT INTO {TOOL_ROLLUPS['hour']} (hour, {tool_dimensions}, tool, calls)
            SELECT {hour}, {', '.join(f"coalesce(i.{c}, '')" for c in TOOL_DIMENSIONS)}, coalesce(t.tool, ''), count(*)
            FROM aibridge_tool_usages AS t JOIN aibridge_interceptions AS i ON i.id = t.interception_id
            GROUP BY {', '.join(str(n) for n in range(1, 3 + len(TOOL_DIMENSIONS)))}""",
        f"""INSERT INTO {TOOL_ROLLUPS['day']} (day, {daily_keys}, calls)
            SELECT substr(hour, 1, 10) || 'T00:00:00Z', {daily_keys}, sum(calls)
            FROM {TOOL_ROLLUPS['hour']} GROUP BY {', '.join(str(n) for n in range(1, 3 + len(TOOL_DAILY_DIMENSIONS)))}""",
    ]


class Store:
    """Users, API tokens and interception records: SQLite (a path or ``sqlite:///PATH``) or
    PostgreSQL (``postgres://...``). A Store is used by one thread at a time."""

    #: The connection: sqlite-utils' Database, or postgres.PgDatabase (the same execute/query subset).
    db: Any
    #: Children with equal created_at are listed in the order they were written.
    _WRITE_ORDER = "rowid"
    #: Usernames are unique and matched without regard to case.
    _USERNAME_IS = "username = ?"
    _USERNAME_ORDER = "username"
    #: A sum of a rollup figure, as a Python int.
    _SUM = "sum({})"
    #: Groups the rollup backfill per interception (see backfill_statements).
    _backfill_key = "i.rowid"
    #: The database's clock in seconds since the epoch: heartbeats of several machines are stamped
    #: and compared on one clock.
    _NOW_SECONDS = "((julianday('now') - 2440587.5) * 86400.0)"
    #: An interception's metadata with the JSON object parameter merged in (as an end merges it).
    _MERGE_METADATA = "json_patch(COALESCE(metadata, '{}'), ?)"
    #: Whether the connection can only read. SQLite opens a database read-only, silently, when its
    #: files cannot be written at that moment, and the connection stays so; its -shm is moreover
    #: shared by all connections of a process, so one such connection kept open makes every later
    #: one read-only too. Holders of long-lived connections close such a store after each use.
    read_only = False

    #: The backend class for a target (bridge.store.store_class, given by the package: the backends
    #: subclass this class, so it does not import them). Used by ``Store(target)``.
    _backend: ClassVar[Callable[[str], type[Store]]]

    def __new__(cls, target: str, *args: Any, **kwargs: Any) -> Store:
        if cls is Store:
            cls = Store._backend(target)
        return super().__new__(cls)

    @classmethod
    def from_path(cls, target: str, *, writable: bool = False, busy_timeout: float | None = None) -> Store:
        """Open the store and bring its schema up to date (every opener that migrates comes here).

        ``writable``: refuse a store SQLite opened read-only (sqlite3.OperationalError; see
        ``read_only``). ``busy_timeout``: how long its writes, the migration first, wait for the lock."""
        store = cls(target)
        try:
            if writable and store.read_only:
                raise sqlite3.OperationalError("the database is read-only")
            if busy_timeout is not None:
                store.set_busy_timeout(busy_timeout)
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what each backend provides ------------------------------------------------------------

    def close(self) -> None:
        raise NotImplementedError

    def migrate(self) -> None:
        """Apply pending migrations; idempotent and safe when several processes start at once."""
        raise NotImplementedError

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction (yields ``db``)."""
        raise NotImplementedError
        yield

    @contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        """One read transaction: the count and the page see the same rows while the writer goes on."""
        raise NotImplementedError
        yield

    def check_writable(self, timeout: float = 1.0) -> None:
        """Raise the backend's error when the store cannot take a write within ``timeout`` seconds.

        Defined here and delegated, so ``Store.check_writable`` (as /readyz passes it) reaches the backend."""
        self._check_writable(timeout)

    def _check_writable(self, timeout: float) -> None:
        raise NotImplementedError

    def tune_for_queries(self) -> None:
        """Settings for a read-mostly connection (the API's)."""

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another writer's lock (SQLite; PostgreSQL's writers queue)."""

    def _in(self, column: str, values: list[Any]) -> tuple[str, Any]:
        """``column`` is one of ``values``: the SQL condition and its single parameter."""
        raise NotImplementedError

    def _hint(self, column: str) -> str:
        """A filter column that must not pick the index (see _interception_where)."""
        return column

    def _inserted(self, table: str, records: list[Any]) -> list[Any]:
        """Insert records (``ON CONFLICT (id) DO NOTHING``); returns those actually inserted."""
        raise NotImplementedError

    def _insert_rows(self, table: str, records: list[Any]) -> None:
        self._inserted(table, records)

    @staticmethod
    def _first_of_each(records: list[Any], new_ids: set[Any]) -> list[Any]:
        """The records whose id is in ``new_ids`` (the ids an insert stored), the first of each id."""
        new_ids = set(new_ids)
        new = []
        for record in records:
            if record.id in new_ids:
                new_ids.discard(record.id)
                new.append(record)
        return new

    def _end_interceptions(self, ends: list[InterceptionEndRecord]) -> None:
        raise NotImplementedError

    def _auth_changed(self) -> None:
        """A token was revoked or a user deleted: tell the token caches of every process."""

    # -- interception records -----------------------------------------------------------

    def write_records(self, batch: RecordBatch) -> None:
        """Write a batch in one transaction; idempotent, so a journal can be replayed safely.

        The usage rollups (migration 0004) are brought up to date in the same transaction, counting
        only the rows this call actually inserts: a replayed batch adds nothing.

        Raises StoreError for an unknown column or for an end whose interception does not exist.
        """
        if not len(batch):
            return
        with self.write():
            new_interceptions = self._inserted("aibridge_interceptions", batch.interceptions)
            if batch.ends:
                self._end_interceptions(batch.ends)
            new_children: dict[str, list[Any]] = {}
            for name, table in CHILD_TABLES.items():
                rows = getattr(batch, name)
                if name in _ROLLUP_CHILDREN:
                    new_children[name] = self._inserted(table, rows)
                else:
                    self._insert_rows(table, rows)
            self._add_to_rollups(new_interceptions, new_children["token_usages"], new_children["tool_usages"])

    def _add_to_rollups(self, interceptions: list[InterceptionRecord], token_usages: list[TokenUsageRecord],
                        tool_usages: list[ToolUsageRecord]) -> None:
        """Add newly inserted rows to the rollups: aggregated in Python, then one upsert per key and table.

        A token or tool usage counts in the hour and under the dimensions (the rollup key) of its
        interception: taken from this batch when the batch inserted it, else read in one query (an
        earlier batch wrote it; a SELECT of ~250 ids costs less than ``UPDATE ... RETURNING`` on the ends).
        """
        if not (interceptions or token_usages or tool_usages):
            return
        keys: dict[Any, tuple[str, ...]] = {
            record.id: _rollup_key(_hour(record.started_at), [getattr(record, c) for c in USAGE_DIMENSIONS])
            for record in interceptions
        }
        missing = {record.interception_id for record in token_usages} | {record.interception_id for record in tool_usages}
        missing.difference_update(keys)
        if missing:
            condition, param = self._in("id", [str(m) for m in missing])
            for found in self.db.execute(f"SELECT id, {_KEY_SQL} FROM aibridge_interceptions WHERE {condition}", [param]):
                keys[found[0]] = _rollup_key(found[1], found[2:])
        for table, rows in rollup_additions(keys, interceptions, token_usages, tool_usages).items():
            self.db.conn.executemany(UPSERTS[table], rows)  # sqlite3's; PgDatabase is its own ``conn``

    def purge_records(self, cutoff_iso: str, chunk: int = 5000, *, max_chunks: int | None = None) -> int:
        """Delete interceptions started before ``cutoff_iso`` with their children; returns how many.

        Each chunk is its own short transaction (children first, then their interceptions) so a
        purge of millions of rows never holds locks for long. ``max_chunks`` bounds one call,
        letting the recorder interleave purging with writing.

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
                    for table in (*CHILD_TABLES.values(), "aibridge_interceptions"):
                        condition, param = self._in("id" if table == "aibridge_interceptions" else "interception_id", ids)
                        db.execute(f"DELETE FROM {table} WHERE {condition}", [param])
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
            for statement in backfill_statements(self._backfill_key):
                db.execute(statement)

    def count_records(self) -> dict[str, int]:
        """Rows per record table."""
        return {table: self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in RECORD_COLUMNS}

    def get_interception(self, interception_id: str) -> dict[str, Any] | None:
        """An interception row (JSON columns as stored text) with its children under their field names.

        Children come in time order, ties in the order they were written.
        """
        columns = ", ".join(RECORD_COLUMNS["aibridge_interceptions"])
        row = next(iter(self.db.query(f"SELECT {columns} FROM aibridge_interceptions WHERE id = ?", [interception_id])), None)
        if row is None:
            return None
        for name, table in CHILD_TABLES.items():
            row[name] = list(self.db.query(
                f"SELECT {', '.join(RECORD_COLUMNS[table])} FROM {table} WHERE interception_id = ?"
                f" ORDER BY created_at, {self._WRITE_ORDER}", [interception_id]
            ))
        return row

    # -- gateway processes and the interceptions they own (Recorder: ending orphans) ------------

    def heartbeat(self, owner: str, host: str, pid: int, started_at: str) -> None:
        """Register the process ``owner`` or say it is still alive (stamped with the database's clock)."""
        with self.write() as db:
            db.execute(
                f"INSERT INTO {PROCESSES_TABLE} (owner, host, pid, started_at, heartbeat)"
                f" VALUES (?, ?, ?, ?, {self._NOW_SECONDS})"
                " ON CONFLICT (owner) DO UPDATE SET heartbeat = excluded.heartbeat",
                [owner, host, pid, started_at],
            )

    def forget_process(self, owner: str) -> None:
        """A process that stops cleanly removes itself: its interceptions (if any is left open) are orphans."""
        with self.write() as db:
            db.execute(f"DELETE FROM {PROCESSES_TABLE} WHERE owner = ?", [owner])

    def open_interception_owners(self) -> list[OwnerState]:
        """The owners of the interceptions not ended yet (None: rows written before owners were recorded),
        each with its process as registered (a partial index holds the open interceptions alone)."""
        rows = self.db.execute(
            f"SELECT o.owner, p.host, p.pid, p.started_at, p.heartbeat, {self._NOW_SECONDS} - p.heartbeat"
            " FROM (SELECT DISTINCT owner FROM aibridge_interceptions WHERE ended_at IS NULL) AS o"
            f" LEFT JOIN {PROCESSES_TABLE} AS p ON p.owner = o.owner"
        ).fetchall()
        return [OwnerState(*row) for row in rows]

    def oldest_live_process_start(self, silent_for: float) -> str | None:
        """When the longest running process that gave a heartbeat within ``silent_for`` seconds started."""
        return self.db.execute(
            f"SELECT min(started_at) FROM {PROCESSES_TABLE} WHERE heartbeat >= {self._NOW_SECONDS} - ?", [silent_for]
        ).fetchone()[0]

    def end_open_interceptions(self, owner: str | None, ended_at: str, metadata: dict[str, Any],
                               started_before: str | None = None) -> int:
        """End the open interceptions of ``owner``, a process that is gone, ``metadata`` merged as an end
        merges it, and forget that process; returns how many were ended. ``owner`` None: the rows without
        an owner that started before ``started_before``. An interception ended meanwhile is left alone."""
        if owner is None:
            condition, params = "owner IS NULL AND started_at < ?", [started_before]
        else:
            condition, params = "owner = ?", [owner]
        with self.write() as db:
            ended = db.execute(
                f"UPDATE aibridge_interceptions SET ended_at = ?, metadata = {self._MERGE_METADATA}"
                f" WHERE ended_at IS NULL AND {condition}",
                [ended_at, _json_text(metadata), *params],
            ).rowcount
            if owner is not None:
                db.execute(f"DELETE FROM {PROCESSES_TABLE} WHERE owner = ?", [owner])
        return ended

    def forget_silent_processes(self, silent_for: float) -> int:
        """Forget processes silent for longer than ``silent_for`` seconds that own no open interception
        (killed ones with nothing in flight); returns how many. Looks first, so that the periodic call
        takes no write lock when there is nothing to forget."""
        silent = f"{PROCESSES_TABLE} WHERE heartbeat < {self._NOW_SECONDS} - ?"
        if self.db.execute(f"SELECT count(*) FROM {silent}", [silent_for]).fetchone()[0] == 0:
            return 0
        with self.write() as db:
            return db.execute(
                f"DELETE FROM {silent} AND NOT EXISTS"
                f" (SELECT 1 FROM aibridge_interceptions AS i WHERE i.ended_at IS NULL AND i.owner = {PROCESSES_TABLE}.owner)",
                [silent_for],
            ).rowcount

    # -- users -----------------------------------------------------------------------------

    def _is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this database refusing a row that a unique index already holds."""
        raise NotImplementedError

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        self.db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))

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
        taken = StoreError(f"user {username!r} already exists")
        try:
            with self.write():
                if self._live_user_row(username, by_id=False) is not None:
                    raise taken
                self._insert("users", row)
        except Exception as exc:
            # Two instances creating the same name at once both pass the check: the unique index decides.
            if exc is not taken and self._is_unique_violation(exc):
                raise taken from None
            raise
        return _user_dict(row)

    def list_users(self) -> list[dict[str, Any]]:
        return [
            _user_dict(r)
            for r in self.db.query(
                f"SELECT {_USER_COLUMNS} FROM users WHERE deleted_at IS NULL ORDER BY {self._USERNAME_ORDER}"
            )
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
        self._auth_changed()
        return True

    def _live_user_row(self, key: str, *, by_id: bool) -> dict[str, Any] | None:
        condition = "id = ?" if by_id else self._USERNAME_IS
        rows = self.db.query(f"SELECT {_USER_COLUMNS} FROM users WHERE {condition} AND deleted_at IS NULL", [key])
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
            "id": "",
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
            self._insert("api_tokens", row)
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
        self._auth_changed()
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

    def initiator_ids(self, user: str) -> list[str]:
        """The user ids an ``initiator`` filter value stands for: a user id, else a live username,
        else the deleted users of that name; a value matching no user is taken as a raw initiator id."""
        for sql in (
            "SELECT id FROM users WHERE id = ?",
            f"SELECT id FROM users WHERE {self._USERNAME_IS} AND deleted_at IS NULL",
            f"SELECT id FROM users WHERE {self._USERNAME_IS} ORDER BY deleted_at DESC",
        ):
            ids = [row[0] for row in self.db.execute(sql, [user])]
            if ids:
                return ids
        return [user]

    def _interception_where(self, filters: InterceptionFilter,
                            initiators: list[str] | None) -> tuple[list[str], list[Any]]:
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
            # one picks that index and the hint keeps the rest from competing (SQLite), so they are
            # checked inside it.
            ref = column if n == 0 else self._hint(column)
            if len(values[column]) == 1:
                where.append(f"{ref} = ?")
                params.append(values[column][0])
            else:
                condition, param = self._in(ref, values[column])
                where.append(condition)
                params.append(param)
        if filters.started_after is not None:
            where.append("started_at >= ?")
            params.append(filters.started_after)
        if filters.started_before is not None:
            where.append("started_at < ?")
            params.append(filters.started_before)
        return where, params

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
            where, params = self._interception_where(filters, initiators)
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

    def any_interception(self, filters: InterceptionFilter) -> bool:
        """Whether any interception matches ``filters`` (one indexed probe: no count, no rows read)."""
        initiators = self.initiator_ids(filters.initiator) if filters.initiator is not None else None
        where, params = self._interception_where(filters, initiators)
        return self.db.execute(f"SELECT 1 FROM aibridge_interceptions{_sql_where(where)} LIMIT 1", params).fetchone() is not None

    def interception_result(self, interception_id: str, viewer_id: str | None = None) -> dict[str, Any] | None:
        """One interception as query_interceptions() lists it; None when there is no such id or, with
        ``viewer_id``, when it is someone else's (so that ids of others cannot be told apart)."""
        if "\x00" in interception_id:  # no stored id has one (and PostgreSQL text cannot hold it)
            return None
        found = self._interceptions_by_id([interception_id], viewer_id)
        return found[0] if found else None

    def _interceptions_by_id(self, ids: list[str], viewer_id: str | None = None) -> list[dict[str, Any]]:
        """Full results for these ids, in this order (only ``viewer_id``'s when given): one query for the
        rows, then, if any, one per child table."""
        if not ids:
            return []
        columns = RECORD_COLUMNS["aibridge_interceptions"]
        condition, param = self._in("i.id", ids)
        params = [param]
        if viewer_id is not None:  # someone else's is not read at all, its children neither
            condition += " AND i.initiator_id = ?"
            params.append(viewer_id)
        rows = {
            values[0]: values
            for values in self.db.execute(
                f"SELECT {', '.join('i.' + c for c in columns)}, u.username FROM aibridge_interceptions i"
                f" LEFT JOIN users u ON u.id = i.initiator_id WHERE {condition}",
                params,
            )
        }
        if not rows:
            return []
        children: dict[str, dict[str, list[dict[str, Any]]]] = {i: {name: [] for name in CHILD_TABLES} for i in ids}
        condition, param = self._in("interception_id", ids)
        for name, table in CHILD_TABLES.items():
            child_columns = RECORD_COLUMNS[table]
            for values in self.db.execute(
                f"SELECT {', '.join(child_columns)} FROM {table} WHERE {condition}"
                f" ORDER BY created_at, {self._WRITE_ORDER}",
                [param],
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

    @property
    def _sum_figures(self) -> str:
        return ", ".join(self._SUM.format(c) for c in _USAGE_FIGURES)

    def usage_summary(self, by: str, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Interceptions and token totals per user, model, client or provider, most interceptions first.

        ``since`` (a store timestamp) counts interceptions started in its hour or later, ``until`` those
        started before the end of its hour; their token usages are counted whenever they were written.
        """
        column = _usage_column(by)
        totals: dict[str, list[int]] = {}
        with self._read_snapshot():
            for period, low, high in _segments(None if since is None else _hour(since),
                                               None if until is None else _ceil_hour(until)):
                where, params = _period_where(period, low, high, None)
                for key, *figures in self.db.execute(
                    f"SELECT {column}, {self._sum_figures} FROM {USAGE_ROLLUPS[period]}{where} GROUP BY 1", params
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
                    f"SELECT {column}, {t}, {self._sum_figures} FROM {USAGE_ROLLUPS[period]}{where} GROUP BY 1, 2", params
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
                    f"SELECT tool, {self._SUM.format('calls')} FROM {TOOL_ROLLUPS[period]}{where} GROUP BY 1", params
                ):
                    calls[tool] = calls.get(tool, 0) + count
        ranked = sorted(calls.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [{"tool": tool or None, "calls": count} for tool, count in ranked]

    def _usernames(self, user_ids: Any) -> dict[str, str]:
        """Usernames (of live or deleted users) by id."""
        ids = [key for key in user_ids if key]
        if not ids:
            return {}
        condition, param = self._in("id", ids)
        return dict(self.db.execute(f"SELECT id, username FROM users WHERE {condition}", [param]).fetchall())


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
