"""Budgets (SPEC §11): a user whose spend in the current UTC day, week or month reached a limit gets a
provider-shaped 429 with Retry-After, before the call reaches the upstream; another user does not;
the default budget holds users without one; a new period lets them through. Through real gunicorn
(two workers) on SQLite, and two instances on one PostgreSQL. Time is moved with the budgets' test
clock (BRIDGE_TEST_CLOCK_FILE), never waited for.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict

from bridge import budget_rules
from bridge.budget_rules import Budget, BudgetError, parse_budget, period_end, period_start
from bridge.budgets import reading_of
from bridge.records import InterceptionRecord, TokenUsageRecord
from bridge.store import RecordBatch, open_store
from tests.conftest import provider_env
from tests.harness import GatewayProcess, assert_cli_error, cli_runner, wait_until
from tests.sdk_calls import anthropic_client, openai_client

BUDGETS = "/api/v2/aibridge/budgets"
#: Well above the guard's refresh (1 s) plus the recorder's batch wait (0.5 s).
ENFORCED_WITHIN = 15.0
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- periods, validation, who is refused (no server) ---------------------------------------------


@pytest.mark.parametrize("moment, period, start, end", [
    ("2026-11-20T10:42:07Z", "day", "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"),
    ("2026-11-20T10:42:07Z", "week", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),  # a Friday: from Monday
    ("2026-11-16T00:00:00Z", "week", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),  # Monday midnight starts one
    ("2026-11-22T23:59:59Z", "week", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),  # Sunday ends it
    ("2026-12-31T23:59:59Z", "month", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("2028-02-29T12:00:00Z", "month", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
    ("2026-11-20T01:30:00+02:00", "day", "2026-11-19T00:00:00Z", "2026-11-20T00:00:00Z"),  # UTC days
])
def test_periods_are_utc_calendar_days_iso_weeks_and_months(moment, period, start, end):
    assert budget_rules.rfc3339(period_start(period, utc(moment))) == start
    assert budget_rules.rfc3339(period_end(period, utc(moment))) == end


@pytest.mark.parametrize("body, fragment", [
    ({"limit_usd": 5}, "field 'period' is required"),
    ({"period": "year", "limit_usd": 5}, "field 'period' must be one of day, week, month"),
    ({"period": "day"}, "a budget needs a limit"),
    ({"period": "day", "limit_usd": None, "limit_tokens": None}, "a budget needs a limit"),
    ({"period": "day", "limit_usd": -1}, "field 'limit_usd' must be a number >= 0"),
    ({"period": "day", "limit_usd": "5"}, "field 'limit_usd' must be a number >= 0"),
    ({"period": "day", "limit_usd": True}, "field 'limit_usd' must be a number >= 0"),
    ({"period": "day", "limit_usd": float("inf")}, "field 'limit_usd' must be a number >= 0"),
    ({"period": "day", "limit_tokens": 1.5}, "field 'limit_tokens' must be an integer >= 0"),
    ({"period": "day", "limit_tokens": -3}, "field 'limit_tokens' must be an integer >= 0"),
    ({"period": "day", "limit_tokens": 2**63}, "field 'limit_tokens' must be an integer >= 0"),  # no store holds it
    ({"period": "day", "limit_usd": 1, "users": []}, "unknown field 'users'"),
    (["day"], "a budget is a JSON object"),
])
def test_a_bad_budget_is_refused_naming_the_problem(body, fragment):
    with pytest.raises(BudgetError, match=fragment):
        parse_budget(body)


def test_a_good_budget_takes_either_limit_or_both():
    assert parse_budget({"period": "week", "limit_usd": 5}) == Budget("week", 5.0, None)
    assert parse_budget({"period": "month", "limit_tokens": 0}) == Budget("month", None, 0)
    assert parse_budget({"period": "day", "limit_usd": 0.5, "limit_tokens": 10}) == Budget("day", 0.5, 10)


def _row(user_id: str | None, period: str, usd: float | None = None, tokens: int | None = None) -> dict:
    return {"user_id": user_id, "username": user_id, "default": user_id is None, "period": period,
            "limit_usd": usd, "limit_tokens": tokens, "updated_at": "2026-11-20T00:00:00Z"}


def test_a_reading_refuses_whoever_reached_their_own_budget_or_else_the_default():
    now = utc("2026-11-20T10:00:00Z")
    budgets = [_row(None, "day", tokens=100), _row("own", "week", usd=1.0), _row("generous", "day", tokens=10_000)]
    spend = {"own": {"day": (0.1, 50), "week": (1.5, 500), "month": (1.5, 500)},
             "generous": {"day": (None, 500), "week": (None, 500), "month": (None, 500)},
             "heavy": {"day": (None, 100), "week": (None, 100), "month": (None, 100)},
             "light": {"day": (None, 99), "week": (None, 99), "month": (None, 99)}}
    reading = reading_of(budgets, spend, now)
    own = reading.refusals["own"]
    assert (own.is_default, own.limit, own.resets_at) == (False, "usd", utc("2026-11-23T00:00:00Z"))
    assert reading.refusals["generous"] is None  # their own budget, not the default, holds them
    heavy = reading.refusals["heavy"]
    assert (heavy.is_default, heavy.limit, heavy.tokens) == (True, "tokens", 100)
    assert reading.refusals["light"] is None
    assert reading.default is None  # a user who spent nothing is under a default of 100 tokens
    zero = reading_of([_row(None, "month", usd=0.0)], {}, now)
    assert zero.default is not None and zero.default.resets_at == utc("2026-12-01T00:00:00Z")  # a 0 limit: nobody
    error = own.error("own", now)
    assert error.status == 429 and error.headers == {"Retry-After": str(3 * 86400 - 10 * 3600),
                                                    "x-should-retry": "false"}
    assert "weekly budget of user 'own'" in error.message and "2026-11-23T00:00:00Z" in error.message


def test_the_test_clock_reads_its_file(tmp_path, monkeypatch):
    clock = tmp_path / "clock"
    monkeypatch.setenv(budget_rules.TEST_CLOCK_ENV, str(clock))
    assert abs(budget_rules.now() - datetime.now(timezone.utc)) < timedelta(minutes=1)  # no file: the real time
    clock.write_text("2031-01-05T08:00:00+01:00\n")
    assert budget_rules.now() == utc("2031-01-05T07:00:00Z")


# -- the store (both backends) ------------------------------------------------------------------


def _spent(store, user_id: str, at: str, tokens: int, cost: float | None) -> None:
    interception = str(uuid.uuid4())
    store.records.write_records(RecordBatch(
        interceptions=[InterceptionRecord(id=interception, initiator_id=user_id, provider="openai",
                                          provider_name="openai", model="gpt-4o", started_at=at)],
        token_usages=[TokenUsageRecord(id=str(uuid.uuid4()), interception_id=interception, input_tokens=tokens,
                                       output_tokens=1, cache_read_input_tokens=2, cache_write_input_tokens=3,
                                       created_at=at, cost_usd=cost)]))


def test_budgets_are_kept_and_spend_is_summed_per_period(store_url):
    store = open_store(store_url, migrate=True)
    try:
        ann = store.identity.create_user("ann")["id"]
        ben = store.identity.create_user("Ben")["id"]
        assert store.budgets.snapshot(budget_rules.current_periods(utc("2026-11-20T10:00:00Z"))) == ([], {})
        assert store.budgets.put("ben", "week", 2.5, None)["username"] == "Ben"
        store.budgets.put(ann, "day", None, 1000)
        store.budgets.put(ann, "month", 1.0, 50)  # replaces
        assert store.budgets.get("ann")["period"] == "month" and store.budgets.get("ann")["limit_tokens"] == 50
        assert store.budgets.get(None) is None
        with pytest.raises(ValueError, match="unknown user 'zed'"):
            store.budgets.put("zed", "day", 1.0, None)
        _spent(store, ann, "2026-10-31T23:00:00.000000Z", 1000, 1.0)  # last month
        _spent(store, ann, "2026-11-16T00:10:00.000000Z", 10, 0.25)  # this week's Monday
        _spent(store, ann, "2026-11-20T09:00:00.000000Z", 20, None)  # today, no price
        _spent(store, ann, "2026-11-20T10:30:00.000000Z", 30, 0.5)  # today
        _spent(store, ben, "2026-11-02T10:00:00.000000Z", 5, 0.125)  # this month, an earlier week
        periods = budget_rules.current_periods(utc("2026-11-20T11:00:00Z"))
        spend = store.budgets.spend(periods, [ann])
        tokens = lambda n: n + 1 + 2 + 3  # noqa: E731  every kind of token counts
        assert spend == {ann: {"day": (pytest.approx(0.5), tokens(20) + tokens(30)),
                               "week": (pytest.approx(0.75), tokens(10) + tokens(20) + tokens(30)),
                               "month": (pytest.approx(0.75), tokens(10) + tokens(20) + tokens(30))}}
        budgets, everyone = store.budgets.snapshot(periods)
        assert [row["username"] for row in budgets] == ["ann", "Ben"]
        assert set(everyone) == {ann, ben}
        assert everyone[ben]["week"] == (None, 0) and everyone[ben]["month"] == (pytest.approx(0.125), tokens(5))
        store.budgets.put(None, "day", None, 0)
        assert [row["default"] for row in store.budgets.list_budgets()] == [True, False, False]
        assert store.budgets.delete("ann") and not store.budgets.delete("ann")
        assert store.budgets.delete(None)
        assert [row["username"] for row in store.budgets.list_budgets()] == ["Ben"]
    finally:
        store.close()


# -- through gunicorn ---------------------------------------------------------------------------


class Setup:
    """A store with an admin, gateways on it with the test clock, and the clock file."""

    def __init__(self, database: str, clock: Path, gateways: list[GatewayProcess], metrics_dirs: list[Path]) -> None:
        self.database = database
        self.clock = clock
        self.gateways = gateways
        self.metrics_dirs = metrics_dirs
        store = open_store(database, migrate=True)
        try:
            if store.identity.get_user("root") is None:
                store.identity.create_user("root", is_admin=True)
            self.admin = store.identity.create_token("root")[0]
        finally:
            store.close()

    def user(self) -> tuple[str, str]:
        """A new user and their token."""
        name = f"u{uuid.uuid4().hex[:8]}"
        store = open_store(self.database)
        try:
            store.identity.create_user(name)
            return name, store.identity.create_token(name)[0]
        finally:
            store.close()

    def api(self, method: str, path: str, token: str | None = None, gateway: GatewayProcess | None = None,
            **kwargs) -> requests.Response:
        return requests.request(method, f"{(gateway or self.gateways[0]).url}{path}", timeout=30,
                                headers={"Authorization": f"Bearer {token or self.admin}"}, **kwargs)

    def set_budget(self, who: str, **budget) -> dict:
        response = self.api("PUT", f"{BUDGETS}/{who}", json=budget)
        assert response.status_code == 200, response.text
        return response.json()


def _start(env: dict[str, str], directory: Path, workers: int = 2) -> tuple[GatewayProcess, Path]:
    metrics_dir = directory / "metrics"
    metrics_dir.mkdir()
    process = GatewayProcess({**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, directory / "gateway.log",
                             workers=workers)
    process.cwd = directory
    return process.start(), metrics_dir


@pytest.fixture(scope="module")
def sqlite_setup(upstream, tmp_path_factory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("budgets")
    database, clock = str(root / "bridge.db"), root / "clock"
    env = {**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}",
           budget_rules.TEST_CLOCK_ENV: str(clock)}
    setup = Setup(database, clock, [], [])
    gateway, metrics_dir = _start(env, root)
    setup.gateways.append(gateway)
    setup.metrics_dirs.append(metrics_dir)
    try:
        yield setup
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def postgres_setup(upstream, postgres, tmp_path_factory) -> Iterator[Setup]:
    database = postgres.create_database("budgets")
    root = tmp_path_factory.mktemp("budgets-pg")
    clock = root / "clock"
    env = {**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": database, budget_rules.TEST_CLOCK_ENV: str(clock)}
    setup = Setup(database, clock, [], [])
    try:
        for n in range(2):
            directory = root / f"instance-{n}"
            directory.mkdir()
            gateway, metrics_dir = _start(env, directory)
            setup.gateways.append(gateway)
            setup.metrics_dirs.append(metrics_dir)
        yield setup
    finally:
        for gateway in setup.gateways:
            gateway.stop()


@pytest.fixture(autouse=True)
def _real_clock(request) -> Iterator[None]:
    """Each gateway test starts and ends at the real time (no clock file)."""
    setups = [request.getfixturevalue(name) for name in ("sqlite_setup", "postgres_setup")
              if name in request.fixturenames]
    for setup in setups:
        setup.clock.unlink(missing_ok=True)
    yield
    for setup in setups:
        setup.clock.unlink(missing_ok=True)


def _chat(gateway: GatewayProcess, token: str) -> requests.Response:
    """A blocking OpenAI chat call, on a new connection (the kernel spreads them over the workers)."""
    return requests.post(f"{gateway.base('openai')}/v1/chat/completions", json=CHAT, timeout=30,
                         headers={"Authorization": f"Bearer {token}", "X-Fixture": "openai_chat/simple_text"})


def _refused(gateway: GatewayProcess, token: str) -> requests.Response:
    """The first 429 the user's calls get (bounded poll: the guard reads the spend about once a second)."""
    def refusal() -> list[requests.Response]:  # a list: a 429 Response itself is falsy (not .ok)
        response = _chat(gateway, token)
        return [response] if response.status_code == 429 else []

    return wait_until(refusal, "the budget's 429", ENFORCED_WITHIN)[0]


