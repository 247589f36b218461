"""Incremental splitting of a server-sent-event byte stream into whole events.

Upstream reads do not line up with events, so bytes are buffered only up to the next event
boundary. Events are returned as the exact bytes received, delimiter included, so that relaying
them keeps the stream byte for byte.
"""

from __future__ import annotations

from typing import NamedTuple


class Event(NamedTuple):
    raw: bytes           # the event's bytes as received, including its terminating blank line
    name: bytes | None   # the ``event:`` field, if any
    data: bytes          # the ``data:`` lines joined with b"\n"


def parse_event(raw: bytes) -> Event:
    name = None
    data: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return Event(raw, name, b"\n".join(data))


class SSESplitter:
    """Feed raw bytes, get back the events they complete."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events = []
        start = 0
        while True:
            end = _event_end(buffer, start)
            if end < 0:
                break
            raw = buffer[start:end]
            if raw.strip():
                events.append(parse_event(raw))
            start = end
        self._buffer = buffer[start:]
        return events

    def remainder(self) -> bytes:
        """Bytes of an unfinished last event (a stream cut mid-event)."""
        rest, self._buffer = self._buffer, b""
        return rest


def _event_end(buffer: bytes, start: int) -> int:
    """Index just past the first blank line at or after ``start``, or -1."""
    lf = buffer.find(b"\n\n", start)
    crlf = buffer.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 4
    return lf + 2 if lf >= 0 else -1
