"""/healthz (alive) and /readyz (config loaded, store writable): on a test client and through the
real gateway under gunicorn while another connection holds the database's write lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from tests.test_api import make_client, seed_dataset, spy_store_threads

LOCK_WAIT = 10.0  # for the test's own BEGIN EXCLUSIVE, while a gateway may be writing


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Another connection holding ``BEGIN EXCLUSIVE`` (in WAL mode: the write lock) on the database."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=LOCK_WAIT)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def test_readyz_is_ready_when_the_store_is_writable_and_not_while_it_is_locked(tmp_path: Path) -> None:
    data = seed_dataset(tmp_path / "health.db", count=3)
    client = make_client(data.path)
    response = client.get("/readyz")
    assert response.status_code == 200 and response.get_json() == {"status": "ready"}
    with exclusive_lock(data.path):
        started = time.monotonic()
        response = client.get("/readyz")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "unavailable" and "locked" in body["detail"]
        assert str(tmp_path) not in body["detail"] and "health.db" not in body["detail"]
        assert 0.9 <= elapsed < 5  # waited about its 1 s busy timeout, not the store's 10 s
        assert client.get("/healthz").get_json() == {"status": "ok"}  # liveness does not look at the store
    assert client.get("/readyz").status_code == 200  # and ready again


def test_readyz_checks_on_a_store_thread_not_the_callers(tmp_path: Path, monkeypatch) -> None:
    data = seed_dataset(tmp_path / "threads.db", count=1)
    client = make_client(data.path)
    threads = spy_store_threads(monkeypatch, "check_writable")
    assert client.get("/readyz").status_code == 200
    assert threads and threading.get_ident() not in threads


def test_readyz_without_a_loaded_configuration_is_unavailable(tmp_path: Path) -> None:
    data = seed_dataset(tmp_path / "config.db", count=1)
    client = make_client(data.path)
    client.application.extensions.pop("bridge")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "detail": "the configuration is not loaded"}


def test_readyz_through_the_gateway(gateway, database: Path) -> None:
    """gunicorn, two gevent workers: 200, then 503 within the 1 s lock wait while another process
    holds BEGIN EXCLUSIVE (every worker answers, none is frozen), then 200 again."""
    ready = requests.get(f"{gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    with exclusive_lock(database):
        for _ in range(4):  # two workers: more than one request to reach both
            started = time.monotonic()
            response = requests.get(f"{gateway.url}/readyz", timeout=10)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert response.json()["status"] == "unavailable" and "locked" in response.json()["detail"]
            assert str(database) not in response.text
            assert elapsed < 5
        # The hub is not blocked by the wait: liveness answers at once meanwhile.
        results: list[float] = []

        def slow_probe() -> None:
            requests.get(f"{gateway.url}/readyz", timeout=10)

        probe = threading.Thread(target=slow_probe)
        probe.start()
        started = time.monotonic()
        assert requests.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
        results.append(time.monotonic() - started)
        probe.join(timeout=10)
        assert results[0] < 0.9
    deadline = time.monotonic() + 10
    while True:
        response = requests.get(f"{gateway.url}/readyz", timeout=10)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.status_code == 200 and response.json() == {"status": "ready"}
