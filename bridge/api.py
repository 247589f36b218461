"""The operating API (SPEC §8): interception records, usage over time and top tools for everyone
(their own, or all for admins), user and token administration for admins.

Every route needs a gateway token (``Authorization: Bearer`` or ``Coder-Session-Token``). Errors are
JSON ``{"message": ...}``; a bad interceptions, usage or tools query is a 400 with a ``detail`` that
says how to fix it. Usage and tools are read from the hourly/daily rollups (store migration 0004),
so they count whole hours: from the start of the hour ``since`` falls in to the end of ``until``'s. SQL runs on native threads (a gevent ThreadPool with one store connection per thread), never on
the hub, so a slow query never freezes the streams of the worker.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, TypeVar

import orjson
from flask import Blueprint, Response, request
from loguru import logger
from werkzeug.exceptions import HTTPException

from bridge.store import InterceptionFilter, Store, StoreError, UnknownCursor, database_errors, mask_url
from bridge.timestamps import format_timestamp
from bridge.units import DurationTooLong, parse_duration

SESSION_TOKEN_HEADER = "Coder-Session-Token"
#: The ``q`` filter keys of GET /api/v2/aibridge/interceptions, in documentation order.
SEARCH_KEYS = ("initiator", "provider", "provider_name", "model", "client", "started_after", "started_before")
QUERY_PARAMETERS = ("q", "limit", "after_id", "offset")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # sqlite's integers
_TIME_EXAMPLE = "use RFC 3339 with a time zone, e.g. 2025-06-01T09:30:00Z or 2025-06-01T11:30:00+02:00"
_QUERY_THREADS = 2
#: ``app.extensions`` key of the API's store threads (a ``_Queries``), shared with /readyz.
QUERIES_EXTENSION = "bridge.queries"
#: GET /api/v2/aibridge/usage and /tools.
USAGE_PARAMETERS = ("by", "bucket", "since", "until")
TOOLS_PARAMETERS = ("since", "until", "limit")
USAGE_BY = ("user", "model", "client", "provider")
USAGE_BUCKETS = ("hour", "day")
DEFAULT_SINCE = "30d"
DEFAULT_TOOLS_LIMIT = 20
MAX_TOOLS_LIMIT = 1000
_SINCE_EXAMPLE = "use a duration back from now (e.g. 7d, 24h, 90m) or an RFC 3339 time, e.g. 2025-06-01T00:00:00Z"

_T = TypeVar("_T")


class QueryError(ValueError):
    """A bad interceptions query: ``message`` names the problem, ``detail`` says what is accepted."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(f"{message} ({detail})")
        self.message = message
        self.detail = detail


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}


# -- the interceptions query: shared with ``python -m bridge interceptions list`` ----------------


def parse_search(q: str | None) -> dict[str, str]:
    """``initiator:me model:"gpt 4o"`` -> ``{"initiator": "me", "model": "gpt 4o"}``, keys checked."""
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
                             f"write filters as key:value separated by spaces, with keys {', '.join(SEARCH_KEYS)}")
        if key not in SEARCH_KEYS:
            raise QueryError(f"invalid q: unknown filter {key!r}", f"valid filters are {', '.join(SEARCH_KEYS)}")
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


def build_filter(values: Mapping[str, str | None], me: str | None = None) -> InterceptionFilter:
    """Checked filters from ``q`` keys (or CLI flags); ``initiator:me`` becomes ``me`` (a user id)."""
    given = {key: value for key, value in values.items() if value is not None}
    unknown = set(given) - set(SEARCH_KEYS)
    if unknown:
        raise QueryError(f"unknown filter {sorted(unknown)[0]!r}", f"valid filters are {', '.join(SEARCH_KEYS)}")
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
    return InterceptionFilter(
        initiator=initiator,
        provider=given.get("provider"),
        provider_name=given.get("provider_name"),
        model=given.get("model"),
        client=given.get("client"),
        started_after=after,
        started_before=before,
    )


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


def query_interceptions(store: Store, search: InterceptionFilter, limit: int, after_id: str | None,
                        offset: int | None, viewer_id: str | None) -> dict[str, Any]:
    """Run the query; an unknown (or invisible) after_id is a QueryError."""
    try:
        return store.query_interceptions(search, limit=limit, after_id=after_id, offset=offset, viewer_id=viewer_id)
    except UnknownCursor:
        raise QueryError(f"unknown after_id {after_id!r}",
                         "after_id must be the id of an interception from a previous page") from None


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


def usage_over_time(store: Store, by: str, bucket: str, since: str, until: str,
                    viewer_id: str | None) -> dict[str, Any]:
    """The body of GET /api/v2/aibridge/usage (the range as the rollups count it: whole hours)."""
    found = store.usage_series(by, bucket, since, until, viewer_id=viewer_id)
    return {"by": by, "bucket": bucket, "since": rfc3339(since[:13] + ":00:00Z"), "until": rfc3339(until), **found}


# -- the blueprint -------------------------------------------------------------------------------


