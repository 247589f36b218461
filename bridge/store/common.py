"""What both store backends share that is plain Python: the record model, constants, and the
pure helpers behind the queries (rollup periods, result shaping). No queries here (base.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from bridge.records import (
    CHILD_RECORDS, TABLE_RECORDS, InterceptionEndRecord, InterceptionRecord, PromptRecord, ThoughtRecord,
    TokenUsageRecord, ToolUsageRecord, load_record, record_columns,
)

USERNAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
TOKEN_ID_LENGTH = 10
_TOKEN_ID_ALPHABET = string.ascii_lowercase + string.digits
# <10 lowercase alphanumerics>-<token_urlsafe(32): 43 chars of base64url>
_TOKEN_RE = re.compile(r"^([a-z0-9]{10})-([A-Za-z0-9_-]{43})$")
_TOKEN_NAME_MAX = 64

_USER_COLUMNS = "id, username, is_admin, created_at, deleted_at"
_TOKEN_COLUMNS = "t.id, t.user_id, u.username, t.name, t.created_at, t.expires_at, t.revoked_at, t.last_used_at"


class StoreError(ValueError):
    """A request the store refuses (unknown user, duplicate name, bad value); one-line message."""


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


# Interception records (SPEC §6): one record class per table (bridge.records), its fields the
# table's columns in schema order.
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {table: record_columns(cls) for table, cls in TABLE_RECORDS.items()}
# RecordBatch field -> child table, in the order they are written and listed.
CHILD_TABLES: dict[str, str] = {name: cls.TABLE for name, cls in CHILD_RECORDS.items()}
_JSON_COLUMNS = {"metadata", "input"}
# Values a None column gets (the schema's NOT NULL defaults).
_COLUMN_DEFAULTS: dict[str, Any] = {
    "metadata": "{}",
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_write_input_tokens": 0,
    "injected": 0,
}


@dataclass(slots=True)
class RecordBatch:
    """The records of one write_records() transaction (and one line of the recorder's journal).

    ``ends`` merge their metadata (a JSON object, as a Python value or JSON text; None: nothing) into
    the interception's.
    """

    interceptions: list[InterceptionRecord] = field(default_factory=list)
    ends: list[InterceptionEndRecord] = field(default_factory=list)
    token_usages: list[TokenUsageRecord] = field(default_factory=list)
    user_prompts: list[PromptRecord] = field(default_factory=list)
    tool_usages: list[ToolUsageRecord] = field(default_factory=list)
    model_thoughts: list[ThoughtRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.interceptions) + len(self.ends) + len(self.token_usages) + len(self.user_prompts)
                + len(self.tool_usages) + len(self.model_thoughts))

    def to_json(self) -> str:
        try:
            return orjson.dumps(self, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson cannot write (integers beyond 64 bits): the standard library can
            return json.dumps(_plain(self), separators=(",", ":"), ensure_ascii=False, default=str)

    @classmethod
    def from_json(cls, text: str) -> RecordBatch:
        """A batch from its JSON form (``to_json``); ValueError naming the first field that is wrong."""
        return cls.load(json.loads(text))

    @classmethod
    def load(cls, data: Any) -> RecordBatch:
        """A batch from plain data (``{"interceptions": [{...}], "ends": [...], ...}``), every record
        checked by its schema (bridge.records.load_record); ValueError naming what is wrong."""
        if not isinstance(data, dict) or not data.keys() <= _BATCH_RECORDS.keys():
            raise ValueError(f"a record batch is an object with lists {', '.join(_BATCH_RECORDS)}")
        batch = cls()
        for name, rows in data.items():
            if not isinstance(rows, list):
                raise ValueError(f"a record batch's {name} is a list")
            record_class = _BATCH_RECORDS[name]
            getattr(batch, name).extend(load_record(record_class, row) for row in rows)
        return batch

    def split(self) -> list[RecordBatch]:
        """One batch per interception, in first-seen order: isolates a record the store rejects."""
        parts: dict[str, RecordBatch] = {}
        for record in self.interceptions:
            parts.setdefault(record.id, RecordBatch()).interceptions.append(record)
        for end in self.ends:
            parts.setdefault(end.id, RecordBatch()).ends.append(end)
        for name in CHILD_TABLES:
            for record in getattr(self, name):
                getattr(parts.setdefault(record.interception_id, RecordBatch()), name).append(record)
        return list(parts.values())


_BATCH_RECORDS: dict[str, type] = {"interceptions": InterceptionRecord, "ends": InterceptionEndRecord, **CHILD_RECORDS}


def _plain(batch: RecordBatch) -> dict[str, list[dict[str, Any]]]:
    return {name: [{column: getattr(record, column) for column in record_columns(type(record))}
                   for record in getattr(batch, name)] for name in _BATCH_RECORDS}


#: The gateway processes that own interceptions (an interception's ``owner``), with their heartbeats.
PROCESSES_TABLE = "bridge_processes"


@dataclass(frozen=True)
class OwnerState:
    """The owner of open interceptions and what the store knows of its process (None: nothing, it
    never registered or was forgotten): where it runs, when it started and how long it has been silent."""

    owner: str | None
    host: str | None = None
    pid: int | None = None
    started_at: str | None = None
    last_seen: float | None = None  # its last heartbeat, in seconds since the epoch (the database's clock)
    silent_for: float | None = None  # seconds since that heartbeat (the database's clock)


def _json_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson cannot write (integers beyond 64 bits): the standard library can
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def auth_stamp_path(database_path: str) -> str:
    """A file whose change tells every gateway process that a token was revoked or a user deleted."""
    return database_path + ".auth-stamp"


def touch_auth_stamp(database_path: str) -> None:
    """Invalidate cached token lookups everywhere (they check this file's stat, a cheap syscall)."""
    path = auth_stamp_path(database_path)
    temporary = f"{path}.{os.getpid()}"
    with open(temporary, "w") as stamp:
        stamp.write(str(time.time_ns()))
    os.replace(temporary, path)  # a new inode: a changed stat even within one mtime tick


# -- usage rollups (migration 0004) ---------------------------------------------------------------

#: Rollup tables per period: the period column has the table's period name and holds the UTC start
#: of the period (``2026-11-20T10:00:00Z``, ``2026-11-20T00:00:00Z``). Hourly rows answer hour
#: buckets and the ragged ends of a range; daily rows (the same sums, about 5 times fewer rows at
#: the bench's 1M interceptions) the whole days in between: a 30-day summary reads ~25k rows.
USAGE_ROLLUPS = {"hour": "aibridge_usage_hourly", "day": "aibridge_usage_daily"}
TOOL_ROLLUPS = {"hour": "aibridge_tool_usage_hourly", "day": "aibridge_tool_usage_daily"}
ROLLUP_TABLES = (*USAGE_ROLLUPS.values(), *TOOL_ROLLUPS.values())
#: Interception columns the usage rollups are keyed by (after the period); the hourly tool rollup
#: has no provider type, and the tool name last. The daily tool rollup only serves "top tools" (of
#: everyone, or of one user), so it is keyed by user and tool alone: 5 times fewer rows than with
#: every dimension, which keeps 90 days of top tools fast.
USAGE_DIMENSIONS = ("initiator_id", "provider", "provider_name", "model", "client")
TOOL_DIMENSIONS = ("initiator_id", "provider_name", "model", "client")
TOOL_DAILY_DIMENSIONS = ("initiator_id",)
_TOKEN_FIGURES = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
_USAGE_FIGURES = ("interceptions", *_TOKEN_FIGURES)
#: The usage rollups' cost columns (migration 0009): how many token usages had no price (so that a
#: partial sum says it is one), and the priced ones' USD (NULL: none was priced).
_COST_FIGURES = ("unpriced_token_usages", "cost_usd")
#: A usage group's figures, in the order the usage queries add them: interceptions, the token figures,
#: then how many token usages had no price and the cost of the priced ones (None: none was priced).
USAGE_FIELDS = (*_USAGE_FIGURES, *_COST_FIGURES)
_COST_POSITION = USAGE_FIELDS.index("cost_usd")
#: Record columns that later migrations add (not in the first schema): token usage cost, 0009.
ADDED_COLUMNS = frozenset({"cost_usd"})
_TOOL_POSITIONS = tuple(1 + USAGE_DIMENSIONS.index(c) for c in TOOL_DIMENSIONS)  # in a usage key
_TOOL_DAILY_POSITIONS = tuple(1 + TOOL_DIMENSIONS.index(c) for c in TOOL_DAILY_DIMENSIONS)  # in an hourly tool key


def _hour(timestamp: Any) -> str:
    """The rollup hour of a store timestamp: ``2026-11-20T10:42:07.123456Z`` -> ``2026-11-20T10:00:00Z``.

    Text slicing, exactly as migration 0004's backfill does it in SQL (``substr(started_at, 1, 13)``).
    """
    return f"{str(timestamp)[:13]}:00:00Z"


def _day(hour: str) -> str:
    """The rollup day of a rollup hour (or of a store timestamp)."""
    return f"{hour[:10]}T00:00:00Z"


def _figure(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def add_cost(total: float | None, value: float | None) -> float | None:
    """A sum of figures some of which may be unknown (a cost without a price): None only if all are,
    as SQL's sum() does."""
    if value is None:
        return total
    return value if total is None else total + value


def total_cost(costs: Iterable[float | None]) -> float | None:
    """``add_cost`` over all of ``costs``: None when none is known."""
    total = None
    for cost in costs:
        total = add_cost(total, cost)
    return total


def _rollup_key(hour: str, values: Any) -> tuple[str, ...]:
    """(hour, *USAGE_DIMENSIONS) from ``values`` in USAGE_DIMENSIONS order."""
    return (hour, *["" if v is None else str(v) for v in values])


def _user_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "is_admin": bool(row["is_admin"]),
        "created_at": row["created_at"],
        "deleted_at": row["deleted_at"],
    }


def _token_dict(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "user_id", "username", "name", "created_at", "expires_at", "revoked_at", "last_used_at")
    return {k: row[k] for k in keys}


# -- interception queries ------------------------------------------------------------------------

#: Filter columns, most selective first: the first one a query uses picks the index.
_FILTER_COLUMNS = ("initiator_id", "model", "client", "provider_name", "provider")
#: usage_summary() groups -> interception column.
USAGE_GROUPS = {"user": "initiator_id", "model": "model", "client": "client", "provider": "provider_name"}


def _usage_column(by: str) -> str:
    column = USAGE_GROUPS.get(by)
    if column is None:
        raise StoreError(f"cannot group usage by {by!r}: use one of {', '.join(USAGE_GROUPS)}")
    return column


def add_usage(total: list[Any], figures: Any) -> None:
    """Add usage figures (_USAGE_FIGURES, then _COST_FIGURES) to ``total``: a cost stays None (not
    0) until a known one adds to it."""
    for n, value in enumerate(figures):
        total[n] = add_cost(total[n], value) if n == _COST_POSITION else total[n] + (value or 0)


def _ceil_hour(timestamp: str) -> str:
    """The end of the hour ``timestamp`` falls in (itself when it is a whole hour), as a rollup hour."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(timezone.utc)
    start = moment.replace(minute=0, second=0, microsecond=0)
    return (start if start == moment else start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z")


def _next_day(day: str) -> str:
    return (datetime.fromisoformat(day.replace("Z", "+00:00")) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")


def _segments(low: str | None, high: str | None) -> list[tuple[str, str | None, str | None]]:
    """``(period, start, end)`` pieces covering the rollup hours in [low, high) (None: unbounded):
    the whole days from the daily rollups, the hours before and after them from the hourly ones."""
    first = None if low is None else low if low == _day(low) else _next_day(_day(low))  # first whole day
    end = None if high is None else _day(high)  # where the last whole day ends
    if first is not None and end is not None and first >= end:
        return [("hour", low, high)]
    pieces: list[tuple[str, str | None, str | None]] = [("day", first, end)]
    if low is not None and low < first:
        pieces.append(("hour", low, first))
    if high is not None and end < high:
        pieces.append(("hour", end, high))
    return pieces


class UnknownCursor(StoreError):
    """An ``after_id`` that names no (visible) interception."""


@dataclass(frozen=True)
class InterceptionFilter:
    """What query_interceptions() matches; None means any. Times are store timestamps
    (``format_timestamp``): ``started_after`` inclusive, ``started_before`` exclusive."""

    initiator: str | None = None  # user id or username (see identity.Identity.initiator_ids)
    provider: str | None = None
    provider_name: str | None = None
    model: str | tuple[str, ...] | None = None  # a name, or any of several (a model family's recorded names)
    client: str | None = None
    started_after: str | None = None
    started_before: str | None = None


# -- sessions and threads (SPEC §9; migration 0006) ------------------------------------------------

#: Each interception's session and thread (derived data kept by the record writer, like the rollups):
#: the record tables keep exactly the Coder columns.
SESSION_MEMBERS_TABLE = "aibridge_session_interceptions"
#: One row per session: what the sessions list shows, kept current by the record writer.
SESSIONS_TABLE = "aibridge_sessions"
#: What a session used, one row per (filter, value): the sessions list's provider, provider_name and
#: model filters read it (an index range) instead of every summary's lists.
SESSION_FACETS_TABLE = "aibridge_session_facets"
#: SessionFilter field -> the summary list column (and Summary attribute) its facet rows come from.
SESSION_FACETS = {"provider": "provider_types", "provider_name": "provider_names", "model": "models"}
#: A session's summary columns after its key (session_id, initiator_id), in table order.
SESSION_COLUMNS = ("client", "provider_types", "provider_names", "models", "started_at", "ended_at", "last_active_at",
                   "last_prompt_interception_id", "last_prompt_started_at", "interception_count", "thread_count",
                   *_TOKEN_FIGURES, "cost_usd")


def session_key(initiator_id: str | None, client_session_id: str | None, interception_id: str) -> tuple[str, str]:
    """An interception's session: ``(initiator, session id)``. A session is one initiator's interceptions
    with the same client session id; one without (or with an empty one) is a session of its own, whose
    id is the interception's. ``''`` stands for no initiator."""
    return initiator_id or "", client_session_id or interception_id


@dataclass(frozen=True)
class SessionFilter:
    """What list_sessions() matches; None means any. A session matches ``provider``, ``provider_name``
    or ``model`` when any of its interceptions has it; times bound its start (``started_after``
    inclusive, ``started_before`` exclusive)."""

    initiator: str | None = None  # user id or username (see identity.Identity.initiator_ids)
    provider: str | None = None
    provider_name: str | None = None
    model: str | tuple[str, ...] | None = None  # as InterceptionFilter's
    client: str | None = None
    session_id: str | None = None
    started_after: str | None = None
    started_before: str | None = None


class AmbiguousSession(StoreError):
    """A session id that several initiators' sessions share (an admin must say whose)."""

    def __init__(self, session_id: str, usernames: list[str]) -> None:
        super().__init__(f"session id {session_id!r} names sessions of several users: {', '.join(usernames)}")
        self.usernames = usernames


def _between(column: str, after: str | None, before: str | None) -> tuple[list[str], list[Any]]:
    """Conditions for ``after <= column < before`` (either may be None), with their parameters."""
    where, params = [], []
    if after is not None:
        where.append(f"{column} >= ?")
        params.append(after)
    if before is not None:
        where.append(f"{column} < ?")
        params.append(before)
    return where, params


def _sql_where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _json_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # not JSON after all: shown as stored


def _child_result(row: dict[str, Any]) -> dict[str, Any]:
    row["metadata"] = _json_value(row.get("metadata"))
    if "injected" in row:
        row["injected"] = bool(row["injected"])
    return row


_RESULT_COLUMNS = ("provider", "provider_name", "model", "client", "client_session_id", "user_agent", "credential_kind",
                   "credential_hint", "correlating_tool_call_id", "started_at", "ended_at")


def _interception_result(row: dict[str, Any], children: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    result = {"id": row["id"], "initiator": {"id": row["initiator_id"], "username": row["initiator_username"]}}
    result.update((column, row[column]) for column in _RESULT_COLUMNS)
    result["metadata"] = _json_value(row["metadata"])
    result["session_id"] = row["session_id"]
    result["thread_id"] = row["thread_id"]
    # The sum of its token usages' costs (each priced when recorded); None when none has a price.
    result["cost_usd"] = total_cost(usage["cost_usd"] for usage in children["token_usages"])
    result.update(children)
    return result


def rollup_additions(keys: dict[Any, tuple[str, ...]], interceptions: list[InterceptionRecord],
                     token_usages: list[TokenUsageRecord], tool_usages: list[ToolUsageRecord]
                     ) -> dict[str, list[tuple[Any, ...]]]:
    """What newly inserted rows add to each rollup table: ``{table: [(*key, *figures)]}``.

    ``keys`` maps interception ids to their rollup key (``_rollup_key``); a child record whose
    interception has no key is skipped (its insert has already failed on the foreign key).
    Rows come sorted by key, so that concurrent writers (several gateways on one PostgreSQL)
    lock rollup rows in the same order and never deadlock.
    """
    width = len(_USAGE_FIGURES)
    usage: dict[tuple[str, ...], list[Any]] = {}  # _USAGE_FIGURES, then _COST_FIGURES
    for record in interceptions:
        key = keys[record.id]
        figures = usage.get(key)
        if figures is None:
            figures = usage[key] = [0] * width + [0, None]
        figures[0] += 1
    for usage_record in token_usages:
        key = keys.get(usage_record.interception_id)
        if key is None:
            continue
        figures = usage.get(key)
        if figures is None:
            figures = usage[key] = [0] * width + [0, None]
        figures[1] += _figure(usage_record.input_tokens)
        figures[2] += _figure(usage_record.output_tokens)
        figures[3] += _figure(usage_record.cache_read_input_tokens)
        figures[4] += _figure(usage_record.cache_write_input_tokens)
        cost = usage_record.cost_usd
        if cost is None:
            figures[5] += 1
        else:
            figures[6] = add_cost(figures[6], cost)
    tools: dict[tuple[str, ...], list[int]] = {}
    for tool_record in tool_usages:
        key = keys.get(tool_record.interception_id)
        if key is None:
            continue
        tool = tool_record.tool
        tool_key = (key[0], *[key[i] for i in _TOOL_POSITIONS], "" if tool is None else str(tool))
        calls = tools.get(tool_key)
        if calls is None:
            tools[tool_key] = [1]
        else:
            calls[0] += 1
    additions: dict[str, list[tuple[Any, ...]]] = {}
    for rollups, per_hour, day_positions in ((USAGE_ROLLUPS, usage, range(1, 1 + len(USAGE_DIMENSIONS))),
                                             (TOOL_ROLLUPS, tools, (*_TOOL_DAILY_POSITIONS, -1))):
        if not per_hour:
            continue
        per_day: dict[tuple[str, ...], list[int]] = {}
        for key, figures in per_hour.items():
            day_key = (_day(key[0]), *[key[i] for i in day_positions])
            total = per_day.get(day_key)
            if total is None:
                per_day[day_key] = list(figures)
            else:
                for n, value in enumerate(figures):
                    total[n] = add_cost(total[n], value)
        additions[rollups["hour"]] = [(*key, *per_hour[key]) for key in sorted(per_hour)]
        additions[rollups["day"]] = [(*key, *per_day[key]) for key in sorted(per_day)]
    return additions


def check_columns(table: str, records: list[Any]) -> list[tuple[Any, ...]]:
    """Records as value tuples in RECORD_COLUMNS order (defaults filled in, JSON as text, booleans as
    integers); a record of another table's class raises StoreError. (The record writer runs this
    for every record: kept to one pass.)"""
    record_class, plan = _COLUMN_PLANS[table]
    values = []
    for record in records:
        if record.__class__ is not record_class:
            raise StoreError(f"{table}: a {type(record).__name__} is not a {record_class.__name__}")
        values.append(tuple([
            default if (value := getattr(record, column)) is None
            else _json_text(value) if is_json
            else int(value) if value.__class__ is bool  # booleans are integers in both schemas
            else value
            for column, default, is_json in plan
        ]))
    return values


# Per record table: its record class, and for each column its default and whether it holds JSON text.
_COLUMN_PLANS: dict[str, tuple[type, tuple[tuple[str, Any, bool], ...]]] = {
    table: (TABLE_RECORDS[table], tuple((c, _COLUMN_DEFAULTS.get(c), c in _JSON_COLUMNS) for c in columns))
    for table, columns in RECORD_COLUMNS.items()
}


def mask_url(target: str) -> str:
    """A database URL fit for logs and errors: the password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", target)
