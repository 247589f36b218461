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


def parse_timestamp(timestamp: str) -> datetime:
    """A store timestamp (``format_timestamp``) as an aware datetime."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def seconds_since(timestamp: str) -> float:
    """Seconds from a store timestamp until now (negative for one in the future)."""
    return (datetime.now(timezone.utc) - parse_timestamp(timestamp)).total_seconds()
