"""Who is calling: the gateway token from the request headers, checked against the store."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Mapping

from loguru import logger

from bridge.credentials import bearer_token, split_scheme
from bridge.errors import GatewayError
from bridge.masking import holds_gateway_token
from bridge.store import Database
from bridge.timestamps import seconds_since

GOVERNANCE_HEADER = "X-Coder-AI-Governance-Token"
_MISSING = ("missing gateway token: send it as Authorization: Bearer <token>, X-Api-Key, "
            f"or {GOVERNANCE_HEADER} when bringing your own provider key")


_CACHE_SECONDS = 60.0
#: PostgreSQL serves several instances on several machines, which share no stamp file: a cached
#: lookup is trusted this long, so a revocation (or a deleted user) takes effect everywhere
#: within this delay. It costs one indexed read per token, worker and period.
POSTGRES_CACHE_SECONDS = 2.0
_CACHE_ENTRIES = 10_000


def _seconds_valid(expires_at: str | None, limit: float) -> float:
    """How long a looked-up token may be taken from the cache: ``limit``, or until it expires."""
    if expires_at is None:
        return limit
    return max(0.0, min(limit, -seconds_since(expires_at)))


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str
    username: str
    is_admin: bool
    token_id: str
    #: Bring-your-own-key: the client's own provider credentials go upstream.
    byok: bool
    #: The gateway token itself: kept for the request only, to mask it wherever the user pasted it.
    token: str = field(repr=False, default="")


def read_gateway_token(headers: Mapping[str, str]) -> tuple[str | None, bool]:
    """The gateway token and whether the caller brings its own provider key (SPEC §3 lookup order)."""
    token = headers.get(GOVERNANCE_HEADER)
    if token:
        return token.strip(), True
    bearer = bearer_token(headers)
    if bearer:
        return bearer, False
    api_key = headers.get("X-Api-Key")
    if api_key:
        return api_key.strip(), False
    return None, False


def own_credential(headers: Mapping[str, str]) -> str | None:
    """The provider credential a bring-your-own-key client sent: Authorization's (after its scheme),
    else X-Api-Key's. Never a gateway token: that is no provider credential and never goes upstream."""
    authorization = headers.get("Authorization") or ""
    scheme, secret = split_scheme(authorization)
    if holds_gateway_token(authorization):  # also inside a Basic credential, which only the scheme tells
        secret = ""
    for value in (secret if scheme else "", (headers.get("X-Api-Key") or "").strip()):
        if value and not holds_gateway_token(value):
            return value
    return None


#: Header names the gateway accepts spelled with underscores: Codex's session header (`session_id`,
#: read by bridge.clients). gunicorn maps `X_Api_Key` and `X-Api-Key` to one WSGI name, so any other
#: underscore spelling, of credential headers above all, must not reach the app.
UNDERSCORE_HEADERS = frozenset({"SESSION_ID"})


def drop_underscore_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A request's headers (gunicorn's: upper-case names as sent) without underscore spellings, but
    for UNDERSCORE_HEADERS."""
    return [(name, value) for name, value in headers if "_" not in name or name in UNDERSCORE_HEADERS]


class Authenticator:
    """Checks gateway tokens against the store.

    sqlite calls are C code that would block the gevent hub (and every stream of the worker) while
    the database is busy, so lookups run on the read threads of the worker's store (Database).
    A valid token is then remembered (by its hash) for up to a minute, until it expires, or until
    any process revokes a token or deletes a user, which replaces the store's auth stamp file:
    one stat() per request keeps revocation immediate without a database read.

    On PostgreSQL (several machines, no shared file) a valid token is remembered for
    POSTGRES_CACHE_SECONDS instead: the revocation delay. Unknown tokens are never cached, so a
    token created through any instance works at once on every other.
    """

    def __init__(self, database_path: str, database: Database | None = None) -> None:
        self._database = database or Database(database_path)  # the worker's (bridge.gateway), or its own
        self._stamp_path = self._database.auth_stamp_path
        self._cache_seconds = _CACHE_SECONDS if self._stamp_path is not None else POSTGRES_CACHE_SECONDS
        self._cache: dict[bytes, tuple[dict, tuple | None, float]] = {}

    def _stamp(self) -> tuple | None:
        if self._stamp_path is None:
            return None
        try:
            stat = os.stat(self._stamp_path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def lookup(self, token: str) -> dict | None:
        key = hashlib.sha256(token.encode()).digest()
        stamp = self._stamp()  # read before the lookup: a revocation racing it shows up next time
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] == stamp and now < cached[2]:
            return cached[0]
        found = self._database.identity.authenticate(token)
        if found is not None:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = (found, stamp, now + _seconds_valid(found["expires_at"], self._cache_seconds))
        return found

    def authenticate(self, headers: Mapping[str, str], allow_byok: bool, *, byok_only: bool = False) -> Caller:
        """The caller, or a GatewayError (401 unknown token, 403 BYOK refused, 503 store down).

        ``byok_only`` providers (Copilot) take the gateway token from the governance header alone:
        their Authorization header carries the user's own credentials.

        A client that sends the governance header without a key of its own (none, or a gateway
        token where the key goes, as misconfigured clients do) is served like one that sent the
        token in Authorization: with the provider key (centralized mode), which is what it can use.
        """
        token, byok = read_gateway_token(headers)
        if byok_only and not byok:
            raise GatewayError(401, f"missing gateway token: send it as {GOVERNANCE_HEADER}; "
                                    "Authorization carries your own provider credentials for this provider")
        if not token:
            raise GatewayError(401, _MISSING)
        if byok and not allow_byok and not byok_only:
            raise GatewayError(403, f"bringing your own provider key is disabled on this gateway; "
                                    f"send the gateway token as Authorization: Bearer or X-Api-Key instead of {GOVERNANCE_HEADER}")
        try:
            found = self.lookup(token)
        except Exception as exc:  # the store is unreadable: refuse rather than fail open
            logger.bind(record_type="server").error("identity store unavailable: {}", type(exc).__name__)
            raise GatewayError(503, "the gateway cannot check tokens right now; try again shortly") from None
        if found is None:
            raise GatewayError(401, "invalid gateway token: unknown, expired or revoked")
        byok = byok and own_credential(headers) is not None
        return Caller(found["user_id"], found["username"], bool(found["is_admin"]), found["token_id"], byok, token)
