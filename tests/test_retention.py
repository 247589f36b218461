"""Retention outside the server: ``bridge.retention.purge`` (what the CLI runs)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bridge.retention import purge, retention_cutoff
from bridge.store import RecordBatch, Store, open_store
from bridge.timestamps import format_timestamp


def add(store: Store, started: datetime, n: int) -> None:
    rows = [{"id": str(uuid.uuid4()), "started_at": format_timestamp(started)} for _ in range(n)]
    prompts = [{"id": str(uuid.uuid4()), "interception_id": r["id"], "prompt": "p", "created_at": r["started_at"]}
               for r in rows]
    store.records.write_records(RecordBatch.load(dict(interceptions=rows, user_prompts=prompts)))


def test_retention_cutoff() -> None:
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert retention_cutoff(86400 * 30, now) == "2026-01-30T00:00:00.000000Z"


def test_purge_deletes_records_older_than_the_retention(tmp_path: Path) -> None:
    db = str(tmp_path / "bridge.db")
    now = datetime.now(timezone.utc)
    with open_store(db, migrate=True) as store:
        add(store, now - timedelta(days=40), 25)
        add(store, now - timedelta(days=10), 5)
    assert purge(db, 0) == 0  # 0 keeps forever
    assert purge(db, 30 * 86400, chunk=4) == 25
    with open_store(db) as store:
        assert store.queries.count_records()["aibridge_interceptions"] == 5
        assert store.queries.count_records()["aibridge_user_prompts"] == 5

