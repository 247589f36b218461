"""Who is calling: the gateway token from the request headers, checked against the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from loguru import logger

from bridge.errors import GatewayError

GOVERNANCE_HEADER = "X-Coder-AI-Governance-Token"
_MISSING = ("missing gateway token: send it as Authorization: Bearer <token>, X-Api-Key, "
            f"or {GOVERNANCE_HEADER} when bringing your own provider key")


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str
    username: str
    is_admin: bool
    token_id: str
    #: Bring-your-own-key: the client's own provider credentials go upstream.
    byok: bool


def read_gateway_token(headers: Mapping[str, str]) -> tuple[str | None, bool]:
    """The gateway token and whether the caller brings its own provider key (SPEC §3 lookup order)."""
    token = headers.get(GOVERNANCE_HEADER)
    if token:
        return token.strip(), True
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), False
    api_key = headers.get("X-Api-Key")
    if api_key:
        return api_key.strip(), False
    return None, False


class Authenticator:
    """Checks gateway tokens against the store.

    sqlite calls are C code that would block the gevent hub (and every stream of the worker) while
    the database is busy, so lookups run on one native thread that owns its own connection.
    """

    def __init__(self, database_path: str) -> None:
        self._database_path = database_path
        self._pool = None
        self._store = None

    def _lookup(self, token: str) -> dict | None:
        if self._store is None:
            from bridge.store import Store

            self._store = Store(self._database_path)
        return self._store.authenticate(token)

    def lookup(self, token: str) -> dict | None:
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(1)
        return self._pool.apply(self._lookup, (token,))

    def authenticate(self, headers: Mapping[str, str], allow_byok: bool, *, byok_only: bool = False) -> Caller:
        """The caller, or a GatewayError (401 unknown token, 403 BYOK refused, 503 store down).

        ``byok_only`` providers (Copilot) take the gateway token from the governance header alone:
        their Authorization header carries the user's own credentials.
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
        return Caller(found["user_id"], found["username"], bool(found["is_admin"]), found["token_id"], byok)
