"""The worker's store runner (bridge.store.Database): every store call off the hub, one write
thread and a read pool, connections reopened after a database error and never kept read-only."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import gevent
import pytest

from bridge.store import Database, Store


def _thread(store: Store) -> int:
    return threading.get_ident()


def test_calls_run_on_native_threads_and_return_their_results(tmp_path: Path) -> None:
    database = Database(str(tmp_path / "bridge.db"))
    try:
        user = database.identity.create_user("alice", is_admin=True)
        assert database.identity.get_user("alice")["id"] == user["id"]
        hub = threading.get_ident()
        writer = database.write(_thread)
        assert writer != hub and database.write(_thread) == writer  # one write thread
        assert database.read(_thread) not in (hub, writer)
    finally:
        database.close()


def test_errors_reach_the_caller_and_a_failed_connection_is_reopened(tmp_path: Path) -> None:
    database = Database(str(tmp_path / "bridge.db"), read_threads=1)
    opened: list[Store] = []

    def fail(store: Store) -> None:
        opened.append(store)
        raise sqlite3.OperationalError("disk I/O error")

    try:
        with pytest.raises(sqlite3.OperationalError):
            database.read(fail)
        assert database.read(lambda store: store) is not opened[0]  # a fresh connection
        with pytest.raises(ValueError):
            database.write(lambda store: int("x"))
    finally:
        database.close()


def test_read_within_gives_up_waiting_while_the_call_goes_on_on_its_thread(tmp_path: Path) -> None:
    database = Database(str(tmp_path / "bridge.db"), read_threads=1)
    try:  # run on the hub, the call would have finished (blocking it) before the wait could end
        with pytest.raises(gevent.Timeout):
            database.read_within(0.1, lambda store: time.sleep(0.5))
    finally:
        database.close()