class _Queries:
    """Store calls on native threads; each thread keeps its own connection."""

    def __init__(self, database_path: str, threads: int = _QUERY_THREADS) -> None:
        self._database_path = database_path
        self._threads = threads
        self._pool = None
        self._stores: dict[int, Store] = {}

    def run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        failed, value = self._get_pool().apply(self._call, (fn, args, kwargs))
        if failed:
            raise value
        return value

    def run_within(self, seconds: float, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``run``, but the caller waits at most ``seconds`` (gevent.Timeout) for a free thread and
        the call; a call already running finishes on its thread."""
        failed, value = self._get_pool().spawn(self._call, fn, args, kwargs).get(timeout=seconds)
        if failed:
            raise value
        return value

    def _get_pool(self) -> Any:
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self._threads)  # real OS threads, even after monkey.patch_all()
        return self._pool

    def _call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Runs on a pool thread. Errors are returned, not raised: the pool would print them."""
        from gevent.monkey import get_original

        ident = get_original("threading", "get_ident")()  # the native thread, not a greenlet
        store = self._stores.get(ident)
        try:
            if store is None:
                store = Store(self._database_path)
                store.tune_for_queries()
                self._stores[ident] = store
            return False, fn(store, *args, **kwargs)
        except database_errors() as exc:
            self._stores.pop(ident, None)  # a fresh connection next time (e.g. the file was replaced)
            if store is not None:
                store.close()
            return True, exc
        except Exception as exc:
            return True, exc


def api_blueprint(gateway: Any) -> Blueprint:
    """The routes of SPEC §8 (records, users, tokens) for the app's Gateway."""
    bp = Blueprint("api", __name__)
    queries = _Queries(gateway.settings.database_path)
    # /readyz (bridge.health) checks the store on these threads too: never on the hub.
    bp.record_once(lambda state: state.app.extensions.setdefault(QUERIES_EXTENSION, queries))

    def run(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            return queries.run(fn, *args, **kwargs)
        except database_errors() as exc:
            logger.bind(record_type="server").error("API store query failed: {}", mask_url(str(exc)))
            raise ApiError(503, "the record store is unavailable right now; try again shortly") from None

    def caller() -> dict[str, Any]:
        token = _session_token(request.headers)
        if not token:
            raise ApiError(401, "missing session token: send Authorization: Bearer <token> or "
                                f"{SESSION_TOKEN_HEADER}: <token>", headers={"WWW-Authenticate": "Bearer"})
        try:
            found = gateway.authenticator.lookup(token)
        except Exception as exc:  # the store is unreadable: refuse rather than fail open
            logger.bind(record_type="server").error("identity store unavailable: {}", type(exc).__name__)
            raise ApiError(503, "the gateway cannot check tokens right now; try again shortly") from None
        if found is None:
            raise ApiError(401, "invalid session token: unknown, expired or revoked",
                           headers={"WWW-Authenticate": "Bearer"})
        return found

    def admin() -> dict[str, Any]:
        found = caller()
        if not found["is_admin"]:
            raise ApiError(403, "this route is for administrators")
        return found

    @bp.get("/api/v2/aibridge/interceptions")
    def list_interceptions() -> Response:
        who = caller()
        try:
            args = _single_args(QUERY_PARAMETERS)
            search = build_filter(parse_search(args.get("q")), me=who["user_id"])
            limit = parse_limit(args.get("limit"))
            after_id, offset = parse_page(args.get("after_id"), args.get("offset"))
            viewer = _viewer_id(who)
            return _json(run(query_interceptions, search, limit, after_id, offset, viewer))
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None

    @bp.get("/api/v2/aibridge/clients")
    def list_clients() -> Response:
        who = caller()
        return _json(run(Store.interception_clients, _viewer_id(who)))

    @bp.get("/api/v2/aibridge/usage")
    def usage() -> Response:
        who = caller()
        try:
            args = _single_args(USAGE_PARAMETERS, filters_hint=False)
            by = parse_choice("by", args.get("by"), USAGE_BY, "model")
            bucket = parse_choice("bucket", args.get("bucket"), USAGE_BUCKETS, "day")
            since, until = parse_range(args.get("since"), args.get("until"))
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None
        viewer = _viewer_id(who)
        return _json(run(usage_over_time, by, bucket, since, until, viewer))

    @bp.get("/api/v2/aibridge/tools")
    def top_tools() -> Response:
        who = caller()
        try:
            args = _single_args(TOOLS_PARAMETERS, filters_hint=False)
            since, until = parse_range(args.get("since"), args.get("until"))
            limit = parse_limit(args.get("limit"), DEFAULT_TOOLS_LIMIT, MAX_TOOLS_LIMIT)
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None
        viewer = _viewer_id(who)
        return _json({"tools": run(Store.top_tools, since, until, limit, viewer_id=viewer)})

    @bp.get("/api/v2/users")
    def list_users() -> Response:
        admin()
        return _json(run(Store.list_users))

    @bp.post("/api/v2/users")
    def create_user() -> tuple[Response, int]:
        admin()
        body = _json_body({"username": str, "is_admin": bool}, required=("username",))

        def create(store: Store) -> dict[str, Any]:
            if store.get_user(body["username"]) is not None:
                raise ApiError(409, f"user {body['username']!r} already exists")
            return store.create_user(body["username"], is_admin=body.get("is_admin", False))

        return _json(run(_refusals(create))), 201

    @bp.get("/api/v2/users/<name>")
    def get_user(name: str) -> Response:
        admin()
        user = run(Store.get_user, name)
        if user is None:
            raise ApiError(404, f"unknown user {name!r}")
        return _json(user)

    @bp.delete("/api/v2/users/<name>")
    def delete_user(name: str) -> tuple[str, int]:
        admin()
        if not run(Store.delete_user, name):
            raise ApiError(404, f"unknown user {name!r}")
        return "", 204

    @bp.get("/api/v2/users/<name>/tokens")
    def list_tokens(name: str) -> Response:
        admin()
        return _json(run(_refusals(Store.list_tokens), name))

    @bp.post("/api/v2/users/<name>/tokens")
    def create_token(name: str) -> tuple[Response, int]:
        admin()
        body = _json_body({"lifetime": str, "name": str})
        lifetime = None
        if body.get("lifetime") is not None:
            try:  # at most 100 years (DurationTooLong): the expiry must be a time the store can hold
                lifetime = parse_duration(body["lifetime"])
            except ValueError as exc:
                raise ApiError(400, f"invalid lifetime: {exc}") from None
        token, row = run(_refusals(Store.create_token), name, lifetime=lifetime, name=body.get("name"))
        return _json({"token": token, **row}), 201

    @bp.delete("/api/v2/tokens/<token_id>")
    def revoke_token(token_id: str) -> tuple[str, int]:
        admin()
        if not run(Store.revoke_token, token_id):
            raise ApiError(404, f"unknown token id {token_id!r}")
        return "", 204

    @bp.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        body: dict[str, Any] = {"message": error.message}
        if error.detail is not None:
            body["detail"] = error.detail
        return _json(body, error.status, error.headers)

    @bp.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _json({"message": error.description or error.name}, error.code or 500)

    @bp.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        logger.opt(exception=error).error("unhandled error in the API")
        return _json({"message": "internal gateway error"}, 500)

    return bp


def _viewer_id(who: Mapping[str, Any]) -> str | None:
    """Whose records a caller sees: everyone's (None) for an admin, else their own."""
    return None if who["is_admin"] else who["user_id"]


def _session_token(headers: Mapping[str, str]) -> str | None:
    token = (headers.get(SESSION_TOKEN_HEADER) or "").strip()
    if token:
        return token
    scheme, _, value = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _single_args(known: tuple[str, ...], filters_hint: bool = True) -> dict[str, str]:
    """The query string, each parameter at most once and known (interception filters go in ``q``)."""
    args: dict[str, str] = {}
    for key in request.args:
        values = request.args.getlist(key)
        if key not in known:
            hint = f"; filters go in q, e.g. q={key}:value" if filters_hint and key in SEARCH_KEYS else ""
            raise QueryError(f"unknown query parameter {key!r}", f"accepted: {', '.join(known)}{hint}")
        if len(values) > 1:
            raise QueryError(f"query parameter {key!r} given more than once", "give it once")
        args[key] = values[0]
    return args


#: The API's bodies hold a few short fields: anything larger is refused before it is read whole.
API_BODY_MAX = 1024 * 1024


def _json_body(fields: dict[str, type], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, each field of its type (null means absent) and none unknown."""
    too_large = f"the request body exceeds the API's limit of {API_BODY_MAX} bytes"
    if (request.content_length or 0) > API_BODY_MAX:
        raise ApiError(413, too_large)
    raw = request.stream.read(API_BODY_MAX + 1)  # a chunked body has no length to check up front
    if len(raw) > API_BODY_MAX:
        raise ApiError(413, too_large)
    try:  # orjson: a depth limit instead of the json module's RecursionError on deeply nested bodies
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for key, value in body.items():
        if key not in fields:
            raise ApiError(400, f"unknown field {key!r}: accepted fields are {', '.join(fields)}")
        if value is not None and not isinstance(value, fields[key]):
            raise ApiError(400, f"field {key!r} must be a {'boolean' if fields[key] is bool else 'string'}")
    for key in required:
        if body.get(key) is None:
            raise ApiError(400, f"field {key!r} is required")
    return {key: value for key, value in body.items() if value is not None}


def _refusals(fn: Callable[..., _T]) -> Callable[..., _T]:
    """A store call whose StoreError becomes the matching HTTP refusal (the CLI's rules)."""

    def call(*args: Any, **kwargs: Any) -> _T:
        try:
            return fn(*args, **kwargs)
        except StoreError as exc:
            text = str(exc)
            status = 404 if text.startswith("unknown user") else 409 if "already exists" in text else 400
            raise ApiError(status, text) from None

    return call


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value), status=status, mimetype="application/json", headers=headers)
