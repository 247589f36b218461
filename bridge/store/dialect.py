"""What every concern of the store uses of its backend: one connection, its transactions, and the
few SQL fragments the dialects spell differently.

``Dialect`` is the neutral base of the backends (``sqlite.py``, ``postgres.py``): the shared SQL is
written once, in the common subset of SQLite and PostgreSQL (``?`` placeholders; the PostgreSQL
backend turns them into ``%s``), by the concerns (``identity.py``, ``writes.py``, ``rollups.py``,
``retention.py``, ``processes.py``, ``queries.py``), which use nothing of a backend but what is
declared here. This interface is the package's own: nothing outside bridge.store calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self, TypeVar

from bridge.pricing import Prices
from bridge.records import InterceptionEndRecord
from bridge.store.common import RecordBatch

_F = TypeVar("_F", bound=Callable[..., Any])


def writes(method: _F) -> _F:
    """Marks a concern's method that writes: bridge.store.Database runs it on the write thread (the
    others on its read pool)."""
    method.writes = True  # type: ignore[attr-defined]
    return method


class Dialect:
    """One connection to SQLite (a path or ``sqlite:///PATH``) or PostgreSQL (``postgres://...``).
    Used by one thread at a time."""

    #: The connection: sqlite-utils' Database, or postgres.PgDatabase (the same execute/query subset).
    db: Any
    #: Where the store is: a SQLite path, or a PostgreSQL URL.
    path: str
    #: Children with equal created_at are listed in the order they were written.
    _WRITE_ORDER = "rowid"
    #: Usernames are unique and matched without regard to case.
    _USERNAME_IS = "username = ?"
    _USERNAME_ORDER = "username"
    #: A sum of a rollup figure, as a Python int.
    _SUM = "sum({})"
    #: Groups the rollup backfill per interception (see rollups.backfill_statements).
    _backfill_key = "i.rowid"
    #: The database's clock in seconds since the epoch: heartbeats of several machines are stamped
    #: and compared on one clock.
    _NOW_SECONDS = "((julianday('now') - 2440587.5) * 86400.0)"
    #: An interception's metadata with the JSON object parameter merged in (as an end merges it).
    _MERGE_METADATA = "json_patch(COALESCE(metadata, '{}'), ?)"
    #: The elements of a JSON array of strings (a session summary's list column), as a FROM item ``j(value)``.
    _JSON_ELEMENTS = "json_each({}) AS j"
    #: Whether writers lock the sessions they touch (``_lock_sessions``): PostgreSQL's writers run
    #: concurrently; SQLite's are serialized by the write lock.
    _LOCKS_SESSIONS = False
    #: Whether the connection can only read. SQLite opens a database read-only, silently, when its
    #: files cannot be written at that moment, and the connection stays so; its -shm is moreover
    #: shared by all connections of a process, so one such connection kept open makes every later
    #: one read-only too. Holders of long-lived connections close such a store after each use.
    read_only = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what each backend provides ------------------------------------------------------------

    def close(self) -> None:
        raise NotImplementedError

    def migrate(self, prices: Prices | None = None) -> None:
        """Apply pending migrations; idempotent and safe when several processes start at once.
        ``prices`` prices the token usages stored before costs were (default: genai-prices' table)."""
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

        Defined here and delegated, so that a wrapper of ``Store.check_writable`` reaches every backend."""
        self._check_writable(timeout)

    def _check_writable(self, timeout: float) -> None:
        raise NotImplementedError

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on this connection (none is left open after a failure)."""
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement for many parameter rows, inside the current transaction."""
        raise NotImplementedError

    def tune_for_queries(self) -> None:
        """Settings for a read-mostly connection (the API's)."""

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another writer's lock (SQLite; PostgreSQL's writers queue)."""

    def _in(self, column: str, values: list[Any]) -> tuple[str, Any]:
        """``column`` is one of ``values``: the SQL condition and its single parameter."""
        raise NotImplementedError

    def _any_of(self, column: str, values: list[Any]) -> tuple[str, Any]:
        """``column`` is one of ``values``: ``= ?`` for one (what the planner does best), else ``_in``."""
        return (f"{column} = ?", values[0]) if len(values) == 1 else self._in(column, values)

    def _hint(self, column: str) -> str:
        """A filter column that must not pick the index (see queries.RecordQueries._interception_where)."""
        return column

    def _lock_sessions(self, keys: list[tuple[str, str]]) -> None:
        """Lock these sessions until the transaction ends, in one order (see ``_LOCKS_SESSIONS``)."""

    def _storable(self, batch: RecordBatch) -> RecordBatch:
        """The batch as this database can hold it (PostgreSQL's text cannot hold NUL)."""
        return batch

    def _inserted(self, table: str, records: list[Any]) -> list[Any]:
        """Insert records (``ON CONFLICT (id) DO NOTHING``); returns those actually inserted."""
        raise NotImplementedError

    def _insert_rows(self, table: str, records: list[Any]) -> None:
        self._inserted(table, records)

    def _end_interceptions(self, ends: list[InterceptionEndRecord]) -> None:
        raise NotImplementedError

    def _is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this database refusing a row that a unique index already holds."""
        raise NotImplementedError

    def _auth_changed(self) -> None:
        """A token was revoked or a user deleted: tell the token caches of every process."""
