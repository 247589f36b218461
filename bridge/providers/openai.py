"""OpenAI and OpenAI-compatible APIs. The base URL carries the version (``https://api.openai.com/v1/``)."""

from __future__ import annotations

from bridge import errors
from bridge.intercept.chat_completions import ChatCompletionsInterceptor
from bridge.intercept.responses import ResponsesInterceptor
from bridge.providers.base import Provider


def chat_completions(provider: Provider, body: dict, raw: bytes) -> ChatCompletionsInterceptor:
    return ChatCompletionsInterceptor(body, raw, include_usage=provider.settings.include_usage)


def responses(provider: Provider, body: dict, raw: bytes) -> ResponsesInterceptor:
    return ResponsesInterceptor(body, raw)


class OpenAIProvider(Provider):
    type = "openai"
    shape = errors.OPENAI
    route_prefix = "v1/"
    key_header = ("Authorization", "Bearer ")
    intercepted = {"v1/chat/completions": chat_completions, "v1/responses": responses}
    passthrough = (
        "v1/models", "v1/models/*",
        "v1/responses/*",
        "v1/conversations", "v1/conversations/*",
    )
