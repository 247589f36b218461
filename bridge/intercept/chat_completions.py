"""OpenAI Chat Completions (``POST v1/chat/completions``) and the compatible APIs that copy it.

Usage is only sent on streams when asked for, so the gateway asks for it itself
(``stream_options.include_usage``) and hides what that changes from the client: the extra
usage-only chunk, and the ``"usage":null`` member the provider then adds to every other chunk.
"""

from __future__ import annotations

import re

import orjson

from bridge.intercept.base import Interceptor, check_field
from bridge.intercept.sse import Event

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


class ChatCompletionsInterceptor(Interceptor):
    def __init__(self, body: dict, raw_body: bytes, *, include_usage: bool = True) -> None:
        self._include_usage = include_usage
        super().__init__(body, raw_body)

    def validate(self) -> None:
        check_field(self.body, "messages", (list,), required=True)
        options = check_field(self.body, "stream_options", (dict,), nullable=True)
        if self.streaming and self._include_usage and not (options or {}).get("include_usage") is True:
            self.rewrites_stream = True

    def upstream_body(self) -> bytes:
        if not self.rewrites_stream:
            return self.raw_body
        body = dict(self.body)
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return orjson.dumps(body)

    def relay_event(self, event: Event) -> bytes:
        self.observe_event(event)
        if b'"usage"' not in event.data:
            return event.raw
        if _is_usage_only_chunk(event.data):
            return b""
        return _USAGE_NULL.sub(b"", event.raw)


def _is_usage_only_chunk(data: bytes) -> bool:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and chunk.get("usage") is not None
