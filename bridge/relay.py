"""Relaying a streamed answer: the upstream's bytes to the client as they arrive, each run of whole
events reported to an observer (the interception) that reads them for the record.

The relay moves bytes and reports; what is recorded, and how an event is read or rewritten, is the
observer's. The upstream connection is bridge.upstream's.
"""

from __future__ import annotations

import socket
import weakref
from typing import Iterator, Protocol

import requests
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from bridge.content_coding import Inflater, content_coding
from bridge.intercept.sse import Event, SSESplitter, last_event
from bridge.sockets import readable_now
from bridge.upstream import failure_reason

STREAM_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
_READ_SIZE = 65536
_UNSEEN_READS_MAX = 16  # reads relayed ahead of the observer at most, when the upstream sends faster than it reads


def _blank(data: bytes) -> bool:
    """``not data.strip()``, without copying ``data`` (up to all the reads not yet shown to the observer)."""
    return not data or data.isspace()


class StreamDecoder(Protocol):
    """Turns an upstream's stream bytes into SSE bytes (e.g. AWS event stream frames)."""

    def feed(self, data: bytes) -> bytes: ...


class StreamObserver(Protocol):
    """What a relay reports to. None of these raise: an event the observer cannot read is relayed as
    it came (it keeps the count for the record)."""

    #: Whether the client gets the events as ``rewrite`` makes them (then only whole events are relayed).
    rewrites_stream: bool

    def rewrite(self, events: bytes) -> bytes:
        """Whole events as the client gets them."""

    def observe(self, events: bytes) -> None:
        """Whole events relayed to the client, in order (a run of one or more)."""

    def ends_stream(self, event: Event) -> bool:
        """Whether ``event`` (the stream's last) is one the provider ends a stream with."""

    def read_stopped(self, reason: str) -> None:
        """The rest of the stream cannot be read (but is relayed): ``reason`` says why."""

    def on_failure(self, status: int, message: str) -> bytes:
        """The stream failed (``status`` as if it had failed before the first byte): the provider's
        error event that ends it for the client."""

    def on_end(self, reason: str | None) -> None:
        """The relay is over (``reason``: why it was cut short on the client's side, if it was).
        Called at least once; only the first call counts."""


