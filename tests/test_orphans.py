"""Interceptions left open by a gateway process that is gone (SIGKILL, crash, a machine lost) are
ended by the processes that remain, with metadata saying why; those of live processes never are.

Store-level scenarios run on SQLite and PostgreSQL (``store_url``); the last test kills a real
gunicorn worker in the middle of streams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import gevent
import requests

from bridge import recorder as recorder_module
from bridge.recorder import InterceptionEnd, InterceptionStart, Recorder
from bridge.records import InterceptionRecord, new_id
from bridge.store import RecordBatch, open_store
from bridge.timestamps import format_timestamp, utc_now
from tests.conftest import provider_env
from tests.sdk_calls import load_fixtures

WAIT = 20.0
STREAM = dict(load_fixtures("anthropic"))["anthropic/simple_text"]


def _row(owner: str | None, started_at: str | None = None) -> dict:
    return {"id": new_id(), "initiator_id": "user-1", "provider": "anthropic", "model": "claude",
            "started_at": started_at or utc_now(), "metadata": json.dumps({"streaming": True}), "owner": owner}


def _exited_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    return child.pid


def _journal_dir(store_url: str, tmp_path: Path) -> str | None:
    return str(tmp_path) if store_url.startswith("postgres") else None


def _interceptions(store_url: str, ids: list[str]) -> dict[str, dict]:
    with open_store(store_url) as store:
        return {i: store.queries.get_interception(i) for i in ids}


def _error(record: dict) -> str | None:
    return json.loads(record["metadata"]).get("error")


def test_a_starting_recorder_ends_the_interceptions_of_processes_that_are_gone(store_url: str, tmp_path: Path) -> None:
    """At start: a process of this host whose pid is gone, one silent for longer than three heartbeats
    (another machine), and an owner that is not registered at all; never a live process's."""
    exited, silent, unregistered, elsewhere = "exited", "silent", "unregistered", "elsewhere"
    with open_store(store_url, migrate=True) as store:
        store.processes.heartbeat(exited, recorder_module._HOST, _exited_pid(), utc_now())
        store.processes.heartbeat(silent, "machine-b/boot/1", 4242, utc_now())
        store.processes.heartbeat(elsewhere, "machine-c/boot/1", 4242, utc_now())
        rows = {owner: _row(owner) for owner in (exited, silent, unregistered, elsewhere)}
        store.records.write_records(RecordBatch.load(dict(interceptions=list(rows.values()))))
        store.db.execute("UPDATE bridge_processes SET heartbeat = heartbeat - 60 WHERE owner = ?", [silent])
    live = Recorder(store_url, batch_wait=0.01, journal_dir=_journal_dir(store_url, tmp_path))
    own = _row(live.owner)
    live.record(InterceptionStart(InterceptionRecord(**own)))
    assert live.flush(10)

    successor = Recorder(store_url, journal_dir=_journal_dir(store_url, tmp_path))  # heartbeat 10 s: silent is gone
    successor.recover()
    successor.close()
    live.close()

    found = _interceptions(store_url, [row["id"] for row in rows.values()] + [own["id"]])
    for owner in (exited, silent, unregistered):
        record = found[rows[owner]["id"]]
        assert record["ended_at"] is not None, owner
        assert "the gateway process serving it stopped" in _error(record), owner
        assert json.loads(record["metadata"])["streaming"] is True  # merged, as any end
    assert "has exited" in _error(found[rows[exited]["id"]])
    assert "no heartbeat" in _error(found[rows[silent]["id"]])
    assert found[rows[elsewhere]["id"]]["ended_at"] is None  # its heartbeat is fresh
    assert found[own["id"]]["ended_at"] is None  # a live recorder's own interception


def test_an_end_in_a_dead_process_journal_wins_over_ending_it_as_an_orphan(store_url: str, tmp_path: Path) -> None:
    pid = _exited_pid()
    owner = "journaled"
    done, open_one = _row(owner), _row(owner)
    with open_store(store_url, migrate=True) as store:
        store.processes.heartbeat(owner, recorder_module._HOST, pid, utc_now())
        store.records.write_records(RecordBatch.load(dict(interceptions=[done, open_one])))
    successor = Recorder(store_url, journal_dir=_journal_dir(store_url, tmp_path))
    journal = f"{successor._journal_base}.records-{pid}.jsonl"  # what the dead process left
    ended_at = utc_now()
    end = RecordBatch.load(dict(ends=[{"id": done["id"], "ended_at": ended_at, "metadata": json.dumps({"status": 200})}]))
    Path(journal).write_text(end.to_json() + "\n")
    successor.recover()
    successor.close()

    found = _interceptions(store_url, [done["id"], open_one["id"]])
    assert found[done["id"]]["ended_at"] == ended_at
    assert "error" not in json.loads(found[done["id"]]["metadata"])
    assert "stopped" in _error(found[open_one["id"]])
    assert not os.path.exists(journal)


