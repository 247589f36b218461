"""Parsing of the duration and size values used by settings, the API and the CLI."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
#: The longest duration accepted anywhere: 100 years (36525d). Anything longer is a typo, and a
#: time this far from now still fits a datetime (which ends at year 9999), so token expiries,
#: retention cut-offs and ``since`` never overflow.
MAX_DURATION = 36525 * 86400.0

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}
#: The largest byte count accepted (a signed 64-bit integer): more digits would read as infinity.
MAX_SIZE = 2**63 - 1
_SHOWN_MAX = 40  # characters of a bad value quoted back in an error


class DurationTooLong(ValueError):
    """A well-formed duration longer than MAX_DURATION."""


def parse_duration(text: str) -> float:
    """Parse ``90d``, ``720h``, ``30m``, ``1h30m``, ``1.5s``, ``500ms`` or a bare ``0`` into seconds.

    Raises ValueError with a message that says what is accepted (DurationTooLong beyond 100 years).
    """
    value = text.strip()
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(value):
        raise ValueError(f"invalid duration {_shown(text)} (use e.g. 90d, 720h, 30m, 1h30m, 10s or 0)")
    if total > MAX_DURATION:  # also a number with hundreds of digits, which reads as infinity
        raise DurationTooLong(f"duration {_shown(text)} is too long (at most 36525d, 100 years)")
    return total


def format_duration(seconds: float) -> str:
    """Seconds as people write them and parse_duration reads them: ``60d``, ``1h30m``, ``1m30s``, ``2s500ms``, ``0``.

    Whole days, hours, minutes and seconds, then the rest in milliseconds (to the microsecond).
    """
    micros = round(seconds * 1_000_000)
    if micros <= 0:
        return "0"
    parts = []
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    if micros:
        parts.append(f"{micros / 1000:g}ms")
    return "".join(parts)


def parse_size(text: str) -> int:
    """Parse ``64MiB``, ``10MB``, ``512KiB`` or a plain byte count into bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid size {_shown(text)} (use e.g. 64MiB, 10MB or a number of bytes)")
    unit = (match.group(2) or "").lower()
    size = float(match.group(1)) * _SIZE_UNITS[unit]
    if size > MAX_SIZE:
        raise ValueError(f"size {_shown(text)} is too large (at most {MAX_SIZE} bytes)")
    return int(size)


def _shown(text: str) -> str:
    """A value as quoted in an error message: repr, cut short so the message stays one short line."""
    return repr(text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX] + "…")
