"""Provider types: where each upstream lives, which routes it has, and how it is authenticated."""

from __future__ import annotations

from bridge.config import ProviderSettings
from bridge.providers.anthropic import AnthropicProvider
from bridge.providers.base import Provider
from bridge.providers.copilot import CopilotProvider
from bridge.providers.openai import OpenAIProvider

PROVIDER_TYPES: dict[str, type[Provider]] = {
    OpenAIProvider.type: OpenAIProvider,
    AnthropicProvider.type: AnthropicProvider,
    CopilotProvider.type: CopilotProvider,
}


def build_provider(settings: ProviderSettings) -> Provider:
    """The provider instance for one configured provider (an anthropic one with Bedrock settings talks to Bedrock)."""
    if settings.bedrock is not None:
        # Imported only where Bedrock is configured: botocore adds about 20 MB to every worker.
        from bridge.providers.bedrock import BedrockProvider

        return BedrockProvider(settings)
    return PROVIDER_TYPES[settings.type](settings)
