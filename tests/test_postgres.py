"""Several gateway instances sharing one PostgreSQL database (issue 9).

Two gunicorn processes on two ports, one database: users and tokens made through either work on
both, concurrent load through both leaves exactly one complete record per request, and the
interceptions API of either shows them all. test_records.py runs again here against a
Postgres-backed gateway (its fixtures ``gateway``, ``identities`` and ``database`` are overridden
below). The recorder's journal fallback is shown against a server that is stopped and restarted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from bridge.auth import POSTGRES_CACHE_SECONDS
from bridge.store import Store, open_store
from tests.conftest import Identities, provider_env
from tests.harness import REPO, GatewayProcess, wait_for_records
from tests.pg import PostgresServer
from tests.sdk_calls import load_fixtures
from tests.test_recorder import end_children
# The records suite, run again here against PostgreSQL (collected as tests of this module).
from tests.test_records import (  # noqa: F401
    _call, recorded, test_byok_call_is_recorded_with_its_masked_key, test_call_is_recorded_as_expected,
    test_client_and_session_come_from_the_request_headers, test_secrets_pasted_into_a_conversation_are_masked_in_the_record,
    test_tool_result_turn_links_to_the_call_it_answers,
)

REVOCATION_WAIT = 10.0  # well above the 2 s token cache of PostgreSQL mode


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> str:
    """The shared database (a URL: wait_for_records and Store take it like a path)."""
    url = postgres.create_database("gateways")
    open_store(url, migrate=True).close()
    return url


@pytest.fixture(scope="module")
def identities(database: str) -> Iterator[Identities]:
    store = open_store(database)
    yield Identities(store)
    store.close()


@pytest.fixture(scope="module")
def gateways(database: str, identities: Identities, upstream, tmp_path_factory) -> Iterator[list[GatewayProcess]]:
    """Two instances, two workers each, run from their own directories (their journals go there)."""
    started = []
    try:
        for n in range(2):
            directory = tmp_path_factory.mktemp(f"instance-{n}")
            process = GatewayProcess({**provider_env(upstream), "CODER_AIBRIDGE_DATABASE_URL": database},
                                     directory / "gateway.log", workers=2)
            process.cwd = directory
            started.append(process.start())
        yield started
    finally:
        for process in started:
            process.stop()


@pytest.fixture(scope="module")
def gateway(gateways: list[GatewayProcess]) -> GatewayProcess:
    return gateways[0]


def _admin(identities: Identities) -> dict[str, str]:
    return {"Authorization": f"Bearer {identities.alice}"}


def _chat(gateway: GatewayProcess, token: str) -> requests.Response:
    return requests.post(f"{gateway.base('openai')}/v1/chat/completions", timeout=30,
                         headers={"Authorization": f"Bearer {token}", "X-Fixture": "openai_chat/simple_text"},
                         json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def _wait_for_status(call: Callable[[], requests.Response], status: int, timeout: float) -> float:
    """Seconds until ``call`` answers ``status`` (fails after ``timeout``)."""
    start = time.monotonic()
    while True:
        code = call().status_code
        if code == status:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"still {code} after {timeout}s"
        time.sleep(0.1)


def test_a_user_and_token_made_through_one_instance_work_at_once_on_the_other(gateways, identities):
    a, b = gateways
    name = f"carol-{uuid.uuid4().hex[:6]}"
    assert requests.post(f"{a.url}/api/v2/users", json={"username": name}, headers=_admin(identities),
                         timeout=10).status_code == 201
    assert requests.get(f"{b.url}/api/v2/users/{name}", headers=_admin(identities), timeout=10).json()["username"] == name
    created = requests.post(f"{a.url}/api/v2/users/{name}/tokens", json={}, headers=_admin(identities), timeout=10)
    assert created.status_code == 201
    token = created.json()["token"]
    # No waiting: a token unknown to b's cache is looked up in the database.
    assert _chat(b, token).status_code == 200
    assert _chat(a, token).status_code == 200
    # Revoked through b: every worker of both stops accepting it within the cache period
    # (POSTGRES_CACHE_SECONDS, 2 s), then for good.
    revoked_at = time.monotonic()
    assert requests.delete(f"{b.url}/api/v2/tokens/{created.json()['id']}", headers=_admin(identities),
                           timeout=10).status_code == 204
    assert _wait_for_status(lambda: _chat(a, token), 401, REVOCATION_WAIT) < 4.0
    time.sleep(max(0.0, revoked_at + POSTGRES_CACHE_SECONDS + 0.5 - time.monotonic()))
    assert [_chat(g, token).status_code for g in gateways * 4] == [401] * 8  # both workers of each


def test_a_token_made_with_the_cli_works_on_both_instances(gateways, database):
    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "bridge", *args, "--database-url", database], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    name = f"dave-{uuid.uuid4().hex[:6]}"
    cli("users", "create", name)
    token = cli("tokens", "create", name)
    assert [_chat(g, token).status_code for g in gateways] == [200, 200]
    assert name in cli("users", "list")


#: Blocking and streaming calls of both SDKs, with usage, tool calls and thinking to record.
LOAD = [(name, fixture, stream)
        for name, fixture in load_fixtures("anthropic") + load_fixtures("openai_chat")
        if name.split("/")[1] in ("simple_text", "tool_use", "thinking", "tool_call", "parallel_tool_calls")
        for stream in (False, True)]


def test_concurrent_load_through_both_instances_leaves_one_complete_record_per_request(gateways, identities, database):
    calls = [(gateways[n % 2], *LOAD[n % len(LOAD)]) for n in range(48)]
    with ThreadPoolExecutor(12) as pool:
        ids = list(pool.map(lambda call: _call(call[0], identities, call[1], call[2], call[3]), calls))
    assert len(set(ids)) == len(ids) == 48
    records = wait_for_records(database, ids)
    assert set(records) == set(ids), "some requests left no complete record"
    with open_store(database) as store:
        rows = store.db.execute("SELECT id, count(*) FROM aibridge_interceptions WHERE id = ANY(?) GROUP BY id",
                                [ids]).fetchall()
        assert sorted(rows) == sorted((i, 1) for i in ids)
        for (gateway, name, fixture, stream), interception_id in zip(calls, ids):
            record = records[interception_id]
            assert record["ended_at"] and record["model"] == fixture["request"]["model"]
            if fixture["expect"].get("usage"):
                assert len(record["token_usages"]) == 1, (name, stream)
            assert len(record["tool_usages"]) == len(fixture["expect"]["tool_calls"]), (name, stream)
    # The API of either instance shows every one of them (alice, an admin, sees everyone's).
    for gateway in gateways:
        found: set[str] = set()
        after = None
        while True:
            params = {"limit": 20, **({"after_id": after} if after else {})}
            page = requests.get(f"{gateway.url}/api/v2/aibridge/interceptions", params=params,
                                headers=_admin(identities), timeout=10).json()
            found.update(r["id"] for r in page["results"])
            if len(page["results"]) < 20:
                break
            after = page["results"][-1]["id"]
        assert set(ids) <= found
        assert page["count"] == len(found)
        usage = requests.get(f"{gateway.url}/api/v2/aibridge/usage", params={"by": "model", "bucket": "hour"},
                             headers=_admin(identities), timeout=10)
        assert usage.status_code == 200 and usage.json()["totals"]["interceptions"] >= 48


# -- the journal fallback -----------------------------------------------------------------------

JOURNAL_SCENARIO = """
from gevent import monkey
monkey.patch_all()
import json, sys, time
from bridge.recorder import InterceptionEnd, InterceptionStart, Recorder
from tests.test_recorder import end_children, start_row
url, journal_dir, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
recorder = Recorder(url, batch_wait=0.05, journal_dir=journal_dir)
for interception_id in ids:
    recorder.record(InterceptionStart(start_row(interception_id)))
    recorder.record(InterceptionEnd(interception_id, start_row(interception_id).started_at, **end_children(interception_id)))
