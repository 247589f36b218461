"""``python -m bridge interceptions list`` and ``python -m bridge usage``, run as real subprocesses
against a seeded temp database and compared with the API's answers and with the records written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.harness import REPO, assert_cli_error, cli_env, cli_runner
from tests.test_api import INTERCEPTIONS, RAW_TOOL_INPUT, Dataset, make_client, seed_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    return seed_dataset(tmp_path_factory.mktemp("cli-api") / "cli.db")


@pytest.fixture(scope="module")
def cli(data: Dataset, tmp_path_factory):
    return cli_runner(f"sqlite:///{data.path}", tmp_path_factory.mktemp("home"))


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
        result = cli("interceptions", "list", "--json", *flags)
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert printed == api(data, **params), flags
        assert printed["results"] or flags[:1] == ["--provider-name"], flags  # the cases do select something
    everything = json.loads(cli("interceptions", "list", "--json", "--limit", "1000").stdout)
    assert [r["id"] for r in everything["results"]] == newest  # all users: the CLI is an admin's view


@pytest.mark.parametrize("flags, fragment", [
    (["--limit", "0"], "invalid limit 0"),
    (["--limit", "many"], "not a number"),
    (["--offset", "1", "--after-id", "x"], "cannot be combined"),
    (["--after-id", "0f6a4d07-5c53-4ad2-8f66-3f33f1bb5fb5"], "unknown after_id"),
    (["--initiator", "me"], "initiator 'me'"),
])
def test_interceptions_list_refuses_a_bad_query_in_one_line(cli, flags: list[str], fragment: str) -> None:
    assert_cli_error(cli("interceptions", "list", *flags), fragment)


_FIGURES = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")


def _expected_usage(data: Dataset, key, since: str | None = None) -> dict:
    groups: dict = {}
    for record in data.records:
        if since is not None and record["started_at"] < since:
            continue
        row = groups.setdefault(key(record), {"interceptions": 0, "input_tokens": 0, "output_tokens": 0,
                                              "cache_read_input_tokens": 0, "cache_write_input_tokens": 0,
                                              "unpriced_token_usages": 0, "cost_usd": None})
        row["interceptions"] += 1
        for usage in record["token_usages"]:
            for figure in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens"):
                row[figure] += usage[figure]
            if usage["cost_usd"] is None:  # the dataset's records cost (i + 1) / 64 USD, none when i % 6 == 5
                row["unpriced_token_usages"] += 1
            else:
                row["cost_usd"] = (row["cost_usd"] or 0) + usage["cost_usd"]
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
    got = {r["group"]: {k: r[k] for k in (*_FIGURES, "unpriced_token_usages", "cost_usd")} for r in rows}
    assert got in [_expected_usage(data, lambda r: r["model"], since=moment.strftime("%Y-%m-%dT%H:00:00Z"))
                   for moment in (before, after)]
    assert 0 < sum(r["interceptions"] for r in rows) < len(data.records)


def test_usage_table(cli, data: Dataset) -> None:
    result = cli("usage", "--by", "client")
    assert result.returncode == 0, result.stderr
    printed, note = result.stdout.split("\n\n")
    header, *lines = [re.split(r"\s{2,}", line.strip()) for line in printed.splitlines()]
    assert header == ["CLIENT", "INTERCEPTIONS", "INPUT", "OUTPUT", "CACHE READ", "CACHE WRITE", "COST USD"]
    figures = ("interceptions", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
    expected = _expected_usage(data, lambda r: r["client"])

    def cost(value: float, unpriced: int) -> str:  # USD to 4 places; "*": some usages of the group had no price
        return f"{value:,.4f}" + ("*" if unpriced else "")

    table = {line[0]: line[1:] for line in lines}
    assert table == {
        **{group: [*(f"{row[k]:,}" for k in figures), cost(row["cost_usd"], row["unpriced_token_usages"])]
           for group, row in expected.items()},
        "TOTAL": [*(f"{sum(row[k] for row in expected.values()):,}" for k in figures), cost(3375 / 64, 15)],
    }
    assert lines[-1][0] == "TOTAL" and table["TOTAL"][0] == f"{len(data.records):,}"
    assert table["TOTAL"][-1] == "52.7344*"  # (1 + .. + 90 less 6, 12, .., 90) / 64 USD; 15 usages unpriced
    assert note.startswith("* 15 token usage(s) of a model without a price are not in the cost")


def test_usage_sort(cli, data: Dataset) -> None:
    """--sort orders the groups, biggest first: requests (interceptions, the default), tokens or cost."""
    def rows(*flags: str) -> list[dict]:
        result = cli("usage", "--by", "user", *flags, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    tokens = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
    orders = {}
    for sort, size in (("requests", lambda r: r["interceptions"]), ("tokens", lambda r: sum(r[f] for f in tokens)),
                       ("cost", lambda r: r["cost_usd"])):
        found = rows("--sort", sort)
        assert [size(r) for r in found] == sorted((size(r) for r in found), reverse=True), sort
        orders[sort] = [r["group"] for r in found]
    assert rows() == rows("--sort", "requests")
    assert len(set(map(tuple, orders.values()))) > 1  # the orders differ on this dataset
    table = cli("usage", "--by", "user", "--sort", "cost").stdout.splitlines()
    assert [line.split()[0] for line in table[1:1 + len(orders["cost"])]] == orders["cost"]


@pytest.mark.parametrize("flags, code, fragment", [
    (["--by", "user", "--since", "soon"], 2, "--since"),
    (["--by", "user", "--since", "0"], 2, "positive"),
    (["--by", "colour"], 2, "invalid choice"),
    (["--sort", "spend"], 2, "invalid choice: 'spend'"),
])
def test_usage_refuses_bad_flags(cli, flags: list[str], code: int, fragment: str) -> None:
    result = cli("usage", *flags)
    assert result.returncode == code and fragment in result.stderr and result.stdout == ""


# -- the readable forms, dates, unknown names, usage defaults, pipes ----------------------------


def _midnight(data: Dataset, days_ago: int) -> str:
    """A date inside the dataset's span (records start up to ~79 hours back)."""
    return (data.now - timedelta(days=days_ago)).date().isoformat()


