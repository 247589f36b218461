"""AWS event stream (``application/vnd.amazon.eventstream``) → Anthropic server-sent events.

Bedrock's ``InvokeModelWithResponseStream`` answers with binary frames; each ``chunk`` event
carries ``{"bytes": "<base64 of an Anthropic stream event>"}``. The decoder turns every complete
frame into the SSE event the Anthropic API would have sent (``event: <type>\\ndata: <json>\\n\\n``),
so the relay, the interceptor and the client see a plain Anthropic stream. Exception frames
become an Anthropic ``error`` event. Frames are parsed (and their CRCs checked) by botocore.
"""

from __future__ import annotations

import base64

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from bridge.errors import ANTHROPIC, stream_error_event
from bridge.intercept.base import json_object

#: AWS error names (HTTP ``x-amzn-ErrorType`` or a stream's ``:exception-type``, compared in lower
#: case) → the status an Anthropic client gets; the Anthropic error type follows from it
#: (bridge.errors: 400 invalid_request_error, 403 permission_error, 404 not_found_error,
#: 429 rate_limit_error, 500 api_error, 504 timeout_error, 529 overloaded_error).
AWS_ERROR_STATUS = {
    "validationexception": 400,
    # Credential and signature problems are the gateway's, not the caller's: never a 401, which
    # would make a client ask its user to log in again.
    "accessdeniedexception": 403,
    "unrecognizedclientexception": 403,
    "invalidsignatureexception": 403,
    "incompletesignatureexception": 403,
    "missingauthenticationtokenexception": 403,
    "expiredtokenexception": 403,
    "resourcenotfoundexception": 404,
    "throttlingexception": 429,
    "servicequotaexceededexception": 429,
    "modeltimeoutexception": 504,
    "modelerrorexception": 500,
    "modelstreamerrorexception": 500,
    "internalserverexception": 500,
    # Temporary capacity problems: Anthropic's own "overloaded" answer, which SDKs retry.
    "serviceunavailableexception": 529,
    "modelnotreadyexception": 529,
}
#: Bedrock's invocation metrics, added to the last event; not part of the Anthropic event.
_METRICS_KEY = "amazon-bedrock-invocationMetrics"


def aws_error_status(error_type: str | None, status: int, payload: dict | None = None) -> int:
    """The client-facing status for a Bedrock error. A model error that names the model's own
    status (``originalStatusCode``, e.g. 529) keeps that one."""
    original = (payload or {}).get("originalStatusCode")
    if isinstance(original, int) and 400 <= original <= 599:
        return original
    known = AWS_ERROR_STATUS.get((error_type or "").lower())
    if known is not None:
        return known
    return status if 400 <= status <= 599 else 500


def aws_error_message(payload: dict | None, fallback: str) -> str:
    """The message of an AWS error body (``message`` or ``Message``)."""
    payload = payload or {}
    message = payload.get("message") or payload.get("Message") or payload.get("originalMessage")
    return message if isinstance(message, str) and message else fallback


class EventStreamDecoder:
    """Feed event-stream bytes as they arrive; get back the Anthropic SSE bytes of the frames they complete."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._broken = False

    def feed(self, data: bytes) -> bytes:
        if self._broken:  # after a corrupt frame nothing that follows can be trusted
            return b""
        self._buffer.add_data(data)
        out = []
        try:
            for message in self._buffer:
                out.append(_sse(message))
        except ParserError as exc:
            self._broken = True
            out.append(stream_error_event(ANTHROPIC, 502, f"Bedrock sent a malformed event stream ({type(exc).__name__})"))
        return b"".join(out)


def _sse(message: EventStreamMessage) -> bytes:
    headers = message.headers
    kind = headers.get(":message-type")
    if kind == "event":
        if headers.get(":event-type") != "chunk":
            return b""  # no other event type carries model output
        return _chunk_event(message.payload)
    if kind == "exception":
        error_type = headers.get(":exception-type")
        payload = json_object(message.payload)
    else:  # "error": the code and message come in headers
        error_type = headers.get(":error-code")
        payload = {"message": headers.get(":error-message")}
    status = aws_error_status(error_type, 500, payload)
    return stream_error_event(ANTHROPIC, status, aws_error_message(payload, f"Bedrock stream error ({error_type})"))


def _chunk_event(payload: bytes) -> bytes:
    chunk = json_object(payload)
    encoded = chunk.get("bytes") if chunk else None
    if not isinstance(encoded, str):
        return b""
    data = base64.b64decode(encoded)
    event = json_object(data)
    if event is None or not isinstance(event.get("type"), str):
        return b""  # not a Messages event: nothing an Anthropic client could read
    if _METRICS_KEY in event:
        del event[_METRICS_KEY]
        data = orjson.dumps(event)
    return b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n"

