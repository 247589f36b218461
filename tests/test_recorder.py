"""The recorder under gevent, against real SQLite files.

The recorder only behaves as in a gunicorn worker in a monkey-patched process, and the pytest
process must stay unpatched (other tests share it). So each scenario below runs in a subprocess:
``python -m tests.test_recorder SCENARIO DB`` patches first, runs the scenario and prints one JSON
line of observations, which the test then checks.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from bridge.records import InterceptionRecord, PromptRecord, ThoughtRecord, TokenUsageRecord, ToolUsageRecord
from bridge.store import RecordBatch, open_store
from bridge.timestamps import format_timestamp, utc_now

REPO = Path(__file__).resolve().parent.parent
HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


# -- records used by both sides ------------------------------------------------------------------


def start_row(interception_id: str, started_at: str | None = None) -> InterceptionRecord:
    return InterceptionRecord(**{
        "id": interception_id,
        "initiator_id": "user-1",
        "provider": "openai",
        "provider_name": "openai",
        "model": "gpt-4o",
        "client": "openai-python",
        "credential_kind": "centralized",
        "started_at": started_at or utc_now(),
        "ended_at": None,
        "metadata": json.dumps({"start": True}),
    })


def end_children(interception_id: str) -> dict[str, list[Any]]:
    now = utc_now()

    def child(record_class: type, **columns: Any) -> Any:
        return record_class(id=str(uuid.uuid4()), interception_id=interception_id, created_at=now, **columns)

    return {
        "token_usages": [child(TokenUsageRecord, provider_response_id="r1", input_tokens=10, output_tokens=5)],
        "user_prompts": [child(PromptRecord, provider_response_id="r1", prompt="hello")],
        "tool_usages": [child(ToolUsageRecord, provider_response_id="r1", provider_tool_call_id="c1", tool="read",
                              input='{"p": 1}')],
        "model_thoughts": [child(ThoughtRecord, content="thinking", metadata='{"source": "thinking"}')],
    }


def counts(db: str) -> dict[str, int]:
    with open_store(db) as store:
        return store.queries.count_records()


def interception_ids(db: str) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM aibridge_interceptions")}
    finally:
        conn.close()


# -- scenarios (run in a patched subprocess) ------------------------------------------------------


def _recorder_api():
    """Imported only in the scenario process, after patching."""
    import gevent

    from bridge.recorder import InterceptionEnd, InterceptionStart, Recorder

    def record_interception(recorder: Recorder, interception_id: str) -> None:
        recorder.record(InterceptionStart(start_row(interception_id)))
        recorder.record(
            InterceptionEnd(interception_id, utc_now(), {"end": True}, **end_children(interception_id))
        )

    return gevent, Recorder, record_interception


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    import gevent

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.05)
    return True


def scenario_many_greenlets(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    recorder = Recorder(db, batch_wait=0.05)
    ids = [str(uuid.uuid4()) for _ in range(1000)]

    def client(share: list[str]) -> None:
        for interception_id in share:
            record_interception(recorder, interception_id)
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(client, ids[n::50]) for n in range(50)], timeout=60)
    flushed = recorder.flush(30)
    recorder.close()
    return {"flushed": flushed, "ids": ids, "pending": recorder.pending, "backlog": recorder.backlog}


def scenario_full_batch(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    # A batch_wait far longer than the wait below: only a full batch can be written in time.
    recorder = Recorder(db, batch_wait=60, batch_size=100)
    ids = [str(uuid.uuid4()) for _ in range(60)]  # 120 items: one full batch and 20 more
    record_interception(recorder, ids[0])
    gevent.sleep(0.2)  # the writer holds the first item and waits for more
    for interception_id in ids[1:]:
        record_interception(recorder, interception_id)
    full_batch_written = wait_until(lambda: recorder.pending == 20, timeout=15)
    gevent.sleep(0.5)
    pending_later = recorder.pending  # the rest waits for batch_wait (or close)
    recorder.close()
    return {"full_batch_written": full_batch_written, "pending_later": pending_later, "ids": ids}


def scenario_locked(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    from gevent import subprocess as gsubprocess

    # busy_timeout 2 s: were sqlite run on the hub, waiting for the lock would freeze it that long.
    recorder = Recorder(db, batch_wait=0.05, busy_timeout=2.0)
    record_interception(recorder, str(uuid.uuid4()))
    assert recorder.flush(10)
    holder = gsubprocess.Popen([sys.executable, "-c", HOLD_LOCK, db, "4"], stdout=gsubprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"

    ticks: list[float] = []

    def ticker() -> None:
        while True:
            gevent.sleep(0.01)
            ticks.append(time.monotonic())

    ticking = gevent.spawn(ticker)
    started = time.monotonic()
    slowest = 0.0
    for n in range(100):
        before = time.perf_counter()
        record_interception(recorder, str(uuid.uuid4()))
        slowest = max(slowest, time.perf_counter() - before)
        if n % 10 == 0:
            gevent.sleep(0.01)
    flushed = recorder.flush(20)
    observed = {
        "flushed_while_locked": flushed,
        "journal": recorder.journal_path,
        "backlog_while_locked": recorder.backlog,
        "in_db_while_locked": len(interception_ids(db)),
    }
    holder.wait(30)
    written = wait_until(lambda: recorder.backlog == 0 and len(interception_ids(db)) == 101)
    elapsed = time.monotonic() - started
    ticking.kill()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    recorder.close()
    return {
        **observed,
        "written_after_release": written,
        "journal_exists_after": observed["journal"] is not None and os.path.exists(observed["journal"]),
        "slowest_record": slowest,
        "ticks": len(ticks),
        "elapsed": elapsed,
        "max_gap": max(gaps),
        "count": len(interception_ids(db)),
    }


def scenario_db_gone(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    recorder = Recorder(db, batch_wait=0.05, busy_timeout=0.5)
    for _ in range(5):
        record_interception(recorder, str(uuid.uuid4()))
    assert recorder.flush(10)

    def remove_database() -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)

    # 1. The file is deleted: the writer notices, recreates and migrates it.
    remove_database()
    second = [str(uuid.uuid4()) for _ in range(5)]
    for interception_id in second:
        record_interception(recorder, interception_id)
    assert recorder.flush(10)
    after_removal = sorted(interception_ids(db))

    # 2. The file is moved away and a directory takes its place: it can be neither opened nor
    # created. Then the file comes back.
    os.rename(db, db + ".away")
    os.mkdir(db)
    third = [str(uuid.uuid4()) for _ in range(5)]
    for interception_id in third:
        record_interception(recorder, interception_id)
    flushed = recorder.flush(10)
    observed = {"flushed_while_broken": flushed, "journal": recorder.journal_path, "backlog": recorder.backlog}
    os.rmdir(db)
    os.rename(db + ".away", db)
    written = wait_until(lambda: recorder.backlog == 0)
    recorder.close()
    return {
        **observed,
        "second": sorted(second),
        "after_removal": after_removal,
        "third": sorted(third),
        "written_after_restore": written,
        "final": sorted(interception_ids(db)),
        "counts": counts(db),
    }


def scenario_journal_unwritable(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    recorder = Recorder(db, batch_wait=0.05, busy_timeout=0.3)
    record_interception(recorder, str(uuid.uuid4()))
    assert recorder.flush(10)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # free lock: returns at once, the hub is not blocked
    journal = f"{db}.records-{os.getpid()}.jsonl"
    os.mkdir(journal)  # the journal cannot be created either
    for _ in range(10):
        record_interception(recorder, str(uuid.uuid4()))
    handled = wait_until(lambda: recorder.pending == 0, 10)
    observed = {
        "handled": handled,
        "flushed_while_broken": recorder.flush(0.5),
        "backlog_in_memory": recorder.backlog,
        "journal_path": recorder.journal_path,
    }
    os.rmdir(journal)
    locker.execute("COMMIT")
    locker.close()
    written = wait_until(lambda: recorder.backlog == 0 and len(interception_ids(db)) == 11)
    recorder.close()
    return {**observed, "written_after_restore": written, "counts": counts(db)}


def scenario_journal_and_hang(db: str) -> dict[str, Any] | None:
    gevent, Recorder, record_interception = _recorder_api()
    open_store(db, migrate=True).close()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    recorder = Recorder(db, batch_wait=0.05, busy_timeout=0.3)
    ids = [str(uuid.uuid4()) for _ in range(50)]
    for interception_id in ids:
        record_interception(recorder, interception_id)
    assert recorder.flush(20)
    print(json.dumps({"journal": recorder.journal_path, "batches": recorder.backlog, "ids": ids}), flush=True)
    gevent.sleep(600)  # the test kills us with SIGKILL: no close(), the lock dies with the process
    return None


def scenario_recover(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    recorder = Recorder(db)
    replayed = recorder.recover()
    recorder.close()
    return {"replayed": replayed}


def scenario_close_queued(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    # A long batch_wait: everything is still queued in the writer when close() is called.
    recorder = Recorder(db, batch_wait=30, batch_size=100_000)
    ids = [str(uuid.uuid4()) for _ in range(500)]
    for interception_id in ids:
        record_interception(recorder, interception_id)
    gevent.sleep(0)
    pending_before = recorder.pending
    started = time.monotonic()
    recorder.close()
    recorder.close()  # idempotent
    return {
        "pending_before": pending_before,
        "pending_after": recorder.pending,
        "close_seconds": time.monotonic() - started,
        "ids": ids,
        "counts": counts(db),
    }


def scenario_close_in_hub_callback(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    recorder = Recorder(db, batch_wait=30, batch_size=100_000)
    ids = [str(uuid.uuid4()) for _ in range(50)]
    for interception_id in ids:
        record_interception(recorder, interception_id)
    gevent.sleep(0)  # the writer holds the first item and waits for more
    # Where the hub cannot switch (as when it is shutting down), close() cannot join the writer.
    done = gevent.event.Event()
    gevent.get_hub().loop.run_callback(lambda: (recorder.close(), done.set()))
    closed = done.wait(30)
    return {"closed": closed, "ids": ids}


def scenario_close_locked(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    open_store(db, migrate=True).close()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    recorder = Recorder(db, batch_wait=30, busy_timeout=0.3)
    for _ in range(20):
        record_interception(recorder, str(uuid.uuid4()))
    recorder.close()
    journal = f"{db}.records-{os.getpid()}.jsonl"
    with open(journal) as lines:
        journaled = sum(len(RecordBatch.from_json(line)) for line in lines)
    locker.execute("COMMIT")
    locker.close()
    successor = Recorder(db)  # the next worker: the journal is an orphan now
    replayed = successor.recover()
    successor.close()
    return {
        "journaled_rows": journaled,
        "replayed": replayed,
        "journal_exists_after": os.path.exists(journal),
        "counts": counts(db),
    }


def scenario_refused(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    from bridge.recorder import InterceptionEnd

    recorder = Recorder(db, batch_wait=0.2)
    good = [str(uuid.uuid4()) for _ in range(3)]
    record_interception(recorder, good[0])
    recorder.record(InterceptionEnd("never-started", utc_now(), None, **end_children("never-started")))
    for interception_id in good[1:]:
        record_interception(recorder, interception_id)
    flushed = recorder.flush(10)
    recorder.close()
    with open(f"{db}.records-rejected.jsonl") as lines:
        rejected = [RecordBatch.from_json(line) for line in lines]
    return {
        "flushed": flushed,
        "good": sorted(good),
        "stored": sorted(interception_ids(db)),
        "rejected_ends": [end.id for batch in rejected for end in batch.ends],
        "counts": counts(db),
    }


def scenario_retention(db: str) -> dict[str, Any]:
    gevent, Recorder, record_interception = _recorder_api()
    old = format_timestamp(datetime.now(timezone.utc) - timedelta(days=10))

    def add_old(n: int) -> None:
        with open_store(db, migrate=True) as store:
            for _ in range(n):
                interception_id = str(uuid.uuid4())
                store.records.write_records(RecordBatch(interceptions=[start_row(interception_id, old)], **end_children(interception_id)))

    def old_count() -> int:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT count(*) FROM aibridge_interceptions WHERE started_at < ?", [old + "1"]).fetchone()[0]
        finally:
            conn.close()

    add_old(30)
    recorder = Recorder(db, batch_wait=0.05, retention=86400, purge_interval=0.3)
    record_interception(recorder, str(uuid.uuid4()))
    assert recorder.flush(10)
    purged_at_start = wait_until(lambda: old_count() == 0, 10)
    add_old(10)
    purged_periodically = wait_until(lambda: old_count() == 0, 10)
    recorder.close()
    return {"purged_at_start": purged_at_start, "purged_periodically": purged_periodically, "counts": counts(db)}


# -- the tests (unpatched pytest process) ----------------------------------------------------------


def run_scenario(name: str, db: Path, timeout: float = 120) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_recorder", name, str(db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bridge.db"


def assert_complete(db: Path, ids: list[str]) -> None:
    """Every interception stored exactly once, ended, with one row of each child kind."""
    assert interception_ids(str(db)) == set(ids)
    n = len(ids)
    assert counts(str(db)) == {
        "aibridge_interceptions": n,
        "aibridge_token_usages": n,
        "aibridge_user_prompts": n,
        "aibridge_tool_usages": n,
        "aibridge_model_thoughts": n,
    }
    with open_store(str(db)) as store:
        row = store.queries.get_interception(ids[0])
        assert row["ended_at"] is not None
        assert json.loads(row["metadata"]) == {"start": True, "end": True}


def test_recorder_creates_nothing_until_used(db: Path) -> None:
    from bridge.recorder import Recorder

    recorder = Recorder(str(db))
    recorder.close()
    assert list(db.parent.iterdir()) == []


def test_records_from_many_greenlets_land_exactly_once(db: Path) -> None:
    result = run_scenario("many_greenlets", db)
    assert result["flushed"] and result["pending"] == 0 and result["backlog"] == 0
    assert_complete(db, result["ids"])


def test_a_full_batch_is_written_without_waiting_for_batch_wait(db: Path) -> None:
    result = run_scenario("full_batch", db)
    assert result["full_batch_written"] and result["pending_later"] == 20
    assert_complete(db, result["ids"])  # close() wrote the rest


def test_locked_store_journals_without_blocking_the_hub(db: Path) -> None:
    result = run_scenario("locked", db)
    assert result["flushed_while_locked"]  # flush() counts the journal as safe
    assert result["journal"] and result["backlog_while_locked"] > 0
    assert result["in_db_while_locked"] == 1
    assert result["written_after_release"] and result["count"] == 101
    assert not result["journal_exists_after"]
    assert result["slowest_record"] < 0.1
    # The hub kept running while the writer waited 2 s for the lock, then journaled.
    assert result["ticks"] >= result["elapsed"] / 0.01 / 5
    assert result["max_gap"] < 1.0


def test_removed_or_unopenable_database_file(db: Path) -> None:
    result = run_scenario("db_gone", db)
    assert result["after_removal"] == result["second"]  # recreated and migrated
    assert result["flushed_while_broken"] and result["journal"] and result["backlog"] > 0
    assert result["written_after_restore"]
    assert result["final"] == sorted(result["second"] + result["third"])
    assert result["counts"]["aibridge_token_usages"] == 10
    assert not os.path.exists(result["journal"])


def test_unwritable_journal_keeps_records_in_memory(db: Path) -> None:
    result = run_scenario("journal_unwritable", db)
    assert result["handled"]
    assert result["flushed_while_broken"] is False  # in memory only: not safe yet
    assert result["backlog_in_memory"] > 0 and result["journal_path"] is None
    assert result["written_after_restore"]
    assert result["counts"]["aibridge_interceptions"] == 11
    assert result["counts"]["aibridge_model_thoughts"] == 11


def test_orphan_journal_of_a_killed_process_is_replayed_once(db: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.test_recorder", "journal_and_hang", str(db)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        journaled = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    journal = journaled["journal"]
    assert journal and os.path.exists(journal) and journaled["batches"] > 0

    # Several workers start at once; each tries to replay the orphan.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.test_recorder", "recover", str(db)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    replayed = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        replayed.append(json.loads(out.strip().splitlines()[-1])["replayed"])
    assert sum(replayed) == journaled["batches"] and replayed.count(0) == 3
    assert not os.path.exists(journal)
    assert_complete(db, journaled["ids"])


def test_close_writes_everything_queued(db: Path) -> None:
    result = run_scenario("close_queued", db)
    assert result["pending_before"] == 1000 and result["pending_after"] == 0
    assert result["close_seconds"] < 20  # not the 30 s batch_wait
    assert_complete(db, result["ids"])


def test_close_from_a_hub_callback_writes_synchronously(db: Path) -> None:
    result = run_scenario("close_in_hub_callback", db)
    assert result["closed"]
    assert_complete(db, result["ids"])


def test_close_while_locked_journals_for_the_next_process(db: Path) -> None:
    result = run_scenario("close_locked", db)
    assert result["journaled_rows"] == 20 * 6  # start, end and four children per interception
    assert result["replayed"] >= 1 and not result["journal_exists_after"]
    assert result["counts"]["aibridge_interceptions"] == 20
    assert result["counts"]["aibridge_tool_usages"] == 20


def test_rows_the_store_refuses_are_set_aside_not_blocking(db: Path) -> None:
    result = run_scenario("refused", db)
    assert result["flushed"]
    assert result["stored"] == result["good"]
    assert result["rejected_ends"] == ["never-started"]
    assert result["counts"]["aibridge_token_usages"] == 3


def test_retention_runs_from_the_writer(db: Path) -> None:
    result = run_scenario("retention", db)
    assert result["purged_at_start"] and result["purged_periodically"]
    assert result["counts"] == {
        "aibridge_interceptions": 1,
        "aibridge_token_usages": 1,
        "aibridge_user_prompts": 1,
        "aibridge_tool_usages": 1,
        "aibridge_model_thoughts": 1,
    }


if __name__ == "__main__":
    scenario = globals()[f"scenario_{sys.argv[1]}"]
    print(json.dumps(scenario(sys.argv[2])), flush=True)
