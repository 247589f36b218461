"""After the database files could not be written for a while, every long-lived connection of a worker
writes again once they can (no restart).

SQLite opens a database read-only, silently, when its files cannot be opened for writing, and such
a connection stays read-only; its -shm is shared by all connections of a process, so one read-only
connection kept open (the token lookups': reads never fail) made every connection the recorder
reopened read-only too. Tests run as root, where chmod stops nothing: the files are made immutable
(``chattr +i``, EPERM for writes, as a read-only mount or permissions would) instead."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from bridge.auth import Authenticator
from bridge.recorder import InterceptionStart, Recorder
from bridge.records import InterceptionRecord, new_id
from bridge.store import open_store
from bridge.timestamps import utc_now
from tests.conftest import provider_env

WAIT = 15.0


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True)


def test_a_read_only_connection_is_not_kept_to_pin_the_others(tmp_path: Path) -> None:
    database = tmp_path / "bridge.db"
    with open_store(str(database), migrate=True) as store:
        store.identity.create_user("alice")
        token, _ = store.identity.create_token("alice")
    # Another worker keeps the database open: its -shm stays (and is never written while immutable).
    other = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                              " c.execute('SELECT count(*) FROM users').fetchone(); print('open', flush=True);"
                              " sys.stdin.read()", str(database)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    recorder = Recorder(str(database), batch_wait=0.01)
    try:
        assert other.stdout.readline() == "open\n"
        shm = Path(f"{database}-shm")
        _chattr("+i", shm)
        try:
            authenticator = Authenticator(str(database))
            assert authenticator.lookup(token)["username"] == "alice"  # reading works on read-only files
        finally:
            _chattr("-i", shm)
        row = {"id": new_id(), "started_at": utc_now(), "owner": recorder.owner}
        recorder.record(InterceptionStart(InterceptionRecord(**row)))
        deadline = time.monotonic() + WAIT
        written = None
        with open_store(str(database)) as reader:
            while written is None and time.monotonic() < deadline:
                recorder.flush(1)
                written = reader.queries.get_interception(row["id"])
                time.sleep(0.1)
        assert written is not None, "the recorder stayed read-only"
        assert authenticator.lookup(token)["username"] == "alice"
    finally:
        recorder.close()
        other.stdin.close()
        other.wait(10)


def test_a_worker_started_on_read_only_files_says_so_then_writes_once_they_are_writable(
        start_gateway, upstream, tmp_path: Path) -> None:
    database = tmp_path / "bridge.db"
    with open_store(str(database), migrate=True) as store:
        store.identity.create_user("admin", is_admin=True)
        token, _ = store.identity.create_token("admin")
    headers = {"Authorization": f"Bearer {token}"}
    _chattr("+i", database)
    try:
        gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}"},
                                workers=1)
        ready = requests.get(f"{gateway.url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        for _ in range(8):  # reads work, on every API thread
            assert requests.get(f"{gateway.url}/api/v2/users", headers=headers, timeout=10).status_code == 200
    finally:
        _chattr("-i", database)
    created = [requests.post(f"{gateway.url}/api/v2/users", json={"username": f"user{n}"}, headers=headers,
                             timeout=10).status_code for n in range(8)]
    assert created == [201] * 8
    assert requests.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
