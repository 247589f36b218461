"""Retention: delete interceptions (with all their children) older than the configured period."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bridge.store import open_store
from bridge.timestamps import format_timestamp


def retention_cutoff(retention_seconds: float, now: datetime | None = None) -> str:
    """The store timestamp before which records are out of retention."""
    moment = now or datetime.now(timezone.utc)
    return format_timestamp(moment - timedelta(seconds=retention_seconds))


def purge(database_path: str, retention_seconds: float, chunk: int = 5000) -> int:
    """Delete records older than the retention (0 keeps forever); returns the interceptions deleted.

    Chunked (one short write transaction per chunk), so it is safe to run beside a live gateway.
    """
    if retention_seconds <= 0:
        return 0
    with open_store(database_path, migrate=True) as store:
        return store.retention.purge_records(retention_cutoff(retention_seconds), chunk)
