"""Incremental splitting of a server-sent-event byte stream into whole events.

Upstream reads do not line up with events, so bytes are buffered only up to the next event
boundary. Events are returned as the exact bytes received, delimiter included, so that relaying
them keeps the stream byte for byte.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple


class Event(NamedTuple):
    raw: bytes           # the event's bytes as received, including its terminating blank line
    name: bytes | None   # the ``event:`` field, if any
    data: bytes          # the ``data:`` lines joined with b"\n"


def parse_event(raw: bytes) -> Event:
    # The usual forms first: one data line (OpenAI), or an event line and one data line (Anthropic).
    end = len(raw) - 2
    if raw.find(b"\r") < 0 and raw.endswith(b"\n\n"):
        if raw.startswith(b"data: ") and raw.find(b"\n") == end:
            return Event(raw, None, raw[6:end])
        if raw.startswith(b"event:"):
            line_end = raw.find(b"\n")
            if raw.startswith(b"data: ", line_end + 1) and raw.find(b"\n", line_end + 1) == end:
                return Event(raw, raw[6:line_end].strip(), raw[line_end + 7:end])
    lines = raw.splitlines()
    name = None
    data: list[bytes] = []
    for line in lines:
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return Event(raw, name, b"\n".join(data))


def _after_last_blank_line(run: bytes, low: int, high: int) -> int:
    """Index just past the last blank line (``\n\n`` or ``\r\n\r\n``) within ``run[low:high]``, or
    ``low`` if there is none."""
    lf = run.rfind(b"\n\n", low, high)
    # A \r\n\r\n ending later lies wholly after that \n\n: no need to scan the run before it again.
    crlf = run.rfind(b"\r\n\r\n", max(lf, low), high)
    return max(lf + 2 if lf >= 0 else low, crlf + 4 if crlf >= 0 else low)


def _next_blank_line(run: bytes, start: int, crlf_first: bool = False) -> tuple[int, bool]:
    """Index just past the first blank line at or after ``start`` (-1 if there is none), and whether
    it is ``\r\n\r\n``.

    The form expected (``crlf_first``) is looked for first, and the other only up to where that one
    was found: two unbounded searches would each scan to the end of a run of many events.
    """
    usual, other = (b"\r\n\r\n", b"\n\n") if crlf_first else (b"\n\n", b"\r\n\r\n")
    found = run.find(usual, start)
    earlier = run.find(other, start, found + len(usual) if found >= 0 else len(run))
    if earlier >= 0:
        return earlier + len(other), not crlf_first
    return (found + len(usual) if found >= 0 else -1), crlf_first


def event_around(run: bytes, index: int, low: int = 0) -> tuple[int, int]:
    """Start (not before ``low``) and end of the event holding ``run[index]``, in a run of whole events."""
    end, _ = _next_blank_line(run, index)
    return _after_last_blank_line(run, low, index), end if end >= 0 else len(run)


def last_event(run: bytes) -> Event | None:
    """The last event of a run of events (its blank line may be missing: a stream's unfinished end).
    Only the run's end is read (and copied): the run may be a whole stream."""
    end = _end_of_content(run)
    if not end:
        return None
    return parse_event(run[_after_last_blank_line(run, 0, end):])


def _end_of_content(run: bytes, step: int = 256) -> int:
    """``len(run.rstrip(b"\r\n"))``, copying ``step`` bytes at a time from the end, not the run."""
    end = len(run)
    while end:
        start = max(0, end - step)
        kept = len(run[start:end].rstrip(b"\r\n"))
        if kept:
            return start + kept
        end = start
    return 0


def events_holding(run: bytes, positions: Iterable[int]) -> Iterator[Event]:
    """The events of a run of whole events that hold the given (ascending) positions, each once, in order."""
    done = 0
    for position in positions:
        if position >= done:
            start, done = event_around(run, position, done)
            raw = run[start:done]
            if not raw.isspace():
                yield parse_event(raw)


class SSESplitter:
    """Feed raw bytes, get back the events they complete."""

    __slots__ = ("_buffer", "_crlf")

    def __init__(self) -> None:
        self._buffer = b""
        self._crlf = False  # the blank lines seen so far are \r\n\r\n

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events = []
        start = 0
        while True:
            end, self._crlf = _next_blank_line(buffer, start, self._crlf)
            if end < 0:
                break
            raw = buffer[start:end]
            if not raw.isspace():
                events.append(parse_event(raw))
            start = end
        self._buffer = buffer[start:]
        return events

    def feed_whole(self, chunk: bytes) -> bytes:
        """Feed raw bytes, get back the bytes of every event they complete, as one run (unparsed)."""
        buffer = self._buffer + chunk if self._buffer else chunk
        end = _after_last_blank_line(buffer, 0, len(buffer))
        self._buffer = buffer[end:]
        return buffer[:end]

    @property
    def pending(self) -> bytes:
        """Bytes fed that do not complete an event yet (left in place)."""
        return self._buffer

    def remainder(self) -> bytes:
        """Bytes of an unfinished last event (a stream cut mid-event)."""
        rest, self._buffer = self._buffer, b""
        return rest
