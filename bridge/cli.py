"""``python -m bridge``: manage users and tokens, purge old records, start the server.

Expected failures (unknown user, bad value, unreadable database) print one ``error: ...`` line
on stderr and exit 1. A bad duration flag (``--lifetime``, ``--retention``, ``--since``) is a usage
error: one such line and exit 2. argparse's own usage errors keep argparse's message and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from bridge.store import Store, database_errors, mask_url
from bridge.timestamps import utc_now
from bridge.units import parse_duration


class CommandError(Exception):
    """A failure to report as one ``error:`` line."""


class FlagError(CommandError):
    """A bad flag value: one ``error:`` line and exit status 2, like a usage error."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
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

    _add_record_parsers(commands, common)
    _add_server_parser(commands)
    return parser


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


def _open_store(args: argparse.Namespace) -> Store:
    from bridge.config import resolve_database_path

    flags = {"CODER_AIBRIDGE_DATABASE_URL": args.database_url} if args.database_url else {}
    path = resolve_database_path(flags=flags, config_path=args.config)
    try:
        return Store.from_path(path)
    except database_errors() as exc:
        raise CommandError(f"cannot open database {mask_url(path)}: {mask_url(str(exc))}") from None


def _users_create(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        user = store.create_user(args.name, is_admin=args.admin)
    print(json.dumps(user))


def _users_list(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        users = store.list_users()
    if args.json:
        print(json.dumps(users, indent=2))
        return
    _print_table(
        ["USERNAME", "ID", "ADMIN", "CREATED"],
        [[u["username"], u["id"], "yes" if u["is_admin"] else "no", u["created_at"]] for u in users],
    )


def _users_delete(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        if not store.delete_user(args.name):
            raise CommandError(f"unknown user {args.name!r}")
    print(f"deleted user {args.name}")


def _tokens_create(args: argparse.Namespace) -> None:
    lifetime = None
    if args.lifetime is not None:
        lifetime = _duration_flag("--lifetime", args.lifetime)
        if lifetime <= 0:
            raise FlagError("--lifetime: a token lifetime must be positive"
                            " (omit --lifetime for a token that never expires)")
    with _open_store(args) as store:
        token, _ = store.create_token(args.name, lifetime=lifetime, name=args.label)
    print(token)  # alone on stdout: scripts capture it


def _tokens_list(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        tokens = store.list_tokens(args.name)
    if args.json:
        print(json.dumps(tokens, indent=2))
        return
    now = utc_now()
    _print_table(
        ["ID", "NAME", "CREATED", "EXPIRES", "STATUS"],
        [[t["id"], t["name"] or "", t["created_at"], t["expires_at"] or "never", _token_status(t, now)] for t in tokens],
    )


def _tokens_revoke(args: argparse.Namespace) -> None:
    with _open_store(args) as store:
        if not store.revoke_token(args.id):
            raise CommandError(f"unknown token id {args.id!r}")
    print(f"revoked token {args.id}")


def _retention_purge(args: argparse.Namespace) -> None:
    from bridge.config import load_settings, resolve_database_path
    from bridge.retention import purge

    flags = {"CODER_AIBRIDGE_DATABASE_URL": args.database_url} if args.database_url else {}
    if args.retention is not None:
        retention = _duration_flag("--retention", args.retention)
        label = args.retention
    else:
        retention = load_settings(flags=flags, config_path=args.config).retention
        label = f"{retention:g}s (CODER_AIBRIDGE_RETENTION)"
    if retention <= 0:
        print("retention is 0: records are kept forever, nothing purged")
        return
    path = resolve_database_path(flags=flags, config_path=args.config)
    try:
        deleted = purge(path, retention)
    except database_errors() as exc:
        raise CommandError(f"cannot purge records in {mask_url(path)}: {mask_url(str(exc))}") from None
    print(f"purged {deleted} interception(s) older than {label}")


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


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for line in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


# -- records: interceptions list, usage ------------------------------------------------------------


def _add_record_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    interceptions = commands.add_parser("interceptions", help="query interception records").add_subparsers(
        dest="interceptions_command", required=True, metavar="COMMAND"
    )
    p = interceptions.add_parser(
        "list", parents=[common], help="print interceptions as JSON, newest first (the API's answer, for all users)"
    )
    p.add_argument("--initiator", metavar="USER", help="username or user id")
    p.add_argument("--provider", metavar="TYPE", help="provider type: openai, anthropic, copilot")
    p.add_argument("--provider-name", metavar="NAME", help="provider instance name")
    p.add_argument("--model", help="model as the client asked for it")
    p.add_argument("--client", help='client name, e.g. "Claude Code"')
    p.add_argument("--started-after", metavar="TIME", help="RFC 3339 time (inclusive)")
    p.add_argument("--started-before", metavar="TIME", help="RFC 3339 time (exclusive)")
    p.add_argument("--after-id", metavar="ID", help="the page after this interception (keyset pagination)")
    p.add_argument("--offset", metavar="N", help="skip N interceptions (instead of --after-id)")
    p.add_argument("--limit", metavar="N", help="page size, 1-1000 (default 100)")
    p.set_defaults(handler=_interceptions_list)

    p = commands.add_parser("usage", parents=[common], help="interceptions and tokens per user, model or client",
                            description="Interceptions and tokens per user, model, client or provider, read from the"
                                        " usage rollups (fast at any size).")
    p.add_argument("--by", required=True, choices=("user", "model", "client", "provider"), help="how to group")
    p.add_argument("--since", metavar="DURATION",
                   help="only interceptions started in the last DURATION, e.g. 7d; counted in whole hours, from the"
                        " start of the hour DURATION ago")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.set_defaults(handler=_usage)


def _interceptions_list(args: argparse.Namespace) -> None:
    from bridge.api import build_filter, parse_limit, parse_page, query_interceptions

    search = build_filter({
        "initiator": args.initiator,
        "provider": args.provider,
        "provider_name": args.provider_name,
        "model": args.model,
        "client": args.client,
        "started_after": args.started_after,
        "started_before": args.started_before,
    })
    limit = parse_limit(args.limit)
    after_id, offset = parse_page(args.after_id, args.offset)
    with _open_store(args) as store:
        result = query_interceptions(store, search, limit, after_id, offset, viewer_id=None)
    print(json.dumps(result, indent=2, ensure_ascii=False))


def _usage(args: argparse.Namespace) -> None:
    from datetime import datetime, timedelta, timezone

    from bridge.timestamps import format_timestamp

    since = None
    if args.since is not None:
        seconds = _duration_flag("--since", args.since)
        if seconds <= 0:
            raise FlagError("--since: must be a positive duration, e.g. 7d")
        since = format_timestamp(datetime.now(timezone.utc) - timedelta(seconds=seconds))
    with _open_store(args) as store:
        summary = store.usage_summary(args.by, since)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    figures = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
    headers = [args.by.upper(), "INTERCEPTIONS", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE"]
    rows = [[str(r["group"] if r["group"] is not None else "-"), *(f"{r[f]:,}" for f in figures)] for r in summary]
    if len(summary) != 1:
        rows.append(["TOTAL", *(f"{sum(r[f] for r in summary):,}" for f in figures)])
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    for line in [headers, *rows]:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        print("  ".join(cells).rstrip())
