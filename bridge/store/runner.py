"""One process's way to the store: a native write thread and a small read pool (Datasette's shape).

sqlite3 and psycopg calls are C code that would block the gevent hub, and every stream of the
worker with it, while the database is busy (notes/stack.md §3). So every store call of a worker
runs on a native thread (gevent ThreadPools: real OS threads even after monkey.patch_all()), and
each thread keeps its own connection. Callers name the concern and the method:

- ``database.queries.top_tools(since, until)``, ``database.identity.authenticate(token)``: on one of
  the read threads; methods marked ``@writes`` (``database.identity.create_user(name)``) on the one
  write thread;
- ``write(fn, *args)`` / ``read(fn, *args)`` / ``read_within(timeout, fn, *args)``: ``fn(store,
  *args)`` for what is not one concern's method (the readiness check, tests).

``Database(target, threads=False)`` runs every call in the caller's thread instead, with the same
connections and rules, and imports no gevent: for a one-shot process (the CLI), which has no hub to
keep free. Having no server start that migrated before it, its read connection migrates too.

Connections are opened on first use (in the worker, after fork) and follow one set of rules
(``_Connection``): a connection that failed with a database error is reopened on the next call;
one SQLite opened read-only is never kept (``Store.read_only``: kept, it would pin every later
connection of the process read-only); the write connection is migrated when opened, waits
``busy_timeout`` for the write lock and is reopened when its file was removed or replaced.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sqlite3
import sys
import threading
from contextlib import suppress
from typing import Any, Callable, Generic, Self, TypeVar

from bridge.store.backend import Store
from bridge.store.budgets import Budgets
from bridge.store.common import auth_stamp_path, mask_url
from bridge.store.costs import Costs
from bridge.store.identity import Identity
from bridge.store.opening import is_postgres_url, open_store
from bridge.store.processes import Processes
from bridge.store.queries import RecordQueries
from bridge.store.retention import Retention
from bridge.store.rollups import Rollups
from bridge.store.session_queries import SessionQueries
from bridge.store.sessions import Sessions
from bridge.store.writes import RecordWrites

_T = TypeVar("_T")
_C = TypeVar("_C")
READ_THREADS = 3


def database_errors() -> tuple[type[BaseException], ...]:
    """What a store call raises when the database itself fails. A function, used in ``except
    database_errors():`` (evaluated when an exception is being matched), so that psycopg is only
    imported where PostgreSQL is used: a psycopg error cannot exist before psycopg is loaded."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


def file_id(path: str) -> tuple[int, int] | None:
    """A file's identity (device, inode); None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def journal_base(target: str, journal_dir: str | None) -> str:
    """Where a writer keeps what the store could not take (bridge.recorder's journals,
    ``<base>.records-<pid>.jsonl``): next to a SQLite file; for PostgreSQL in ``journal_dir``
    (default: the working directory), named after the database (not the password)."""
    if is_postgres_url(target):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", target.rsplit("/", 1)[-1].split("?", 1)[0]) or "postgres"
        digest = hashlib.sha256(mask_url(target).encode()).hexdigest()[:8]
        return os.path.join(journal_dir or os.getcwd(), f"aibridge-postgres-{name}-{digest}")
    directory = journal_dir or os.path.dirname(os.path.abspath(target))
    return os.path.join(directory, os.path.basename(target))


class _Connection:
    """A thread's store connection: opened on first use, dropped after a failure, reopened next time."""

    def __init__(self, target: str, *, writer: bool, busy_timeout: float, migrate: bool = False) -> None:
        self._target = target
        self._writer = writer
        self._busy_timeout = busy_timeout
        self._migrate = migrate  # a read connection's (the write connection always migrates)
        self._store: Store | None = None
        self._file: tuple[int, int] | None = None

    def get(self) -> Store:
        """The connection, (re)opened if needed. The write connection refuses to open read-only
        (sqlite3.OperationalError) and is reopened, and migrated, if its file was replaced."""
        if self._store is not None and self._writer and self._database_file() != self._file:
            from loguru import logger

            logger.warning("database file {} was removed or replaced; reopening it", self._target)
            self.drop()
        if self._store is None:
            if self._writer:  # not kept open read-only: it would keep every connection of this process so
                store = open_store(self._target, migrate=True, writable=True, busy_timeout=self._busy_timeout)
            else:
                store = open_store(self._target, migrate=self._migrate)
                try:
                    store.tune_for_queries()
                except BaseException:
                    store.close()
                    raise
            self._store, self._file = store, self._database_file()
        return self._store

    @property
    def current(self) -> Store | None:
        """The connection if one is open (nothing is opened)."""
        return self._store

    def release(self) -> None:
        """After a call: a store opened read-only is not kept (Store.read_only)."""
        if self._store is not None and self._store.read_only:
            self.drop()

    def drop(self) -> None:
        if self._store is not None:
            with suppress(Exception):  # a broken connection: nothing left to release
                self._store.close()
            self._store = None

    def _database_file(self) -> tuple[int, int] | None:
        """The database file's identity; None for PostgreSQL (no file to be removed or replaced)."""
        return None if is_postgres_url(self._target) else file_id(self._target)