def _enforced(setup: Setup, n: int, token: str) -> None:
    """Poll (bounded) until every worker of gateway ``n`` has refused the user: from then on each does
    (spend only grows within a period). Each worker's own count of refusals tells (its metrics file)."""
    gateway, metrics_dir = setup.gateways[n], setup.metrics_dirs[n]
    before, workers = _rejections_by_worker(metrics_dir), gateway.worker_pids()

    def everywhere() -> bool:
        _chat(gateway, token)  # a new connection each: the kernel spreads them over the workers
        now = _rejections_by_worker(metrics_dir)
        return all(now.get(pid, 0) > before.get(pid, 0) for pid in workers)

    wait_until(everywhere, f"refusals by every worker of gateway {n}", ENFORCED_WITHIN)


def _rejections_by_worker(metrics_dir: Path) -> dict[int, float]:
    """budget_rejections_total per worker pid, from each worker's own metrics file."""
    found: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "budget_rejections_total" and value:
                found[pid] = found.get(pid, 0) + value
    return found


def _seconds_to_midnight(now: datetime) -> int:
    return int((period_end("day", now) - now).total_seconds())


def test_a_user_at_their_limit_is_refused_by_both_sdks_before_the_upstream(sqlite_setup, upstream):
    setup, gateway = sqlite_setup, sqlite_setup.gateways[0]
    name, token = setup.user()
    other, other_token = setup.user()
    setup.set_budget(name, period="day", limit_tokens=1)
    first = _chat(gateway, token)  # started under the limit: it completes
    assert first.status_code == 200 and first.json()["choices"]
    _enforced(setup, 0, token)

    upstream.clear()
    with pytest.raises(openai.RateLimitError) as raised:
        openai_client(f"{gateway.base('openai')}/v1", token, "openai_chat/simple_text").chat.completions.create(**CHAT)
    error = raised.value
    assert error.status_code == 429
    assert error.body["type"] == "insufficient_quota" and error.body["code"] == "insufficient_quota"
    tomorrow = budget_rules.rfc3339(period_end("day", datetime.now(timezone.utc)))
    for fragment in (f"daily budget of user {name!r}", "limit 1 tokens", f"resets at {tomorrow}"):
        assert fragment in error.body["message"]
    retry_after = int(error.response.headers["Retry-After"])
    assert 1 <= retry_after <= _seconds_to_midnight(datetime.now(timezone.utc)) + 1
    assert error.response.headers["x-should-retry"] == "false"

    with pytest.raises(anthropic.RateLimitError) as raised:
        anthropic_client(gateway.base("anthropic"), token, "anthropic/simple_text").messages.create(**MESSAGE)
    assert raised.value.status_code == 429
    assert raised.value.body == {"type": "error", "error": {"type": "rate_limit_error",
                                                            "message": raised.value.body["error"]["message"]}}
    assert f"daily budget of user {name!r}" in raised.value.body["error"]["message"]
    assert int(raised.value.response.headers["Retry-After"]) >= 1
    assert upstream.requests == []  # neither refusal reached the upstream

    assert _chat(gateway, other_token).status_code == 200  # another user is not held by it
    assert upstream.requests


