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


def call_anthropic(client: anthropic.Anthropic, request: dict, stream: bool) -> dict[str, Any]:
    """What the SDK gives: the message or the list of events, and the error it raised, if any."""
    kwargs = _split_kwargs(client.messages.create, request)
    events: list[dict] = []
    try:
        if not stream:
            return {"message": client.messages.create(**kwargs).model_dump()}
        with client.messages.create(**kwargs, stream=True) as events_stream:
            for event in events_stream:
                events.append(event.model_dump())
        return {"events": events}
    except anthropic.APIStatusError as error:
        return {"events": events, "error": (type(error).__name__, error.status_code, error.body)}
    except anthropic.APIError as error:
        return {"events": events, "error": (type(error).__name__, None, error.body)}
    except httpx.HTTPError as error:  # the connection itself broke (a cut stream, straight from upstream)
        return {"events": events, "error": ("transport", type(error).__name__, None)}


def call_openai(client: openai.OpenAI, request: dict, stream: bool) -> dict[str, Any]:
    kwargs = _split_kwargs(client.chat.completions.create, request)
    chunks: list[dict] = []
    try:
        if not stream:
            return {"completion": client.chat.completions.create(**kwargs).model_dump()}
        with client.chat.completions.create(**kwargs, stream=True) as chunk_stream:
            for chunk in chunk_stream:
                chunks.append(chunk.model_dump())
        return {"chunks": chunks}
    except openai.APIStatusError as error:
        return {"chunks": chunks, "error": (type(error).__name__, error.status_code, error.body)}
    except openai.APIError as error:
        return {"chunks": chunks, "error": (type(error).__name__, None, error.body)}
    except httpx.HTTPError as error:
        return {"chunks": chunks, "error": ("transport", type(error).__name__, None)}


def call_responses(client: openai.OpenAI, request: dict, stream: bool) -> dict[str, Any]:
    kwargs = _split_kwargs(client.responses.create, request)
    events: list[dict] = []
    try:
        if not stream:
            return {"response": client.responses.create(**kwargs).model_dump()}
        with client.responses.create(**kwargs, stream=True) as event_stream:
            for event in event_stream:
                events.append(event.model_dump())
        return {"events": events}
    except openai.APIStatusError as error:
        return {"events": events, "error": (type(error).__name__, error.status_code, error.body)}
    except openai.APIError as error:
        return {"events": events, "error": (type(error).__name__, None, error.body)}
    except httpx.HTTPError as error:
        return {"events": events, "error": ("transport", type(error).__name__, None)}
