"""Calling the official SDKs with a recorded request, and reducing what they return to comparable data."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx  # the transport both SDKs are built on
import openai

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_fixtures(api: str) -> list[tuple[str, dict]]:
    return [(f"{api}/{path.stem}", json.loads(path.read_text())) for path in sorted((FIXTURES / api).glob("*.json"))]


def _split_kwargs(method, body: dict) -> dict:
    """Known parameters as keywords, the rest through extra_body (as a user of the SDK would)."""
    known = set(inspect.signature(method).parameters)
    kwargs = {key: value for key, value in body.items() if key in known}
    extra = {key: value for key, value in body.items() if key not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def anthropic_client(base_url: str, api_key: str, fixture: str | None = None, **headers: str) -> anthropic.Anthropic:
    default_headers = {"X-Fixture": fixture, **headers} if fixture else dict(headers)
    return anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=30, default_headers=default_headers)


def openai_client(base_url: str, api_key: str, fixture: str | None = None, **headers: str) -> openai.OpenAI:
    default_headers = {"X-Fixture": fixture, **headers} if fixture else dict(headers)
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30, default_headers=default_headers)


def _call(sdk, create, request: dict, stream: bool, whole: str, items: str) -> dict[str, Any]:
    """What the SDK gives: the whole answer (``whole``) or the list of streamed ``items``, and the
    error it raised, if any (its class, status and body; "transport" when the connection broke)."""
    kwargs = _split_kwargs(create, request)
    streamed: list[dict] = []
    try:
        if not stream:
            return {whole: create(**kwargs).model_dump()}
        with create(**kwargs, stream=True) as events:
            for event in events:
                streamed.append(event.model_dump())
        return {items: streamed}
    except sdk.APIStatusError as error:
        return {items: streamed, "error": (type(error).__name__, error.status_code, error.body)}
    except sdk.APIError as error:
        return {items: streamed, "error": (type(error).__name__, None, error.body)}
    except httpx.HTTPError as error:  # the connection itself broke (a cut stream, straight from upstream)
        return {items: streamed, "error": ("transport", type(error).__name__, None)}


def call_anthropic(client: anthropic.Anthropic, request: dict, stream: bool) -> dict[str, Any]:
    return _call(anthropic, client.messages.create, request, stream, "message", "events")


def call_openai(client: openai.OpenAI, request: dict, stream: bool) -> dict[str, Any]:
    return _call(openai, client.chat.completions.create, request, stream, "completion", "chunks")


def call_responses(client: openai.OpenAI, request: dict, stream: bool) -> dict[str, Any]:
    return _call(openai, client.responses.create, request, stream, "response", "events")
