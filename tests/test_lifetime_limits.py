"""Durations, times and sizes too large for a date or a number are refused cleanly (issue 15, item 9):
a 400 naming the field from the admin API (through real gunicorn), one ``error:`` line from the CLI,
never a 500 or a traceback. The longest duration accepted anywhere is 100 years (36525d)."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from bridge.store import open_store
from tests.harness import assert_cli_error, cli_runner

HUGE_DURATIONS = ["999999999999d", "9" * 400 + "h", "36526d", "876601h"]  # all beyond 100 years


@pytest.fixture(scope="module")
def admin(gateway, identities) -> dict[str, str]:
    if identities.store.identity.get_user("lena") is None:
        identities.store.identity.create_user("lena")
    return {"Authorization": f"Bearer {identities.alice}"}


def _assert_no_traceback(gateway) -> None:
    log = gateway.log()
    for marker in ("Traceback", "OverflowError", "unhandled error"):
        assert marker not in log, log[log.find(marker) - 300: log.find(marker) + 1500]


@pytest.mark.parametrize("lifetime", HUGE_DURATIONS)
def test_a_token_lifetime_beyond_100_years_is_a_400_naming_the_field(gateway, admin, lifetime: str) -> None:
    before = len(requests.get(f"{gateway.url}/api/v2/users/lena/tokens", headers=admin, timeout=10).json())
    response = requests.post(f"{gateway.url}/api/v2/users/lena/tokens", json={"lifetime": lifetime},
                             headers=admin, timeout=10)
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert message.startswith("invalid lifetime:") and "100 years" in message and "\n" not in message
    assert len(message) < 200  # a value of 400 digits is not echoed whole
    after = requests.get(f"{gateway.url}/api/v2/users/lena/tokens", headers=admin, timeout=10).json()
    assert len(after) == before  # no token was made
    _assert_no_traceback(gateway)


def test_a_token_of_exactly_100_years_works(gateway, admin) -> None:
    response = requests.post(f"{gateway.url}/api/v2/users/lena/tokens", json={"lifetime": "36525d"},
                             headers=admin, timeout=10)
    assert response.status_code == 201, response.text
    made = response.json()
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(timezone.utc) + timedelta(days=36525))) < timedelta(minutes=5)
    listed = requests.get(f"{gateway.url}/api/v2/aibridge/interceptions",
                          headers={"Authorization": f"Bearer {made['token']}"}, timeout=10)
    assert listed.status_code == 200


@pytest.mark.parametrize("path, params, field", [
    ("interceptions", {"q": "started_after:9999-12-31T23:59:59-01:00"}, "started_after"),
    ("interceptions", {"q": "started_before:0001-01-01T00:00:00+01:00"}, "started_before"),
    ("usage", {"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ("tools", {"since": "0001-01-01T00:00:00+05:00"}, "since"),
])
def test_a_time_beyond_the_calendar_is_a_400_naming_the_field(gateway, admin, path: str, params: dict,
                                                              field: str) -> None:
    response = requests.get(f"{gateway.url}/api/v2/aibridge/{path}", params=params, headers=admin, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["message"] == f"invalid {field}: {params.get('q', '').partition(':')[2] or params[field]!r}" \
                                         " is out of range"
    _assert_no_traceback(gateway)


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path):
    run = cli_runner(f"sqlite:///{tmp_path / 'bridge.db'}", tmp_path)
    run.database = tmp_path / "bridge.db"
    return run


def _one_error_line(result: subprocess.CompletedProcess[str], status: int, fragment: str, short: bool = True) -> None:
    line = assert_cli_error(result, fragment, status)
    assert len(line) < 200 or not short


@pytest.mark.parametrize("lifetime", HUGE_DURATIONS)
def test_cli_token_lifetime_beyond_100_years_is_one_line_and_exit_2(cli, lifetime: str) -> None:
    assert cli("users", "create", "lena").returncode == 0
    _one_error_line(cli("tokens", "create", "lena", "--lifetime", lifetime), 2, "--lifetime: duration")
    with open_store(str(cli.database)) as store:
        assert store.identity.list_tokens("lena") == []


def test_cli_token_lifetime_errors_all_exit_2(cli) -> None:
    assert cli("users", "create", "lena").returncode == 0
    _one_error_line(cli("tokens", "create", "lena", "--lifetime", "forever"), 2, "--lifetime: invalid duration")
    _one_error_line(cli("tokens", "create", "lena", "--lifetime", "0"), 2, "--lifetime: a token lifetime must be")
    made = cli("tokens", "create", "lena", "--lifetime", "36525d")
    assert made.returncode == 0 and made.stdout.strip(), made.stderr


@pytest.mark.parametrize("args, fragment", [
    (["retention", "purge", "--retention", "999999999999d"], "--retention: duration"),
    (["usage", "--by", "user", "--since", "999999999999d"], "--since: duration"),
])
def test_cli_duration_flags_beyond_100_years_are_one_line_and_exit_2(cli, args: list[str], fragment: str) -> None:
    assert cli("users", "create", "lena").returncode == 0  # creates the database (a read-only command would not)
    _one_error_line(cli(*args), 2, fragment)


def test_cli_retention_setting_beyond_100_years_is_one_line(cli) -> None:
    result = cli("retention", "purge", CODER_AIBRIDGE_RETENTION="999999999999d")
    _one_error_line(result, 1, "CODER_AIBRIDGE_RETENTION")


def test_cli_size_setting_of_400_digits_is_one_line(cli) -> None:
    result = cli("retention", "purge", CODER_AIBRIDGE_MAX_BODY_SIZE="9" * 400)
    _one_error_line(result, 1, "CODER_AIBRIDGE_MAX_BODY_SIZE", short=False)  # config.py quotes the value whole


def test_cli_time_beyond_the_calendar_is_one_line(cli) -> None:
    assert cli("users", "create", "lena").returncode == 0  # creates the database
    result = cli("interceptions", "list", "--started-after", "9999-12-31T23:59:59-01:00")
    _one_error_line(result, 2, "--started-after: '9999-12-31T23:59:59-01:00' is out of range")  # a bad flag: exit 2
