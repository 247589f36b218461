"""What every interceptor shares: body checks, and the hooks the relay calls while bytes pass."""

from __future__ import annotations

from typing import Any

from bridge.errors import GatewayError
from bridge.intercept.sse import Event

_TYPE_NAMES = {str: "a string", bool: "a boolean", list: "an array", dict: "an object"}


def check_field(body: dict, field: str, types: tuple[type, ...], *, required: bool = False,
                nullable: bool = False) -> Any:
    """Return ``body[field]`` after checking its type; a wrong one is a 400 naming the field."""
    if field not in body:
        if required:
            raise GatewayError(400, f"{field}: field required", param=field)
        return None
    value = body[field]
    if value is None and nullable:
        return None
    # bool is an int subclass and JSON has no other overlap, so an exact type check is right here.
    if type(value) not in types:
        expected = " or ".join(_TYPE_NAMES[t] for t in types)
        raise GatewayError(400, f"{field}: expected {expected}", param=field)
    return value


class Interceptor:
    """One intercepted call of one API shape.

    The relay gives it the parsed request body, asks it for the bytes to send upstream, and shows
    it the response: every SSE event of a stream, or the whole body of a blocking answer.
    """

    #: Streams this interceptor changes (rather than only reads) are relayed as whole events.
    rewrites_stream = False

    def __init__(self, body: dict, raw_body: bytes) -> None:
        self.body = body
        self.raw_body = raw_body
        self.model: str = check_field(body, "model", (str,), required=True)
        self.streaming: bool = bool(check_field(body, "stream", (bool,)))
        self.validate()

    def validate(self) -> None:
        """Check the API-specific fields the gateway reads itself."""

    def upstream_body(self) -> bytes:
        """The request body sent upstream: the client's bytes, unless the interceptor must add something."""
        return self.raw_body

    def relay_event(self, event: Event) -> bytes:
        """For rewriting interceptors: the bytes the client gets for this upstream event."""
        self.observe_event(event)
        return event.raw

    def observe_event(self, event: Event) -> None:
        """See one upstream SSE event (recording hook)."""

    def observe_response(self, status: int, body: bytes) -> None:
        """See a whole non-streamed response (recording hook)."""
