"""The operating API (SPEC §8, §9): interception records, sessions and their threads, usage over time
and top tools for everyone (their own, or all for admins), user and token administration for admins.

Every route needs a gateway token (``Authorization: Bearer`` or ``Coder-Session-Token``). Errors are
JSON ``{"message": ...}``; a bad interceptions, usage or tools query is a 400 with a ``detail`` that
says how to fix it (the parsing lives in bridge.queries, shared with the CLI). Usage and tools are
read from the hourly/daily rollups (store migration 0004), so they count whole hours: from the start
of the hour ``since`` falls in to the end of ``until``'s. SQL runs on the worker's store threads
(bridge.store.Database: queries on its read pool, changes on its write thread), never on the hub,
so a slow query never freezes the streams of the worker.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

import orjson
from flask import Blueprint, Response, request
from loguru import logger
from werkzeug.exceptions import HTTPException

from bridge import budget_rules
from bridge.budget_rules import BudgetError, budget_view, current_periods, parse_budget
from bridge.config import PROVIDER_TYPES
from bridge.credentials import bearer_token
from bridge.errors import GatewayError
from bridge.queries import (
    DEFAULT_TOOLS_LIMIT, DEFAULT_USAGE_SORT, FAMILY_KEY, MAX_TOOLS_LIMIT, SEARCH_KEYS, SESSION_SEARCH_KEYS,
    USAGE_BUCKETS, USAGE_BY,
    QueryError, build_filter, build_session_filter, get_session, list_sessions, parse_choice, parse_limit, parse_page,
    parse_range, parse_search, parse_session_page, query_interceptions, resolve_family, usage_over_time,
)
from bridge.model_names import group_by_family
from bridge.store import USAGE_SORTS, StoreError, database_errors, mask_url
from bridge.units import parse_duration

SESSION_TOKEN_HEADER = "Coder-Session-Token"
QUERY_PARAMETERS = ("q", "limit", "after_id", "offset")
#: GET /api/v2/aibridge/models (``group=family``: the names grouped by model family).
MODELS_PARAMETERS = ("group",)
#: GET /api/v2/aibridge/sessions, and one session (``initiator``: whose, for an id several users' sessions share).
SESSIONS_PARAMETERS = ("q", "limit", "after_session_id", "after_initiator", "offset")
SESSION_PARAMETERS = ("limit", "after_id", "before_id", "initiator")
#: GET /api/v2/aibridge/usage and /tools.
USAGE_PARAMETERS = ("by", "bucket", "sort", "since", "until")
TOOLS_PARAMETERS = ("since", "until", "limit")

_T = TypeVar("_T")


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}


# -- the blueprint -------------------------------------------------------------------------------


def api_blueprint(gateway: Any) -> Blueprint:
    """The routes of SPEC §8 (records, users, tokens) for the app's Gateway."""
    bp = Blueprint("api", __name__)
    database = gateway.database

    def run(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """A store call through the worker's Database (``database.queries.top_tools``: queries on its
        read threads, changes on its write thread); the database failing is a 503."""
        try:
            return call(*args, **kwargs)
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

    def search_terms(q: str | None, keys: tuple[str, ...], viewer_id: str | None) -> dict[str, Any]:
        """``q``'s filters (``keys``, and ``model_family``), a family resolved to the viewer's recorded names."""
        return resolve_family(parse_search(q, (*keys, FAMILY_KEY)),
                              lambda: run(database.queries.interception_models, viewer_id))

    @bp.get("/api/v2/aibridge/interceptions")
    def list_interceptions() -> Response:
        who = caller()
        try:
            args = _single_args(QUERY_PARAMETERS)
            viewer = _viewer_id(who)
            terms = search_terms(args.get("q"), SEARCH_KEYS, viewer)
            search = build_filter(terms, me=who["user_id"])
            limit = parse_limit(args.get("limit"))
            after_id, offset = parse_page(args.get("after_id"), args.get("offset"))
            return _json(run(query_interceptions, database.queries, search, limit, after_id, offset, viewer))
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None

    # <path:...>: an id with a "/" in it is a 404 here too, not a provider route's "unknown provider".
    # Werkzeug ranks the static "interceptions" part above app.py's catch-all "<name>/<path:rest>".
    @bp.get("/api/v2/aibridge/interceptions/<path:interception_id>")
    def get_interception(interception_id: str) -> Response:
        who = caller()
        found = run(database.queries.interception_result, interception_id, _viewer_id(who))
        if found is None:  # someone else's is "unknown" too: ids cannot be probed
            raise ApiError(404, f"unknown interception id {interception_id[:80]!r}")
        return _json(found)

    # No id after the slash: the API's 404 (after the token check), not the provider catch-all's
    # "unknown provider 'sessions'" in Anthropic's shape.
    @bp.get("/api/v2/aibridge/interceptions/", defaults={"kind": "interception"})
    @bp.get("/api/v2/aibridge/sessions/", defaults={"kind": "session"})
    def missing_id(kind: str) -> Response:
        caller()
        raise ApiError(404, f"missing {kind} id", f"give one: /api/v2/aibridge/{kind}s/<id>")

    @bp.get("/api/v2/aibridge/clients")
    def list_clients() -> Response:
        who = caller()
        return _json(run(database.queries.interception_clients, _viewer_id(who)))

    @bp.get("/api/v2/aibridge/models")
    def list_models() -> Response:
        who = caller()
        try:
            group = parse_choice("group", _single_args(MODELS_PARAMETERS, hint_keys=()).get("group"), ("family",), "")
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None
        names = run(database.queries.interception_models, _viewer_id(who))
        return _json(group_by_family(names) if group == "family" else names)

    @bp.get("/api/v2/aibridge/sessions")
    def sessions() -> Response:
        who = caller()
        try:
            args = _single_args(SESSIONS_PARAMETERS, hint_keys=SESSION_SEARCH_KEYS)
            terms = search_terms(args.get("q"), SESSION_SEARCH_KEYS, _viewer_id(who))
            search = build_session_filter(terms, me=who["user_id"])
            limit = parse_limit(args.get("limit"))
            after, offset = parse_session_page(args.get("after_session_id"), args.get("offset"), args.get("after_initiator"))
            return _json(run(list_sessions, database.session_queries, database.queries, database.identity, search,
                             limit, after, offset, _viewer_id(who), PROVIDER_TYPES, set(gateway.providers),
                             args.get("after_initiator")))
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None

    @bp.get("/api/v2/aibridge/sessions/<path:session_id>")
    def session(session_id: str) -> Response:
        who = caller()
        try:
            args = _single_args(SESSION_PARAMETERS, hint_keys=())
            limit = parse_limit(args.get("limit"))
            found = run(get_session, database.session_queries, session_id, args.get("initiator"), _viewer_id(who),
                        limit, args.get("after_id"), args.get("before_id"))
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None
        if found is None:  # someone else's is "unknown" too
            raise ApiError(404, f"unknown session id {session_id[:80]!r}")
        return _json(found)

    @bp.get("/api/v2/aibridge/usage")
    def usage() -> Response:
        who = caller()
        try:
            args = _single_args(USAGE_PARAMETERS, hint_keys=())
            by = parse_choice("by", args.get("by"), USAGE_BY, "model")
            bucket = parse_choice("bucket", args.get("bucket"), USAGE_BUCKETS, "day")
            sort = parse_choice("sort", args.get("sort"), USAGE_SORTS, DEFAULT_USAGE_SORT)
            since, until = parse_range(args.get("since"), args.get("until"))
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None
        viewer = _viewer_id(who)
        return _json(run(usage_over_time, database.queries, by, bucket, since, until, viewer, sort))

    @bp.get("/api/v2/aibridge/tools")
    def top_tools() -> Response:
        who = caller()
        try:
            args = _single_args(TOOLS_PARAMETERS, hint_keys=())
            since, until = parse_range(args.get("since"), args.get("until"))
            limit = parse_limit(args.get("limit"), DEFAULT_TOOLS_LIMIT, MAX_TOOLS_LIMIT)
        except QueryError as exc:
            raise ApiError(400, exc.message, exc.detail) from None
        viewer = _viewer_id(who)
        return _json({"tools": run(database.queries.top_tools, since, until, limit, viewer_id=viewer)})

    @bp.get("/api/v2/users")
    def list_users() -> Response:
        admin()
        return _json(run(database.identity.list_users))

    @bp.get("/api/v2/users/me")
    def get_me() -> Response:
        """Who the token belongs to (any user; the dashboard's sign-in), from the authenticated caller."""
        who = caller()
        return _json({"id": who["user_id"], "username": who["username"], "is_admin": who["is_admin"]})

    @bp.post("/api/v2/users")
    def create_user() -> tuple[Response, int]:
        admin()
        body = _json_body({"username": str, "is_admin": bool}, required=("username",))
        if run(database.identity.get_user, body["username"]) is not None:  # a name, or a user's id
            raise ApiError(409, f"user {body['username']!r} already exists")
        user = run(_refusals(database.identity.create_user), body["username"], is_admin=body.get("is_admin", False))
        return _json(user), 201

    @bp.get("/api/v2/users/<name>")
    def get_user(name: str) -> Response:
        admin()
        user = run(database.identity.get_user, name)
        if user is None:
            raise ApiError(404, f"unknown user {name!r}")
        return _json(user)

    @bp.delete("/api/v2/users/<name>")
    def delete_user(name: str) -> tuple[str, int]:
        admin()
        if not run(database.identity.delete_user, name):
            raise ApiError(404, f"unknown user {name!r}")
        return "", 204

    @bp.get("/api/v2/users/<name>/tokens")
    def list_tokens(name: str) -> Response:
        admin()
        return _json(run(_refusals(database.identity.list_tokens), name))

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
        token, row = run(_refusals(database.identity.create_token), name, lifetime=lifetime, name=body.get("name"))
        return _json({"token": token, **row}), 201

    @bp.delete("/api/v2/tokens/<token_id>")
    def revoke_token(token_id: str) -> tuple[str, int]:
        admin()
        if not run(database.identity.revoke_token, token_id):
            raise ApiError(404, f"unknown token id {token_id!r}")
        return "", 204

    # -- budgets (SPEC §11): ``default`` names the default budget (a user named so: by their id) --------

    def budget_owner(name: str) -> str | None:
        return None if name == DEFAULT_BUDGET else name

    def spend_of(user_ids: list[str], now: Any) -> dict[str, Any]:
        return run(database.budgets.spend, current_periods(now), user_ids)

    @bp.get("/api/v2/aibridge/budgets")
    def list_budgets() -> Response:
        admin()
        now = budget_rules.now()
        budgets, spend = run(database.budgets.snapshot, current_periods(now))
        return _json({"budgets": [budget_view(row, None if row["default"] else spend.get(row["user_id"], {}), now)
                                  for row in budgets]})

    @bp.get("/api/v2/aibridge/budgets/me")
    def my_budget() -> Response:
        """The caller's budget (any user): their own, else the default, else none; spend and reset."""
        who = caller()
        now = budget_rules.now()
        row = run(database.budgets.get, who["user_id"]) or run(database.budgets.get, None)
        view = None if row is None else budget_view(row, spend_of([who["user_id"]], now).get(who["user_id"], {}), now)
        if view is not None:
            del view["user"]  # the caller's, below, also under the default budget
        return _json({"user": {"id": who["user_id"], "username": who["username"]}, "budget": view})

    @bp.get("/api/v2/aibridge/budgets/<name>")
    def get_budget(name: str) -> Response:
        admin()
        now = budget_rules.now()
        row = run(_refusals(database.budgets.get), budget_owner(name))
        if row is None:
            raise ApiError(404, f"no budget for {_budget_label(name)}")
        return _json(budget_view(row, None if row["default"] else spend_of([row["user_id"]], now).get(row["user_id"], {}),
                                 now))

    @bp.put("/api/v2/aibridge/budgets/<name>")
    def put_budget(name: str) -> Response:
        admin()
        try:
            budget = parse_budget(_json_object())
        except BudgetError as exc:
            raise ApiError(400, str(exc)) from None
        row = run(_refusals(database.budgets.put), budget_owner(name), budget.period, budget.limit_usd,
                  budget.limit_tokens)
        now = budget_rules.now()
        return _json(budget_view(row, None if row["default"] else spend_of([row["user_id"]], now).get(row["user_id"], {}),
                                 now))

    @bp.delete("/api/v2/aibridge/budgets/<name>")
    def delete_budget(name: str) -> tuple[str, int]:
        admin()
        if not run(_refusals(database.budgets.delete), budget_owner(name)):
            raise ApiError(404, f"no budget for {_budget_label(name)}")
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


#: The name that stands for the default budget in /api/v2/aibridge/budgets/<name>.
DEFAULT_BUDGET = "default"


def _budget_label(name: str) -> str:
    return "the default budget" if name == DEFAULT_BUDGET else f"user {name!r}"


def _viewer_id(who: Mapping[str, Any]) -> str | None:
    """Whose records a caller sees: everyone's (None) for an admin, else their own."""
    return None if who["is_admin"] else who["user_id"]


def _session_token(headers: Mapping[str, str]) -> str | None:
    token = (headers.get(SESSION_TOKEN_HEADER) or "").strip()
    if token:
        return token
    return bearer_token(headers)


def _single_args(known: tuple[str, ...], hint_keys: tuple[str, ...] = SEARCH_KEYS) -> dict[str, str]:
    """The query string, each parameter at most once and known (the filters ``hint_keys`` go in ``q``)."""
    args: dict[str, str] = {}
    for key in request.args:
        values = request.args.getlist(key)
        if key not in known:
            hint = f"; filters go in q, e.g. q={key}:value" if key in hint_keys else ""
            raise QueryError(f"unknown query parameter {key!r}", f"accepted: {', '.join(known)}{hint}")
        if len(values) > 1:
            raise QueryError(f"query parameter {key!r} given more than once", "give it once")
        args[key] = values[0]
    return args


#: The API's bodies hold a few short fields: anything larger is refused before it is read whole.
API_BODY_MAX = 1024 * 1024


def _json_body(fields: dict[str, type], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object, each field of its type (null means absent) and none unknown."""
    body = _json_object()
    for key, value in body.items():
        if key not in fields:
            raise ApiError(400, f"unknown field {key!r}: accepted fields are {', '.join(fields)}")
        if value is not None and not isinstance(value, fields[key]):
            raise ApiError(400, f"field {key!r} must be a {'boolean' if fields[key] is bool else 'string'}")
    for key in required:
        if body.get(key) is None:
            raise ApiError(400, f"field {key!r} is required")
    return {key: value for key, value in body.items() if value is not None}


def _json_object() -> dict[str, Any]:
    """The request's body, a JSON object (an empty body: ``{}``); 400 for anything else, 413 when too large."""
    too_large = f"the request body exceeds the API's limit of {API_BODY_MAX} bytes"
    if (request.content_length or 0) > API_BODY_MAX:
        raise ApiError(413, too_large)
    try:
        raw = request.stream.read(API_BODY_MAX + 1)  # a chunked body has no length to check up front
    except GatewayError as error:  # the body came too slowly, or too many at once (bridge.body_limits)
        raise ApiError(error.status, error.message, headers=error.headers) from None
    if len(raw) > API_BODY_MAX:
        raise ApiError(413, too_large)
    try:  # orjson: a depth limit instead of the json module's RecursionError on deeply nested bodies
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


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
