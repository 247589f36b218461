"""Users, their API tokens, and who a token or an ``initiator`` filter stands for."""

from __future__ import annotations

import hmac
import secrets
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from bridge.store.common import (
    _TOKEN_COLUMNS, _TOKEN_ID_ALPHABET, _TOKEN_NAME_MAX, _TOKEN_RE, _USER_COLUMNS, TOKEN_ID_LENGTH, USERNAME_RE,
    StoreError, _hash_secret, _token_dict, _user_dict,
)
from bridge.store.dialect import Dialect, writes
from bridge.timestamps import format_timestamp, utc_now


class Identity:
    """Users (soft-deleted: audit records keep pointing at them) and their gateway tokens."""

    def __init__(self, store: Dialect) -> None:
        self.store = store

    @writes
    def create_user(self, username: str, is_admin: bool = False) -> dict[str, Any]:
        if not USERNAME_RE.fullmatch(username):
            raise StoreError(
                f"invalid username {username!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        row = {
            "id": str(uuid.uuid4()),
            "username": username,
            "is_admin": int(is_admin),
            "created_at": utc_now(),
            "deleted_at": None,
        }
        taken = StoreError(f"user {username!r} already exists")
        try:
            with self.store.write():
                if self._live_user_row(username, by_id=False) is not None:
                    raise taken
                self._insert("users", row)
        except Exception as exc:
            # Two instances creating the same name at once both pass the check: the unique index decides.
            if exc is not taken and self.store._is_unique_violation(exc):
                raise taken from None
            raise
        return _user_dict(row)

    def list_users(self) -> list[dict[str, Any]]:
        return [
            _user_dict(r)
            for r in self.store.db.query(
                f"SELECT {_USER_COLUMNS} FROM users WHERE deleted_at IS NULL ORDER BY {self.store._USERNAME_ORDER}"
            )
        ]

    def get_user(self, username_or_id: str) -> dict[str, Any] | None:
        """A live (not deleted) user by id or, failing that, by username (case-insensitive)."""
        row = self._live_user_row(username_or_id, by_id=True) or self._live_user_row(username_or_id, by_id=False)
        return _user_dict(row) if row else None

    @writes
    def delete_user(self, username_or_id: str) -> bool:
        """Soft delete: the row stays for audit records, its tokens stop authenticating."""
        with self.store.write():
            user = self.get_user(username_or_id)
            if user is None:
                return False
            self.store.db.execute("UPDATE users SET deleted_at = ? WHERE id = ?", [utc_now(), user["id"]])
        self.store._auth_changed()
        return True

    def _live_user_row(self, key: str, *, by_id: bool) -> dict[str, Any] | None:
        condition = "id = ?" if by_id else self.store._USERNAME_IS
        rows = self.store.db.query(f"SELECT {_USER_COLUMNS} FROM users WHERE {condition} AND deleted_at IS NULL", [key])
        return next(iter(rows), None)

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        self.store.db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                              list(row.values()))

    # -- tokens ----------------------------------------------------------------------------

    @writes
    def create_token(
        self, username: str, lifetime: float | None = None, name: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Create a token for a live user; returns (the token, shown once, and its row without the hash)."""
        if lifetime is not None and lifetime <= 0:
            raise StoreError("token lifetime must be positive (omit it for a token that never expires)")
        if name is not None and not 0 < len(name) <= _TOKEN_NAME_MAX:
            raise StoreError(f"token name must be 1-{_TOKEN_NAME_MAX} characters")
        secret = secrets.token_urlsafe(32)  # 256 bits
        now = datetime.now(timezone.utc)
        row = {
            "id": "",
            "user_id": "",
            "name": name,
            "hashed_secret": _hash_secret(secret),
            "created_at": format_timestamp(now),
            "expires_at": format_timestamp(now + timedelta(seconds=lifetime)) if lifetime is not None else None,
            "revoked_at": None,
            "last_used_at": None,
        }
        with self.store.write() as db:
            user = self.get_user(username)
            if user is None:
                raise StoreError(f"unknown user {username!r}")
            row["user_id"] = user["id"]
            # 36^10 ids make a collision very unlikely, but a retry costs nothing.
            while True:
                row["id"] = "".join(secrets.choice(_TOKEN_ID_ALPHABET) for _ in range(TOKEN_ID_LENGTH))
                if not db.execute("SELECT 1 FROM api_tokens WHERE id = ?", [row["id"]]).fetchone():
                    break
            self._insert("api_tokens", row)
        token_dict = {k: v for k, v in row.items() if k != "hashed_secret"}
        token_dict["username"] = user["username"]
        return f"{row['id']}-{secret}", _token_dict(token_dict)

    def list_tokens(self, username: str) -> list[dict[str, Any]]:
        """All tokens of a live user (revoked and expired included), oldest first."""
        user = self.get_user(username)
        if user is None:
            raise StoreError(f"unknown user {username!r}")
        rows = self.store.db.query(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.user_id = ? ORDER BY t.created_at, t.id",
            [user["id"]],
        )
        return [_token_dict(r) for r in rows]

    @writes
    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token; False if there is no such token. Revoking twice keeps the first time."""
        with self.store.write() as db:
            cursor = db.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", [utc_now(), token_id]
            )
        self.store._auth_changed()
        return cursor.rowcount > 0

    def authenticate(self, token: str) -> dict[str, Any] | None:
        """Identity behind a gateway token, or None. Hot path: one indexed read, no write."""
        match = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return None
        token_id, secret = match.groups()
        row = self.store.db.execute(
            "SELECT t.hashed_secret, u.id, u.username, u.is_admin, t.expires_at FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.id = ? AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)"
            " AND u.deleted_at IS NULL",
            [token_id, utc_now()],
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash_secret(secret)):
            return None
        return {"user_id": row[1], "username": row[2], "is_admin": bool(row[3]), "token_id": token_id,
                "expires_at": row[4]}

    def visible_initiators(self, user: str | None, viewer_id: str | None) -> list[str] | None:
        """The initiator ids an ``initiator`` filter value (None: anyone) stands for, narrowed to the
        viewer's own when ``viewer_id`` is given; None means anyone, ``[]`` no one visible."""
        initiators = self.initiator_ids(user) if user is not None else None
        if viewer_id is not None:
            return [viewer_id] if initiators is None or viewer_id in initiators else []
        return initiators

    def initiator_ids(self, user: str) -> list[str]:
        """The user ids an ``initiator`` filter value stands for: a user id, else a live username,
        else the deleted users of that name; a value matching no user is taken as a raw initiator id."""
        for sql in (
            "SELECT id FROM users WHERE id = ?",
            f"SELECT id FROM users WHERE {self.store._USERNAME_IS} AND deleted_at IS NULL",
            f"SELECT id FROM users WHERE {self.store._USERNAME_IS} ORDER BY deleted_at DESC",
        ):
            ids = [row[0] for row in self.store.db.execute(sql, [user])]
            if ids:
                return ids
        return [user]
