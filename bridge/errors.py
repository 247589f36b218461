"""Errors the gateway answers itself, in the shape of the provider the client talks to.

Each SDK raises its usual exception class from these bodies (e.g. ``anthropic.AuthenticationError``,
``openai.AuthenticationError``), so a client cannot tell a gateway refusal from a provider one.
"""

from __future__ import annotations

import orjson

OPENAI = "openai"
ANTHROPIC = "anthropic"

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",  # the client's request body came too slowly
    413: "request_too_large",
    429: "rate_limit_error",
    501: "invalid_request_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "unknown_url"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    501: ("invalid_request_error", "unsupported"),
    502: ("server_error", "upstream_unreachable"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "upstream_timeout"),
}


class GatewayError(Exception):
    """A refusal or failure the gateway reports to the client with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        #: OpenAI's error type and code when the status's usual ones do not say it (``insufficient_quota``).
        self.code = code


def error_object(shape: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The provider's error object: the body of an HTTP error or the payload of a stream error event.
    ``code``: OpenAI's type and code instead of the status's (Anthropic has one type per status)."""
    if shape == ANTHROPIC:
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    kind, usual = (code, code) if code is not None else _OPENAI_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": usual}}


def error_body(shape: str, status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps(error_object(shape, status, message, param, code))


def stream_error_event(shape: str, status: int, message: str) -> bytes:
    """An SSE event that makes the provider's SDK raise mid-stream, as the provider's own error event does."""
    payload = orjson.dumps(error_object(shape, status, message))
    if shape == ANTHROPIC:
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"
