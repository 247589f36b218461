"""What the five kinds of audit record (SPEC §6) are made of, and the marshmallow schemas that
normalize each provider's usage into them.

marshmallow normalizes each provider's usage payload into one ``TokenUsage``, once per response
(never per stream chunk); the rows the store writes and structured logs carry are plain dicts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from marshmallow import INCLUDE, Schema, fields, post_load


_RANDOM_PARTS_PER_READ = 64
_RANDOM_PART_BYTES = 10  # 80 bits, 74 of which stay random (6 are the version and the variant)
_random_parts: list[int] = []  # read ahead, taken with list.pop (atomic: the writer thread makes ids too)
os.register_at_fork(after_in_child=_random_parts.clear)  # a forked worker must not reuse its parent's
_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62
_KEEP = ~((0xF << 76) | (0x3 << 62))


def new_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562): the creation time in milliseconds, then 74 random bits.

    Record ids are the primary key of every record table and index the child tables: ids that grow
    with time are added at the end of those indexes, where random ones (version 4) landed anywhere
    in them, so that a batch's writes cost more as the store grew (5x more at 60,000 interceptions).
    The random bits are read from the OS for 64 ids at a time (each read is a system call).
    """
    try:
        random_part = _random_parts.pop()
    except IndexError:
        block = os.urandom(_RANDOM_PART_BYTES * _RANDOM_PARTS_PER_READ)
        parts = [int.from_bytes(block[start:start + _RANDOM_PART_BYTES], "big")
                 for start in range(0, len(block), _RANDOM_PART_BYTES)]
        random_part = parts.pop()
        _random_parts.extend(parts)
    value = ((time.time_ns() // 1_000_000) << 80 | random_part) & _KEEP | _VERSION_7 | _VARIANT_RFC
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    #: Every other figure the provider sent (reasoning tokens, cache tiers, ...), flattened with dots.
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolCall:
    id: str | None
    name: str
    #: The arguments as the model sent them (JSON text).
    input: str


def call_arguments(text: str) -> str:
    """A function-style tool call's arguments (JSON text): a call sent without any (a stream whose
    argument fragments were all empty) is the empty object, as the blocking form records it."""
    return text if text and not text.isspace() else "{}"


@dataclass
class Thought:
    content: str
    source: str  # thinking | reasoning_summary | commentary | reasoning_content


def flatten_figures(payload: dict, skip: frozenset[str] = frozenset(), prefix: str = "") -> dict[str, Any]:
    """The numeric figures of a usage object, nested objects flattened with dots."""
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        name = prefix + key
        if name in skip or value is None:
            continue
        if isinstance(value, dict):
            flat.update(flatten_figures(value, skip, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class _UsageSchema(Schema):
    class Meta:
        unknown = INCLUDE  # providers add figures all the time; they go to metadata


class AnthropicUsageSchema(_UsageSchema):
    """Messages API usage; cache_write is ``cache_creation_input_tokens``."""

    input_tokens = fields.Integer(allow_none=True)
    output_tokens = fields.Integer(allow_none=True)
    cache_read_input_tokens = fields.Integer(allow_none=True)
    cache_creation_input_tokens = fields.Integer(allow_none=True)

    @post_load
    def to_usage(self, data: dict, **_: Any) -> TokenUsage:
        return TokenUsage(
            input_tokens=_count(data.get("input_tokens")),
            output_tokens=_count(data.get("output_tokens")),
            cache_read_input_tokens=_count(data.get("cache_read_input_tokens")),
            cache_write_input_tokens=_count(data.get("cache_creation_input_tokens")),
            metadata=flatten_figures(data, _ANTHROPIC_MAIN),
        )


_ANTHROPIC_MAIN = frozenset({"input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"})


class OpenAIUsageSchema(_UsageSchema):
    """Chat Completions (prompt/completion tokens) and Responses (input/output tokens) usage.

    Input is reported with the cached part included; the record keeps them apart.
    """

    prompt_tokens = fields.Integer(allow_none=True)
    completion_tokens = fields.Integer(allow_none=True)
    input_tokens = fields.Integer(allow_none=True)
    output_tokens = fields.Integer(allow_none=True)
    prompt_tokens_details = fields.Dict(allow_none=True)
    input_tokens_details = fields.Dict(allow_none=True)

    @post_load
    def to_usage(self, data: dict, **_: Any) -> TokenUsage:
        chat = "prompt_tokens" in data or "completion_tokens" in data
        details = data.get("prompt_tokens_details" if chat else "input_tokens_details") or {}
        cached = _count(details.get("cached_tokens"))
        prompt = _count(data.get("prompt_tokens" if chat else "input_tokens"))
        return TokenUsage(
            input_tokens=max(prompt - cached, 0),
            output_tokens=_count(data.get("completion_tokens" if chat else "output_tokens")),
            cache_read_input_tokens=cached,
            cache_write_input_tokens=_count(details.get("cache_write_tokens")),
            metadata=flatten_figures(data, _OPENAI_MAIN),
        )


_OPENAI_MAIN = frozenset({
    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
    "prompt_tokens_details.cached_tokens", "input_tokens_details.cached_tokens",
    "prompt_tokens_details.cache_write_tokens", "input_tokens_details.cache_write_tokens",
})

ANTHROPIC_USAGE = AnthropicUsageSchema()
OPENAI_USAGE = OpenAIUsageSchema()


# --- Rows ----------------------------------------------------------------------------------------
# Built as plain dicts (bridge.interception): the columns are text, integers and JSON text, and a
# marshmallow dump per row cost more than the rest of the record together.


def json_text(value: Any) -> str | None:
    """A JSON column: dicts and lists become JSON text; text is kept as it is."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def text(value: Any) -> str | None:
    """A text column from a provider's or client's JSON, which may hold any type where text belongs."""
    return value if value is None or isinstance(value, str) else str(value)


# --- Long texts ----------------------------------------------------------------------------------
# A prompt, tool input or thought is kept up to CODER_AIBRIDGE_MAX_RECORDED_TEXT bytes: a 60 MB
# prompt would otherwise be stored, logged twice and shown by the API whole.

#: Ends a text that was cut, saying how much more it had.
TRUNCATION_MARKER = "…[truncated: {} more]"
_ENCODE_STEP = 1024 * 1024  # characters encoded at a time to count a long text's bytes


def utf8_size(value: str) -> int:
    """Bytes of ``value`` in UTF-8, counted without encoding a long text whole."""
    if value.isascii():
        return len(value)
    return sum(len(value[start:start + _ENCODE_STEP].encode("utf-8", "replace"))
               for start in range(0, len(value), _ENCODE_STEP))


def cut_text(value: str, limit: int) -> tuple[str, int]:
    """``value`` cut to its first ``limit`` bytes of UTF-8 (whole characters), and the bytes left out."""
    if len(value) * 4 <= limit:  # at most 4 bytes a character: fits whatever it holds
        return value, 0
    size = utf8_size(value)
    if size <= limit:
        return value, 0
    head = value[:limit].encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")
    return head, size - utf8_size(head)


def size_text(count: int) -> str:
    """A byte count as people read it: ``512 bytes``, ``1.5 KiB``, ``59.9 MiB``."""
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 ** 2:
        return f"{count / 1024:.1f} KiB"
    if count < 1024 ** 3:
        return f"{count / 1024 ** 2:.1f} MiB"
    return f"{count / 1024 ** 3:.1f} GiB"