def test_both_workers_enforce_the_budget(sqlite_setup):
    setup, gateway = sqlite_setup, sqlite_setup.gateways[0]
    name, token = setup.user()
    setup.set_budget(name, period="week", limit_tokens=1)
    assert _chat(gateway, token).status_code == 200
    _enforced(setup, 0, token)
    assert [_chat(gateway, token).status_code for _ in range(10)] == [429] * 10


def test_the_default_budget_holds_a_user_without_one_and_a_new_period_frees_them(sqlite_setup):
    setup, gateway = sqlite_setup, sqlite_setup.gateways[0]
    name, token = setup.user()
    own, own_token = setup.user()
    setup.set_budget(own, period="day", limit_tokens=1_000_000)  # their own budget, not the default, holds them
    setup.set_budget("default", period="day", limit_tokens=1)
    try:
        assert _chat(gateway, token).status_code == 200
        _enforced(setup, 0, token)
        refused = _chat(gateway, token)
        message = refused.json()["error"]["message"]
        assert "the default daily budget" in message and repr(name) in message
        me = setup.api("GET", f"{BUDGETS}/me", token).json()
        assert me["user"]["username"] == name and me["budget"]["default"] is True and me["budget"]["exceeded"] is True
        assert me["budget"]["spend_tokens"] >= 1
        assert _chat(gateway, own_token).status_code == 200

        # Tomorrow (the clock moved, not waited for): nothing spent yet in the new day.
        tomorrow = period_end("day", datetime.now(timezone.utc)) + timedelta(minutes=1)
        setup.clock.write_text(budget_rules.rfc3339(tomorrow))
        for _ in range(6):  # both workers
            assert _chat(gateway, token).status_code == 200
        me = setup.api("GET", f"{BUDGETS}/me", token).json()
        assert me["budget"]["spend_tokens"] == 0 and me["budget"]["period_start"] == budget_rules.rfc3339(
            period_start("day", tomorrow))
    finally:
        assert setup.api("DELETE", f"{BUDGETS}/default").status_code == 204


