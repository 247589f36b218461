"""Through the gateway, the official SDKs return exactly what they return straight from the provider.

Every recorded fixture is replayed by the fake upstream; each is called once directly and once
through the gateway (real gunicorn, gevent workers), blocking and streaming.
"""

from __future__ import annotations

import pytest

from tests.sdk_calls import anthropic_client, call_anthropic, call_openai, call_responses, load_fixtures, openai_client

ANTHROPIC = load_fixtures("anthropic")
OPENAI = load_fixtures("openai_chat")
RESPONSES = load_fixtures("openai_responses")


def _modes(fixtures):
    return [pytest.param(name, fixture, stream, id=f"{name}-{'stream' if stream else 'blocking'}")
            for name, fixture in fixtures
            for stream, part in ((False, "blocking"), (True, "streaming")) if fixture.get(part)]


def _assert_same(direct: dict, through: dict, fixture: dict, stream: bool, items: str) -> None:
    if stream and fixture["streaming"].get("abort"):
        # A cut upstream stream reaches the SDK as the API's own error event after the same events
        # (it raises, or for the Responses API yields a "type": "error" event), instead of a bare
        # transport error or a silent truncation.
        assert direct["error"][0] in ("transport", "APIConnectionError")
        if "error" in through:
            assert through[items] == direct[items]
            assert through["error"][0] in ("APIStatusError", "APIError", "InternalServerError")
        else:
            assert through[items][:-1] == direct[items] and through[items][-1]["type"] == "error"
        return
    assert through == direct


@pytest.mark.parametrize("name, fixture, stream", _modes(ANTHROPIC))
def test_anthropic_sdk_same_through_gateway(name, fixture, stream, gateway, upstream, identities):
    direct = call_anthropic(anthropic_client(upstream.url, "direct-key", name), fixture["request"], stream)
    through = call_anthropic(anthropic_client(gateway.base("anthropic"), identities.alice, name), fixture["request"], stream)
    _assert_same(direct, through, fixture, stream, "events")


@pytest.mark.parametrize("name, fixture, stream", _modes(OPENAI))
def test_openai_sdk_same_through_gateway(name, fixture, stream, gateway, upstream, identities):
    direct = call_openai(openai_client(f"{upstream.url}/v1", "direct-key", name), fixture["request"], stream)
    through = call_openai(openai_client(f"{gateway.base('openai')}/v1", identities.alice, name), fixture["request"], stream)
    _assert_same(direct, through, fixture, stream, "chunks")


@pytest.mark.parametrize("name, fixture, stream", _modes(RESPONSES))
def test_openai_responses_sdk_same_through_gateway(name, fixture, stream, gateway, upstream, identities):
    direct = call_responses(openai_client(f"{upstream.url}/v1", "direct-key", name), fixture["request"], stream)
    through = call_responses(openai_client(f"{gateway.base('openai')}/v1", identities.alice, name), fixture["request"], stream)
    _assert_same(direct, through, fixture, stream, "events")


@pytest.mark.parametrize("name, fixture, stream", _modes(RESPONSES))
def test_copilot_responses_same_through_gateway(name, fixture, stream, gateway, upstream, identities):
    """Copilot speaks the same Responses API (without v1/), with the user's GitHub token."""
    direct = call_responses(openai_client(f"{upstream.url}/copilot", "ghu_direct", name), fixture["request"], stream)
    through = call_responses(openai_client(gateway.base("copilot"), "ghu_direct", name,
                                           **{"X-Coder-AI-Governance-Token": identities.alice}), fixture["request"], stream)
    _assert_same(direct, through, fixture, stream, "events")


@pytest.mark.parametrize("name, fixture", [(n, f) for n, f in OPENAI if f.get("streaming") and f["streaming"].get("events")
                                           and not f["streaming"].get("abort")])
def test_openai_stream_with_client_usage_request_is_untouched(name, fixture, gateway, upstream, identities):
    """A client that asks for usage itself gets the usage chunk, exactly as from the provider."""
    request = {**fixture["request"], "stream_options": {"include_usage": True}}
    direct = call_openai(openai_client(f"{upstream.url}/v1", "direct-key", name), request, True)
    through = call_openai(openai_client(f"{gateway.base('openai')}/v1", identities.alice, name), request, True)
    assert through == direct
    if "error" not in through:
        assert any(chunk["usage"] for chunk in through["chunks"])
