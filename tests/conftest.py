"""Shared fixtures: a fake upstream replaying recorded traffic, a real store, and the gateway under gunicorn."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from bridge.store import Store, open_store
from tests.fakeupstream import FakeUpstream
from tests.harness import GatewayProcess, json_log_line, store_with_users
from tests.pg import PostgresServer

OPENAI_KEY = "sk-openai-test-5f0c2a9d8e7b6a5c4d3e"
ANTHROPIC_KEY = "sk-ant-test-9a8b7c6d5e4f3a2b1c0d"
TEAM_B_KEY = "sk-teamb-test-1111222233334444"
CORP_KEY = "sk-ant-corp-test-aaaabbbbccccdddd"
TOKEN_SHAPE = re.compile(r"[a-z0-9]{10}-[A-Za-z0-9_-]{43}")  # a gateway token, anywhere in a text
A_TOKEN = "abcdefgh12-" + "Xy0_-" * 8 + "abc"  # a gateway token's shape, of nobody


class Identities:
    """Users and gateway tokens created in the test database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.identity.create_user("alice", is_admin=True)
        store.identity.create_user("bob")
        self.alice, _ = store.identity.create_token("alice")
        self.bob, _ = store.identity.create_token("bob")

    def token(self, username: str, **kwargs) -> tuple[str, dict]:
        return self.store.identity.create_token(username, **kwargs)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own (fails, not skips, without the binaries)."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.remove()


_databases = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path: Path) -> str:
    """An empty store of each backend: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "bridge.db")
    return request.getfixturevalue("postgres").create_database(f"store_{next(_databases)}")


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bridge")


@pytest.fixture(scope="session")
def database(session_dir: Path) -> Path:
    return session_dir / "bridge.db"


@pytest.fixture(scope="session")
def identities(database: Path) -> Iterator[Identities]:
    store = open_store(str(database))
    store.migrate()
    yield Identities(store)
    store.close()


def provider_env(upstream: FakeUpstream) -> dict[str, str]:
    """Legacy openai + anthropic providers, one more instance of each type on its own base path and key, and copilot."""
    return {
        "CODER_AIBRIDGE_ENABLED": "true",
        "CODER_AIBRIDGE_OPENAI_KEY": OPENAI_KEY,
        "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{upstream.url}/v1/",
        "CODER_AIBRIDGE_ANTHROPIC_KEY": ANTHROPIC_KEY,
        "CODER_AIBRIDGE_ANTHROPIC_BASE_URL": f"{upstream.url}/",
        "CODER_AIBRIDGE_PROVIDER_0_TYPE": "openai",
        "CODER_AIBRIDGE_PROVIDER_0_NAME": "team-b",
        "CODER_AIBRIDGE_PROVIDER_0_KEY": TEAM_B_KEY,
        "CODER_AIBRIDGE_PROVIDER_0_BASE_URL": f"{upstream.url}/team-b/v1",
        "CODER_AIBRIDGE_PROVIDER_1_TYPE": "anthropic",
        "CODER_AIBRIDGE_PROVIDER_1_NAME": "anthropic-corp",
        "CODER_AIBRIDGE_PROVIDER_1_KEY": CORP_KEY,
        "CODER_AIBRIDGE_PROVIDER_1_BASE_URL": f"{upstream.url}/corp/anthropic",
        "CODER_AIBRIDGE_PROVIDER_2_TYPE": "copilot",
        "CODER_AIBRIDGE_PROVIDER_2_BASE_URL": f"{upstream.url}/copilot",
    }


@pytest.fixture(scope="session")
def start_gateway(session_dir: Path, database: Path, identities: Identities) -> Iterator[Callable[..., GatewayProcess]]:
    """Start a gateway with extra settings; every one started is stopped at the end of the session."""
    started: list[GatewayProcess] = []

    def start(env: dict[str, str], workers: int = 2) -> GatewayProcess:
        full_env = {"CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}", **env}
        process = GatewayProcess(full_env, session_dir / f"gateway-{len(started)}.log", workers=workers)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway, upstream: FakeUpstream) -> GatewayProcess:
    """The gateway most tests use: two workers, four providers on the fake upstream."""
    return start_gateway(provider_env(upstream))


@dataclass
class LoggedGateway:
    """A gateway on the providers of ``provider_env`` with structured logging (a JSON log file, and the
    human log in the gateway's log), a store of its own with alice (admin) and bob, and dumps in
    ``dump_dir`` when asked for."""

    gateway: GatewayProcess
    database: Path
    json_log: Path
    dump_dir: Path
    alice: str
    bob: str

    def logged_line(self, record_type: str, interception_id: str) -> str:
        """The JSON log's line of this record type for this interception, once it is written."""
        return json_log_line(self.json_log, record_type, interception_id)


def start_logged_gateway(start_gateway, upstream: FakeUpstream, root: Path, env: dict[str, str] | None = None,
                         dumps: bool = False) -> LoggedGateway:
    """A ``LoggedGateway`` (2 workers) whose files are in ``root``; ``env``: more settings."""
    database, json_log, dump_dir = root / "bridge.db", root / "bridge.jsonl", root / "dumps"
    alice, bob = store_with_users(database)
    gateway = start_gateway({
        **provider_env(upstream),
        "CODER_AIBRIDGE_DATABASE_URL": f"sqlite:///{database}",
        "CODER_AIBRIDGE_STRUCTURED_LOGGING": "true",
        "CODER_LOGGING_JSON": str(json_log),
        **({"CODER_AIBRIDGE_DUMP_DIR": str(dump_dir)} if dumps else {}),
        **(env or {}),
    }, workers=2)
    return LoggedGateway(gateway, database, json_log, dump_dir, alice, bob)
