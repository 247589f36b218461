"""``python -m bridge``: manage users and tokens, read the records and sessions, purge old ones, start the server.

Expected failures (unknown user, bad value, unreadable or missing database) print one ``error: ...``
line on stderr and exit 1. A bad duration or time flag (``--lifetime``, ``--retention``, ``--since``,
``--until``, ``--started-after``, ``--started-before``) is a usage error: one such line naming the
flag and exit 2. argparse's own usage errors keep argparse's message and exit 2. Output piped into a
reader that stops early (``| head``) ends quietly, with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from bridge import budget_rules
from bridge.budget_rules import budget_view, current_periods, parse_budget
from bridge.queries import QueryError, parse_date_or_time, parse_limit, rfc3339
from bridge.store import Database, InterceptionFilter, database_errors, mask_url, store_exists, total_cost
from bridge.timestamps import format_timestamp, parse_timestamp, utc_now
from bridge.units import format_duration, parse_duration


class CommandError(Exception):
    """A failure to report as one ``error:`` line."""


class FlagError(CommandError):
    """A bad flag value: one ``error:`` line and exit status 2, like a usage error."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.handler(args) or 0
        sys.stdout.flush()  # a reader that went away shows here, not in Python's flush at exit
        return status
    except BrokenPipeError:
        # The reader stopped on purpose (``| head``): no traceback, and nothing more to write.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, ValueError, OSError, *database_errors()) as exc:  # StoreError is a ValueError
        print(f"error: {mask_url(str(exc))}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description="bridge: a self-hosted AI gateway.")
    _add_global_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Leaf parsers accept the global options too (``bridge users list --database-url ...``);
    # SUPPRESS keeps a value given before the subcommand from being reset to None.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, default=argparse.SUPPRESS)

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True, metavar="COMMAND"
    )
    p = users.add_parser("create", parents=[common], help="create a user and print it as JSON")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="make the user an administrator")
    p.set_defaults(handler=_users_create)
    p = users.add_parser("list", parents=[common], help="list users")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(handler=_users_list)
    p = users.add_parser("delete", parents=[common], help="delete a user (its tokens stop working)")
    p.add_argument("name", help="username or user id")
    p.set_defaults(handler=_users_delete)

    tokens = commands.add_parser("tokens", help="manage API tokens").add_subparsers(
        dest="tokens_command", required=True, metavar="COMMAND"
    )
    p = tokens.add_parser("create", parents=[common], help="create a token and print it (shown once)")
    p.add_argument("name", help="username")
    p.add_argument("--lifetime", metavar="DURATION", help="e.g. 30d, 720h, 1h30m (default: never expires)")
    p.add_argument("--name", dest="label", metavar="LABEL", help="a label for the token")
    p.set_defaults(handler=_tokens_create)
    p = tokens.add_parser("list", parents=[common], help="list a user's tokens (never the secrets)")
    p.add_argument("name", help="username")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(handler=_tokens_list)
    p = tokens.add_parser("revoke", parents=[common], help="revoke a token")
    p.add_argument("id", help="token id (the part before the first '-')")
    p.set_defaults(handler=_tokens_revoke)

    retention = commands.add_parser("retention", help="record retention").add_subparsers(
        dest="retention_command", required=True, metavar="COMMAND"
    )
    p = retention.add_parser("purge", parents=[common], help="delete records older than the retention now")
    p.add_argument(
        "--retention", metavar="DURATION", help="e.g. 30d, 720h (default: CODER_AIBRIDGE_RETENTION; 0 keeps forever)"
    )
    p.set_defaults(handler=_retention_purge)

    _add_budget_parsers(commands, common)
    costs = commands.add_parser("costs", help="the token usages' costs").add_subparsers(
        dest="costs_command", required=True, metavar="COMMAND"
    )
    p = costs.add_parser("reprice", parents=[common],
                         help="price every stored token usage again (after CODER_AIBRIDGE_PRICES_FILE changed)")
    p.set_defaults(handler=_costs_reprice)

    _add_record_parsers(commands, common)
    _add_server_parser(commands)
    return parser