class StreamRelay:
    """The response body of a relayed stream: the upstream's SSE bytes as they arrive, with the
    observer seeing every event.

    A stream that breaks or stalls upstream, or ends before the provider's final event (e.g. a
    stream without length or chunks, whose end is the connection's), ends with the provider's error
    event, so the client's SDK raises instead of waiting or taking a cut stream for a finished one.
    A stream the upstream compressed (unasked) is relayed as it came, inflated only to be read
    (bridge.content_coding), and not rewritten. ``close()`` (the WSGI
    server calls it once the response is over: after its last byte went out, or the client went
    away) closes the upstream connection and reports the end to the observer, even if the body was
    never iterated. The record is made there and not at the last event, so the client is not kept
    waiting for the end of its response while the gateway builds the record.

    Every relay of the process is registered until it is closed, so that a stopping worker can
    end the streams still in flight (``abort``) before it is killed.
    """

    _in_flight: "weakref.WeakSet[StreamRelay]" = weakref.WeakSet()

    def __init__(self, upstream: requests.Response, observer: StreamObserver, provider_name: str,
                 decoder: StreamDecoder | None = None) -> None:
        self._upstream = upstream
        self._decoder = decoder  # turns a non-SSE upstream stream (Bedrock's) into the SSE the client gets
        self._observer = observer
        self._provider_name = provider_name
        self._events: Iterator[bytes] | None = None
        self._splitter = SSESplitter()
        self._unseen: list[bytes] = []  # relayed, not yet shown to the observer
        self._last_run = b""  # the last whole events shown to the observer
        coding = content_coding(upstream.headers.items())
        self._inflater = Inflater(coding) if coding else None  # for the decoder if there is one, else the record
        self._abort_reason: str | None = None
        self._read_stopped = False  # the rest of a compressed stream could not be inflated for the observer
        self._end_reason: str | None = None
        StreamRelay._in_flight.add(self)

    @classmethod
    def in_flight(cls) -> list[StreamRelay]:
        """The relays of this process not closed yet."""
        return list(cls._in_flight)

    @property
    def closed(self) -> bool:
        return self not in StreamRelay._in_flight

    def abort(self, reason: str) -> None:
        """End the stream early: the upstream connection is shut down, so the read waiting on it
        returns, and the client gets the provider's error event saying ``reason``. A stream whose
        upstream answer is already whole (its connection released) is left to finish."""
        sock = getattr(self._upstream.raw.connection, "sock", None)
        if sock is None:
            return
        self._abort_reason = reason
        try:
            # Through a duplicate descriptor: a TLS socket's own shutdown() would also unwrap it
            # under the read in progress. Shutting down the connection wakes that read.
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed meanwhile: the read ends anyway
            pass

    def report_end(self) -> None:
        """Report the end now, for a stream whose close has not come (its client is not reading):
        its record is written while the worker can still write it."""
        self._observer.on_end(None)

    def __iter__(self) -> Iterator[bytes]:
        self._events = self._relay()
        return self._events

    def _relay(self) -> Iterator[bytes]:
        observer = self._observer
        framer = SSESplitter()  # cuts a rewritten stream at event boundaries
        read1 = self._upstream.raw.read1
        rewrite = observer.rewrites_stream and self._inflater is None  # compressed: relayed as it came
        decoder = self._decoder
        try:
            while True:
                try:
                    chunk = read1(_READ_SIZE, decode_content=False)
                except ReadTimeoutError:
                    yield self._fail(504, f"upstream of provider {self._provider_name!r} stopped sending mid-stream")
                    return
                except (ProtocolError, OSError) as exc:
                    yield self._fail(502, f"upstream of provider {self._provider_name!r} broke off the stream ({failure_reason(exc)})")
                    return
                if not chunk:
                    break
                if decoder is not None:
                    chunk = self._decoded(chunk)
                    if not chunk and not self._undecodable():  # no whole frame yet
                        continue
                if rewrite:  # whole events only, rewritten as one run
                    chunk = framer.feed_whole(chunk)
                    out = observer.rewrite(chunk) if chunk else b""
                else:
                    out = chunk
                # The bytes go out first; reading them for the record waits until the upstream makes
                # the gateway wait, so the end of a stream that came at once is not held up by it.
                if chunk:
                    self._unseen.append(chunk)
                if out:
                    yield out
                if decoder is not None and self._undecodable():
                    yield self._fail(502, f"the stream of provider {self._provider_name!r} cannot be read: "
                                          f"{self._inflater.stopped}")
                    return
                if len(self._unseen) >= _UNSEEN_READS_MAX or not self._next_read_ready():
                    self._observe_unseen()
            rest = b""
            if rewrite:
                rest = framer.remainder()
                if rest:
                    yield rest
            # A clean end is the provider's only if its last event says so (a stream without length or
            # chunks ends with the connection, cut or not).
            if not self._ends_as_provider_ends_it(rest):
                yield self._fail(502, f"upstream of provider {self._provider_name!r} closed the stream "
                                      "before its final event")
        except GeneratorExit:
            self._end_reason = "client disconnected"
            raise
        finally:
            self._upstream.close()

    def _next_read_ready(self) -> bool:
        """Whether the next read returns at once: the answer's whole length is read, or bytes (or the
        connection's end) wait on the socket."""
        raw = self._upstream.raw
        if raw.length_remaining == 0:
            return True
        sock = getattr(raw.connection, "sock", None)
        return sock is not None and readable_now(sock)

    def _decoded(self, data: bytes) -> bytes:
        """The SSE bytes the decoder makes of upstream bytes (inflated first, if compressed)."""
        if self._inflater is None:
            return self._decoder.feed(data)
        return b"".join([self._decoder.feed(piece) for piece in self._inflater.feed(data)])

    def _undecodable(self) -> bool:
        """Whether the rest of a compressed stream cannot be inflated for the decoder (see Inflater.stopped)."""
        return self._inflater is not None and self._inflater.stopped is not None

    def _observe_unseen(self) -> None:
        """Show the observer the events of every read relayed but not yet read for the record, in order."""
        unseen, self._unseen = self._unseen, []
        data = b"".join(unseen)
        inflater = self._inflater if self._decoder is None else None  # a decoder's output is plain SSE
        if inflater is None:
            self._observe_run(self._splitter.feed_whole(data))
            return
        for piece in inflater.feed(data):
            self._observe_run(self._splitter.feed_whole(piece))
        if inflater.stopped and not self._read_stopped:
            self._read_stopped = True
            self._observer.read_stopped(inflater.stopped)

    def _observe_run(self, run: bytes) -> None:
        if run:
            self._last_run = run
            self._observer.observe(run)

    def _ends_as_provider_ends_it(self, unfinished: bytes) -> bool:
        """Whether the stream's last event (``unfinished``: a rewritten stream's event without its
        blank line, if any) is one the provider ends a stream with: its final event or an error. True
        as well when the stream could not be read to its end (no way to tell).

        Only that event is parsed: the reads not yet shown to the observer are shown to it
        after the client has its end (in close()), unless they must be inflated first."""
        if self._inflater is not None and self._decoder is None:
            self._observe_unseen()  # compressed: only the inflated events can be looked at
            unfinished = unfinished or self._splitter.pending
        if self._read_stopped:
            return True
        if _blank(unfinished):  # the stream's bytes since the last event read for the record
            if len(self._unseen) > 1:  # joined once: close() shows the observer these same bytes
                self._unseen = [b"".join(self._unseen)]
            unfinished = self._splitter.pending + self._unseen[0] if self._unseen else self._splitter.pending
        event = last_event(self._last_run if _blank(unfinished) else unfinished)
        return event is not None and self._observer.ends_stream(event)

    def _fail(self, status: int, message: str) -> bytes:
        if self._abort_reason:  # the read failed, or the stream was cut, because abort() shut the connection down
            status, message = 503, self._abort_reason
        return self._observer.on_failure(status, message)

    def close(self) -> None:
        StreamRelay._in_flight.discard(self)
        try:
            if self._events is not None:
                events, self._events = self._events, None
                events.close()
        finally:
            self._upstream.close()
            try:
                self._observe_unseen()
            finally:
                self._observer.on_end(self._end_reason)