assert recorder.flush(30)
print(json.dumps({"backlog": recorder.backlog, "journal": recorder.journal_path}), flush=True)
sys.stdin.readline()  # the test restarts the server, then says go on
deadline = time.monotonic() + 60
while recorder.backlog and time.monotonic() < deadline:
    recorder.record(InterceptionStart(start_row(ids[0])))  # a replayed id: nothing new, it wakes the writer
    recorder.flush(30)
    time.sleep(0.5)
print(json.dumps({"backlog": recorder.backlog}), flush=True)
recorder.close()
"""


def test_records_are_journaled_while_postgresql_is_down_and_written_when_it_is_back(tmp_path):
    server = PostgresServer().start()
    try:
        url = server.create_database("journal")
        open_store(url, migrate=True).close()
        ids = [str(uuid.uuid4()) for _ in range(5)]
        server.stop()
        scenario = subprocess.Popen([sys.executable, "-c", JOURNAL_SCENARIO, url, str(tmp_path), json.dumps(ids)],
                                    cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        try:
            first = json.loads(scenario.stdout.readline() or "null")
            assert first and first["backlog"] > 0, scenario.stderr.read()
            journal = Path(first["journal"])
            assert journal.parent == tmp_path and "journal" in journal.name and ids[0] in journal.read_text()
            server.resume()
            scenario.stdin.write("go\n")
            scenario.stdin.flush()
            second = json.loads(scenario.stdout.readline() or "null")
            assert second == {"backlog": 0}, scenario.stderr.read()
            assert scenario.wait(30) == 0
        finally:
            if scenario.poll() is None:
                scenario.kill()
        records = wait_for_records(url, ids)
        assert set(records) == set(ids)
        assert all(len(r["token_usages"]) == len(end_children(i)["token_usages"]) for i, r in records.items())
        assert not journal.exists()  # replayed, then removed
        with open_store(url) as store:
            assert store.queries.count_records()["aibridge_interceptions"] == len(ids)
    finally:
        server.remove()



def test_both_instances_are_ready(gateways):
    for gateway in gateways:
        assert requests.get(f"{gateway.url}/readyz", timeout=10).json() == {"status": "ready"}


def test_an_unreachable_server_is_reported_without_its_password_or_address(tmp_path):
    from bridge.store import open_store, postgres_error_reason
    from tests.harness import free_port

    url = f"postgresql://bridge:hunter2@127.0.0.1:{free_port()}/bridge"  # nothing listens there
    done = subprocess.run([sys.executable, "-m", "bridge", "users", "list", "--database-url", url], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: ")
    assert "hunter2" not in done.stderr + done.stdout and "***" in done.stderr
    store = open_store(url)
    try:
        with pytest.raises(Exception) as caught:
            store.check_writable(0.5)
    finally:
        store.close()
    reason = postgres_error_reason(caught.value)
    assert reason == "cannot reach the PostgreSQL server"