def test_interceptions_list_prints_a_table_by_default(cli, data: Dataset) -> None:
    result = cli("interceptions", "list", "--initiator", "bob", "--limit", "5")
    assert result.returncode == 0, result.stderr
    header, *rows, footer = result.stdout.splitlines()
    assert header.split() == ["STARTED", "ID", "USER", "PROVIDER", "MODEL", "CLIENT", "INPUT", "OUTPUT", "COST", "USD",
                              "TOOLS"]
    expected = api(data, q="initiator:bob", limit="5")
    records = {r["id"]: r for r in data.records}
    assert [row.split()[1] for row in rows] == [r["id"] for r in expected["results"]]
    for row, result_ in zip(rows, expected["results"]):
        cells = re.split(r"\s{2,}", row)
        record = records[result_["id"]]
        assert cells[0] == result_["started_at"][:19] + "Z" and cells[2] == "bob"
        assert cells[3:6] == [record["provider_name"], record["model"], record["client"]]
        cost = record["token_usages"][0]["cost_usd"]  # "—": its one usage has no price
        assert cells[6:] == [str(record["token_usages"][0]["input_tokens"]),
                             str(record["token_usages"][0]["output_tokens"]), "—" if cost is None else f"{cost:.4f}",
                             str(len(record["tool_usages"]))]
    assert footer == f"5 of {expected['count']} matching interception(s); next page: --after-id {rows[-1].split()[1]}"


def test_started_flags_take_a_date_as_midnight_utc(cli, data: Dataset) -> None:
    after, before = _midnight(data, 2), _midnight(data, 1)
    by_date = json.loads(cli("interceptions", "list", "--json", "--limit", "1000",
                             "--started-after", after, "--started-before", before).stdout)
    assert by_date == api(data, q=f"started_after:{after}T00:00:00Z started_before:{before}T00:00:00Z", limit="1000")
    assert 0 < by_date["count"] < len(data.records)
    by_time = cli("interceptions", "list", "--json", "--limit", "1000", "--started-after", f"{after}T02:00:00+02:00",
                  "--started-before", f"{before}T00:00:00Z")
    assert json.loads(by_time.stdout) == by_date  # RFC 3339 still works, offsets included


@pytest.mark.parametrize("args, flag", [
    (["interceptions", "list", "--started-after", "last week"], "--started-after"),
    (["interceptions", "list", "--started-before", "2025-02-30"], "--started-before"),
    (["interceptions", "list", "--started-after", "2025-06-02", "--started-before", "2025-06-01T00:00:00Z"],
     "--started-before"),
    (["usage", "--until", "tomorrow"], "--until"),
    (["usage", "--since", "2025-06-02", "--until", "2025-06-01"], "--until"),
])
def test_time_flag_errors_name_the_flag(cli, args: list[str], flag: str) -> None:
    result = cli(*args)
    assert result.returncode == 2 and result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), result.stderr
    assert "started_after" not in lines[0] and "started_before" not in lines[0]  # the flags, not the API's keys