def test_a_running_recorder_ends_them_once_a_process_falls_silent(store_url: str, tmp_path: Path) -> None:
    """Periodically, without a restart: another machine's process stops giving heartbeats; meanwhile
    the running recorder's own heartbeat keeps its interceptions open for every other recorder."""
    other = "machine-b"
    with open_store(store_url, migrate=True) as store:
        store.processes.heartbeat(other, "machine-b/boot/1", 4242, utc_now())
        theirs = _row(other)
        store.records.write_records(RecordBatch.load(dict(interceptions=[theirs])))
    recorder = Recorder(store_url, batch_wait=0.01, heartbeat_interval=0.5, journal_dir=_journal_dir(store_url, tmp_path))
    watcher = Recorder(store_url, batch_wait=0.01, heartbeat_interval=0.5, journal_dir=_journal_dir(store_url, tmp_path))
    try:
        ours = _row(recorder.owner)
        recorder.record(InterceptionStart(InterceptionRecord(**ours)))
        watcher.record(InterceptionStart(InterceptionRecord(**_row(watcher.owner))))  # the watcher runs its periodic checks too
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = _interceptions(store_url, [theirs["id"], ours["id"]])
            if found[theirs["id"]]["ended_at"]:
                break
            gevent.sleep(0.1)
        assert "no heartbeat" in _error(found[theirs["id"]])
        gevent.sleep(2.0)  # four heartbeat intervals more: the running recorders stay registered
        assert _interceptions(store_url, [ours["id"]])[ours["id"]]["ended_at"] is None
        recorder.record(InterceptionEnd(ours["id"], utc_now(), {"status": 200}))
        assert recorder.flush(10)
    finally:
        recorder.close()
        watcher.close()
    assert _error(_interceptions(store_url, [ours["id"]])[ours["id"]]) is None


def test_interceptions_recorded_before_owners_existed_end_once_older_than_the_oldest_process(store_url: str,
                                                                                             tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    oldest = format_timestamp(now - timedelta(hours=1))
    with open_store(store_url, migrate=True) as store:
        store.processes.heartbeat("running-an-hour", "machine-b/boot/1", 4242, oldest)
        before = _row(None, format_timestamp(now - timedelta(hours=2)))
        after = _row(None, format_timestamp(now - timedelta(minutes=30)))  # an older version's live stream, maybe
        store.records.write_records(RecordBatch.load(dict(interceptions=[before, after])))
    successor = Recorder(store_url, journal_dir=_journal_dir(store_url, tmp_path))
    successor.recover()
    successor.close()
    found = _interceptions(store_url, [before["id"], after["id"]])
    assert "stopped" in _error(found[before["id"]])
    assert found[after["id"]]["ended_at"] is None


# -- a real gunicorn worker killed in the middle of streams ----------------------------------------


def _owners(database: Path, ids: list[str]) -> dict[str, int]:
    """Interception id -> pid of the worker serving it, once every one is stored and its worker registered."""
    deadline = time.monotonic() + WAIT
    with open_store(str(database)) as store:
        while True:
            rows = store.db.execute(
                "SELECT i.id, p.pid FROM aibridge_interceptions i JOIN bridge_processes p ON p.owner = i.owner"
                f" WHERE i.id IN ({', '.join('?' * len(ids))})", ids).fetchall()
            if len(rows) == len(ids) or time.monotonic() > deadline:
                return dict(rows)
            time.sleep(0.1)


def test_the_streams_of_a_killed_worker_are_ended_when_gunicorn_replaces_it(start_gateway, upstream, identities,
                                                                               database) -> None:
    gateway = start_gateway(provider_env(upstream), workers=2)
    token = identities.alice
    streams: dict[str, tuple[requests.Response, object]] = {}
    by_worker: dict[int, list[str]] = {}
    try:
        for _ in range(24):  # until both workers serve streams (the kernel spreads connections)
            response = requests.post(
                f"{gateway.base('anthropic')}/v1/messages", json={**STREAM["request"], "stream": True}, stream=True,
                headers={"Authorization": f"Bearer {token}", "X-Fixture": "anthropic/simple_text",
                         "X-Fake-Delay-Ms": "1000", "X-Fake-Repeat": "30"}, timeout=30)
            assert response.status_code == 200
            chunks = response.iter_content(chunk_size=None)
            assert next(chunks)
            interception_id = response.headers["X-AIBridge-Interception-Id"]
            streams[interception_id] = (response, chunks)
            if len(streams) >= 6:
                by_worker = {}
                for iid, pid in _owners(database, list(streams)).items():
                    by_worker.setdefault(pid, []).append(iid)
                if len(by_worker) == 2:
                    break
        assert len(by_worker) == 2, by_worker
        assert set(by_worker) == gateway.worker_pids()
        killed, survivor = sorted(by_worker, key=lambda pid: len(by_worker[pid]))

        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = _interceptions(str(database), by_worker[killed])
            if all(record["ended_at"] for record in found.values()):
                break
            time.sleep(0.2)
        for record in found.values():
            assert record["ended_at"] is not None
            assert f"pid {killed}" in _error(record) and "has exited" in _error(record)
        assert killed not in gateway.worker_pids()  # replaced by gunicorn

        for interception_id in by_worker[survivor]:  # the other worker's streams go on, their interceptions open
            assert next(streams[interception_id][1])
        found = _interceptions(str(database), by_worker[survivor])
        assert all(record["ended_at"] is None for record in found.values())
    finally:
        for response, _ in streams.values():
            response.close()