def _add_budget_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    budgets = commands.add_parser("budgets", help="spending limits per user, and a default for everyone").add_subparsers(
        dest="budgets_command", required=True, metavar="COMMAND"
    )
    p = budgets.add_parser("set", parents=[common], help="set a user's budget (or the default) and print it as JSON")
    _add_budget_owner(p)
    p.add_argument("--period", required=True, choices=budget_rules.PERIODS, help="UTC calendar day, ISO week or month")
    p.add_argument("--usd", type=float, metavar="DOLLARS", help="limit in US dollars per period")
    p.add_argument("--tokens", type=int, metavar="N", help="limit in tokens (input + output + cache) per period")
    p.set_defaults(handler=_budgets_set)
    p = budgets.add_parser("list", parents=[common], help="list budgets with the current period's spend")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(handler=_budgets_list)
    p = budgets.add_parser("delete", parents=[common], help="delete a user's budget (or the default)")
    _add_budget_owner(p)
    p.set_defaults(handler=_budgets_delete)


def _add_budget_owner(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", nargs="?", help="username or user id")
    p.add_argument("--default", action="store_true", help="the default budget (users without one of their own)")


#: The flags that give a budget's fields, named in its errors.
_BUDGET_FLAGS = {"period": "--period", "limit_usd": "--usd", "limit_tokens": "--tokens"}


def _budget_owner(args: argparse.Namespace) -> str | None:
    """The budget's user; None for ``--default``."""
    if args.default == (args.user is not None):
        raise CommandError("name a user or give --default (one of them)")
    return args.user


def _budgets_set(args: argparse.Namespace) -> None:
    owner = _budget_owner(args)
    budget = parse_budget({"period": args.period, "limit_usd": args.usd, "limit_tokens": args.tokens}, _BUDGET_FLAGS)
    with _open_database(args, write=True) as database:
        row = database.budgets.put(owner, budget.period, budget.limit_usd, budget.limit_tokens)
        now = budget_rules.now()
        spend = None if row["default"] else database.budgets.spend(current_periods(now), [row["user_id"]])
    print(json.dumps(budget_view(row, None if spend is None else spend.get(row["user_id"], {}), now)))


def _budgets_list(args: argparse.Namespace) -> None:
    now = budget_rules.now()
    with _open_database(args) as database:
        budgets, spend = database.budgets.snapshot(current_periods(now))
    views = [budget_view(row, None if row["default"] else spend.get(row["user_id"], {}), now) for row in budgets]
    if args.json:
        _print_json(views)
        return

    def figure(value: Any, shape: str = "{}") -> str:
        return "-" if value is None else shape.format(value)

    _print_table(
        ["BUDGET", "PERIOD", "LIMIT USD", "LIMIT TOKENS", "SPENT USD", "TOKENS", "RESETS"],
        [["(default)" if view["default"] else view["user"]["username"], view["period"],
          figure(view["limit_usd"], "{:.2f}"), figure(view["limit_tokens"]), figure(view["spend_usd"], "{:.4f}"),
          figure(view["spend_tokens"]),
          view["resets_at"]] for view in views],
        right=frozenset({2, 3, 4, 5}),
    )


def _budgets_delete(args: argparse.Namespace) -> None:
    owner = _budget_owner(args)
    with _open_database(args, write=True) as database:
        if not database.budgets.delete(owner):
            raise CommandError("no default budget" if owner is None else f"no budget for user {owner!r}")
    print("deleted the default budget" if owner is None else f"deleted the budget of {owner}")


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", metavar="FILE", default=default, help="YAML config file (keys under aibridge:)")
    parser.add_argument(
        "--database-url", metavar="URL", default=default, help="the store, e.g. sqlite:///aibridge.db or a path"
    )


def _add_server_parser(commands: Any) -> None:
    try:
        from bridge import server
    except ModuleNotFoundError as exc:
        if exc.name != "bridge.server":
            raise
        return  # bridge/server.py is not written yet
    p = commands.add_parser("server", help="run the gateway under gunicorn")
    server.add_arguments(p)
    p.set_defaults(handler=server.run)


def _open_database(args: argparse.Namespace, write: bool = False) -> Database:
    """The store the flags/env/YAML name, its calls run in this thread, the connection the command
    uses (``write``: the write connection) opened and migrated. Unless ``write`` (a command that
    changes the store may create it), a SQLite file that does not exist is an error: a mistyped path
    would otherwise become a new, empty database that answers "nothing"."""
    from bridge.config import resolve_database_path

    flags = {"CODER_AIBRIDGE_DATABASE_URL": args.database_url} if args.database_url else {}
    path = resolve_database_path(flags=flags, config_path=args.config)
    if not write and not store_exists(path):
        raise CommandError(f"no database at {path}: check --database-url or CODER_AIBRIDGE_DATABASE_URL"
                           " (`users create` or the server creates it)")
    database = Database(path, threads=False)
    try:
        database.connect(write=write)
    except database_errors() as exc:
        database.close()
        raise CommandError(f"cannot open database {mask_url(path)}: {mask_url(str(exc))}") from None
    return database


def _users_create(args: argparse.Namespace) -> None:
    with _open_database(args, write=True) as database:
        user = database.identity.create_user(args.name, is_admin=args.admin)
    print(json.dumps(user))


def _users_list(args: argparse.Namespace) -> None:
    with _open_database(args) as database:
        users = database.identity.list_users()
    if args.json:
        print(json.dumps(users, indent=2))
        return
    _print_table(
        ["USERNAME", "ID", "ADMIN", "CREATED"],
        [[u["username"], u["id"], "yes" if u["is_admin"] else "no", u["created_at"]] for u in users],
    )


def _users_delete(args: argparse.Namespace) -> None:
    with _open_database(args, write=True) as database:
        if not database.identity.delete_user(args.name):
            raise CommandError(f"unknown user {args.name!r}")
    print(f"deleted user {args.name}")


def _tokens_create(args: argparse.Namespace) -> None:
    lifetime = None
    if args.lifetime is not None:
        lifetime = _duration_flag("--lifetime", args.lifetime)
        if lifetime <= 0:
            raise FlagError("--lifetime: a token lifetime must be positive"
                            " (omit --lifetime for a token that never expires)")
    with _open_database(args, write=True) as database:
        token, _ = database.identity.create_token(args.name, lifetime=lifetime, name=args.label)
    print(token)  # alone on stdout: scripts capture it


def _tokens_list(args: argparse.Namespace) -> None:
    with _open_database(args) as database:
        tokens = database.identity.list_tokens(args.name)
    if args.json:
        print(json.dumps(tokens, indent=2))
        return
    now = utc_now()
    _print_table(
        ["ID", "NAME", "CREATED", "EXPIRES", "STATUS"],
        [[t["id"], t["name"] or "", t["created_at"], t["expires_at"] or "never", _token_status(t, now)] for t in tokens],
    )


def _tokens_revoke(args: argparse.Namespace) -> None:
    with _open_database(args, write=True) as database:
        if not database.identity.revoke_token(args.id):
            raise CommandError(f"unknown token id {args.id!r}")
    print(f"revoked token {args.id}")


def _retention_purge(args: argparse.Namespace) -> None:
    from bridge.config import load_settings, resolve_database_path
    from bridge.retention import purge

    flags = {"CODER_AIBRIDGE_DATABASE_URL": args.database_url} if args.database_url else {}
    if args.retention is not None:
        retention = _duration_flag("--retention", args.retention)
        label = format_duration(retention)
    else:
        retention = load_settings(flags=flags, config_path=args.config).retention
        label = f"{format_duration(retention)} (CODER_AIBRIDGE_RETENTION)"
    if retention <= 0:
        print("retention is 0: records are kept forever, nothing purged")
        return
    path = resolve_database_path(flags=flags, config_path=args.config)
    try:
        deleted = purge(path, retention)
    except database_errors() as exc:
        raise CommandError(f"cannot purge records in {mask_url(path)}: {mask_url(str(exc))}") from None
    print(f"purged {deleted} interception(s) older than {label}")


def _costs_reprice(args: argparse.Namespace) -> None:
    from bridge.config import load_settings
    from bridge.pricing import Prices

    flags = {"CODER_AIBRIDGE_DATABASE_URL": args.database_url} if args.database_url else {}
    prices_file = load_settings(flags=flags, config_path=args.config).prices
    with _open_database(args, write=True) as database:
        priced = database.costs.reprice(Prices(prices_file))
        stored = database.queries.count_records()["aibridge_token_usages"]
    source = f"genai-prices and {prices_file.path}" if prices_file else "genai-prices"
    print(f"repriced {stored} token usage(s) with {source}: {priced} priced, {stored - priced} without a price")


def _duration_flag(flag: str, text: str) -> float:
    """A duration flag's seconds (at most 100 years, so dates computed from it never overflow)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise FlagError(f"{flag}: {exc}") from None


def _token_status(token: dict[str, Any], now: str) -> str:
    if token["revoked_at"]:
        return "revoked"
    if token["expires_at"] and token["expires_at"] <= now:
        return "expired"
    return "active"


# C0 and C1 control characters and DEL: a client-chosen text (a model name, a prompt, a session id)
# printed raw could retitle or clear an admin's terminal, or (a tab, a newline) break a table.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _visible(text: Any) -> str:
    """``text`` for a terminal: each control character as its escape (``\\x1b``, ``\\t``, ``\\n``)."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], str(text))


def _print_table(headers: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> None:
    """Columns two spaces apart; those numbered in ``right`` (figures) aligned right."""
    rows = [[_visible(cell) for cell in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for line in [headers, *rows]:
        cells = (str(cell).rjust(width) if n in right else str(cell).ljust(width)
                 for n, (cell, width) in enumerate(zip(line, widths)))
        print("  ".join(cells).rstrip())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _usd(cost: float | None, unpriced: int = 0) -> str:
    """A cost in USD for a table: "—" when unknown (no price), "*" after a sum that left unpriced usages out."""
    if cost is None:
        return "—"
    text = "<0.0001" if 0 < cost < 0.00005 else f"{cost:,.4f}"
    return f"{text}*" if unpriced else text




# -- records: interceptions list and show, usage ---------------------------------------------------

_TIME_HELP = "a date (YYYY-MM-DD, midnight UTC) or an RFC 3339 time"


def _add_record_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    interceptions = commands.add_parser("interceptions", help="query interception records").add_subparsers(
        dest="interceptions_command", required=True, metavar="COMMAND"
    )
    p = interceptions.add_parser("list", parents=[common], help="list interceptions of all users, newest first")
    _add_filter_flags(p, "")
    p.add_argument("--after-id", metavar="ID", help="the page after this interception (keyset pagination)")
    _add_page_flags(p, "interceptions", "--after-id", "results")
    p.set_defaults(handler=_interceptions_list)
    p = interceptions.add_parser("show", parents=[common],
                                 help="one interception: its fields, prompt, tool calls, thoughts and token usage")
    p.add_argument("id", help="interception id")
    p.add_argument("--json", action="store_true", help="print the API's JSON object instead")
    p.set_defaults(handler=_interceptions_show)

    _add_session_parsers(commands, common)

    p = commands.add_parser("usage", parents=[common],
                            help="interceptions, tokens and cost per model, user, client or provider",
                            description="Interceptions, tokens and cost per model, user, client or provider, read from the"
                                        " usage rollups (fast at any size). Counted in whole hours: from the start of"
                                        " the hour --since falls in to the end of the hour --until falls in.")
    p.add_argument("--by", default="model", choices=("model", "user", "client", "provider"),
                   help="how to group (default: model)")
    p.add_argument("--sort", default="requests", choices=("requests", "tokens", "cost"),
                   help="the order of the groups, biggest first (default: requests, i.e. interceptions)")
    p.add_argument("--since", metavar="WHEN",
                   help=f"only interceptions started since then: a duration back from now (e.g. 7d) or {_TIME_HELP}")
    p.add_argument("--until", metavar="WHEN", help=f"only interceptions started before then: {_TIME_HELP}")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(handler=_usage)


def _add_session_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    sessions = commands.add_parser("sessions", help="query sessions (an agent's run) and their threads").add_subparsers(
        dest="sessions_command", required=True, metavar="COMMAND"
    )
    p = sessions.add_parser("list", parents=[common], help="list sessions of all users, most recently active first")
    _add_filter_flags(p, "sessions that used ")
    p.add_argument("--session-id", metavar="ID", help="the sessions with this id")
    p.add_argument("--after-session-id", metavar="ID", help="the page after this session (keyset pagination)")
    p.add_argument("--after-initiator", metavar="USER_ID", help="whose session --after-session-id is ('' for none)")
    _add_page_flags(p, "sessions", "--after-session-id", "sessions")
    p.set_defaults(handler=_sessions_list)
    p = sessions.add_parser("show", parents=[common], help="one session: its threads, turn by turn")
    p.add_argument("id", help="session id")
    p.add_argument("--initiator", metavar="USER", help="whose session, when several users' sessions have this id")
    p.add_argument("--after-id", metavar="ID", help="the interceptions after this one")
    p.add_argument("--before-id", metavar="ID", help="the interceptions before this one")
    p.add_argument("--limit", metavar="N", help="interceptions per page, 1-1000 (default 100)")
    p.add_argument("--json", action="store_true", help="print the API's JSON object instead")
    p.set_defaults(handler=_sessions_show)


def _add_filter_flags(p: argparse.ArgumentParser, used: str) -> None:
    """The filters interceptions and sessions share (``used`` starts the help of those a session
    matches when any of its interceptions does)."""
    p.add_argument("--initiator", metavar="USER", help="username or user id")
    p.add_argument("--provider", metavar="TYPE", help=f"{used}provider type: openai, anthropic, copilot")
    p.add_argument("--provider-name", metavar="NAME", help=f"{used}provider instance name")
    p.add_argument("--model", help=f"{used}model as the client asked for it")
    p.add_argument("--client", help='client name, e.g. "Claude Code"')
    p.add_argument("--started-after", metavar="TIME", help=f"{_TIME_HELP} (inclusive)")
    p.add_argument("--started-before", metavar="TIME", help=f"{_TIME_HELP} (exclusive)")


def _add_page_flags(p: argparse.ArgumentParser, noun: str, cursor: str, results: str) -> None:
    """A list command's offset, page size and --json (``cursor``: its keyset flag; ``results``: the
    JSON's list)."""
    p.add_argument("--offset", metavar="N", help=f"skip N {noun} (instead of {cursor})")
    p.add_argument("--limit", metavar="N", help="page size, 1-1000 (default 100)")
    p.add_argument("--json", action="store_true", help=f"print the API's JSON (count and {results}) instead of a table")


def _page_size(args: argparse.Namespace) -> tuple[int, int]:
    """A list command's page size, and how many to fetch: one more for a table, to tell whether there
    is a next page."""
    limit = parse_limit(args.limit)
    return limit, limit if args.json else limit + 1


def _print_page(found: list[dict[str, Any]], count: int, limit: int, noun: str, headers: list[str],
                row: Callable[[dict[str, Any]], list[str]], right: frozenset[int],
                next_page: Callable[[dict[str, Any]], str]) -> None:
    """A list command's table of the first ``limit`` of ``found`` (one more: there is a next page),
    then how many of the ``count`` matching it shows and the flags of the next page."""
    page = found[:limit]
    if not page:
        print(f"no more of the {count} matching {noun}(s)" if count else f"no {noun}s match")
        return
    _print_table(headers, [row(item) for item in page], right=right)
    more = f"; next page: {next_page(page[-1])}" if len(found) > limit else ""
    print(f"{len(page)} of {count} matching {noun}(s){more}")


def _filter_flags(args: argparse.Namespace) -> dict[str, str | None]:
    """The shared filter flags' values (``_add_filter_flags``), times as store timestamps."""
    after = _time_flag("--started-after", args.started_after)
    before = _time_flag("--started-before", args.started_before)
    if after is not None and before is not None and before <= after:
        raise FlagError(f"--started-before ({args.started_before}) must be later than --started-after"
                        f" ({args.started_after})")
    return {"initiator": args.initiator, "provider": args.provider, "provider_name": args.provider_name,
            "model": args.model, "client": args.client, "started_after": after, "started_before": before}


def _time_flag(flag: str, text: str | None) -> str | None:
    """A date or RFC 3339 flag as a store timestamp; an error names the flag."""
    if text is None:
        return None
    try:
        return parse_date_or_time(flag, text)
    except QueryError as exc:
        raise FlagError(f"{flag}: {exc.message.removeprefix(f'invalid {flag}: ')} ({exc.detail})") from None


def _interceptions_list(args: argparse.Namespace) -> None:
    from bridge.queries import build_filter, parse_page, query_interceptions

    search = build_filter(_filter_flags(args))
    limit, fetch = _page_size(args)
    after_id, offset = parse_page(args.after_id, args.offset)
    with _open_database(args) as database:
        result = query_interceptions(database.queries, search, fetch, after_id, offset, viewer_id=None)
        if result["count"] == 0:
            _refuse_unknown_names(database, args)
    if args.json:
        _print_json(result)
        return
    _print_page(result["results"], result["count"], limit, "interception",
                ["STARTED", "ID", "USER", "PROVIDER", "MODEL", "CLIENT", "INPUT", "OUTPUT", "COST USD", "TOOLS"],
                _interception_row, frozenset({6, 7, 8, 9}), lambda last: f"--after-id {last['id']}")


def _sessions_list(args: argparse.Namespace) -> None:
    from bridge.config import PROVIDER_TYPES
    from bridge.queries import build_session_filter, list_sessions, parse_session_page

    search = build_session_filter({**_filter_flags(args), "session_id": args.session_id})
    limit, fetch = _page_size(args)
    after_session_id, offset = parse_session_page(args.after_session_id, args.offset, args.after_initiator)
    with _open_database(args) as database:
        result = list_sessions(database.session_queries, database.queries, database.identity, search, fetch,
                               after_session_id, offset, None, PROVIDER_TYPES, _configured_provider_names(args),
                               args.after_initiator)
    if args.json:
        _print_json(result)
        return
    _print_page(result["sessions"], result["count"], limit, "session",
                ["LAST ACTIVE", "SESSION", "USER", "CLIENT", "MODELS", "TURNS", "THREADS", "INPUT", "OUTPUT",
                 "COST USD", "LAST PROMPT"], _session_row, frozenset({5, 6, 7, 8, 9}),
                _next_sessions)


def _next_sessions(last: dict[str, Any]) -> str:
    """The flags of the sessions page after ``last`` (whose: '' for a session of no user)."""
    whose = last["initiator"]["id"] or "''"
    return f"--after-session-id {_visible(last['id'])} --after-initiator {whose}"


def _session_row(session: dict[str, Any]) -> list[str]:
    return [
        rfc3339(session["last_active_at"]),
        session["id"],
        _username(session["initiator"]),
        session["client"] or "-",
        ", ".join(session["models"]) or "-",
        str(session["interception_count"]),
        str(session["thread_count"]),
        f"{session['token_usage']['input']:,}",
        f"{session['token_usage']['output']:,}",
        _usd(session["cost_usd"]),
        _one_line(session["last_prompt"], 40),
    ]


def _username(initiator: dict[str, Any]) -> str:
    return initiator["username"] or initiator["id"] or "-"


def _user_label(initiator: dict[str, Any]) -> str:
    """A record's user for a show command: the name and id, or what there is of them."""
    return f"{initiator['username']} ({initiator['id']})" if initiator["username"] else initiator["id"] or "-"


def _print_fields(fields: list[tuple[str, str | None]]) -> None:
    """A show command's fields, one a line, values aligned ("-" for none)."""
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        print(f"{label:<{width}}{_visible(value or '-')}")


def _one_line(text: str | None, width: int) -> str:
    """A text's first line, cut to ``width`` characters ("-" for none)."""
    if not text:
        return "-"
    line = _visible(text.strip().splitlines()[0]) if text.strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"


def _sessions_show(args: argparse.Namespace) -> None:
    from bridge.queries import get_session

    limit = parse_limit(args.limit)
    with _open_database(args) as database:
        session = get_session(database.session_queries, args.id, args.initiator, None, limit, args.after_id,
                              args.before_id)
    if session is None:
        raise CommandError(f"unknown session id {args.id!r}" + (f" of {args.initiator!r}" if args.initiator else ""))
    if args.json:
        _print_json(session)
        return
    _print_session(session)


def _print_session(session: dict[str, Any]) -> None:
    """The session's fields, then each thread on this page: its prompt and its turns."""
    tokens = session["token_usage"]
    _print_fields([
        ("session", session["id"]),
        ("user", _user_label(session["initiator"])),
        ("client", session["client"]),
        ("providers", ", ".join(session["providers"])),
        ("models", ", ".join(session["models"])),
        ("started", rfc3339(session["started_at"])),
        ("last active", rfc3339(session["last_active_at"])),
        ("interceptions", f"{session['interception_count']} in {session['thread_count']} thread(s)"),
        ("tokens", f"input {tokens['input']:,} · output {tokens['output']:,} · cache read {tokens['cache_read']:,}"
                   f" · cache write {tokens['cache_write']:,}"),
        ("cost", _cost_field(session["cost_usd"])),
        ("last prompt", _one_line(session["last_prompt"], 100)),
    ])
    calls = {tool["provider_tool_call_id"]: tool["tool"] for thread in session["threads"]
             for record in thread["interceptions"] for tool in record["tool_usages"] if tool["provider_tool_call_id"]}
    shown = 0
    for thread in session["threads"]:
        tokens = thread["token_usage"]
        _heading(f"thread {thread['id']} · started {rfc3339(thread['started_at'])} · input {tokens['input']:,}"
                 f" · output {tokens['output']:,} · cost {_cost_field(thread['cost_usd'])}")
        print(f"  prompt: {_one_line(thread['prompt'], 100)}" if thread["prompt"] else "  (no prompt recorded)")
        rows = [["  " + rfc3339(record["started_at"]), record["id"], record["model"] or "-", _turn_start(record, calls),
                 ", ".join(tool["tool"] or "-" for tool in record["tool_usages"]) or "-",
                 f"{sum(u['input_tokens'] for u in record['token_usages']):,}",
                 f"{sum(u['output_tokens'] for u in record['token_usages']):,}",
                 _usd(record["cost_usd"], _unpriced(record["token_usages"]))]
                for record in thread["interceptions"]]
        shown += len(rows)
        _print_table(["  STARTED", "ID", "MODEL", "TURN", "TOOL CALLS", "INPUT", "OUTPUT", "COST USD"], rows,
                     right=frozenset({5, 6, 7}))
    if shown < session["interception_count"] and session["threads"]:
        last = session["threads"][-1]["interceptions"][-1]["id"]
        print(f"\n{shown} of {session['interception_count']} interception(s) shown; more: --after-id {last}"
              " (or --before-id for earlier ones)")


def _turn_start(record: dict[str, Any], calls: dict[str, str | None]) -> str:
    """What started a turn: a prompt, or the results of the tool call it answers."""
    if record["user_prompts"]:
        return "prompt"
    answered = record["correlating_tool_call_id"]
    if answered:
        return f"tool results for {calls.get(answered) or answered}"
    return "-"


def _refuse_unknown_names(database: Database, args: argparse.Namespace) -> None:
    """With nothing found, a user or provider that exists nowhere is a typo to report, not an empty answer.

    A user is known when it is a live user (name or id) or initiated any record; a provider type when
    the gateway has such a type or any record has it; a provider name when the settings configure it
    or any record has it.
    """
    from bridge.config import PROVIDER_TYPES

    def recorded(**filters: str) -> bool:
        return database.queries.any_interception(InterceptionFilter(**filters))

    user = args.initiator
    if user is not None and database.identity.get_user(user) is None and not recorded(initiator=user):
        raise CommandError(f"--initiator: unknown user {args.initiator!r} (`users list` shows the users)")
    if args.provider is not None and args.provider not in PROVIDER_TYPES and not recorded(provider=args.provider):
        raise CommandError(f"--provider: unknown provider type {args.provider!r}"
                           f" (types are {', '.join(PROVIDER_TYPES)}; --provider-name selects an instance)")
    if (args.provider_name is not None and args.provider_name not in _configured_provider_names(args)
            and not recorded(provider_name=args.provider_name)):
        raise CommandError(f"--provider-name: unknown provider {args.provider_name!r}"
                           " (neither configured in the settings nor in any record)")


def _configured_provider_names(args: argparse.Namespace) -> set[str]:
    """The provider names the settings configure (none when the settings cannot be read here)."""
    from bridge.config import ConfigError, load_settings

    flags = {"CODER_AIBRIDGE_DATABASE_URL": args.database_url} if args.database_url else {}
    try:
        return {provider.name for provider in load_settings(flags=flags, config_path=args.config).providers}
    except ConfigError:
        return set()


def _interception_row(record: dict[str, Any]) -> list[str]:
    usages = record["token_usages"]
    return [
        rfc3339(record["started_at"]),
        record["id"],
        _username(record["initiator"]),
        record["provider_name"] or record["provider"] or "-",
        record["model"] or "-",
        record["client"] or "-",
        f"{sum(u['input_tokens'] for u in usages):,}",
        f"{sum(u['output_tokens'] for u in usages):,}",
        _usd(record["cost_usd"], _unpriced(usages)),
        str(len(record["tool_usages"])),
    ]


def _interceptions_show(args: argparse.Namespace) -> None:
    with _open_database(args) as database:
        record = database.queries.interception_result(args.id)
    if record is None:
        raise CommandError(f"unknown interception id {args.id!r}")
    if args.json:
        _print_json(record)
        return
    _print_interception(record)


def _print_interception(record: dict[str, Any]) -> None:
    """The interception's fields, then its prompt, tool calls, thoughts and token usage."""
    provider = record["provider_name"] or "-"
    if record["provider"] and record["provider"] != record["provider_name"]:
        provider += f" ({record['provider']})"
    if record["ended_at"]:
        took = _seconds_between(record["started_at"], record["ended_at"])
        ended = f"{rfc3339(record['ended_at'])} (after {format_duration(round(took, 3))})"
    else:
        ended = "in progress"
    _print_fields([
        ("interception", record["id"]),
        ("user", _user_label(record["initiator"])),
        ("provider", provider),
        ("model", record["model"]),
        ("client", record["client"]),
        ("client session", record["client_session_id"]),
        ("user agent", record["user_agent"]),
        ("credential", " · ".join(v for v in (record["credential_kind"], record["credential_hint"]) if v)),
        ("started", rfc3339(record["started_at"])),
        ("ended", ended),
        ("answers tool call", record["correlating_tool_call_id"]),
        ("cost", _cost_field(record["cost_usd"]) if record["token_usages"] else None),
        ("metadata", json.dumps(record["metadata"], ensure_ascii=False) if record["metadata"] else None),
    ])

    prompts = record["user_prompts"]
    _heading("prompt" if len(prompts) <= 1 else f"prompts ({len(prompts)})")
    if not prompts:
        answered = record["correlating_tool_call_id"]
        print("  (none recorded: this turn returned tool results)" if answered else "  (none recorded)")
    for n, prompt in enumerate(prompts):
        if n:
            print()
        _print_indented(prompt["prompt"] or "")

    tools = record["tool_usages"]
    _heading(f"tool calls ({len(tools)})")
    for tool in tools:
        notes = [tool["provider_tool_call_id"] or "", "injected" if tool["injected"] else "",
                 f"error: {tool['invocation_error']}" if tool["invocation_error"] else ""]
        print(_visible(f"  {tool['tool'] or '-'}  {'  '.join(note for note in notes if note)}".rstrip()))
        _print_indented(_pretty_arguments(tool["input"]), "    ")

    thoughts = record["model_thoughts"]
    _heading(f"thoughts ({len(thoughts)})")
    for n, thought in enumerate(thoughts):
        if n:
            print()
        _print_indented(thought["content"] or "")

    _heading("token usage")
    usages = record["token_usages"]
    if not usages:
        print("  (none recorded)")
        return
    figures = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
    rows = [["  " + (u["provider_response_id"] or "-"), *(f"{u[f]:,}" for f in figures), _usd(u["cost_usd"]),
             ", ".join(f"{k}={v}" for k, v in u["metadata"].items()) if isinstance(u["metadata"], dict) else ""]
            for u in usages]
    if len(usages) > 1:
        rows.append(["  TOTAL", *(f"{sum(u[f] for u in usages):,}" for f in figures),
                     _usd(record["cost_usd"], _unpriced(usages)), ""])
    _print_table(["  RESPONSE", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE", "COST USD", "OTHER"], rows,
                 right=frozenset({1, 2, 3, 4, 5}))


def _unpriced(usages: list[dict[str, Any]]) -> int:
    """How many of these token usages have no price."""
    return sum(usage["cost_usd"] is None for usage in usages)


def _cost_field(cost: float | None) -> str:
    """A show command's cost: USD, or why there is none."""
    return "— (nothing priced)" if cost is None else f"${cost:,.6f}"


def _heading(title: str) -> None:
    print(f"\n{_visible(title)}")


def _print_indented(text: str, indent: str = "  ") -> None:
    """A text's lines, indented; a tab in them (pasted code) as spaces, other control characters escaped."""
    for line in text.splitlines() or [""]:
        print(f"{indent}{_visible(line.expandtabs(4))}".rstrip())


def _pretty_arguments(value: Any) -> str:
    """A tool call's arguments: indented JSON when they are JSON, else as the model sent them."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def _seconds_between(start: str, end: str) -> float:
    return (parse_timestamp(end) - parse_timestamp(start)).total_seconds()


def _usage(args: argparse.Namespace) -> None:
    since = _since_flag(args.since)
    until = _time_flag("--until", args.until)
    if since is not None and until is not None and until <= since:
        raise FlagError(f"--until ({args.until}) must be later than --since ({args.since})")
    with _open_database(args) as database:
        summary = database.queries.usage_summary(args.by, since, until, sort=args.sort)
    if args.json:
        _print_json(summary)
        return
    figures = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
    headers = [args.by.upper(), "INTERCEPTIONS", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE", "COST USD"]
    rows = [[str(r["group"] if r["group"] is not None else "-"), *(f"{r[f]:,}" for f in figures),
             _usd(r["cost_usd"], r["unpriced_token_usages"])] for r in summary]
    unpriced = sum(r["unpriced_token_usages"] for r in summary)
    if len(summary) != 1:
        rows.append(["TOTAL", *(f"{sum(r[f] for r in summary):,}" for f in figures),
                     _usd(total_cost(r["cost_usd"] for r in summary), unpriced)])
    _print_table(headers, rows, right=frozenset(range(1, len(headers))))
    if unpriced:
        print(f"\n* {unpriced:,} token usage(s) of a model without a price are not in the cost"
              " (— : none priced; CODER_AIBRIDGE_PRICES_FILE can give a price, then `costs reprice`)")


def _since_flag(text: str | None) -> str | None:
    """``--since``: a duration back from now (``7d``), or a date or RFC 3339 time (they have a ``-``)."""
    if text is None:
        return None
    if "-" in text:
        return _time_flag("--since", text)
    seconds = _duration_flag("--since", text)
    if seconds <= 0:
        raise FlagError("--since: must be a positive duration, e.g. 7d")
    return format_timestamp(datetime.now(timezone.utc) - timedelta(seconds=seconds))