def test_a_usd_limit_is_held_to_the_priced_spend(sqlite_setup):
    setup, gateway = sqlite_setup, sqlite_setup.gateways[0]
    name, token = setup.user()
    setup.set_budget(name, period="month", limit_usd=0.000001)  # gpt-4o has a price: one call spends more
    assert _chat(gateway, token).status_code == 200
    refused = _refused(gateway, token)
    assert "monthly budget" in refused.json()["error"]["message"] and "limit $0.00" in refused.json()["error"]["message"]
    view = setup.api("GET", f"{BUDGETS}/{name}").json()
    assert view["spend_usd"] > 0.000001 and view["exceeded"] is True
    assert view["resets_at"] == budget_rules.rfc3339(period_end("month", datetime.now(timezone.utc)))


# -- the admin API -------------------------------------------------------------------------------


def test_budgets_are_for_admins_and_budgets_me_for_everyone(sqlite_setup):
    setup = sqlite_setup
    name, token = setup.user()
    for method, path in (("GET", BUDGETS), ("GET", f"{BUDGETS}/{name}"), ("PUT", f"{BUDGETS}/{name}"),
                         ("DELETE", f"{BUDGETS}/default")):
        assert setup.api(method, path, token, json={"period": "day", "limit_usd": 1}).status_code == 403
    assert setup.api("GET", BUDGETS, "not-a-token").status_code == 401
    assert setup.api("GET", f"{BUDGETS}/me", token).json() == {"user": {"id": setup.api(
        "GET", f"/api/v2/users/{name}").json()["id"], "username": name}, "budget": None}
    setup.set_budget(name, period="week", limit_usd=2, limit_tokens=500)
    mine = setup.api("GET", f"{BUDGETS}/me", token).json()["budget"]
    assert (mine["default"], mine["period"], mine["limit_usd"], mine["limit_tokens"], mine["spend_usd"],
            mine["exceeded"]) == (False, "week", 2.0, 500, 0.0, False)
    now = datetime.now(timezone.utc)
    assert mine["resets_at"] == budget_rules.rfc3339(period_end("week", now))
    listed = setup.api("GET", BUDGETS).json()["budgets"]
    assert [b for b in listed if b["user"] and b["user"]["username"] == name][0]["limit_tokens"] == 500
    # The newer prefix answers too.
    assert setup.api("GET", f"/api/v2/ai-gateway/budgets/{name}").status_code == 200
    assert setup.api("DELETE", f"{BUDGETS}/{name}").status_code == 204
    assert setup.api("DELETE", f"{BUDGETS}/{name}").status_code == 404
    assert setup.api("GET", f"{BUDGETS}/{name}").status_code == 404
    assert setup.api("GET", f"{BUDGETS}/default").status_code == 404


