"""OpenAI and OpenAI-compatible APIs. The base URL carries the version (``https://api.openai.com/v1/``)."""

from __future__ import annotations

from bridge import errors
from bridge.intercept.chat_completions import ChatCompletionsInterceptor
from bridge.providers.base import Provider


class OpenAIProvider(Provider):
    type = "openai"
    shape = errors.OPENAI
    route_prefix = "v1/"
    key_header = ("Authorization", "Bearer ")
    intercepted = {
        "v1/chat/completions": lambda provider, body, raw: ChatCompletionsInterceptor(
            body, raw, include_usage=provider.settings.include_usage),
    }
    passthrough = (
        "v1/models", "v1/models/*",
        "v1/responses/*",
        "v1/conversations", "v1/conversations/*",
    )
