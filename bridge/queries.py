"""The queries of the operating API and the CLI, parsed and run: interception and session filters
and pages, usage and tools ranges. Pure parsing (no Flask), so ``python -m bridge`` shares it without loading
the web stack; the API (bridge.api) turns a QueryError into a 400, the CLI into one error line."""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from bridge.store import (
    USAGE_FIELDS, USAGE_SORTS, AmbiguousSession, Identity, InterceptionFilter, RecordQueries, SessionFilter,
    SessionQueries, UnknownCursor, add_usage, no_usage, usage_series_result,
)
from bridge.model_names import model_family
from bridge.timestamps import format_timestamp
from bridge.units import DurationTooLong, parse_duration

#: The ``q`` filter keys of GET /api/v2/aibridge/interceptions, in documentation order.
SEARCH_KEYS = ("initiator", "provider", "provider_name", "model", "client", "started_after", "started_before")
#: The ``q`` filter keys of GET /api/v2/aibridge/sessions.
SESSION_SEARCH_KEYS = ("initiator", "provider", "provider_name", "model", "client", "session_id", "started_after",
                       "started_before")
#: A ``q`` term that is not a filter column: it names a model family (bridge.model_names) and becomes
#: a ``model`` filter on that family's recorded names.
FAMILY_KEY = "model_family"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # sqlite's integers
_TIME_EXAMPLE = "use RFC 3339 with a time zone, e.g. 2025-06-01T09:30:00Z or 2025-06-01T11:30:00+02:00"
USAGE_BY = ("user", "model", "model_family", "client", "provider")
USAGE_BUCKETS = ("hour", "day")
#: GET /api/v2/aibridge/usage's ``sort``: the order of its series (by default most tokens first).
DEFAULT_USAGE_SORT = "tokens"
DEFAULT_SINCE = "30d"
DEFAULT_TOOLS_LIMIT = 20
MAX_TOOLS_LIMIT = 1000
_DATE_OR_TIME_EXAMPLE = ("use a date like 2025-06-01, meaning midnight UTC, or an RFC 3339 time with a zone,"
                         " e.g. 2025-06-01T09:30:00Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SINCE_EXAMPLE = "use a duration back from now (e.g. 7d, 24h, 90m) or an RFC 3339 time, e.g. 2025-06-01T00:00:00Z"


class QueryError(ValueError):
    """A bad interceptions query: ``message`` names the problem, ``detail`` says what is accepted."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(f"{message} ({detail})")
        self.message = message
        self.detail = detail



# -- the interceptions query ---------------------------------------------------------------


def parse_search(q: str | None, keys: tuple[str, ...] = SEARCH_KEYS) -> dict[str, str]:
    """``initiator:me model:"gpt 4o"`` -> ``{"initiator": "me", "model": "gpt 4o"}``, keys checked
    (``keys``: the interceptions' or the sessions')."""
    if not q or not q.strip():
        return {}
    try:
        terms = shlex.split(q)
    except ValueError:
        raise QueryError("invalid q: unbalanced quotes", 'quote a value with spaces as key:"a b"') from None
    found: dict[str, str] = {}
    for term in terms:
        key, colon, value = term.partition(":")
        key = key.strip().lower()
        if not colon:
            raise QueryError(f"invalid q: {term!r} is not a key:value filter",
                             f"write filters as key:value separated by spaces, with keys {', '.join(keys)}")
        if key not in keys:
            raise QueryError(f"invalid q: unknown filter {key!r}", f"valid filters are {', '.join(keys)}")
        if key in found:
            raise QueryError(f"invalid q: filter {key!r} given more than once", "give each filter at most once")
        if not value:
            raise QueryError(f"invalid q: filter {key!r} has no value", f'write {key}:value (quote spaces: {key}:"a b")')
        found[key] = value
    return found


def parse_time(key: str, value: str) -> str:
    """An RFC 3339 time -> the store's UTC text form (which orders as time does)."""
    text = value.strip()
    moment = None
    if len(text) >= 19 and text[10] in "Tt ":  # a date alone is not RFC 3339
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
        except ValueError:
            moment = None
    if moment is None:
        raise QueryError(f"invalid {key}: {value!r} is not an RFC 3339 time", _TIME_EXAMPLE)
    if moment.tzinfo is None:
        raise QueryError(f"invalid {key}: {value!r} has no time zone", _TIME_EXAMPLE)
    try:
        return format_timestamp(moment)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00 is past the last UTC time a datetime holds
        raise QueryError(f"invalid {key}: {value!r} is out of range", _TIME_EXAMPLE) from None


def parse_date_or_time(key: str, value: str) -> str:
    """A date (``2025-06-01``: midnight UTC) or an RFC 3339 time -> the store's UTC text form (the CLI's times)."""
    text = value.strip()
    if _DATE.fullmatch(text):
        try:
            return format_timestamp(datetime.fromisoformat(text).replace(tzinfo=timezone.utc))
        except ValueError:
            raise QueryError(f"invalid {key}: {value!r} is not a date", _DATE_OR_TIME_EXAMPLE) from None
    try:
        return parse_time(key, text)
    except QueryError as exc:
        message = exc.message.replace("is not an RFC 3339 time", "is not a date or an RFC 3339 time")
        raise QueryError(message, _DATE_OR_TIME_EXAMPLE) from None


def resolve_family(terms: Mapping[str, str], recorded_models: Callable[[], list[str]]) -> dict[str, Any]:
    """``terms`` with a ``model_family:`` term turned into a ``model`` filter on the recorded names of
    that family (``recorded_models``: the names the viewer sees), so the exact-name indexes serve it.
    The family may be given as any of its names; one no recorded name belongs to is a QueryError."""
    if FAMILY_KEY not in terms:
        return dict(terms)
    found = {key: value for key, value in terms.items() if key != FAMILY_KEY}
    if "model" in found:
        raise QueryError("model and model_family cannot be combined", "filter by one model name or by one family")
    family = model_family(terms[FAMILY_KEY])
    names = tuple(name for name in recorded_models() if model_family(name) == family)
    if not names:
        raise QueryError(f"unknown model_family {terms[FAMILY_KEY]!r}",
                         "no recorded model belongs to it; GET /api/v2/aibridge/models?group=family lists the families")
    return {**found, "model": names}


def build_filter(values: Mapping[str, Any], me: str | None = None) -> InterceptionFilter:
    """Checked filters from ``q`` keys (or CLI flags); ``initiator:me`` becomes ``me`` (a user id)."""
    return InterceptionFilter(**_filter_values(values, SEARCH_KEYS, me))


def build_session_filter(values: Mapping[str, Any], me: str | None = None) -> SessionFilter:
    """Checked session filters from ``q`` keys (or CLI flags), as ``build_filter``."""
    return SessionFilter(**_filter_values(values, SESSION_SEARCH_KEYS, me))


def _filter_values(values: Mapping[str, Any], keys: tuple[str, ...], me: str | None) -> dict[str, Any]:
    given = {key: value for key, value in values.items() if value is not None}
    unknown = set(given) - set(keys)
    if unknown:
        raise QueryError(f"unknown filter {sorted(unknown)[0]!r}", f"valid filters are {', '.join(keys)}")
    initiator = given.get("initiator")
    if initiator is not None and initiator.lower() == "me":
        if me is None:
            raise QueryError("initiator 'me' needs a signed-in caller", "give a username or user id")
        initiator = me
    after = parse_time("started_after", given["started_after"]) if "started_after" in given else None
    before = parse_time("started_before", given["started_before"]) if "started_before" in given else None
    if after is not None and before is not None and before <= after:
        raise QueryError("started_before must be later than started_after",
                         f"started_after {given['started_after']} and started_before {given['started_before']}"
                         " leave no time between them")
    return {**{key: given.get(key) for key in keys}, "initiator": initiator, "started_after": after,
            "started_before": before}


def parse_limit(text: str | None, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    if text is None:
        return default
    try:
        limit = int(text.strip())
    except ValueError:
        raise QueryError(f"invalid limit {text!r}: not a number", f"use a whole number from 1 to {maximum}") from None
    if not 1 <= limit <= maximum:
        raise QueryError(f"invalid limit {limit}: out of range", f"use a whole number from 1 to {maximum}")
    return limit


def parse_page(after_id: str | None, offset: str | None) -> tuple[str | None, int | None]:
    """The cursor or the offset (not both)."""
    if after_id is not None and offset is not None:
        raise QueryError("after_id and offset cannot be combined",
                         "page with after_id (the last id of the previous page) or with offset, not both")
    if after_id is not None and not after_id.strip():
        raise QueryError("invalid after_id: empty", "give the id of the last interception of the previous page")
    if offset is None:
        return after_id, None
    try:
        number = int(offset.strip())
    except ValueError:
        raise QueryError(f"invalid offset {offset!r}: not a number", "use a whole number, 0 or more") from None
    if not 0 <= number <= MAX_OFFSET:
        raise QueryError(f"invalid offset {number}: out of range", f"use a whole number from 0 to {MAX_OFFSET}")
    return None, number


def query_interceptions(queries: RecordQueries, search: InterceptionFilter, limit: int, after_id: str | None,
                        offset: int | None, viewer_id: str | None) -> dict[str, Any]:
    """Run the query; an unknown (or invisible) after_id is a QueryError."""
    try:
        return queries.query_interceptions(search, limit=limit, after_id=after_id, offset=offset, viewer_id=viewer_id)
    except UnknownCursor:
        raise QueryError(f"unknown after_id {after_id!r}",
                         "after_id must be the id of an interception from a previous page") from None


# -- sessions (SPEC §9) ---------------------------------------------------------------------------


def parse_cursor(name: str, value: str | None, what: str) -> str | None:
    """A page cursor (an id), not empty."""
    if value is not None and not value.strip():
        raise QueryError(f"invalid {name}: empty", f"give the id of {what}")
    return value


def parse_session_page(after_session_id: str | None, offset: str | None,
                       after_initiator: str | None = None) -> tuple[str | None, int | None]:
    """The sessions list's cursor or offset (not both); ``after_initiator`` (whose session the cursor
    is, when users share a session id) goes with a cursor."""
    if after_initiator is not None and after_session_id is None:
        raise QueryError("after_initiator needs after_session_id",
                         "give the id and the initiator id of the last session of the previous page")
    if after_session_id is not None and offset is not None:
        raise QueryError("after_session_id and offset cannot be combined",
                         "page with after_session_id (the last id of the previous page) or with offset, not both")
    parse_cursor("after_session_id", after_session_id, "the last session of the previous page")
    return after_session_id, parse_page(None, offset)[1]


def list_sessions(sessions: SessionQueries, records: RecordQueries, identity: Identity, search: SessionFilter,
                  limit: int, after_session_id: str | None, offset: int | None, viewer_id: str | None,
                  provider_types: tuple[str, ...], provider_names: set[str],
                  after_initiator: str | None = None) -> dict[str, Any]:
    """Run the sessions query. An unknown (or invisible) cursor is a QueryError, and so is a filter value
    that names nothing (``refuse_unknown_values``) when nothing matched."""
    try:
        found = sessions.list_sessions(search, limit=limit, after_session_id=after_session_id, offset=offset,
                                       viewer_id=viewer_id, after_initiator=after_initiator)
    except UnknownCursor:
        raise QueryError(f"unknown after_session_id {after_session_id!r}",
                         "after_session_id must be the id of a session from a previous page") from None
    if found["count"] == 0:
        refuse_unknown_values(search, sessions, records, identity, viewer_id, provider_types, provider_names)
    return found


def refuse_unknown_values(search: SessionFilter, sessions: SessionQueries, records: RecordQueries, identity: Identity,
                          viewer_id: str | None, provider_types: tuple[str, ...], provider_names: set[str]) -> None:
    """A filter value that names nothing is an error, not an empty answer (SPEC §9): a user that is
    neither a user nor the initiator of any record; a provider type or name neither configured nor
    recorded; a model, client or session id the viewer never recorded.

    "Recorded" is in the viewer's own records: a non-administrator learns nothing of anyone else's.
    Their ``initiator:`` naming anyone else, existing or not, is the same honest empty answer (as on
    the interceptions list), so it tells no one which usernames exist."""

    def recorded(**filters: str | None) -> bool:
        return records.any_interception(InterceptionFilter(**{"initiator": viewer_id, **filters}))

    if search.initiator is not None and viewer_id is None and identity.get_user(search.initiator) is None \
            and not recorded(initiator=search.initiator):
        raise QueryError(f"unknown initiator {search.initiator!r}", "give a username or user id, or me")
    if search.provider is not None and search.provider not in provider_types and not recorded(provider=search.provider):
        raise QueryError(f"unknown provider {search.provider!r}",
                         f"provider is a provider type: {', '.join(provider_types)}; provider_name names an instance")
    if search.provider_name is not None and search.provider_name not in provider_names \
            and not recorded(provider_name=search.provider_name):
        raise QueryError(f"unknown provider_name {search.provider_name!r}",
                         f"configured providers are {', '.join(sorted(provider_names)) or 'none'}")
    if isinstance(search.model, str) and not recorded(model=search.model, initiator=viewer_id):  # (a family: resolved)
        raise QueryError(f"unknown model {search.model!r}", "no interception recorded it")
    if search.client is not None and not recorded(client=search.client, initiator=viewer_id):
        raise QueryError(f"unknown client {search.client!r}", "no interception recorded it")
    if search.session_id is not None and not sessions.any_session(search.session_id, viewer_id):
        raise QueryError(f"unknown session_id {search.session_id!r}", "no session has this id")


def get_session(sessions: SessionQueries, session_id: str, initiator: str | None, viewer_id: str | None, limit: int,
                after_id: str | None, before_id: str | None) -> dict[str, Any] | None:
    """One session and a page of its threads (None: no such session for this viewer). A cursor that is
    not one of its interceptions, or an id several users' sessions share without ``initiator``, is a
    QueryError."""
    if after_id is not None and before_id is not None:
        raise QueryError("after_id and before_id cannot be combined", "page forward with after_id or back with before_id")
    parse_cursor("after_id", after_id, "the last interception of the previous page")
    parse_cursor("before_id", before_id, "the first interception of the next page")
    try:
        return sessions.session(session_id, initiator=initiator, viewer_id=viewer_id, limit=limit, after_id=after_id,
                                before_id=before_id)
    except UnknownCursor:
        name, value = ("after_id", after_id) if after_id is not None else ("before_id", before_id)
        raise QueryError(f"unknown {name} {value!r}", "give the id of one of this session's interceptions") from None
    except AmbiguousSession as exc:
        raise QueryError(str(exc), "say whose with initiator=USERNAME") from None


# -- usage over time and top tools (from the usage rollups) --------------------------------------


def parse_choice(key: str, value: str | None, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise QueryError(f"invalid {key} {value!r}", f"use one of {', '.join(choices)}")
    return value


def parse_since(value: str | None, now: datetime) -> str:
    """A duration back from ``now`` (``7d``; default 30d) or an RFC 3339 time -> a store timestamp."""
    if value is None:
        value = DEFAULT_SINCE
    text = value.strip()
    if text[:1].isdigit() and not (len(text) >= 19 and text[10:11] in ("T", "t", " ")):
        try:
            seconds = parse_duration(text)
        except DurationTooLong:
            raise QueryError(f"invalid since {value!r}: too far back",
                             f"at most 100 years (36525d); {_SINCE_EXAMPLE}") from None
        except ValueError:
            raise QueryError(f"invalid since {value!r}: not a duration or an RFC 3339 time", _SINCE_EXAMPLE) from None
        if seconds <= 0:
            raise QueryError(f"invalid since {value!r}: the duration must be positive", _SINCE_EXAMPLE)
        return format_timestamp(now - timedelta(seconds=seconds))
    try:
        return parse_time("since", text)
    except QueryError as exc:
        raise QueryError(exc.message, _SINCE_EXAMPLE) from None


def parse_range(since: str | None, until: str | None, now: datetime | None = None) -> tuple[str, str]:
    """``since`` (default 30d) and ``until`` (RFC 3339, default now) as store timestamps, since < until."""
    now = now or datetime.now(timezone.utc)
    end = parse_time("until", until) if until is not None else format_timestamp(now)
    start = parse_since(since, now)
    if end <= start:
        raise QueryError("until must be later than since",
                         f"since {since or DEFAULT_SINCE} and until {until or 'now'} leave no time between them")
    return start, end


def rfc3339(timestamp: str) -> str:
    """A store timestamp (or rollup hour) in the API's form, to the second: ``2026-11-20T10:00:00Z``."""
    return f"{timestamp[:19]}Z"


def usage_over_time(queries: RecordQueries, by: str, bucket: str, since: str, until: str,
                    viewer_id: str | None, sort: str = DEFAULT_USAGE_SORT) -> dict[str, Any]:
    """The body of GET /api/v2/aibridge/usage (the range as the rollups count it: whole hours), its
    series in ``sort`` order (USAGE_SORTS)."""
    if by == FAMILY_KEY:
        found = _series_by_family(queries.usage_series("model", bucket, since, until, viewer_id=viewer_id), sort)
    else:
        found = queries.usage_series(by, bucket, since, until, viewer_id=viewer_id, sort=sort)
    return {"by": by, "bucket": bucket, "sort": sort, "since": rfc3339(since[:13] + ":00:00Z"),
            "until": rfc3339(until), **found}


def _series_by_family(by_model: dict[str, Any], sort: str) -> dict[str, Any]:
    """Usage series per model summed per model family (a series with no model stays its own; a cost is
    None while no model of the family has one), ordered as the store orders series."""
    families: dict[str, dict[str, list[Any]]] = {}
    for series in by_model["series"]:
        points = families.setdefault("" if series["key"] is None else model_family(series["key"]), {})
        for point in series["points"]:
            add_usage(points.setdefault(point["t"], no_usage()), [point[figure] for figure in USAGE_FIELDS])
    return usage_series_result(families, {family: family or "(none)" for family in families}, sort)
