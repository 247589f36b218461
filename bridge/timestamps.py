"""The one text format of times in the store, the API and the logs."""

from __future__ import annotations

from datetime import datetime, timezone


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with a fixed width (``2026-01-02T03:04:05.000006Z``) so text order is time order."""
    # isoformat() is a third of strftime()'s cost, and this runs for every record.
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utc_now() -> str:
    """Now, as format_timestamp() writes it (isoformat of a UTC time ends with "+00:00")."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"
