"""Credentials as clients send them: ``Authorization: <scheme> <secret>`` (or ``X-Api-Key: <secret>``).

The one parser of such values, for the gateway token (bridge.auth), the API's session token
(bridge.api), a client's own provider key (bridge.auth.own_credential) and the masking of dumped
headers (bridge.dump).
"""

from __future__ import annotations

from typing import Mapping


def split_scheme(value: str) -> tuple[str, str]:
    """A credential header value as ``(scheme, secret)``: ``("Bearer", "sk-…")`` for ``Bearer sk-…``;
    ``("", value)`` for a value of one word (no scheme). Both stripped."""
    scheme, _, secret = value.strip().partition(" ")
    secret = secret.strip()
    return (scheme, secret) if secret else ("", scheme)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The secret of an ``Authorization: Bearer <secret>`` header (the scheme in any case), if any."""
    scheme, secret = split_scheme(headers.get("Authorization") or "")
    return secret if scheme.lower() == "bearer" else None
