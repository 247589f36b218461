"""The common record (SPEC §1, §6): what the five kinds of audit record are made of, and the
marshmallow schemas that normalize each provider's payload into them.

marshmallow normalizes each provider's usage payload into one ``TokenUsage``, once per response
(never per stream chunk). The records themselves are typed objects (``InterceptionRecord``,
``TokenUsageRecord``, ...), built by bridge.interception and carried through the recorder to the
store, which alone turns them into rows. Their schemas load them back from JSON (the recorder's
journal), checking every field; they are built directly on the hot path (a marshmallow load per
record cost more than the rest of the record together).
"""

from __future__ import annotations

import os
import time
from dataclasses import MISSING, dataclass, field, fields as dataclass_fields
from typing import Any, ClassVar

import orjson
from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, post_load


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


#: No call counts more tokens; a figure past it (or below 0) is an upstream's error, recorded as 0: it would
#: overflow the store's 64-bit columns and sums (stalling every record) or lower a user's budgeted spend.
MAX_TOKEN_COUNT = 2**40


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT else 0


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


# --- Records ------------------------------------------------------------------------------------
# One class per record table, fields in the table's column order (the store's columns are these),
# required where the column is NOT NULL; built with keywords. JSON columns (``metadata``, a tool
# call's ``input``) hold Python values or JSON text; the store writes them as JSON text. Times are
# store timestamps (bridge.timestamps.utc_now).


@dataclass(slots=True, kw_only=True)
class InterceptionRecord:
    """An interception as it begins (aibridge_interceptions); its end is an ``InterceptionEndRecord``."""

    TABLE: ClassVar[str] = "aibridge_interceptions"
    id: str
    initiator_id: str | None = None
    provider: str | None = None
    provider_name: str | None = None
    model: str | None = None
    client: str | None = None
    client_session_id: str | None = None
    user_agent: str | None = None
    credential_kind: str | None = None
    credential_hint: str | None = None
    correlating_tool_call_id: str | None = None
    started_at: str
    ended_at: str | None = None
    metadata: Any = None
    owner: str | None = None  # the process serving it: its interceptions are ended if it stops


@dataclass(slots=True, kw_only=True)
class InterceptionEndRecord:
    """An interception's end: its time, and metadata merged into what it began with (None: nothing)."""

    id: str
    ended_at: str
    metadata: Any = None


@dataclass(slots=True, kw_only=True)
class TokenUsageRecord:
    TABLE: ClassVar[str] = "aibridge_token_usages"
    id: str
    interception_id: str
    provider_response_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    metadata: Any = None
    created_at: str
    #: USD, priced when recorded (bridge.pricing); None: the model has no price. Last: the column came
    #: with store migration 0009 (PostgreSQL 0006).
    cost_usd: float | None = None


@dataclass(slots=True, kw_only=True)
class PromptRecord:
    TABLE: ClassVar[str] = "aibridge_user_prompts"
    id: str
    interception_id: str
    provider_response_id: str | None = None
    prompt: str | None = None
    metadata: Any = None
    created_at: str


@dataclass(slots=True, kw_only=True)
class ToolUsageRecord:
    TABLE: ClassVar[str] = "aibridge_tool_usages"
    id: str
    interception_id: str
    provider_response_id: str | None = None
    provider_tool_call_id: str | None = None
    tool: str | None = None
    input: Any = None  # the arguments: JSON text as the model sent them (or a cut text's JSON string)
    server_url: str | None = None
    injected: bool = False
    invocation_error: str | None = None
    metadata: Any = None
    created_at: str


@dataclass(slots=True, kw_only=True)
class ThoughtRecord:
    TABLE: ClassVar[str] = "aibridge_model_thoughts"
    id: str
    interception_id: str
    content: str | None = None
    metadata: Any = None
    created_at: str


#: The record classes of the tables an interception's end adds rows to, by the name of their list
#: (``InterceptionEnd``, the store's ``RecordBatch``), in the order they are written and listed.
CHILD_RECORDS: dict[str, type] = {
    "token_usages": TokenUsageRecord,
    "user_prompts": PromptRecord,
    "tool_usages": ToolUsageRecord,
    "model_thoughts": ThoughtRecord,
}
#: Every table's record class.
TABLE_RECORDS: dict[str, type] = {cls.TABLE: cls for cls in (InterceptionRecord, *CHILD_RECORDS.values())}


def record_columns(cls: type) -> tuple[str, ...]:
    """A record class's fields: its table's columns, in order."""
    return tuple(f.name for f in dataclass_fields(cls))


_FIELD_TYPES = {"str": fields.String, "int": fields.Integer, "float": fields.Float, "bool": fields.Boolean}


def _record_schema(cls: type) -> Schema:
    """A schema loading ``cls`` from its JSON form, every field checked; an unknown one refused."""
    declared: dict[str, Any] = {}
    for f in dataclass_fields(cls):
        kind = f.type.split(" | ")[0]  # annotations are text (from __future__ import annotations)
        required = f.default is MISSING and f.default_factory is MISSING
        if kind == "Any":
            declared[f.name] = fields.Raw(required=required, allow_none=True)
        else:
            declared[f.name] = _FIELD_TYPES[kind](required=required, allow_none="None" in f.type or not required)
    declared["Meta"] = type("Meta", (), {"unknown": RAISE})
    declared["make"] = post_load(lambda self, data, **_: cls(**data))
    return type(f"{cls.__name__}Schema", (Schema,), declared)()


_SCHEMAS = {cls: _record_schema(cls) for cls in (InterceptionRecord, InterceptionEndRecord, *CHILD_RECORDS.values())}


def load_record(cls: type, data: Any) -> Any:
    """A record of class ``cls`` from its JSON form (a dict); ValueError naming what is wrong."""
    try:
        return _SCHEMAS[cls].load(data)
    except ValidationError as exc:
        raise ValueError(f"{cls.__name__}: {_problems(exc.messages)}") from None


def _problems(messages: Any) -> str:
    """marshmallow's messages (``{"field": ["Unknown field."]}``) as one line."""
    if isinstance(messages, dict):
        return "; ".join(f"{name}: {_problems(problem)}" for name, problem in sorted(messages.items()))
    if isinstance(messages, list):
        return " ".join(str(message) for message in messages)
    return str(messages)


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
