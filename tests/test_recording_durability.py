"""Records survive load, restarts, a locked database, and reach the structured log (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY, provider_env
from tests.sdk_calls import load_fixtures
from tests.harness import wait_for_records

ANTHROPIC = dict(load_fixtures("anthropic"))
OPENAI = dict(load_fixtures("openai_chat"))
CALLS = [  # (route, fixture, stream)
    ("anthropic/v1/messages", "anthropic/simple_text", True),
    ("openai/v1/chat/completions", "openai_chat/tool_call", True),
    ("anthropic/v1/messages", "anthropic/tool_use", False),
    ("openai/v1/chat/completions", "openai_chat/simple_text", False),
]


def _request(session: requests.Session, gateway, token: str, n: int, **headers) -> tuple[str, bool | str]:
    """One call; returns (interception id, whether the whole answer arrived, or what came instead)."""
    route, name, stream = CALLS[n % len(CALLS)]
    fixture = (ANTHROPIC if name.startswith("anthropic/") else OPENAI)[name]
    response = session.post(f"{gateway.url}/api/v2/aibridge/{route}", json={**fixture["request"], "stream": stream},
                            headers={"Authorization": f"Bearer {token}", "X-Fixture": name, **headers}, timeout=30)
    body = response.content
    complete = response.status_code == 200 and (b"[DONE]" in body or b"message_stop" in body or not stream)
    return response.headers["X-AIBridge-Interception-Id"], complete or f"{response.status_code}: {body[-300:]!r}"


def _wait_until_journaled(database, ids: list[str], timeout: float = 30) -> None:
    """Until the end of every interception in ``ids`` is in a journal next to the database: the
    writer gave up waiting for the lock (busy_timeout 10 s) and journaled the records."""
    deadline = time.monotonic() + timeout
    while True:
        ended: set[str] = set()
        for path in database.parent.glob(f"{database.name}.records-*.jsonl"):
            try:
                lines = path.read_text().splitlines()
            except OSError:  # replayed and removed meanwhile
                continue
            for line in lines:
                try:
                    ended.update(end["id"] for end in json.loads(line)["ends"])
                except (ValueError, KeyError, TypeError):  # a line being appended right now, or not a batch
                    continue
        if ended >= set(ids):
            return
        assert time.monotonic() < deadline, f"{len(set(ids) - ended)} of {len(ids)} ends not journaled in {timeout}s"
        time.sleep(0.1)


def _count_for(database, user_id: str) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT count(*) FROM aibridge_interceptions WHERE initiator_id = ?", [user_id]).fetchone()[0]


def test_two_workers_under_concurrent_load_record_every_request_once(gateway, identities, database):
    identities.store.identity.create_user("load")
    token, _ = identities.token("load")
    total, concurrency = 2000, 50
    local = threading.local()

    def one(n: int) -> tuple[str, bool]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return _request(local.session, gateway, token, n)

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(total)))
    failed = [complete for _, complete in results if complete is not True]
    assert not failed, failed[:5]
    ids = [interception_id for interception_id, _ in results]
    assert len(set(ids)) == total
    records = wait_for_records(database, ids)
    assert len(records) == total, f"{total - len(records)} interceptions missing"
    assert _count_for(database, identities.store.identity.get_user("load")["id"]) == total  # and no extra ones
    for record in records.values():
        assert len(record["token_usages"]) == 1
        assert len(record["user_prompts"]) == 1


def test_sigterm_during_load_loses_no_answered_request(start_gateway, upstream, identities, database):
    env = provider_env(upstream)
    gateway = start_gateway(env)
    identities.store.identity.create_user("sigterm")
    token, _ = identities.token("sigterm")
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set() and n < 500:
            n += 1
            try:
                interception_id, complete = _request(session, gateway, token, n, **{"X-Fake-Delay-Ms": "15"})
            except (requests.ConnectionError, KeyError):
                return  # the gateway is going away
            if complete is True:
                answered.append(interception_id)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(answered) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(timeout=60)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answered) >= 100
    # A restarted gateway replays whatever a worker could only journal; then everything is there.
    start_gateway(env, workers=1)
    records = wait_for_records(database, answered)
    missing = sorted(set(answered) - set(records))
    with sqlite3.connect(database) as reader:  # what became of them: never started, or never ended?
        found = {row[0]: row[1] for row in reader.execute(
            f"SELECT id, ended_at FROM aibridge_interceptions WHERE id IN ({','.join('?' * len(missing))})", missing)}
    assert not missing, {interception_id: found.get(interception_id, "absent") for interception_id in missing[:10]}


def test_locked_database_delays_no_request_and_loses_no_record(start_gateway, upstream, identities, database):
    gateway = start_gateway(provider_env(upstream), workers=1)
    locker = sqlite3.connect(database, timeout=30, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock for longer than busy_timeout
    try:
        session = requests.Session()
        results = [_request(session, gateway, identities.alice, n) for n in range(20)]
        assert all(complete is True for _, complete in results), results
        ids = [interception_id for interception_id, _ in results]
        _wait_until_journaled(database, ids)
        with sqlite3.connect(database) as reader:  # WAL: reading works while the lock is held
            written = reader.execute(f"SELECT count(*) FROM aibridge_interceptions WHERE id IN ({','.join('?' * len(ids))})",
                                     ids).fetchone()[0]
        assert written == 0  # nothing could be written yet, and every request was answered
    finally:
        locker.execute("COMMIT")
        locker.close()
    records = wait_for_records(database, ids)
    assert sorted(records) == sorted(ids)


@pytest.fixture(scope="module")
def logged(start_gateway, upstream, identities, session_dir):
    log_path = session_dir / "structured.jsonl"
    gateway = start_gateway({**provider_env(upstream), "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",
                             "CODER_LOGGING_JSON": str(log_path)}, workers=1)
    ids = {}
    for name, route in (("anthropic/thinking", "anthropic/v1/messages"), ("anthropic/tool_use", "anthropic/v1/messages"),
                        ("openai_chat/reasoning_content", "openai/v1/chat/completions")):
        fixture = (ANTHROPIC if name.startswith("anthropic/") else OPENAI)[name]
        response = requests.post(f"{gateway.url}/api/v2/aibridge/{route}", json={**fixture["request"], "stream": True},
                                 headers={"X-Api-Key": identities.alice, "X-Fixture": name}, timeout=30)
        assert response.status_code == 200
        ids[name] = response.headers["X-AIBridge-Interception-Id"]
    deadline = time.monotonic() + 10
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if sum(1 for line in lines if line.get("record_type") == "interception_end") >= len(ids):
            break
        time.sleep(0.1)
    return ids, lines, log_path.read_text()


def test_structured_log_has_every_record_with_its_fields(logged, identities):
    ids, lines, _ = logged
    records = [line for line in lines if line["msg"] == "interception log"]
    by_type: dict[str, list[dict]] = {}
    for line in records:
        by_type.setdefault(line["record_type"], []).append(line)
    alice = identities.store.identity.get_user("alice")["id"]
    starts = {line["interception_id"]: line for line in by_type["interception_start"]}
    assert set(starts) == set(ids.values())
    for line in starts.values():
        assert line["initiator_id"] == alice and line["provider"] in ("anthropic", "openai")
        assert line["model"] and line["client"] and line["started_at"]
    assert {line["interception_id"] for line in by_type["interception_end"]} == set(ids.values())
    assert all(line["ended_at"] for line in by_type["interception_end"])
    usage = [line for line in by_type["token_usage"] if line["interception_id"] == ids["anthropic/thinking"]]
    assert len(usage) == 1 and usage[0]["input_tokens"] == 48 and usage[0]["output_tokens"] == 97 and usage[0]["created_at"]
    prompts = {line["interception_id"]: line["prompt"] for line in by_type["prompt_usage"]}
    assert prompts[ids["anthropic/thinking"]] == ANTHROPIC["anthropic/thinking"]["expect"]["prompt"]
    tools = [line for line in by_type["tool_usage"] if line["interception_id"] == ids["anthropic/tool_use"]]
    expected_tool = ANTHROPIC["anthropic/tool_use"]["expect"]["tool_calls"][0]
    assert [(t["tool"], json.loads(t["input"])) for t in tools] == [(expected_tool["name"], expected_tool["input"])]
    assert all("server_url" in t and t["injected"] is False and t["created_at"] for t in tools)
    thoughts = {line["interception_id"]: line for line in by_type["model_thought"]}
    assert thoughts[ids["anthropic/thinking"]]["content"] == ANTHROPIC["anthropic/thinking"]["expect"]["thoughts"][0]["content"]
    assert thoughts[ids["openai_chat/reasoning_content"]]["metadata"] == {"source": "reasoning_content"}


def test_structured_log_holds_no_secret(logged, identities):
    _, _, text = logged
    for secret in (ANTHROPIC_KEY, OPENAI_KEY, identities.alice):
        assert secret not in text


def test_records_a_killed_worker_journaled_are_written_by_the_next_gateway_at_start(start_gateway, upstream, identities,
                                                                                 database):
    env = provider_env(upstream)
    gateway = start_gateway(env, workers=1)
    locker = sqlite3.connect(database, timeout=30, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        session = requests.Session()
        ids = [_request(session, gateway, identities.alice, n)[0] for n in range(5)]
        _wait_until_journaled(database, ids)
        for pid in [gateway.process.pid, *gateway.worker_pids()]:  # no graceful stop: the journal is all there is
            os.kill(pid, signal.SIGKILL)
        gateway.process.wait(timeout=10)
    finally:
        locker.execute("COMMIT")
        locker.close()
    start_gateway(env, workers=1)  # serves no request: the replay must not wait for one
    records = wait_for_records(database, ids)
    assert sorted(records) == sorted(ids)