class _Calls:
    """One concern's methods as a Database runs them: a method marked ``@writes`` on the write
    thread, the others on a read thread, each ``getattr(store.<concern>, method)(*args, **kwargs)``."""

    def __init__(self, database: Database, concern: str, cls: type) -> None:
        self._database, self._concern, self._cls = database, concern, cls

    def __getattr__(self, method: str) -> Callable[..., Any]:
        found = getattr(self._cls, method, None)
        if method.startswith("_") or not callable(found):
            raise AttributeError(f"{self._cls.__name__} has no method {method!r}")
        run = self._database.write if getattr(found, "writes", False) else self._database.read
        call = functools.partial(run, _concern_call, self._concern, method)
        setattr(self, method, call)  # found once: the next call takes it from the instance
        return call


def _concern_call(store: Store, concern: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
    return getattr(getattr(store, concern), method)(*args, **kwargs)


class _Concern(Generic[_C]):
    """A Database attribute standing for the Store attribute of the same name (typed as its concern)."""

    def __init__(self, cls: type[_C]) -> None:
        self._cls = cls

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, database: Database | None, owner: type | None = None) -> _C:
        if database is None:  # on the class: the concern's class, whose methods say which write
            return self._cls  # type: ignore[return-value]
        calls = database.__dict__[self._name] = _Calls(database, self._name, self._cls)
        return calls  # type: ignore[return-value]  # duck-typed: the concern's methods, run elsewhere


