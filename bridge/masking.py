"""Masking of secrets (provider keys, gateway tokens, AWS secrets) wherever one must be referred to."""

from __future__ import annotations


def mask_secret(secret: str | None) -> str:
    """Return a hint that identifies a secret without revealing it: ``sk-a...xyz1``.

    Short secrets reveal proportionally less, down to nothing at all.
    """
    if not secret:
        return ""
    if len(secret) >= 16:
        return f"{secret[:4]}...{secret[-4:]}"
    if len(secret) >= 8:
        return f"{secret[:2]}...{secret[-2:]}"
    return "..."
