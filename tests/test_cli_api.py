"""``python -m bridge interceptions list`` and ``python -m bridge usage``, run as real subprocesses
against a seeded temp database and compared with the API's answers and with the records written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.test_api import INTERCEPTIONS, Dataset, make_client, seed_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    return seed_dataset(tmp_path_factory.mktemp("cli-api") / "cli.db")


@pytest.fixture(scope="module")
def cli(data: Dataset, tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_AIBRIDGE_", "CODER_CONFIG_PATH"))}
    env["CODER_AIBRIDGE_DATABASE_URL"] = f"sqlite:///{data.path}"
    env["HOME"] = str(tmp_path_factory.mktemp("home"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60)

    return run


def api(data: Dataset, **params: str) -> dict:
    response = make_client(data.path).get(INTERCEPTIONS, query_string=params,
                                          headers={"Authorization": f"Bearer {data.tokens['alice']}"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_interceptions_list_prints_the_apis_json(cli, data: Dataset) -> None:
    day_ago, two_days_ago = data.at(60 * 24), data.at(60 * 48)
    newest = data.newest_first()
    cases = [
        ([], {}),
        (["--initiator", "bob", "--limit", "1000"], {"q": "initiator:bob", "limit": "1000"}),
        (["--initiator", data.users["carol"]["id"]], {"q": f"initiator:{data.users['carol']['id']}"}),
        (["--provider", "anthropic", "--model", "claude-sonnet-4-5"],
         {"q": "provider:anthropic model:claude-sonnet-4-5"}),
        (["--provider-name", "team-b", "--client", "Claude Code"], {"q": 'provider_name:team-b client:"Claude Code"'}),
        (["--started-after", two_days_ago, "--started-before", day_ago],
         {"q": f"started_after:{two_days_ago} started_before:{day_ago}"}),
        (["--limit", "5", "--offset", "10"], {"limit": "5", "offset": "10"}),
        (["--limit", "4", "--after-id", newest[20]], {"limit": "4", "after_id": newest[20]}),
    ]
    for flags, params in cases:
        result = cli("interceptions", "list", *flags)
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert printed == api(data, **params), flags
        assert printed["results"] or flags[:1] == ["--provider-name"], flags  # the cases do select something
    everything = json.loads(cli("interceptions", "list", "--limit", "1000").stdout)
    assert [r["id"] for r in everything["results"]] == newest  # all users: the CLI is an admin's view


@pytest.mark.parametrize("flags, fragment", [
    (["--limit", "0"], "invalid limit 0"),
    (["--limit", "many"], "not a number"),
    (["--offset", "1", "--after-id", "x"], "cannot be combined"),
    (["--after-id", "0f6a4d07-5c53-4ad2-8f66-3f33f1bb5fb5"], "unknown after_id"),
    (["--started-after", "last week"], "started_after"),
    (["--started-after", "2025-06-02T00:00:00Z", "--started-before", "2025-06-01T00:00:00Z"], "later than"),
    (["--initiator", "me"], "initiator 'me'"),
])
def test_interceptions_list_refuses_a_bad_query_in_one_line(cli, flags: list[str], fragment: str) -> None:
    result = cli("interceptions", "list", *flags)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


_FIGURES = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")


def _expected_usage(data: Dataset, key, since: str | None = None) -> dict:
    groups: dict = {}
    for record in data.records:
        if since is not None and record["started_at"] < since:
            continue
        row = groups.setdefault(key(record), {"interceptions": 0, "input_tokens": 0, "output_tokens": 0,
                                              "cache_read_input_tokens": 0, "cache_write_input_tokens": 0})
        row["interceptions"] += 1
        for usage in record["token_usages"]:
            for figure in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens"):
                row[figure] += usage[figure]
    return groups


@pytest.mark.parametrize("by, key", [("user", lambda r: r["username"]), ("model", lambda r: r["model"]),
                                     ("client", lambda r: r["client"]), ("provider", lambda r: r["provider_name"])])
def test_usage_json_adds_up_the_records(cli, data: Dataset, by: str, key) -> None:
    result = cli("usage", "--by", by, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    expected = _expected_usage(data, key)
    assert {r["group"]: {k: r[k] for k in expected[r["group"]]} for r in rows} == expected
    assert [r["interceptions"] for r in rows] == sorted((r["interceptions"] for r in rows), reverse=True)
    if by == "user":
        assert {r["group"]: r["user_id"] for r in rows} == {name: u["id"] for name, u in data.users.items()}


def test_usage_since_counts_whole_hours_of_recent_interceptions(cli, data: Dataset) -> None:
    # The rollups count by hour: --since 1d starts at the beginning of the hour a day ago.
    before = datetime.now(timezone.utc) - timedelta(days=1)
    rows = json.loads(cli("usage", "--by", "model", "--since", "1d", "--json").stdout)
    after = datetime.now(timezone.utc) - timedelta(days=1)
    got = {r["group"]: {k: r[k] for k in _FIGURES} for r in rows}
    assert got in [_expected_usage(data, lambda r: r["model"], since=moment.strftime("%Y-%m-%dT%H:00:00Z"))
                   for moment in (before, after)]
    assert 0 < sum(r["interceptions"] for r in rows) < len(data.records)


def test_usage_table(cli, data: Dataset) -> None:
    result = cli("usage", "--by", "client")
    assert result.returncode == 0, result.stderr
    header, *lines = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    assert header == ["CLIENT", "INTERCEPTIONS", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE"]
    figures = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
    expected = _expected_usage(data, lambda r: r["client"])
    table = {line[0]: line[1:] for line in lines}
    assert table == {
        **{group: [f"{row[k]:,}" for k in figures] for group, row in expected.items()},
        "TOTAL": [f"{sum(row[k] for row in expected.values()):,}" for k in figures],
    }
    assert lines[-1][0] == "TOTAL" and table["TOTAL"][0] == f"{len(data.records):,}"


@pytest.mark.parametrize("flags, code, fragment", [
    (["--by", "user", "--since", "soon"], 2, "--since"),
    (["--by", "user", "--since", "0"], 2, "positive"),
    (["--by", "colour"], 2, "invalid choice"),
])
def test_usage_refuses_bad_flags(cli, flags: list[str], code: int, fragment: str) -> None:
    result = cli("usage", *flags)
    assert result.returncode == code and fragment in result.stderr and result.stdout == ""
