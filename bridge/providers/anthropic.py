"""Anthropic Messages API. The base URL has no version (``https://api.anthropic.com/``)."""

from __future__ import annotations

from bridge import errors
from bridge.intercept.messages import MessagesInterceptor
from bridge.providers.base import Provider


class AnthropicProvider(Provider):
    type = "anthropic"
    shape = errors.ANTHROPIC
    key_header = ("X-Api-Key", "")
    intercepted = {
        "v1/messages": lambda provider, body, raw: MessagesInterceptor(body, raw),
    }
    passthrough = ("v1/models", "v1/models/*", "v1/messages/count_tokens")
