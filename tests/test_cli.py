"""``python -m bridge`` users/tokens commands, run as real subprocesses against a temp database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.store import open_store
from bridge.units import format_duration, parse_duration
from tests.harness import assert_cli_error, cli_runner


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bridge.db"


@pytest.fixture
def cli(tmp_path: Path, db_path: Path):
    return cli_runner(f"sqlite:///{db_path}", tmp_path)


def test_users_create_list_delete(cli, db_path: Path) -> None:
    created = cli("users", "create", "alice", "--admin")
    assert created.returncode == 0, created.stderr
    alice = json.loads(created.stdout)
    assert alice["username"] == "alice" and alice["is_admin"] is True
    assert json.loads(cli("users", "create", "bob").stdout)["is_admin"] is False

    listed = cli("users", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [u["username"] for u in json.loads(listed.stdout)] == ["alice", "bob"]

    table = cli("users", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["USERNAME", "ID", "ADMIN", "CREATED"]
    assert rows[0].split()[:3] == ["alice", alice["id"], "yes"]
    assert rows[1].split()[0] == "bob"

    deleted = cli("users", "delete", "alice")
    assert deleted.returncode == 0, deleted.stderr
    assert [u["username"] for u in json.loads(cli("users", "list", "--json").stdout)] == ["bob"]
    with open_store(str(db_path)) as store:
        assert store.identity.get_user("alice") is None


def test_user_errors(cli) -> None:
    assert cli("users", "create", "alice").returncode == 0
    assert_cli_error(cli("users", "create", "alice"), "already exists")
    assert_cli_error(cli("users", "create", "-bad name"), "invalid username")
    assert_cli_error(cli("users", "delete", "ghost"), "unknown user 'ghost'")


def test_tokens_create_prints_only_the_token_and_it_authenticates(cli, db_path: Path) -> None:
    alice = json.loads(cli("users", "create", "alice").stdout)
    created = cli("tokens", "create", "alice", "--lifetime", "30d", "--name", "laptop")
    assert created.returncode == 0, created.stderr
    assert created.stdout.endswith("\n") and created.stdout.count("\n") == 1
    token = created.stdout.strip()
    assert created.stdout == token + "\n"
    with open_store(str(db_path)) as store:
        identity = store.identity.authenticate(token)
    assert identity is not None and identity["user_id"] == alice["id"] and identity["username"] == "alice"

    listed = json.loads(cli("tokens", "list", "alice", "--json").stdout)
    assert [t["id"] for t in listed] == [identity["token_id"]]
    assert listed[0]["name"] == "laptop" and listed[0]["expires_at"] is not None
    assert "hashed_secret" not in listed[0]

    table = cli("tokens", "list", "alice")
    assert table.returncode == 0, table.stderr
    secret = token.split("-", 1)[1]
    for output in (table.stdout, json.dumps(listed)):
        assert secret not in output
    header, row = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "CREATED", "EXPIRES", "STATUS"]
    assert row.split()[:2] == [identity["token_id"], "laptop"] and row.split()[-1] == "active"

    revoked = cli("tokens", "revoke", identity["token_id"])
    assert revoked.returncode == 0, revoked.stderr
    assert cli("tokens", "list", "alice").stdout.splitlines()[1].split()[-1] == "revoked"
    with open_store(str(db_path)) as store:
        assert store.identity.authenticate(token) is None


def test_token_without_lifetime_never_expires(cli) -> None:
    cli("users", "create", "alice")
    assert cli("tokens", "create", "alice").returncode == 0
    (token,) = json.loads(cli("tokens", "list", "alice", "--json").stdout)
    assert token["expires_at"] is None and token["name"] is None
    assert cli("tokens", "list", "alice").stdout.splitlines()[1].split()[-2:] == ["never", "active"]


def test_token_errors(cli) -> None:
    assert_cli_error(cli("tokens", "create", "ghost"), "unknown user 'ghost'")
    assert_cli_error(cli("tokens", "list", "ghost"), "unknown user 'ghost'")
    cli("users", "create", "alice")
    assert_cli_error(cli("tokens", "create", "alice", "--lifetime", "forever"), "invalid duration", status=2)
    assert_cli_error(cli("tokens", "create", "alice", "--lifetime", "0"), "lifetime must be positive", status=2)
    assert_cli_error(cli("tokens", "revoke", "zzzzzzzzzz"), "unknown token id 'zzzzzzzzzz'")
    assert json.loads(cli("tokens", "list", "alice", "--json").stdout) == []


def test_database_url_flag_wins_over_env(cli, tmp_path: Path, db_path: Path) -> None:
    flagged = tmp_path / "flagged.db"
    assert cli("users", "create", "bob").returncode == 0  # in the env's database
    # Before the subcommand and after it: both positions are accepted.
    assert cli("--database-url", f"sqlite:///{flagged}", "users", "create", "alice").returncode == 0
    listed = cli("users", "list", "--json", "--database-url", str(flagged))
    assert [u["username"] for u in json.loads(listed.stdout)] == ["alice"]
    assert [u["username"] for u in json.loads(cli("users", "list", "--json").stdout)] == ["bob"]
    assert db_path.exists()


@pytest.mark.parametrize("command", [
    ["users", "list"], ["tokens", "list", "alice"], ["interceptions", "list"],
    ["interceptions", "show", "0f6a4d07-5c53-4ad2-8f66-3f33f1bb5fb5"], ["usage"],
])
def test_a_read_only_command_does_not_create_a_missing_database(cli, tmp_path: Path, command: list[str]) -> None:
    for url in (str(tmp_path / "typo.db"), f"sqlite:///{tmp_path / 'typo.db'}"):
        assert_cli_error(cli("--database-url", url, *command), f"no database at {tmp_path / 'typo.db'}")
    assert not (tmp_path / "typo.db").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("typo")] == []


def test_unopenable_database_is_one_error_line(cli, tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "bridge.db"
    # A command that may create the database (a read-only one says "no database at", see above).
    assert_cli_error(cli("--database-url", str(missing_dir), "users", "create", "alice"), "cannot open database")


def test_missing_subcommand_is_a_usage_error(cli) -> None:
    result = cli("users")
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_retention_purge(cli, tmp_path: Path, db_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from bridge.store import RecordBatch, open_store
    from bridge.timestamps import format_timestamp

    now = datetime.now(timezone.utc)
    with open_store(str(db_path), migrate=True) as store:
        store.records.write_records(
            RecordBatch.load(dict(
                interceptions=[
                    {"id": f"i{days}", "started_at": format_timestamp(now - timedelta(days=days))}
                    for days in (1, 40, 50, 90)
                ]
            ))
        )

    keep_forever = tmp_path / "forever.yaml"
    keep_forever.write_text("aibridge:\n  retention: 0\n")
    result = cli("retention", "purge", "--config", str(keep_forever))
    assert result.returncode == 0, result.stderr
    assert "nothing purged" in result.stdout

    result = cli("retention", "purge", "--retention", "60d")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "purged 1 interception(s) older than 60d\n"

    result = cli("retention", "purge")  # the default retention, 60d: nothing more to delete
    assert result.returncode == 0, result.stderr
    assert result.stdout == "purged 0 interception(s) older than 60d (CODER_AIBRIDGE_RETENTION)\n"
    result = cli("retention", "purge", "--retention", "1440h30m")  # printed as people write it
    assert result.stdout == "purged 0 interception(s) older than 60d30m\n"

    result = cli("retention", "purge", "--retention", "30d")
    assert result.stdout == "purged 2 interception(s) older than 30d\n"
    with open_store(str(db_path)) as store:
        assert [r["id"] for r in store.db.query("SELECT id FROM aibridge_interceptions")] == ["i1"]

    assert_cli_error(cli("retention", "purge", "--retention", "soon"), "--retention: invalid duration", status=2)


@pytest.mark.parametrize("seconds, text", [
    (60 * 86400, "60d"), (5400, "1h30m"), (90, "1m30s"), (86400 + 1, "1d1s"), (1.5, "1s500ms"),
    (0.0005, "0.5ms"), (0, "0"), (36525 * 86400, "36525d"),
])
def test_format_duration_writes_what_parse_duration_reads(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# -- client-chosen text on the admin's terminal ------------------------------------------------------

HOSTILE = "\x1b]0;PWNED\x07\x1b[2J\tx\r\x9b\x7f"  # retitle, clear the screen, a tab, a CR, C1 CSI, DEL


def test_records_print_no_control_character_a_client_chose(cli, db_path: Path) -> None:
    """Every text a client chose (model, client, session id, user agent, prompt, tool call, thought)
    reaches the admin's terminal escaped: a table keeps its columns and the terminal its title and screen."""
    from bridge.store import RecordBatch

    at = "2026-03-01T10:00:01.000000Z"
    with open_store(str(db_path), migrate=True) as store:
        user = store.identity.create_user("ann")["id"]
        store.records.write_records(RecordBatch.load({
            "interceptions": [{"id": "i1", "initiator_id": user, "provider": "anthropic", "provider_name": "anthropic",
                               "model": f"m{HOSTILE}", "client": f"c{HOSTILE}", "client_session_id": f"s{HOSTILE}",
                               "user_agent": f"ua{HOSTILE}", "correlating_tool_call_id": f"t{HOSTILE}",
                               "started_at": at}],
            "ends": [{"id": "i1", "ended_at": at}],
            "user_prompts": [{"id": "p1", "interception_id": "i1", "prompt": f"p{HOSTILE}", "created_at": at}],
            "tool_usages": [{"id": "u1", "interception_id": "i1", "provider_tool_call_id": f"k{HOSTILE}",
                             "tool": f"tool{HOSTILE}", "input": f"in{HOSTILE}", "invocation_error": f"e{HOSTILE}",
                             "created_at": at}],
            "model_thoughts": [{"id": "th1", "interception_id": "i1", "content": f"th{HOSTILE}", "created_at": at}],
            "token_usages": [{"id": "tu1", "interception_id": "i1", "input_tokens": 1, "output_tokens": 1,
                              "provider_response_id": f"r{HOSTILE}", "created_at": at}],
        }))
    for command in (["interceptions", "list"], ["interceptions", "show", "i1"], ["sessions", "list"],
                    ["sessions", "show", f"s{HOSTILE}"]):
        result = cli(*command)
        assert result.returncode == 0, (command, result.stderr)
        printed = result.stdout.replace("\n", "")
        assert not [c for c in printed if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f], (command, result.stdout)
        assert "\\x1b]0;PWNED\\x07\\x1b[2J" in result.stdout, (command, result.stdout)
    table = cli("interceptions", "list").stdout.splitlines()
    assert len(table) == 3 and table[1].split()[2:6] == ["ann", "anthropic", "m\\x1b]0;PWNED\\x07\\x1b[2J\\tx\\r\\x9b\\x7f",
                                                         "c\\x1b]0;PWNED\\x07\\x1b[2J\\tx\\r\\x9b\\x7f"]
    # --json stays the data as stored (JSON escapes it).
    listed = json.loads(cli("interceptions", "list", "--json").stdout)
    assert listed["results"][0]["model"] == f"m{HOSTILE}"