class Database:
    """One per process: the store's write thread and read pool (or, ``threads=False``, the caller's
    thread), created on first use."""

    identity = _Concern(Identity)
    records = _Concern(RecordWrites)
    rollups = _Concern(Rollups)
    costs = _Concern(Costs)
    retention = _Concern(Retention)
    processes = _Concern(Processes)
    sessions = _Concern(Sessions)
    queries = _Concern(RecordQueries)
    session_queries = _Concern(SessionQueries)
    budgets = _Concern(Budgets)

    def __init__(self, target: str, *, read_threads: int = READ_THREADS, busy_timeout: float = 10.0,
                 threads: bool = True) -> None:
        self.target = target
        self._read_threads = read_threads
        self._threads = threads
        #: The write thread's connection. Use it only while holding ``write_lock``.
        self.writer = _Connection(target, writer=True, busy_timeout=busy_timeout)
        if threads:
            #: Held by whoever uses the write connection: the write thread, or the recorder's shutdown
            #: fallback (in the caller's thread, while the write thread may be busy): a real OS lock even
            #: after monkey-patching. gevent is imported here, in the worker, not by the gunicorn master.
            from gevent import monkey

            self.write_lock = monkey.get_original("threading", "Lock")()
            self._thread_id = monkey.get_original("threading", "get_ident")
        else:
            self.write_lock = threading.Lock()
            self._thread_id = threading.get_ident
        #: The file whose change tells this process that tokens were revoked or users deleted (SQLite;
        #: None for PostgreSQL, whose instances on several machines share no file).
        self.auth_stamp_path = None if is_postgres_url(target) else auth_stamp_path(target)
        self._readers: dict[int, _Connection] = {}
        self._write_pool: Any = None
        self._read_pool: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the calling greenlet's side --------------------------------------------------------------

    def write(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``fn(store, *args, **kwargs)`` on the write thread, with its connection."""
        return self.on_write_thread(self._with_writer, fn, args, kwargs)

    def on_write_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the write thread, holding ``write_lock`` (``fn`` may use ``writer``)."""
        if not self._threads:
            return _unwrap(self._locked(fn, args))
        if self._write_pool is None:
            from gevent.threadpool import ThreadPool

            self._write_pool = ThreadPool(1)
        return _unwrap(self._write_pool.apply(self._locked, (fn, args)))

    def read(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``fn(store, *args, **kwargs)`` on a read thread, with that thread's connection."""
        if not self._threads:
            return _unwrap(self._with_reader(fn, args, kwargs))
        return _unwrap(self._readers_pool().apply(self._with_reader, (fn, args, kwargs)))

    def read_within(self, seconds: float, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``read``, but the caller waits at most ``seconds`` (gevent.Timeout) for a free thread and
        the call; a call already running finishes on its thread. Without threads: ``read``."""
        if not self._threads:
            return self.read(fn, *args, **kwargs)
        return _unwrap(self._readers_pool().spawn(self._with_reader, fn, args, kwargs).get(timeout=seconds))

    def connect(self, *, write: bool = False) -> None:
        """Open the connection the next calls use now (``write``: the write connection, migrated), so
        that a caller can tell a database it cannot open from a call that fails."""
        (self.write if write else self.read)(_opened)

    def close(self) -> None:
        """Stop the threads and close the connections (worker exit). Idempotent."""
        for pool in (self._write_pool, self._read_pool):
            if pool is not None:
                with suppress(Exception):
                    pool.kill()
        self._write_pool = self._read_pool = None
        if self.write_lock.acquire(timeout=1.0):  # a call still running keeps its connection
            try:
                self.writer.drop()
            finally:
                self.write_lock.release()
        readers, self._readers = self._readers, {}
        for connection in readers.values():
            connection.drop()

    # -- the native threads' side -----------------------------------------------------------------

    def _readers_pool(self) -> Any:
        if self._read_pool is None:
            from gevent.threadpool import ThreadPool

            self._read_pool = ThreadPool(self._read_threads)
        return self._read_pool

    def _locked(self, fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
        """Runs on the write thread. Errors are returned, not raised: the pool would print them."""
        try:
            with self.write_lock:
                return False, fn(*args)
        except Exception as exc:
            return True, exc

    def _with_writer(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return _call(self.writer, fn, args, kwargs)

    def _with_reader(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
        ident = self._thread_id()  # the native thread, not a greenlet
        connection = self._readers.get(ident)
        if connection is None:
            # Without threads, no server start migrated before this process: its reads migrate too.
            connection = self._readers[ident] = _Connection(self.target, writer=False, busy_timeout=10.0,
                                                            migrate=not self._threads)
        try:
            return False, _call(connection, fn, args, kwargs)
        except Exception as exc:
            return True, exc


def _opened(store: Store) -> None:
    """A call that only opens its connection (Database.connect)."""


def _call(connection: _Connection, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    try:
        return fn(connection.get(), *args, **kwargs)
    except database_errors():
        connection.drop()  # a fresh connection next time (e.g. the file was replaced)
        raise
    finally:
        connection.release()


def _unwrap(result: tuple[bool, Any]) -> Any:
    failed, value = result
    if failed:
        raise value
    return value
