"""The store against both backends (a real SQLite file, a real PostgreSQL database): users, tokens,
hashing, migrations, concurrent writers. SQLite-only tests take ``db_path``."""

from __future__ import annotations

import base64
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import bridge.store.identity as store_module
from bridge.store import MIGRATIONS, PostgresStore, Store, StoreError, open_store
from bridge.timestamps import format_timestamp

TOKEN_RE = re.compile(r"[a-z0-9]{10}-[A-Za-z0-9_-]{43}")


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "bridge.db")


@pytest.fixture
def store(store_url: str):
    with open_store(store_url, migrate=True) as s:
        yield s


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    return parsed


# -- connection and schema ------------------------------------------------------------------


def test_pragmas_are_set_per_connection(db_path: str) -> None:
    with open_store(db_path) as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def _applied_migrations(s: Store) -> list[str]:
    if isinstance(s, PostgresStore):
        return [name for (name,) in s.db.execute("SELECT name FROM bridge_migrations ORDER BY name")]
    return [name for (name,) in s.db.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'bridge'")]


def test_migrate_is_idempotent_and_keeps_data(store_url: str) -> None:
    with open_store(store_url, migrate=True) as s:
        s.migrate()
        s.identity.create_user("alice")
    with open_store(store_url, migrate=True) as s:
        s.migrate()
        assert [u["username"] for u in s.identity.list_users()] == ["alice"]
        names = _applied_migrations(s)
        first = ["0001_schema"] if isinstance(s, PostgresStore) else ["0001_users_and_tokens", "0002_records"]
        assert names[:len(first)] == first
        assert len(names) == len(set(names))  # each migration applied once
        assert {"users", "api_tokens"} <= set(s.db.table_names())


def test_concurrent_migrate_on_a_fresh_database(store_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        try:
            barrier.wait()
            with open_store(store_url, migrate=True):
                pass
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with open_store(store_url) as s:
        rows = _applied_migrations(s)
        if isinstance(s, PostgresStore):
            from bridge.store.postgres import MIGRATIONS as known

            assert set(rows) == {name for name, _ in known}
        else:
            assert not MIGRATIONS.pending(s.db)
    assert len(rows) == len(set(rows))  # every migration applied exactly once


def test_two_connections_writing_concurrently_do_not_fail_with_locked(store_url: str) -> None:
    open_store(store_url, migrate=True).close()
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(worker: int) -> None:
        # Each thread has its own Store, i.e. its own connection, as a separate process would.
        try:
            with open_store(store_url) as s:
                barrier.wait()
                for i in range(25):
                    s.identity.create_user(f"w{worker}-u{i}")
                    s.identity.create_token(f"w{worker}-u{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with open_store(store_url) as s:
        assert len(s.identity.list_users()) == 100
        assert s.db.execute("SELECT count(*) FROM api_tokens").fetchone()[0] == 100


def test_write_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.write() as db:
            db.execute(
                "INSERT INTO users (id, username, is_admin, created_at) VALUES ('x', 'ghost', 0, '2026-01-01')"
            )
            raise RuntimeError("boom")
    assert store.identity.get_user("ghost") is None
    assert not store.in_transaction


# -- users ----------------------------------------------------------------------------------


def test_user_lifecycle(store: Store) -> None:
    bob = store.identity.create_user("bob")
    alice = store.identity.create_user("alice", is_admin=True)
    assert alice["is_admin"] is True and bob["is_admin"] is False
    assert alice["deleted_at"] is None
    _parse_time(alice["created_at"])
    assert [u["username"] for u in store.identity.list_users()] == ["alice", "bob"]
    assert store.identity.get_user("alice") == alice
    assert store.identity.get_user(alice["id"]) == alice
    assert store.identity.get_user("nobody") is None

    assert store.identity.delete_user("alice") is True
    assert store.identity.delete_user("alice") is False
    assert store.identity.delete_user("nobody") is False
    assert store.identity.get_user("alice") is None
    assert [u["username"] for u in store.identity.list_users()] == ["bob"]
    # The row is kept (soft delete) so audit records keep their initiator.
    row = store.db.execute("SELECT deleted_at FROM users WHERE id = ?", [alice["id"]]).fetchone()
    _parse_time(row[0])


def test_a_name_taken_between_the_check_and_the_insert_is_refused_the_same_way(store: Store, monkeypatch) -> None:
    """Two instances creating one name at once both pass the check; the unique index refuses the
    second, and its caller gets the same error as for any taken name (not a database error)."""
    store.identity.create_user("carol")
    monkeypatch.setattr(store.identity, "_live_user_row", lambda key, by_id: None)  # the other row not seen yet
    with pytest.raises(StoreError, match="already exists"):
        store.identity.create_user("carol")
    monkeypatch.undo()
    assert [user["username"] for user in store.identity.list_users()].count("carol") == 1


def test_duplicate_username_is_refused_while_the_user_lives(store: Store) -> None:
    first = store.identity.create_user("alice")
    with pytest.raises(StoreError, match="already exists"):
        store.identity.create_user("alice")
    with pytest.raises(StoreError, match="already exists"):
        store.identity.create_user("ALICE")
    store.identity.delete_user("alice")
    again = store.identity.create_user("alice")
    assert again["id"] != first["id"]


@pytest.mark.parametrize("name", ["", "-alice", ".a", "a b", "a/b", "a" * 65, "alice\n", "é"])
def test_invalid_usernames(store: Store, name: str) -> None:
    with pytest.raises(StoreError, match="invalid username"):
        store.identity.create_user(name)


def test_store_error_is_a_value_error() -> None:
    assert issubclass(StoreError, ValueError)


# -- tokens ---------------------------------------------------------------------------------


def test_token_lifecycle(store: Store) -> None:
    user = store.identity.create_user("alice", is_admin=True)
    token, row = store.identity.create_token("alice", lifetime=3600, name="laptop")
    assert TOKEN_RE.fullmatch(token)
    assert row["id"] == token.split("-", 1)[0]
    assert row["name"] == "laptop" and row["user_id"] == user["id"] and row["revoked_at"] is None
    assert _parse_time(row["expires_at"]) - _parse_time(row["created_at"]) == timedelta(hours=1)
    assert "hashed_secret" not in row

    assert store.identity.authenticate(token) == {
        "user_id": user["id"],
        "username": "alice",
        "is_admin": True,
        "token_id": row["id"],
        "expires_at": row["expires_at"],
    }
    assert store.identity.list_tokens("alice") == [row]

    assert store.identity.revoke_token(row["id"]) is True
    assert store.identity.authenticate(token) is None
    revoked_at = store.identity.list_tokens("alice")[0]["revoked_at"]
    _parse_time(revoked_at)
    assert store.identity.revoke_token(row["id"]) is True  # idempotent, keeps the first revocation time
    assert store.identity.list_tokens("alice")[0]["revoked_at"] == revoked_at
    assert store.identity.revoke_token("zzzzzzzzzz") is False


def test_token_without_lifetime_never_expires(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.identity.create_user("alice")
    token, row = store.identity.create_token("alice")
    assert row["expires_at"] is None and row["name"] is None
    far_future = format_timestamp(datetime.now(timezone.utc) + timedelta(days=3650))
    monkeypatch.setattr(store_module, "utc_now", lambda: far_future)
    assert store.identity.authenticate(token) is not None


def test_expired_token_fails(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.identity.create_user("alice")
    token, row = store.identity.create_token("alice", lifetime=60)
    assert store.identity.authenticate(token) is not None
    later = format_timestamp(_parse_time(row["expires_at"]) + timedelta(microseconds=1))
    monkeypatch.setattr(store_module, "utc_now", lambda: later)
    assert store.identity.authenticate(token) is None


def test_token_of_deleted_user_fails_even_after_the_name_is_reused(store: Store) -> None:
    store.identity.create_user("alice")
    token, _ = store.identity.create_token("alice")
    store.identity.delete_user("alice")
    assert store.identity.authenticate(token) is None
    store.identity.create_user("alice")
    assert store.identity.authenticate(token) is None
    assert store.identity.list_tokens("alice") == []


def test_create_token_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown user 'ghost'"):
        store.identity.create_token("ghost")
    store.identity.create_user("alice")
    with pytest.raises(StoreError, match="lifetime must be positive"):
        store.identity.create_token("alice", lifetime=0)
    with pytest.raises(StoreError, match="name"):
        store.identity.create_token("alice", name="x" * 65)
    with pytest.raises(StoreError, match="unknown user 'ghost'"):
        store.identity.list_tokens("ghost")
    assert store.db.execute("SELECT count(*) FROM api_tokens").fetchone()[0] == 0


def test_only_the_hash_of_the_secret_is_stored(db_path: str) -> None:
    with open_store(db_path, migrate=True) as s:
        s.identity.create_user("alice")
        tokens = [s.identity.create_token("alice")[0] for _ in range(5)]
        stored = {row[0] for row in s.db.execute("SELECT hashed_secret FROM api_tokens")}
    raw = b"".join(p.read_bytes() for p in Path(db_path).parent.iterdir() if p.name.startswith("bridge.db"))
    for token in tokens:
        secret = token.split("-", 1)[1]
        assert secret.encode() not in raw
        assert store_module._hash_secret(secret) in stored
        # Found in the file: the check above really searched where the rows live.
        assert store_module._hash_secret(secret).encode() in raw


def test_token_format_and_entropy(store: Store) -> None:
    store.identity.create_user("alice")
    tokens = [store.identity.create_token("alice")[0] for _ in range(50)]
    ids, secrets_ = zip(*(t.split("-", 1) for t in tokens))
    assert all(TOKEN_RE.fullmatch(t) for t in tokens)
    assert len(set(ids)) == 50 and len(set(secrets_)) == 50
    assert all(len(base64.urlsafe_b64decode(s + "=")) == 32 for s in secrets_)  # 256 bits
    # Ids use the whole lowercase alphanumeric alphabet, not a fixed prefix or just hex.
    assert len(set("".join(ids))) > 20


def test_malformed_and_wrong_tokens(store: Store) -> None:
    store.identity.create_user("alice")
    token, row = store.identity.create_token("alice")
    token_id, secret = token.split("-", 1)
    other, _ = store.identity.create_token("alice")
    wrong_secret = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in [
        f"{token_id}-{wrong_secret}",  # right id, wrong secret
        f"{other.split('-', 1)[0]}-{secret}",  # secret of one token with the id of another
        f"zzzzzzzzzz-{secret}",  # unknown id
    ]:
        assert store.identity.authenticate(bad) is None
    assert store.identity.authenticate(token) is not None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "no-dash-at-all" * 5,
        "ABCDEFGHIJ-" + "a" * 43,  # uppercase id
        "abcdefghi-" + "a" * 43,  # short id
        "abcdefghij" + "a" * 44,  # no separator
        "abcdefghij-" + "a" * 42,  # short secret
        "abcdefghij-" + "a" * 44,  # long secret
        "abcdefghij-" + "a" * 42 + "=",  # padding is not base64url output
        "abcdefghij-" + "a" * 43 + "\n",
        " abcdefghij-" + "a" * 43,
        None,
        b"abcdefghij-" + b"a" * 43,
    ],
)
def test_malformed_tokens_do_not_touch_the_database(store_url: str, bad: object) -> None:
    s = open_store(store_url, migrate=True)
    s.close()  # any query would now raise
    assert s.identity.authenticate(bad) is None  # type: ignore[arg-type]