@pytest.mark.parametrize("body, status, fragment", [
    ({"period": "day", "limit_usd": 1, "extra": 1}, 400, "unknown field 'extra'"),
    ({"period": "day", "limit_usd": "1"}, 400, "field 'limit_usd' must be a number"),
    ({"period": "day", "limit_tokens": 2.5}, 400, "field 'limit_tokens' must be an integer"),
    ({"period": "fortnight", "limit_usd": 1}, 400, "field 'period' must be one of day, week, month"),
    ({"limit_usd": 1}, 400, "field 'period' is required"),
    ({"period": "day"}, 400, "a budget needs a limit"),
    ([], 400, "the request body must be a JSON object"),
])
def test_a_bad_budget_body_is_a_400_naming_the_problem(sqlite_setup, body, status, fragment):
    name, _ = sqlite_setup.user()
    response = sqlite_setup.api("PUT", f"{BUDGETS}/{name}", json=body)
    assert response.status_code == status and fragment in response.json()["message"], response.text


def test_a_budget_for_an_unknown_user_is_a_404(sqlite_setup):
    response = sqlite_setup.api("PUT", f"{BUDGETS}/nobody-{uuid.uuid4().hex[:6]}", json={"period": "day", "limit_usd": 1})
    assert response.status_code == 404 and "unknown user" in response.json()["message"]


