"""Anthropic Messages API (``POST v1/messages``), direct or through Bedrock."""

from __future__ import annotations

from bridge.intercept.base import Interceptor, check_field


class MessagesInterceptor(Interceptor):
    def validate(self) -> None:
        check_field(self.body, "messages", (list,), required=True)
