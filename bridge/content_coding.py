"""Compressed upstream answers: relayed as they are, inflated only for reading, and only so far.

The gateway asks upstreams for ``Accept-Encoding: identity``; one that compresses anyway has its
bytes and its ``Content-Encoding`` relayed as sent (the client's HTTP library inflates them, as it
would direct). The gateway inflates them only where it must read them (the record, Bedrock's event
stream), through an Inflater that stops after DECODED_MAX bytes: a gzip bomb (1 MB that inflates
to 1 GiB) costs a worker that much and no more.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Iterator

#: Inflated bytes read from one answer at most. Far above any real answer (a blocking one of 128k
#: output tokens is about 1 MB of JSON; a stream of it, about 20 MB of events), small enough that
#: a worker holds it without trouble.
DECODED_MAX = 32 * 1024 * 1024
_PIECE = 1024 * 1024  # inflated at a time: a stream is read for the record piece by piece
_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def content_coding(headers: Iterable[tuple[str, str]]) -> str | None:
    """The content coding of a body with these headers, lower case; None for none (or identity)."""
    for name, value in headers:
        if name.lower() == "content-encoding":
            coding = value.strip().lower()
            return coding if coding and coding != "identity" else None
    return None


class Inflater:
    """Feed a compressed body as it arrives; get back its inflated bytes, DECODED_MAX of them at most.

    ``stopped`` says why the rest is not given (None while everything was): the limit was reached,
    the coding is not one the gateway inflates (e.g. ``br``), or the bytes are not valid for it.
    """

    def __init__(self, coding: str, limit: int = DECODED_MAX) -> None:
        self.coding = coding
        self._left = limit
        self._limit = limit
        self._wbits = _WINDOW_BITS.get(coding)
        self._inflate = zlib.decompressobj(self._wbits) if self._wbits is not None else None
        self._started = False
        self.stopped: str | None = None if self._wbits is not None else f"content coding {coding!r} is not inflated"

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The inflated bytes of ``data``, in pieces of at most 1 MiB."""
        while data and self.stopped is None:
            if self._left <= 0:
                self.stopped = f"{self.coding} body inflates to more than {self._limit // (1024 * 1024)} MiB"
                return
            try:
                piece = self._inflate.decompress(data, min(_PIECE, self._left))
            except zlib.error:
                if self.coding == "deflate" and not self._started:  # "deflate" sent raw, without its zlib header
                    self._wbits = -zlib.MAX_WBITS
                    self._inflate = zlib.decompressobj(self._wbits)
                    self._started = True
                    continue
                self.stopped = f"{self.coding} body is corrupt"
                return
            self._started = True
            self._left -= len(piece)
            if piece:
                yield piece
            data = self._inflate.unconsumed_tail
            if self._inflate.eof:  # a member ended: another may follow (gzip allows several)
                data = self._inflate.unused_data + data
                self._inflate = zlib.decompressobj(self._wbits)

    def whole(self, data: bytes) -> bytes | None:
        """A whole body inflated, or None when it cannot be read whole (see ``stopped``)."""
        inflated = b"".join(self.feed(data))
        return None if self.stopped else inflated