# -- the CLI -------------------------------------------------------------------------------------


def test_the_cli_sets_lists_and_deletes_budgets(sqlite_setup, tmp_path):
    run = cli_runner(sqlite_setup.database, tmp_path)
    name, _ = sqlite_setup.user()
    done = run("budgets", "set", name, "--period", "day", "--usd", "5", "--tokens", "1000")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["user"]["username"] == name and json.loads(done.stdout)["limit_usd"] == 5.0
    assert run("budgets", "set", "--default", "--period", "month", "--tokens", "10000000").returncode == 0
    try:
        listed = json.loads(run("budgets", "list", "--json").stdout)
        assert listed[0]["default"] is True and listed[0]["limit_tokens"] == 10_000_000
        assert any(b["user"] and b["user"]["username"] == name for b in listed)
        table = run("budgets", "list").stdout.splitlines()
        assert table[0].split() == ["BUDGET", "PERIOD", "LIMIT", "USD", "LIMIT", "TOKENS", "SPENT", "USD", "TOKENS",
                                    "RESETS"]
        assert table[1].startswith("(default)") and any(line.startswith(name) for line in table)
        assert_cli_error(run("budgets", "set", name, "--period", "day"), "a budget needs a limit: give --usd, --tokens")
        assert_cli_error(run("budgets", "set", name, "--period", "day", "--usd", "-2"), "--usd must be a number >= 0")
        assert_cli_error(run("budgets", "set", "--period", "day", "--usd", "1"), "name a user or give --default")
        assert_cli_error(run("budgets", "set", name, "--default", "--period", "day", "--usd", "1"),
                         "name a user or give --default")
        assert_cli_error(run("budgets", "set", "ghost-user", "--period", "day", "--usd", "1"), "unknown user 'ghost-user'")
        assert run("budgets", "set", name, "--period", "year", "--usd", "1").returncode == 2  # argparse's choices
    finally:
        assert run("budgets", "delete", "--default").returncode == 0
    assert run("budgets", "delete", name).returncode == 0
    assert_cli_error(run("budgets", "delete", name), f"no budget for user {name!r}")


