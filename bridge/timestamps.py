"""The one text format of times in the store, the API and the logs."""

from __future__ import annotations

from datetime import datetime, timezone


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with a fixed width (``2026-01-02T03:04:05.000006Z``) so text order is time order."""
    # isoformat() is a third of strftime()'s cost, and this runs for every record; a UTC time's
    # isoformat() ends with "+00:00".
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def utc_now() -> str:
    return format_timestamp(datetime.now(timezone.utc))
