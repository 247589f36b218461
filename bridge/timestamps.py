"""The one text format of times in the store, the API and the logs."""

from __future__ import annotations

from datetime import datetime, timezone


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with a fixed width (``2026-01-02T03:04:05.000006Z``) so text order is time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_timestamp(datetime.now(timezone.utc))
