"""GitHub Copilot: OpenAI's wire format without a version prefix, always with the user's own
GitHub token (bring-your-own-key); the gateway token comes in X-Coder-AI-Governance-Token."""

from __future__ import annotations

from bridge import errors
from bridge.providers.base import Provider
from bridge.providers.openai import chat_completions, responses


class CopilotProvider(Provider):
    type = "copilot"
    shape = errors.OPENAI
    key_header = ("Authorization", "Bearer ")
    always_byok = True
    own_credential = "your GitHub token"
    intercepted = {"chat/completions": chat_completions, "responses": responses}
    passthrough = ("models", "models/*", "agents/*", ".well-known/*")