def test_interceptions_show_prints_one_interception_readably_and_as_json(cli, data: Dataset) -> None:
    record = data.records[20]  # one with a prompt, two tool calls, a thought and token usage
    assert record["user_prompts"] and record["tool_usages"] and record["model_thoughts"]
    element = next(r for r in api(data, limit="1000")["results"] if r["id"] == record["id"])
    as_json = cli("interceptions", "show", record["id"], "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == element

    shown = cli("interceptions", "show", record["id"])
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.split("\n\n")[0].splitlines())
    assert fields["interception"] == record["id"]
    assert fields["user"] == f"{record['username']} ({record['initiator_id']})"
    assert fields["model"] == record["model"] and fields["client"] == record["client"]
    assert fields["started"] == element["started_at"][:19] + "Z"
    assert fields["ended"] == element["ended_at"][:19] + "Z (after 4s)"
    assert fields["cost"] == "$0.328125" == f"${element['cost_usd']:.6f}"  # record 20's: 21 / 64 USD
    sections = {part.splitlines()[0]: part.splitlines()[1:] for part in text.split("\n\n")[1:]}
    assert sections["prompt"] == [f"  {record['user_prompts'][0]['prompt']}"]
    tools = sections["tool calls (2)"]
    assert tools[0].split() == ["Read", "toolu_020a"] and tools[5].split() == ["Read", "toolu_020", "injected"]
    assert json.loads("\n".join(tools[1:5])) == json.loads(RAW_TOOL_INPUT)  # the arguments, pretty-printed
    assert sections["thoughts (1)"] == [f"  {record['model_thoughts'][0]['content']}"]
    usage = record["token_usages"][0]
    head, row = sections["token usage"]
    assert head.split() == ["RESPONSE", "INPUT", "OUTPUT", "CACHE", "READ", "CACHE", "WRITE", "COST", "USD", "OTHER"]
    assert row.split() == [usage["provider_response_id"], str(usage["input_tokens"]), str(usage["output_tokens"]),
                           str(usage["cache_read_input_tokens"]), str(usage["cache_write_input_tokens"]), "0.3281",
                           "reasoning_tokens=20"]


def test_interceptions_show_of_an_unknown_id_is_one_error_line(cli) -> None:
    result = cli("interceptions", "show", "0f6a4d07-5c53-4ad2-8f66-3f33f1bb5fb5")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "error: unknown interception id '0f6a4d07-5c53-4ad2-8f66-3f33f1bb5fb5'\n"


@pytest.mark.parametrize("flags, fragment", [
    (["--initiator", "ghost"], "--initiator: unknown user 'ghost'"),
    (["--provider", "OpenAI"], "--provider: unknown provider type 'OpenAI'"),
    (["--provider-name", "team-z"], "--provider-name: unknown provider 'team-z'"),
])
def test_an_unknown_user_or_provider_is_an_error_not_zero(cli, flags: list[str], fragment: str) -> None:
    assert_cli_error(cli("interceptions", "list", *flags), fragment)


def test_known_names_with_no_match_are_an_empty_answer(cli, data: Dataset) -> None:
    future = (data.now + timedelta(days=2)).date().isoformat()
    for flags in (["--initiator", "carol"], ["--initiator", "dave"], ["--provider", "copilot"],
                  ["--provider-name", "team-b"]):  # dave is deleted: his records keep him known
        result = cli("interceptions", "list", *flags, "--started-after", future)
        assert result.returncode == 0 and result.stdout == "no interceptions match\n", (flags, result.stderr)
        as_json = cli("interceptions", "list", "--json", *flags, "--started-after", future)
        assert json.loads(as_json.stdout) == {"count": 0, "results": []}


def test_usage_groups_by_model_by_default_and_takes_until(cli, data: Dataset) -> None:
    default = cli("usage")
    assert default.returncode == 0, default.stderr
    assert default.stdout.split()[0] == "MODEL"
    assert json.loads(cli("usage", "--json").stdout) == json.loads(cli("usage", "--by", "model", "--json").stdout)

    since, until = _midnight(data, 2), _midnight(data, 1)
    rows = json.loads(cli("usage", "--since", since, "--until", until, "--json").stdout)
    got = {r["group"]: {k: r[k] for k in (*_FIGURES, "unpriced_token_usages", "cost_usd")} for r in rows}
    window = [r for r in data.records if f"{since}T00" <= r["started_at"] < f"{until}T00"]
    assert got == _expected_usage(Dataset(data.path, data.now, records=window), lambda r: r["model"])
    assert 0 < sum(r["interceptions"] for r in rows) < len(data.records)
    earlier = json.loads(cli("usage", "--until", until, "--json").stdout)
    assert sum(r["interceptions"] for r in earlier) == sum(r["started_at"] < f"{until}T00" for r in data.records)


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(data: Dataset, tmp_path: Path) -> None:
    env = cli_env(f"sqlite:///{data.path}", tmp_path)
    # Far more than a pipe holds (64 KiB), so the command is still writing when the reader goes.
    command = [sys.executable, "-m", "bridge", "interceptions", "list", "--json", "--limit", "1000"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"{\n"
        process.stdout.close()  # like `| head -1`
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert stderr == b""