# -- two instances on one PostgreSQL ------------------------------------------------------------


def test_two_instances_on_postgres_enforce_the_same_budgets(postgres_setup, upstream):
    setup = postgres_setup
    a, b = setup.gateways
    name, token = setup.user()
    other, other_token = setup.user()
    setup.set_budget(name, period="day", limit_tokens=1)
    assert _chat(a, token).status_code == 200  # spent through one instance ...
    refused = _refused(b, token)  # ... refused by the other
    assert refused.json()["error"]["type"] == "insufficient_quota" and int(refused.headers["Retry-After"]) >= 1
    _enforced(setup, 1, token)
    _enforced(setup, 0, token)
    upstream.clear()
    with pytest.raises(anthropic.RateLimitError):
        anthropic_client(a.base("anthropic"), token, "anthropic/simple_text").messages.create(**MESSAGE)
    with pytest.raises(openai.RateLimitError):
        openai_client(f"{b.base('openai')}/v1", token, "openai_chat/simple_text").chat.completions.create(**CHAT)
    assert [_chat(g, token).status_code for g in setup.gateways * 4] == [429] * 8
    assert upstream.requests == []
    assert [_chat(g, other_token).status_code for g in setup.gateways] == [200, 200]

    # The default budget, set through one instance, holds the other user on both.
    assert setup.api("PUT", f"{BUDGETS}/default", gateway=b, json={"period": "week", "limit_tokens": 1}).status_code == 200
    try:
        assert "the default weekly budget" in _refused(a, other_token).json()["error"]["message"]
        _enforced(setup, 0, other_token)
        _enforced(setup, 1, other_token)
        # Next week, both instances let both users through again.
        next_week = period_end("week", datetime.now(timezone.utc)) + timedelta(hours=1)
        setup.clock.write_text(budget_rules.rfc3339(next_week))
        for gateway in setup.gateways * 3:
            assert _chat(gateway, token).status_code == 200
            assert _chat(gateway, other_token).status_code == 200
    finally:
        assert setup.api("DELETE", f"{BUDGETS}/default").status_code == 204
